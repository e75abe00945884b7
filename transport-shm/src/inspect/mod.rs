//! Read-only inspection of live segments, for diagnostics
//! (`orcwire inspect PID`).
//!
//! [`inspect_process`] finds a process's segments through `/proc/PID/fd`
//! (memfds show as `/memfd:orcwire`; an fd of a `/dev/shm/orcwire-…`
//! object is looked at too, though orcwire's named flow now keeps only a
//! rendezvous record there, never ring memory, and holds no fd of it once
//! written), opens each through its `/proc` link read-only
//! and decodes it with [`inspect_fd`]; [`inspect_mapping`] decodes a
//! mapping this process already holds. A [`SegmentReport`] prints the
//! header, the state word (flags by name, epoch), each side's futex word,
//! waiting bits and pid (with whether that process is alive), and each
//! ring's capacity, head, tail and bytes in flight.
//!
//! Nothing here ever writes to a segment: a file is mapped `PROT_READ`
//! (or read with `pread`) from a descriptor opened `O_RDONLY`. The memory
//! is written concurrently by live processes, and the peer that wrote it
//! is not trusted, so every word is read once with an atomic load, every
//! offset is bounds-checked before it is followed, and a segment that does
//! not hold together is reported as an [`InspectError`], never a panic.
//! Indices are a snapshot taken word by word, not atomically as a whole.
//!
//! Relies on: the `#[repr(C)]` types of `crate::layout` for every offset
//! (`offset_of!`, and `CachePadded` keeping its value at offset 0, as the
//! layout itself does), the size seals of [`crate::Segment`] (a sealed
//! file cannot shrink under a mapping; an unsealed one is read with
//! `pread` instead, so a truncation shortens a read rather than raising
//! `SIGBUS`), and the std rule that `Relaxed` atomic loads of at most 8
//! bytes are sound on read-only memory on 64-bit targets (std's
//! "Atomic accesses to read-only memory"). The loads use `std`'s atomics,
//! not the `sync` shim's: loom cannot model memory another process
//! writes, and this module is not built under loom.
//!
//! # Files
//! * `report.rs`: what an inspection finds ([`SegmentReport`] and its
//!   parts) and how it prints.
//! * `words.rs`: reading one word at a time from a mapping (atomic
//!   `Relaxed` loads) or from a file (`pread`).
//! * `decode.rs`: the header, side blocks and ring indices, checked as
//!   they are read ([`inspect_mapping`], [`inspect_fd`]).
//! * `process.rs`: finding a process's segments through `/proc`
//!   ([`inspect_process`]).
//! * `mod.rs`: [`InspectError`].

mod decode;
mod process;
mod report;
mod words;

use std::io;

pub use decode::{inspect_fd, inspect_mapping};
pub use process::{inspect_process, FoundSegment};
pub use report::{Liveness, RingReport, SegmentReport, SideReport};

use crate::layout::{LAYOUT_VERSION, MAGIC};

/// Why a process or segment could not be inspected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// No process has this pid.
    #[error("no process {pid}: /proc/{pid} does not exist; check the pid (for example with `pgrep orcwire`)")]
    NoSuchProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// The process belongs to another user.
    #[error("process {pid} belongs to uid {owner}, not to this user (uid {us}); inspect your own processes only, or run as uid {owner}")]
    OtherUser {
        /// The pid asked for.
        pid: u32,
        /// The uid that owns it.
        owner: u32,
        /// Our effective uid.
        us: u32,
    },
    /// Reading `/proc` failed.
    #[error("reading {path}: {source}; the process may have exited, or it is not ours to inspect")]
    Proc {
        /// The `/proc` path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// A system call on the segment's descriptor failed.
    #[error("{op} on the segment failed: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The descriptor is not a regular file (a pipe, socket, device).
    #[error("not an orcwire segment: the descriptor is not a regular file")]
    NotAFile,
    /// The file is too short to hold what the header says it holds.
    #[error("not an orcwire segment: {len} bytes where at least {needed} are needed")]
    TooShort {
        /// Bytes the file or mapping has.
        len: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// The first eight bytes are not the segment magic (`ORCWSHM1`).
    #[error("not an orcwire segment: magic {found:#018x}, expected {MAGIC:#018x} (\"ORCWSHM1\"), or not initialised yet")]
    NotASegment {
        /// The first eight bytes, as a little-endian `u64`.
        found: u64,
    },
    /// The segment was written by a build with another layout.
    #[error("the segment has layout version {found}; this build decodes version {LAYOUT_VERSION}; inspect it with an orcwire tool built from the same orcwire-shm as the process")]
    VersionMismatch {
        /// The version in the segment.
        found: u32,
    },
    /// A size or offset in the header does not hold together.
    #[error(
        "the segment header is inconsistent: {0}; the segment is corrupt or being re-initialised"
    )]
    Invalid(String),
}
