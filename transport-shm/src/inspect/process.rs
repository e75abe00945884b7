//! Finding a process's segments: its descriptors under `/proc/PID/fd`
//! whose links name an orcwire memfd or `/dev/shm` object, each opened
//! read-only through the link and decoded with [`inspect_fd`]; only
//! processes of our own effective uid.
//!
//! Relies on: Linux's `/proc/PID/fd` links and the memfd name
//! `Segment::create` gives its file.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use super::{inspect_fd, InspectError, SegmentReport};

/// How `/proc` names the fd of a memfd segment (`Segment::create`'s name).
const MEMFD_LINK_PREFIX: &str = "/memfd:orcwire";
/// How `/proc` names the fd of a `/dev/shm/orcwire-…` object.
const NAMED_LINK_PREFIX: &str = "/dev/shm/orcwire-";

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
    fn link_names() {
        assert!(is_candidate("/memfd:orcwire (deleted)"));
        assert!(is_candidate("/dev/shm/orcwire-12-00ff (deleted)"));
        assert!(!is_candidate("/memfd:other"));
        assert!(!is_candidate("socket:[1234]"));
    }
}
