use super::*;
use crate::sync::AtomicBool;
use std::sync::mpsc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Flips its flag when dropped: tells whether a task was dropped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn zero_threads_is_an_error() {
    assert!(matches!(
        ThreadPoolTaskDispatcher::new(0),
        Err(DispatchError::NoThreads)
    ));
}

#[test]
fn one_thread_runs_tasks_in_order() {
    let pool = ThreadPoolTaskDispatcher::new(1).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    for i in 0..100 {
        let seen = seen.clone();
        pool.dispatch(Box::new(move || seen.lock().push(i)));
    }
    pool.shutdown();
    assert_eq!(*seen.lock(), (0..100).collect::<Vec<_>>());
}

#[test]
fn every_task_runs_exactly_once_on_four_threads() {
    let pool = ThreadPoolTaskDispatcher::new(4).unwrap();
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..1000).map(|_| Default::default()).collect());
    let names = Arc::new(Mutex::new(Vec::new()));
    for i in 0..1000 {
        let runs = runs.clone();
        let names = names.clone();
        pool.dispatch(Box::new(move || {
            runs[i].fetch_add(1, Ordering::SeqCst);
            assert!(is_dispatcher_thread());
            let name = thread::current().name().map(str::to_owned);
            names.lock().push(name);
        }));
    }
    pool.shutdown();
    assert!(runs.iter().all(|r| r.load(Ordering::SeqCst) == 1));
    assert!(names
        .lock()
        .iter()
        .all(|n| n.as_deref().is_some_and(|n| n.starts_with("orcwire-task-"))));
    assert!(!is_dispatcher_thread());
}

#[test]
fn dispatch_after_shutdown_drops_the_task() {
    let pool = ThreadPoolTaskDispatcher::new(2).unwrap();
    pool.shutdown();
    let ran = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let (r, guard) = (ran.clone(), DropFlag(dropped.clone()));
    pool.dispatch(Box::new(move || {
        let _g = guard;
        r.store(true, Ordering::SeqCst);
    }));
    assert!(dropped.load(Ordering::SeqCst));
    assert!(!ran.load(Ordering::SeqCst));

    let inline = InlineTaskDispatcher::new();
    inline.shutdown();
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = DropFlag(dropped.clone());
    let r = ran.clone();
    inline.dispatch(Box::new(move || {
        let _g = guard;
        r.store(true, Ordering::SeqCst);
    }));
    assert!(dropped.load(Ordering::SeqCst));
    assert!(!ran.load(Ordering::SeqCst));
}

#[test]
fn shutdown_waits_for_a_slow_task() {
    let pool = ThreadPoolTaskDispatcher::new(2).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = mpsc::channel();
    let d = done.clone();
    pool.dispatch(Box::new(move || {
        started_tx.send(()).unwrap();
        thread::sleep(Duration::from_millis(50));
        d.store(true, Ordering::SeqCst);
    }));
    started_rx.recv_timeout(TIMEOUT).unwrap();
    pool.shutdown();
    assert!(done.load(Ordering::SeqCst));
}

#[test]
fn inline_shutdown_waits_for_a_task_on_another_thread() {
    let d = Arc::new(InlineTaskDispatcher::new());
    let done = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = mpsc::channel();
    let (d2, done2) = (d.clone(), done.clone());
    let t = thread::spawn(move || {
        d2.dispatch(Box::new(move || {
            started_tx.send(()).unwrap();
            thread::sleep(Duration::from_millis(50));
            done2.store(true, Ordering::SeqCst);
        }));
    });
    started_rx.recv_timeout(TIMEOUT).unwrap();
    d.shutdown();
    assert!(done.load(Ordering::SeqCst));
    t.join().unwrap();
}

/// Runs `f` on a helper thread and fails the test if it does not end
/// within the timeout (the thread is then leaked, not hung on).
fn within_timeout(f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        f();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(TIMEOUT)
        .expect("deadlock: did not finish in time");
    t.join().unwrap();
}

#[test]
fn shutdown_from_inside_a_pool_task_returns() {
    within_timeout(|| {
        let pool = Arc::new(ThreadPoolTaskDispatcher::new(3).unwrap());
        let (tx, rx) = mpsc::channel();
        let p = pool.clone();
        pool.dispatch(Box::new(move || {
            p.shutdown();
            tx.send(()).unwrap();
        }));
        rx.recv_timeout(TIMEOUT).unwrap();
        // From outside: joins everything, including the worker that
        // shut the pool down.
        pool.shutdown();
        assert!(pool.workers.lock().is_empty());
    });
}

#[test]
fn shutdown_from_inside_every_pool_task_at_once_returns() {
    within_timeout(|| {
        let pool = Arc::new(ThreadPoolTaskDispatcher::new(2).unwrap());
        let barrier = Arc::new((Mutex::new(0_usize), Condvar::new()));
        let (tx, rx) = mpsc::channel();
        for _ in 0..2 {
            let (p, b, tx) = (pool.clone(), barrier.clone(), tx.clone());
            pool.dispatch(Box::new(move || {
                // Both tasks running before either shuts down.
                let mut n = b.0.lock();
                *n += 1;
                b.1.notify_all();
                while *n < 2 {
                    n = wait(&b.1, n);
                }
                drop(n);
                p.shutdown();
                tx.send(()).unwrap();
            }));
        }
        for _ in 0..2 {
            rx.recv_timeout(TIMEOUT).unwrap();
        }
        pool.shutdown();
    });
}

#[test]
fn last_handle_dropped_inside_a_task_does_not_hang() {
    within_timeout(|| {
        let pool = Arc::new(ThreadPoolTaskDispatcher::new(2).unwrap());
        let (tx, rx) = mpsc::channel();
        let p = pool.clone();
        pool.dispatch(Box::new(move || {
            drop(p);
            tx.send(()).unwrap();
        }));
        drop(pool);
        rx.recv_timeout(TIMEOUT).unwrap();
    });
}

#[test]
fn shutdown_from_inside_an_inline_task_returns() {
    within_timeout(|| {
        let d = Arc::new(InlineTaskDispatcher::new());
        let d2 = d.clone();
        let returned = Arc::new(AtomicBool::new(false));
        let r = returned.clone();
        d.dispatch(Box::new(move || {
            d2.shutdown();
            r.store(true, Ordering::SeqCst);
        }));
        assert!(returned.load(Ordering::SeqCst));
        d.shutdown();
    });
}

#[test]
fn a_panicking_task_does_not_kill_the_worker() {
    let pool = ThreadPoolTaskDispatcher::new(1).unwrap();
    pool.dispatch(Box::new(|| panic!("task panics on purpose")));
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    pool.dispatch(Box::new(move || r.store(true, Ordering::SeqCst)));
    pool.shutdown();
    assert!(ran.load(Ordering::SeqCst));
    assert_eq!(pool.panicked_tasks(), 1);

    let inline = InlineTaskDispatcher::new();
    inline.dispatch(Box::new(|| panic!("task panics on purpose")));
    assert_eq!(inline.panicked_tasks(), 1);
    assert!(!is_dispatcher_thread());
    inline.shutdown();
}
