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
//! # Files
//! * `header.rs`: the `#[repr(C)]` types, the [`state`] and [`waiting`]
//!   bits, [`Side`], and the format's constants.
//! * `compute.rs`: [`RingCapacity`], [`RingRegion`], [`SegmentLayout`]:
//!   sizes and offsets, computed and bounds-checked without touching
//!   memory.
//! * `words.rs`: typed access to a segment in a mapping (plain header
//!   fields, the shared words, ring control blocks).
//! * `setup.rs`: [`init`] (controller) and [`validate`] (executor).
//! * `shared_ref.rs`: `SharedRef`, the handle on atomics in the segment,
//!   over one of two backings chosen below, and only here: `mapped.rs` (a
//!   pointer into the mapping, and the compile-time layout assertions) or,
//!   under `--cfg orcwire_loom`, `loom_shared.rs` (a loom object on the
//!   heap per address, since loom cannot place its objects in a mapping).
//!
//! Relies on: [`SharedMapping`](crate::mapping::SharedMapping)'s
//! guarantees (page-aligned base, fixed length), `crossbeam_utils::CachePadded`
//! being `#[repr(C)]` with its value at offset 0, and the `sync` shim for
//! atomics.

mod compute;
mod header;
mod setup;
mod shared_ref;
mod words;

// The backing of `SharedRef`: chosen here, once.
#[cfg(orcwire_loom)]
pub(crate) mod loom_shared;
#[cfg(orcwire_loom)]
use loom_shared as backing;
#[cfg(not(orcwire_loom))]
mod mapped;
#[cfg(not(orcwire_loom))]
use mapped as backing;

pub use compute::{RingCapacity, RingRegion, SegmentLayout};
pub use header::{
    state, waiting, RingControl, RingDescriptor, SegmentHeader, Side, SideBlock,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_RING_CAPACITY, LAYOUT_VERSION, MAGIC, MAX_RING_CAPACITY,
    MIN_RING_CAPACITY, REGION_ALIGN,
};
pub use setup::{init, validate, Attached};
pub(crate) use shared_ref::SharedRef;
#[cfg(any(test, feature = "internals", orcwire_loom))]
pub(crate) use words::reset_ring;
pub(crate) use words::{ring_control, HeaderWords};

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
    /// The mapping does not start with the segment magic (`ORCWSHM1`).
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
