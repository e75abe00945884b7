//! Launch and attach: how a controller and an executor find each other.
//! Three ways in, one handshake; the flows, the handshake and the
//! liveness channel are described in the [crate docs](crate), where every
//! item of this module is re-exported.
//!
//! # Files
//! * `handshake.rs`: the executor's one-datagram answer, and the segment
//!   set-up every flow shares (create and join; receive, validate, attach
//!   and answer).
//! * `spawn.rs`: [`ExecutorCommand`] and [`attach_inherited`];
//!   `process.rs`: the spawned [`ExecutorProcess`].
//! * `listener.rs`: [`ShmListener`] and [`attach_path`].
//! * `named.rs`: [`NamedOffer`] and [`attach_named`].
//! * `mod.rs`: [`LaunchError`], shared by all of them.
//!
//! Relies on: `segment`, `named`, `fdpass` and `liveness` for the OS
//! objects, and `transport` for the two ends.

mod handshake;
mod listener;
mod named;
mod process;
mod spawn;

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;

pub use listener::{attach_path, ShmListener};
pub use named::{attach_named, NamedOffer};
pub use process::ExecutorProcess;
pub use spawn::{
    attach_inherited, is_launched_executor, ExecutorCommand, SpawnedExecutor, ENV_INHERITED,
};

use crate::fdpass::FdPassError;
use crate::layout::LayoutError;
use crate::liveness::LivenessError;
use crate::named::NamedRendezvousError;
use crate::segment::SegmentError;

/// Default bound on the whole handshake.
pub const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a launch, accept or attach failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The executor process could not be started.
    #[error("could not start the executor process: {0}; check the program path and permissions")]
    Spawn(#[source] io::Error),
    /// The shared segment could not be created or was refused.
    #[error("shared segment: {0}")]
    Segment(#[from] SegmentError),
    /// The segment's layout was refused.
    #[error("shared segment layout: {0}")]
    Layout(#[from] LayoutError),
    /// Passing the segment's fd failed.
    #[error("passing the segment fd: {0}")]
    FdPass(#[from] FdPassError),
    /// The liveness watcher could not start.
    #[error("{0}")]
    Liveness(#[from] LivenessError),
    /// A socket call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The error the kernel returned.
        source: Errno,
    },
    /// The executor reported that it could not attach.
    #[error("the executor could not attach: {0}")]
    PeerRefused(String),
    /// The peer went away during the handshake.
    #[error("the peer hung up or exited during the handshake{}", exit.map(|s| format!(" ({s})")).unwrap_or_default())]
    PeerGone {
        /// The spawned executor's exit status, when known.
        exit: Option<ExitStatus>,
    },
    /// The handshake did not finish in time.
    #[error(
        "the handshake did not finish within {0:?}; the peer is stuck or not an orcwire executor"
    )]
    Timeout(Duration),
    /// The peer answered something that is not part of the handshake.
    #[error("the peer broke the handshake: {0}")]
    Protocol(String),
    /// `attach_inherited` found no usable [`ENV_INHERITED`].
    #[error(
        "{0}; start this process with orcwire_shm::ExecutorCommand, or attach with attach_path"
    )]
    NotLaunched(String),
    /// The named segment could not be created, opened or unlinked.
    #[error("named segment: {0}")]
    Named(#[from] NamedRendezvousError),
    /// A connection on the listener came from another user.
    #[error("refused a connection from uid {peer}: only uid {ours} may attach")]
    WrongUser {
        /// The connecting process's uid.
        peer: u32,
        /// Our uid.
        ours: u32,
    },
    /// The listening socket could not be set up.
    #[error("could not listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

fn os(op: &'static str) -> impl FnOnce(Errno) -> LaunchError {
    move |source| LaunchError::Os { op, source }
}
