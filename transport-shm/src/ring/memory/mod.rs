//! The memory of one ring: its control block (`head`, `tail`) and its
//! data bytes.
//!
//! The control block is a [`SharedRef`] like every shared word of the
//! segment. The data bytes are reached through [`RingBytes`], which each
//! backing implements; the backing is chosen here, once, as the type
//! [`DataRegion`]:
//! * `mapped.rs` (production): the mapping's own bytes; frame headers are
//!   read and written as atomic words, payloads copied with `memcpy`.
//! * `loom_cells.rs` (under `--cfg orcwire_loom`): one loom `UnsafeCell`
//!   per 16 bytes, on the heap, so loom checks the index protocol *and*
//!   reports data races on payload bytes.
//!
//! Relies on: [`crate::layout`] for the control block and the region
//! checks.

use std::sync::Arc;

use crate::layout::{self, LayoutError, RingControl, RingRegion, SharedRef};
use crate::mapping::SharedMapping;

#[cfg(orcwire_loom)]
mod loom_cells;
#[cfg(not(orcwire_loom))]
mod mapped;

/// The backing of ring data in this build.
#[cfg(orcwire_loom)]
pub(super) type DataRegion = loom_cells::LoomCells;
/// The backing of ring data in this build.
#[cfg(not(orcwire_loom))]
pub(super) type DataRegion = mapped::MappedBytes;

/// Access to a ring's data bytes: what a backing provides.
///
/// Which bytes a side may touch is decided by the index protocol, not
/// here: the producer writes only free space, the consumer reads only
/// published frames, and `&mut` on the ends serialises each side's
/// accesses.
pub(super) trait RingBytes: Send + Sized {
    /// The data bytes of `region` in `mapping`.
    ///
    /// # Safety
    /// `region` was checked against `mapping`.
    unsafe fn new(mapping: &Arc<dyn SharedMapping>, region: &RingRegion) -> Self;

    /// Copies `src` into the ring at `offset`.
    ///
    /// # Safety
    /// `offset + src.len() <= capacity`, `offset` a multiple of 16, and the
    /// bytes are free space owned by the producer.
    unsafe fn write(&self, offset: usize, src: &[u8]);

    /// Copies `len` ring bytes at `offset` to `dst`.
    ///
    /// # Safety
    /// `offset + len <= capacity`, `offset` a multiple of 16, the bytes are
    /// published to the consumer, and `dst` is valid for `len` bytes of
    /// private memory.
    unsafe fn read(&self, offset: usize, dst: *mut u8, len: usize);

    /// Writes a frame header, as four words.
    ///
    /// # Safety
    /// As for [`write`](Self::write), for 32 bytes.
    unsafe fn write_header(&self, offset: usize, words: [u64; 4]);

    /// Reads a frame header once, word by word, into a local.
    ///
    /// # Safety
    /// As for [`read`](Self::read), for 32 bytes.
    unsafe fn read_header(&self, offset: usize) -> [u64; 4];

    /// Asks the CPU to fetch, for writing, the cache lines of
    /// `offset .. offset + len` (the space the next frames go to). Only a
    /// hint: no access is made, nothing can fault, and a backing without
    /// such a thing ignores it. Out-of-range requests are ignored.
    fn prefetch_for_write(&self, _offset: usize, _len: usize) {}

    /// Asks the CPU to fetch the cache lines of `offset .. offset + len`
    /// (published frames about to be read) all at once, rather than one
    /// miss after another as the header and then the payload are read.
    /// A hint, as [`prefetch_for_write`](Self::prefetch_for_write).
    fn prefetch_for_read(&self, _offset: usize, _len: usize) {}

    /// Hints that the lines of `offset .. offset + len` (frames just
    /// published) should leave this core's private caches for the shared
    /// one, where the consumer's read finds them sooner. A hint.
    fn demote(&self, _offset: usize, _len: usize) {}
}

/// The memory of one ring: its control block and its data.
pub(super) struct RingMemory {
    pub(super) control: SharedRef<RingControl>,
    pub(super) data: DataRegion,
    pub(super) capacity: usize,
}

impl RingMemory {
    pub(super) fn new(
        mapping: &Arc<dyn SharedMapping>,
        region: &RingRegion,
    ) -> Result<Self, LayoutError> {
        region.check(mapping.len(), "ring")?;
        Ok(Self {
            // SAFETY: the region was checked against the mapping just above.
            control: unsafe { layout::ring_control(mapping, region) },
            // SAFETY: as above.
            data: unsafe { DataRegion::new(mapping, region) },
            capacity: region.capacity,
        })
    }
}

/// [`RingBytes::demote`] for one control word (the tail the consumer
/// polls). A hint; nothing under loom.
#[inline]
pub(super) fn demote_word<T>(word: &T) {
    #[cfg(all(target_arch = "x86_64", not(orcwire_loom)))]
    // SAFETY: `cldemote` is a hint that never faults and accesses nothing;
    // CPUs without it decode it as a no-op.
    unsafe {
        std::arch::asm!(
            "cldemote [{0}]",
            in(reg) word as *const T,
            options(nostack, preserves_flags, readonly)
        );
    }
    #[cfg(not(all(target_arch = "x86_64", not(orcwire_loom))))]
    let _ = word;
}
