//! Public behaviour of `Session`: notification order, detach/shutdown
//! races, the completion-callback queue, and waiting on the dispatcher.

use std::sync::mpsc;
use std::time::Duration;

use orcwire::{
    ControllerAccess, InlineTaskDispatcher, Service, Session, SessionError,
    ThreadPoolTaskDispatcher,
};
use orcwire_sync::{self as sync, thread, Arc, AtomicBool, AtomicUsize, Mutex, Ordering};

const TIMEOUT: Duration = Duration::from_secs(10);

type Log = Arc<Mutex<Vec<String>>>;

fn log_entries(log: &Log) -> Vec<String> {
    log.lock().clone()
}

/// Writes `<name>.detach` / `<name>.shutdown` into a shared log.
struct Recorder {
    name: &'static str,
    log: Log,
}

impl Service for Recorder {
    fn on_detach(&self) {
        self.log.lock().push(format!("{}.detach", self.name));
    }
    fn on_shutdown(&self) {
        self.log.lock().push(format!("{}.shutdown", self.name));
    }
}

#[derive(Default)]
struct Counting {
    detached: AtomicUsize,
    shut_down: AtomicUsize,
}

impl Service for Counting {
    fn on_detach(&self) {
        self.detached.fetch_add(1, Ordering::SeqCst);
    }
    fn on_shutdown(&self) {
        assert_eq!(self.detached.load(Ordering::SeqCst), 1, "detach first");
        self.shut_down.fetch_add(1, Ordering::SeqCst);
    }
}

/// A controller access that logs and counts `disconnect` calls.
struct MockAccess {
    log: Option<Log>,
    disconnects: AtomicUsize,
}

impl MockAccess {
    fn new(log: Option<Log>) -> Arc<Self> {
        Arc::new(MockAccess {
            log,
            disconnects: AtomicUsize::new(0),
        })
    }
}

impl ControllerAccess for MockAccess {
    fn disconnect(&self) {
        self.disconnects.fetch_add(1, Ordering::SeqCst);
        if let Some(log) = &self.log {
            log.lock().push("access.disconnect".to_owned());
        }
    }
}

fn inline_session() -> Session {
    Session::new(Arc::new(InlineTaskDispatcher::new()))
}

fn pool_session(threads: usize) -> Session {
    Session::new(Arc::new(ThreadPoolTaskDispatcher::new(threads).unwrap()))
}

#[test]
fn shutdown_notifies_in_reverse_order_detach_first() {
    let log: Log = Arc::default();
    let session = pool_session(2);
    for name in ["a", "b", "c"] {
        session.add_service(Arc::new(Recorder {
            name,
            log: log.clone(),
        }));
    }
    session.attach(MockAccess::new(Some(log.clone()))).unwrap();
    session.wait_for_shutdown().unwrap();
    assert_eq!(
        log_entries(&log),
        [
            "access.disconnect",
            "c.detach",
            "b.detach",
            "a.detach",
            "c.shutdown",
            "b.shutdown",
            "a.shutdown"
        ]
    );
    assert!(session.is_detached() && session.is_shut_down());
}

#[test]
fn detach_then_shutdown_does_not_notify_detach_twice() {
    let log: Log = Arc::default();
    let session = inline_session();
    for name in ["a", "b"] {
        session.add_service(Arc::new(Recorder {
            name,
            log: log.clone(),
        }));
    }
    session.detach();
    session.detach();
    session.wait_for_shutdown().unwrap();
    assert_eq!(
        log_entries(&log),
        ["b.detach", "a.detach", "b.shutdown", "a.shutdown"]
    );
}

#[test]
fn racing_detach_and_shutdown_notify_detach_once() {
    for _ in 0..200 {
        let session = pool_session(1);
        let svc = session.create_service(Counting::default);
        let access = MockAccess::new(None);
        session.attach(access.clone()).unwrap();
        let (s1, s2) = (session.clone(), session.clone());
        let detacher = thread::spawn(move || {
            s1.detach();
            // Every detach caller returns only after detach completed.
            assert!(s1.is_detached());
        });
        let shutter = thread::spawn(move || s2.wait_for_shutdown().unwrap());
        detacher.join().unwrap();
        shutter.join().unwrap();
        assert_eq!(svc.detached.load(Ordering::SeqCst), 1);
        assert_eq!(svc.shut_down.load(Ordering::SeqCst), 1);
        assert!(access.disconnects.load(Ordering::SeqCst) >= 1);
    }
}

#[test]
fn late_callback_runs_at_once_exactly_once_on_the_caller() {
    let session = inline_session();
    session.wait_for_shutdown().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let on = Arc::new(Mutex::new(None));
    let (r, o) = (runs.clone(), on.clone());
    session.shutdown(move || {
        r.fetch_add(1, Ordering::SeqCst);
        *o.lock() = Some(thread::current().id());
    });
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(*on.lock(), Some(thread::current().id()));
    session.wait_for_shutdown().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn concurrent_shutdown_callers_each_get_their_callback_once() {
    const THREADS: usize = 8;
    for _ in 0..200 {
        let session = inline_session();
        let runs: Arc<Vec<AtomicUsize>> =
            Arc::new((0..THREADS).map(|_| Default::default()).collect());
        let (tx, rx) = mpsc::channel();
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (session, runs, tx) = (session.clone(), runs.clone(), tx.clone());
                thread::spawn(move || {
                    session.shutdown(move || {
                        runs[i].fetch_add(1, Ordering::SeqCst);
                        tx.send(i).unwrap();
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for _ in 0..THREADS {
            rx.recv_timeout(TIMEOUT)
                .expect("a shutdown callback was lost");
        }
        session.wait_for_shutdown().unwrap();
        assert!(runs.iter().all(|r| r.load(Ordering::SeqCst) == 1));
    }
}

#[test]
fn callbacks_registered_while_shutdown_completes_are_never_lost() {
    for _ in 0..20 {
        let session = pool_session(1);
        let (tx, rx) = mpsc::channel::<()>();
        let registered = Arc::new(AtomicUsize::new(0));
        let go = Arc::new(AtomicBool::new(false));
        let hammers: Vec<_> = (0..4)
            .map(|_| {
                let (session, tx, registered, go) =
                    (session.clone(), tx.clone(), registered.clone(), go.clone());
                thread::spawn(move || {
                    while !go.load(Ordering::SeqCst) {
                        sync::spin_loop();
                    }
                    // Keep registering until well after completion.
                    let mut after = 0;
                    while after < 20 {
                        if session.is_shut_down() {
                            after += 1;
                        }
                        let tx = tx.clone();
                        registered.fetch_add(1, Ordering::SeqCst);
                        session.shutdown(move || tx.send(()).unwrap());
                    }
                })
            })
            .collect();
        go.store(true, Ordering::SeqCst);
        session.wait_for_shutdown().unwrap();
        for h in hammers {
            h.join().unwrap();
        }
        for _ in 0..registered.load(Ordering::SeqCst) {
            rx.recv_timeout(TIMEOUT)
                .expect("a shutdown callback was lost");
        }
        assert!(rx.try_recv().is_err(), "a callback ran twice");
    }
}

#[test]
fn shutdown_waits_for_dispatcher_tasks() {
    let session = pool_session(2);
    let done = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = mpsc::channel();
    let d = done.clone();
    session.dispatcher().dispatch(Box::new(move || {
        started_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        d.store(true, Ordering::SeqCst);
    }));
    started_rx.recv_timeout(TIMEOUT).unwrap();
    session.wait_for_shutdown().unwrap();
    assert!(done.load(Ordering::SeqCst));
}

#[test]
fn wait_for_shutdown_inside_a_task_is_an_error_not_a_hang() {
    let session = pool_session(2);
    let (tx, rx) = mpsc::channel();
    let s = session.clone();
    session.dispatcher().dispatch(Box::new(move || {
        tx.send(s.wait_for_shutdown()).unwrap();
    }));
    let result = rx.recv_timeout(TIMEOUT).expect("wait_for_shutdown hung");
    assert!(matches!(result, Err(SessionError::WouldDeadlock)));
    assert!(
        !session.is_shutting_down(),
        "the refused call started nothing"
    );
    session.wait_for_shutdown().unwrap();
}

#[test]
fn shutdown_from_inside_a_task_completes() {
    let session = pool_session(2);
    let (tx, rx) = mpsc::channel();
    let s = session.clone();
    session.dispatcher().dispatch(Box::new(move || {
        s.shutdown(move || tx.send(()).unwrap());
    }));
    rx.recv_timeout(TIMEOUT).expect("shutdown never completed");
    assert!(session.is_shut_down());
}

#[test]
fn create_service_returns_a_usable_handle() {
    struct Cache {
        entries: Mutex<Vec<u32>>,
        released: AtomicBool,
    }
    impl Service for Cache {
        fn on_detach(&self) {}
        fn on_shutdown(&self) {
            self.entries.lock().clear();
            self.released.store(true, Ordering::SeqCst);
        }
    }
    let session = inline_session();
    let cache = session.create_service(|| Cache {
        entries: Mutex::new(Vec::new()),
        released: AtomicBool::new(false),
    });
    cache.entries.lock().push(7);
    assert_eq!(*cache.entries.lock(), [7]);
    session.wait_for_shutdown().unwrap();
    assert!(cache.released.load(Ordering::SeqCst));
    assert!(cache.entries.lock().is_empty());
}

#[test]
fn service_added_late_is_told_at_once() {
    let session = inline_session();
    session.detach();
    let after_detach = session.create_service(Counting::default);
    assert_eq!(after_detach.detached.load(Ordering::SeqCst), 1);
    assert_eq!(after_detach.shut_down.load(Ordering::SeqCst), 0);

    session.wait_for_shutdown().unwrap();
    assert_eq!(after_detach.shut_down.load(Ordering::SeqCst), 1);
    let after_shutdown = session.create_service(Counting::default);
    assert_eq!(after_shutdown.detached.load(Ordering::SeqCst), 1);
    assert_eq!(after_shutdown.shut_down.load(Ordering::SeqCst), 1);
}
