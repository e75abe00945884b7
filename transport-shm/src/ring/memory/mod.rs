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
use crate::sync::Ordering;

pub(super) mod hint;
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

    /// Loads a frame slot's first header word, its publication
    /// (`Acquire`): 0 while no frame is published there.
    ///
    /// # Safety
    /// `offset + 8 <= capacity` and `offset` a multiple of 16.
    unsafe fn load_commit(&self, offset: usize) -> u64;

    /// Stores a frame slot's first header word: with `Release` to publish
    /// the frame (and every frame written after it), `Relaxed` to clear a
    /// slot or to write a frame that an earlier frame's `Release` store
    /// will publish.
    ///
    /// # Safety
    /// As for [`write`](Self::write), for 8 bytes.
    unsafe fn store_commit(&self, offset: usize, word: u64, order: Ordering);

    /// Writes the rest of a frame header (words 1 to 3) at the frame's
    /// `offset`.
    ///
    /// # Safety
    /// As for [`write`](Self::write), for 32 bytes.
    unsafe fn write_header_rest(&self, offset: usize, words: [u64; 3]);

    /// Reads the rest of a frame header (words 1 to 3) once, word by word,
    /// into a local.
    ///
    /// # Safety
    /// As for [`read`](Self::read), for 32 bytes.
    unsafe fn read_header_rest(&self, offset: usize) -> [u64; 3];

    /// Applies a cache hint ([`hint`]) to the lines of
    /// `offset .. offset + len`. Only a hint: no access is made and
    /// nothing can fault; a backing without such a thing ignores it.
    fn hint_lines(&self, _offset: usize, _len: usize, _hint: hint::LineHint) {}
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
