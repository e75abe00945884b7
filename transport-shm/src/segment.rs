//! [`Segment`]: an anonymous shared segment — a sealed `memfd` mapped
//! shared, read-write.
//!
//! The controller creates it ([`Segment::create`]) and hands the fd to the
//! executor, either by inheritance across `exec` ([`inheritable_dup`],
//! [`dup2_for_exec`]) or over a Unix socket with `SCM_RIGHTS`
//! ([`crate::fdpass`]). The executor maps it with [`Segment::from_fd`].
//!
//! Why a memfd:
//! * **No name, nothing to clean up.** A memfd never appears in
//!   `/dev/shm`; it lives exactly as long as some process holds the fd or a
//!   mapping, so a crash at any point leaves nothing behind.
//! * **Mode 0600 is inherent.** Without a name nobody can `open` it; the
//!   only way in is being handed the fd (or reading it out of
//!   `/proc/<pid>/fd`, which needs ptrace rights over the holder anyway).
//! * **Seals.** The creator seals the size (`F_SEAL_SHRINK | F_SEAL_GROW`)
//!   and then the seal set itself (`F_SEAL_SEAL`). The receiver checks the
//!   seals before mapping: an unsealed file could be truncated by the
//!   sender after we map it, and touching a page past the new end of file
//!   raises `SIGBUS` — a peer could crash us at will. With the seals in
//!   place the size is fixed for the life of the file, for everybody.
//!
//! Relies on: Linux's memfd and file seals (through `nix`), `memmap2` for
//! the shared mapping, and the [`SharedMapping`] contract it implements.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::{fstat, SFlag};
use nix::unistd::ftruncate;

use crate::mapping::{SharedMapping, MAPPING_ALIGN};

/// The name every segment's memfd carries (visible only in
/// `/proc/<pid>/fd` links as `/memfd:orcwire`, never in a directory).
const MEMFD_NAME: &CStr = c"orcwire";

/// The seals a segment must carry before we map it.
const REQUIRED_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// Seals that forbid writing, so a shared writable mapping would fail.
const WRITE_SEALS: SealFlag = SealFlag::F_SEAL_WRITE.union(SealFlag::F_SEAL_FUTURE_WRITE);

/// Something went wrong creating, receiving or sharing a [`Segment`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// A segment of zero bytes was asked for.
    #[error("a shared segment cannot be empty; ask for at least one byte")]
    ZeroLength,
    /// The requested length does not fit in a file offset once rounded up
    /// to the page size.
    #[error("a shared segment of {len} bytes is too large for this system")]
    TooLarge {
        /// The requested length in bytes.
        len: usize,
    },
    /// An OS call failed.
    #[error("{op} failed for the shared segment: {source}")]
    Os {
        /// The call that failed (`memfd_create`, `ftruncate`, ...).
        op: &'static str,
        /// The error the kernel returned.
        source: Errno,
    },
    /// `mmap` refused the segment.
    #[error("could not map the shared segment: {0}")]
    Map(#[source] io::Error),
    /// The received fd does not support sealing: it is not a memfd.
    #[error("refusing the received fd: it is not a sealable memfd (F_GET_SEALS: {0}); the sender must create it with memfd_create(MFD_ALLOW_SEALING)")]
    NotMemfd(#[source] Errno),
    /// The received memfd is missing some of the size seals.
    #[error("refusing the received memfd: its seals are {seals:?}, missing {missing:?}; the sender could resize it under our mapping and crash us with SIGBUS")]
    NotSealed {
        /// The seals present.
        seals: SealFlag,
        /// The required seals that are absent.
        missing: SealFlag,
    },
    /// The received memfd is sealed against writes, so it cannot carry rings.
    #[error("refusing the received memfd: it is sealed against writes ({seals:?}); a ring segment must be writable")]
    WriteSealed {
        /// The seals present.
        seals: SealFlag,
    },
    /// The received fd was opened read-only.
    #[error(
        "refusing the received fd: it is not open for reading and writing; send the read-write fd"
    )]
    NotReadWrite,
    /// The received fd is not a regular file.
    #[error("refusing the received fd: it is not a regular file (mode {mode:#o})")]
    NotRegularFile {
        /// `st_mode` of the fd.
        mode: u32,
    },
    /// The received segment is smaller than the caller needs.
    #[error("refusing the received segment: it is {len} bytes, at least {min} are needed; both sides must agree on the layout")]
    TooSmall {
        /// The segment's size in bytes.
        len: u64,
        /// The minimum the caller asked for.
        min: usize,
    },
    /// The received segment's size is not a whole number of pages.
    #[error(
        "refusing the received segment: its size {len} is not a multiple of the page size {page}"
    )]
    NotPageMultiple {
        /// The segment's size in bytes.
        len: u64,
        /// This system's page size.
        page: usize,
    },
}

/// An anonymous shared segment: a sealed memfd, mapped shared read-write.
///
/// The mapping stays valid for the life of the value, whatever the peer
/// does: its size is sealed. The peer can still write any byte at any
/// time, so read it only through [`SharedMapping`]'s rules.
///
/// # Examples
/// ```
/// use orcwire_shm::{Segment, SharedMapping};
///
/// let seg = Segment::create(10_000)?;
/// assert!(seg.len() >= 10_000); // rounded up to whole pages
/// // Another handle on the same memory, as the executor would get it.
/// let dup = seg.fd().try_clone_to_owned()?;
/// let other = Segment::from_fd(dup, 10_000)?;
/// // SAFETY: both mappings are at least one byte long; nobody else writes.
/// unsafe {
///     seg.base().write_volatile(42);
///     assert_eq!(other.base().read_volatile(), 42);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Segment {
    /// Declared before `fd` only for tidiness; unmapping and closing are
    /// independent (a mapping outlives its fd).
    map: MmapRaw,
    fd: OwnedFd,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("fd", &self.fd.as_raw_fd())
            .field("base", &self.map.as_ptr())
            .field("len", &self.map.len())
            .finish()
    }
}

/// This system's page size in bytes.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let raw = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    match usize::try_from(raw) {
        Ok(page) if page >= MAPPING_ALIGN => page,
        // Linux always reports a page of at least 4 KiB; should sysconf
        // ever fail, 4 KiB keeps every check conservative.
        _ => MAPPING_ALIGN,
    }
}

/// Rounds `len` up to a whole number of pages, `None` on overflow.
fn round_to_pages(len: usize) -> Option<usize> {
    let page = page_size();
    len.checked_add(page - 1).map(|l| l / page * page)
}

impl Segment {
    /// Creates a sealed memfd of at least `len` bytes (rounded up to whole
    /// pages), zero-filled, and maps it.
    ///
    /// The fd is close-on-exec; use [`inheritable_dup`] or
    /// [`dup2_for_exec`] to hand it to a child, or
    /// [`send_fd`](crate::send_fd) to send it over a socket.
    ///
    /// # Errors
    /// [`SegmentError::ZeroLength`] / [`SegmentError::TooLarge`] for a bad
    /// length, [`SegmentError::Os`] when `memfd_create`, `ftruncate` or
    /// sealing fails (for instance a kernel without memfd sealing, or
    /// `RLIMIT_NOFILE`), [`SegmentError::Map`] when `mmap` fails.
    pub fn create(len: usize) -> Result<Self, SegmentError> {
        if len == 0 {
            return Err(SegmentError::ZeroLength);
        }
        let rounded = round_to_pages(len).ok_or(SegmentError::TooLarge { len })?;
        let file_len =
            libc::off_t::try_from(rounded).map_err(|_| SegmentError::TooLarge { len })?;
        let fd = memfd_create(
            MEMFD_NAME,
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|source| SegmentError::Os {
            op: "memfd_create",
            source,
        })?;
        ftruncate(&fd, file_len).map_err(|source| SegmentError::Os {
            op: "ftruncate",
            source,
        })?;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(REQUIRED_SEALS)).map_err(|source| SegmentError::Os {
            op: "fcntl(F_ADD_SEALS)",
            source,
        })?;
        Self::map(fd, rounded)
    }

    /// Maps a segment received from the peer, after checking that it is
    /// a memfd whose size is sealed, that it is writable, and that it
    /// holds at least `expected_min_len` bytes in whole pages.
    ///
    /// The whole file is mapped (its size cannot change any more).
    ///
    /// # Errors
    /// [`SegmentError::NotMemfd`], [`SegmentError::NotSealed`],
    /// [`SegmentError::WriteSealed`], [`SegmentError::NotReadWrite`],
    /// [`SegmentError::NotRegularFile`], [`SegmentError::TooSmall`],
    /// [`SegmentError::NotPageMultiple`] when the fd is not an acceptable
    /// segment (the fd is closed); [`SegmentError::Os`] /
    /// [`SegmentError::Map`] when a check or the mapping itself fails.
    pub fn from_fd(fd: OwnedFd, expected_min_len: usize) -> Result<Self, SegmentError> {
        // Seals first: they are what makes the size checks below mean
        // anything — without them the size could change right after fstat.
        let raw_seals = fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(SegmentError::NotMemfd)?;
        let seals = SealFlag::from_bits_retain(raw_seals);
        if !seals.contains(REQUIRED_SEALS) {
            return Err(SegmentError::NotSealed {
                seals,
                missing: REQUIRED_SEALS - seals,
            });
        }
        if seals.intersects(WRITE_SEALS) {
            return Err(SegmentError::WriteSealed { seals });
        }
        let access = fcntl(&fd, FcntlArg::F_GETFL).map_err(|source| SegmentError::Os {
            op: "fcntl(F_GETFL)",
            source,
        })?;
        if OFlag::from_bits_retain(access) & OFlag::O_ACCMODE != OFlag::O_RDWR {
            return Err(SegmentError::NotReadWrite);
        }
        let stat = fstat(&fd).map_err(|source| SegmentError::Os {
            op: "fstat",
            source,
        })?;
        let len = check_size(stat.st_mode, stat.st_size, expected_min_len)?;
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self, SegmentError> {
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&fd)
            .map_err(SegmentError::Map)?;
        debug_assert_eq!(
            map.as_ptr() as usize % MAPPING_ALIGN,
            0,
            "mmap returns page-aligned addresses"
        );
        Ok(Self { map, fd })
    }

    /// The segment's fd (close-on-exec), to send to the peer or duplicate.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Checks a shared file's type and size, shared by [`Segment`] and
/// received segments; returns the size as a mapping length.
pub(crate) fn check_size(
    st_mode: libc::mode_t,
    st_size: libc::off_t,
    expected_min_len: usize,
) -> Result<usize, SegmentError> {
    if SFlag::from_bits_truncate(st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Err(SegmentError::NotRegularFile { mode: st_mode });
    }
    // A negative size cannot come from a regular file; treat it as empty.
    let size = u64::try_from(st_size).unwrap_or(0);
    let page = page_size();
    if size < expected_min_len as u64 || size == 0 {
        return Err(SegmentError::TooSmall {
            len: size,
            min: expected_min_len,
        });
    }
    if size % page as u64 != 0 {
        return Err(SegmentError::NotPageMultiple { len: size, page });
    }
    usize::try_from(size).map_err(|_| SegmentError::TooLarge { len: usize::MAX })
}

// SAFETY: `map` is a shared read-write mapping owned by the value: it
// stays mapped until drop; mmap returns page-aligned (hence
// MAPPING_ALIGN-aligned) addresses; its length is fixed at construction,
// and the file's size is sealed so no page of it can vanish (no SIGBUS).
unsafe impl SharedMapping for Segment {
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Clears close-on-exec on `fd`, so a child started with `exec` inherits
/// it under the same number.
///
/// Beware: in a multi-threaded process any child spawned by *any* thread
/// while the flag is clear inherits the fd too. Prefer
/// [`dup2_for_exec`] inside `Command::pre_exec`, which touches only the
/// child.
///
/// # Errors
/// [`SegmentError::Os`] when `fcntl` fails (a closed fd).
pub fn clear_cloexec(fd: BorrowedFd<'_>) -> Result<(), SegmentError> {
    let flags = fcntl(fd, FcntlArg::F_GETFD).map_err(|source| SegmentError::Os {
        op: "fcntl(F_GETFD)",
        source,
    })?;
    let flags = FdFlag::from_bits_retain(flags) - FdFlag::FD_CLOEXEC;
    fcntl(fd, FcntlArg::F_SETFD(flags)).map_err(|source| SegmentError::Os {
        op: "fcntl(F_SETFD)",
        source,
    })?;
    Ok(())
}

/// Returns a duplicate of `fd` *without* close-on-exec, numbered 3 or
/// above (never stdin/stdout/stderr), for a child to inherit.
///
/// Drop it right after spawning the child. The same caveat as
/// [`clear_cloexec`] applies: a child spawned meanwhile by another thread
/// inherits it too; [`dup2_for_exec`] avoids that.
///
/// # Errors
/// [`SegmentError::Os`] when `fcntl(F_DUPFD)` fails (no free fd).
///
/// # Examples
/// ```
/// use std::os::fd::AsRawFd;
/// use orcwire_shm::{inheritable_dup, Segment};
///
/// let seg = Segment::create(4096)?;
/// let for_child = inheritable_dup(seg.fd())?;
/// let status = std::process::Command::new("/bin/sh")
///     .arg("-c")
///     .arg(format!("test -e /proc/self/fd/{}", for_child.as_raw_fd()))
///     .status()?;
/// assert!(status.success());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn inheritable_dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, SegmentError> {
    let raw = fcntl(fd, FcntlArg::F_DUPFD(3)).map_err(|source| SegmentError::Os {
        op: "fcntl(F_DUPFD)",
        source,
    })?;
    // SAFETY: F_DUPFD returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Makes `src` available as `target` in a child about to `exec`, without
/// close-on-exec. Meant for `Command::pre_exec`; async-signal-safe (it
/// only calls `dup2` / `fcntl`).
///
/// When `src == target`, `dup2` would do nothing and leave close-on-exec
/// set, so the flag is cleared instead. Choose a `target` that nothing
/// else in the child uses (3 and up; `Command` sets up 0–2 before
/// `pre_exec` runs).
///
/// # Errors
/// The OS error from `dup2` / `fcntl`.
///
/// # Examples
/// ```
/// use std::os::fd::AsRawFd;
/// use std::os::unix::process::CommandExt;
/// use orcwire_shm::{dup2_for_exec, Segment};
///
/// let seg = Segment::create(4096)?;
/// let src = seg.fd().as_raw_fd();
/// let mut cmd = std::process::Command::new("/bin/sh");
/// cmd.arg("-c").arg("test -e /proc/self/fd/3");
/// // SAFETY: the closure only calls dup2/fcntl (async-signal-safe) and
/// // `src` stays open in the parent until the child has been spawned.
/// unsafe { cmd.pre_exec(move || dup2_for_exec(src, 3)) };
/// assert!(cmd.status()?.success());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn dup2_for_exec(src: RawFd, target: RawFd) -> io::Result<()> {
    if src == target {
        // SAFETY: fcntl on a caller-supplied number has no memory-safety
        // preconditions; a bad fd yields EBADF.
        let flags = unsafe { libc::fcntl(src, libc::F_GETFD) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(src, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    // SAFETY: dup2 has no memory-safety preconditions; in the child about
    // to exec, replacing `target` is exactly the intent.
    if unsafe { libc::dup2(src, target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;

    #[test]
    fn create_rounds_up_to_pages_and_seals() {
        let seg = Segment::create(1).unwrap();
        assert_eq!(seg.len(), page_size());
        let seals = SealFlag::from_bits_retain(fcntl(seg.fd(), FcntlArg::F_GET_SEALS).unwrap());
        assert!(seals.contains(REQUIRED_SEALS));
        assert!(!seals.intersects(WRITE_SEALS));
    }

    #[test]
    fn zero_length_is_refused() {
        assert!(matches!(Segment::create(0), Err(SegmentError::ZeroLength)));
    }

    #[test]
    fn huge_length_is_refused() {
        assert!(matches!(
            Segment::create(usize::MAX),
            Err(SegmentError::TooLarge { .. })
        ));
    }

    #[test]
    fn fd_is_cloexec_and_dup_is_not() {
        let seg = Segment::create(4096).unwrap();
        let flags = FdFlag::from_bits_retain(fcntl(seg.fd(), FcntlArg::F_GETFD).unwrap());
        assert!(flags.contains(FdFlag::FD_CLOEXEC));
        let dup = inheritable_dup(seg.fd()).unwrap();
        assert!(dup.as_raw_fd() >= 3);
        let flags = FdFlag::from_bits_retain(fcntl(&dup, FcntlArg::F_GETFD).unwrap());
        assert!(!flags.contains(FdFlag::FD_CLOEXEC));
        clear_cloexec(seg.fd()).unwrap();
        let flags = FdFlag::from_bits_retain(fcntl(seg.fd(), FcntlArg::F_GETFD).unwrap());
        assert!(!flags.contains(FdFlag::FD_CLOEXEC));
    }

    #[test]
    fn dup2_for_exec_same_number_clears_cloexec() {
        let seg = Segment::create(4096).unwrap();
        let dup = seg.fd().try_clone_to_owned().unwrap();
        dup2_for_exec(dup.as_raw_fd(), dup.as_raw_fd()).unwrap();
        let flags = FdFlag::from_bits_retain(fcntl(&dup, FcntlArg::F_GETFD).unwrap());
        assert!(!flags.contains(FdFlag::FD_CLOEXEC));
    }

    #[test]
    fn read_only_fd_is_refused() {
        let seg = Segment::create(4096).unwrap();
        let path = format!("/proc/self/fd/{}", seg.fd().as_raw_fd());
        let ro = std::fs::File::open(path).unwrap();
        let err = Segment::from_fd(ro.into(), 4096).unwrap_err();
        assert!(matches!(err, SegmentError::NotReadWrite), "{err}");
    }

    #[test]
    fn write_sealed_fd_is_refused() {
        let fd = memfd_create(c"t", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        ftruncate(&fd, 4096).unwrap();
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(REQUIRED_SEALS | SealFlag::F_SEAL_WRITE),
        )
        .unwrap();
        let err = Segment::from_fd(fd, 4096).unwrap_err();
        assert!(matches!(err, SegmentError::WriteSealed { .. }), "{err}");
    }

    #[test]
    fn non_page_multiple_is_refused() {
        let fd = memfd_create(c"t", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        ftruncate(&fd, 4097).unwrap();
        fcntl(&fd, FcntlArg::F_ADD_SEALS(REQUIRED_SEALS)).unwrap();
        let err = Segment::from_fd(fd, 1).unwrap_err();
        assert!(
            matches!(err, SegmentError::NotPageMultiple { len: 4097, .. }),
            "{err}"
        );
    }

    #[test]
    fn pipe_is_not_a_memfd() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let err = Segment::from_fd(r, 1).unwrap_err();
        assert!(matches!(err, SegmentError::NotMemfd(_)), "{err}");
    }
}
