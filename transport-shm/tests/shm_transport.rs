//! `ShmTransport` pairs inside one process, over one `HeapMapping`: both
//! directions, many senders, blocking and waking, close, interrupt, peer
//! death, corruption.
#![cfg(not(orcwire_loom))]

use std::mem::offset_of;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orcwire::{Message, Opcode, Received, Transport, TransportError};
use orcwire_shm::{
    required_size, HeapMapping, RingCapacity, SharedMapping, ShmConfig, ShmTransport, WaitStrategy,
};
use orcwire_sync::{thread, AtomicU64, Ordering};

const TIMEOUT: Duration = Duration::from_secs(20);
const PROMPT: Duration = Duration::from_millis(100);

fn config(ring: usize, wait: WaitStrategy) -> ShmConfig {
    ShmConfig {
        wait,
        max_message_size: 1 << 20,
        ring_capacity: RingCapacity::new(ring).unwrap(),
    }
}

struct Pair {
    controller: Arc<ShmTransport>,
    executor: Arc<ShmTransport>,
    mapping: Arc<dyn SharedMapping>,
}

fn pair(config: ShmConfig) -> Pair {
    let mapping: Arc<dyn SharedMapping> =
        Arc::new(HeapMapping::new(required_size(&config)).unwrap());
    let controller = Arc::new(ShmTransport::create(Arc::clone(&mapping), config).unwrap());
    let executor = Arc::new(ShmTransport::attach(Arc::clone(&mapping), config).unwrap());
    Pair {
        controller,
        executor,
        mapping,
    }
}

fn message(r: Result<Received, TransportError>) -> Message {
    match r {
        Ok(Received::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn pattern(len: usize, a: u64, b: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(31) ^ a.wrapping_mul(7) ^ b.wrapping_mul(13))
        .map(|x| x as u8)
        .collect()
}

/// What a thread returned, and when.
type Timed<T> = mpsc::Receiver<(T, Instant)>;

/// Runs `f` on a thread; returns what it returned and when it returned.
fn spawn_timed<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> (Timed<T>, thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let r = f();
        let _ = tx.send((r, Instant::now()));
    });
    (rx, h)
}

/// Asserts that the call on the thread is still blocked after `settle`.
fn assert_blocked<T: std::fmt::Debug>(rx: &Timed<T>, settle: Duration) {
    if let Ok((r, _)) = rx.recv_timeout(settle) {
        panic!("the call should block but returned {r:?}");
    }
}

/// Waits for the blocked call to return after `event` happened at `at`;
/// asserts it did so within `PROMPT`.
fn returned_promptly<T>(rx: &Timed<T>, at: Instant) -> T {
    let (r, when) = rx
        .recv_timeout(TIMEOUT)
        .expect("the blocked call never returned");
    let took = when.saturating_duration_since(at);
    assert!(took < PROMPT, "returned {took:?} after the event");
    r
}

/// Fills the controller's outbound ring from a thread until a send blocks.
fn blocked_sender(
    controller: &Arc<ShmTransport>,
) -> (Timed<Result<(), TransportError>>, thread::JoinHandle<()>) {
    let c = Arc::clone(controller);
    let (rx, h) = spawn_timed(move || {
        for seq in 0.. {
            c.send(Opcode::CallWrapper, seq, 0, &[0; 500])?;
        }
        Ok(())
    });
    assert_blocked(&rx, Duration::from_millis(100));
    (rx, h)
}

#[test]
fn both_directions_with_fragmented_messages() {
    let p = pair(config(4096, WaitStrategy::balanced()));
    let sizes = [
        0usize,
        1,
        7,
        8,
        9,
        100,
        991,
        992,
        993,
        4095,
        4096,
        50_000,
        1 << 20,
    ];
    // The executor echoes everything back until a Hangup.
    let echo = {
        let e = Arc::clone(&p.executor);
        thread::spawn(move || loop {
            let m = message(e.recv(None));
            e.send(m.opcode, m.seq, m.tag, m.payload.as_slice())
                .unwrap();
            if m.opcode == Opcode::Hangup {
                return;
            }
        })
    };
    let sender = {
        let c = Arc::clone(&p.controller);
        thread::spawn(move || {
            for (i, &n) in sizes.iter().enumerate() {
                c.send(
                    Opcode::CallWrapper,
                    i as u64,
                    n as u64,
                    &pattern(n, i as u64, 1),
                )
                .unwrap();
            }
            c.send(Opcode::Hangup, 0, 0, b"").unwrap();
        })
    };
    let deadline = Instant::now() + TIMEOUT;
    for (i, &n) in sizes.iter().enumerate() {
        let m = message(p.controller.recv(Some(deadline)));
        assert_eq!(
            (m.opcode, m.seq, m.tag),
            (Opcode::CallWrapper, i as u64, n as u64)
        );
        assert!(
            m.payload.as_slice() == &pattern(n, i as u64, 1)[..],
            "size {n}"
        );
    }
    assert_eq!(
        message(p.controller.recv(Some(deadline))).opcode,
        Opcode::Hangup
    );
    sender.join().unwrap();
    echo.join().unwrap();
}

#[test]
fn eight_concurrent_senders_all_arrive_whole() {
    const THREADS: u64 = 8;
    const EACH: u64 = 2000;
    let p = pair(config(4096, WaitStrategy::balanced()));
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let c = Arc::clone(&p.controller);
            thread::spawn(move || {
                for i in 0..EACH {
                    // Some messages need several fragments (frame payloads
                    // are at most 992 bytes here): they must not interleave.
                    let n = if i % 50 == 0 {
                        3000
                    } else {
                        (i * 37 % 300) as usize
                    };
                    c.send(Opcode::CallWrapper, i, t, &pattern(n, t, i))
                        .unwrap();
                }
            })
        })
        .collect();
    let mut next = [0u64; THREADS as usize];
    let deadline = Instant::now() + TIMEOUT;
    for _ in 0..THREADS * EACH {
        let m = message(p.executor.recv(Some(deadline)));
        let t = m.tag as usize;
        assert!(t < THREADS as usize, "bad tag {t}");
        assert_eq!(m.seq, next[t], "thread {t} out of order");
        let n = if m.seq % 50 == 0 {
            3000
        } else {
            (m.seq * 37 % 300) as usize
        };
        assert!(
            m.payload.as_slice() == &pattern(n, m.tag, m.seq)[..],
            "torn message"
        );
        next[t] += 1;
    }
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(next, [EACH; THREADS as usize]);
    assert!(matches!(
        p.executor
            .recv(Some(Instant::now() + Duration::from_millis(10))),
        Ok(Received::TimedOut)
    ));
}

#[test]
fn blocked_recv_wakes_on_publish() {
    for wait in [WaitStrategy::low_cpu(), WaitStrategy::balanced()] {
        let p = pair(config(4096, wait));
        let e = Arc::clone(&p.executor);
        let (rx, h) = spawn_timed(move || e.recv(None));
        assert_blocked(&rx, Duration::from_millis(50));
        let at = Instant::now();
        p.controller.send(Opcode::Result, 9, 0, b"wake").unwrap();
        let m = message(returned_promptly(&rx, at));
        assert_eq!((m.seq, m.payload.as_slice()), (9, &b"wake"[..]));
        h.join().unwrap();
    }
}

#[test]
fn blocked_send_wakes_when_space_is_freed() {
    let p = pair(config(4096, WaitStrategy::low_cpu()));
    let (rx, h) = blocked_sender(&p.controller);
    // Draining makes room: the sender goes on (and blocks again later).
    let deadline = Instant::now() + TIMEOUT;
    for seq in 0..50 {
        assert_eq!(message(p.executor.recv(Some(deadline))).seq, seq);
    }
    p.controller.close();
    let r = rx.recv_timeout(TIMEOUT).expect("sender never returned").0;
    assert_eq!(r, Err(TransportError::Closed));
    h.join().unwrap();
}

#[test]
fn recv_deadline_is_honoured() {
    let p = pair(config(4096, WaitStrategy::balanced()));
    let start = Instant::now();
    let r = p.executor.recv(Some(start + Duration::from_millis(50)));
    let took = start.elapsed();
    assert!(matches!(r, Ok(Received::TimedOut)), "{r:?}");
    assert!(took >= Duration::from_millis(50), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A past deadline returns at once.
    let r = p.executor.recv(Some(Instant::now()));
    assert!(matches!(r, Ok(Received::TimedOut)));
}

#[test]
fn interrupt_wakes_a_blocked_recv_and_is_sticky() {
    let p = pair(config(4096, WaitStrategy::low_cpu()));
    let e = Arc::clone(&p.executor);
    let (rx, h) = spawn_timed(move || e.recv(None));
    assert_blocked(&rx, Duration::from_millis(50));
    let at = Instant::now();
    p.executor.interrupt_recv();
    assert!(matches!(
        returned_promptly(&rx, at),
        Ok(Received::Interrupted)
    ));
    h.join().unwrap();
    // Before a recv: the next one returns Interrupted, then it is consumed.
    p.executor.interrupt_recv();
    p.executor.interrupt_recv();
    assert!(matches!(p.executor.recv(None), Ok(Received::Interrupted)));
    let r = p
        .executor
        .recv(Some(Instant::now() + Duration::from_millis(20)));
    assert!(matches!(r, Ok(Received::TimedOut)), "{r:?}");
}

#[test]
fn close_unblocks_our_recv_and_the_peers() {
    let p = pair(config(4096, WaitStrategy::low_cpu()));
    let (e, c) = (Arc::clone(&p.executor), Arc::clone(&p.controller));
    let (erx, eh) = spawn_timed(move || e.recv(None));
    let (crx, ch) = spawn_timed(move || c.recv(None));
    assert_blocked(&erx, Duration::from_millis(50));
    assert_blocked(&crx, Duration::from_millis(1));
    let at = Instant::now();
    p.executor.close();
    assert_eq!(
        returned_promptly(&erx, at).unwrap_err(),
        TransportError::Closed
    );
    assert_eq!(
        returned_promptly(&crx, at).unwrap_err(),
        TransportError::PeerHungUp
    );
    eh.join().unwrap();
    ch.join().unwrap();
    // Idempotent, and every later call fails too.
    p.executor.close();
    assert_eq!(p.executor.recv(None).unwrap_err(), TransportError::Closed);
    assert_eq!(
        p.executor.send(Opcode::Result, 0, 0, b"").unwrap_err(),
        TransportError::Closed
    );
}

#[test]
fn close_unblocks_a_sender_on_a_full_ring() {
    let p = pair(config(4096, WaitStrategy::balanced()));
    let (rx, h) = blocked_sender(&p.controller);
    let at = Instant::now();
    p.controller.close();
    assert_eq!(returned_promptly(&rx, at), Err(TransportError::Closed));
    h.join().unwrap();

    // The peer closing unblocks it too.
    let p = pair(config(4096, WaitStrategy::low_cpu()));
    let (rx, h) = blocked_sender(&p.controller);
    let at = Instant::now();
    p.executor.close();
    assert_eq!(returned_promptly(&rx, at), Err(TransportError::PeerHungUp));
    h.join().unwrap();
}

#[test]
fn mark_peer_dead_fails_blocked_and_later_calls() {
    let p = pair(config(4096, WaitStrategy::low_cpu()));
    let c = Arc::clone(&p.controller);
    let (rrx, rh) = spawn_timed(move || c.recv(None));
    let (srx, sh) = blocked_sender(&p.controller);
    assert_blocked(&rrx, Duration::from_millis(1));
    assert!(!p.controller.peer_died());
    let at = Instant::now();
    p.controller.mark_peer_dead();
    assert_eq!(
        returned_promptly(&rrx, at).unwrap_err(),
        TransportError::PeerDied
    );
    assert_eq!(returned_promptly(&srx, at), Err(TransportError::PeerDied));
    rh.join().unwrap();
    sh.join().unwrap();
    assert!(p.controller.peer_died());
    assert!(p.controller.recv(None).unwrap_err().is_peer_gone());
    assert_eq!(
        p.controller.send(Opcode::Result, 0, 0, b"").unwrap_err(),
        TransportError::PeerDied
    );
}

#[test]
fn a_blocked_endpoint_burns_no_cpu() {
    fn thread_cpu() -> Duration {
        // SAFETY: getrusage fills the zeroed struct we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a rusage; RUSAGE_THREAD is Linux's.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        assert_eq!(rc, 0);
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(usage.ru_utime) + tv(usage.ru_stime)
    }
    for wait in [WaitStrategy::lowest_latency(), WaitStrategy::balanced()] {
        let p = pair(config(4096, wait));
        let e = Arc::clone(&p.executor);
        let (rx, h) = spawn_timed(move || {
            let before = thread_cpu();
            let r = e.recv(Some(Instant::now() + Duration::from_millis(200)));
            (r, thread_cpu() - before)
        });
        let ((r, cpu), _) = rx.recv_timeout(TIMEOUT).unwrap();
        h.join().unwrap();
        assert!(matches!(r, Ok(Received::TimedOut)), "{r:?}");
        assert!(
            cpu < Duration::from_millis(20),
            "{wait:?} used {cpu:?} of CPU in 200 ms idle"
        );
    }
}

#[test]
fn corruption_is_a_protocol_error_that_closes_the_transport() {
    let p = pair(config(4096, WaitStrategy::balanced()));
    p.controller.send(Opcode::Result, 1, 0, b"fine").unwrap();
    assert_eq!(message(p.executor.recv(None)).seq, 1);
    // The "controller" writes garbage into the next slot of ring 0 (where
    // the frame after "fine", 48 bytes, would start): neither 0 nor a
    // published frame.
    let ring = p.executor.layout().rings[0];
    let at = ring.data_offset + 48;
    // SAFETY: an aligned word of the ring's data inside the live mapping,
    // which the ring reads only atomically.
    let slot = unsafe { &*p.mapping.base().add(at).cast::<AtomicU64>() };
    slot.store(0x5a, Ordering::Release);
    let err = p.executor.recv(None).unwrap_err();
    assert!(
        matches!(&err, TransportError::Protocol(t) if t.contains("slot")),
        "{err:?}"
    );
    // Sticky for every call.
    assert_eq!(p.executor.recv(None).unwrap_err(), err);
    assert_eq!(p.executor.send(Opcode::Result, 0, 0, b"").unwrap_err(), err);
    // And the peer sees us gone.
    assert_eq!(
        p.controller
            .recv(Some(Instant::now() + TIMEOUT))
            .unwrap_err(),
        TransportError::PeerHungUp
    );
}

#[test]
fn dropping_an_end_hangs_up() {
    let p = pair(config(4096, WaitStrategy::balanced()));
    let Pair {
        controller,
        executor,
        mapping: _mapping,
    } = p;
    executor.send(Opcode::Hangup, 0, 0, b"").unwrap();
    drop(executor);
    assert_eq!(message(controller.recv(None)).opcode, Opcode::Hangup);
    assert_eq!(
        controller.recv(Some(Instant::now() + TIMEOUT)).unwrap_err(),
        TransportError::PeerHungUp
    );
}

#[test]
fn sizes_are_read_once_at_attach_but_a_new_epoch_is_noticed() {
    let p = pair(config(4096, WaitStrategy::balanced()));
    // Scribble over every plain header field after both ends joined: they
    // were copied at attach, so traffic is unaffected. (Messages of one
    // frame that always fits: this thread sends, then receives.)
    for offset in 8..80 {
        // SAFETY: inside the header of the live mapping; a peer process
        // could write these bytes at any time.
        unsafe { p.mapping.base().add(offset).write_volatile(0xa5) };
    }
    for seq in 0..100 {
        p.controller
            .send(Opcode::Result, seq, 0, &pattern(900, seq, 0))
            .unwrap();
        let m = message(p.executor.recv(None));
        assert_eq!(m.payload.as_slice(), &pattern(900, seq, 0)[..]);
    }
    // A different epoch in the state word means the segment was
    // re-initialised under us: a protocol error.
    let state = p.executor.connection_state();
    let at = offset_of!(orcwire_shm::layout::SegmentHeader, state);
    // SAFETY: the state word is an aligned AtomicU64 inside the mapping
    // (CachePadded is repr(C), value first).
    let word = unsafe { &*p.mapping.base().add(at).cast::<AtomicU64>() };
    word.store(state.wrapping_add(1 << 32), Ordering::Release);
    let err = p.executor.recv(None).unwrap_err();
    assert!(
        matches!(&err, TransportError::Protocol(t) if t.contains("epoch")),
        "{err:?}"
    );
}
