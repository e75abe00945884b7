//! orcwire-shm: the shared-memory transport for orcwire.
#![deny(missing_docs)]

pub mod mapping;
pub mod segment;

pub use mapping::{HeapMapping, SharedMapping};
/// The std/loom shim shared with the core crate, so one
/// `--cfg orcwire_loom` switches both.
pub use orcwire::sync;
pub use segment::{
    clear_cloexec, dup2_for_exec, inheritable_dup, page_size, Segment, SegmentError,
};
