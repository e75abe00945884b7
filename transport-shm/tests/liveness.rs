//! The peer-death watcher against real processes: SIGKILL seen through
//! the socket and through a pidfd within 100 ms, stop() never calls back,
//! children always reaped, no fd leaked.
//!
//! Every test takes `SERIAL`, so the fd-count check sees no other test's
//! fds and the timing checks do not compete with each other for the two
//! cores.
#![cfg(not(orcwire_loom))]

mod common;

use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use orcwire_shm::liveness::LivenessWatcher;
use orcwire_shm::{pidfd_open, socket_pair};
use orcwire_sync::{Arc, Mutex, MutexGuard};

use common::{open_fd_count, spawn_with_fd, Reaped};

static SERIAL: Mutex<()> = Mutex::new(());

/// How fast death must be noticed.
const DEATH_LIMIT: Duration = Duration::from_millis(100);
/// How long a test waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(10);

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock()
}

/// A `sleep 30` child holding `fd` as fd 3.
fn sleeper_holding(fd: OwnedFd) -> Reaped {
    spawn_with_fd(Command::new("sleep").arg("30"), fd)
}

/// A watcher whose `on_death` reports the instant it ran.
fn watch(sock: OwnedFd, pidfd: Option<OwnedFd>) -> (LivenessWatcher, mpsc::Receiver<Instant>) {
    let (tx, rx) = mpsc::channel();
    let w = LivenessWatcher::spawn(
        sock,
        pidfd,
        Box::new(move || tx.send(Instant::now()).unwrap()),
    )
    .unwrap();
    (w, rx)
}

/// Starts the process's watcher thread and its epoll fd, which the first
/// watcher makes and which live as long as the process: before counting
/// fds.
fn start_watcher_thread() {
    let (r, wr) = nix::unistd::pipe().unwrap();
    drop(LivenessWatcher::spawn(r, None, Box::new(|| {})).unwrap());
    drop(wr);
}

/// Kills `child` with SIGKILL and returns how long the watcher took to
/// call `on_death` after the signal was sent.
fn kill_and_time(child: &mut Reaped, rx: &mpsc::Receiver<Instant>) -> Duration {
    let t0 = Instant::now();
    child.0.kill().unwrap();
    let seen = rx.recv_timeout(PATIENCE).expect("on_death never ran");
    child.wait_timeout(PATIENCE);
    seen - t0
}

#[test]
fn sigkill_is_seen_through_the_socket_within_100ms() {
    let _g = serial();
    let (ours, theirs) = socket_pair().unwrap();
    let mut child = sleeper_holding(theirs);
    let (w, rx) = watch(ours, None);
    orcwire_sync::thread::sleep(Duration::from_millis(20)); // let it exec
    assert!(!w.is_peer_dead());
    assert!(rx.try_recv().is_err(), "a live peer is not dead");
    let took = kill_and_time(&mut child, &rx);
    eprintln!("socket: SIGKILL to on_death in {took:?}");
    assert!(took < DEATH_LIMIT, "death seen after {took:?}");
    assert!(w.is_peer_dead());
    assert!(
        rx.recv_timeout(Duration::from_millis(50)).is_err(),
        "on_death ran twice"
    );
}

#[test]
fn sigkill_is_seen_through_a_pidfd_within_100ms() {
    let _g = serial();
    let mut child = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
    let pidfd = pidfd_open(child.0.id()).unwrap();
    // The socket's other end stays with us: only the pidfd can tell.
    let (ours, _theirs) = socket_pair().unwrap();
    let (w, rx) = watch(ours, Some(pidfd));
    assert!(
        rx.recv_timeout(Duration::from_millis(20)).is_err(),
        "a live peer is not dead"
    );
    let took = kill_and_time(&mut child, &rx);
    eprintln!("pidfd: SIGKILL to on_death in {took:?}");
    assert!(took < DEATH_LIMIT, "death seen after {took:?}");
    assert!(w.is_peer_dead());
}

#[test]
fn a_normal_exit_is_death_too() {
    let _g = serial();
    let (ours, theirs) = socket_pair().unwrap();
    let mut child = spawn_with_fd(Command::new("/bin/sh").args(["-c", "sleep 0.05"]), theirs);
    let (w, rx) = watch(ours, None);
    rx.recv_timeout(PATIENCE).expect("on_death never ran");
    assert!(child.wait_timeout(PATIENCE).success());
    assert!(w.is_peer_dead());
}

#[test]
fn stop_and_drop_never_call_on_death() {
    let _g = serial();
    // stop(), then the peer dies: no call.
    let (ours, theirs) = socket_pair().unwrap();
    let mut child = sleeper_holding(theirs);
    let (w, rx) = watch(ours, None);
    w.stop();
    w.stop(); // idempotent
    child.0.kill().unwrap();
    child.wait_timeout(PATIENCE);
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "stop() must not call on_death"
    );
    assert!(!w.is_peer_dead());
    drop(w);

    // drop, then the peer dies: no call (the sender is dropped with the
    // callback, so the channel reports disconnection, not a message).
    let (ours, theirs) = socket_pair().unwrap();
    let mut child = sleeper_holding(theirs);
    let (w, rx) = watch(ours, None);
    drop(w);
    child.0.kill().unwrap();
    child.wait_timeout(PATIENCE);
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(100)),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
}

#[test]
fn concurrent_stops_all_wait_for_the_thread() {
    let _g = serial();
    let (ours, _theirs) = socket_pair().unwrap();
    let (w, _rx) = watch(ours, None);
    let w = Arc::new(w);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let w = Arc::clone(&w);
            orcwire_sync::thread::spawn(move || w.stop())
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(!w.is_peer_dead());
}

#[test]
fn on_death_may_stop_and_drop_its_own_watcher() {
    let _g = serial();
    let (ours, theirs) = socket_pair().unwrap();
    let slot: Arc<Mutex<Option<LivenessWatcher>>> = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel();
    let in_callback = Arc::clone(&slot);
    let w = LivenessWatcher::spawn(
        ours,
        None,
        Box::new(move || {
            let w = in_callback.lock().take();
            if let Some(w) = w {
                assert!(w.is_peer_dead());
                w.stop(); // must not join itself
                drop(w); // nor here
            }
            tx.send(()).unwrap();
        }),
    )
    .unwrap();
    *slot.lock() = Some(w);
    drop(theirs);
    rx.recv_timeout(PATIENCE)
        .expect("on_death never finished: self-join deadlock?");
    assert!(slot.lock().is_none());
}

/// One function so that the fd count is measured with nothing else of
/// this binary running (the SERIAL lock keeps the other tests out).
#[test]
fn no_fd_leaks_and_every_child_reaped() {
    let _g = serial();
    start_watcher_thread();
    let before = open_fd_count();
    let mut pids = Vec::new();
    for round in 0..3 {
        // Socket death, with a pidfd alongside.
        let (ours, theirs) = socket_pair().unwrap();
        let mut child = sleeper_holding(theirs);
        pids.push(child.0.id());
        let pidfd = pidfd_open(child.0.id()).unwrap();
        let (w, rx) = watch(ours, Some(pidfd));
        let took = kill_and_time(&mut child, &rx);
        assert!(
            took < DEATH_LIMIT,
            "round {round}: death seen after {took:?}"
        );
        drop(w);
        drop(child);
        // Stopped before death.
        let (ours, theirs) = socket_pair().unwrap();
        let child = sleeper_holding(theirs);
        pids.push(child.0.id());
        let (w, _rx) = watch(ours, None);
        w.stop();
        drop(w);
        drop(child);
        // A watcher on a pipe, dropped while the writer lives: its fd
        // closes with it.
        let (r, wr) = nix::unistd::pipe().unwrap();
        drop(LivenessWatcher::spawn(r, None, Box::new(|| {})).unwrap());
        drop(wr);
    }
    assert_eq!(open_fd_count(), before, "fds leaked");
    // Reaped: a zombie would still answer to kill(pid, 0).
    for pid in pids {
        // SAFETY: kill with signal 0 only checks existence.
        let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
        assert_eq!(rc, -1, "child {pid} still exists (not reaped?)");
    }
}

#[test]
fn a_watcher_dropped_right_after_its_callback_has_closed_its_fd() {
    let _g = serial();
    start_watcher_thread();
    // The peer dies, the callback runs, the watcher is dropped at once:
    // the fd must be closed when the drop returns, not a moment later on
    // the watcher thread (which made the count above flaky under load).
    for round in 0..2000 {
        let before = open_fd_count();
        let (ours, theirs) = socket_pair().unwrap();
        let (w, rx) = watch(ours, None);
        drop(theirs);
        rx.recv_timeout(PATIENCE).expect("on_death never ran");
        drop(w);
        assert_eq!(
            open_fd_count(),
            before,
            "round {round}: fd still open after the drop"
        );
    }
}

/// Threads of this process named `name` (the kernel keeps 15 bytes of a
/// thread's name: `orcwire-liveness` reads `orcwire-livenes`).
fn threads_named(name: &str) -> usize {
    let name = &name[..name.len().min(15)];
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .map(|c| c.trim_end() == name)
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn one_thread_watches_every_connection_and_reports_each_death_to_its_own_callback() {
    let _g = serial();
    const N: usize = 12;
    let (tx, rx) = mpsc::channel();
    let mut peers = Vec::new();
    let mut watchers = Vec::new();
    for i in 0..N {
        let (ours, theirs) = socket_pair().unwrap();
        let tx = tx.clone();
        watchers.push(
            LivenessWatcher::spawn(ours, None, Box::new(move || tx.send(i).unwrap())).unwrap(),
        );
        peers.push(Some(theirs));
    }
    assert_eq!(
        threads_named("orcwire-liveness"),
        1,
        "watchers must share the process's one watcher thread"
    );
    // Every third is stopped; of the rest, the odd ones' peers die.
    for (i, w) in watchers.iter().enumerate() {
        if i % 3 == 0 {
            w.stop();
        }
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        if i % 2 == 1 || i % 3 == 0 {
            drop(peer.take());
        }
    }
    let mut expected: Vec<usize> = (0..N).filter(|i| i % 2 == 1 && i % 3 != 0).collect();
    let mut seen = Vec::new();
    for _ in 0..expected.len() {
        seen.push(rx.recv_timeout(PATIENCE).expect("a death was not reported"));
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "a callback ran twice, or for a stopped watcher or a live peer"
    );
    seen.sort_unstable();
    expected.sort_unstable();
    assert_eq!(seen, expected);
    for (i, w) in watchers.iter().enumerate() {
        assert_eq!(w.is_peer_dead(), i % 2 == 1 && i % 3 != 0, "watcher {i}");
    }
}

#[test]
fn a_panicking_callback_does_not_stop_the_shared_thread() {
    let _g = serial();
    let (a_ours, a_theirs) = socket_pair().unwrap();
    let (b_ours, b_theirs) = socket_pair().unwrap();
    let a = LivenessWatcher::spawn(a_ours, None, Box::new(|| panic!("a buggy callback"))).unwrap();
    let (b, rx) = watch(b_ours, None);
    drop(a_theirs);
    let deadline = Instant::now() + PATIENCE;
    while !a.is_peer_dead() {
        assert!(Instant::now() < deadline, "the first death was not seen");
        orcwire_sync::thread::sleep(Duration::from_millis(1));
    }
    drop(b_theirs);
    rx.recv_timeout(PATIENCE)
        .expect("the watcher thread stopped after a callback panicked");
    assert!(b.is_peer_dead());
}
