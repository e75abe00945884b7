//! The SPSC frame ring: sizes around every boundary, wrap-around, two
//! threads, batching, and a hostile peer scribbling on the ring.
#![cfg(not(orcwire_loom))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::mem::offset_of;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orcwire::{Message, Opcode};
use orcwire_shm::layout::{RingControl, RingRegion};
use orcwire_shm::ring::{
    heap_ring, ring_pair, FrameHeader, OutgoingMessage, RingConsumer, RingError, RingProducer,
    WriteStatus, FIRST, FRAGMENT_BYTES, FRAME_HEADER_SIZE, LAST, PUBLISHED,
};
use orcwire_shm::{HeapMapping, SharedMapping};
use orcwire_sync::{thread, AtomicBool, AtomicU64, Ordering};

// ---- allocation tracking -------------------------------------------------

/// Records, per thread, the largest single allocation made while that
/// thread set `TRACK`, so a test can prove a hostile length never became a
/// huge allocation.
struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if TRACK.try_with(Cell::get).unwrap_or(false) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

fn reset_largest() {
    LARGEST.with(|l| l.set(0));
}

fn largest() -> u64 {
    LARGEST.with(Cell::get) as u64
}

// SAFETY: forwards to the system allocator unchanged; `note` neither
// allocates nor panics.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// `try_recv` with allocation tracking on.
fn tracked_recv(rx: &mut RingConsumer) -> Result<Option<Message>, RingError> {
    TRACK.with(|t| t.set(true));
    let r = rx.try_recv();
    TRACK.with(|t| t.set(false));
    r
}

// ---- helpers -------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(7).wrapping_add(seed * 13) as u8)
        .collect()
}

/// Sends `payload` through the ring from a single thread, draining the
/// consumer whenever the producer would block; returns the message.
fn round_trip(tx: &mut RingProducer, rx: &mut RingConsumer, seq: u64, payload: &[u8]) -> Message {
    let mut msg = OutgoingMessage::new(Opcode::CallWrapper, seq, seq ^ 0xabc, payload);
    let mut got = None;
    for _ in 0..100_000 {
        let status = tx.try_write(&mut msg).unwrap();
        tx.publish();
        if let Some(m) = rx.try_recv().unwrap() {
            assert!(got.is_none(), "two messages for one send");
            got = Some(m);
        }
        if status == WriteStatus::Complete {
            break;
        }
    }
    assert!(msg.is_complete());
    let m = match got {
        Some(m) => m,
        None => rx.try_recv().unwrap().expect("message lost"),
    };
    assert!(rx.try_recv().unwrap().is_none());
    m
}

// ---- behaviour -----------------------------------------------------------

#[test]
fn every_size_boundary_round_trips_byte_for_byte() {
    const CAP: usize = 4096;
    let (mut tx, mut rx) = heap_ring(CAP, 1 << 20).unwrap();
    let sizes = [
        0,
        1,
        7,
        8,
        9,
        15,
        16,
        17,
        tx.max_frame_payload() - 1,
        tx.max_frame_payload(),
        tx.max_frame_payload() + 1,
        CAP - 1,
        CAP,
        CAP + 1,
        10 * CAP,
    ];
    // Several rounds so messages start at many ring offsets and wrap.
    let mut seq = 0u64;
    for round in 0..5 {
        for &n in &sizes {
            let payload = pattern(n, seq);
            let m = round_trip(&mut tx, &mut rx, seq, &payload);
            assert_eq!(m.opcode, Opcode::CallWrapper);
            assert_eq!((m.seq, m.tag), (seq, seq ^ 0xabc));
            assert_eq!(m.payload.len(), n, "size {n}, round {round}");
            assert!(
                m.payload.as_slice() == &payload[..],
                "bytes differ, size {n}"
            );
            seq += 1;
        }
        // Shift the start offset for the next round by a few frames.
        for _ in 0..=round {
            round_trip(&mut tx, &mut rx, seq, &[1, 2, 3]);
            seq += 1;
        }
    }
}

#[test]
fn two_threads_100k_messages_in_order() {
    const CAP: usize = 4096;
    const COUNT: u64 = 100_000;
    let (mut tx, mut rx) = heap_ring(CAP, 1 << 20).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let producer = thread::spawn(move || {
        let mut rng = XorShift(0x1234_5678);
        for seq in 0..COUNT {
            // Mostly small, some fragmented, a few larger than the ring.
            let n = match rng.below(100) {
                0 => rng.below(3 * CAP as u64) as usize,
                1..=9 => rng.below(CAP as u64) as usize,
                _ => rng.below(200) as usize,
            };
            let payload = pattern(n, seq);
            let mut msg = OutgoingMessage::new(Opcode::Result, seq, n as u64, &payload);
            while tx.try_write(&mut msg).unwrap() != WriteStatus::Complete {
                tx.publish();
                thread::yield_now();
            }
            tx.publish();
        }
    });
    let consumer = thread::spawn(move || {
        let mut next = 0u64;
        let start = Instant::now();
        while next < COUNT {
            match rx.try_recv().unwrap() {
                Some(m) => {
                    assert_eq!(m.seq, next, "out of order");
                    assert_eq!(m.payload.len() as u64, m.tag);
                    assert!(m.payload.as_slice() == &pattern(m.tag as usize, next)[..]);
                    next += 1;
                }
                None => {
                    assert!(
                        start.elapsed() < Duration::from_secs(120),
                        "stalled at {next}"
                    );
                    thread::yield_now();
                }
            }
        }
        done_tx.send(next).unwrap();
    });
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(180)), Ok(COUNT));
    producer.join().unwrap();
    consumer.join().unwrap();
}

#[test]
fn a_large_message_crosses_a_fragment_at_a_time() {
    // The consumer copies out each fragment while the producer writes the
    // next: every `try_write` of a large message stops after one fragment
    // of at most FRAGMENT_BYTES (header included), which the consumer can
    // take at once; the message arrives whole and byte for byte.
    let (mut tx, mut rx) = heap_ring(1 << 20, 4 << 20).unwrap();
    assert_eq!(tx.max_frame_payload(), FRAGMENT_BYTES - FRAME_HEADER_SIZE);
    let payload = pattern(1 << 20, 11);
    let mut msg = OutgoingMessage::new(Opcode::CallWrapper, 9, 3, &payload);
    let mut fragments = 0;
    let got = loop {
        let before = msg.written();
        let status = tx.try_write(&mut msg).unwrap();
        assert!(msg.written() - before <= FRAGMENT_BYTES - FRAME_HEADER_SIZE);
        fragments += 1;
        assert!(tx.publish(), "fragment {fragments} was not published");
        let m = rx.try_recv().unwrap();
        match status {
            WriteStatus::Partial => {
                assert!(m.is_none(), "a message before its last fragment");
                assert!(rx.is_mid_message());
            }
            WriteStatus::Complete => break m.expect("the last fragment completes it"),
            WriteStatus::WouldBlock => panic!("the consumer keeps up: the ring never fills"),
        }
    };
    let frame_payload = FRAGMENT_BYTES - FRAME_HEADER_SIZE;
    assert_eq!(fragments, payload.len().div_ceil(frame_payload));
    assert_eq!((got.seq, got.tag), (9, 3));
    assert_eq!(got.payload.as_slice(), &payload[..]);
    // A message that fits one fragment is one write.
    let small = pattern(frame_payload, 12);
    let mut msg = OutgoingMessage::new(Opcode::CallWrapper, 10, 3, &small);
    assert_eq!(tx.try_write(&mut msg).unwrap(), WriteStatus::Complete);
}

#[test]
fn batch_publishes_once_and_delivers_in_order() {
    let (mut tx, mut rx) = heap_ring(4096, 1 << 20).unwrap();
    let mut pushed = 0u64;
    while tx
        .try_push(Opcode::CallWrapper, pushed, 0, &pattern(100, pushed))
        .unwrap()
        == WriteStatus::Complete
    {
        pushed += 1;
    }
    assert!(pushed >= 20, "only {pushed} fit");
    assert!(!rx.has_frames(), "unpublished frames are visible");
    assert!(rx.try_recv().unwrap().is_none());
    assert!(tx.publish());
    assert!(rx.has_frames());
    for seq in 0..pushed {
        let m = rx.try_recv().unwrap().unwrap();
        assert_eq!(m.seq, seq);
        assert_eq!(m.payload.as_slice(), &pattern(100, seq)[..]);
    }
    assert!(rx.try_recv().unwrap().is_none());
    // The space is back: the same batch fits again, less one frame (this
    // time it wraps, behind a padding frame, and every frame needs the
    // slot after it free).
    for seq in 0..pushed - 1 {
        assert_eq!(
            tx.try_push(Opcode::CallWrapper, seq, 0, &pattern(100, seq))
                .unwrap(),
            WriteStatus::Complete
        );
    }
}

// ---- hostile peer ---------------------------------------------------------

/// A ring over a mapping the test can scribble on.
struct Exposed {
    mapping: Arc<dyn SharedMapping>,
    region: RingRegion,
}

impl Exposed {
    fn new(capacity: usize, max: u64) -> (Self, RingProducer, RingConsumer) {
        let region = RingRegion::standalone(capacity).unwrap();
        let mapping: Arc<dyn SharedMapping> =
            Arc::new(HeapMapping::new(region.required_len()).unwrap());
        let (tx, rx) = ring_pair(Arc::clone(&mapping), region, max).unwrap();
        (Self { mapping, region }, tx, rx)
    }

    fn tail(&self) -> &AtomicU64 {
        let at = self.region.control_offset + offset_of!(RingControl, tail);
        // SAFETY: the control block lies in the live mapping, the tail is an
        // aligned AtomicU64 (CachePadded is repr(C), value first).
        unsafe { &*self.mapping.base().add(at).cast::<AtomicU64>() }
    }

    /// Writes one byte of ring data, as a peer process would.
    fn poke(&self, offset: usize, byte: u8) {
        assert!(offset < self.region.capacity);
        // SAFETY: inside the data region of the live mapping.
        unsafe {
            self.mapping
                .base()
                .add(self.region.data_offset + offset)
                .write_volatile(byte)
        }
    }

    /// Writes a frame header and publishes it, as a peer would: the
    /// published flag set, the first word (the publication) written last.
    fn put_header(&self, offset: usize, h: FrameHeader) {
        let h = FrameHeader {
            flags: h.flags | PUBLISHED,
            ..h
        };
        for (i, w) in h.to_words().iter().enumerate().rev() {
            for (j, b) in w.to_ne_bytes().iter().enumerate() {
                self.poke(offset + i * 8 + j, *b);
            }
        }
    }
}

fn is_clean_error(e: &RingError) -> bool {
    matches!(e, RingError::Corrupt(_) | RingError::OutOfMemory { .. })
}

#[test]
fn crafted_frames_are_clean_errors() {
    const MAX: u64 = 10_000;
    type Attack = Box<dyn Fn(&Exposed)>;
    let cases: Vec<(&str, Attack)> = vec![
        (
            "huge total",
            Box::new(|x| {
                x.put_header(
                    0,
                    FrameHeader {
                        len: 16,
                        flags: FIRST,
                        opcode: 2,
                        total: u64::MAX,
                        ..Default::default()
                    },
                );
            }),
        ),
        (
            "length past the end of the ring",
            Box::new(|x| {
                x.put_header(
                    0,
                    FrameHeader {
                        len: u32::MAX,
                        flags: FIRST | LAST,
                        opcode: 2,
                        total: u64::from(u32::MAX),
                        ..Default::default()
                    },
                );
            }),
        ),
        (
            "unknown opcode",
            Box::new(|x| {
                x.put_header(
                    0,
                    FrameHeader {
                        flags: FIRST | LAST,
                        opcode: 9,
                        ..Default::default()
                    },
                );
            }),
        ),
        (
            "whole frame whose total is not its length",
            Box::new(|x| {
                x.put_header(
                    0,
                    FrameHeader {
                        len: 16,
                        flags: FIRST | LAST,
                        opcode: 2,
                        total: 17,
                        ..Default::default()
                    },
                );
            }),
        ),
        (
            "whole frame with reserved bits set",
            Box::new(|x| {
                x.put_header(
                    0,
                    FrameHeader {
                        len: 16,
                        flags: FIRST | LAST,
                        opcode: 2,
                        reserved: 1,
                        total: 16,
                        ..Default::default()
                    },
                );
            }),
        ),
        (
            "continuation without a first fragment",
            Box::new(|x| {
                x.put_header(
                    0,
                    FrameHeader {
                        len: 16,
                        flags: LAST,
                        opcode: 2,
                        total: 16,
                        ..Default::default()
                    },
                );
            }),
        ),
        (
            "a slot holding neither 0 nor a published frame",
            Box::new(|x| x.poke(0, 0x5a)),
        ),
        (
            "fragment totals disagree",
            Box::new(|x| {
                let first = FrameHeader {
                    len: 16,
                    flags: FIRST,
                    opcode: 2,
                    total: 64,
                    ..Default::default()
                };
                x.put_header(0, first);
                x.put_header(
                    48,
                    FrameHeader {
                        flags: LAST,
                        total: 65,
                        len: 48,
                        ..first
                    },
                );
            }),
        ),
        (
            "fragments overrun the total",
            Box::new(|x| {
                let first = FrameHeader {
                    len: 16,
                    flags: FIRST,
                    opcode: 2,
                    total: 32,
                    ..Default::default()
                };
                x.put_header(0, first);
                x.put_header(
                    48,
                    FrameHeader {
                        flags: 0,
                        len: 32,
                        ..first
                    },
                );
            }),
        ),
        (
            "padding not reaching the end",
            Box::new(|x| {
                x.put_header(
                    0,
                    FrameHeader {
                        len: 16,
                        flags: orcwire_shm::ring::PADDING,
                        ..Default::default()
                    },
                );
            }),
        ),
    ];
    for (what, attack) in cases {
        let (x, _tx, mut rx) = Exposed::new(4096, MAX);
        attack(&x);
        reset_largest();
        let first = tracked_recv(&mut rx);
        match &first {
            Err(e) => assert!(is_clean_error(e), "{what}: {e:?}"),
            Ok(m) => panic!("{what}: accepted {m:?}"),
        }
        // Sticky: the ring stays failed.
        assert_eq!(rx.try_recv(), first, "{what}");
        assert!(largest() <= MAX, "{what}: allocated {} bytes", largest());
    }
}

#[test]
fn a_whole_frame_over_the_limit_is_refused() {
    // Small enough for the consumer's whole-frame path, over this ring's
    // message limit: refused, as a larger one is.
    let (x, _tx, mut rx) = Exposed::new(4096, 8);
    x.put_header(
        0,
        FrameHeader {
            len: 16,
            flags: FIRST | LAST,
            opcode: 2,
            total: 16,
            ..Default::default()
        },
    );
    match rx.try_recv() {
        Err(RingError::Corrupt(what)) => assert!(what.contains("limit"), "{what}"),
        other => panic!("a 16-byte message over an 8-byte limit gave {other:?}"),
    }
}

#[test]
fn allocation_tracking_sees_message_buffers() {
    let (mut tx, mut rx) = heap_ring(4096, 1 << 20).unwrap();
    tx.try_send(Opcode::Result, 0, 0, &[5; 900]).unwrap();
    reset_largest();
    assert!(tracked_recv(&mut rx).unwrap().is_some());
    assert!(largest() >= 900, "tracker saw only {}", largest());
}

#[test]
fn reassembly_memory_follows_received_bytes() {
    // A peer announcing the largest allowed message but sending only one
    // small fragment must not make us allocate the announced total.
    const MAX: u64 = 1 << 20;
    let (x, _tx, mut rx) = Exposed::new(4096, MAX);
    x.put_header(
        0,
        FrameHeader {
            len: 16,
            flags: FIRST,
            opcode: 3,
            total: MAX,
            ..Default::default()
        },
    );
    reset_largest();
    assert_eq!(tracked_recv(&mut rx), Ok(None));
    assert!(rx.is_mid_message());
    assert!(
        largest() < 1024,
        "allocated {} bytes for 16 received",
        largest()
    );
}

#[test]
fn random_scribbles_single_threaded() {
    const CAP: usize = 4096;
    const MAX: u64 = 10_000;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut outcomes = [0usize; 3]; // messages, empty, errors
    for _ in 0..400 {
        let (x, mut tx, mut rx) = Exposed::new(CAP, MAX);
        reset_largest();
        for step in 0..60u64 {
            // A legitimate producer writes something...
            let n = rng.below(CAP as u64) as usize;
            if let Ok(WriteStatus::Complete) =
                tx.try_push(Opcode::Result, step, 0, &pattern(n, step))
            {
                tx.publish();
            }
            // ...and a hostile one scribbles.
            match rng.below(10) {
                0 => x
                    .tail()
                    .store(rng.below(3 * CAP as u64) & !15, Ordering::Release),
                1 => x.tail().store(rng.next(), Ordering::Release),
                2..=5 => {
                    for _ in 0..=rng.below(8) {
                        x.poke(rng.below(CAP as u64) as usize, rng.next() as u8);
                    }
                }
                6 => {
                    let at = (rng.below(CAP as u64) as usize) & !15;
                    let at = at.min(CAP - FRAME_HEADER_SIZE);
                    let h =
                        FrameHeader::from_words([rng.next(), rng.next(), rng.next(), rng.next()]);
                    // Plausible flags and opcode, random lengths.
                    let h = FrameHeader {
                        flags: h.flags & 3,
                        opcode: h.opcode & 3,
                        reserved: 0,
                        len: h.len % (2 * CAP as u32),
                        total: h.total % (2 * MAX),
                        ..h
                    };
                    x.put_header(at, h);
                }
                _ => {}
            }
            let mut calls = 0;
            loop {
                calls += 1;
                assert!(calls < 1000, "try_recv never settles");
                match tracked_recv(&mut rx) {
                    Ok(Some(_)) => outcomes[0] += 1,
                    Ok(None) => {
                        outcomes[1] += 1;
                        break;
                    }
                    Err(e) => {
                        assert!(is_clean_error(&e), "{e:?}");
                        outcomes[2] += 1;
                        break;
                    }
                }
            }
        }
        assert!(largest() <= MAX, "allocated {} > {MAX}", largest());
    }
    // The fuzz must exercise both paths.
    assert!(outcomes[0] > 100 && outcomes[2] > 100, "{outcomes:?}");
}

#[test]
fn random_scribbles_while_threads_run() {
    const CAP: usize = 4096;
    const MAX: u64 = 10_000;
    for seed in 1..=4u64 {
        let (x, mut tx, mut rx) = Exposed::new(CAP, MAX);
        let x = Arc::new(x);
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = mpsc::channel();
        let producer = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut rng = XorShift(seed * 77);
                let mut seq = 0;
                'messages: while !stop.load(Ordering::Relaxed) {
                    let payload = pattern(rng.below(2 * CAP as u64) as usize, seq);
                    let mut msg = OutgoingMessage::new(Opcode::Result, seq, 0, &payload);
                    loop {
                        match tx.try_write(&mut msg) {
                            Ok(WriteStatus::Complete) => break,
                            Ok(WriteStatus::WouldBlock | WriteStatus::Partial) => {}
                            // The consumer's head is never scribbled on, so
                            // the producer must not fail.
                            Err(e) => panic!("{e:?}"),
                        }
                        tx.publish();
                        if stop.load(Ordering::Relaxed) {
                            break 'messages;
                        }
                        thread::yield_now();
                    }
                    tx.publish();
                    seq += 1;
                }
            })
        };
        let scribbler = {
            let (x, stop) = (Arc::clone(&x), Arc::clone(&stop));
            thread::spawn(move || {
                let mut rng = XorShift(seed * 991);
                while !stop.load(Ordering::Relaxed) {
                    if rng.below(20) == 0 {
                        x.tail().store(rng.next() & 0x3ff0, Ordering::Release);
                    } else {
                        x.poke(rng.below(CAP as u64) as usize, rng.next() as u8);
                    }
                    thread::yield_now();
                }
            })
        };
        let consumer = thread::spawn(move || {
            let start = Instant::now();
            let mut result = None;
            TRACK.with(|t| t.set(true));
            while start.elapsed() < Duration::from_millis(300) {
                match rx.try_recv() {
                    Ok(_) => {}
                    Err(e) => {
                        result = Some(e);
                        break;
                    }
                }
            }
            TRACK.with(|t| t.set(false));
            done_tx.send((result, largest())).unwrap();
        });
        let (outcome, allocated) = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the consumer hung");
        stop.store(true, Ordering::Relaxed);
        producer.join().unwrap();
        scribbler.join().unwrap();
        consumer.join().unwrap();
        if let Some(e) = outcome {
            assert!(is_clean_error(&e), "{e:?}");
        }
        assert!(allocated <= MAX, "allocated {allocated} > {MAX}");
    }
}
