//! The transport conformance suite: one set of endpoint-level tests, run
//! over every transport orcwire ships — pipe, Unix socket, TCP, and shared
//! memory over a heap-backed segment, a memfd and a named rendezvous —
//! so that no transport is tested by a rewrite of its own.
//!
//! Each test loops over [`ALL`] and names the transport in every failure.
//! What is checked, everywhere:
//! * calls both ways at every size from 0 B to several ring lengths, every
//!   result compared;
//! * disconnect from either side: the other side sees the hang-up, pending
//!   calls fail, later calls are refused;
//! * a peer that vanishes without hanging up (its end of the stream or of
//!   the shm liveness channel closes): pending calls fail within a second;
//! * malformed messages from a raw peer (a `Result` of an unknown kind,
//!   for a sequence number never used, a second `Setup`): a clean
//!   disconnect with a protocol error;
//! * `Transport::try_recv` takes whole messages in order and never waits;
//!   `recv_into`/`try_recv_into` overwrite one reused message across sizes
//!   (small after large, fragmented, empty) with nothing stale left.
//!
//! Byte-level garbage below the message layer is transport-specific and
//! is tested with each transport (`tests/malformed.rs`, `tests/stream.rs`
//! for streams; the ring's unit tests and the scribbler, truncation and
//! head-corruption tests of `tests/shm_process.rs` for shared memory), as is
//! the death of a real process (`tests/shm_process.rs`,
//! `tests/stream_process.rs`).

mod common;

use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::pseudo_random;
use orcwire::sps::SetupInfo;
use orcwire::{
    CallError, ControllerBuilder, DisconnectReason, Endpoint, EndpointConfig, ExecutorBuilder,
    Opcode, Received, StreamConfig, StreamTransport, Transport, WrapperFunctionBuffer,
};
use orcwire_shm::{attach_named, NamedOffer};
use orcwire_shm::{
    required_size, HeapMapping, RingCapacity, Segment, SharedMapping, ShmConfig, ShmTransport,
    WaitStrategy,
};

const LIMIT: Duration = Duration::from_secs(20);
/// Ring capacity of the shared-memory transports here: small, so several
/// ring lengths stay cheap.
const RING: usize = 64 << 10;
/// Every size a call is checked with, in both directions.
const SIZES: [usize; 10] = [0, 1, 7, 8, 9, 4096, RING - 1, RING, RING + 1, 3 * RING + 5];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pipe,
    Uds,
    Tcp,
    HeapShm,
    MemfdShm,
    NamedShm,
}

const ALL: [Kind; 6] = [
    Kind::Pipe,
    Kind::Uds,
    Kind::Tcp,
    Kind::HeapShm,
    Kind::MemfdShm,
    Kind::NamedShm,
];

/// Both ends of one connection, and a way to make the executor's end
/// vanish without a hang-up.
struct Pair {
    controller: Arc<dyn Transport>,
    executor: Arc<dyn Transport>,
    /// Shared memory: our end of an extra liveness channel the
    /// controller's transport watches; dropping it is the executor dying.
    liveness: Option<OwnedFd>,
}

impl Pair {
    /// The executor's end disappears as a dead process's would: for a
    /// stream its descriptors close (end of stream, no `Hangup`); for
    /// shared memory its liveness channel hangs up.
    fn vanish(&mut self) {
        match self.liveness.take() {
            Some(fd) => drop(fd),
            None => self.executor.close(),
        }
    }
}

fn shm_config() -> ShmConfig {
    ShmConfig {
        wait: WaitStrategy::balanced(),
        ring_capacity: RingCapacity::new(RING).unwrap(),
        ..ShmConfig::default()
    }
}

fn shm(controller: Arc<ShmTransport>, executor: Arc<ShmTransport>) -> Pair {
    let (ours, theirs) = orcwire_shm::socket_pair().unwrap();
    controller.watch_peer(ours, None).unwrap();
    Pair {
        controller,
        executor,
        liveness: Some(theirs),
    }
}

fn pair(kind: Kind) -> Pair {
    let stream = |(c, e): (Arc<StreamTransport>, Arc<StreamTransport>)| Pair {
        controller: c,
        executor: e,
        liveness: None,
    };
    let config = StreamConfig::default();
    match kind {
        Kind::Pipe => stream(StreamTransport::pipe_pair(config).unwrap()),
        Kind::Uds => stream(StreamTransport::unix_pair(config).unwrap()),
        Kind::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (e, _) = listener.accept().unwrap();
            stream((
                StreamTransport::from_tcp(c, config.clone()).unwrap(),
                StreamTransport::from_tcp(e, config).unwrap(),
            ))
        }
        Kind::HeapShm => {
            let mapping: Arc<dyn SharedMapping> =
                Arc::new(HeapMapping::new(required_size(&shm_config())).unwrap());
            shm(
                Arc::new(ShmTransport::create(Arc::clone(&mapping), shm_config()).unwrap()),
                Arc::new(ShmTransport::attach(mapping, shm_config()).unwrap()),
            )
        }
        Kind::MemfdShm => {
            // Two mappings of one sealed memfd, as two processes have.
            let ours = Segment::create(required_size(&shm_config())).unwrap();
            let fd = orcwire_shm::inheritable_dup(ours.fd()).unwrap();
            let theirs = Segment::from_fd(fd, required_size(&shm_config())).unwrap();
            shm(
                Arc::new(ShmTransport::create(Arc::new(ours), shm_config()).unwrap()),
                Arc::new(ShmTransport::attach(Arc::new(theirs), shm_config()).unwrap()),
            )
        }
        Kind::NamedShm => {
            let offer = NamedOffer::create(shm_config()).unwrap();
            let name = offer.name().to_owned();
            let executor = thread::spawn(move || attach_named(&name, shm_config()).unwrap());
            let controller = offer.wait_attached(LIMIT).unwrap();
            shm(controller, common::join_bounded(executor, LIMIT))
        }
    }
}

fn xor(a: &[u8]) -> Vec<u8> {
    a.iter().map(|b| b ^ 0x5a).collect()
}

fn config() -> EndpointConfig {
    EndpointConfig {
        hangup_timeout: Duration::from_millis(300),
        ..EndpointConfig::default()
    }
}

/// A connected pair of endpoints with the suite's functions: `xor`,
/// `hang` (never answers) and `sizes` (calls the controller's `ctl_xor`
/// at every size) on the executor; `ctl_xor` and `ctl_hang` on the
/// controller.
fn endpoints(pair: &Pair) -> (Endpoint, Endpoint) {
    let me: Arc<std::sync::OnceLock<Endpoint>> = Arc::default();
    let me2 = Arc::clone(&me);
    let executor_side = Arc::clone(&pair.executor);
    let executor = thread::spawn(move || {
        ExecutorBuilder::new()
            .config(config())
            .sync_function("xor", |a: &[u8]| WrapperFunctionBuffer::from_vec(xor(a)))
            .function("hang", |_a, r| common::never_answer(r, LIMIT))
            .sync_function("sizes", move |_a: &[u8]| {
                let Some(ep) = me2.get() else {
                    return WrapperFunctionBuffer::out_of_band_error("not connected yet");
                };
                let tag = ep.handler_tag("ctl_xor").unwrap();
                for (i, &len) in SIZES.iter().enumerate() {
                    let arg = pseudo_random(i as u64 + 50, len);
                    match ep.call_sync_timeout(tag, &arg, LIMIT) {
                        Ok(r) if r.as_slice() == xor(&arg).as_slice() => {}
                        Ok(_) => {
                            return WrapperFunctionBuffer::out_of_band_error(format!(
                                "ctl_xor of {len} B came back wrong"
                            ))
                        }
                        Err(e) => {
                            return WrapperFunctionBuffer::out_of_band_error(format!(
                                "ctl_xor of {len} B: {e}"
                            ))
                        }
                    }
                }
                WrapperFunctionBuffer::from_slice(b"all sizes")
            })
            .controller_handler("ctl_xor")
            .controller_handler("ctl_hang")
            .connect(executor_side)
            .unwrap()
    });
    let controller = ControllerBuilder::new()
        .config(config())
        .sync_handler("ctl_xor", |a: &[u8]| {
            WrapperFunctionBuffer::from_vec(xor(a))
        })
        .handler("ctl_hang", |_a, r| common::never_answer(r, LIMIT))
        .connect(Arc::clone(&pair.controller))
        .unwrap();
    let executor = common::join_bounded(executor, LIMIT);
    let _ = me.set(executor.clone());
    (controller, executor)
}

fn wait_disconnected(ep: &Endpoint, kind: Kind) -> DisconnectReason {
    let deadline = Instant::now() + LIMIT;
    while !ep.is_disconnected() {
        assert!(Instant::now() < deadline, "{kind:?}: never disconnected");
        thread::sleep(Duration::from_millis(1));
    }
    ep.disconnect_reason().unwrap()
}

fn disconnect_both(c: Endpoint, e: Endpoint) {
    common::run_bounded(LIMIT, move || {
        c.disconnect();
        e.disconnect();
    });
}

#[test]
fn calls_both_ways_at_every_size() {
    for kind in ALL {
        let pair = pair(kind);
        let (c, e) = endpoints(&pair);
        let tag = c.function_tag("xor").unwrap();
        for (i, &len) in SIZES.iter().enumerate() {
            let arg = pseudo_random(i as u64, len);
            let got = c
                .call_sync_timeout(tag, &arg, LIMIT)
                .unwrap_or_else(|err| panic!("{kind:?}: xor of {len} B: {err}"));
            assert_eq!(got.as_slice(), xor(&arg).as_slice(), "{kind:?}: {len} B");
        }
        let sizes = c.function_tag("sizes").unwrap();
        let got = c.call_sync_timeout(sizes, b"", LIMIT).unwrap();
        assert_eq!(
            got.error_message(),
            None,
            "{kind:?}: executor to controller"
        );
        assert_eq!(got.as_slice(), b"all sizes", "{kind:?}");
        disconnect_both(c, e);
    }
}

#[test]
fn disconnect_from_either_side_fails_pending_calls_and_refuses_new_ones() {
    for kind in ALL {
        for controller_hangs_up in [true, false] {
            let what = if controller_hangs_up {
                "controller"
            } else {
                "executor"
            };
            let pair = pair(kind);
            let (c, e) = endpoints(&pair);
            let (closer, other) = if controller_hangs_up {
                (c.clone(), e.clone())
            } else {
                (e.clone(), c.clone())
            };
            // A call from the side that stays, which its peer never answers.
            let hang = if controller_hangs_up {
                other.handler_tag("ctl_hang").unwrap()
            } else {
                other.function_tag("hang").unwrap()
            };
            let mut pending = other.call(hang, b"").unwrap();
            common::run_bounded(LIMIT, move || closer.disconnect());
            assert_eq!(
                wait_disconnected(&other, kind),
                DisconnectReason::PeerHungUp,
                "{kind:?}: {what} hung up"
            );
            let waited = pending.wait_timeout(LIMIT);
            assert_eq!(
                waited.unwrap_err(),
                CallError::Disconnected,
                "{kind:?}: {what} hung up"
            );
            assert_eq!(
                other.call(hang, b"").unwrap_err(),
                CallError::Disconnected,
                "{kind:?}: {what} hung up"
            );
            disconnect_both(c, e);
        }
    }
}

#[test]
fn a_peer_that_vanishes_without_hanging_up_fails_pending_calls_within_a_second() {
    for kind in ALL {
        let mut pair = pair(kind);
        let (c, e) = endpoints(&pair);
        let hang = c.function_tag("hang").unwrap();
        let mut pending = c.call(hang, b"").unwrap();
        let gone = Instant::now();
        pair.vanish();
        let outcome = pending.wait_timeout(LIMIT);
        let took = gone.elapsed();
        assert!(
            matches!(outcome, Err(CallError::Disconnected | CallError::PeerDied)),
            "{kind:?}: {outcome:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "{kind:?}: failed after {took:?}"
        );
        let reason = wait_disconnected(&c, kind);
        // A stream cannot tell death from a hang-up without `Hangup` (both
        // are an end of stream); shared memory learns it from liveness.
        let expected = match kind {
            Kind::Pipe | Kind::Uds | Kind::Tcp => DisconnectReason::PeerHungUp,
            Kind::HeapShm | Kind::MemfdShm | Kind::NamedShm => DisconnectReason::PeerDied,
        };
        assert_eq!(reason, expected, "{kind:?}");
        disconnect_both(c, e);
    }
}

/// A controller connected to a raw transport that plays a broken executor:
/// it sends a valid `Setup` offering function `f`, then `misbehave`; the
/// controller must disconnect with a protocol error and fail its pending
/// call.
fn broken_executor(kind: Kind, case: &str, misbehave: impl Fn(&dyn Transport, u64)) {
    let pair = pair(kind);
    let raw = Arc::clone(&pair.executor);
    let mut setup = SetupInfo::new_orcwire("x86_64-unknown-linux-gnu".into(), 4096);
    setup.bootstrap_symbols.push(("f".into(), 1));
    raw.send(Opcode::Setup, 0, 0, &setup.encode()).unwrap();
    let c = ControllerBuilder::new()
        .config(config())
        .connect(Arc::clone(&pair.controller))
        .unwrap();
    let tag = c.function_tag("f").unwrap();
    let mut pending = c.call(tag, b"pending").unwrap();
    // The call arrives; its sequence number is what a broken peer answers.
    let seq = match raw.recv(Some(Instant::now() + LIMIT)) {
        Ok(Received::Message(m)) if m.opcode == Opcode::CallWrapper => m.seq,
        other => panic!("{kind:?}/{case}: expected the call, got {other:?}"),
    };
    misbehave(&*raw, seq);
    let reason = wait_disconnected(&c, kind);
    assert!(
        matches!(reason, DisconnectReason::Protocol(_)),
        "{kind:?}/{case}: {reason:?}"
    );
    assert_eq!(
        pending.wait_timeout(LIMIT).unwrap_err(),
        CallError::Disconnected,
        "{kind:?}/{case}"
    );
    raw.close();
    common::run_bounded(LIMIT, move || c.disconnect());
}

#[test]
fn malformed_messages_end_in_a_protocol_error() {
    for kind in ALL {
        broken_executor(kind, "result of an unknown kind", |raw, seq| {
            raw.send(Opcode::Result, seq, 7, b"?").unwrap()
        });
        broken_executor(kind, "result for a sequence never used", |raw, seq| {
            raw.send(Opcode::Result, seq + 1000, 0, b"").unwrap()
        });
        broken_executor(kind, "a second setup", |raw, _| {
            raw.send(Opcode::Setup, 0, 0, b"").unwrap()
        });
    }
}

/// `Transport::try_recv` (what a waiting caller drains with once it has its
/// own result) takes whole messages that have arrived, in order, and never
/// waits: not when nothing was sent, not after the peer closed.
#[test]
fn try_recv_takes_what_has_arrived_and_never_waits() {
    let at_once = Duration::from_millis(200);
    for kind in ALL {
        let pair = pair(kind);
        let (tx, rx) = (&pair.controller, &pair.executor);
        let t = Instant::now();
        assert!(
            rx.try_recv().unwrap().is_none(),
            "{kind:?}: nothing was sent"
        );
        assert!(t.elapsed() < at_once, "{kind:?}: try_recv waited");
        tx.send(Opcode::CallWrapper, 7, 42, b"first").unwrap();
        tx.send(Opcode::Result, 8, 0, b"second").unwrap();
        for (opcode, seq, tag, payload) in [
            (Opcode::CallWrapper, 7, 42, &b"first"[..]),
            (Opcode::Result, 8, 0, &b"second"[..]),
        ] {
            let deadline = Instant::now() + LIMIT;
            let m = loop {
                if let Some(m) = rx.try_recv().unwrap() {
                    break m;
                }
                assert!(
                    Instant::now() < deadline,
                    "{kind:?}: message {seq} never taken"
                );
                thread::sleep(Duration::from_millis(1));
            };
            assert_eq!(
                (m.opcode, m.seq, m.tag, m.payload.as_slice()),
                (opcode, seq, tag, payload),
                "{kind:?}"
            );
        }
        assert!(
            rx.try_recv().unwrap().is_none(),
            "{kind:?}: a third message?"
        );
        // The peer closes: `try_recv` returns at once with no message;
        // `recv` then reports the hang-up.
        tx.close();
        let t = Instant::now();
        assert!(!matches!(rx.try_recv(), Ok(Some(_))), "{kind:?}");
        assert!(
            t.elapsed() < at_once,
            "{kind:?}: try_recv waited after close"
        );
        match rx.recv(Some(Instant::now() + LIMIT)) {
            Err(e) => assert!(e.is_peer_gone(), "{kind:?}: {e:?}"),
            Ok(other) => panic!("{kind:?}: expected the hang-up, got {other:?}"),
        }
        rx.close();
    }
}

#[test]
fn recv_into_overwrites_one_message_across_sizes() {
    // One `Message` receives everything: small after large (a stale tail
    // must not show), large after small, empty, fragmented, and through
    // `try_recv_into` too. Every field and byte is compared.
    let sizes = [64, 3, 0, RING + 1, 70, 71, 72, 5000, 1];
    for kind in ALL {
        let pair = pair(kind);
        let (tx, rx) = (Arc::clone(&pair.controller), Arc::clone(&pair.executor));
        let sender = thread::spawn(move || {
            for (i, &n) in sizes.iter().enumerate() {
                let payload = pseudo_random(i as u64, n);
                tx.send(Opcode::CallWrapper, i as u64 + 1, 100 + i as u64, &payload)
                    .unwrap();
            }
            tx
        });
        let mut m = orcwire::Message::new(
            Opcode::Result,
            0,
            0,
            WrapperFunctionBuffer::out_of_band_error("stale"),
        );
        for (i, &n) in sizes.iter().enumerate() {
            let deadline = Instant::now() + LIMIT;
            if i % 2 == 0 {
                assert_eq!(
                    rx.recv_into(Some(deadline), &mut m).unwrap(),
                    orcwire::Arrival::Message,
                    "{kind:?}: message {i}"
                );
            } else {
                while !rx.try_recv_into(&mut m).unwrap() {
                    assert!(
                        Instant::now() < deadline,
                        "{kind:?}: message {i} never taken"
                    );
                    thread::sleep(Duration::from_millis(1));
                }
            }
            assert_eq!(
                (m.opcode, m.seq, m.tag, m.payload.is_error()),
                (Opcode::CallWrapper, i as u64 + 1, 100 + i as u64, false),
                "{kind:?}: message {i}"
            );
            assert!(
                m.payload.as_slice() == pseudo_random(i as u64, n).as_slice(),
                "{kind:?}: message {i} ({n} B) differs"
            );
        }
        assert_eq!(
            rx.recv_into(Some(Instant::now() + Duration::from_millis(20)), &mut m)
                .unwrap(),
            orcwire::Arrival::TimedOut,
            "{kind:?}"
        );
        rx.interrupt_recv();
        assert_eq!(
            rx.recv_into(Some(Instant::now() + LIMIT), &mut m).unwrap(),
            orcwire::Arrival::Interrupted,
            "{kind:?}"
        );
        let tx = sender.join().unwrap();
        tx.close();
        rx.close();
    }
}

#[test]
fn batches_go_out_whole_and_in_order_and_stop_at_a_message_over_the_limit() {
    // `send_batch`: small, empty and fragmented messages in one batch, all
    // received in order; a message over the limit stops its batch there
    // (the ones before it arrive, none after). `recv_batch`: at most `max`
    // a turn, stopping when `each` says so, waiting only for the first.
    let sizes = [64, 0, 3, RING + 1, 70, 5000, 2 * RING + 3, 1, 64];
    for kind in ALL {
        let pair = pair(kind);
        let (tx, rx) = (Arc::clone(&pair.controller), Arc::clone(&pair.executor));
        let sender = thread::spawn(move || {
            let payloads: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| pseudo_random(i as u64, n))
                .collect();
            let batch: Vec<orcwire::Outgoing<'_>> = payloads
                .iter()
                .enumerate()
                .map(|(i, p)| orcwire::Outgoing {
                    opcode: Opcode::CallWrapper,
                    seq: i as u64 + 1,
                    tag: 100 + i as u64,
                    payload: p,
                })
                .collect();
            tx.send_batch(&batch, Some(Instant::now() + LIMIT), &|| {})
                .unwrap();
            // Over every transport's limit (1 GiB for streams); never touched.
            let too_large = vec![0u8; (1 << 30) + 1];
            let stopped = [
                orcwire::Outgoing {
                    opcode: Opcode::CallWrapper,
                    seq: 50,
                    tag: 7,
                    payload: b"before",
                },
                orcwire::Outgoing {
                    opcode: Opcode::CallWrapper,
                    seq: 51,
                    tag: 7,
                    payload: &too_large,
                },
                orcwire::Outgoing {
                    opcode: Opcode::CallWrapper,
                    seq: 52,
                    tag: 7,
                    payload: b"after",
                },
            ];
            let e = tx
                .send_batch(&stopped, Some(Instant::now() + LIMIT), &|| {})
                .unwrap_err();
            assert_eq!(e.sent, 1, "{kind:?}");
            assert!(
                matches!(e.error, orcwire::TransportError::TooLarge { .. }),
                "{kind:?}: {e}"
            );
            tx
        });
        let mut m = orcwire::Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
        let mut got: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let mut turns = 0;
        while got.len() < sizes.len() + 1 {
            let deadline = Instant::now() + LIMIT;
            let mut this_turn = 0;
            let mut said_stop = false;
            let arrival = rx
                .recv_batch(Some(deadline), 3, &mut m, &mut |m| {
                    assert!(!said_stop, "{kind:?}: a message after `each` said stop");
                    got.push((m.seq, m.tag, m.payload.as_slice().to_vec()));
                    this_turn += 1;
                    // Stop early once in a while.
                    said_stop = m.seq % 4 == 0;
                    !said_stop
                })
                .unwrap();
            assert_eq!(arrival, orcwire::Arrival::Message, "{kind:?}");
            assert!(
                (1..=3).contains(&this_turn),
                "{kind:?}: {this_turn} in a turn"
            );
            turns += 1;
        }
        assert!(turns >= (sizes.len() + 1).div_ceil(3), "{kind:?}");
        for (i, &n) in sizes.iter().enumerate() {
            assert_eq!(
                (got[i].0, got[i].1),
                (i as u64 + 1, 100 + i as u64),
                "{kind:?}: message {i}"
            );
            assert!(
                got[i].2 == pseudo_random(i as u64, n),
                "{kind:?}: message {i} ({n} B) differs"
            );
        }
        assert_eq!(
            got[sizes.len()],
            (50, 7, b"before".to_vec()),
            "{kind:?}: the message before the one over the limit"
        );
        // Nothing after it.
        assert_eq!(
            rx.recv_batch(
                Some(Instant::now() + Duration::from_millis(20)),
                8,
                &mut m,
                &mut |_| true
            )
            .unwrap(),
            orcwire::Arrival::TimedOut,
            "{kind:?}"
        );
        let tx = sender.join().unwrap();
        tx.close();
        rx.close();
    }
}
