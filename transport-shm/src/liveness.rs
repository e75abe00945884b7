//! [`LivenessWatcher`]: notices within microseconds that the peer process
//! has died, without any heartbeat.
//!
//! What it relies on: the kernel closes every fd of a process that exits,
//! however it exits (`SIGKILL` included). The Unix socket pair that
//! carried the segment stays open for the life of the connection, the peer
//! never writes on it, and so our end turns readable-at-EOF / hung-up
//! exactly when the last holder of the peer's end is gone. The controller
//! can watch a `pidfd` of the executor too ([`pidfd_open`]), which turns
//! readable when the process exits even if it leaked its socket end into
//! a child of its own.
//!
//! A dedicated thread (`orcwire-liveness`) sleeps in `poll` on the socket,
//! the optional pidfd and an internal eventfd that [`LivenessWatcher::stop`]
//! writes to. On death it publishes [`LivenessWatcher::is_peer_dead`] and
//! calls the `on_death` callback once; the shm transport passes one that
//! marks the segment dead and wakes every waiter.
//!
//! Both ends must keep their socket fds close-on-exec: a copy inherited by
//! an unrelated child would keep the socket open and hide the death.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::sync::thread::{self, JoinHandle, ThreadId};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};

/// Most stray bytes drained from the socket per wake-up, so a peer that
/// floods the channel cannot keep the watcher from seeing a stop request.
const DRAIN_PER_WAKEUP: usize = 64 * 1024;

/// The callback run once when the peer dies.
pub type OnDeath = Box<dyn FnOnce() + Send + 'static>;

/// The watcher could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LivenessError {
    /// An OS call failed while setting up.
    #[error("{op} failed while starting the liveness watcher: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The error the kernel returned.
        source: Errno,
    },
    /// The watcher thread could not be spawned.
    #[error("could not spawn the liveness watcher thread: {0}")]
    Spawn(#[source] io::Error),
}

/// What the watcher thread and the handle share.
struct Shared {
    /// Our end of the liveness channel (non-blocking).
    sock: OwnedFd,
    /// The peer's pidfd, when we have one.
    pidfd: Option<OwnedFd>,
    /// Written by `stop` to wake the thread and make it leave.
    stop: EventFd,
    /// Set, before `on_death` runs, once the peer is known dead.
    dead: AtomicBool,
}

/// Watches the peer process and calls a callback once when it dies.
///
/// The fds handed to [`spawn`](Self::spawn) stay open until the watcher
/// is dropped (and its thread has finished), so stopping the watcher does
/// not by itself hang up on the peer.
///
/// # Examples
/// ```
/// use std::os::fd::AsFd;
/// use std::sync::mpsc;
/// use std::time::Duration;
/// use orcwire_shm::liveness::LivenessWatcher;
/// use orcwire_shm::socket_pair;
///
/// let (ours, theirs) = socket_pair()?;
/// let (tx, rx) = mpsc::channel();
/// let watcher = LivenessWatcher::spawn(ours, None, Box::new(move || {
///     let _ = tx.send(());
/// }))?;
/// assert!(!watcher.is_peer_dead());
/// drop(theirs); // the peer "dies": its end of the socket closes
/// rx.recv_timeout(Duration::from_secs(5))?;
/// assert!(watcher.is_peer_dead());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LivenessWatcher {
    shared: Arc<Shared>,
    /// The thread, until someone joins it.
    handle: Mutex<Option<JoinHandle<()>>>,
    /// The thread's id, so `stop` called from `on_death` does not join
    /// itself.
    thread_id: ThreadId,
}

impl std::fmt::Debug for LivenessWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivenessWatcher")
            .field("sock", &self.shared.sock.as_raw_fd())
            .field("pidfd", &self.shared.pidfd.as_ref().map(AsRawFd::as_raw_fd))
            .field("dead", &self.is_peer_dead())
            .finish()
    }
}

impl LivenessWatcher {
    /// Starts watching: `sock` is our end of the liveness socket pair (any
    /// pollable fd whose hang-up means the peer is gone also works, e.g. a
    /// pipe's read end), `pidfd` optionally the peer's pidfd
    /// ([`pidfd_open`]). `on_death` runs on the watcher thread, once, as
    /// soon as either shows the peer gone — EOF, hang-up, error, or the
    /// peer half-closing its end all count. Bytes the peer writes are
    /// drained and ignored.
    ///
    /// `on_death` may call [`stop`](Self::stop) or drop the watcher.
    ///
    /// # Errors
    /// [`LivenessError::Os`] when the eventfd cannot be made or `sock`
    /// cannot be set non-blocking (a closed fd), [`LivenessError::Spawn`]
    /// when the thread cannot be started.
    pub fn spawn(
        sock: OwnedFd,
        pidfd: Option<OwnedFd>,
        on_death: OnDeath,
    ) -> Result<Self, LivenessError> {
        // Non-blocking, so draining stray bytes never blocks. This is our
        // own open file description (socketpair ends are distinct ones),
        // so the peer's end is unaffected.
        let fl = fcntl(&sock, FcntlArg::F_GETFL).map_err(|source| LivenessError::Os {
            op: "fcntl(F_GETFL)",
            source,
        })?;
        fcntl(
            &sock,
            FcntlArg::F_SETFL(OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK),
        )
        .map_err(|source| LivenessError::Os {
            op: "fcntl(F_SETFL)",
            source,
        })?;
        let stop = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|source| LivenessError::Os {
                op: "eventfd",
                source,
            })?;
        let shared = Arc::new(Shared {
            sock,
            pidfd,
            stop,
            dead: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("orcwire-liveness".to_owned())
            .spawn(move || watch(&for_thread, on_death))
            .map_err(LivenessError::Spawn)?;
        let thread_id = handle.thread().id();
        Ok(Self {
            shared,
            handle: Mutex::new(Some(handle)),
            thread_id,
        })
    }

    /// Whether the peer has been seen dead. Once true, stays true.
    pub fn is_peer_dead(&self) -> bool {
        // SYNC POINT: peer death published
        self.shared.dead.load(Ordering::Acquire)
    }

    /// Stops watching and joins the thread, without calling `on_death`.
    ///
    /// If the peer died just before, `on_death` may already be running;
    /// `stop` then waits for it to return. Once `stop` has returned,
    /// `on_death` will never run. Idempotent; concurrent callers all
    /// return only after the thread is gone. Called from inside `on_death`
    /// it only asks the thread to leave (which it is doing anyway).
    pub fn stop(&self) {
        // EAGAIN (counter saturated) means a stop is already pending.
        let _ = self.shared.stop.write(1);
        if thread::current().id() == self.thread_id {
            return;
        }
        let mut handle = self.handle.lock();
        if let Some(h) = handle.take() {
            // A panic in `on_death` ended the thread; it has nothing more
            // to report, and re-raising it here could abort in `Drop`.
            let _ = h.join();
        }
    }
}

impl Drop for LivenessWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The watcher thread's body.
fn watch(shared: &Shared, on_death: OnDeath) {
    if wait_for_death(shared) {
        // SYNC POINT: peer death published
        shared.dead.store(true, Ordering::Release);
        on_death();
    }
}

/// Sleeps until the peer dies (`true`) or a stop is requested (`false`).
fn wait_for_death(shared: &Shared) -> bool {
    const SOCK: usize = 0;
    const STOP: usize = 1;
    const PIDFD: usize = 2;
    let pollfd = |fd: libc::c_int, events| libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        let mut fds = [
            pollfd(shared.sock.as_raw_fd(), libc::POLLIN | libc::POLLRDHUP),
            pollfd(shared.stop.as_fd().as_raw_fd(), libc::POLLIN),
            // A negative fd is ignored by poll.
            pollfd(
                shared.pidfd.as_ref().map_or(-1, AsRawFd::as_raw_fd),
                libc::POLLIN,
            ),
        ];
        // SAFETY: `fds` is an array of valid pollfd structs and we pass its
        // length; every fd in it is owned by `shared`, which outlives this.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            // EBADF/EFAULT/EINVAL/ENOMEM cannot happen with three fds we
            // own; if one does we can no longer watch, and a silently
            // stopped watcher would leave callers hanging on a dead peer.
            return true;
        }
        // Stop wins over a simultaneous death: the caller asked not to be
        // called any more.
        if fds[STOP].revents != 0 {
            return false;
        }
        if fds[PIDFD].revents != 0 {
            return true;
        }
        let ev = fds[SOCK].revents;
        if ev & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return true;
        }
        if ev & libc::POLLIN != 0 && drain(shared) {
            return true;
        }
    }
}

/// Reads and drops up to [`DRAIN_PER_WAKEUP`] stray bytes; `true` when the
/// socket reports EOF or an error (the peer is gone).
fn drain(shared: &Shared) -> bool {
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_PER_WAKEUP {
        match nix::unistd::read(&shared.sock, &mut buf) {
            Ok(0) => return true,
            Ok(n) => drained += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return false,
            Err(_) => return true,
        }
    }
    false
}

/// Opens a pidfd for process `pid` (close-on-exec), which turns readable
/// when the process exits. Open it while the child is certainly alive or
/// not yet reaped (for instance right after `Command::spawn`), or the pid
/// may already name another process.
///
/// # Errors
/// `InvalidInput` for pid 0 or one beyond `pid_t`; otherwise the OS error
/// (`ESRCH`: no such process; `ENOSYS`: kernel older than 5.3 — watch the
/// socket alone then).
///
/// # Examples
/// ```
/// let mut child = std::process::Command::new("true").spawn()?;
/// let pidfd = orcwire_shm::pidfd_open(child.id())?;
/// child.wait()?;
/// # drop(pidfd);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{pid} is not a valid pid"),
            )
        })?;
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new
    // fd or -1; no memory is shared with the kernel.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(rc)
        .map_err(|_| io::Error::other("pidfd_open returned an out-of-range fd"))?;
    // SAFETY: the syscall succeeded, so `fd` is a fresh pidfd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;
    use crate::fdpass::socket_pair;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn stray_bytes_are_ignored_then_eof_is_death() {
        let (ours, theirs) = socket_pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let w = LivenessWatcher::spawn(ours, None, Box::new(move || tx.send(()).unwrap())).unwrap();
        // Several datagrams, more than one drain budget in total.
        for _ in 0..40 {
            nix::unistd::write(&theirs, &[1u8; 2048]).unwrap();
        }
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "bytes are not death"
        );
        assert!(!w.is_peer_dead());
        drop(theirs);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(w.is_peer_dead());
    }

    #[test]
    fn pipe_hangup_is_death() {
        let (r, wr) = nix::unistd::pipe().unwrap();
        let (tx, rx) = mpsc::channel();
        let w = LivenessWatcher::spawn(r, None, Box::new(move || tx.send(()).unwrap())).unwrap();
        drop(wr);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(w.is_peer_dead());
    }

    #[test]
    fn pidfd_open_rejects_bad_pids() {
        assert_eq!(
            pidfd_open(0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            pidfd_open(u32::MAX).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
