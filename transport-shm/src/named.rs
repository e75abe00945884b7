//! [`NamedSegment`]: a POSIX shared-memory object under an unguessable
//! name, for attaching an executor that someone else started (so it could
//! not inherit a memfd or receive one over a socket we created).
//!
//! The controller creates `/orcwire-<pid>-<32 hex digits>` exclusively
//! (`O_CREAT | O_EXCL`, so an attacker cannot pre-create the name and make
//! us use their object) with mode 0600, tells the executor the name out of
//! band, and both sides [`NamedSegment::unlink`] it as soon as they are
//! attached — from then on it behaves like an anonymous segment. The
//! opening side refuses an object that is not owned by its own uid or
//! whose mode is not exactly 0600.
//!
//! # Why not the `shared_memory` crate
//! Its `create` does use `O_EXCL` and mode 0600, but its `open` maps the
//! object before the caller can check anything (owner, mode, size), never
//! exposes the fd to do so, and it links an old `nix` (0.23). So this
//! module calls `shm_open` itself and maps with `memmap2`, like
//! [`crate::Segment`].
//!
//! # What a named segment cannot do
//! POSIX shared-memory objects cannot be sealed. Any process of our uid
//! that holds the fd — the peer included — can `ftruncate` it after we
//! mapped it, and our next access past the new end raises `SIGBUS`. Use
//! the memfd [`crate::Segment`] whenever the peer can be handed an fd; a
//! named segment trusts the peer not to resize it.
//!
//! # Crash clean-up
//! Between [`NamedSegment::create`] and the first `unlink` the name exists
//! in `/dev/shm`; a crash (or `SIGKILL`) of both sides in that window
//! leaves `/dev/shm/orcwire-<pid>-…` behind, holding its memory until the
//! next reboot. [`remove_stale_segments`] removes the ones whose creating
//! process is gone; call it at controller start-up (it is cheap).

use std::io;
use std::os::fd::OwnedFd;

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::{fchmod, fstat, Mode};
use nix::unistd::ftruncate;

use crate::mapping::{SharedMapping, MAPPING_ALIGN};
use crate::segment::{check_size, page_size, SegmentError};
use crate::sync::{AtomicBool, Ordering};

/// Prefix of every name this module creates (without the leading `/`).
const NAME_PREFIX: &str = "orcwire-";
/// Where Linux keeps POSIX shared-memory objects.
const SHM_DIR: &str = "/dev/shm";
/// The only mode a segment may have.
const SEGMENT_MODE: u32 = 0o600;
/// Longest name `shm_open` accepts after the leading `/` (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// Something went wrong creating, opening or unlinking a [`NamedSegment`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NamedSegmentError {
    /// The name is not a valid shared-memory object name.
    #[error("invalid shared memory name {name:?}: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The random part of a new name could not be drawn.
    #[error("could not read random bytes for a segment name: {0}")]
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
    /// The object's size or type is unacceptable, or mapping it failed.
    #[error("shared memory object {name:?}: {source}")]
    Segment {
        /// The object's name.
        name: String,
        /// What is wrong.
        #[source]
        source: SegmentError,
    },
}

/// A named POSIX shared-memory segment (`/dev/shm/orcwire-…`), mapped
/// shared read-write.
///
/// # Examples
/// ```
/// use orcwire_shm::{NamedSegment, SharedMapping};
///
/// let created = NamedSegment::create(8192)?;
/// // The executor, told the name out of band:
/// let opened = NamedSegment::open(created.name(), 8192)?;
/// // Both attached: the name is no longer needed.
/// created.unlink()?;
/// // SAFETY: both mappings are at least one byte long; nobody else writes.
/// unsafe {
///     created.base().write_volatile(7);
///     assert_eq!(opened.base().read_volatile(), 7);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NamedSegment {
    map: MmapRaw,
    /// The full name, with its leading `/`.
    name: String,
    /// Whether we created the object (and so unlink it on drop).
    creator: bool,
    /// Set once the name has been removed (by us, or found gone).
    unlinked: AtomicBool,
}

impl std::fmt::Debug for NamedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedSegment")
            .field("name", &self.name)
            .field("base", &self.map.as_ptr())
            .field("len", &self.map.len())
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

impl NamedSegment {
    /// Creates `/orcwire-<our pid>-<128 random bits>` exclusively, mode
    /// 0600 (whatever the umask), at least `len` bytes rounded up to whole
    /// pages, zero-filled, and maps it.
    ///
    /// The name stays in `/dev/shm` until [`unlink`](Self::unlink) or
    /// drop; see the module docs for crashes.
    ///
    /// # Errors
    /// [`NamedSegmentError::Segment`] for a zero or too large `len` or a
    /// failed mapping, [`NamedSegmentError::Random`] when no random bytes
    /// are available, [`NamedSegmentError::Os`] when `shm_open`,
    /// `fchmod` or `ftruncate` fails (nothing is left behind).
    pub fn create(len: usize) -> Result<Self, NamedSegmentError> {
        let name = format!("/{NAME_PREFIX}{}-{}", std::process::id(), random_hex()?);
        let bad = |source| NamedSegmentError::Segment {
            name: name.clone(),
            source,
        };
        if len == 0 {
            return Err(bad(SegmentError::ZeroLength));
        }
        let page = page_size();
        let rounded = len
            .checked_add(page - 1)
            .map(|l| l / page * page)
            .ok_or_else(|| bad(SegmentError::TooLarge { len }))?;
        let file_len =
            libc::off_t::try_from(rounded).map_err(|_| bad(SegmentError::TooLarge { len }))?;
        let os = |op, source| NamedSegmentError::Os {
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
        ftruncate(&fd, file_len).map_err(|e| os("ftruncate", e))?;
        let map = map_fd(&fd, rounded).map_err(bad)?;
        guard.0 = None; // created in full: the caller owns the name now
        drop(guard);
        Ok(Self {
            map,
            name,
            creator: true,
            unlinked: AtomicBool::new(false),
        })
    }

    /// Opens and maps the segment `name` (with its leading `/`), after
    /// checking that it is owned by our effective uid, has mode exactly
    /// 0600, is a regular file, and holds at least `expected_min_len`
    /// bytes in whole pages. The whole object is mapped.
    ///
    /// Dropping an opened segment never unlinks the name; call
    /// [`unlink`](Self::unlink) once both sides are attached.
    ///
    /// # Errors
    /// [`NamedSegmentError::InvalidName`], [`NamedSegmentError::WrongOwner`],
    /// [`NamedSegmentError::WrongMode`], [`NamedSegmentError::Segment`]
    /// for an unacceptable object; [`NamedSegmentError::Os`] when it does
    /// not exist (`ENOENT`) or cannot be opened or inspected.
    pub fn open(name: &str, expected_min_len: usize) -> Result<Self, NamedSegmentError> {
        validate_name(name)?;
        let os = |op, source| NamedSegmentError::Os {
            op,
            name: name.to_owned(),
            source,
        };
        // glibc opens with O_NOFOLLOW | O_CLOEXEC; no O_CREAT, so we can
        // never create the object by mistake.
        let fd = shm_open(name, OFlag::O_RDWR, Mode::empty()).map_err(|e| os("shm_open", e))?;
        let stat = fstat(&fd).map_err(|e| os("fstat", e))?;
        let ours = geteuid();
        if stat.st_uid != ours {
            return Err(NamedSegmentError::WrongOwner {
                name: name.to_owned(),
                owner: stat.st_uid,
                ours,
            });
        }
        let mode = stat.st_mode & 0o7777;
        if mode != SEGMENT_MODE {
            return Err(NamedSegmentError::WrongMode {
                name: name.to_owned(),
                mode,
            });
        }
        let bad = |source| NamedSegmentError::Segment {
            name: name.to_owned(),
            source,
        };
        let len = check_size(stat.st_mode, stat.st_size, expected_min_len).map_err(bad)?;
        let map = map_fd(&fd, len).map_err(bad)?;
        Ok(Self {
            map,
            name: name.to_owned(),
            creator: false,
            unlinked: AtomicBool::new(false),
        })
    }

    /// The segment's name, with its leading `/`, to tell the peer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Removes the name from `/dev/shm`; the memory stays mapped on both
    /// sides. Idempotent, and either side may call it: a name the peer
    /// already removed counts as success.
    ///
    /// # Errors
    /// [`NamedSegmentError::Os`] when `shm_unlink` fails for another
    /// reason than the name being gone; a later call tries again.
    pub fn unlink(&self) -> Result<(), NamedSegmentError> {
        if self.unlinked.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        match shm_unlink(self.name.as_str()) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(source) => {
                self.unlinked.store(false, Ordering::Release);
                Err(NamedSegmentError::Os {
                    op: "shm_unlink",
                    name: self.name.clone(),
                    source,
                })
            }
        }
    }
}

impl Drop for NamedSegment {
    fn drop(&mut self) {
        if self.creator && !self.unlinked.load(Ordering::Acquire) {
            // Nobody to report to; the name is random, so ENOENT (the peer
            // unlinked it) is the only expected failure.
            let _ = shm_unlink(self.name.as_str());
        }
    }
}

// SAFETY: `map` is a shared read-write mapping owned by the value, mapped
// until drop, page-aligned by mmap, and its length is fixed at
// construction. (The object's size is not sealed: see the module docs.)
unsafe impl SharedMapping for NamedSegment {
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

fn map_fd(fd: &OwnedFd, len: usize) -> Result<MmapRaw, SegmentError> {
    let map = MmapOptions::new()
        .len(len)
        .map_raw(fd)
        .map_err(SegmentError::Map)?;
    debug_assert_eq!(
        map.as_ptr() as usize % MAPPING_ALIGN,
        0,
        "mmap returns page-aligned addresses"
    );
    Ok(map)
}

fn validate_name(name: &str) -> Result<(), NamedSegmentError> {
    let invalid = |why| {
        Err(NamedSegmentError::InvalidName {
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
fn random_hex() -> Result<String, NamedSegmentError> {
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
                    return Err(NamedSegmentError::Random(err));
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
                    Err(NamedSegmentError::InvalidName { .. })
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
