//! The SPSC ring's index protocol: one producer, one consumer.
//!
//! A 256-byte ring carries three messages: 20 bytes, then 100 bytes
//! (larger than a quarter of the ring, so it goes as fragments the
//! consumer must free room for), then 40 bytes that have to wrap. The
//! data bytes are loom `UnsafeCell`s. Proves: every message arrives
//! exactly once, whole, in order; no payload byte is read unordered with
//! its write (loom reports such a race).
#![cfg(orcwire_loom)]

use orcwire::Opcode;
use orcwire_shm::ring::{heap_ring, OutgoingMessage, WriteStatus};
use orcwire_sync::thread;

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(31) ^ i as u8)
        .collect()
}

const MESSAGES: [(u64, usize); 3] = [(1, 20), (2, 100), (3, 40)];

fn producer_consumer() {
    let (mut tx, mut rx) = heap_ring(256, 1 << 10).unwrap();
    let producer = thread::spawn(move || {
        for (seq, len) in MESSAGES {
            let bytes = payload(seq, len);
            let mut msg = OutgoingMessage::new(Opcode::CallWrapper, seq, 9, &bytes);
            loop {
                let status = tx.try_write(&mut msg).unwrap();
                tx.publish();
                if status == WriteStatus::Complete {
                    break;
                }
                thread::yield_now();
            }
        }
    });
    let mut got = Vec::new();
    while got.len() < MESSAGES.len() {
        match rx.try_recv().unwrap() {
            Some(m) => got.push(m),
            None => thread::yield_now(),
        }
    }
    producer.join().unwrap();
    assert_eq!(
        rx.try_recv().unwrap().map(|m| m.seq),
        None,
        "a message twice"
    );
    for (m, (seq, len)) in got.iter().zip(MESSAGES) {
        assert_eq!((m.opcode, m.seq, m.tag), (Opcode::CallWrapper, seq, 9));
        assert_eq!(m.payload.as_slice(), payload(seq, len).as_slice());
    }
}

#[test]
fn ring_wrap_and_fragments() {
    orcwire_loom_tests::model(producer_consumer);
}

/// The bug: the producer publishes its tail `Relaxed`, so the consumer may
/// read frame bytes the producer's writes are not ordered before.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "Causality violation")]
fn broken_ring_is_caught() {
    orcwire_loom_tests::model_with_bug("ring", producer_consumer);
}
