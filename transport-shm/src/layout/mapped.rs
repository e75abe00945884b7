//! The production backing of [`SharedRef`](super::SharedRef): the shared
//! words are the mapping's own bytes, reached through a pointer. Since
//! this is where the `#[repr(C)]` types of `header.rs` are laid over
//! memory, their sizes and field offsets are asserted here, at compile
//! time.
//!
//! Relies on: [`SharedMapping`]'s guarantees, and `SharedRef` keeping the
//! mapping alive as long as the slot.

use std::mem::{align_of, offset_of, size_of};
use std::ptr::NonNull;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use super::{RingControl, RingDescriptor, SegmentHeader, SideBlock, REGION_ALIGN};
use crate::mapping::{SharedMapping, MAPPING_ALIGN};
use crate::sync::{AtomicU32, AtomicU64};

/// A pointer to the `T` in the mapping.
pub(super) struct Slot<T>(NonNull<T>);

impl<T> Slot<T> {
    /// # Safety
    /// As for [`SharedRef::new`](super::SharedRef::new).
    pub(super) unsafe fn new(
        mapping: &Arc<dyn SharedMapping>,
        offset: usize,
        make: fn() -> T,
    ) -> Self {
        // The bytes already are the `T`: nothing to make.
        let _ = make;
        // SAFETY: in bounds by the caller's contract, so the pointer is
        // derived from the non-null mapping base without wrapping.
        let raw = unsafe { mapping.base().add(offset) }.cast::<T>();
        let Some(ptr) = NonNull::new(raw) else {
            unreachable!("a mapping base plus an in-bounds offset is never null")
        };
        Self(ptr)
    }

    /// The `T`.
    ///
    /// # Safety
    /// The mapping given to [`new`](Self::new) is still alive.
    #[inline(always)]
    pub(super) unsafe fn get(&self) -> &T {
        // SAFETY: `new`'s contract (in bounds, aligned, only atomics) and
        // ours (the mapping is alive).
        unsafe { self.0.as_ref() }
    }
}

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
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const _: () = {
    assert!(size_of::<SegmentHeader>() == 512);
    assert!(offset_of!(SegmentHeader, state) == 128);
    assert!(offset_of!(SegmentHeader, sides) == 256);
    assert!(size_of::<RingControl>() == 256);
};
