//! [`SharedRef`]: a typed handle on a word (or a padded block of atomics)
//! in the segment, which keeps the mapping alive.
//!
//! What the handle holds is its backing's `Slot`, chosen once in
//! `layout/mod.rs`: in production (`mapped.rs`) a pointer into the
//! mapping; under `--cfg orcwire_loom` (`loom_shared.rs`) a loom object on
//! the heap, looked up by the address it would have in the mapping, so two
//! handles on the same offset of the same mapping share one modelled
//! object. This file is the same for both.
//!
//! Relies on: [`SharedMapping`]'s guarantees (the bytes stay mapped while
//! the mapping lives; the base is page-aligned).

use std::mem::{align_of, size_of};
use std::ops::Deref;
use std::sync::Arc;

use super::backing::Slot;
use crate::mapping::SharedMapping;

/// A typed handle on a word (or padded block of atomics) in the segment;
/// see the [module docs](self).
pub(crate) struct SharedRef<T: 'static> {
    slot: Slot<T>,
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
        Self {
            // SAFETY: forwarded contract.
            slot: unsafe { Slot::new(mapping, offset, make) },
            _mapping: Arc::clone(mapping),
        }
    }
}

impl<T: 'static> Deref for SharedRef<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: `new`'s contract: in bounds, aligned, only atomics, and
        // the mapping is kept alive by `_mapping` as long as `self`.
        unsafe { self.slot.get() }
    }
}

// SAFETY: the handle is a shared reference to atomics (`T: Sync`) in memory
// kept alive by the `Arc` it holds; moving it between threads is like moving
// an `&T`.
unsafe impl<T: Sync + 'static> Send for SharedRef<T> {}
// SAFETY: as above; sharing the handle only hands out `&T`, with `T: Sync`.
unsafe impl<T: Sync + 'static> Sync for SharedRef<T> {}
