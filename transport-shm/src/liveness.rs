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
//! One thread per process (`orcwire-liveness`, started with the first
//! watcher) sleeps in `epoll_wait` on the sockets and pidfds of every
//! watched connection: a process with many connections pays one thread
//! and one `epoll` fd for all of them, not a thread and an `eventfd` each.
//! On a death it publishes [`LivenessWatcher::is_peer_dead`] and calls that
//! watcher's `on_death` once; the shm transport passes one that marks the
//! segment dead and wakes every waiter. `on_death` runs on that shared
//! thread, so it must be quick (the transport's only sets flags and wakes
//! futex words); a panic in it is caught, and the thread watches on.
//!
//! A watcher is an entry in the thread's table: [`LivenessWatcher::stop`]
//! (or dropping the watcher) takes the entry out and its fds out of the
//! `epoll` set, and if the thread took it out first to report a death,
//! waits for that `on_death` to return. A child made by `fork` without
//! `exec` has no such thread: its first watcher starts its own.
//!
//! Both ends must keep their socket fds close-on-exec: a copy inherited by
//! an unrelated child would keep the socket open and hide the death.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::sync::thread::{self, ThreadId};
use crate::sync::{Arc, AtomicBool, AtomicU64, Condvar, Mutex, Ordering};

/// Most stray bytes drained from a socket per wake-up, so a peer that
/// floods its channel cannot keep the watcher thread on it.
const DRAIN_PER_WAKEUP: usize = 64 * 1024;

/// Events the watcher thread takes from `epoll_wait` at once.
const EVENTS_PER_WAIT: usize = 64;

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

/// Where a watcher stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the thread's table.
    Watching,
    /// Taken out by the thread, which runs (or is about to run) `on_death`.
    Reporting,
    /// `on_death` returned, or `stop` took the entry out first.
    Done,
}

/// What one watcher's handle and the thread share.
struct Shared {
    /// Our end of the liveness channel (non-blocking).
    sock: OwnedFd,
    /// The peer's pidfd, when we have one.
    pidfd: Option<OwnedFd>,
    /// Set, before `on_death` runs, once the peer is known dead.
    dead: AtomicBool,
    /// Where the watcher stands: apart from the fds, so that the thread
    /// lets go of them before it says `Done` (see `report`).
    status: Arc<Status>,
}

/// A watcher's [`State`], and the condition `stop` waits on.
struct Status {
    state: Mutex<State>,
    /// Notified when `state` becomes `Done`.
    done: Condvar,
}

/// One watched connection in the thread's table.
struct Entry {
    shared: Arc<Shared>,
    on_death: OnDeath,
}

/// The process's watcher thread and its table.
struct Hub {
    epoll: Epoll,
    entries: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    /// The thread's id, so `stop` called from `on_death` does not wait for
    /// itself.
    thread: ThreadId,
    /// The process that started the thread (a forked child must start its
    /// own).
    pid: u32,
    /// Set if `epoll_wait` failed for good; the next watcher starts a new
    /// thread.
    broken: AtomicBool,
}

/// The `epoll` data of a watcher's socket (its id shifted, low bit 0) and
/// pidfd (low bit 1).
fn token(id: u64, pidfd: bool) -> u64 {
    id << 1 | u64::from(pidfd)
}

/// The process's hub, started on first use (or again after a `fork`, or if
/// the last one broke).
fn hub() -> Result<Arc<Hub>, LivenessError> {
    static HUB: OnceLock<Mutex<Option<Arc<Hub>>>> = OnceLock::new();
    let mut slot = HUB.get_or_init(|| Mutex::new(None)).lock();
    if let Some(h) = slot.as_ref() {
        // SYNC POINT: hub broken. Pairs with the store in `run_hub`.
        if h.pid == std::process::id() && !h.broken.load(Ordering::Acquire) {
            return Ok(Arc::clone(h));
        }
    }
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|source| {
        LivenessError::Os {
            op: "epoll_create1",
            source,
        }
    })?;
    // The thread needs the hub and the hub the thread's id: the thread
    // waits on a channel for its hub.
    let (tx, rx) = std::sync::mpsc::channel::<Arc<Hub>>();
    let handle = thread::Builder::new()
        .name("orcwire-liveness".to_owned())
        .spawn(move || {
            if let Ok(hub) = rx.recv() {
                run_hub(&hub);
            }
        })
        .map_err(LivenessError::Spawn)?;
    let hub = Arc::new(Hub {
        epoll,
        entries: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        thread: handle.thread().id(),
        pid: std::process::id(),
        broken: AtomicBool::new(false),
    });
    // The thread lives as long as the process (detached: dropping the
    // handle does not stop it).
    drop(handle);
    // A send fails only if the thread is gone, which it is not before it
    // receives: it waits for this.
    let _ = tx.send(Arc::clone(&hub));
    *slot = Some(Arc::clone(&hub));
    Ok(hub)
}

/// The watcher thread's body: forever, wait for events and report deaths.
fn run_hub(hub: &Hub) {
    let mut events = [EpollEvent::empty(); EVENTS_PER_WAIT];
    loop {
        let n = match hub.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(_) => {
                // EBADF/EFAULT/EINVAL cannot happen with our own epoll fd;
                // if one does we can no longer watch, and a silently
                // stopped watcher would leave callers hanging on a dead
                // peer: report every watched peer dead, and let the next
                // watcher start a new thread.
                // SYNC POINT: hub broken (Release half, see `hub`).
                hub.broken.store(true, Ordering::Release);
                let ids: Vec<u64> = hub.entries.lock().keys().copied().collect();
                for id in ids {
                    report(hub, id);
                }
                return;
            }
        };
        for ev in &events[..n] {
            let (id, is_pidfd) = (ev.data() >> 1, ev.data() & 1 == 1);
            let flags = ev.events();
            // Drained under the table's lock, without a reference of our
            // own: a `stop` meanwhile waits, and then the watcher's drop
            // closes its fds itself (never this thread, later).
            let died = {
                let entries = hub.entries.lock();
                let Some(entry) = entries.get(&id) else {
                    continue; // stopped since the event
                };
                is_pidfd
                    || flags.intersects(
                        EpollFlags::EPOLLHUP | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLERR,
                    )
                    || (flags.contains(EpollFlags::EPOLLIN) && drain(&entry.shared))
            };
            if died {
                report(hub, id);
            }
        }
    }
}

/// Takes watcher `id` out of the table (unless `stop` did first) and runs
/// its `on_death`.
fn report(hub: &Hub, id: u64) {
    let entry = {
        let mut entries = hub.entries.lock();
        let Some(entry) = entries.remove(&id) else {
            return;
        };
        unwatch(hub, &entry.shared);
        // Under the table's lock: a `stop` that finds the entry gone then
        // sees `Reporting` and waits for `Done`.
        *entry.shared.status.state.lock() = State::Reporting;
        entry
    };
    // SYNC POINT: peer death published (Release half, see `is_peer_dead`).
    entry.shared.dead.store(true, Ordering::Release);
    let Entry { shared, on_death } = entry;
    // Let go of the fds first: the watcher holds them until it is dropped
    // (its `stop` waits for `Done`), and closes them then, on its own
    // thread; had this thread kept a reference past `Done`, they would
    // close a moment after the drop returned.
    let status = Arc::clone(&shared.status);
    drop(shared);
    // A panicking callback must not end the thread every connection of the
    // process relies on; there is nobody to report the panic to.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(on_death));
    *status.state.lock() = State::Done;
    status.done.notify_all();
}

/// Takes a watcher's fds out of the `epoll` set. Errors mean the fd is not
/// in the set any more, which is what we want.
fn unwatch(hub: &Hub, shared: &Shared) {
    let _ = hub.epoll.delete(&shared.sock);
    if let Some(p) = &shared.pidfd {
        let _ = hub.epoll.delete(p);
    }
}

/// Watches the peer process and calls a callback once when it dies.
///
/// The fds handed to [`spawn`](Self::spawn) stay open until the watcher
/// is dropped, so stopping the watcher does not by itself hang up on the
/// peer.
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
    hub: Arc<Hub>,
    id: u64,
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
    /// ([`pidfd_open`]). `on_death` runs on the process's watcher thread,
    /// once, as soon as either shows the peer gone — EOF, hang-up, error,
    /// or the peer half-closing its end all count. It must be quick: the
    /// thread watches every connection of the process. Bytes the peer
    /// writes are drained and ignored.
    ///
    /// `on_death` may call [`stop`](Self::stop) or drop the watcher.
    ///
    /// # Errors
    /// [`LivenessError::Os`] when `sock` cannot be set non-blocking (a
    /// closed fd) or the fds cannot be watched (`epoll_create1`,
    /// `epoll_ctl`), [`LivenessError::Spawn`] when the process's watcher
    /// thread cannot be started.
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
        let hub = hub()?;
        let shared = Arc::new(Shared {
            sock,
            pidfd,
            dead: AtomicBool::new(false),
            status: Arc::new(Status {
                state: Mutex::new(State::Watching),
                done: Condvar::new(),
            }),
        });
        // Relaxed: only unique.
        let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
        // In the table before the fds are in the set: an event for them
        // finds the entry.
        hub.entries.lock().insert(
            id,
            Entry {
                shared: Arc::clone(&shared),
                on_death,
            },
        );
        let add = |fd: &OwnedFd, events, pidfd| {
            hub.epoll
                .add(fd, EpollEvent::new(events, token(id, pidfd)))
                .map_err(|source| LivenessError::Os {
                    op: "epoll_ctl(EPOLL_CTL_ADD)",
                    source,
                })
        };
        let added = add(
            &shared.sock,
            EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP,
            false,
        )
        .and_then(|()| match &shared.pidfd {
            Some(p) => add(p, EpollFlags::EPOLLIN, true),
            None => Ok(()),
        });
        let watcher = Self { shared, hub, id };
        // On failure, dropping the watcher takes the entry out again.
        added.map(|()| watcher)
    }

    /// Whether the peer has been seen dead. Once true, stays true.
    pub fn is_peer_dead(&self) -> bool {
        // SYNC POINT: peer death published
        self.shared.dead.load(Ordering::Acquire)
    }

    /// Stops watching, without calling `on_death`.
    ///
    /// If the peer died just before, `on_death` may already be running;
    /// `stop` then waits for it to return. Once `stop` has returned,
    /// `on_death` will never run. Idempotent; concurrent callers all
    /// return only after that. Called from inside `on_death` it returns at
    /// once (the callback is finishing anyway).
    ///
    /// Dropping the watcher stops it, then closes `sock` and the pidfd
    /// before the drop returns (the watcher thread never holds them past
    /// a `stop`), so a count of open fds taken right after is exact.
    pub fn stop(&self) {
        let taken = {
            let mut entries = self.hub.entries.lock();
            let taken = entries.remove(&self.id);
            if let Some(e) = &taken {
                unwatch(&self.hub, &e.shared);
                *e.shared.status.state.lock() = State::Done;
            }
            taken
        };
        // The callback, never run, is dropped here, outside the lock.
        drop(taken);
        if thread::current().id() == self.hub.thread {
            return;
        }
        let status = &self.shared.status;
        let mut state = status.state.lock();
        while *state == State::Reporting {
            state = status.done.wait(state);
        }
    }
}

impl Drop for LivenessWatcher {
    fn drop(&mut self) {
        self.stop();
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
