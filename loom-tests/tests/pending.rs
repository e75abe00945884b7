//! The pending-call table: a result racing a disconnect.
//!
//! Calls 1 and 2 each get a result from a reader thread of their own
//! while a disconnecting thread fails every call; call 3 is registered
//! (and polled) while the disconnect runs. Each call's future
//! is polled before the race, so it holds a counting waker. Proves: once
//! the reader and the disconnecter are done, every call is complete — with
//! its result or with `Disconnected` — and its waker was woken exactly
//! once; the reader delivered the result if and only if the caller got it;
//! a call registered during the disconnect is refused or failed, never
//! left waiting.
#![cfg(orcwire_loom)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};

use orcwire::pending::model::{Call, Table};
use orcwire::pending::CallResult;
use orcwire::sync::{thread, Arc, AtomicUsize, Ordering};
use orcwire::{CallError, WrapperFunctionBuffer};

/// Counts its wake-ups.
#[derive(Default)]
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        // SYNC POINT: woken. Pairs with the `Acquire` load in `woken`.
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// A call's future with its own counting waker.
struct Watched {
    call: Call,
    counter: Arc<Counter>,
    waker: Waker,
}

impl Watched {
    fn new(call: Call) -> Self {
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(Arc::clone(&counter));
        Self {
            call,
            counter,
            waker,
        }
    }

    fn poll(&mut self) -> Poll<CallResult> {
        Pin::new(&mut self.call).poll(&mut Context::from_waker(&self.waker))
    }

    fn woken(&self) -> usize {
        // SYNC POINT: woken (Acquire half).
        self.counter.0.load(Ordering::Acquire)
    }

    /// The outcome once nobody can complete the call any more; `first` is
    /// what the poll before the race returned.
    fn settled(mut self, first_was_pending: bool) -> CallResult {
        match self.poll() {
            Poll::Ready(r) => {
                if first_was_pending {
                    assert_eq!(
                        self.woken(),
                        1,
                        "completed, but woken {} times",
                        self.woken()
                    );
                }
                r
            }
            Poll::Pending => panic!("lost call: left waiting after the disconnect"),
        }
    }
}

fn result_races_disconnect() {
    let table = Arc::new(Table::new());
    let (seq1, call1) = table.register().unwrap();
    let (seq2, call2) = table.register().unwrap();
    let (mut call1, mut call2) = (Watched::new(call1), Watched::new(call2));
    assert!(call1.poll().is_pending() && call2.poll().is_pending());

    let reader = |seq: u64, payload: &'static [u8]| {
        let table = Arc::clone(&table);
        thread::spawn(move || table.complete(seq, Ok(WrapperFunctionBuffer::from(payload))))
    };
    let (reader1, reader2) = (reader(seq1, b"r1"), reader(seq2, b"r2"));
    let disconnecter = {
        let table = Arc::clone(&table);
        thread::spawn(move || table.fail_all(CallError::Disconnected))
    };
    let call3 = table.register().map(|(_, call)| {
        let mut watched = Watched::new(call);
        let first = watched.poll();
        (watched, first)
    });
    let delivered1 = reader1.join().unwrap();
    let delivered2 = reader2.join().unwrap();
    disconnecter.join().unwrap();

    for (call, delivered, payload) in [(call1, delivered1, b"r1"), (call2, delivered2, b"r2")] {
        match (call.settled(true), delivered) {
            (Ok(buf), true) => assert_eq!(buf.as_slice(), payload),
            (Err(CallError::Disconnected), false) => {}
            other => panic!("a call did not complete exactly once: {other:?}"),
        }
    }
    match call3 {
        Err(e) => assert_eq!(e, CallError::Disconnected),
        Ok((_, Poll::Ready(r))) => assert_eq!(r.unwrap_err(), CallError::Disconnected),
        Ok((watched, Poll::Pending)) => {
            assert_eq!(watched.settled(true).unwrap_err(), CallError::Disconnected)
        }
    }
    assert!(table.is_empty());
    assert!(
        matches!(table.register(), Err(CallError::Disconnected)),
        "lost call: registered after the disconnect, so nothing will complete it"
    );
}

#[test]
fn pending_result_races_disconnect() {
    orcwire_loom_tests::model(result_races_disconnect);
}

/// The bug: `register` ignores that the table was closed, so a call
/// registered after the drain waits forever.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "lost call")]
fn broken_pending_is_caught() {
    orcwire_loom_tests::model_with_bug("pending", result_races_disconnect);
}
