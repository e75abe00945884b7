//! [`NamedRendezvous`]: a name in `/dev/shm` that brings a controller and
//! an executor someone else started together, when the executor can be
//! told a name but handed neither an fd nor a socket.
//!
//! The name carries no ring memory. The controller creates
//! `/orcwire-<pid>-<32 hex digits>` exclusively (`O_CREAT | O_EXCL`, so an
//! attacker cannot pre-create the name and make us use their object) with
//! mode 0600, and writes into it, with `pwrite`, a 32-byte record: its pid,
//! and the number of the fd under which it holds the connection's sealed
//! memfd [`Segment`]. The executor checks the object (our
//! uid, mode exactly 0600, a regular file), reads the record with `pread`,
//! and opens the memfd through `/proc/<pid>/fd/<fd>`; from there on it is
//! the memfd flow: [`Segment::from_fd`](crate::Segment::from_fd) checks the
//! seals before mapping, the layout is validated, and both sides unlink
//! the name once attached.
//!
//! # Why the memory is not the named object itself
//! POSIX shared-memory objects cannot be sealed. Mapped directly, any
//! process holding the object's fd (the peer included) could `ftruncate`
//! it and the next access past the new end would kill us with `SIGBUS`.
//! Here nobody maps the named object: it is read and written with
//! `pread`/`pwrite` only, so truncating it at worst makes the record
//! unreadable (a clean error), and the memory both sides map is a memfd
//! whose size is sealed.
//!
//! # Why not the `shared_memory` crate
//! Its `open` maps the object before the caller can check anything
//! (owner, mode, size) and never exposes the fd, and it links an old `nix`
//! (0.23). This module calls `shm_open` itself.
//!
//! What the flow needs from the system, and crash clean-up, are on
//! [`NamedRendezvous`] (its users need them).
//!
//! Relies on: POSIX shared memory in `/dev/shm` (`shm_open`), the
//! controller's `/proc/<pid>/fd` to reach its memfd, and [`Segment`] for
//! the memory itself.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::{fchmod, fstat, Mode, SFlag};

use crate::segment::Segment;
use crate::sync::{AtomicBool, Ordering};

/// Prefix of every name this module creates (without the leading `/`).
const NAME_PREFIX: &str = "orcwire-";
/// Where Linux keeps POSIX shared-memory objects.
const SHM_DIR: &str = "/dev/shm";
/// The only mode a rendezvous object may have.
const OBJECT_MODE: u32 = 0o600;
/// Longest name `shm_open` accepts after the leading `/` (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// First eight bytes of a record.
const RECORD_MAGIC: [u8; 8] = *b"ORCWNAM1";
/// Bytes of a record: magic, pid (u32), fd (u32), segment length (u64),
/// reserved (u64, zero); little-endian.
const RECORD_LEN: usize = 32;

/// Something went wrong creating, opening, reading or unlinking a
/// [`NamedRendezvous`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NamedRendezvousError {
    /// The name is not a valid shared-memory object name.
    #[error("invalid shared memory name {name:?}: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The random part of a new name could not be drawn.
    #[error("could not read random bytes for a rendezvous name: {0}")]
    Random(#[source] io::Error),
    /// An OS call failed.
    #[error("{op} failed for shared memory object {name:?}: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The object's name.
        name: String,
        /// The error the kernel returned.
        source: Errno,
    },
    /// The object belongs to another user.
    #[error("refusing shared memory object {name:?}: it belongs to uid {owner}, not to us (uid {ours}); someone else created it")]
    WrongOwner {
        /// The object's name.
        name: String,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        ours: u32,
    },
    /// The object's mode is not 0600.
    #[error("refusing shared memory object {name:?}: its mode is {mode:#o}, it must be 0600 so no other user can read or write it")]
    WrongMode {
        /// The object's name.
        name: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The object holds no valid record (not a regular file, truncated,
    /// wrong magic, or impossible values).
    #[error("shared memory object {name:?} holds no orcwire rendezvous record: {why}; give the executor the name the controller's NamedOffer printed")]
    BadRecord {
        /// The object's name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The controller's memfd could not be opened through `/proc`.
    #[error("cannot open the controller's segment {path}: {source}; both processes must run as the same user, the controller must be dumpable and alive, and /proc must show its fds (no hidepid, same pid namespace)")]
    SegmentUnreachable {
        /// The `/proc/<pid>/fd/<n>` path tried.
        path: String,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
}

/// The controller's end of a rendezvous name, or the record the executor
/// read through it.
///
/// # What the flow needs
/// Both processes run as the same user, and the controller is *dumpable*
/// (the default; not after `prctl(PR_SET_DUMPABLE, 0)` or a set-uid exec):
/// opening another process's `/proc/<pid>/fd/<n>` takes the same
/// permission as reading its memory (`PTRACE_MODE_READ`). Yama's
/// `ptrace_scope` does not restrict this mode. A `/proc` mounted with
/// `hidepid` or another pid namespace breaks it: use the listener or the
/// spawn flow there.
///
/// # Crash clean-up
/// Between [`NamedRendezvous::create`] and the first `unlink` the name
/// exists in `/dev/shm`; a crash (or `SIGKILL`) of both sides in that
/// window leaves a one-page `/dev/shm/orcwire-<pid>-…` behind until the
/// next reboot. [`remove_stale_segments`] removes the ones whose creating
/// process is gone; call it at controller start-up (it is cheap).
///
/// # Examples
/// ```
/// use orcwire_shm::{NamedRendezvous, Segment};
///
/// let segment = Segment::create(8192)?;
/// let offered = NamedRendezvous::create(&segment)?;
/// // The executor, told the name out of band:
/// let found = NamedRendezvous::open(offered.name())?;
/// assert_eq!(found.controller_pid(), std::process::id());
/// let theirs = Segment::from_fd(found.open_segment()?, 8192)?;
/// // Both attached: the name is no longer needed.
/// found.unlink()?;
/// # drop(theirs);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NamedRendezvous {
    /// The full name, with its leading `/`.
    name: String,
    /// The record: the controller's pid and its fd of the segment.
    pid: u32,
    fd: u32,
    segment_len: u64,
    /// Whether we created the object (and so unlink it on drop).
    creator: bool,
    /// Set once the name has been removed (by us, or found gone).
    unlinked: AtomicBool,
}

impl std::fmt::Debug for NamedRendezvous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedRendezvous")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("fd", &self.fd)
            .field("segment_len", &self.segment_len)
            .field("creator", &self.creator)
            .finish()
    }
}

/// Unlinks a freshly created name if creation fails half-way.
struct UnlinkGuard<'a>(Option<&'a str>);

impl Drop for UnlinkGuard<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.0 {
            // Best effort: we are already returning the original error.
            let _ = shm_unlink(name);
        }
    }
}

impl NamedRendezvous {
    /// Creates `/orcwire-<our pid>-<128 random bits>` exclusively, mode
    /// 0600 (whatever the umask), and writes the record naming `segment`'s
    /// fd in this process. Keep `segment` (and so its fd) open until the
    /// executor has attached.
    ///
    /// The name stays in `/dev/shm` until [`unlink`](Self::unlink) or
    /// drop; see [crash clean-up](Self#crash-clean-up).
    ///
    /// # Errors
    /// [`NamedRendezvousError::Random`] when no random bytes are
    /// available, [`NamedRendezvousError::Os`] when `shm_open`, `fchmod`
    /// or the write fails (nothing is left behind).
    pub fn create(segment: &Segment) -> Result<Self, NamedRendezvousError> {
        use crate::SharedMapping as _;
        let name = format!("/{NAME_PREFIX}{}-{}", std::process::id(), random_hex()?);
        let os = |op, source| NamedRendezvousError::Os {
            op,
            name: name.clone(),
            source,
        };
        let fd = shm_open(
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| os("shm_open(O_CREAT|O_EXCL)", e))?;
        let mut guard = UnlinkGuard(Some(&name));
        // The umask can only have removed bits from 0600; put them back so
        // the opener's exact-mode check passes.
        fchmod(&fd, Mode::S_IRUSR | Mode::S_IWUSR).map_err(|e| os("fchmod", e))?;
        let pid = std::process::id();
        let Ok(seg_fd) = u32::try_from(segment.fd().as_raw_fd()) else {
            unreachable!("an open fd is never negative")
        };
        let segment_len = segment.len() as u64;
        let mut record = [0u8; RECORD_LEN];
        record[..8].copy_from_slice(&RECORD_MAGIC);
        record[8..12].copy_from_slice(&pid.to_le_bytes());
        record[12..16].copy_from_slice(&seg_fd.to_le_bytes());
        record[16..24].copy_from_slice(&segment_len.to_le_bytes());
        File::from(fd)
            .write_all_at(&record, 0)
            .map_err(|e| os("pwrite", errno_of(&e)))?;
        guard.0 = None; // created in full: the caller owns the name now
        drop(guard);
        Ok(Self {
            name,
            pid,
            fd: seg_fd,
            segment_len,
            creator: true,
            unlinked: AtomicBool::new(false),
        })
    }

    /// Opens the rendezvous `name` (with its leading `/`), after checking
    /// that it is owned by our effective uid, has mode exactly 0600 and is
    /// a regular file, and reads its record (never mapping it).
    ///
    /// Dropping an opened rendezvous never unlinks the name; call
    /// [`unlink`](Self::unlink) once attached.
    ///
    /// # Errors
    /// [`NamedRendezvousError::InvalidName`],
    /// [`NamedRendezvousError::WrongOwner`],
    /// [`NamedRendezvousError::WrongMode`],
    /// [`NamedRendezvousError::BadRecord`] for an unacceptable object;
    /// [`NamedRendezvousError::Os`] when it does not exist (`ENOENT`) or
    /// cannot be opened, inspected or read.
    pub fn open(name: &str) -> Result<Self, NamedRendezvousError> {
        validate_name(name)?;
        let os = |op, source| NamedRendezvousError::Os {
            op,
            name: name.to_owned(),
            source,
        };
        let bad = |why: String| NamedRendezvousError::BadRecord {
            name: name.to_owned(),
            why,
        };
        // glibc opens with O_NOFOLLOW | O_CLOEXEC; no O_CREAT, so we can
        // never create the object by mistake; read-only, we never write.
        let fd = shm_open(name, OFlag::O_RDONLY, Mode::empty()).map_err(|e| os("shm_open", e))?;
        let stat = fstat(&fd).map_err(|e| os("fstat", e))?;
        let ours = geteuid();
        if stat.st_uid != ours {
            return Err(NamedRendezvousError::WrongOwner {
                name: name.to_owned(),
                owner: stat.st_uid,
                ours,
            });
        }
        let mode = stat.st_mode & 0o7777;
        if mode != OBJECT_MODE {
            return Err(NamedRendezvousError::WrongMode {
                name: name.to_owned(),
                mode,
            });
        }
        if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(bad(format!(
                "not a regular file (mode {:#o})",
                stat.st_mode
            )));
        }
        let mut record = [0u8; RECORD_LEN];
        // One read into private memory; the size can change under us (a
        // truncating peer), so a short read is a bad record, not a crash.
        let n =
            read_at_most(&File::from(fd), &mut record).map_err(|e| os("pread", errno_of(&e)))?;
        if n < RECORD_LEN {
            return Err(bad(format!("{n} bytes, a record has {RECORD_LEN}")));
        }
        if record[..8] != RECORD_MAGIC {
            return Err(bad(format!("magic {:02x?}", &record[..8])));
        }
        let word32 = |at: usize| {
            u32::from_le_bytes([record[at], record[at + 1], record[at + 2], record[at + 3]])
        };
        let word64 = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&record[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let (pid, fd, segment_len, reserved) = (word32(8), word32(12), word64(16), word64(24));
        if pid == 0 || i32::try_from(pid).is_err() || i32::try_from(fd).is_err() || reserved != 0 {
            return Err(bad(format!("pid {pid}, fd {fd}, reserved {reserved:#x}")));
        }
        Ok(Self {
            name: name.to_owned(),
            pid,
            fd,
            segment_len,
            creator: false,
            unlinked: AtomicBool::new(false),
        })
    }

    /// The name, with its leading `/`, to tell the peer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The controller's pid, from the record. Untrusted until the segment
    /// it leads to has been checked and attached.
    pub fn controller_pid(&self) -> u32 {
        self.pid
    }

    /// The segment's length the controller recorded.
    pub fn segment_len(&self) -> u64 {
        self.segment_len
    }

    /// Opens the controller's segment (read-write, close-on-exec) through
    /// `/proc/<pid>/fd/<fd>`. Check it with
    /// [`Segment::from_fd`](crate::Segment::from_fd) before use: this only
    /// opens whatever file that fd is now.
    ///
    /// # Errors
    /// [`NamedRendezvousError::SegmentUnreachable`] when the path cannot be
    /// opened (see [what the flow needs](Self#what-the-flow-needs)).
    pub fn open_segment(&self) -> Result<OwnedFd, NamedRendezvousError> {
        let path = format!("/proc/{}/fd/{}", self.pid, self.fd);
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|source| NamedRendezvousError::SegmentUnreachable { path, source })
    }

    /// Removes the name from `/dev/shm`. Idempotent, and either side may
    /// call it: a name the peer already removed counts as success.
    ///
    /// # Errors
    /// [`NamedRendezvousError::Os`] when `shm_unlink` fails for another
    /// reason than the name being gone; a later call tries again.
    pub fn unlink(&self) -> Result<(), NamedRendezvousError> {
        if self.unlinked.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        match shm_unlink(self.name.as_str()) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(source) => {
                self.unlinked.store(false, Ordering::Release);
                Err(NamedRendezvousError::Os {
                    op: "shm_unlink",
                    name: self.name.clone(),
                    source,
                })
            }
        }
    }
}

impl Drop for NamedRendezvous {
    fn drop(&mut self) {
        if self.creator && !self.unlinked.load(Ordering::Acquire) {
            // Nobody to report to; the name is random, so ENOENT (the peer
            // unlinked it) is the only expected failure.
            let _ = shm_unlink(self.name.as_str());
        }
    }
}

/// Reads up to `buf.len()` bytes from offset 0, stopping early at end of
/// file; returns how many were read.
fn read_at_most(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn validate_name(name: &str) -> Result<(), NamedRendezvousError> {
    let invalid = |why| {
        Err(NamedRendezvousError::InvalidName {
            name: name.to_owned(),
            why,
        })
    };
    let Some(rest) = name.strip_prefix('/') else {
        return invalid("it must start with '/'");
    };
    if rest.is_empty() || rest.len() > NAME_MAX {
        return invalid("it must have 1 to 255 bytes after the '/'");
    }
    if rest.contains('/') || rest.contains('\0') {
        return invalid("it must not contain another '/' or a NUL byte");
    }
    if rest == "." || rest == ".." {
        return invalid("'.' and '..' are not object names");
    }
    Ok(())
}

/// 128 random bits from the kernel, as 32 lowercase hex digits.
fn random_hex() -> Result<String, NamedRendezvousError> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(NamedRendezvousError::Random(err));
                }
            }
        }
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes `/dev/shm/orcwire-<pid>-*` objects owned by our uid whose
/// creating process `<pid>` no longer exists, and returns how many were
/// removed.
///
/// Removing a name never disturbs processes that still have the object
/// mapped; it only lets the memory go once they are done. A pid that has
/// since been reused by an unrelated process keeps its entry (we cannot
/// tell), so an entry may survive until a later call. Objects of other
/// users are left alone. Only call this where `/dev/shm` is not shared
/// with processes of another pid namespace: their live pids look dead
/// from here.
///
/// # Errors
/// The I/O error from reading `/dev/shm`; failures to inspect or remove a
/// single entry skip that entry.
///
/// # Examples
/// ```
/// let removed = orcwire_shm::remove_stale_segments()?;
/// println!("removed {removed} stale segments");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn remove_stale_segments() -> io::Result<usize> {
    use std::os::unix::fs::MetadataExt;

    let ours = geteuid();
    let mut removed = 0;
    for entry in std::fs::read_dir(SHM_DIR)? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let Some(pid) = creator_pid(file_name) else {
            continue;
        };
        match entry.metadata() {
            Ok(meta) if meta.uid() == ours && meta.file_type().is_file() => {}
            _ => continue,
        }
        if is_alive(pid) {
            continue;
        }
        if shm_unlink(format!("/{file_name}").as_str()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Our effective uid.
fn geteuid() -> libc::uid_t {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The pid in `orcwire-<pid>-<anything>`, if `name` has that shape.
fn creator_pid(name: &str) -> Option<libc::pid_t> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, tail) = rest.split_once('-')?;
    if tail.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse::<libc::pid_t>().ok().filter(|&p| p > 0)
}

/// Whether a process with this pid exists (possibly another user's).
fn is_alive(pid: libc::pid_t) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks existence
    // and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || Errno::last() != Errno::ESRCH
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for bad in ["", "x", "/", "/a/b", "/.", "/..", "/a\0b"] {
            assert!(
                matches!(
                    validate_name(bad),
                    Err(NamedRendezvousError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(validate_name(&format!("/{}", "a".repeat(256))).is_err());
        assert!(validate_name(&format!("/{}", "a".repeat(255))).is_ok());
        assert!(validate_name("/orcwire-1-abc").is_ok());
    }

    #[test]
    fn creator_pid_parses_only_our_shape() {
        assert_eq!(creator_pid("orcwire-123-abcd"), Some(123));
        assert_eq!(creator_pid("orcwire-123-"), None);
        assert_eq!(creator_pid("orcwire-12a-x"), None);
        assert_eq!(creator_pid("orcwire--x"), None);
        assert_eq!(creator_pid("orcwire-0-x"), None);
        assert_eq!(creator_pid("other-123-x"), None);
        assert_eq!(creator_pid("orcwire-99999999999-x"), None);
    }

    #[test]
    fn random_names_differ() {
        let a = random_hex().unwrap();
        let b = random_hex().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn we_are_alive() {
        assert!(is_alive(std::process::id() as libc::pid_t));
    }
}
