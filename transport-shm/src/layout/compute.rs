//! Sizes and offsets, without touching memory: [`RingCapacity`] (a
//! checked ring size), [`RingRegion`] (where one ring's control block and
//! data lie) and [`SegmentLayout`] (a whole segment: header, two control
//! blocks, two rings), each computed or checked with overflow-checked
//! arithmetic.
//!
//! The controller computes a layout ([`SegmentLayout::compute`]); both
//! sides check one against a mapping's length before any pointer into it
//! is made (`RingRegion::check`, `SegmentLayout::check`).
//!
//! Relies on: the sizes of the `#[repr(C)]` types in `header.rs`, and
//! [`MAPPING_ALIGN`] (every mapping's base is page-aligned).

use std::mem::size_of;

use super::{
    LayoutError, RingControl, SegmentHeader, Side, DEFAULT_RING_CAPACITY, MAX_RING_CAPACITY,
    MIN_RING_CAPACITY, REGION_ALIGN,
};
use crate::mapping::MAPPING_ALIGN;

/// A ring capacity that is known to be valid: a power of two from 256
/// bytes to 4 GiB (256 MiB on 32-bit targets). The default is 1 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingCapacity(usize);

impl RingCapacity {
    /// Checks `bytes`.
    ///
    /// ```
    /// use orcwire_shm::RingCapacity;
    /// assert_eq!(RingCapacity::new(4096).unwrap().get(), 4096);
    /// assert!(RingCapacity::new(5000).is_err());
    /// ```
    ///
    /// # Errors
    /// [`LayoutError::InvalidCapacity`] when `bytes` is not a power of two
    /// in range.
    pub fn new(bytes: usize) -> Result<Self, LayoutError> {
        check_capacity(bytes as u64)?;
        Ok(Self(bytes))
    }

    /// The capacity in bytes.
    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for RingCapacity {
    fn default() -> Self {
        Self(DEFAULT_RING_CAPACITY)
    }
}

pub(super) fn check_capacity(capacity: u64) -> Result<(), LayoutError> {
    if capacity.is_power_of_two()
        && capacity >= MIN_RING_CAPACITY as u64
        && capacity <= MAX_RING_CAPACITY as u64
    {
        Ok(())
    } else {
        Err(LayoutError::InvalidCapacity { capacity })
    }
}

fn align_up(value: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    Some(value.checked_add(align - 1)? & !(align - 1))
}

fn overflow() -> LayoutError {
    LayoutError::Invalid("sizes overflow the address space; choose smaller rings".into())
}

/// Where one ring's control block and data lie in a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingRegion {
    /// Offset of the [`RingControl`]; a multiple of [`REGION_ALIGN`].
    pub control_offset: usize,
    /// Offset of the data bytes; a multiple of [`REGION_ALIGN`].
    pub data_offset: usize,
    /// Data bytes; a power of two in `MIN_RING_CAPACITY..=MAX_RING_CAPACITY`.
    pub capacity: usize,
}

impl RingRegion {
    /// A ring alone in a mapping of its own: control block at 0, data after
    /// it. For in-process tests, benches and loom models of the ring.
    ///
    /// ```
    /// use orcwire_shm::layout::RingRegion;
    /// let r = RingRegion::standalone(4096).unwrap();
    /// assert_eq!(r.control_offset, 0);
    /// assert!(r.required_len() >= 4096);
    /// ```
    ///
    /// # Errors
    /// [`LayoutError::InvalidCapacity`] for a bad capacity.
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn standalone(capacity: usize) -> Result<Self, LayoutError> {
        check_capacity(capacity as u64)?;
        let data_offset = align_up(size_of::<RingControl>(), REGION_ALIGN).ok_or_else(overflow)?;
        data_offset.checked_add(capacity).ok_or_else(overflow)?;
        Ok(Self {
            control_offset: 0,
            data_offset,
            capacity,
        })
    }

    /// Bytes a mapping needs to hold this region.
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn required_len(&self) -> usize {
        (self.control_offset + size_of::<RingControl>()).max(self.data_offset + self.capacity)
    }

    /// Checks alignment, capacity and bounds against a mapping of
    /// `mapping_len` bytes, with overflow-checked arithmetic.
    pub(crate) fn check(&self, mapping_len: usize, what: &str) -> Result<(), LayoutError> {
        check_capacity(self.capacity as u64)?;
        if self.control_offset % REGION_ALIGN != 0 || self.data_offset % REGION_ALIGN != 0 {
            return Err(LayoutError::Invalid(format!(
                "{what}: control offset {} or data offset {} is not a multiple of {REGION_ALIGN}",
                self.control_offset, self.data_offset
            )));
        }
        let control_end = self
            .control_offset
            .checked_add(size_of::<RingControl>())
            .ok_or_else(overflow)?;
        let data_end = self
            .data_offset
            .checked_add(self.capacity)
            .ok_or_else(overflow)?;
        if control_end > mapping_len || data_end > mapping_len {
            return Err(LayoutError::MappingTooSmall {
                required: control_end.max(data_end) as u64,
                actual: mapping_len as u64,
            });
        }
        if overlaps(
            (self.control_offset, control_end),
            (self.data_offset, data_end),
        ) {
            return Err(LayoutError::Invalid(format!(
                "{what}: control block and data overlap"
            )));
        }
        Ok(())
    }
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The layout of a whole segment, as computed by the controller or as
/// validated (and copied out of shared memory) by the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentLayout {
    /// Bytes of the segment; a multiple of [`MAPPING_ALIGN`] when computed.
    pub segment_size: usize,
    /// Largest message either side may send.
    pub max_message_size: u64,
    /// The rings, indexed by the sending [`Side::index`].
    pub rings: [RingRegion; 2],
}

impl SegmentLayout {
    /// Lays out a segment with two rings of `ring_capacity` bytes each:
    /// header, both control blocks, then each ring's data on a page
    /// boundary.
    ///
    /// ```
    /// use orcwire_shm::layout::{SegmentLayout, Side};
    /// let l = SegmentLayout::compute(1 << 16, 1 << 20).unwrap();
    /// assert!(l.segment_size >= 2 << 16);
    /// assert_eq!(l.ring_from(Side::Controller).capacity, 1 << 16);
    /// ```
    ///
    /// # Errors
    /// [`LayoutError::InvalidCapacity`] for a bad capacity.
    pub fn compute(ring_capacity: usize, max_message_size: u64) -> Result<Self, LayoutError> {
        check_capacity(ring_capacity as u64)?;
        let control0 = align_up(size_of::<SegmentHeader>(), REGION_ALIGN).ok_or_else(overflow)?;
        let control1 = control0
            .checked_add(align_up(size_of::<RingControl>(), REGION_ALIGN).ok_or_else(overflow)?)
            .ok_or_else(overflow)?;
        let controls_end = control1
            .checked_add(size_of::<RingControl>())
            .ok_or_else(overflow)?;
        let data0 = align_up(controls_end, MAPPING_ALIGN).ok_or_else(overflow)?;
        let data1 = align_up(
            data0.checked_add(ring_capacity).ok_or_else(overflow)?,
            MAPPING_ALIGN,
        )
        .ok_or_else(overflow)?;
        let segment_size = align_up(
            data1.checked_add(ring_capacity).ok_or_else(overflow)?,
            MAPPING_ALIGN,
        )
        .ok_or_else(overflow)?;
        Ok(Self {
            segment_size,
            max_message_size,
            rings: [
                RingRegion {
                    control_offset: control0,
                    data_offset: data0,
                    capacity: ring_capacity,
                },
                RingRegion {
                    control_offset: control1,
                    data_offset: data1,
                    capacity: ring_capacity,
                },
            ],
        })
    }

    /// The ring that carries messages sent by `sender`.
    pub fn ring_from(&self, sender: Side) -> RingRegion {
        self.rings[sender.index()]
    }

    /// Checks every region against the header and each other, for a
    /// mapping of `mapping_len` bytes.
    pub(super) fn check(&self, mapping_len: usize) -> Result<(), LayoutError> {
        if self.segment_size > mapping_len {
            return Err(LayoutError::MappingTooSmall {
                required: self.segment_size as u64,
                actual: mapping_len as u64,
            });
        }
        let header = (0, size_of::<SegmentHeader>());
        let mut regions = vec![header];
        for (i, ring) in self.rings.iter().enumerate() {
            ring.check(self.segment_size, &format!("ring {i}"))?;
            regions.push((
                ring.control_offset,
                ring.control_offset + size_of::<RingControl>(),
            ));
            regions.push((ring.data_offset, ring.data_offset + ring.capacity));
        }
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                if overlaps(*a, *b) {
                    return Err(LayoutError::Invalid(format!(
                        "regions {:?} and {:?} overlap",
                        a, b
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;

    #[test]
    fn capacity_must_be_power_of_two_in_range() {
        assert!(RingCapacity::new(4096).is_ok());
        assert!(RingCapacity::new(MIN_RING_CAPACITY).is_ok());
        for bad in [0, 1, 128, 4095, 4097, 3 << 12] {
            assert_eq!(
                RingCapacity::new(bad),
                Err(LayoutError::InvalidCapacity {
                    capacity: bad as u64
                })
            );
        }
    }

    #[test]
    fn computed_layout_is_aligned_and_disjoint() {
        let l = SegmentLayout::compute(4096, 1 << 20).unwrap();
        assert_eq!(l.segment_size % MAPPING_ALIGN, 0);
        for r in &l.rings {
            assert_eq!(r.data_offset % MAPPING_ALIGN, 0);
            assert_eq!(r.control_offset % REGION_ALIGN, 0);
        }
        l.check(l.segment_size).unwrap();
        assert!(matches!(
            l.check(l.segment_size - 1),
            Err(LayoutError::MappingTooSmall { .. })
        ));
    }
}
