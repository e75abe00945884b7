//! The cross-process disconnect handshake over the shared state word.
//!
//! Two `ShmTransport` ends over one (heap-backed, under loom) segment; a
//! thread stands for each process, with a [`Gate`] standing for its
//! endpoint's. A disconnect is what `Endpoint::disconnect` does with the
//! transport: close the gate and wait for idle, send `Hangup`, read until
//! the peer's `Hangup` (or the peer's disconnecting bit, after draining),
//! then `close` (which sets our bit, acknowledging the peer's).
//!
//! Proves, with one side closing right after a call, both sides
//! disconnecting at once, and one side disconnecting while the other
//! calls: what was published before the hang-up bit is received before
//! the hang-up; both disconnects return; each side
//! receives the other's `Hangup` before it sees the hang-up bit (what was
//! published before the bit is never lost); when a disconnect returns, the
//! peer has stopped accepting calls (its gate is closed); a call the peer
//! sent before its `Hangup` is received, not lost.
#![cfg(orcwire_loom)]

use orcwire::gate::Gate;
use orcwire::{Opcode, Received, Transport, TransportError};
use orcwire_shm::{required_size, HeapMapping, SharedMapping, ShmConfig, ShmTransport};
use orcwire_shm::{RingCapacity, WaitStrategy};
use orcwire_sync::{thread, Arc};

struct Process {
    transport: ShmTransport,
    gate: Gate,
}

/// What one side's disconnect read before it returned.
#[derive(Debug, Default)]
struct Seen {
    peer_hangup: bool,
    calls: usize,
}

fn pair() -> (Arc<Process>, Arc<Process>) {
    let config = ShmConfig {
        wait: WaitStrategy::low_cpu(),
        max_message_size: 1 << 10,
        ring_capacity: RingCapacity::new(256).unwrap(),
    };
    let mapping: Arc<dyn SharedMapping> =
        Arc::new(HeapMapping::new(required_size(&config)).unwrap());
    let controller = ShmTransport::create(Arc::clone(&mapping), config).unwrap();
    let executor = ShmTransport::attach(mapping, config).unwrap();
    let wrap = |transport| {
        Arc::new(Process {
            transport,
            gate: Gate::new(),
        })
    };
    (wrap(controller), wrap(executor))
}

/// Reads until the peer's `Hangup` or its hang-up bit.
fn read_until_hangup(p: &Process, seen: &mut Seen) {
    while !seen.peer_hangup {
        match p.transport.recv(None) {
            Ok(Received::Message(m)) if m.opcode == Opcode::Hangup => seen.peer_hangup = true,
            Ok(Received::Message(m)) => {
                assert_eq!(m.opcode, Opcode::CallWrapper);
                seen.calls += 1;
            }
            Ok(other) => panic!("unexpected {other:?} from an untimed recv"),
            Err(TransportError::PeerHungUp) => return,
            Err(e) => panic!("disconnect failed: {e}"),
        }
    }
}

fn disconnect(p: &Process, peer: &Process, mut seen: Seen) -> Seen {
    p.gate.close();
    p.gate.wait_idle();
    // The peer may already be gone; the hang-up bit then says so.
    let _ = p.transport.send(Opcode::Hangup, 0, 0, &[]);
    read_until_hangup(p, &mut seen);
    p.transport.close();
    assert!(
        peer.gate.is_closed(),
        "disconnect returned while the peer still accepted calls"
    );
    seen
}

fn both_disconnect_at_once() {
    let (c, e) = pair();
    let executor = {
        let (c, e) = (Arc::clone(&c), Arc::clone(&e));
        thread::spawn(move || disconnect(&e, &c, Seen::default()))
    };
    let seen_c = disconnect(&c, &e, Seen::default());
    let seen_e = executor.join().unwrap();
    assert!(
        seen_c.peer_hangup,
        "the controller lost the executor's Hangup"
    );
    assert!(
        seen_e.peer_hangup,
        "the executor lost the controller's Hangup"
    );
    assert_eq!((seen_c.calls, seen_e.calls), (0, 0));
}

fn disconnect_while_calling() {
    let (c, e) = pair();
    let executor = {
        let (c, e) = (Arc::clone(&c), Arc::clone(&e));
        thread::spawn(move || {
            // A call into the controller, through the gate as the endpoint
            // makes it.
            let sent = match e.gate.enter() {
                Ok(_inside) => e.transport.send(Opcode::CallWrapper, 1, 7, b"x").is_ok(),
                Err(_) => false,
            };
            // The reader sees the controller's Hangup and disconnects too.
            let mut seen = Seen::default();
            read_until_hangup(&e, &mut seen);
            (sent, disconnect(&e, &c, seen))
        })
    };
    let seen_c = disconnect(&c, &e, Seen::default());
    let (sent, seen_e) = executor.join().unwrap();
    assert!(
        seen_e.peer_hangup,
        "the executor lost the controller's Hangup"
    );
    assert!(
        seen_c.peer_hangup,
        "the controller lost the executor's Hangup"
    );
    assert_eq!(
        seen_c.calls,
        usize::from(sent),
        "a call sent before the peer's Hangup was lost (or one appeared)"
    );
}

/// The controller calls and closes at once; the executor reads until it
/// sees the hang-up. What was published before the bit must arrive first.
fn close_after_sending() {
    let (c, e) = pair();
    let executor = {
        let e = Arc::clone(&e);
        thread::spawn(move || {
            let mut seen = Seen::default();
            read_until_hangup(&e, &mut seen);
            seen
        })
    };
    c.transport.send(Opcode::CallWrapper, 1, 7, b"x").unwrap();
    c.transport.close();
    let seen = executor.join().unwrap();
    assert_eq!(
        seen.calls, 1,
        "a call published before the hang-up bit was lost"
    );
    assert!(!seen.peer_hangup);
}

#[test]
fn handshake_close_after_sending() {
    orcwire_loom_tests::model(close_after_sending);
}

#[test]
fn handshake_both_disconnect_at_once() {
    orcwire_loom_tests::model(both_disconnect_at_once);
}

#[test]
fn handshake_disconnect_while_calling() {
    orcwire_loom_tests::model(disconnect_while_calling);
}

/// The bug: `recv` returns `PeerHungUp` as soon as it sees the peer's
/// disconnecting bit, without the re-check that drains what the peer
/// published before setting it.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "a call published before the hang-up bit was lost")]
fn broken_handshake_is_caught() {
    orcwire_loom_tests::model_with_bug("handshake", close_after_sending);
}
