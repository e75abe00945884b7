//! [`Words`]: one word at a time from where a segment lies, a mapping
//! (atomic `Relaxed` loads, never a reference) or a file (`pread`, so an
//! owner that shrinks the file cannot crash us), each bounds- and
//! alignment-checked first.
//!
//! Relies on: the mapping staying mapped for the lifetime `'a`, and
//! `Relaxed` atomic loads of at most 8 bytes being sound on read-only
//! memory on 64-bit targets (`inspect_fd` maps only there).

use std::marker::PhantomData;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::InspectError;

/// Where the words are read from.
pub(super) enum Words<'a> {
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
    pub(super) fn len(&self) -> u64 {
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

    pub(super) fn u64_at(&self, offset: u64) -> Result<u64, InspectError> {
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

    pub(super) fn u32_at(&self, offset: u64) -> Result<u32, InspectError> {
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
