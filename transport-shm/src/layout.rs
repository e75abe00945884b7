//! The segment layout: what lies where in the shared memory, how the
//! controller writes it and how the executor checks it.
//!
//! ```text
//! offset 0                 SegmentHeader   magic, version, sizes, offsets,
//!                                          state/epoch word, one SideBlock
//!                                          (futex word, waiting bits, pid)
//!                                          per side
//! rings[0].control_offset  RingControl     head, tail of ring 0 (controller -> executor)
//! rings[1].control_offset  RingControl     head, tail of ring 1 (executor -> controller)
//! rings[0].data_offset     capacity bytes  frames of ring 0
//! rings[1].data_offset     capacity bytes  frames of ring 1
//! ```
//!
//! Everything in the segment is `#[repr(C)]`, holds offsets rather than
//! pointers (each process maps the segment at its own address) and holds
//! only atomics and plain integers. The plain integers are written once by
//! the controller before [`MAGIC`] is published and are read once, by
//! atomic loads, when the executor attaches: [`validate`] copies them into
//! a private [`SegmentLayout`] and nothing re-reads sizes from shared memory
//! afterwards, so a peer that scribbles on the header later cannot change
//! what this process believes about the layout.
//!
//! Relies on: [`SharedMapping`]'s guarantees (page-aligned base, fixed
//! length), `crossbeam_utils::CachePadded` being `#[repr(C)]` with its value
//! at offset 0, and the `sync` shim for atomics. Under `--cfg orcwire_loom`
//! no loom object is ever placed in the mapping: each shared word is a loom
//! object on the heap, looked up by its address in the mapping (see
//! `SharedRef`), the same way the futex mock keys wait queues by address.

use std::mem::{align_of, offset_of, size_of};
use std::ops::Deref;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::mapping::{SharedMapping, MAPPING_ALIGN};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// First eight bytes of every segment: `"ORCWSHM1"` read as a little-endian
/// `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"ORCWSHM1");
/// Version of this layout; bumped on any incompatible change.
pub const LAYOUT_VERSION: u32 = 2;
/// Smallest ring capacity in bytes.
pub const MIN_RING_CAPACITY: usize = 256;
/// Largest ring capacity in bytes (frame lengths are 32-bit).
pub const MAX_RING_CAPACITY: usize = if usize::BITS >= 64 { 1 << 32 } else { 1 << 28 };
/// Default capacity of each ring: 1 MiB.
pub const DEFAULT_RING_CAPACITY: usize = 1 << 20;
/// Default largest message: 1 GiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 1 << 30;
/// Alignment the validator requires of ring control blocks and ring data.
/// [`SegmentLayout::compute`] places data on page boundaries; a segment
/// written by another implementation need only meet this.
pub const REGION_ALIGN: usize = 128;

/// Bits and fields of the connection state word
/// ([`SegmentHeader::state`]).
///
/// The low 32 bits are flags, the high 32 bits the connection epoch. Within
/// one epoch flags are only ever set (`fetch_or`), never cleared, and each
/// flag has exactly one side allowed to set it, named below. Nothing read
/// from this word is trusted for memory safety: it only decides which error
/// a blocked call returns.
///
/// There is one hang-up handshake, the engine's: each side sends a
/// `Hangup` message and waits (bounded) for the peer's. A disconnecting
/// bit is the transport's end of stream under it: the side publishes
/// nothing more, so the peer's blocked waits end at once instead of at a
/// timeout. Version 1 also had acknowledgement and death bits; nothing
/// read them, and version 2 dropped them.
pub mod state {
    /// Set by the **controller** when it closes its side: it publishes no
    /// frame after setting it (all its frames are published before, so a
    /// reader that sees the bit with `Acquire` sees them all).
    pub const CONTROLLER_DISCONNECTING: u64 = 1 << 0;
    /// Set by the **executor** when it closes its side; as above.
    pub const EXECUTOR_DISCONNECTING: u64 = 1 << 1;
    /// Set by the **executor** when it attaches; a second attach to the
    /// same epoch is refused.
    pub const EXECUTOR_ATTACHED: u64 = 1 << 2;
    /// Every defined flag.
    pub const FLAGS: u64 = 0x7;
    /// Every flag with its name, for diagnostics (`orcwire inspect`).
    pub const NAMES: [(u64, &str); 3] = [
        (CONTROLLER_DISCONNECTING, "CONTROLLER_DISCONNECTING"),
        (EXECUTOR_DISCONNECTING, "EXECUTOR_DISCONNECTING"),
        (EXECUTOR_ATTACHED, "EXECUTOR_ATTACHED"),
    ];
    /// The epoch lives in the high 32 bits. Written by the **controller**
    /// only, in [`init`](super::init), before the segment is published;
    /// never changes afterwards. A side that sees another epoch than the
    /// one it attached to knows the segment was re-initialised under it.
    pub const EPOCH_SHIFT: u32 = 32;

    /// The epoch field of a state word.
    pub fn epoch(word: u64) -> u32 {
        (word >> EPOCH_SHIFT) as u32
    }
}

/// Bits of [`SideBlock::waiting`]: the announcements a side makes before it
/// sleeps on its futex word, read by the peer to decide whether to wake it.
pub mod waiting {
    /// This side's consumer sleeps until the peer publishes frames into the
    /// side's inbound ring. Set and cleared only by that consumer.
    pub const DATA: u32 = 1 << 0;
    /// This side's producer sleeps until the peer frees space in the side's
    /// outbound ring. Set and cleared only by that producer (one at a time:
    /// senders are serialised).
    pub const SPACE: u32 = 1 << 1;
}

/// One end of the connection.
///
/// The controller sends on ring 0 (controller → executor) and the executor
/// on ring 1; side blocks are indexed the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The JIT controller: creates and initialises the segment.
    Controller,
    /// The executor: attaches to the segment and validates it.
    Executor,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Controller => Side::Executor,
            Side::Executor => Side::Controller,
        }
    }

    /// Index of this side's [`SideBlock`] and of the ring it sends on.
    pub fn index(self) -> usize {
        match self {
            Side::Controller => 0,
            Side::Executor => 1,
        }
    }

    /// The [`state`] bit this side sets when it disconnects.
    pub fn disconnecting_bit(self) -> u64 {
        match self {
            Side::Controller => state::CONTROLLER_DISCONNECTING,
            Side::Executor => state::EXECUTOR_DISCONNECTING,
        }
    }
}

/// Where one ring lives in the segment (plain integers, written once).
#[repr(C)]
#[derive(Debug)]
pub struct RingDescriptor {
    /// Data bytes of the ring; a power of two in
    /// `MIN_RING_CAPACITY..=MAX_RING_CAPACITY`.
    pub capacity: u64,
    /// Offset of the ring's [`RingControl`] from the segment start;
    /// a multiple of [`REGION_ALIGN`].
    pub control_offset: u64,
    /// Offset of the ring's data from the segment start; a multiple of
    /// [`REGION_ALIGN`].
    pub data_offset: u64,
}

/// Per-side words, on their own cache line.
///
/// All atomics: the peer writes `futex`, this side writes the rest, and
/// both read them at any time.
#[repr(C)]
#[derive(Debug, Default)]
pub struct SideBlock {
    /// The word this side sleeps on (`FUTEX_WAIT`). Any value; the peer
    /// increments it (wrapping) before waking this side, this side
    /// increments it to wake itself (interrupt, close).
    pub futex: AtomicU32,
    /// [`waiting`] bits this side has announced. Only this side sets or
    /// clears them; the peer only reads.
    pub waiting: AtomicU32,
    /// Process id of this side, written by this side when it joins; 0 while
    /// unknown. A hint for diagnostics and liveness checks, never trusted.
    pub pid: AtomicU32,
}

/// The segment header at offset 0.
///
/// Never referenced as a whole (`&SegmentHeader` would claim the plain
/// fields cannot change while the peer can write them): fields are reached
/// through raw pointers, the plain ones by atomic loads and stores.
#[repr(C)]
#[derive(Debug)]
pub struct SegmentHeader {
    /// [`MAGIC`] once the header is complete; stored last with `Release`.
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub version: u32,
    /// `size_of::<SegmentHeader>()` as the writer compiled it.
    pub header_size: u32,
    /// Bytes of the whole segment (header, control blocks, data), at most
    /// the mapping's length.
    pub segment_size: u64,
    /// Largest message either side may send, in bytes.
    pub max_message_size: u64,
    /// The two rings: index 0 carries controller → executor, 1 the reverse.
    pub rings: [RingDescriptor; 2],
    /// The connection state and epoch: [`state`] bits (low 32) and epoch
    /// (high 32).
    pub state: CachePadded<AtomicU64>,
    /// One block per side, indexed by [`Side::index`].
    pub sides: [CachePadded<SideBlock>; 2],
}

/// Head and tail of one ring, each on its own cache line.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RingControl {
    /// Byte position of the next frame to consume. Written only by the
    /// consumer. In range `0 .. 2 * capacity`, a multiple of 16.
    pub head: CachePadded<AtomicU64>,
    /// Byte position one past the last published frame. Written only by
    /// the producer. In range `0 .. 2 * capacity`, a multiple of 16, never
    /// more than `capacity` ahead of `head`.
    pub tail: CachePadded<AtomicU64>,
}

#[cfg(not(orcwire_loom))]
const _: () = {
    assert!(size_of::<AtomicU64>() == 8 && align_of::<AtomicU64>() == 8);
    assert!(size_of::<AtomicU32>() == 4 && align_of::<AtomicU32>() == 4);
    assert!(offset_of!(SegmentHeader, magic) == 0);
    assert!(offset_of!(SegmentHeader, version) == 8);
    assert!(offset_of!(SegmentHeader, header_size) == 12);
    assert!(offset_of!(SegmentHeader, segment_size) == 16);
    assert!(offset_of!(SegmentHeader, max_message_size) == 24);
    assert!(offset_of!(SegmentHeader, rings) == 32);
    assert!(size_of::<RingDescriptor>() == 24);
    assert!(offset_of!(RingDescriptor, control_offset) == 8);
    assert!(offset_of!(RingDescriptor, data_offset) == 16);
    assert!(size_of::<SideBlock>() == 12);
    assert!(offset_of!(SideBlock, waiting) == 4);
    assert!(offset_of!(SideBlock, pid) == 8);
    // The state word and each side block start their own cache line, after
    // the plain fields.
    assert!(offset_of!(SegmentHeader, state) >= 80);
    assert!(offset_of!(SegmentHeader, state) % align_of::<CachePadded<u8>>() == 0);
    assert!(offset_of!(SegmentHeader, sides) % align_of::<CachePadded<u8>>() == 0);
    assert!(size_of::<SegmentHeader>() % align_of::<SegmentHeader>() == 0);
    assert!(align_of::<SegmentHeader>() <= MAPPING_ALIGN);
    assert!(align_of::<RingControl>() <= REGION_ALIGN);
    assert!(size_of::<RingControl>() == 2 * size_of::<CachePadded<AtomicU64>>());
    assert!(offset_of!(RingControl, tail) == size_of::<CachePadded<AtomicU64>>());
};
#[cfg(all(
    not(orcwire_loom),
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
const _: () = {
    assert!(size_of::<SegmentHeader>() == 512);
    assert!(offset_of!(SegmentHeader, state) == 128);
    assert!(offset_of!(SegmentHeader, sides) == 256);
    assert!(size_of::<RingControl>() == 256);
};

/// Why a segment layout cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A ring capacity outside the supported range or not a power of two.
    #[error("ring capacity {capacity} is not a power of two between {MIN_RING_CAPACITY} and {MAX_RING_CAPACITY} bytes; choose one that is")]
    InvalidCapacity {
        /// The capacity asked for or found.
        capacity: u64,
    },
    /// The mapping is shorter than the segment needs.
    #[error("the mapping has {actual} bytes but the segment needs {required}; map at least `required_size(config)` bytes")]
    MappingTooSmall {
        /// Bytes the segment needs.
        required: u64,
        /// Bytes the mapping has.
        actual: u64,
    },
    /// The mapping does not start with [`MAGIC`].
    #[error("the mapping holds no orcwire segment (magic {found:#018x}); attach to the segment the controller created, after it was initialised")]
    NotASegment {
        /// The first eight bytes found.
        found: u64,
    },
    /// The segment was written by an incompatible build.
    #[error("the segment has layout version {found} but this build speaks version {expected}; run matching orcwire builds on both sides")]
    VersionMismatch {
        /// The version in the segment.
        found: u32,
        /// The version this build writes.
        expected: u32,
    },
    /// The controller allows larger messages than this side accepts.
    #[error("the segment allows messages of up to {segment} bytes but this side accepts at most {local}; raise this side's max_message_size or lower the controller's")]
    MessageLimitMismatch {
        /// The limit written in the segment.
        segment: u64,
        /// This side's configured limit.
        local: u64,
    },
    /// An executor already attached to this connection.
    #[error("an executor is already attached to this segment; a segment serves one connection, create a new one")]
    AlreadyAttached,
    /// A size or offset in the header is inconsistent.
    #[error("invalid segment layout: {0}; recreate the segment with matching builds")]
    Invalid(String),
}

/// A ring capacity that is known to be valid: a power of two in
/// `MIN_RING_CAPACITY..=MAX_RING_CAPACITY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingCapacity(usize);

impl RingCapacity {
    /// Checks `bytes`.
    ///
    /// ```
    /// use orcwire_shm::layout::RingCapacity;
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

fn check_capacity(capacity: u64) -> Result<(), LayoutError> {
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
    fn check(&self, mapping_len: usize) -> Result<(), LayoutError> {
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

/// A typed handle on a word (or padded block of atomics) in the segment.
///
/// Production: a pointer into the mapping, which the handle keeps alive.
/// Under loom: a loom object on the heap, looked up by the address it
/// would have in the mapping, so two handles on the same offset of the
/// same mapping share one modelled object.
pub(crate) struct SharedRef<T: 'static> {
    #[cfg(not(orcwire_loom))]
    ptr: std::ptr::NonNull<T>,
    #[cfg(orcwire_loom)]
    value: Arc<T>,
    _mapping: Arc<dyn SharedMapping>,
}

impl<T: Send + Sync + 'static> SharedRef<T> {
    /// A handle on the `T` at `offset` in `mapping`. `make` builds the loom
    /// object (unused in production, where the bytes already are the `T`).
    ///
    /// # Safety
    /// `offset .. offset + size_of::<T>()` lies inside the mapping,
    /// `offset` is a multiple of `align_of::<T>()`, and `T` is made only of
    /// atomics and padding (every bit pattern valid, all mutation through
    /// interior mutability), so a shared reference to it stays sound while
    /// the peer writes the same bytes.
    pub(crate) unsafe fn new(
        mapping: &Arc<dyn SharedMapping>,
        offset: usize,
        make: fn() -> T,
    ) -> Self {
        debug_assert!(offset + size_of::<T>() <= mapping.len());
        debug_assert_eq!((mapping.base() as usize + offset) % align_of::<T>(), 0);
        #[cfg(not(orcwire_loom))]
        {
            let _ = make;
            // SAFETY: in bounds by the caller's contract, so the pointer is
            // derived from the non-null mapping base without wrapping.
            let raw = unsafe { mapping.base().add(offset) }.cast::<T>();
            let Some(ptr) = std::ptr::NonNull::new(raw) else {
                unreachable!("a mapping base plus an in-bounds offset is never null")
            };
            Self {
                ptr,
                _mapping: Arc::clone(mapping),
            }
        }
        #[cfg(orcwire_loom)]
        {
            let addr = mapping.base() as usize + offset;
            Self {
                value: loom_shared::object(addr, make),
                _mapping: Arc::clone(mapping),
            }
        }
    }
}

impl<T: 'static> Deref for SharedRef<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        #[cfg(not(orcwire_loom))]
        {
            // SAFETY: `new`'s contract: in bounds, aligned, only atomics, and
            // the mapping is kept alive by `_mapping` as long as `self`.
            unsafe { self.ptr.as_ref() }
        }
        #[cfg(orcwire_loom)]
        {
            &self.value
        }
    }
}

// SAFETY: the handle is a shared reference to atomics (`T: Sync`) in memory
// kept alive by the `Arc` it holds; moving it between threads is like moving
// an `&T`.
unsafe impl<T: Sync + 'static> Send for SharedRef<T> {}
// SAFETY: as above; sharing the handle only hands out `&T`, with `T: Sync`.
unsafe impl<T: Sync + 'static> Sync for SharedRef<T> {}

/// The loom stand-in for memory shared between processes: one heap object
/// per address, per model execution.
#[cfg(orcwire_loom)]
pub(crate) mod loom_shared {
    use std::any::Any;
    use std::collections::HashMap;
    use std::sync::Arc;

    use crate::sync::Mutex;

    type Objects = HashMap<usize, Arc<dyn Any + Send + Sync>>;

    loom::lazy_static! {
        static ref OBJECTS: Mutex<Objects> = Mutex::new(HashMap::new());
    }

    /// The object at `addr`, made with `make` on first use. Lookups happen
    /// when endpoints are built, before model threads share them.
    pub(crate) fn object<T: Any + Send + Sync>(addr: usize, make: impl FnOnce() -> T) -> Arc<T> {
        let mut objects = OBJECTS.lock();
        if let Some(found) = objects.get(&addr) {
            if let Ok(typed) = Arc::clone(found).downcast::<T>() {
                return typed;
            }
        }
        let fresh = Arc::new(make());
        objects.insert(addr, Arc::clone(&fresh) as Arc<dyn Any + Send + Sync>);
        fresh
    }

    /// Forgets every modelled object.
    pub(crate) fn reset() {
        OBJECTS.lock().clear();
    }
}

fn header_ptr(mapping: &dyn SharedMapping) -> *mut SegmentHeader {
    mapping.base().cast()
}

/// A plain header field: written once by the controller before [`MAGIC`]
/// is published, read once by the executor after it saw [`MAGIC`].
///
/// Both ends go through `std`'s atomics (`Relaxed`: the `magic` word's
/// `Release`/`Acquire` pair orders them), never plain or volatile
/// accesses: a peer may write the same bytes at any time, and an atomic
/// access to memory another process writes is defined behaviour where a
/// plain one is a data race. They are `std`'s and not the `sync` shim's
/// because loom cannot place its objects in a mapping; the words that
/// loom models are the ones `SharedRef` hands out.
trait PlainField: Copy {
    /// # Safety
    /// `field` points into the header of a live mapping at least
    /// `size_of::<SegmentHeader>()` long, aligned for `Self`.
    unsafe fn store(field: *mut Self, value: Self);
    /// # Safety
    /// As for [`store`](Self::store).
    unsafe fn load(field: *const Self) -> Self;
}

macro_rules! plain_field {
    ($t:ty, $atomic:ty) => {
        impl PlainField for $t {
            unsafe fn store(field: *mut Self, value: Self) {
                // SAFETY: valid and aligned by the caller's contract, and
                // only ever accessed atomically (see `PlainField`).
                unsafe { <$atomic>::from_ptr(field) }
                    .store(value, std::sync::atomic::Ordering::Relaxed)
            }
            unsafe fn load(field: *const Self) -> Self {
                // SAFETY: as in `store`; `from_ptr` takes `*mut` but the
                // load never writes.
                unsafe { <$atomic>::from_ptr(field.cast_mut()) }
                    .load(std::sync::atomic::Ordering::Relaxed)
            }
        }
    };
}
plain_field!(u32, std::sync::atomic::AtomicU32);
plain_field!(u64, std::sync::atomic::AtomicU64);

/// Writes a plain header field.
///
/// # Safety
/// As for [`PlainField::store`].
unsafe fn put<T: PlainField>(field: *mut T, value: T) {
    // SAFETY: forwarded contract.
    unsafe { T::store(field, value) }
}

/// Reads a plain header field once.
///
/// # Safety
/// As for [`PlainField::load`].
unsafe fn get<T: PlainField>(field: *const T) -> T {
    // SAFETY: forwarded contract.
    unsafe { T::load(field) }
}

/// Typed handles on the header's shared words.
pub(crate) struct HeaderWords {
    pub(crate) magic: SharedRef<AtomicU64>,
    pub(crate) state: SharedRef<CachePadded<AtomicU64>>,
    pub(crate) sides: [SharedRef<CachePadded<SideBlock>>; 2],
}

impl HeaderWords {
    /// # Safety
    /// The mapping is at least `size_of::<SegmentHeader>()` long (its base
    /// is page-aligned by the `SharedMapping` contract).
    pub(crate) unsafe fn new(mapping: &Arc<dyn SharedMapping>) -> Self {
        let side = |i: usize| {
            let offset = offset_of!(SegmentHeader, sides) + i * size_of::<CachePadded<SideBlock>>();
            // SAFETY: inside the header (caller's contract), aligned by the
            // `#[repr(C)]` layout, and a side block is only atomics.
            unsafe { SharedRef::new(mapping, offset, || CachePadded::new(SideBlock::default())) }
        };
        Self {
            // SAFETY: offset 0 of a page-aligned mapping of at least header
            // size; an AtomicU64.
            magic: unsafe { SharedRef::new(mapping, 0, || AtomicU64::new(0)) },
            // SAFETY: inside the header, aligned by `#[repr(C)]`, atomics only.
            state: unsafe {
                SharedRef::new(mapping, offset_of!(SegmentHeader, state), || {
                    CachePadded::new(AtomicU64::new(0))
                })
            },
            sides: [side(0), side(1)],
        }
    }
}

/// Handle on a ring's control block.
///
/// # Safety
/// `region` was checked against the mapping ([`RingRegion::check`]).
pub(crate) unsafe fn ring_control(
    mapping: &Arc<dyn SharedMapping>,
    region: &RingRegion,
) -> SharedRef<RingControl> {
    // SAFETY: the region check put the control block inside the mapping,
    // aligned to REGION_ALIGN >= align_of::<RingControl>(); it is atomics
    // only.
    unsafe { SharedRef::new(mapping, region.control_offset, RingControl::default) }
}

/// Resets a ring's indices to an empty ring (both at 0).
///
/// # Safety
/// As for [`ring_control`].
pub(crate) unsafe fn reset_ring(mapping: &Arc<dyn SharedMapping>, region: &RingRegion) {
    // SAFETY: forwarded contract.
    let control = unsafe { ring_control(mapping, region) };
    control.head.store(0, Ordering::Relaxed);
    control.tail.store(0, Ordering::Relaxed);
}

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

/// Resets every loom mock of shared memory (shared words and futex wait
/// queues). Each loom execution starts with fresh mocks anyway (they are
/// `loom::lazy_static`s); call this at the start of a model to be explicit.
#[cfg(orcwire_loom)]
pub fn reset_loom_mocks() {
    loom_shared::reset();
    crate::wait::reset_futex_mock();
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;
    use crate::mapping::HeapMapping;

    fn heap(len: usize) -> Arc<dyn SharedMapping> {
        Arc::new(HeapMapping::new(len).unwrap())
    }

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
