//! orcwire-shm: the shared-memory transport for orcwire.
#![deny(missing_docs)]

pub mod fdpass;
pub mod liveness;
pub mod mapping;
pub mod named;
pub mod segment;

pub use fdpass::{recv_fd, recv_fd_timeout, send_fd, socket_pair, FdPassError};
pub use liveness::{pidfd_open, LivenessError, LivenessWatcher, OnDeath};
pub use mapping::{HeapMapping, SharedMapping};
pub use named::{remove_stale_segments, NamedSegment, NamedSegmentError};
/// The std/loom shim shared with the core crate, so one
/// `--cfg orcwire_loom` switches both.
pub use orcwire::sync;
pub use segment::{
    clear_cloexec, dup2_for_exec, inheritable_dup, page_size, Segment, SegmentError,
};
