//! The listener flow: [`ShmListener`] (controller) listens on a Unix
//! `SOCK_SEQPACKET` path for executors started independently and sends
//! each a fresh memfd with `SCM_RIGHTS`; [`attach_path`] (executor)
//! connects, receives it and attaches.
//!
//! Relies on: `handshake.rs`, [`crate::fdpass`], a socket file created mode
//! 0600 before `listen`, and `SO_PEERCRED` to refuse other users.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    accept4, bind, connect, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, UnixAddr,
};

use super::handshake::{
    attach_segment, create_segment, poll_readable, read_answer, send_answer, ERROR_PREFIX, HELLO,
};
use super::{os, LaunchError, DEFAULT_ATTACH_TIMEOUT};
use crate::fdpass::{recv_fd_timeout, send_fd};
use crate::liveness::pidfd_open;
use crate::transport::{ShmConfig, ShmTransport};

/// The executor's end for a controller listening on `path` ([`ShmListener`]):
/// connects, receives the memfd, attaches and starts watching the
/// controller.
///
/// # Errors
/// [`LaunchError::Os`] when the socket cannot connect (no listener);
/// [`LaunchError::FdPass`] when no valid fd arrives within `timeout`;
/// segment and layout errors when the segment is refused.
pub fn attach_path(
    path: impl AsRef<Path>,
    config: ShmConfig,
    timeout: Duration,
) -> Result<Arc<ShmTransport>, LaunchError> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(os("socket"))?;
    let addr = UnixAddr::new(path.as_ref()).map_err(os("socket path"))?;
    connect(sock.as_raw_fd(), &addr).map_err(os("connect"))?;
    let mut buf = [0u8; 64];
    let (memfd, n) = recv_fd_timeout(sock.as_fd(), &mut buf, timeout)?;
    if &buf[..n] != HELLO {
        let e = LaunchError::Protocol("the listener's greeting is not orcwire's".into());
        let mut msg = ERROR_PREFIX.to_vec();
        msg.extend_from_slice(e.to_string().as_bytes());
        send_answer(sock.as_fd(), &msg);
        return Err(e);
    }
    let transport = attach_segment(memfd, &sock, config)?;
    transport.watch_peer(sock, None)?;
    Ok(transport)
}

/// A controller listening on a Unix socket path for independently
/// started executors ([`attach_path`]). Each [`accept`](Self::accept)
/// makes a fresh segment for one executor. The socket file is removed on
/// drop.
///
/// ```
/// use std::time::Duration;
/// use orcwire_shm::{attach_path, ShmConfig, ShmListener};
///
/// let dir = std::env::temp_dir().join(format!("orcwire-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("ctl.sock");
/// let listener = ShmListener::bind(&path, ShmConfig::default())?;
/// let p = path.clone();
/// let exec = std::thread::spawn(move || attach_path(p, ShmConfig::default(), Duration::from_secs(5)));
/// let controller_end = listener.accept(Some(Duration::from_secs(5)))?;
/// let executor_end = exec.join().unwrap()?;
/// assert_eq!(executor_end.epoch(), controller_end.epoch());
/// drop(listener);
/// std::fs::remove_dir(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ShmListener {
    sock: OwnedFd,
    path: PathBuf,
    config: ShmConfig,
}

impl ShmListener {
    /// Binds a `SOCK_SEQPACKET` listener at `path` (which must not exist),
    /// mode 0600.
    ///
    /// # Errors
    /// [`LaunchError::Listen`] when the path is taken or unusable.
    pub fn bind(path: impl AsRef<Path>, config: ShmConfig) -> Result<Self, LaunchError> {
        let path = path.as_ref().to_path_buf();
        let listen_err = |source: io::Error| LaunchError::Listen {
            path: path.clone(),
            source,
        };
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| listen_err(e.into()))?;
        let addr = UnixAddr::new(&path).map_err(|e| listen_err(e.into()))?;
        bind(sock.as_raw_fd(), &addr).map_err(|e| listen_err(e.into()))?;
        // Before listen(): nobody can connect yet, so there is no window
        // in which another user could.
        use std::os::unix::fs::PermissionsExt;
        let perms = std::fs::Permissions::from_mode(0o600);
        if let Err(e) = std::fs::set_permissions(&path, perms) {
            let _ = std::fs::remove_file(&path);
            return Err(listen_err(e));
        }
        let backlog = Backlog::new(16).map_err(|e| listen_err(e.into()))?;
        if let Err(e) = listen(&sock, backlog) {
            let _ = std::fs::remove_file(&path);
            return Err(listen_err(e.into()));
        }
        Ok(Self { sock, path, config })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits (up to `timeout`, or forever with `None`) for one executor,
    /// sends it a fresh segment and waits for it to attach.
    ///
    /// # Errors
    /// [`LaunchError::Timeout`] when nobody connected or the executor did
    /// not answer in time; [`LaunchError::WrongUser`] for a connection
    /// from another uid; [`LaunchError::PeerRefused`] /
    /// [`LaunchError::PeerGone`] when the executor failed to attach.
    pub fn accept(&self, timeout: Option<Duration>) -> Result<Arc<ShmTransport>, LaunchError> {
        let limit = timeout.unwrap_or(Duration::MAX);
        let deadline = timeout.map(|t| Instant::now() + t);
        if let Some(d) = deadline {
            if !poll_readable(self.sock.as_fd(), d)? {
                return Err(LaunchError::Timeout(limit));
            }
        }
        let raw = loop {
            match accept4(self.sock.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => break fd,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(LaunchError::Os {
                        op: "accept",
                        source: e,
                    })
                }
            }
        };
        // SAFETY: accept4 returned a fresh fd that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(raw) };
        let cred = getsockopt(&conn, sockopt::PeerCredentials).map_err(os("SO_PEERCRED"))?;
        // SAFETY: geteuid has no preconditions.
        let ours = unsafe { libc::geteuid() };
        if cred.uid() != ours {
            return Err(LaunchError::WrongUser {
                peer: cred.uid(),
                ours,
            });
        }
        let (segment, transport) = create_segment(self.config)?;
        send_fd(conn.as_fd(), segment.fd(), HELLO)?;
        let answer_deadline = deadline.unwrap_or_else(|| Instant::now() + DEFAULT_ATTACH_TIMEOUT);
        read_answer(
            conn.as_fd(),
            answer_deadline,
            limit.min(DEFAULT_ATTACH_TIMEOUT),
        )?;
        let pidfd = u32::try_from(cred.pid())
            .ok()
            .and_then(|pid| pidfd_open(pid).ok());
        transport.watch_peer(conn, pidfd)?;
        Ok(transport)
    }
}

impl Drop for ShmListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;
    use crate::fdpass::socket_pair;

    #[test]
    fn listener_refuses_a_wrong_greeting_and_a_non_memfd() {
        let dir = std::env::temp_dir().join(format!("orcwire-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let listener = ShmListener::bind(&path, ShmConfig::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        // Accept times out when nobody comes.
        assert!(matches!(
            listener.accept(Some(Duration::from_millis(20))),
            Err(LaunchError::Timeout(_))
        ));
        // An executor that refuses: simulate by an attach to a pipe fd.
        let (ours, theirs) = socket_pair().unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        send_fd(ours.as_fd(), r.as_fd(), HELLO).unwrap();
        let mut buf = [0u8; 64];
        let (fd, _) = recv_fd_timeout(theirs.as_fd(), &mut buf, Duration::from_secs(1)).unwrap();
        assert!(matches!(
            attach_segment(fd, &theirs, ShmConfig::default()),
            Err(LaunchError::Segment(_))
        ));
        let e = read_answer(
            ours.as_fd(),
            Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            matches!(e, LaunchError::PeerRefused(ref t) if t.contains("memfd")),
            "{e}"
        );
        drop(listener);
        assert!(!path.exists());
        std::fs::remove_dir(&dir).unwrap();
    }
}
