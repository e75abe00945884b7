//! Remote handles over an in-process shared-memory pair: export, import
//! with identity, the release points, disconnect, a hostile peer's
//! releases, and 10,000 handles from several threads.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{connect_pair, join_bounded, run_bounded, shm_pair};
use orcwire::handles::{HandleError, HandleId, RELEASE_FUNCTION};
use orcwire::sps::{Dialect, SpsReader, SpsWriter};
use orcwire::{
    ControllerBuilder, Endpoint, EndpointConfig, ExecutorBuilder, WrapperFunctionBuffer,
};
use orcwire_shm::ShmConfig;

const LIMIT: Duration = Duration::from_secs(60);

/// What the executor's release actions saw: how often each value (by its
/// serial number) was released.
#[derive(Default)]
struct Releases(Mutex<HashMap<u64, usize>>);

impl Releases {
    fn of(&self, serial: u64) -> usize {
        self.0.lock().unwrap().get(&serial).copied().unwrap_or(0)
    }
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
    fn all_once(&self, n: usize) -> bool {
        let m = self.0.lock().unwrap();
        m.len() == n && m.values().all(|&c| c == 1)
    }
}

fn ids_result(ids: &[HandleId]) -> WrapperFunctionBuffer {
    let mut w = SpsWriter::new();
    w.seq_len(ids.len());
    for id in ids {
        id.write(&mut w);
    }
    WrapperFunctionBuffer::from_vec(w.into_inner())
}

fn read_ids(bytes: &[u8]) -> Vec<HandleId> {
    let mut r = SpsReader::new(bytes);
    let n = r.seq_len("ids", 8, 1 << 20).unwrap();
    (0..n).map(|_| HandleId::read(&mut r).unwrap()).collect()
}

fn respond(responder: orcwire::Responder, r: Result<WrapperFunctionBuffer, HandleError>) {
    responder
        .respond(r.unwrap_or_else(|e| WrapperFunctionBuffer::out_of_band_error(e.to_string())));
}

/// An executor whose functions lend values:
/// * `make(n: u64)`: exports `n` values (serial numbers, counted in
///   `releases` when released) and returns their ids;
/// * `again(id)`: counts one more copy of `id` sent and returns it;
/// * `read(id)`: resolves `id` as a serial number and returns it;
/// * `exports()`: how many values the executor holds.
fn lender(releases: &Arc<Releases>) -> ExecutorBuilder {
    let serial = Arc::new(AtomicUsize::new(0));
    let releases = Arc::clone(releases);
    ExecutorBuilder::new()
        .function("make", move |args, responder| {
            let ep = responder.endpoint().unwrap();
            let n = u64::from_le_bytes(args.as_slice().try_into().unwrap());
            let ids: Result<Vec<_>, _> = (0..n)
                .map(|_| {
                    let s = serial.fetch_add(1, Ordering::SeqCst) as u64;
                    let releases = Arc::clone(&releases);
                    ep.export_with(s, move |s: &u64| {
                        *releases.0.lock().unwrap().entry(*s).or_insert(0) += 1;
                    })
                })
                .collect();
            respond(responder, ids.map(|ids| ids_result(&ids)));
        })
        .function("again", |args, responder| {
            let ep = responder.endpoint().unwrap();
            let r = HandleId::from_sps(args.as_slice()).and_then(|id| ep.export_again(id));
            respond(
                responder,
                r.map(|id| WrapperFunctionBuffer::from_vec(id.to_sps())),
            );
        })
        .function("read", |args, responder| {
            let ep = responder.endpoint().unwrap();
            let r = HandleId::from_sps(args.as_slice()).and_then(|id| ep.resolve::<u64>(id));
            respond(
                responder,
                r.map(|v| WrapperFunctionBuffer::from_vec(v.to_le_bytes().to_vec())),
            );
        })
        .function("exports", |_args, responder| {
            let n = responder.endpoint().unwrap().handle_counts().exports as u64;
            responder.respond(WrapperFunctionBuffer::from_vec(n.to_le_bytes().to_vec()));
        })
}

fn pair(releases: &Arc<Releases>) -> (Endpoint, Endpoint) {
    connect_pair(
        shm_pair(ShmConfig::default()),
        lender(releases),
        ControllerBuilder::new(),
        None,
    )
}

fn call(ep: &Endpoint, name: &str, args: &[u8]) -> WrapperFunctionBuffer {
    let out = ep
        .call_sync_timeout(ep.function_tag(name).unwrap(), args, LIMIT)
        .unwrap();
    assert!(!out.is_error(), "{name}: {:?}", out.error_message());
    out
}

fn make(ep: &Endpoint, n: u64) -> Vec<HandleId> {
    read_ids(call(ep, "make", &n.to_le_bytes()).as_slice())
}

fn u64_of(b: WrapperFunctionBuffer) -> u64 {
    u64::from_le_bytes(b.as_slice().try_into().unwrap())
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {LIMIT:?}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn flush_releases_frees_the_value_and_runs_its_release_once() {
    let releases = Arc::new(Releases::default());
    let (c, e) = pair(&releases);
    let id = make(&c, 1)[0];
    let h = c.import(id).unwrap();
    assert_eq!(u64_of(call(&c, "read", &h.id().unwrap().to_sps())), 0);
    assert_eq!(e.handle_counts().exports, 1);
    assert_eq!(c.handle_counts().imports, 1);
    drop(h);
    c.flush_releases().unwrap();
    assert_eq!(e.handle_counts().exports, 0);
    assert_eq!(c.handle_counts().imports, 0);
    assert_eq!(releases.of(0), 1);
    // Nothing more to send: a second flush is a no-op.
    c.flush_releases().unwrap();
    assert_eq!(releases.total(), 1);
    c.disconnect();
    e.disconnect();
    assert_eq!(
        releases.total(),
        1,
        "disconnect released a released value again"
    );
}

#[test]
fn an_id_received_twice_is_one_handle_until_both_copies_are_released() {
    let releases = Arc::new(Releases::default());
    let (c, e) = pair(&releases);
    let id = make(&c, 1)[0];
    let first = c.import(id).unwrap();
    let again = HandleId::from_sps(call(&c, "again", &id.to_sps()).as_slice()).unwrap();
    let second = c.import(again).unwrap();
    assert_eq!(first, second);
    assert_eq!(c.handle_counts().imports, 1);
    drop(first);
    c.flush_releases().unwrap();
    assert_eq!(e.handle_counts().exports, 1, "released while a clone lives");
    drop(second);
    c.flush_releases().unwrap();
    assert_eq!(e.handle_counts().exports, 0);
    assert_eq!(releases.of(0), 1);
    c.disconnect();
}

#[test]
fn a_release_goes_out_before_the_next_call() {
    // One worker on the executor: it runs the calls it reads one after the
    // other, in arrival order, so the `exports` call sees the release that
    // went out before it.
    let releases = Arc::new(Releases::default());
    let one_worker = EndpointConfig {
        max_workers: 1,
        ..EndpointConfig::default()
    };
    let (c, e) = connect_pair(
        shm_pair(ShmConfig::default()),
        lender(&releases).config(one_worker),
        ControllerBuilder::new(),
        None,
    );
    let h = c.import(make(&c, 1)[0]).unwrap();
    drop(h);
    // No timer: without a release point nothing is sent.
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        e.handle_counts().exports,
        1,
        "released before any release point"
    );
    assert_eq!(u64_of(call(&c, "exports", &[])), 0);
    assert_eq!(releases.of(0), 1);
    c.disconnect();
}

#[test]
fn resolve_names_unknown_ids_and_wrong_types() {
    let releases = Arc::new(Releases::default());
    let (c, e) = pair(&releases);
    let id = make(&c, 1)[0];
    assert!(matches!(
        e.resolve::<String>(id),
        Err(HandleError::WrongType { .. })
    ));
    let unknown = HandleId::from_raw(id.get() + 1000);
    assert_eq!(
        e.resolve::<u64>(unknown),
        Err(HandleError::Unknown(unknown))
    );
    let out = c
        .call_sync_timeout(c.function_tag("read").unwrap(), &unknown.to_sps(), LIMIT)
        .unwrap();
    let msg = out.error_message().unwrap();
    assert!(msg.contains("never exported"), "{msg}");
    assert_eq!(
        c.import(HandleId::from_raw(0)).unwrap_err(),
        HandleError::Unknown(HandleId::from_raw(0))
    );
    c.disconnect();
}

fn batch(pairs: &[(u64, u64)]) -> Vec<u8> {
    let mut w = SpsWriter::new();
    w.seq_len(pairs.len());
    for &(id, n) in pairs {
        w.u64(id).u64(n);
    }
    w.into_inner()
}

#[test]
fn a_hostile_peers_bad_releases_are_refused_and_free_nothing_twice() {
    let releases = Arc::new(Releases::default());
    let (c, e) = pair(&releases);
    let id = make(&c, 1)[0].get();
    let tag = c.function_tag(RELEASE_FUNCTION).unwrap();
    let refused = |args: &[u8]| {
        let out = c.call_sync_timeout(tag, args, LIMIT).unwrap();
        out.error_message().map(str::to_owned)
    };
    for (args, why) in [
        (batch(&[(id + 7, 1)]), "outstanding"),
        (batch(&[(id, 2)]), "outstanding"),
        (batch(&[(id, 0)]), "outstanding"),
        (vec![1, 2, 3], "malformed"),
        (u64::MAX.to_le_bytes().to_vec(), "malformed"),
    ] {
        let msg = refused(&args).expect("a bad release was accepted");
        assert!(msg.contains(why), "{msg}");
        assert_eq!(e.handle_counts().exports, 1);
        assert_eq!(releases.total(), 0);
    }
    // A good pair next to bad ones is applied; the bad ones are refused.
    let msg = refused(&batch(&[(id + 7, 1), (id, 1), (id, 1)])).unwrap();
    assert!(msg.contains(&format!("id {}", id + 7)), "{msg}");
    assert_eq!(e.handle_counts().exports, 0);
    assert_eq!(releases.of(0), 1);
    // Released again: unknown now, and not released twice.
    assert!(refused(&batch(&[(id, 1)])).is_some());
    assert_eq!(releases.total(), 1);
    assert!(!c.is_closing(), "a refused release is not a disconnect");
    c.disconnect();
}

#[test]
fn disconnect_releases_every_export_in_order_and_kills_every_handle() {
    for controller_hangs_up in [true, false] {
        let releases = Arc::new(Releases::default());
        let (c, e) = pair(&releases);
        let order = Arc::new(Mutex::new(Vec::new()));
        let ids: Vec<_> = (0..3u64)
            .map(|n| {
                let order = Arc::clone(&order);
                e.export_with(n, move |n: &u64| order.lock().unwrap().push(*n))
                    .unwrap()
            })
            .collect();
        let handles: Vec<_> = ids.iter().map(|&id| c.import(id).unwrap()).collect();
        if controller_hangs_up {
            c.disconnect();
        } else {
            e.disconnect();
            // The exporter's own disconnect: released when it returns.
            assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        }
        wait_until("both sides disconnected", || {
            c.is_disconnected() && e.is_disconnected()
        });
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(e.handle_counts().exports, 0);
        for h in &handles {
            assert!(!h.is_alive());
            assert_eq!(h.id(), Err(HandleError::Disconnected));
        }
        drop(handles);
        assert_eq!(c.handle_counts().imports, 0);
        assert_eq!(order.lock().unwrap().len(), 3, "a release action ran twice");
        assert_eq!(
            e.export(Arc::new(1u8)).unwrap_err(),
            HandleError::Disconnected
        );
    }
}

#[test]
fn exports_beyond_the_limit_are_refused() {
    let config = EndpointConfig {
        max_handles: 2,
        ..EndpointConfig::default()
    };
    let (c, e) = connect_pair(
        shm_pair(ShmConfig::default()),
        ExecutorBuilder::new().config(config.clone()),
        ControllerBuilder::new().config(config),
        None,
    );
    let _a = e.export(Arc::new(1u8)).unwrap();
    let _b = e.export(Arc::new(2u8)).unwrap();
    let err = e.export(Arc::new(3u8)).unwrap_err();
    assert_eq!(err, HandleError::TooManyExports { limit: 2 });
    assert!(err.to_string().contains("max_handles"));
    // The importer's limit: a third distinct id is refused, and that copy
    // is released again at once.
    let _x = c.import(_a).unwrap();
    let _y = c.import(_b).unwrap();
    let third = HandleId::from_raw(99);
    assert_eq!(
        c.import(third).unwrap_err(),
        HandleError::TooManyImports { limit: 2 }
    );
    c.disconnect();
}

#[test]
fn an_llvm_dialect_connection_has_no_handles_and_says_so() {
    let (c, e) = connect_pair(
        shm_pair(ShmConfig::default()),
        ExecutorBuilder::new().dialect(Dialect::Llvm15),
        ControllerBuilder::new(),
        None,
    );
    for ep in [&c, &e] {
        let err = ep.export(Arc::new(1u8)).unwrap_err();
        assert_eq!(err, HandleError::Unsupported(Dialect::Llvm15));
        assert!(err.to_string().contains("Llvm15"), "{err}");
        assert!(ep.import(HandleId::from_raw(1)).is_err());
    }
    assert!(c.function_tag(RELEASE_FUNCTION).is_none());
    c.disconnect();
}

/// A small deterministic generator (xorshift) for the drop order.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn ten_thousand_handles_from_four_threads_are_all_released_once() {
    const THREADS: u64 = 4;
    const BATCHES: u64 = 25;
    const PER_BATCH: u64 = 100;
    const TOTAL: usize = (THREADS * BATCHES * PER_BATCH) as usize;
    let releases = Arc::new(Releases::default());
    let (c, e) = pair(&releases);
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let c = c.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                let mut held = Vec::new();
                for _ in 0..BATCHES {
                    for id in make(&c, PER_BATCH) {
                        let h = c.import(id).unwrap();
                        // Every tenth: sent again (same handle), and passed
                        // back to the executor, which resolves it.
                        if id.get() % 10 == 0 {
                            let again =
                                HandleId::from_sps(call(&c, "again", &id.to_sps()).as_slice())
                                    .unwrap();
                            assert_eq!(c.import(again).unwrap(), h);
                            call(&c, "read", &h.id().unwrap().to_sps());
                        }
                        held.push(h);
                    }
                    // Drop about half, in random order; they are released
                    // before this thread's (or another's) next call.
                    for _ in 0..held.len() / 2 {
                        let i = rng.below(held.len());
                        drop(held.swap_remove(i));
                    }
                }
                while !held.is_empty() {
                    let i = rng.below(held.len());
                    drop(held.swap_remove(i));
                }
                c.flush_releases().unwrap();
            })
        })
        .collect();
    for w in workers {
        join_bounded(w, LIMIT);
    }
    run_bounded(LIMIT, {
        let c = c.clone();
        move || c.flush_releases().unwrap()
    });
    eprintln!("10,000 handles: {:?}", started.elapsed());
    assert_eq!(c.handle_counts().imports, 0);
    assert_eq!(e.handle_counts().exports, 0);
    assert!(releases.all_once(TOTAL), "{} releases", releases.total());
    c.disconnect();
    assert_eq!(releases.total(), TOTAL);
}

/// The README's "Handles" example is the `orcwire::handles` module's doc
/// test, so that it is compiled and run.
#[test]
fn the_readme_example_is_the_module_doc_test() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let module = std::fs::read_to_string(format!("{root}/src/handles/mod.rs")).unwrap();
    let section = readme
        .split("## Handles\n")
        .nth(1)
        .expect("README has a Handles section");
    let in_readme = section
        .split("```rust\n")
        .nth(1)
        .and_then(|s| s.split("```\n").next())
        .expect("the Handles section has a rust block");
    let example = module.split("//! # Example\n//! ```\n").nth(1).unwrap();
    let in_module: String = example
        .split("//! ```\n")
        .next()
        .unwrap()
        .lines()
        .map(|l| {
            l.strip_prefix("//! ")
                .unwrap_or(l.trim_start_matches("//!"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        in_readme, in_module,
        "README.md's Handles example differs from src/handles/mod.rs's; copy it over"
    );
}

#[test]
fn releases_beyond_one_call_are_split_and_all_applied() {
    let releases = Arc::new(Releases::default());
    let (c, e) = pair(&releases);
    let handles: Vec<_> = make(&c, 10_000)
        .into_iter()
        .map(|id| c.import(id).unwrap())
        .collect();
    assert_eq!(e.handle_counts().exports, 10_000);
    drop(handles);
    c.flush_releases().unwrap();
    assert_eq!(e.handle_counts().exports, 0);
    assert!(releases.all_once(10_000));
    c.disconnect();
}
