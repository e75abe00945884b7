//! The disconnect gate: two callers and two concurrent `disconnect()`s.
//!
//! A disconnect here is what `Endpoint::disconnect` does with the gate:
//! `close`, then `wait_idle`. Proves: no call is accepted after any
//! disconnect has returned; every disconnect returns (a lost wake-up
//! would be a loom deadlock); the in-flight count ends at zero.
#![cfg(orcwire_loom)]

use orcwire::gate::Gate;
use orcwire_sync::{thread, Arc, AtomicUsize, Ordering};

fn disconnect(gate: &Gate, returned: &AtomicUsize) {
    gate.close();
    gate.wait_idle();
    // SYNC POINT: disconnect returned. Pairs with the callers' `Acquire`
    // load inside the gate (the check itself, not the protocol under test).
    returned.fetch_add(1, Ordering::Release);
}

fn two_callers_two_disconnects() {
    let gate = Arc::new(Gate::new());
    let returned = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (gate, returned) = (Arc::clone(&gate), Arc::clone(&returned));
            thread::spawn(move || match gate.enter() {
                Ok(guard) => {
                    // SYNC POINT: disconnect returned (Acquire half).
                    assert_eq!(
                        returned.load(Ordering::Acquire),
                        0,
                        "a call was accepted after a disconnect() returned"
                    );
                    drop(guard);
                    true
                }
                Err(_) => false,
            })
        })
        .collect();
    let other = {
        let (gate, returned) = (Arc::clone(&gate), Arc::clone(&returned));
        thread::spawn(move || disconnect(&gate, &returned))
    };
    disconnect(&gate, &returned);
    other.join().unwrap();
    for caller in callers {
        caller.join().unwrap();
    }
    assert_eq!(returned.load(Ordering::Acquire), 2);
    assert_eq!(gate.in_flight(), 0, "the in-flight count must end at zero");
    assert!(gate.is_closed());
    assert_eq!(gate.epoch(), 1, "exactly one close advances the epoch");
    assert!(gate.enter().is_err());
}

#[test]
fn gate_two_callers_two_disconnects() {
    orcwire_loom_tests::model(two_callers_two_disconnects);
}

/// The bug: `enter` checks `CLOSED` and adds one in two steps, so a whole
/// disconnect fits in between.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "a call was accepted after a disconnect() returned")]
fn broken_gate_is_caught() {
    orcwire_loom_tests::model_with_bug("gate", two_callers_two_disconnects);
}
