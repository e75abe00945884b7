//! The futex wait protocol: a consumer going to sleep just as the
//! producer publishes.
//!
//! The sleeper announces itself, fences, reads the wake word, re-checks,
//! then `FUTEX_WAIT`s on the value it read; the publisher publishes,
//! fences, and bumps the word and `FUTEX_WAKE`s only if it sees the
//! announcement. `FUTEX_WAIT`/`FUTEX_WAKE` are a loom `Mutex` + `Condvar`
//! per word address (`wait/loom_futex.rs` in `orcwire-shm`, reset for
//! every execution). Proves: no lost wake-up (it would be a loom deadlock), with
//! the low-CPU preset that goes straight to sleep.
#![cfg(orcwire_loom)]

use std::task::Poll;

use orcwire_shm::layout::waiting;
use orcwire_shm::wait::{WaitOutcome, WakeWord};
use orcwire_shm::WaitStrategy;
use orcwire_sync::{thread, Arc, AtomicU32, Ordering};

/// The consumer waits for two publications, sleeping each time it finds
/// nothing new; the producer publishes twice.
fn sleeper_and_publisher() {
    let word = Arc::new(WakeWord::standalone());
    let published = Arc::new(AtomicU32::new(0));
    let producer = {
        let (word, published) = (Arc::clone(&word), Arc::clone(&published));
        thread::spawn(move || {
            for n in 1..=2 {
                // SYNC POINT: test publication. Pairs with the consumer's
                // `Acquire` load in its poll.
                published.store(n, Ordering::Release);
                word.notify(waiting::DATA);
            }
        })
    };
    for want in 1..=2 {
        let r: Result<WaitOutcome<u32>, ()> =
            word.wait_until(&WaitStrategy::low_cpu(), waiting::DATA, None, || {
                // SYNC POINT: test publication (Acquire half).
                let n = published.load(Ordering::Acquire);
                Ok(if n >= want {
                    Poll::Ready(n)
                } else {
                    Poll::Pending
                })
            });
        match r {
            Ok(WaitOutcome::Ready(n)) => assert!(n >= want),
            other => panic!("the wait ended without the publication: {other:?}"),
        }
    }
    producer.join().unwrap();
    assert_eq!(word.waiting_bits(), 0, "the announcement was withdrawn");
}

#[test]
fn futex_no_lost_wakeup() {
    orcwire_loom_tests::model(sleeper_and_publisher);
}

/// The bug: the sleeper reads the wake word *after* its last check, so a
/// publication and bump in between is slept through.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "deadlock")]
fn broken_futex_is_caught() {
    orcwire_loom_tests::model_with_bug("futex", sleeper_and_publisher);
}
