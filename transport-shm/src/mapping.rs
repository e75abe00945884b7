//! [`SharedMapping`]: the memory two processes share, as the rest of the
//! crate sees it — a base pointer and a length, nothing more.
//!
//! The memfd segment and the named segment implement it for real mappings;
//! [`HeapMapping`] implements it on the heap so rings, layouts and whole
//! transports can be tested inside one process (and under Miri).
//!
//! Relies on: the global allocator (for [`HeapMapping`]); everything that
//! reads the shared bytes relies on the [`SharedMapping`] contract.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Alignment every mapping guarantees for its base address.
pub const MAPPING_ALIGN: usize = 4096;

/// Memory shared with the peer.
///
/// Nothing in it may be turned into a `&[u8]` or `&T` of a non-atomic
/// type: the peer can write it at any time. Read it with atomics or
/// volatile/raw copies only.
///
/// # Safety
/// Implementors guarantee that `base()..base() + len()` stays mapped,
/// readable and writable for as long as the implementor is alive, that
/// `base()` is aligned to [`MAPPING_ALIGN`], and that `len()` never changes.
pub unsafe trait SharedMapping: Send + Sync + 'static {
    /// Start of the shared bytes.
    fn base(&self) -> *mut u8;
    /// Number of shared bytes.
    fn len(&self) -> usize;
    /// Whether the mapping is empty (never true for a usable segment).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A zeroed, page-aligned heap allocation standing in for a shared
/// mapping: for in-process tests, benches of the ring alone, and Miri.
pub struct HeapMapping {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl HeapMapping {
    /// Allocates `len` zeroed bytes aligned to [`MAPPING_ALIGN`].
    ///
    /// # Errors
    /// [`std::alloc::LayoutError`] when `len` is zero or too large for a
    /// layout; allocation failure aborts as usual.
    pub fn new(len: usize) -> Result<Self, std::alloc::LayoutError> {
        let layout = Layout::from_size_align(len.max(1), MAPPING_ALIGN)?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        Ok(Self { ptr, layout })
    }
}

impl Drop for HeapMapping {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

// SAFETY: the allocation is owned by this value and only ever accessed
// through raw pointers with atomics or volatile copies, like a real mapping.
unsafe impl Send for HeapMapping {}
// SAFETY: as above; shared access goes through atomics / raw copies.
unsafe impl Sync for HeapMapping {}

// SAFETY: the allocation lives until drop, is aligned to MAPPING_ALIGN by
// its layout, and its length is fixed at construction.
unsafe impl SharedMapping for HeapMapping {
    fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_mapping_is_aligned_and_zeroed() {
        let m = HeapMapping::new(3 * MAPPING_ALIGN + 5).unwrap();
        assert_eq!(m.base() as usize % MAPPING_ALIGN, 0);
        assert_eq!(m.len(), 3 * MAPPING_ALIGN + 5);
        // SAFETY: the mapping is `len` bytes long and we own it exclusively.
        let all_zero = (0..m.len()).all(|i| unsafe { m.base().add(i).read_volatile() } == 0);
        assert!(all_zero);
    }
}
