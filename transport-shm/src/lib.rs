//! orcwire-shm: the shared-memory transport for orcwire.
//!
//! A controller and an executor on the same host share one sealed memfd
//! segment holding two lock-free single-producer single-consumer rings,
//! one per direction. [`ShmTransport`] is an `orcwire::Transport` over
//! such a segment: hand it to `ControllerBuilder::connect` or
//! `ExecutorBuilder::connect`. A blocked call spins for a budget and then
//! sleeps on a futex word in the segment ([`WaitStrategy`]); the sizes are
//! in [`ShmConfig`]. Everything read from the segment is read once,
//! range-checked and copied out before it is parsed: a peer that corrupts
//! it gets the connection closed with a protocol error, never a crash of
//! this process. Linux only.
//!
//! # Connecting
//! Three ways in, one handshake:
//!
//! * [`ExecutorCommand::spawn`] (controller): creates a sealed memfd
//!   segment and a Unix `SOCK_SEQPACKET` pair, and spawns the executor with
//!   both fds inherited (only by that child: they are made inheritable in
//!   the child between `fork` and `exec`, never in the parent). The fd
//!   numbers travel in the [`ENV_INHERITED`] environment variable together
//!   with the controller's pid, so a grandchild that inherits the variable
//!   but not the fds refuses it instead of attaching to a stranger's fd.
//! * [`ShmListener`] (controller): listens on a Unix socket path for an
//!   executor started independently, and sends it the memfd with
//!   `SCM_RIGHTS`. The socket is created mode 0600 and the peer's uid is
//!   checked (`SO_PEERCRED`).
//! * [`attach_inherited`] / [`attach_path`] (executor): the two ends of
//!   the above.
//! * [`NamedOffer`] / [`attach_named`]: a name in `/dev/shm` that leads
//!   to the memfd, for an executor that can only be told a name (no
//!   socket, no fd); liveness then comes from each side's pidfd of the
//!   other. See [`NamedRendezvous`] for what this flow needs.
//!
//! In every case the executor validates the memfd (seals, size) and the
//! segment layout before it trusts anything in it, attaches, and answers
//! on the socket with one datagram: `ATTACHED`, or `ERROR <text>`. The
//! controller waits for that answer (bounded), so a failed attach is an
//! error on both sides rather than a hang.
//!
//! After the handshake the socket pair stays open, unused, as the
//! *liveness channel*: each side's [`ShmTransport::watch_peer`] sees it
//! hang up the instant the other process exits, however it exits, and the
//! transport fails every call with `PeerDied`. The controller also watches
//! the spawned child's pidfd.
//!
//! ```no_run
//! use std::process::Command;
//! use orcwire::ControllerBuilder;
//! use orcwire_shm::ExecutorCommand;
//!
//! // The executor binary calls `orcwire_shm::attach_inherited`.
//! let spawned = ExecutorCommand::new(Command::new("./my-executor")).spawn()?;
//! let controller = ControllerBuilder::new().connect(spawned.transport.clone())?;
//! // ... calls ...
//! controller.disconnect();
//! let status = spawned.process.wait_timeout(std::time::Duration::from_secs(5))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Building blocks
//! For a connection set up some other way: a [`Segment`] (sealed memfd)
//! or any other [`SharedMapping`] ([`HeapMapping`] within one process) of
//! [`required_size`] bytes; [`ShmTransport::create`] on the controller's
//! side and [`ShmTransport::attach`] on the executor's; the segment's fd
//! handed over by inheritance ([`inheritable_dup`], [`dup2_for_exec`],
//! [`clear_cloexec`]) or over a Unix socket ([`socket_pair`], [`send_fd`],
//! [`recv_fd`], [`recv_fd_timeout`]); and [`ShmTransport::watch_peer`]
//! (with [`pidfd_open`]) for liveness. [`remove_stale_segments`] cleans
//! up names a crash left in `/dev/shm`.
//!
//! # Diagnostics
//! [`inspect`] reads a live segment of another process, read-only, and
//! reports its header, state flags, wake words and ring indices (what
//! `orcwire inspect PID` prints), each side's and ring's by [`Side`].
//!
//! # Inside
//! The modules are private; each file's docs say what it holds and what
//! it relies on. Bottom up: `segment` and `named` (the shared memory
//! object), `mapping` (the shared bytes), `layout` (what lies where in
//! them), `ring` (an SPSC byte ring of frames), `wait` (spin, then
//! futex), `transport` ([`ShmTransport`]), `fdpass` and `liveness` (the
//! Unix socket that carries the segment's fd and tells each side when the
//! other dies), and `launch` (the three flows). Where the code differs
//! between production and the loom models (`--cfg orcwire_loom`), the
//! backing is chosen once per module: the mapping's bytes or loom objects
//! on the heap (`layout`, `ring`), the futex system call or its loom mock
//! (`wait`). orcwire's own tests reach `layout`, `ring`, `wait` and
//! `liveness` through the `internals` feature, which makes no stability
//! promise.
#![deny(missing_docs)]

/// Declares an item that orcwire's own tests and loom models reach from
/// outside the crate: `pub` (hidden from the docs) with the `internals`
/// feature or under `--cfg orcwire_loom`, `pub(crate)` otherwise.
macro_rules! internal {
    ($(#[$attr:meta])* $kind:ident $($rest:tt)*) => {
        #[cfg(any(feature = "internals", orcwire_loom))]
        #[doc(hidden)]
        $(#[$attr])*
        pub $kind $($rest)*

        #[cfg(not(any(feature = "internals", orcwire_loom)))]
        $(#[$attr])*
        pub(crate) $kind $($rest)*
    };
}

mod fdpass;
#[cfg(not(orcwire_loom))]
pub mod inspect;
// Public so that `orcwire_shm::X` paths keep resolving; every
// item is re-exported, and documented, at the root.
#[doc(hidden)]
pub mod launch;
internal! { mod layout; }
internal! { mod liveness; }
mod mapping;
mod named;
internal! { mod ring; }
mod segment;
pub mod trace;
mod transport;
internal! { mod wait; }

/// The sync shim (std's or loom's primitives), as `crate::sync`: the one
/// `--cfg orcwire_loom` switches this crate and the core crate together.
use orcwire_sync as sync;

pub use fdpass::{recv_fd, recv_fd_timeout, send_fd, socket_pair, FdPassError};
pub use launch::{
    attach_inherited, attach_named, attach_path, is_launched_executor, ExecutorCommand,
    ExecutorProcess, LaunchError, NamedOffer, ShmListener, SpawnedExecutor, DEFAULT_ATTACH_TIMEOUT,
    ENV_INHERITED,
};
pub use layout::{LayoutError, RingCapacity, Side};
pub use liveness::{pidfd_open, LivenessError};
pub use mapping::{HeapMapping, SharedMapping, MAPPING_ALIGN};
pub use named::{remove_stale_segments, NamedRendezvous, NamedRendezvousError};
pub use segment::{
    clear_cloexec, dup2_for_exec, inheritable_dup, page_size, Segment, SegmentError,
};
pub use transport::{required_size, ShmConfig, ShmTransport};
pub use wait::WaitStrategy;

/// Resets every loom mock of shared memory (shared words and futex wait
/// queues). Each loom execution starts with fresh mocks anyway (they are
/// `loom::lazy_static`s); call this at the start of a model to be explicit.
#[cfg(orcwire_loom)]
pub fn reset_loom_mocks() {
    layout::loom_shared::reset();
    wait::futex::reset();
}
