//! Two real processes over shared memory. This test binary spawns itself
//! as the executor through `orcwire_shm::ExecutorCommand` (or as a
//! controller listening on a socket path, for the controller-death test).
//!
//! The tests here run one at a time (a process-wide lock), so that each can
//! compare `/proc/self/fd` and `/dev/shm` before and after.

mod common;

use orcwire_sync::{AtomicBool, Ordering};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::{pseudo_random, CHILD_ENV};
use orcwire::{
    CallError, ControllerBuilder, DisconnectReason, Endpoint, ExecutorBuilder,
    WrapperFunctionBuffer,
};
use orcwire_shm::{
    attach_inherited, attach_named, attach_path, ExecutorCommand, NamedOffer, SpawnedExecutor,
};
use orcwire_shm::{RingCapacity, ShmConfig, WaitStrategy};

const LIMIT: Duration = Duration::from_secs(30);
/// Ring capacity of these tests: small, so that multiples of it stay cheap.
const RING: usize = 64 * 1024;
/// Sizes every direction is checked with.
const SIZES: [usize; 8] = [0, 1, 7, 8, 9, RING - 1, RING, 10 * RING];

const EXIT_CLEAN: i32 = 0;
const EXIT_PEER_DIED: i32 = 4;
const EXIT_BROKEN: i32 = 5;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn config() -> ShmConfig {
    ShmConfig {
        wait: WaitStrategy::balanced(),
        ring_capacity: RingCapacity::new(RING).unwrap(),
        ..ShmConfig::default()
    }
}

fn xor(a: &[u8]) -> Vec<u8> {
    a.iter().map(|b| b ^ 0xa5).collect()
}

/// This process's open descriptors, as (number, what it refers to),
/// without the directory handle that lists them (its number depends on
/// what else is open at that instant).
fn open_fds() -> std::collections::BTreeSet<(String, String)> {
    let listing = format!("/proc/{}/fd", std::process::id());
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), target)
        })
        .filter(|(_, target)| *target != listing)
        .collect()
}

/// Checks, bounded, that a test gave back every fd it opened and left
/// nothing in `/dev/shm`. Threads that hold the last reference to a
/// connection can take a moment to exit, hence the polling.
///
/// A leak is a descriptor open at the end that was not open at the start.
/// Comparing sets rather than counts matters: the test harness itself
/// can hold a descriptor for an instant while the first snapshot is taken
/// (seen about once in a hundred runs), which a count would then report as
/// one fd "missing" at the end.
struct NoLeaks {
    fds: std::collections::BTreeSet<(String, String)>,
    shm: Vec<String>,
}

impl NoLeaks {
    fn start() -> Self {
        // The process's liveness thread and its epoll fd belong to the
        // process, not to a connection: start them before the snapshot.
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(orcwire_shm::liveness::LivenessWatcher::spawn(r, None, Box::new(|| {})).unwrap());
        drop(w);
        Self {
            fds: open_fds(),
            shm: common::shm_entries(),
        }
    }

    fn leaked(&self) -> Vec<(String, String)> {
        open_fds().difference(&self.fds).cloned().collect()
    }

    fn check(self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.leaked().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            self.leaked(),
            Vec::<(String, String)>::new(),
            "the test leaked file descriptors"
        );
        assert_eq!(
            common::shm_entries(),
            self.shm,
            "the test left entries in /dev/shm"
        );
    }
}

fn spawn_executor(role: &str) -> SpawnedExecutor {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, role);
    ExecutorCommand::new(cmd)
        .config(config())
        .attach_timeout(LIMIT)
        .spawn()
        .unwrap()
}

fn controller(spawned: &SpawnedExecutor) -> Endpoint {
    ControllerBuilder::new()
        .sync_handler("ctl_xor", |a: &[u8]| {
            WrapperFunctionBuffer::from_vec(xor(a))
        })
        .handler("ctl_hang", |_a, r| common::never_answer(r, LIMIT))
        .connect(spawned.transport.clone())
        .unwrap()
}

fn exit_code(spawned: &SpawnedExecutor) -> Option<i32> {
    spawned
        .process
        .wait_timeout(LIMIT)
        .unwrap()
        .expect("executor did not exit in time")
        .code()
}

/// Entry point of every child role; a no-op in the parent.
#[test]
fn child_entry() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("shm-executor") => executor_role(attach_inherited(config()).unwrap()),
        Ok("shm-named-executor") => {
            let name = std::env::var("ORCWIRE_TEST_SEGMENT").unwrap();
            executor_role(attach_named(&name, config()).unwrap())
        }
        Ok("shm-named-truncating-executor") => {
            let name = std::env::var("ORCWIRE_TEST_SEGMENT").unwrap();
            executor_role(truncate_then_attach(&name))
        }
        Ok("shm-listener-controller") => listener_controller_role(),
        _ => {}
    }
}

/// A hostile executor: before and after it attaches to a named offer it
/// tries every truncation within its reach. The name itself it can
/// truncate and grow (nobody maps it); the memory it cannot (sealed).
fn truncate_then_attach(name: &str) -> Arc<orcwire_shm::ShmTransport> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use nix::unistd::ftruncate;
    let named = nix::sys::mman::shm_open(name, OFlag::O_RDWR, Mode::empty()).unwrap();
    let rendezvous = orcwire_shm::NamedRendezvous::open(name).unwrap();
    let memory = rendezvous.open_segment().unwrap();
    let transport = attach_named(name, config()).unwrap();
    for len in [0, 1, 1 << 24] {
        ftruncate(&named, len).expect("the name is ours to truncate");
        assert_eq!(
            ftruncate(&memory, len).unwrap_err(),
            nix::errno::Errno::EPERM,
            "the segment's size must be sealed"
        );
    }
    transport
}

fn executor_role(transport: Arc<orcwire_shm::ShmTransport>) {
    let me: Arc<OnceLock<Endpoint>> = Arc::new(OnceLock::new());
    let me2 = Arc::clone(&me);
    let me3 = Arc::clone(&me);
    let ep = ExecutorBuilder::new()
        .sync_function("echo", WrapperFunctionBuffer::from_slice)
        .sync_function("xor", |a: &[u8]| WrapperFunctionBuffer::from_vec(xor(a)))
        .function("hang", |_a, r| common::never_answer(r, LIMIT))
        .sync_function("call_controller_sizes", move |_a: &[u8]| {
            let ep = me2.get().unwrap();
            let tag = ep.handler_tag("ctl_xor").unwrap();
            for (i, &len) in SIZES.iter().enumerate() {
                let arg = pseudo_random(i as u64 + 100, len);
                match ep.call_sync(tag, &arg) {
                    Ok(r) if r.as_slice() == xor(&arg).as_slice() => {}
                    Ok(r) => {
                        return WrapperFunctionBuffer::out_of_band_error(format!(
                            "ctl_xor of {len} B returned {} wrong bytes",
                            r.len()
                        ))
                    }
                    Err(e) => {
                        return WrapperFunctionBuffer::out_of_band_error(format!(
                            "ctl_xor of {len} B failed: {e}"
                        ))
                    }
                }
            }
            WrapperFunctionBuffer::from_slice(b"sizes ok")
        })
        .function("disconnect_after_reply", move |_a, r| {
            r.respond(WrapperFunctionBuffer::from_slice(b"bye"));
            if let Some(ep) = me3.get() {
                ep.disconnect();
                assert!(ep.is_disconnected());
            }
        })
        .controller_handler("ctl_xor")
        .controller_handler("ctl_hang")
        .connect(transport)
        .unwrap();
    let _ = me.set(ep.clone());
    let deadline = Instant::now() + LIMIT;
    while !ep.is_disconnected() {
        assert!(Instant::now() < deadline, "the controller never hung up");
        thread::sleep(Duration::from_millis(1));
    }
    let code = match ep.disconnect_reason() {
        Some(DisconnectReason::PeerDied) => EXIT_PEER_DIED,
        Some(DisconnectReason::Local | DisconnectReason::PeerHungUp) => EXIT_CLEAN,
        // A protocol error (a corrupted segment) or a transport failure.
        _ => EXIT_BROKEN,
    };
    drop(ep);
    std::process::exit(code);
}

fn listener_controller_role() {
    let path = std::env::var("ORCWIRE_TEST_SOCKET").unwrap();
    let listener = orcwire_shm::ShmListener::bind(&path, config()).unwrap();
    let transport = listener.accept(Some(LIMIT)).unwrap();
    let _ep = ControllerBuilder::new()
        .sync_handler("ctl_xor", |a: &[u8]| {
            WrapperFunctionBuffer::from_vec(xor(a))
        })
        .handler("ctl_hang", |_a, r| common::never_answer(r, LIMIT))
        .connect(transport)
        .unwrap();
    // Wait to be killed (bounded, in case the test never does).
    thread::sleep(LIMIT);
    std::process::exit(1);
}

#[test]
fn calls_both_ways_with_every_edge_size() {
    let _serial = serial();
    let leaks = NoLeaks::start();
    {
        let spawned = spawn_executor("shm-executor");
        let c = controller(&spawned);
        let echo = c.function_tag("echo").unwrap();
        for (i, &len) in SIZES.iter().enumerate() {
            let arg = pseudo_random(i as u64, len);
            let got = c.call_sync(echo, &arg).unwrap();
            assert_eq!(got.len(), len);
            assert!(got.as_slice() == arg.as_slice(), "echo of {len} B differs");
        }
        let sizes = c.function_tag("call_controller_sizes").unwrap();
        let got = c.call_sync(sizes, b"").unwrap();
        assert_eq!(got.into_result().unwrap(), b"sizes ok");
        c.disconnect();
        assert_eq!(exit_code(&spawned), Some(EXIT_CLEAN));
        // The executor exiting after a clean disconnect is not a death.
        thread::sleep(Duration::from_millis(20));
        assert_eq!(c.call_sync(echo, b"").unwrap_err(), CallError::Disconnected);
        assert_eq!(c.disconnect_reason(), Some(DisconnectReason::Local));
    }
    leaks.check();
}

#[test]
fn eight_threads_of_ten_thousand_calls_each_get_their_own_result() {
    let _serial = serial();
    let leaks = NoLeaks::start();
    {
        let spawned = spawn_executor("shm-executor");
        let c = controller(&spawned);
        let xor_tag = c.function_tag("xor").unwrap();
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let c = c.clone();
                thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let mut arg = (t << 32 | i).to_le_bytes().to_vec();
                        arg.resize(8 + (i % 40) as usize, t as u8);
                        let got = c.call_sync(xor_tag, &arg).unwrap();
                        assert_eq!(got.as_slice(), xor(&arg).as_slice(), "thread {t} call {i}");
                    }
                })
            })
            .collect();
        for h in threads {
            common::join_bounded(h, Duration::from_secs(120));
        }
        c.disconnect();
        assert_eq!(exit_code(&spawned), Some(EXIT_CLEAN));
    }
    leaks.check();
}

#[test]
fn killing_the_executor_mid_call_fails_it_with_peer_died_within_100ms() {
    let _serial = serial();
    let leaks = NoLeaks::start();
    {
        let spawned = spawn_executor("shm-executor");
        let c = controller(&spawned);
        let hang = c.function_tag("hang").unwrap();
        let echo = c.function_tag("echo").unwrap();
        assert_eq!(c.call_sync(echo, b"alive").unwrap().as_slice(), b"alive");
        let pending: Vec<_> = (0..4).map(|_| c.call(hang, b"").unwrap()).collect();
        let waiter = thread::spawn(move || {
            pending
                .into_iter()
                .map(|p| (p.wait(), Instant::now()))
                .collect::<Vec<_>>()
        });
        thread::sleep(Duration::from_millis(20));
        let killed_at = Instant::now();
        spawned.process.kill().unwrap();
        let outcomes = common::join_bounded(waiter, LIMIT);
        for (outcome, at) in outcomes {
            assert_eq!(outcome.unwrap_err(), CallError::PeerDied);
            let took = at.saturating_duration_since(killed_at);
            assert!(took < Duration::from_millis(100), "PeerDied after {took:?}");
        }
        assert_eq!(c.call_sync(echo, b"x").unwrap_err(), CallError::PeerDied);
        let deadline = Instant::now() + LIMIT;
        while !c.is_disconnected() {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(c.disconnect_reason(), Some(DisconnectReason::PeerDied));
        c.disconnect();
        let status = spawned.process.wait_timeout(LIMIT).unwrap().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }
    leaks.check();
}

#[test]
fn killing_the_controller_fails_the_executors_calls_and_it_shuts_down() {
    let _serial = serial();
    let leaks = NoLeaks::start();
    {
        let dir = std::env::temp_dir().join(format!("orcwire-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("controller.sock");
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "shm-listener-controller")
            .env("ORCWIRE_TEST_SOCKET", &path)
            .spawn()
            .unwrap();
        // The child binds the socket; retry until it listens.
        let deadline = Instant::now() + LIMIT;
        let transport = loop {
            match attach_path(&path, config(), LIMIT) {
                Ok(t) => break t,
                Err(e) => {
                    assert!(Instant::now() < deadline, "could not attach: {e}");
                    thread::sleep(Duration::from_millis(5));
                }
            }
        };
        // This process is the executor now.
        let ep = ExecutorBuilder::new()
            .sync_function("echo", WrapperFunctionBuffer::from_slice)
            .controller_handler("ctl_xor")
            .controller_handler("ctl_hang")
            .connect(transport)
            .unwrap();
        let ctl_xor = ep.handler_tag("ctl_xor").unwrap();
        let ctl_hang = ep.handler_tag("ctl_hang").unwrap();
        assert_eq!(ep.call_sync(ctl_xor, b"ab").unwrap().as_slice(), xor(b"ab"));
        let pending = ep.call(ctl_hang, b"").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // A thread keeps calling while the controller dies.
        let caller = {
            let ep = ep.clone();
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut last = None;
                while !stop.load(Ordering::Relaxed) {
                    match ep.call_sync(ctl_xor, b"cd") {
                        Ok(r) => assert_eq!(r.as_slice(), xor(b"cd")),
                        Err(e) => {
                            last = Some(e);
                            break;
                        }
                    }
                }
                last
            })
        };
        thread::sleep(Duration::from_millis(20));
        let killed_at = Instant::now();
        child.kill().unwrap();
        let waited = thread::spawn(move || (pending.wait(), Instant::now()));
        let (outcome, at) = common::join_bounded(waited, LIMIT);
        assert_eq!(outcome.unwrap_err(), CallError::PeerDied);
        let took = at.saturating_duration_since(killed_at);
        assert!(took < Duration::from_millis(100), "PeerDied after {took:?}");
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            common::join_bounded(caller, LIMIT),
            Some(CallError::PeerDied)
        );
        let deadline = Instant::now() + LIMIT;
        while !ep.is_disconnected() {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ep.disconnect_reason(), Some(DisconnectReason::PeerDied));
        assert_eq!(ep.call_sync(ctl_xor, b"").unwrap_err(), CallError::PeerDied);
        common::run_bounded(LIMIT, move || ep.disconnect());
        common::wait_child(&mut child, LIMIT);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    leaks.check();
}

#[test]
fn both_sides_disconnecting_at_once_both_return() {
    let _serial = serial();
    let leaks = NoLeaks::start();
    for round in 0..10 {
        let spawned = spawn_executor("shm-executor");
        let c = controller(&spawned);
        let tag = c.function_tag("disconnect_after_reply").unwrap();
        let reply = c.call_sync(tag, b"");
        // The executor disconnects right after replying; we do the same
        // the moment the reply arrives (or it failed: they already did).
        let c2 = c.clone();
        common::run_bounded(LIMIT, move || c2.disconnect());
        if let Ok(r) = reply {
            assert_eq!(r.as_slice(), b"bye");
        }
        assert!(c.is_disconnected());
        assert_eq!(
            exit_code(&spawned),
            Some(EXIT_CLEAN),
            "round {round}: the executor's disconnect did not return cleanly"
        );
    }
    leaks.check();
}

/// Disconnects `c` after a corruption test (bounded), and checks that the
/// executor then exits in order: not a panic (101), not a signal, not a
/// hang. Returns why the controller's connection ended.
fn end_after_corruption(
    c: Endpoint,
    spawned: &SpawnedExecutor,
    what: &str,
) -> Option<DisconnectReason> {
    common::run_bounded(LIMIT, {
        let c = c.clone();
        move || c.disconnect()
    });
    assert!(c.is_disconnected(), "{what}");
    let reason = c.disconnect_reason();
    drop(c);
    let status = spawned
        .process
        .wait_timeout(LIMIT)
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: the executor hung after the corruption"));
    assert!(
        matches!(status.code(), Some(EXIT_CLEAN | EXIT_BROKEN)),
        "{what}: executor ended with {status}"
    );
    reason
}

#[test]
fn random_bytes_in_the_rings_and_header_are_an_error_not_a_crash() {
    let _serial = serial();
    let leaks = NoLeaks::start();
    for round in 0..8u64 {
        let spawned = spawn_executor("shm-executor");
        let c = controller(&spawned);
        let xor_tag = c.function_tag("xor").unwrap();
        assert!(c.call_sync(xor_tag, b"ok").is_ok());
        let layout = *spawned.transport.layout();
        let mapping = Arc::clone(spawned.transport.mapping());
        // Rounds 0-1: the header; 2-3: ring control blocks; 4-5: ring
        // data; 6-7: the whole segment.
        let (offset, len) = match round / 2 {
            0 => (0, 512),
            1 => (layout.rings[(round % 2) as usize].control_offset, 256),
            2 => {
                let r = &layout.rings[(round % 2) as usize];
                (r.data_offset, r.capacity)
            }
            _ => (0, layout.segment_size),
        };
        // Callers keep the rings busy from before the first scribble until
        // well after the last, so both ends keep reading the damaged words
        // (an index nobody reads before its owner rewrites it is harmless,
        // and then nothing could notice it).
        let stop = Arc::new(AtomicBool::new(false));
        let callers: Vec<_> = (0..2)
            .map(|t| {
                let (c, stop) = (c.clone(), Arc::clone(&stop));
                thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let arg = pseudo_random(t * 1_000_000 + i, 64);
                        i += 1;
                        // Noise that lands on payload bytes in flight
                        // changes a result undetectably (there is no
                        // checksum), so results are not compared here.
                        if c.call_sync(xor_tag, &arg).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        let noise = pseudo_random(round + 7, len);
        let scribble = |chunk: usize| {
            for (i, b) in noise.iter().enumerate().skip(chunk).step_by(4) {
                // SAFETY: `offset + i` lies inside the mapping (the layout
                // was validated against its length); an atomic byte store,
                // like every access to memory both processes write.
                unsafe { std::sync::atomic::AtomicU8::from_ptr(mapping.base().add(offset + i)) }
                    .store(*b, std::sync::atomic::Ordering::Relaxed);
            }
        };
        // Torn first (a quarter of the bytes at a time), then held: an
        // index's owner rewrites it on every publish, which would heal a
        // one-off scribble before the other side looked (harmlessly, but
        // then there is nothing to notice).
        for chunk in 0..4 {
            thread::sleep(Duration::from_millis(2));
            scribble(chunk);
        }
        let until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < until {
            (0..4).for_each(scribble);
            thread::sleep(Duration::from_micros(200));
        }
        stop.store(true, Ordering::Relaxed);
        // The header: the damage must end the connection. Ring data may
        // land in free space and go unnoticed, and so may a control block:
        // the consumer finds frames by their slots, not by the producer's
        // `tail` (which only `orcwire inspect` reads), and the producer
        // reads `head` only when the ring looks full, which 64 B calls
        // never make it; the owner of each index rewrites it on every
        // message. Then we end it.
        for h in callers {
            common::join_bounded(h, LIMIT);
        }
        let header = !(2..6).contains(&round);
        // The header: the epoch in its state word is noise now, so the
        // next call fails, whatever the callers happened to see (the last
        // of them may have found its result waiting and never looked at
        // the state word again).
        let after = header.then(|| c.call_sync_timeout(xor_tag, b"after", LIMIT));
        let reason = end_after_corruption(c, &spawned, &format!("round {round}"));
        if let Some(after) = after {
            assert!(
                matches!(after, Err(CallError::Disconnected | CallError::PeerDied)),
                "round {round}: a call after the header was scribbled over gave {after:?} \
                 (the connection ended with {reason:?})"
            );
        }
    }
    leaks.check();
}

#[test]
fn a_corrupted_head_index_is_caught_the_next_time_it_is_read() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use orcwire_shm::layout::RingControl;
    let _serial = serial();
    let leaks = NoLeaks::start();
    // Not a position; not 16-aligned; a position past the published tail.
    for variant in 0..3u64 {
        let spawned = spawn_executor("shm-executor");
        let c = controller(&spawned);
        let xor_tag = c.function_tag("xor").unwrap();
        assert!(c.call_sync(xor_tag, b"ok").is_ok());
        let layout = *spawned.transport.layout();
        let mapping = Arc::clone(spawned.transport.mapping());
        let control = layout.rings[0].control_offset;
        let word = |at: usize| {
            // SAFETY: the control block of ring 0 lies inside the mapping
            // (validated layout); its words are 8-aligned atomics.
            unsafe { std::sync::atomic::AtomicU64::from_ptr(mapping.base().add(at).cast()) }
        };
        let head = word(control);
        let tail = word(control + std::mem::offset_of!(RingControl, tail));
        let cap = RING as u64;
        // The executor stops reading ring 0 (stopped, as a hostile or hung
        // executor may be), so only the corruption writes its head: each
        // look the controller takes at it is deterministic.
        let executor = Pid::from_raw(spawned.process.id() as i32);
        kill(executor, Signal::SIGSTOP).unwrap();
        // 16 KiB calls: the controller runs out of the room it knows of,
        // and so re-reads the head, within four calls of a 64 KiB ring.
        let arg = pseudo_random(variant, 16 << 10);
        let mut sent = Vec::new();
        let mut failed_after = None;
        for i in 0..8 {
            let bad = match variant {
                0 => u64::MAX - 15,
                1 => 8,
                _ => (tail.load(std::sync::atomic::Ordering::Relaxed) + cap / 2) % (2 * cap),
            };
            head.store(bad, std::sync::atomic::Ordering::Relaxed);
            // A deadline, so that a head taken for valid (the ring then
            // looks full) fails the test instead of hanging it.
            match c.call_deadline(xor_tag, &arg, Instant::now() + Duration::from_secs(5)) {
                Ok(call) => sent.push(call),
                Err(CallError::TimedOut) => panic!("variant {variant}: call {i} waited for room"),
                Err(_) => {
                    failed_after = Some(i);
                    break;
                }
            }
        }
        kill(executor, Signal::SIGCONT).unwrap();
        drop(sent);
        let failed_after = failed_after.expect("a corrupted head went unnoticed for 8 calls");
        assert!(failed_after <= 4, "noticed only after {failed_after} calls");
        // The controller disconnects by itself, with the reason.
        let deadline = Instant::now() + LIMIT;
        while !c.is_disconnected() {
            assert!(Instant::now() < deadline, "no disconnect after the failure");
            thread::sleep(Duration::from_millis(1));
        }
        match end_after_corruption(c, &spawned, &format!("variant {variant}")) {
            Some(DisconnectReason::Protocol(what)) => {
                assert!(what.contains("consumer head"), "variant {variant}: {what}")
            }
            other => panic!("variant {variant}: {other:?}"),
        }
    }
    leaks.check();
}

#[test]
fn a_peer_that_truncates_everything_it_can_does_not_hurt_the_controller() {
    let _serial = serial();
    let leaks = NoLeaks::start();
    {
        let offer = NamedOffer::create(config()).unwrap();
        let name = offer.name().to_owned();
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "shm-named-truncating-executor")
            .env("ORCWIRE_TEST_SEGMENT", &name)
            .spawn()
            .unwrap();
        let transport = offer.wait_attached(LIMIT).unwrap();
        let c = ControllerBuilder::new()
            .sync_handler("ctl_xor", |a: &[u8]| {
                WrapperFunctionBuffer::from_vec(xor(a))
            })
            .handler("ctl_hang", |_a, r| drop(r))
            .connect(transport)
            .unwrap();
        // The executor truncated before it connected; every page of the
        // ring is still there, both ways, at every size.
        let xor_tag = c.function_tag("xor").unwrap();
        for (i, &len) in SIZES.iter().enumerate() {
            let arg = pseudo_random(i as u64 + 7, len);
            let got = c.call_sync(xor_tag, &arg).unwrap();
            assert_eq!(got.as_slice(), xor(&arg).as_slice(), "{len} B");
        }
        let sizes = c.function_tag("call_controller_sizes").unwrap();
        assert_eq!(c.call_sync(sizes, b"").unwrap().as_slice(), b"sizes ok");
        common::run_bounded(LIMIT, move || c.disconnect());
        let status = common::wait_child(&mut child, LIMIT);
        assert_eq!(status.code(), Some(EXIT_CLEAN), "executor: {status}");
    }
    leaks.check();
}

#[test]
fn a_named_segment_is_unlinked_once_attached_and_death_is_seen_by_pidfd() {
    let _serial = serial();
    let leaks = NoLeaks::start();
    {
        let offer = NamedOffer::create(config()).unwrap();
        let name = offer.name().to_owned();
        assert!(common::shm_entries().contains(&name.trim_start_matches('/').to_owned()));
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "shm-named-executor")
            .env("ORCWIRE_TEST_SEGMENT", &name)
            .spawn()
            .unwrap();
        let transport = offer.wait_attached(LIMIT).unwrap();
        assert!(
            !common::shm_entries().contains(&name.trim_start_matches('/').to_owned()),
            "the name must be gone once both sides are attached"
        );
        let c = ControllerBuilder::new()
            .sync_handler("ctl_xor", |a: &[u8]| {
                WrapperFunctionBuffer::from_vec(xor(a))
            })
            .handler("ctl_hang", |_a, r| drop(r))
            .connect(transport)
            .unwrap();
        let echo = c.function_tag("echo").unwrap();
        let hang = c.function_tag("hang").unwrap();
        assert_eq!(c.call_sync(echo, b"named").unwrap().as_slice(), b"named");
        let pending = c.call(hang, b"").unwrap();
        let killed_at = Instant::now();
        child.kill().unwrap();
        let waited = thread::spawn(move || (pending.wait(), Instant::now()));
        let (outcome, at) = common::join_bounded(waited, LIMIT);
        assert_eq!(outcome.unwrap_err(), CallError::PeerDied);
        let took = at.saturating_duration_since(killed_at);
        assert!(took < Duration::from_millis(100), "PeerDied after {took:?}");
        common::run_bounded(LIMIT, move || c.disconnect());
        common::wait_child(&mut child, LIMIT);
    }
    leaks.check();
}
