//! The pending-call slots: results racing a disconnect, and a dropped
//! handle racing its own result.
//!
//! Call 1 gets a result from a reader thread while a disconnecting thread
//! fails every call (call 2 gets no result); call 3's handle is dropped
//! while a second reader delivers its result. Calls 1 and 2 are polled
//! before the race, so each holds a counting waker. Proves: once the
//! readers and the disconnecter are done, calls 1 and 2 are complete —
//! with the result or with `Disconnected` — and each waker was woken
//! exactly once; the reader reports delivery if and only if the caller got
//! its result; the dropped call's slot is freed exactly once, whoever came
//! last, so the table ends empty.
#![cfg(orcwire_loom)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};

use orcwire::pending::model::Table;
use orcwire::pending::CallResult;
use orcwire::PendingCall;
use orcwire::{CallError, WrapperFunctionBuffer};
use orcwire_sync::{thread, Arc, AtomicUsize, Ordering};

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
    call: PendingCall,
    counter: Arc<Counter>,
    waker: Waker,
}

impl Watched {
    fn new(call: PendingCall) -> Self {
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
                        "completed, but woken {} times ({:?})",
                        self.woken(),
                        r
                    );
                }
                r
            }
            Poll::Pending => panic!("lost call: left waiting after every completer finished"),
        }
    }
}

fn result_races_disconnect() {
    let table = Table::new(4);
    let (call1, call2, call3) = (
        table.register().unwrap(),
        table.register().unwrap(),
        table.register().unwrap(),
    );
    let (seq1, seq3) = (call1.seq(), call3.seq());
    let (mut call1, mut call2) = (Watched::new(call1), Watched::new(call2));
    assert!(call1.poll().is_pending() && call2.poll().is_pending());

    let reader = |seq: u64, payload: &'static [u8]| {
        let table = table.clone();
        thread::spawn(move || table.complete(seq, Ok(WrapperFunctionBuffer::from(payload))))
    };
    let (reader1, reader3) = (reader(seq1, b"r1"), reader(seq3, b"r3"));
    let disconnecter = {
        let table = table.clone();
        thread::spawn(move || table.fail_all(CallError::Disconnected))
    };
    drop(call3);
    let delivered1 = reader1.join().unwrap();
    let delivered3 = reader3.join().unwrap();
    disconnecter.join().unwrap();

    match (call1.settled(true), delivered1) {
        (Ok(buf), Some(true)) => assert_eq!(buf.as_slice(), b"r1"),
        (Err(CallError::Disconnected), Some(false)) => {}
        other => panic!("a call did not complete exactly once: {other:?}"),
    }
    assert_eq!(call2.settled(true), Err(CallError::Disconnected));
    // Whether the result came before or after the drop, the number was
    // ours: never a protocol error.
    assert!(delivered3.is_some(), "seq {seq3} was handed out");
    assert!(
        table.is_empty(),
        "lost slot: the dropped call's slot was never freed"
    );
}

#[test]
fn pending_result_races_disconnect() {
    orcwire_loom_tests::model(result_races_disconnect);
}

/// The bug: a completer claims the slot with a plain store instead of a
/// compare-and-swap, so a result and the disconnect can both write the
/// outcome at once.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "Causality violation")]
fn broken_pending_is_caught() {
    orcwire_loom_tests::model_with_bug("pending", result_races_disconnect);
}

/// A future polled for the first time (it registers its waker and raises
/// `WAKER`) while a reader delivers its result. Proves: a poll that
/// returned `Pending` is woken exactly once, and the call completes with
/// the result either way (the completer sees the owner's waker, or the
/// owner sees the result and does not wait).
fn first_poll_races_result() {
    let table = Table::new(2);
    let call = table.register().unwrap();
    let seq = call.seq();
    let mut call = Watched::new(call);
    let reader = {
        let table = table.clone();
        thread::spawn(move || table.complete(seq, Ok(WrapperFunctionBuffer::from(&b"r"[..]))))
    };
    let first = call.poll();
    let delivered = reader.join().unwrap();
    assert_eq!(delivered, Some(true));
    let r = match first {
        Poll::Ready(r) => r,
        Poll::Pending => call.settled(true),
    };
    assert_eq!(r.unwrap().as_slice(), b"r");
    assert!(table.is_empty(), "the slot was not freed");
}

#[test]
fn pending_first_poll_races_result() {
    orcwire_loom_tests::model(first_poll_races_result);
}

/// The bug: the owner raises `WAKER` with a load and a plain store, so a
/// result that lands between them is erased and the call never completes.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "lost call")]
fn broken_waker_is_caught() {
    orcwire_loom_tests::model_with_bug("waker", first_poll_races_result);
}

/// A caller that reads its own call's result (a `Pipeline` leading: it
/// frees the slot with a load and a plain store and keeps the result)
/// while a disconnecting thread fails every call, leading too (the model's
/// `Table` holds the lead as a lock for both). Proves: the call ends
/// exactly once — with the result the owner read, or with `Disconnected`
/// from the slot when the disconnect led first — and the slot ends free.
fn own_result_races_disconnect() {
    let table = Table::new(2);
    let seq = table.register_own().unwrap();
    let disconnecter = {
        let table = table.clone();
        thread::spawn(move || table.fail_all(CallError::Disconnected))
    };
    let released = table.release_own(seq);
    disconnecter.join().unwrap();
    if !released {
        match table.take_own(seq) {
            Some(Err(CallError::Disconnected)) => {}
            other => {
                panic!("lost call: the owner's result was refused and the slot holds {other:?}")
            }
        }
    }
    assert!(
        table.all_free(),
        "slot left unusable: a claim landed on a slot its owner had freed"
    );
}

#[test]
fn pending_own_result_races_disconnect() {
    orcwire_loom_tests::model(own_result_races_disconnect);
}

/// The bug: the disconnect fails calls without taking the lead, so its
/// claim can fall between the owner's load and store: the store erases
/// it, and the outcome lands in a slot nobody owns, which no call can
/// take again.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "slot left unusable")]
fn broken_own_is_caught() {
    orcwire_loom_tests::model_with_bug("own", own_result_races_disconnect);
}

/// A synchronous caller reads its own result while leading and takes it
/// as it reads it (`PendingTable::take_own`: its claim and a store that
/// frees the slot, no lead needed), while a disconnecting thread fails
/// every call and the peer's forged duplicate of the result is completed
/// by another reader. Proves: the call ends exactly once — with the result
/// the owner read, or else with whatever claimed it first, taken from the
/// slot — and every slot ends free (no claim lands on a slot its owner
/// freed).
fn sync_own_result_races_disconnect() {
    let table = Table::new(2);
    let seq = table.register_own().unwrap();
    let disconnecter = {
        let table = table.clone();
        thread::spawn(move || table.fail_all(CallError::Disconnected))
    };
    let duplicate = {
        let table = table.clone();
        thread::spawn(move || table.complete(seq, Ok(WrapperFunctionBuffer::from_slice(b"dup"))))
    };
    let taken = table.claim_own(seq);
    disconnecter.join().unwrap();
    let delivered = duplicate.join().unwrap();
    if taken {
        assert_eq!(
            delivered,
            Some(false),
            "a result was delivered to a call its owner had already taken"
        );
    } else {
        match table.take_own(seq) {
            Some(Err(CallError::Disconnected)) => {}
            Some(Ok(r)) if r.as_slice() == b"dup" => {}
            other => panic!("lost call: the owner's take was refused and the slot holds {other:?}"),
        }
    }
    assert!(
        table.all_free(),
        "slot left unusable: a claim landed on a slot its owner had freed"
    );
}

#[test]
fn pending_sync_own_result_races_disconnect() {
    orcwire_loom_tests::model(sync_own_result_races_disconnect);
}

/// The bug: the owner frees the slot after checking it, without claiming
/// it, so a completer's claim in between lands on a slot nobody owns.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "slot left unusable")]
fn broken_sync_own_is_caught() {
    orcwire_loom_tests::model_with_bug("sync_own", sync_own_result_races_disconnect);
}

/// A pipeline's leased slot reused for its next call (a plain store of
/// the new number, on the pipeline's thread, which does not lead) while
/// the lead delivers a late result for the slot's previous call (the peer
/// answered it twice). Proves: the late result is discarded, whenever it
/// lands (the slot between calls is not occupied, so nobody claims it; once
/// reused it names another number), the new call gets its own result, and
/// the slot ends free once the lease ends.
fn leased_slot_reused_while_a_late_result_lands() {
    let table = Table::new(2);
    let mut lease = Vec::new();
    let first = table.register_leased(&mut lease).unwrap();
    assert!(
        table.release_leased(first, &mut lease),
        "a leased slot whose owner read its result goes back to the lease"
    );
    let late = {
        let table = table.clone();
        thread::spawn(move || table.complete(first, Ok(WrapperFunctionBuffer::from_slice(b"late"))))
    };
    let second = table.register_leased(&mut lease).unwrap();
    assert_ne!(second, first, "a reused slot takes a new number");
    assert_eq!(
        table.complete(second, Ok(WrapperFunctionBuffer::from_slice(b"own"))),
        Some(true),
        "the new call's own result was refused: a late result took its slot"
    );
    let delivered = late.join().unwrap();
    assert_eq!(
        delivered,
        Some(false),
        "a late result was delivered to a reused slot"
    );
    match table.take_own(second) {
        Some(Ok(r)) if r.as_slice() == b"own" => {}
        other => panic!("wrong result for the reused slot: {other:?}"),
    }
    table.end_leases(&mut lease);
    assert!(table.all_free(), "slot left unusable after the lease ended");
}

#[test]
fn pending_leased_slot_reused_while_a_late_result_lands() {
    orcwire_loom_tests::model(leased_slot_reused_while_a_late_result_lands);
}

/// The bug: a leased slot stays occupied between calls, so the late result
/// claims it and lands on the next call.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "late result")]
fn broken_lease_is_caught() {
    orcwire_loom_tests::model_with_bug("lease", leased_slot_reused_while_a_late_result_lands);
}
