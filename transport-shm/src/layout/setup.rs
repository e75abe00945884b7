//! Publishing a layout and checking one: the controller's [`init`] writes
//! a fresh header into a mapping and publishes [`MAGIC`] last; the
//! executor's [`validate`] reads every value once, checks it, and copies
//! the result into a private [`SegmentLayout`], so nothing re-reads sizes
//! from shared memory afterwards and a peer that scribbles on the header
//! later cannot change what this process believes about the layout.
//!
//! Relies on: `words.rs` for every access to the mapping, and
//! `compute.rs` for the bounds checks.

use std::mem::size_of;
use std::sync::Arc;

use super::compute::check_capacity;
use super::words::{get, header_ptr, put, reset_ring, HeaderWords};
use super::{
    state, LayoutError, RingRegion, SegmentHeader, SegmentLayout, LAYOUT_VERSION, MAGIC,
};
use crate::mapping::SharedMapping;
use crate::sync::Ordering;

/// What [`init`] and [`validate`] learned: the layout, copied out of shared
/// memory, and the epoch of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    /// The layout, private to this process from now on.
    pub layout: SegmentLayout,
    /// The connection epoch in the state word.
    pub epoch: u32,
}

/// Initialises a fresh segment in `mapping` (controller side), before any
/// executor attaches: writes the header, resets both rings and the side
/// blocks, starts a new epoch, and publishes [`MAGIC`] last.
///
/// # Errors
/// [`LayoutError::MappingTooSmall`] when the mapping is shorter than
/// `layout.segment_size`, or another [`LayoutError`] when `layout` is
/// inconsistent.
pub fn init(
    mapping: &Arc<dyn SharedMapping>,
    layout: &SegmentLayout,
) -> Result<Attached, LayoutError> {
    layout.check(mapping.len())?;
    let hdr = header_ptr(&**mapping);
    // SAFETY: the check above put the header inside the mapping.
    let words = unsafe { HeaderWords::new(mapping) };
    // Unpublish first, in case the mapping held an older segment.
    words.magic.store(0, Ordering::Relaxed);
    // SAFETY: every field pointer is derived from the header pointer
    // without creating a reference; the header lies in the mapping.
    unsafe {
        put(std::ptr::addr_of_mut!((*hdr).version), LAYOUT_VERSION);
        put(
            std::ptr::addr_of_mut!((*hdr).header_size),
            size_of::<SegmentHeader>() as u32,
        );
        put(
            std::ptr::addr_of_mut!((*hdr).segment_size),
            layout.segment_size as u64,
        );
        put(
            std::ptr::addr_of_mut!((*hdr).max_message_size),
            layout.max_message_size,
        );
        for (i, ring) in layout.rings.iter().enumerate() {
            let d = std::ptr::addr_of_mut!((*hdr).rings[i]);
            put(std::ptr::addr_of_mut!((*d).capacity), ring.capacity as u64);
            put(
                std::ptr::addr_of_mut!((*d).control_offset),
                ring.control_offset as u64,
            );
            put(
                std::ptr::addr_of_mut!((*d).data_offset),
                ring.data_offset as u64,
            );
        }
    }
    for ring in &layout.rings {
        // SAFETY: checked by `layout.check` above.
        unsafe { reset_ring(mapping, ring) };
    }
    for side in &words.sides {
        side.futex.store(0, Ordering::Relaxed);
        side.waiting.store(0, Ordering::Relaxed);
        side.pid.store(0, Ordering::Relaxed);
    }
    // A new epoch: one past whatever an older segment held, never 0.
    let old = state::epoch(words.state.load(Ordering::Relaxed));
    let epoch = old.wrapping_add(1).max(1);
    words
        .state
        .store(u64::from(epoch) << state::EPOCH_SHIFT, Ordering::Relaxed);
    // SYNC POINT: segment initialised. Every write above happens-before an
    // executor's `Acquire` load of the magic in `validate`.
    words.magic.store(MAGIC, Ordering::Release);
    Ok(Attached {
        layout: *layout,
        epoch,
    })
}

/// Validates the segment in `mapping` (executor side) and copies its layout
/// out of shared memory. Every value is read once and checked: magic,
/// version, header size, segment size against the mapping, each ring's
/// capacity, offsets in range, aligned and not overlapping, and the message
/// limit against `local_max_message_size`.
///
/// # Errors
/// A [`LayoutError`] saying which check failed and what to do.
pub fn validate(
    mapping: &Arc<dyn SharedMapping>,
    local_max_message_size: u64,
) -> Result<Attached, LayoutError> {
    let len = mapping.len();
    if len < size_of::<SegmentHeader>() {
        return Err(LayoutError::MappingTooSmall {
            required: size_of::<SegmentHeader>() as u64,
            actual: len as u64,
        });
    }
    // SAFETY: the mapping holds at least a header.
    let words = unsafe { HeaderWords::new(mapping) };
    // SYNC POINT: segment initialised. Pairs with the `Release` store of the
    // magic at the end of `init`.
    let magic = words.magic.load(Ordering::Acquire);
    if magic != MAGIC {
        return Err(LayoutError::NotASegment { found: magic });
    }
    let hdr = header_ptr(&**mapping);
    // SAFETY: field pointers derived from the header pointer without
    // references; the header lies inside the mapping (checked above).
    let (version, header_size, segment_size, max_message_size, descriptors) = unsafe {
        let mut descriptors = [(0u64, 0u64, 0u64); 2];
        for (i, out) in descriptors.iter_mut().enumerate() {
            let d = std::ptr::addr_of!((*hdr).rings[i]);
            *out = (
                get(std::ptr::addr_of!((*d).capacity)),
                get(std::ptr::addr_of!((*d).control_offset)),
                get(std::ptr::addr_of!((*d).data_offset)),
            );
        }
        (
            get(std::ptr::addr_of!((*hdr).version)),
            get(std::ptr::addr_of!((*hdr).header_size)),
            get(std::ptr::addr_of!((*hdr).segment_size)),
            get(std::ptr::addr_of!((*hdr).max_message_size)),
            descriptors,
        )
    };
    if version != LAYOUT_VERSION {
        return Err(LayoutError::VersionMismatch {
            found: version,
            expected: LAYOUT_VERSION,
        });
    }
    if header_size as usize != size_of::<SegmentHeader>() {
        return Err(LayoutError::Invalid(format!(
            "header size {header_size} differs from this build's {}",
            size_of::<SegmentHeader>()
        )));
    }
    let to_usize = |v: u64, what: &str| {
        usize::try_from(v).map_err(|_| {
            LayoutError::Invalid(format!("{what} {v} does not fit this address space"))
        })
    };
    let segment_size = to_usize(segment_size, "segment size")?;
    let mut rings = [RingRegion {
        control_offset: 0,
        data_offset: 0,
        capacity: 0,
    }; 2];
    for (ring, (capacity, control, data)) in rings.iter_mut().zip(descriptors) {
        check_capacity(capacity)?;
        *ring = RingRegion {
            control_offset: to_usize(control, "control offset")?,
            data_offset: to_usize(data, "data offset")?,
            capacity: to_usize(capacity, "capacity")?,
        };
    }
    let layout = SegmentLayout {
        segment_size,
        max_message_size,
        rings,
    };
    layout.check(len)?;
    if max_message_size > local_max_message_size {
        return Err(LayoutError::MessageLimitMismatch {
            segment: max_message_size,
            local: local_max_message_size,
        });
    }
    // SYNC POINT: segment initialised. Ordered after the magic `Acquire`
    // above, so this is the epoch `init` wrote (or a later one).
    let epoch = state::epoch(words.state.load(Ordering::Acquire));
    Ok(Attached { layout, epoch })
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;
    use crate::mapping::{HeapMapping, MAPPING_ALIGN};

    fn heap(len: usize) -> Arc<dyn SharedMapping> {
        Arc::new(HeapMapping::new(len).unwrap())
    }

    #[test]
    fn init_then_validate_round_trips() {
        let l = SegmentLayout::compute(4096, 1 << 20).unwrap();
        let m = heap(l.segment_size);
        let a = init(&m, &l).unwrap();
        assert_eq!(a.epoch, 1);
        let b = validate(&m, 1 << 20).unwrap();
        assert_eq!(a, b);
        // Re-initialising starts a new epoch.
        assert_eq!(init(&m, &l).unwrap().epoch, 2);
    }

    #[test]
    fn validate_reports_each_mismatch() {
        let l = SegmentLayout::compute(4096, 1 << 20).unwrap();
        let m = heap(l.segment_size);
        assert_eq!(
            validate(&m, u64::MAX),
            Err(LayoutError::NotASegment { found: 0 })
        );
        init(&m, &l).unwrap();
        assert!(matches!(
            validate(&m, 1 << 19),
            Err(LayoutError::MessageLimitMismatch { .. })
        ));
        let hdr = header_ptr(&*m);
        // SAFETY: the header lies inside the mapping; nothing else uses it.
        unsafe { put(std::ptr::addr_of_mut!((*hdr).version), 99) };
        assert!(matches!(
            validate(&m, u64::MAX),
            Err(LayoutError::VersionMismatch { found: 99, .. })
        ));
        init(&m, &l).unwrap();
        // SAFETY: as above.
        unsafe { put(std::ptr::addr_of_mut!((*hdr).rings[1].capacity), 3000) };
        assert!(matches!(
            validate(&m, u64::MAX),
            Err(LayoutError::InvalidCapacity { capacity: 3000 })
        ));
        init(&m, &l).unwrap();
        // SAFETY: as above.
        unsafe {
            put(
                std::ptr::addr_of_mut!((*hdr).rings[1].data_offset),
                4096 + 64,
            )
        };
        assert!(matches!(
            validate(&m, u64::MAX),
            Err(LayoutError::Invalid(_))
        ));
        init(&m, &l).unwrap();
        // Ring 1's data on top of ring 0's.
        let d0 = l.rings[0].data_offset as u64;
        // SAFETY: as above.
        unsafe { put(std::ptr::addr_of_mut!((*hdr).rings[1].data_offset), d0) };
        assert!(matches!(
            validate(&m, u64::MAX),
            Err(LayoutError::Invalid(_))
        ));
        init(&m, &l).unwrap();
        // SAFETY: as above.
        unsafe { put(std::ptr::addr_of_mut!((*hdr).segment_size), u64::MAX) };
        assert!(validate(&m, u64::MAX).is_err());
        init(&m, &l).unwrap();
        // SAFETY: as above.
        unsafe {
            put(
                std::ptr::addr_of_mut!((*hdr).rings[0].data_offset),
                u64::MAX - 10,
            )
        };
        assert!(validate(&m, u64::MAX).is_err());
    }

    #[test]
    fn short_mapping_is_refused() {
        let l = SegmentLayout::compute(4096, 1 << 20).unwrap();
        let m = heap(l.segment_size - MAPPING_ALIGN);
        assert!(matches!(
            init(&m, &l),
            Err(LayoutError::MappingTooSmall { .. })
        ));
        let tiny = heap(64);
        assert!(matches!(
            validate(&tiny, u64::MAX),
            Err(LayoutError::MappingTooSmall { .. })
        ));
    }
}
