//! The production backing of ring data: the bytes of the mapping itself.
//!
//! Frame headers are read and written as four atomic `u64` words (the
//! first, a frame's publication, with `Release`/`Acquire`; the rest
//! `Relaxed`, ordered by it); payloads are copied with
//! `ptr::copy_nonoverlapping`, never through a `&[u8]` over the ring (the
//! one remaining gap, a plain copy of bytes a hostile peer may write at the
//! same time, is described in the [ring docs](super::super)). The atomics
//! are `std`'s, not the `sync` shim's: loom never sees this backing.
//!
//! Relies on: [`SharedMapping`]'s guarantees and the region check done by
//! `RingMemory::new`.

use std::sync::Arc;

use super::hint::{each_line, LineHint};
use super::RingBytes;
use crate::layout::RingRegion;
use crate::mapping::SharedMapping;
use crate::sync::Ordering;

/// Ring data laid over the mapping.
pub(crate) struct MappedBytes {
    base: std::ptr::NonNull<u8>,
    _mapping: Arc<dyn SharedMapping>,
}

// SAFETY: the region is raw shared memory kept alive by the Arc; each ring
// end touches only the bytes the index protocol gives it, and `&mut self`
// on the ends serialises a side's accesses.
unsafe impl Send for MappedBytes {}

impl RingBytes for MappedBytes {
    unsafe fn new(mapping: &Arc<dyn SharedMapping>, region: &RingRegion) -> Self {
        // SAFETY: the checked data offset lies inside the mapping.
        let raw = unsafe { mapping.base().add(region.data_offset) };
        let Some(base) = std::ptr::NonNull::new(raw) else {
            unreachable!("a mapping base plus an in-bounds offset is never null")
        };
        Self {
            base,
            _mapping: Arc::clone(mapping),
        }
    }

    unsafe fn write(&self, offset: usize, src: &[u8]) {
        // SAFETY: in bounds by the caller's contract; `src` is private
        // memory, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(offset), src.len())
        }
    }

    unsafe fn read(&self, offset: usize, dst: *mut u8, len: usize) {
        // SAFETY: in bounds by the caller's contract; a raw copy makes no
        // reference to the shared bytes, whatever the peer writes meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(self.base.as_ptr().add(offset), dst, len) }
    }

    unsafe fn load_commit(&self, offset: usize) -> u64 {
        // SYNC POINT: frames published (Acquire half; pairs with the
        // producer's `Release` store in `store_commit`).
        // SAFETY: in bounds by the caller's contract; base and offset are
        // 16-aligned, so the word is 8-aligned; ring bytes are only ever
        // accessed through atomics (headers) or raw copies (payloads).
        unsafe { self.word(offset, 0) }.load(std::sync::atomic::Ordering::Acquire)
    }

    unsafe fn store_commit(&self, offset: usize, word: u64, order: Ordering) {
        // SYNC POINT: frames published (Release half, when `order` is
        // `Release`; see `load_commit`).
        // SAFETY: as in `load_commit`.
        unsafe { self.word(offset, 0) }.store(word, order);
    }

    /// Three atomic words: the peer may read (or, if hostile, write) them
    /// at any time, and atomic accesses keep that defined behaviour on
    /// both sides.
    unsafe fn write_header_rest(&self, offset: usize, words: [u64; 3]) {
        for (i, w) in words.into_iter().enumerate() {
            // SYNC POINT: none of its own; `Relaxed` because the frame's
            // publication (`store_commit`, `Release`) orders the header
            // before the consumer reads it.
            // SAFETY: as in `load_commit`.
            unsafe { self.word(offset, i + 1) }.store(w, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn hint_lines(&self, offset: usize, len: usize, hint: LineHint) {
        each_line(self.base.as_ptr().wrapping_add(offset), len, hint);
    }

    unsafe fn read_header_rest(&self, offset: usize) -> [u64; 3] {
        let mut words = [0u64; 3];
        for (i, w) in words.iter_mut().enumerate() {
            // SYNC POINT: none of its own; `Relaxed` because the frame's
            // publication (`load_commit`, `Acquire`) made the header visible.
            // SAFETY: as in `load_commit`.
            *w = unsafe { self.word(offset, i + 1) }.load(std::sync::atomic::Ordering::Relaxed);
        }
        words
    }
}

impl MappedBytes {
    /// Word `i` of the header at `offset`, as an atomic.
    ///
    /// # Safety
    /// `offset + 8 * (i + 1) <= capacity`, `offset` a multiple of 8.
    unsafe fn word(&self, offset: usize, i: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: in bounds and 8-aligned by the caller's contract; the
        // mapping outlives `self`; ring bytes are only ever accessed through
        // atomics (headers) or raw copies (payloads), never through a
        // reference of a non-atomic type.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast::<u64>().add(i)) }
    }
}
