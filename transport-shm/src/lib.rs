//! orcwire-shm: the shared-memory transport for orcwire.
//!
//! Bottom up: [`segment`] and [`named`] (the shared memory object),
//! [`mapping`] (the shared bytes), [`layout`] (what lies where in them),
//! [`ring`] (an SPSC byte ring of frames), [`wait`] (spin, then futex),
//! [`transport`] ([`ShmTransport`], an `orcwire::Transport`),
//! [`fdpass`] and [`liveness`] (the Unix socket that carries the segment's
//! fd and tells each side when the other dies), and [`launch`] (spawning
//! or accepting an executor, and attaching as one). [`inspect`] reads a
//! live segment of another process, read-only, for diagnostics.
#![deny(missing_docs)]

pub mod fdpass;
#[cfg(not(orcwire_loom))]
pub mod inspect;
pub mod launch;
pub mod layout;
pub mod liveness;
pub mod mapping;
pub mod named;
pub mod ring;
pub mod segment;
pub mod transport;
pub mod wait;

pub use fdpass::{recv_fd, recv_fd_timeout, send_fd, socket_pair, FdPassError};
#[cfg(orcwire_loom)]
pub use layout::reset_loom_mocks;
pub use layout::{LayoutError, RingCapacity, SegmentLayout, Side};
pub use liveness::{pidfd_open, LivenessError, LivenessWatcher, OnDeath};
pub use mapping::{HeapMapping, SharedMapping};
pub use named::{remove_stale_segments, NamedRendezvous, NamedRendezvousError};
/// The std/loom shim shared with the core crate, so one
/// `--cfg orcwire_loom` switches both.
/// The sync shim (std's or loom's primitives), as `crate::sync`.
use orcwire_sync as sync;
pub use ring::{heap_ring, RingConsumer, RingError, RingProducer, WriteStatus};
pub use segment::{
    clear_cloexec, dup2_for_exec, inheritable_dup, page_size, Segment, SegmentError,
};
pub use transport::{required_size, ShmConfig, ShmTransport};
pub use wait::WaitStrategy;
