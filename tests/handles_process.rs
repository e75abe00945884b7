//! Remote handles across two real processes, with a `kill -9` on either
//! side: the survivor lends 10,000 values to the other process from two
//! threads, which keeps half and releases the rest and lends values back;
//! then it is killed with SIGKILL. Every export must be released exactly
//! once, and every handle the survivor holds must be dead. The survivor is
//! the controller (the child is a spawned executor) or the executor (the
//! child is a controller listening on a socket path).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::CHILD_ENV;
use orcwire::handles::{HandleError, HandleId};
use orcwire::sps::{SpsReader, SpsWriter};
use orcwire::{
    ControllerBuilder, DisconnectReason, Endpoint, ExecutorBuilder, HandlerTag, Responder,
    WrapperFunctionBuffer,
};
use orcwire_shm::{
    attach_inherited, attach_path, ExecutorCommand, ShmConfig, ShmListener, SpawnedExecutor,
};

const LIMIT: Duration = Duration::from_secs(60);
const ROLE: &str = "handles-executor";
const CONTROLLER_ROLE: &str = "handles-controller";

fn ids_bytes(ids: &[HandleId]) -> Vec<u8> {
    let mut w = SpsWriter::new();
    w.seq_len(ids.len());
    for id in ids {
        id.write(&mut w);
    }
    w.into_inner()
}

fn read_ids(bytes: &[u8]) -> Vec<HandleId> {
    let mut r = SpsReader::new(bytes);
    let n = r.seq_len("ids", 8, 1 << 20).unwrap();
    (0..n).map(|_| HandleId::read(&mut r).unwrap()).collect()
}

/// Entry point of the child; a no-op in the parent.
#[test]
fn child_entry() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok(ROLE) => executor_role(),
        Ok(CONTROLLER_ROLE) => controller_role(),
        _ => {}
    }
}

/// `take(ids)`: imports every id, keeps those with an even id, drops the
/// others; `flush()`: sends the releases and waits for them; `lend(n)`:
/// exports `n` values to the controller and returns their ids.
/// `take(ids)`.
fn take(kept: &Mutex<Vec<orcwire::RemoteHandle>>, args: &[u8], responder: Responder) {
    let ep = responder.endpoint().unwrap();
    let mut kept = kept.lock().unwrap();
    for id in read_ids(args) {
        let h = ep.import(id).unwrap();
        if id.get() % 2 == 0 {
            kept.push(h);
        }
    }
    responder.respond(WrapperFunctionBuffer::new());
}

/// `flush()`.
fn flush(responder: Responder) {
    let ep = responder.endpoint().unwrap();
    responder.respond(match ep.flush_releases() {
        Ok(()) => WrapperFunctionBuffer::new(),
        Err(e) => WrapperFunctionBuffer::out_of_band_error(e.to_string()),
    });
}

/// `lend(n)`.
fn lend(args: &[u8], responder: Responder) {
    let ep = responder.endpoint().unwrap();
    let n = u64::from_le_bytes(args.try_into().unwrap());
    let ids: Vec<_> = (0..n).map(|i| ep.export(Arc::new(i)).unwrap()).collect();
    responder.respond(WrapperFunctionBuffer::from_vec(ids_bytes(&ids)));
}

/// Waits to be killed (bounded, in case the test never does).
fn wait_to_be_killed(ep: &Endpoint) {
    let deadline = Instant::now() + LIMIT;
    while !ep.is_disconnected() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

fn executor_role() {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let ep = ExecutorBuilder::new()
        .function("take", move |args, r| take(&kept, args.as_slice(), r))
        .function("flush", |_args, r| flush(r))
        .function("lend", |args, r| lend(args.as_slice(), r))
        .connect(attach_inherited(ShmConfig::default()).unwrap())
        .unwrap();
    wait_to_be_killed(&ep);
}

/// The same three functions as controller handlers, behind a listener.
fn controller_role() {
    let path = std::env::var("ORCWIRE_TEST_SOCKET").unwrap();
    let listener = ShmListener::bind(&path, ShmConfig::default()).unwrap();
    let transport = listener.accept(Some(LIMIT)).unwrap();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let ep = ControllerBuilder::new()
        .handler("take", move |args, r| take(&kept, args.as_slice(), r))
        .handler("flush", |_args, r| flush(r))
        .handler("lend", |args, r| lend(args.as_slice(), r))
        .connect(transport)
        .unwrap();
    wait_to_be_killed(&ep);
}

fn spawn_executor() -> SpawnedExecutor {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, ROLE);
    ExecutorCommand::new(cmd)
        .config(ShmConfig::default())
        .attach_timeout(LIMIT)
        .spawn()
        .unwrap()
}

/// Lends `2 × 5,000` values from two threads to the peer behind `c`
/// (whose `take` keeps the even ids), checks the flushed releases,
/// borrows 100 values back, has the peer killed (`kill`), and checks that
/// every export was released exactly once and every borrowed handle is
/// dead. `tag(name)` names the peer's functions.
fn lend_then_lose_the_peer(c: &Endpoint, tag: impl Fn(&str) -> HandlerTag, kill: impl FnOnce()) {
    const THREADS: u64 = 2;
    const PER_THREAD: u64 = 5_000;
    const CHUNK: u64 = 500;
    // Release counts by serial number, and each serial's id (the peer
    // keeps the even ids).
    let released: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let id_of: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let take = tag("take");
    let lenders: Vec<_> = (0..THREADS)
        .map(|t| {
            let (c, released, id_of) = (c.clone(), Arc::clone(&released), Arc::clone(&id_of));
            thread::spawn(move || {
                for chunk in 0..PER_THREAD / CHUNK {
                    let ids: Vec<_> = (0..CHUNK)
                        .map(|i| {
                            let serial = (t * PER_THREAD) + chunk * CHUNK + i;
                            let released = Arc::clone(&released);
                            let id = c
                                .export_with(serial, move |s: &u64| {
                                    // Never a panic here: this may run while
                                    // a failed test unwinds.
                                    let mut r = released.lock().unwrap_or_else(|p| p.into_inner());
                                    *r.entry(*s).or_insert(0) += 1;
                                })
                                .unwrap();
                            id_of.lock().unwrap().insert(serial, id.get());
                            id
                        })
                        .collect();
                    let out = c.call_sync_timeout(take, &ids_bytes(&ids), LIMIT).unwrap();
                    assert!(!out.is_error(), "{:?}", out.error_message());
                }
            })
        })
        .collect();
    for l in lenders {
        common::join_bounded(l, LIMIT);
    }
    let total = (THREADS * PER_THREAD) as usize;
    let out = c.call_sync_timeout(tag("flush"), &[], LIMIT).unwrap();
    assert!(!out.is_error(), "{:?}", out.error_message());
    // The peer kept the even ids: exactly the odd half came back.
    assert_eq!(c.handle_counts().exports, total / 2);
    {
        let r = released.lock().unwrap();
        assert_eq!(r.len(), total / 2);
        let id_of = id_of.lock().unwrap();
        assert!(r
            .iter()
            .all(|(serial, &n)| n == 1 && id_of[serial] % 2 == 1));
    }
    // Values lent the other way.
    let ids = c
        .call_sync_timeout(tag("lend"), &100u64.to_le_bytes(), LIMIT)
        .unwrap();
    let borrowed: Vec<_> = read_ids(ids.as_slice())
        .into_iter()
        .map(|id| c.import(id).unwrap())
        .collect();
    assert_eq!(c.handle_counts().imports, 100);

    kill();
    let deadline = Instant::now() + LIMIT;
    while !c.is_disconnected() {
        assert!(Instant::now() < deadline, "the peer's death went unnoticed");
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(c.disconnect_reason(), Some(DisconnectReason::PeerDied));
    assert_eq!(c.handle_counts().exports, 0);
    {
        let r = released.lock().unwrap();
        assert_eq!(r.len(), total, "a value was never released");
        assert!(r.values().all(|&n| n == 1), "a value was released twice");
    }
    for h in &borrowed {
        assert_eq!(h.id(), Err(HandleError::Disconnected));
    }
    drop(borrowed);
    assert_eq!(c.handle_counts().imports, 0);
    c.disconnect();
    assert_eq!(released.lock().unwrap().values().sum::<usize>(), total);
}

#[test]
fn killing_the_executor_releases_every_export_once_and_kills_its_handles() {
    let shm_before = common::shm_entries();
    let spawned = spawn_executor();
    let c = ControllerBuilder::new()
        .connect(spawned.transport.clone())
        .unwrap();
    lend_then_lose_the_peer(
        &c,
        |name| c.function_tag(name).unwrap(),
        || spawned.process.kill().unwrap(),
    );
    let status = spawned.process.wait_timeout(LIMIT).unwrap().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    assert_eq!(
        common::shm_entries(),
        shm_before,
        "the test left entries in /dev/shm"
    );
}

#[test]
fn killing_the_controller_releases_every_export_once_and_kills_its_handles() {
    let shm_before = common::shm_entries();
    let dir = std::env::temp_dir().join(format!("orcwire-handles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("controller.sock");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, CONTROLLER_ROLE)
        .env("ORCWIRE_TEST_SOCKET", &path)
        .spawn()
        .unwrap();
    // The child binds the socket; retry until it listens.
    let deadline = Instant::now() + LIMIT;
    let transport = loop {
        match attach_path(&path, ShmConfig::default(), LIMIT) {
            Ok(t) => break t,
            Err(e) => {
                assert!(Instant::now() < deadline, "could not attach: {e}");
                thread::sleep(Duration::from_millis(5));
            }
        }
    };
    // This process is the executor, lending to the controller.
    let e = ExecutorBuilder::new()
        .controller_handler("take")
        .controller_handler("flush")
        .controller_handler("lend")
        .connect(transport)
        .unwrap();
    let pid = child.id();
    lend_then_lose_the_peer(
        &e,
        |name| e.handler_tag(name).unwrap(),
        || {
            // SAFETY: kill with SIGKILL on our own child's pid.
            assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
        },
    );
    let status = common::wait_child(&mut child, LIMIT);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        common::shm_entries(),
        shm_before,
        "the test left entries in /dev/shm"
    );
}
