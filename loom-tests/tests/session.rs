//! Session shutdown: completion callbacks registered while shutdown
//! completes (seed 000's bug: "subsequent calls to Session::shutdown were
//! enqueuing their callbacks in a queue that would never be drained").
//!
//! The main thread starts shutdown with a callback (the sequence runs on
//! the `orcwire-shutdown` thread it spawns); a second thread and then the
//! main thread again call `shutdown` with more callbacks, at any point of
//! the sequence: before it drains its queue, while it does, after it
//! completed. Proves: every callback runs exactly once (a second run
//! panics at once) and none is lost (checked when the last reference to
//! the counters goes, which is after the session itself is gone, so a
//! callback still queued then was never going to run).
#![cfg(orcwire_loom)]

use orcwire::{InlineTaskDispatcher, Session};
use orcwire_sync::{thread, Arc, AtomicUsize, Ordering};

/// The counters' handle is loom's `Arc`: the check in `Ran::drop` relies
/// on the last drop being ordered after every other handle's use, which
/// loom only knows of through its own reference count (`orcwire_sync::Arc`
/// is std's under both backings).
type Counters = loom::sync::Arc<Ran>;

const CALLBACKS: usize = 3;

/// How often each callback ran; checked when the last handle drops.
#[derive(Default)]
struct Ran([AtomicUsize; CALLBACKS]);

impl Drop for Ran {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        for (which, n) in self.0.iter().enumerate() {
            // SYNC POINT: callback ran (Acquire half). Dropping the last
            // `Counters` orders every other handle's use before this too.
            let n = n.load(Ordering::Acquire);
            assert_eq!(n, 1, "callback {which} ran {n} times, not once");
        }
    }
}

fn callback(ran: &Counters, which: usize) -> impl FnOnce() + Send + 'static {
    let ran = Counters::clone(ran);
    move || {
        // SYNC POINT: callback ran. Pairs with the `Acquire` load in drop.
        let before = ran.0[which].fetch_add(1, Ordering::Release);
        assert_eq!(before, 0, "callback {which} ran twice");
    }
}

fn callbacks_during_shutdown() {
    let session = Session::new(Arc::new(InlineTaskDispatcher::new()));
    let ran = Counters::new(Ran::default());
    session.shutdown(callback(&ran, 0));
    let other = {
        let (session, ran) = (session.clone(), Counters::clone(&ran));
        thread::spawn(move || session.shutdown(callback(&ran, 1)))
    };
    session.shutdown(callback(&ran, 2));
    other.join().unwrap();
    assert!(session.is_shutting_down());
    // `ran` and `session` drop here; the shutdown thread may still hold
    // the last references, and then the check runs there.
}

#[test]
fn session_callbacks_during_shutdown() {
    orcwire_loom_tests::model(callbacks_during_shutdown);
}

/// The bug: the shutdown thread drains the callbacks in one critical
/// section and marks completion in another, so a callback queued in
/// between is never run.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "ran 0 times, not once")]
fn broken_session_is_caught() {
    orcwire_loom_tests::model_with_bug("session", callbacks_during_shutdown);
}
