//! Decoding a segment: the header (magic, then an `Acquire` fence, then
//! version and sizes), each ring's descriptor checked against the segment,
//! the side blocks (with whether each pid is alive) and a head/tail pair
//! per ring; [`inspect_mapping`] for a mapping this process holds,
//! [`inspect_fd`] for a descriptor (mapped read-only when its size is
//! sealed, read with `pread` otherwise).
//!
//! Relies on: the `#[repr(C)]` types of `crate::layout` for every offset
//! (`offset_of!`), `words.rs` for every read, and `kill(pid, 0)` for
//! liveness.

use std::marker::PhantomData;
use std::mem::{offset_of, size_of};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{fence, Ordering};

use crossbeam_utils::CachePadded;
use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::signal::kill;
use nix::sys::stat::{fstat, SFlag};
use nix::unistd::Pid;

use super::words::Words;
use super::{InspectError, Liveness, RingReport, SegmentReport, SideReport};
use crate::layout::{
    RingControl, RingDescriptor, SegmentHeader, Side, SideBlock, LAYOUT_VERSION, MAGIC,
    MAX_RING_CAPACITY, MIN_RING_CAPACITY, REGION_ALIGN,
};
use crate::mapping::SharedMapping;

/// Attempts at a head/tail pair that the producer did not race past.
const INDEX_READS: usize = 4;

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
