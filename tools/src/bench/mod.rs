//! Benchmark machinery shared by the criterion suite
//! (`tools/benches/transports.rs`) and `orcwire bench`: what a case is,
//! the two-process runners, the raw floor, percentile statistics, CPU
//! pinning and the JSON report. It uses only the public API of `orcwire`
//! and `orcwire-shm`; nothing in the transport depends on it.
//!
//! Every case runs between **two real processes**: the controller (the
//! process that calls [`Peer::spawn`]) and a child that is this same
//! executable re-run with the [`ENV_CHILD`] variable set. A program that
//! uses this module must therefore call [`run_child_if_requested`] first
//! thing in `main`; the child ignores its command line, so a bench
//! harness's own arguments never reach it.
//!
//! The cases:
//! * `shm-spin`, `shm-balanced`, `shm-block`: the shared-memory transport
//!   under each [`WaitStrategy`](orcwire_shm::WaitStrategy) preset (both sides
//!   use the same preset), with the default dispatch (handlers run on the
//!   connection worker that read the call).
//! * `pipe`: the stream transport over two pipes, as LLVM's remote
//!   executor runs; `uds`: the stream transport over a Unix socket pair.
//! * `floor-spin`, `floor-futex`: the raw floor — an atomic ping-pong
//!   over a memfd mapping between the same two processes, no framing.
//!   Payload 0 is the bare ping-pong; any other payload adds its
//!   copy-in/copy-out twin (the caller copies the argument in, the child
//!   copies it out and the reply back in, the caller copies the reply
//!   out). `floor-futex` is the same with a `FUTEX_WAIT`/`FUTEX_WAKE`
//!   pair instead of spinning.
//! * `shm-raw`: the shared-memory transport (spin preset) with no engine on
//!   either side, pipelined calls only, one thread, controller → child:
//!   [`drive_in_batches`] against [`echo_in_batches`]. The ceiling that
//!   pipelined calls through the engine could reach over this transport
//!   between the same two processes, and the floor the `shm-*` pipelined
//!   cases are compared with (see [`Ratios::to_floor`]).
//!
//! Every case checks its results (echo contents, stamped with the call
//! number) before and while it is timed; a wrong result is an error.
//!
//! Relies on: `orcwire_shm::ExecutorCommand` (the shared-memory and raw
//! children),
//! `orcwire::stream` (pipe and socket children), `orcwire_shm::Segment`
//! (the floor's memfd), `nix` for `sched_setaffinity`, `libc` for the
//! floor's futex.

mod child;
mod floor;
mod futex;
mod peer;
mod pin;
mod raw;
mod stats;
mod suite;

pub use child::{run_child_if_requested, ENV_CHILD};
pub use peer::{pattern, Peer, SAMPLE_EVERY};
pub use pin::{allowed_cpus, pin_current_thread, PinnedEchoPair, Pinning};
pub use raw::{drive_in_batches, echo_in_batches, BATCH};
pub use stats::{percentile, Summary};
pub use suite::{ratios, run_suite, to_json, CaseResult, Ratios, SuiteConfig};

use std::fmt;

/// The transports (and floors) a case can run over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Shared memory, [`WaitStrategy::lowest_latency`](orcwire_shm::WaitStrategy::lowest_latency).
    ShmSpin,
    /// Shared memory, [`WaitStrategy::balanced`](orcwire_shm::WaitStrategy::balanced).
    ShmBalanced,
    /// Shared memory, [`WaitStrategy::low_cpu`](orcwire_shm::WaitStrategy::low_cpu).
    ShmBlock,
    /// The stream transport over two pipes.
    Pipe,
    /// The stream transport over a Unix socket pair.
    Uds,
    /// The raw floor, spinning.
    FloorSpin,
    /// The raw floor, futex wait/wake.
    FloorFutex,
    /// The shared-memory transport (spin preset) with no engine on either
    /// side: pipelined calls, 1 thread, controller → child only.
    ShmRaw,
}

impl TransportKind {
    /// Every kind, floors first, then `shm-raw` (the order of a full run).
    pub const ALL: [TransportKind; 8] = [
        TransportKind::FloorSpin,
        TransportKind::FloorFutex,
        TransportKind::ShmRaw,
        TransportKind::ShmSpin,
        TransportKind::ShmBalanced,
        TransportKind::ShmBlock,
        TransportKind::Pipe,
        TransportKind::Uds,
    ];

    /// The name used in tables and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            TransportKind::ShmSpin => "shm-spin",
            TransportKind::ShmBalanced => "shm-balanced",
            TransportKind::ShmBlock => "shm-block",
            TransportKind::Pipe => "pipe",
            TransportKind::Uds => "uds",
            TransportKind::FloorSpin => "floor-spin",
            TransportKind::FloorFutex => "floor-futex",
            TransportKind::ShmRaw => "shm-raw",
        }
    }

    /// Parses [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether this is one of the raw floors.
    pub const fn is_floor(self) -> bool {
        matches!(self, TransportKind::FloorSpin | TransportKind::FloorFutex)
    }

    /// Whether this is `shm-raw`, the transport with no engine.
    pub const fn is_raw(self) -> bool {
        matches!(self, TransportKind::ShmRaw)
    }

    /// Whether this runs over the shared-memory transport (the `shm-*`
    /// kinds, `shm-raw` included).
    pub const fn is_shm(self) -> bool {
        matches!(
            self,
            TransportKind::ShmSpin
                | TransportKind::ShmBalanced
                | TransportKind::ShmBlock
                | TransportKind::ShmRaw
        )
    }

    /// Whether this kind measures round trips in `direction`: the floors
    /// controller → child only (they are symmetric), `shm-raw` never, the
    /// rest both ways.
    pub const fn measures_rtt(self, direction: Direction) -> bool {
        match self {
            TransportKind::ShmRaw => false,
            k if k.is_floor() => matches!(direction, Direction::ToExecutor),
            _ => true,
        }
    }

    /// Whether this kind measures pipelined calls from `threads` threads
    /// in `direction`: the floors never, `shm-raw` from 1 thread
    /// controller → child only, the rest always.
    pub const fn measures_throughput(self, direction: Direction, threads: usize) -> bool {
        match self {
            TransportKind::ShmRaw => matches!(direction, Direction::ToExecutor) && threads == 1,
            k => !k.is_floor(),
        }
    }

    /// The floor a transport's round trips are held to: the futex floor
    /// for the blocking preset, the spin floor for everything else.
    pub const fn floor(self) -> TransportKind {
        match self {
            TransportKind::ShmBlock | TransportKind::FloorFutex => TransportKind::FloorFutex,
            _ => TransportKind::FloorSpin,
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which side makes the calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The controller calls the executor's `echo`.
    ToExecutor,
    /// The executor calls the controller's `ctl_echo` (and measures).
    ToController,
}

impl Direction {
    /// The name used in tables and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Direction::ToExecutor => "to-executor",
            Direction::ToController => "to-controller",
        }
    }
}

/// What a case measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One call at a time: round-trip latency.
    Rtt,
    /// `window` calls in flight from each of `threads` threads.
    Throughput {
        /// Calling threads.
        threads: usize,
        /// Calls each thread keeps in flight.
        window: usize,
    },
}

impl Mode {
    /// `"rtt"` or `"throughput"`.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Rtt => "rtt",
            Mode::Throughput { .. } => "throughput",
        }
    }
}

/// Why a benchmark could not run or produced a wrong result.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The child process could not be started or connected.
    #[error("could not start the {kind} peer: {detail}")]
    Start {
        /// The transport.
        kind: &'static str,
        /// What failed.
        detail: String,
    },
    /// A call failed.
    #[error("{0}")]
    Call(String),
    /// A result was wrong: the benchmark is measuring something broken.
    #[error("wrong result: {0}")]
    WrongResult(String),
    /// The case is not supported by this transport.
    #[error("{0}")]
    Unsupported(String),
    /// The child did not behave (exit status, stuck).
    #[error("the child process: {0}")]
    Child(String),
    /// Writing the report failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}
