//! Typed access to a segment in a mapping: the header's plain fields (one
//! atomic load or store each, through `put`/`get`), its shared words
//! ([`HeaderWords`]: magic, state, side blocks) and the rings' control
//! blocks.
//!
//! Nothing here makes a reference to bytes the peer can write other than
//! through [`SharedRef`] (atomics only); the plain fields are reached
//! through raw field pointers.
//!
//! Relies on: the caller having checked the mapping's length (every
//! function here is `unsafe` with that contract), and the `#[repr(C)]`
//! layout of `header.rs`.

use std::mem::{offset_of, size_of};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use super::{RingControl, RingRegion, SegmentHeader, SharedRef, SideBlock};
use crate::mapping::SharedMapping;
use crate::sync::{AtomicU64, Ordering};

/// The header at the mapping's base: a raw pointer, only ever used to
/// derive field pointers.
pub(super) fn header_ptr(mapping: &dyn SharedMapping) -> *mut SegmentHeader {
    mapping.base().cast()
}

/// A plain header field: written once by the controller before
/// [`MAGIC`](super::MAGIC) is published, read once by the executor after
/// it saw it.
///
/// Both ends go through `std`'s atomics (`Relaxed`: the `magic` word's
/// `Release`/`Acquire` pair orders them), never plain or volatile
/// accesses: a peer may write the same bytes at any time, and an atomic
/// access to memory another process writes is defined behaviour where a
/// plain one is a data race. They are `std`'s and not the `sync` shim's
/// because loom cannot place its objects in a mapping; the words that
/// loom models are the ones `SharedRef` hands out.
pub(super) trait PlainField: Copy {
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
pub(super) unsafe fn put<T: PlainField>(field: *mut T, value: T) {
    // SAFETY: forwarded contract.
    unsafe { T::store(field, value) }
}

/// Reads a plain header field once.
///
/// # Safety
/// As for [`PlainField::load`].
pub(super) unsafe fn get<T: PlainField>(field: *const T) -> T {
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
