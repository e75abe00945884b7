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

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::signal::kill;
use nix::sys::stat::{fstat, SFlag};
use nix::unistd::Pid;

use crate::layout::{
    state, waiting, RingControl, RingDescriptor, SegmentHeader, Side, SideBlock, LAYOUT_VERSION,
    MAGIC, MAX_RING_CAPACITY, MIN_RING_CAPACITY, REGION_ALIGN,
};
use crate::mapping::SharedMapping;

/// The state flags by name: `layout::state::NAMES`, the one table to
/// edit when the state word gains or loses a flag. Bits not named there
/// print as hex.
const STATE_FLAGS: &[(u64, &str)] = &state::NAMES;

/// The waiting bits by name, with who sleeps while the bit is set.
const WAITING_BITS: &[(u32, &str, &str)] = &[
    (
        waiting::DATA,
        "DATA",
        "its consumer sleeps until the peer publishes frames",
    ),
    (
        waiting::SPACE,
        "SPACE",
        "its producer sleeps until the peer frees room",
    ),
];

/// How `/proc` names the fd of a memfd segment (`Segment::create`'s name).
const MEMFD_LINK_PREFIX: &str = "/memfd:orcwire";
/// How `/proc` names the fd of a `/dev/shm/orcwire-…` object.
const NAMED_LINK_PREFIX: &str = "/dev/shm/orcwire-";
/// Attempts at a head/tail pair that the producer did not race past.
const INDEX_READS: usize = 4;

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

/// Whether the process a side block names is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The side has not written its pid yet (0).
    NotRecorded,
    /// The number cannot be a pid (above `i32::MAX`): the segment is corrupt.
    NotAPid,
    /// A process with this pid exists (`kill(pid, 0)` succeeded or was
    /// refused for permission). Pids are reused, so this is a hint.
    Alive,
    /// No process has this pid.
    Gone,
}

/// One side's block: its futex word, waiting bits and pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SideReport {
    /// Which side.
    pub side: Side,
    /// The futex word this side sleeps on (any value; bumped per wake).
    pub futex: u32,
    /// The waiting bits this side announced (1: its consumer waits for
    /// data, 2: its producer waits for space).
    pub waiting: u32,
    /// The pid this side wrote (0: not yet).
    pub pid: u32,
    /// Whether that pid names a running process, checked while inspecting.
    pub liveness: Liveness,
}

/// One ring's descriptor and indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingReport {
    /// The side that produces into this ring.
    pub sender: Side,
    /// Data bytes of the ring.
    pub capacity: u64,
    /// Offset of the ring's control block in the segment.
    pub control_offset: u64,
    /// Offset of the ring's data in the segment.
    pub data_offset: u64,
    /// Next byte position to consume, in `0 .. 2 * capacity` when sane.
    pub head: u64,
    /// One past the last published byte position, in `0 .. 2 * capacity`
    /// when sane.
    pub tail: u64,
}

impl RingReport {
    /// Bytes published and not yet consumed (`tail - head` in the
    /// `2 * capacity` index space), or `None` when the indices are out of
    /// range or further apart than the capacity (a corrupt ring, or a
    /// producer that raced ahead between the two loads).
    pub fn in_flight(&self) -> Option<u64> {
        let span = self.capacity.checked_mul(2)?;
        if self.head >= span || self.tail >= span {
            return None;
        }
        let used = (self.tail + span - self.head) % span;
        (used <= self.capacity).then_some(used)
    }
}

/// What one segment holds, read word by word from a live mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    /// Bytes of the file or mapping.
    pub file_len: u64,
    /// How the words were read: `"mapped read-only"` or `"pread"`.
    pub access: &'static str,
    /// The magic: `ORCWSHM1` as a little-endian `u64` in a segment.
    pub magic: u64,
    /// The layout version the writer speaks.
    pub version: u32,
    /// `size_of::<SegmentHeader>()` as the writer compiled it.
    pub header_size: u32,
    /// Bytes of the segment, as the header says.
    pub segment_size: u64,
    /// Largest message either side may send.
    pub max_message_size: u64,
    /// The state word: flags (low 32 bits, named by
    /// [`state_flags`](Self::state_flags)) and epoch (high 32).
    pub state: u64,
    /// The two side blocks, indexed by [`Side::index`].
    pub sides: [SideReport; 2],
    /// The two rings, indexed by the sending side's [`Side::index`].
    pub rings: [RingReport; 2],
}

impl SegmentReport {
    /// The connection epoch.
    pub fn epoch(&self) -> u32 {
        state::epoch(self.state)
    }

    /// The names of the set state flags, and the set flag bits (low 32)
    /// that have no name.
    pub fn state_flags(&self) -> (Vec<&'static str>, u64) {
        let flags = self.state & 0xffff_ffff;
        let names = STATE_FLAGS
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        let known = STATE_FLAGS.iter().fold(0, |m, (bit, _)| m | bit);
        (names, flags & !known)
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Controller => "controller",
        Side::Executor => "executor",
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::NotRecorded => "not recorded yet",
            Liveness::NotAPid => "not a valid pid",
            Liveness::Alive => "alive",
            Liveness::Gone => "gone",
        })
    }
}

impl fmt::Display for SideReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<10} pid {} ({}), futex word {}, waiting ",
            side_name(self.side),
            self.pid,
            self.liveness,
            self.futex
        )?;
        if self.waiting == 0 {
            return f.write_str("none");
        }
        let peer = side_name(self.side.peer());
        let mut first = true;
        for (bit, name, meaning) in WAITING_BITS {
            if self.waiting & bit != 0 {
                let sep = if first { "" } else { "; " };
                write!(
                    f,
                    "{sep}{name} ({})",
                    meaning.replace("the peer", &format!("the {peer}"))
                )?;
                first = false;
            }
        }
        let known = WAITING_BITS.iter().fold(0, |m, (bit, _, _)| m | bit);
        if self.waiting & !known != 0 {
            let sep = if first { "" } else { "; " };
            write!(f, "{sep}unknown bits {:#x}", self.waiting & !known)?;
        }
        Ok(())
    }
}

impl fmt::Display for RingReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ring {}     {} -> {}: capacity {} B, head {}, tail {}, ",
            self.sender.index(),
            side_name(self.sender),
            side_name(self.sender.peer()),
            self.capacity,
            self.head,
            self.tail
        )?;
        match self.in_flight() {
            Some(n) => write!(f, "{n} B in flight"),
            None => f.write_str("indices inconsistent (out of range, or moved while read)"),
        }
    }
}

impl fmt::Display for SegmentReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  header     magic {:#018x} (\"ORCWSHM1\"), layout version {}, header {} B, \
             segment {} B (file {} B, {}), max message {} B",
            self.magic,
            self.version,
            self.header_size,
            self.segment_size,
            self.file_len,
            self.access,
            self.max_message_size
        )?;
        let (names, unknown) = self.state_flags();
        write!(
            f,
            "  state      {:#018x}: epoch {}, flags ",
            self.state,
            self.epoch()
        )?;
        match (names.is_empty(), unknown) {
            (true, 0) => f.write_str("none")?,
            _ => f.write_str(&names.join(" | "))?,
        }
        if unknown != 0 {
            let sep = if names.is_empty() { "" } else { " | " };
            write!(f, "{sep}unknown {unknown:#x}")?;
        }
        writeln!(f)?;
        for side in &self.sides {
            writeln!(f, "  {side}")?;
        }
        writeln!(f, "  {}", self.rings[0])?;
        write!(f, "  {}", self.rings[1])
    }
}

/// Where the words are read from.
enum Words<'a> {
    /// Memory that stays mapped and readable for `'a`: an in-process
    /// mapping, or a read-only mapping of a size-sealed file.
    Mapped {
        base: *const u8,
        len: usize,
        _mapping: PhantomData<&'a ()>,
    },
    /// A file whose size its owner may change: `pread` per word.
    File { fd: BorrowedFd<'a>, len: u64 },
}

impl Words<'_> {
    fn len(&self) -> u64 {
        match self {
            Words::Mapped { len, .. } => *len as u64,
            Words::File { len, .. } => *len,
        }
    }

    /// Checks that a `size`-byte word at `offset` lies inside and is
    /// aligned to its size.
    fn check(&self, offset: u64, size: u64) -> Result<(), InspectError> {
        let end = offset.checked_add(size);
        if offset % size != 0 || end.map_or(true, |e| e > self.len()) {
            return Err(InspectError::Invalid(format!(
                "a {size}-byte word at offset {offset} is misaligned or outside the {} bytes",
                self.len()
            )));
        }
        Ok(())
    }

    /// `N` bytes at `offset` of a file, by `pread`.
    fn pread<const N: usize>(fd: BorrowedFd<'_>, offset: u64) -> Result<[u8; N], InspectError> {
        let mut buf = [0u8; N];
        let at = libc::off_t::try_from(offset)
            .map_err(|_| InspectError::Invalid(format!("offset {offset} is out of range")))?;
        match nix::sys::uio::pread(fd, &mut buf, at) {
            Ok(n) if n == N => Ok(buf),
            Ok(_) => Err(InspectError::Invalid(
                "the file shrank while it was read".into(),
            )),
            Err(e) => Err(InspectError::Os {
                op: "pread",
                source: e.into(),
            }),
        }
    }

    fn u64_at(&self, offset: u64) -> Result<u64, InspectError> {
        self.check(offset, 8)?;
        match self {
            Words::Mapped { base, .. } => {
                // SAFETY: `check` put the 8 bytes inside the mapping, which
                // stays mapped for `'a`, at an offset that is a multiple of 8
                // from a page-aligned base. They are only ever accessed
                // atomically (by the processes that share them, and here),
                // and a `Relaxed` load of 8 bytes is sound even on read-only
                // memory on the 64-bit targets this path is taken on
                // (`inspect_fd` checks); it never writes.
                let word =
                    unsafe { AtomicU64::from_ptr(base.add(offset as usize).cast_mut().cast()) };
                Ok(word.load(Ordering::Relaxed))
            }
            Words::File { fd, .. } => Ok(u64::from_ne_bytes(Self::pread(*fd, offset)?)),
        }
    }

    fn u32_at(&self, offset: u64) -> Result<u32, InspectError> {
        self.check(offset, 4)?;
        match self {
            Words::Mapped { base, .. } => {
                // SAFETY: as in `u64_at`, for 4 aligned bytes.
                let word =
                    unsafe { AtomicU32::from_ptr(base.add(offset as usize).cast_mut().cast()) };
                Ok(word.load(Ordering::Relaxed))
            }
            Words::File { fd, .. } => Ok(u32::from_ne_bytes(Self::pread(*fd, offset)?)),
        }
    }
}

fn liveness(pid: u32) -> Liveness {
    if pid == 0 {
        return Liveness::NotRecorded;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return Liveness::NotAPid;
    };
    // Signal 0 only checks: nothing is sent. `raw` is positive, so this
    // names one process, never a process group.
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => Liveness::Alive,
        Err(_) => Liveness::Gone,
    }
}

/// Header offsets, all from the `#[repr(C)]` definitions.
fn ring_descriptor(i: usize, field: usize) -> u64 {
    (offset_of!(SegmentHeader, rings) + i * size_of::<RingDescriptor>() + field) as u64
}

fn side_word(i: usize, field: usize) -> u64 {
    (offset_of!(SegmentHeader, sides) + i * size_of::<CachePadded<SideBlock>>() + field) as u64
}

fn decode(words: &Words<'_>, access: &'static str) -> Result<SegmentReport, InspectError> {
    let header = size_of::<SegmentHeader>() as u64;
    if words.len() < header {
        return Err(InspectError::TooShort {
            len: words.len(),
            needed: header,
        });
    }
    let magic = words.u64_at(offset_of!(SegmentHeader, magic) as u64)?;
    if magic != MAGIC {
        return Err(InspectError::NotASegment { found: magic });
    }
    // SYNC POINT: segment initialised (inspector's Acquire side, as a
    // fence after the Relaxed load above, since only Relaxed loads are
    // sound on read-only memory). Pairs with `layout::init`'s Release store
    // of the magic: the header fields read below are the ones written
    // before it.
    fence(Ordering::Acquire);
    let version = words.u32_at(offset_of!(SegmentHeader, version) as u64)?;
    if version != LAYOUT_VERSION {
        return Err(InspectError::VersionMismatch { found: version });
    }
    let header_size = words.u32_at(offset_of!(SegmentHeader, header_size) as u64)?;
    if u64::from(header_size) != header {
        return Err(InspectError::Invalid(format!(
            "header size {header_size}, this build's is {header}"
        )));
    }
    let segment_size = words.u64_at(offset_of!(SegmentHeader, segment_size) as u64)?;
    if segment_size > words.len() {
        return Err(InspectError::TooShort {
            len: words.len(),
            needed: segment_size,
        });
    }
    let max_message_size = words.u64_at(offset_of!(SegmentHeader, max_message_size) as u64)?;

    let mut descriptors = [(0u64, 0u64, 0u64); 2];
    for (i, d) in descriptors.iter_mut().enumerate() {
        let capacity = words.u64_at(ring_descriptor(i, offset_of!(RingDescriptor, capacity)))?;
        let control = words.u64_at(ring_descriptor(
            i,
            offset_of!(RingDescriptor, control_offset),
        ))?;
        let data = words.u64_at(ring_descriptor(i, offset_of!(RingDescriptor, data_offset)))?;
        if !capacity.is_power_of_two()
            || capacity < MIN_RING_CAPACITY as u64
            || capacity > MAX_RING_CAPACITY as u64
        {
            return Err(InspectError::Invalid(format!(
                "ring {i} capacity {capacity} is not a power of two in \
                 {MIN_RING_CAPACITY}..={MAX_RING_CAPACITY}"
            )));
        }
        let inside = |offset: u64, len: u64| {
            offset >= header
                && offset % REGION_ALIGN as u64 == 0
                && offset
                    .checked_add(len)
                    .is_some_and(|end| end <= segment_size)
        };
        if !inside(control, size_of::<RingControl>() as u64) || !inside(data, capacity) {
            return Err(InspectError::Invalid(format!(
                "ring {i} (control at {control}, {capacity} data bytes at {data}) does not lie \
                 aligned inside the {segment_size}-byte segment after the header"
            )));
        }
        *d = (capacity, control, data);
    }

    let state = words.u64_at(offset_of!(SegmentHeader, state) as u64)?;
    let mut sides = [Side::Controller, Side::Executor].map(|side| SideReport {
        side,
        futex: 0,
        waiting: 0,
        pid: 0,
        liveness: Liveness::NotRecorded,
    });
    for s in &mut sides {
        let i = s.side.index();
        s.futex = words.u32_at(side_word(i, offset_of!(SideBlock, futex)))?;
        s.waiting = words.u32_at(side_word(i, offset_of!(SideBlock, waiting)))?;
        s.pid = words.u32_at(side_word(i, offset_of!(SideBlock, pid)))?;
        s.liveness = liveness(s.pid);
    }

    let mut rings = [Side::Controller, Side::Executor].map(|sender| RingReport {
        sender,
        capacity: 0,
        control_offset: 0,
        data_offset: 0,
        head: 0,
        tail: 0,
    });
    for r in &mut rings {
        let (capacity, control, data) = descriptors[r.sender.index()];
        *r = RingReport {
            capacity,
            control_offset: control,
            data_offset: data,
            ..*r
        };
        // Head first: the consumer never passes the tail, so a tail read
        // after it is never behind it; retry while the producer raced more
        // than a ring ahead in between.
        for _ in 0..INDEX_READS {
            r.head = words.u64_at(control + offset_of!(RingControl, head) as u64)?;
            r.tail = words.u64_at(control + offset_of!(RingControl, tail) as u64)?;
            if r.in_flight().is_some() {
                break;
            }
        }
    }

    Ok(SegmentReport {
        file_len: words.len(),
        access,
        magic,
        version,
        header_size,
        segment_size,
        max_message_size,
        state,
        sides,
        rings,
    })
}

/// Decodes the segment in a mapping this process holds, without writing
/// to it.
///
/// ```
/// use std::sync::Arc;
/// use orcwire_shm::{HeapMapping, SharedMapping, ShmConfig, ShmTransport, required_size};
///
/// let config = ShmConfig::default();
/// let mapping: Arc<dyn SharedMapping> = Arc::new(HeapMapping::new(required_size(&config))?);
/// let _controller = ShmTransport::create(Arc::clone(&mapping), config)?;
/// let report = orcwire_shm::inspect::inspect_mapping(&*mapping)?;
/// assert_eq!(report.rings[0].capacity, 1 << 20);
/// assert_eq!(report.rings[0].in_flight(), Some(0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// An [`InspectError`] saying what does not hold together:
/// [`InspectError::NotASegment`] for memory without the magic,
/// [`InspectError::TooShort`], [`InspectError::VersionMismatch`],
/// [`InspectError::Invalid`].
pub fn inspect_mapping(mapping: &dyn SharedMapping) -> Result<SegmentReport, InspectError> {
    decode(
        &Words::Mapped {
            base: mapping.base(),
            len: mapping.len(),
            _mapping: PhantomData,
        },
        "mapped",
    )
}

/// Decodes the segment behind `fd` without writing to it: a size-sealed
/// file (every memfd segment) is mapped `PROT_READ`; any other regular
/// file is read with `pread`, so its owner shrinking it cannot crash us.
///
/// # Errors
/// [`InspectError::NotAFile`] for a pipe, socket or device;
/// [`InspectError::Os`] when `fstat` or `mmap` fails; otherwise as
/// [`inspect_mapping`].
pub fn inspect_fd(fd: BorrowedFd<'_>) -> Result<SegmentReport, InspectError> {
    let st = fstat(fd).map_err(|e| InspectError::Os {
        op: "fstat",
        source: e.into(),
    })?;
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Err(InspectError::NotAFile);
    }
    let len = u64::try_from(st.st_size).unwrap_or(0);
    let header = size_of::<SegmentHeader>() as u64;
    if len < header {
        return Err(InspectError::TooShort {
            len,
            needed: header,
        });
    }
    let sealed = fcntl(fd, FcntlArg::F_GET_SEALS)
        .map(|s| SealFlag::from_bits_retain(s).contains(SealFlag::F_SEAL_SHRINK))
        .unwrap_or(false);
    let map_len = usize::try_from(len).ok();
    match map_len {
        Some(map_len) if sealed && cfg!(target_pointer_width = "64") => {
            let map: MmapRaw = MmapOptions::new()
                .len(map_len)
                .map_raw_read_only(&fd)
                .map_err(|source| InspectError::Os {
                    op: "mmap(PROT_READ)",
                    source,
                })?;
            let words = Words::Mapped {
                base: map.as_ptr(),
                len: map.len(),
                _mapping: PhantomData,
            };
            decode(&words, "mapped read-only")
        }
        _ => decode(&Words::File { fd, len }, "read with pread"),
    }
}

/// One candidate descriptor of a process and what it holds.
#[derive(Debug)]
pub struct FoundSegment {
    /// The process.
    pub pid: u32,
    /// The descriptor number in that process.
    pub fd: u32,
    /// Where `/proc/PID/fd/FD` points (`/memfd:orcwire (deleted)`, ...).
    pub link: String,
    /// The decoded segment, or why it is not one.
    pub result: Result<SegmentReport, InspectError>,
}

impl FoundSegment {
    /// Whether this descriptor holds an orcwire segment.
    pub fn is_segment(&self) -> bool {
        self.result.is_ok()
    }
}

impl fmt::Display for FoundSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} fd {} -> {}", self.pid, self.fd, self.link)?;
        match &self.result {
            Ok(report) => write!(f, "\n{report}"),
            Err(e) => write!(f, ": {e}"),
        }
    }
}

fn is_candidate(link: &str) -> bool {
    link.starts_with(MEMFD_LINK_PREFIX) || link.starts_with(NAMED_LINK_PREFIX)
}

fn open_read_only(path: &str) -> io::Result<File> {
    // O_NONBLOCK: a FIFO under an orcwire-like name must not block the
    // open (it is refused afterwards as not a regular file).
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// Finds and decodes the orcwire segments process `pid` holds open: the
/// descriptors under `/proc/PID/fd` that point to `/memfd:orcwire…` or
/// `/dev/shm/orcwire-…`, each opened read-only through its `/proc` link
/// and decoded with [`inspect_fd`] (a descriptor that holds something else
/// under such a name is listed with its error). Several descriptors of one
/// file are listed once. Only processes of our own effective uid.
///
/// # Errors
/// [`InspectError::NoSuchProcess`], [`InspectError::OtherUser`], or
/// [`InspectError::Proc`] when `/proc/PID/fd` cannot be listed.
pub fn inspect_process(pid: u32) -> Result<Vec<FoundSegment>, InspectError> {
    if pid == 0 || i32::try_from(pid).is_err() {
        return Err(InspectError::NoSuchProcess { pid });
    }
    let dir = format!("/proc/{pid}");
    let proc_err = |path: String, source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => InspectError::NoSuchProcess { pid },
        _ => InspectError::Proc { path, source },
    };
    let meta = fs::metadata(&dir).map_err(|e| proc_err(dir.clone(), e))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let us = unsafe { libc::geteuid() };
    if meta.uid() != us {
        return Err(InspectError::OtherUser {
            pid,
            owner: meta.uid(),
            us,
        });
    }
    let fd_dir = format!("{dir}/fd");
    let mut fds: Vec<u32> = fs::read_dir(&fd_dir)
        .map_err(|e| proc_err(fd_dir.clone(), e))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    let mut seen = Vec::new();
    let mut found = Vec::new();
    for fd in fds {
        let path = format!("{fd_dir}/{fd}");
        // The descriptor may close between the listing and here: skip it.
        let Ok(target) = fs::read_link(&path) else {
            continue;
        };
        let link = target.to_string_lossy().into_owned();
        if !is_candidate(&link) {
            continue;
        }
        let result = match open_read_only(&path) {
            Ok(file) => {
                let id = file.metadata().ok().map(|m| (m.dev(), m.ino()));
                if id.is_some() && seen.contains(&id) {
                    continue;
                }
                seen.push(id);
                inspect_fd(file.as_fd())
            }
            Err(source) => Err(InspectError::Proc { path, source }),
        };
        found.push(FoundSegment {
            pid,
            fd,
            link,
            result,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_flags_by_name_and_unknown_bits_as_hex() {
        let mut r = SegmentReport {
            file_len: 0,
            access: "mapped",
            magic: MAGIC,
            version: LAYOUT_VERSION,
            header_size: 0,
            segment_size: 0,
            max_message_size: 0,
            state: (7u64 << state::EPOCH_SHIFT) | state::EXECUTOR_ATTACHED | (1 << 20),
            sides: [Side::Controller, Side::Executor].map(|side| SideReport {
                side,
                futex: 0,
                waiting: 0,
                pid: 0,
                liveness: Liveness::NotRecorded,
            }),
            rings: [Side::Controller, Side::Executor].map(|sender| RingReport {
                sender,
                capacity: 256,
                control_offset: 0,
                data_offset: 0,
                head: 0,
                tail: 0,
            }),
        };
        assert_eq!(r.epoch(), 7);
        assert_eq!(r.state_flags(), (vec!["EXECUTOR_ATTACHED"], 1 << 20));
        let text = r.to_string();
        assert!(text.contains("epoch 7, flags EXECUTOR_ATTACHED | unknown 0x100000"));
        r.sides[1].waiting = waiting::DATA | waiting::SPACE | 8;
        let text = r.to_string();
        assert!(
            text.contains(
                "waiting DATA (its consumer sleeps until the controller publishes frames); SPACE"
            ),
            "{text}"
        );
        assert!(text.contains("unknown bits 0x8"), "{text}");
    }

    #[test]
    fn in_flight_wraps_in_the_doubled_index_space() {
        let ring = |head, tail| RingReport {
            sender: Side::Controller,
            capacity: 256,
            control_offset: 0,
            data_offset: 0,
            head,
            tail,
        };
        assert_eq!(ring(0, 0).in_flight(), Some(0));
        assert_eq!(ring(16, 64).in_flight(), Some(48));
        assert_eq!(ring(496, 32).in_flight(), Some(48));
        assert_eq!(ring(0, 256).in_flight(), Some(256));
        assert_eq!(ring(0, 272).in_flight(), None);
        assert_eq!(ring(512, 0).in_flight(), None);
    }

    #[test]
    fn link_names() {
        assert!(is_candidate("/memfd:orcwire (deleted)"));
        assert!(is_candidate("/dev/shm/orcwire-12-00ff (deleted)"));
        assert!(!is_candidate("/memfd:other"));
        assert!(!is_candidate("socket:[1234]"));
    }
}
