//! Endpoint behaviour over the stream transport, both sides in this
//! process: calls both ways, concurrency, unknown tags, futures, and the
//! disconnect guarantees.

mod common;

use orcwire_sync::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{block_on, join_bounded, run_bounded};
use orcwire::StreamConfig;
use orcwire::{
    CallError, ControllerBuilder, DisconnectReason, Endpoint, ExecutorBuilder, StreamTransport,
    WrapperFunctionBuffer,
};
use orcwire::{InlineTaskDispatcher, TaskDispatcher};

const LIMIT: Duration = Duration::from_secs(20);

fn xor_result(args: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = args.iter().map(|b| b ^ 0x5a).collect();
    out.extend_from_slice(&(args.len() as u64).to_le_bytes());
    out
}

type Slot = Arc<Mutex<Option<Endpoint>>>;

struct Pair {
    controller: Endpoint,
    executor: Endpoint,
    exec_slot: Slot,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.exec_slot.lock().unwrap().take();
    }
}

fn executor_builder(slot: Slot) -> ExecutorBuilder {
    let slow_calls = Arc::new(AtomicUsize::new(0));
    ExecutorBuilder::new()
        .sync_function("echo", |a: &[u8]| WrapperFunctionBuffer::from_slice(a))
        .sync_function("xor", |a: &[u8]| {
            WrapperFunctionBuffer::from_vec(xor_result(a))
        })
        .sync_function("slow", move |a: &[u8]| {
            slow_calls.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(20));
            WrapperFunctionBuffer::from_slice(a)
        })
        .function("disconnect_me", move |_a, r| {
            let ep = slot.lock().unwrap().clone();
            if let Some(ep) = ep {
                ep.disconnect();
                assert!(ep.is_disconnected());
            }
            r.respond(WrapperFunctionBuffer::from_slice(b"after"));
        })
        .function("never_answers", |_a, r| drop(r))
        .controller_handler("double")
        .controller_handler("missing_on_controller")
}

fn connect(kind: &str, exec_dispatcher: Option<Arc<dyn TaskDispatcher>>) -> Pair {
    let cfg = StreamConfig::default();
    let (c, e) = match kind {
        "pipe" => StreamTransport::pipe_pair(cfg).unwrap(),
        _ => StreamTransport::unix_pair(cfg).unwrap(),
    };
    let exec_slot: Slot = Arc::new(Mutex::new(None));
    let mut eb = executor_builder(Arc::clone(&exec_slot));
    if let Some(d) = exec_dispatcher {
        eb = eb.dispatcher(d);
    }
    let executor = eb.connect(e).unwrap();
    *exec_slot.lock().unwrap() = Some(executor.clone());
    let controller = ControllerBuilder::new()
        .sync_handler("double", |a: &[u8]| {
            let mut v = a.to_vec();
            v.extend_from_slice(a);
            WrapperFunctionBuffer::from_vec(v)
        })
        .connect(c)
        .unwrap();
    Pair {
        controller,
        executor,
        exec_slot,
    }
}

#[test]
fn calls_in_both_directions_over_pipes_and_sockets() {
    for kind in ["pipe", "uds"] {
        let p = connect(kind, None);
        let xor = p.controller.function_tag("xor").unwrap();
        for n in [0usize, 1, 7, 8, 9, 31, 33, 4096, 1 << 20] {
            let args = common::pseudo_random(n as u64 + 1, n);
            let out = p.controller.call_sync(xor, &args).unwrap();
            assert_eq!(out.as_slice(), &xor_result(&args)[..], "{kind} size {n}");
        }
        let double = p.executor.handler_tag("double").unwrap();
        let out = p.executor.call_sync(double, b"abc").unwrap();
        assert_eq!(out.as_slice(), b"abcabc");
        assert_eq!(
            p.controller.transport_name(),
            if kind == "pipe" { "pipe" } else { "uds" }
        );
        p.controller.disconnect();
        p.executor.disconnect();
    }
}

#[test]
fn eight_threads_of_a_thousand_calls_each_get_their_own_result() {
    let p = connect("uds", None);
    let xor = p.controller.function_tag("xor").unwrap();
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let c = p.controller.clone();
            thread::spawn(move || {
                // Half synchronous waits, half pipelined batches.
                for batch in 0..100u64 {
                    let calls: Vec<_> = (0..10u64)
                        .map(|i| {
                            let id = (t << 32) | (batch * 10 + i);
                            let args = id.to_le_bytes().repeat(1 + (i as usize % 3));
                            (args.clone(), c.call(xor, &args).unwrap())
                        })
                        .collect();
                    for (args, call) in calls {
                        let out = call.wait().unwrap();
                        assert_eq!(out.as_slice(), &xor_result(&args)[..]);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        join_bounded(h, LIMIT);
    }
    assert_eq!(p.controller.pending_calls(), 0);
}

#[test]
fn unknown_tags_get_an_out_of_band_error_not_a_crash() {
    let p = connect("uds", None);
    let out = p
        .controller
        .call_sync(orcwire::HandlerTag::new(9_999), b"x")
        .unwrap();
    assert!(out.is_error());
    assert!(out.error_message().unwrap().contains("9999"), "{out:?}");
    let missing = p.executor.handler_tag("missing_on_controller").unwrap();
    let out = p.executor.call_sync(missing, b"").unwrap();
    assert!(
        out.error_message()
            .unwrap()
            .contains("missing_on_controller"),
        "{out:?}"
    );
    // A handler that drops its responder still answers.
    let never = p.controller.function_tag("never_answers").unwrap();
    let out = p.controller.call_sync(never, b"").unwrap();
    assert!(out.is_error());
    // The connection is still fine afterwards.
    let echo = p.controller.function_tag("echo").unwrap();
    assert_eq!(
        p.controller.call_sync(echo, b"ok").unwrap().as_slice(),
        b"ok"
    );
}

#[test]
fn a_call_handle_is_a_future_and_can_time_out_and_be_waited_again() {
    let p = connect("uds", None);
    let echo = p.controller.function_tag("echo").unwrap();
    let out = block_on(p.controller.call(echo, b"future").unwrap(), LIMIT).unwrap();
    assert_eq!(out.as_slice(), b"future");

    let slow = p.controller.function_tag("slow").unwrap();
    let mut call = p.controller.call(slow, b"late").unwrap();
    assert_eq!(
        call.wait_timeout(Duration::from_millis(1)),
        Err(CallError::TimedOut)
    );
    let out = call.wait_timeout(LIMIT).unwrap();
    assert_eq!(out.as_slice(), b"late");
    assert_eq!(call.wait_timeout(LIMIT), Err(CallError::AlreadyTaken));
}

#[test]
fn calls_after_disconnect_fail_at_once_and_pending_calls_fail() {
    let p = connect("uds", None);
    let slow = p.controller.function_tag("slow").unwrap();
    let pending: Vec<_> = (0..20)
        .map(|_| p.controller.call(slow, b"s").unwrap())
        .collect();
    run_bounded(LIMIT, {
        let c = p.controller.clone();
        move || c.disconnect()
    });
    assert!(p.controller.is_disconnected());
    for call in pending {
        match call.wait() {
            Ok(v) => assert_eq!(v.as_slice(), b"s"),
            Err(e) => assert_eq!(e, CallError::Disconnected),
        }
    }
    let start = Instant::now();
    assert_eq!(
        p.controller.call(slow, b"x").unwrap_err(),
        CallError::Disconnected
    );
    assert!(start.elapsed() < Duration::from_millis(50));
    // The peer saw the hang-up too.
    let deadline = Instant::now() + LIMIT;
    while !p.executor.is_disconnected() {
        assert!(Instant::now() < deadline, "executor never saw the hang-up");
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        p.executor.disconnect_reason(),
        Some(DisconnectReason::PeerHungUp)
    );
}

/// The gate guarantees, hammered: many callers, several concurrent
/// disconnecters, every round. Each call either returns its own correct
/// result or fails with a disconnect error; every disconnect returns; once
/// any disconnect has returned, no call can be made.
#[test]
fn disconnect_hammer_many_callers_and_disconnecters() {
    for round in 0..40u64 {
        let p = connect(if round % 2 == 0 { "uds" } else { "pipe" }, None);
        let xor = p.controller.function_tag("xor").unwrap();
        let disconnected = Arc::new(orcwire_sync::AtomicBool::new(false));
        let callers: Vec<_> = (0..6u64)
            .map(|t| {
                let c = p.controller.clone();
                let disconnected = Arc::clone(&disconnected);
                thread::spawn(move || {
                    let mut ok = 0u32;
                    for i in 0..1_000u64 {
                        let was_disconnected = disconnected.load(Ordering::SeqCst);
                        let args = (t * 1_000_000 + i).to_le_bytes();
                        match c.call(xor, &args) {
                            Ok(call) => {
                                assert!(
                                    !was_disconnected,
                                    "call accepted after disconnect returned"
                                );
                                match call.wait() {
                                    Ok(v) => {
                                        assert_eq!(v.as_slice(), &xor_result(&args)[..]);
                                        ok += 1;
                                    }
                                    Err(e) => assert_eq!(e, CallError::Disconnected),
                                }
                            }
                            Err(e) => {
                                assert_eq!(e, CallError::Disconnected);
                                break;
                            }
                        }
                    }
                    ok
                })
            })
            .collect();
        thread::sleep(Duration::from_micros(200 * (round % 5)));
        let disconnecters: Vec<_> = (0..3)
            .map(|i| {
                let ep = if i == 2 {
                    p.executor.clone()
                } else {
                    p.controller.clone()
                };
                let c = p.controller.clone();
                let disconnected = Arc::clone(&disconnected);
                thread::spawn(move || {
                    ep.disconnect();
                    if i != 2 {
                        assert!(c.is_closing());
                        assert_eq!(c.call(xor, b"no").unwrap_err(), CallError::Disconnected);
                        disconnected.store(true, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for d in disconnecters {
            join_bounded(d, LIMIT);
        }
        for c in callers {
            join_bounded(c, LIMIT);
        }
        assert!(p.controller.is_disconnected());
        assert_eq!(p.controller.pending_calls(), 0);
    }
}

#[test]
fn disconnect_from_inside_a_handler_does_not_deadlock() {
    for inline in [false, true] {
        let dispatcher: Option<Arc<dyn TaskDispatcher>> =
            inline.then(|| Arc::new(InlineTaskDispatcher::new()) as Arc<dyn TaskDispatcher>);
        let p = connect("uds", dispatcher);
        let tag = p.controller.function_tag("disconnect_me").unwrap();
        let c = p.controller.clone();
        let outcome = run_bounded(LIMIT, move || c.call_sync(tag, b""));
        // The executor disconnected before answering: the answer cannot be
        // sent, so the call fails with a disconnect error.
        assert_eq!(
            outcome.unwrap_err(),
            CallError::Disconnected,
            "inline={inline}"
        );
        // The executor's handler-side disconnect finishes once the
        // controller has acknowledged; both sides end up disconnected.
        let deadline = Instant::now() + LIMIT;
        while !(p.controller.is_disconnected() && p.executor.is_disconnected()) {
            assert!(Instant::now() < deadline, "inline={inline}");
            thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn peer_hang_up_fails_pending_calls_and_later_calls() {
    for round in 0..20 {
        let p = connect("uds", None);
        let slow = p.controller.function_tag("slow").unwrap();
        let calls: Vec<_> = (0..8)
            .map(|_| p.controller.call(slow, b"z").unwrap())
            .collect();
        if round % 2 == 0 {
            thread::sleep(Duration::from_millis(5));
        }
        run_bounded(LIMIT, {
            let e = p.executor.clone();
            move || e.disconnect()
        });
        for call in calls {
            let c = call;
            match run_bounded(LIMIT, move || c.wait()) {
                Ok(v) => assert_eq!(v.as_slice(), b"z"),
                Err(e) => assert_eq!(e, CallError::Disconnected),
            }
        }
        let deadline = Instant::now() + LIMIT;
        while !p.controller.is_disconnected() {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            p.controller.call(slow, b"").unwrap_err(),
            CallError::Disconnected
        );
        assert_eq!(
            p.controller.disconnect_reason(),
            Some(DisconnectReason::PeerHungUp)
        );
    }
}

#[test]
fn disconnect_callbacks_run_once_even_when_registered_late() {
    let p = connect("uds", None);
    let count = Arc::new(AtomicUsize::new(0));
    let c1 = Arc::clone(&count);
    p.controller.on_disconnect(move |r| {
        assert_eq!(*r, DisconnectReason::Local);
        c1.fetch_add(1, Ordering::SeqCst);
    });
    p.controller.disconnect();
    p.controller.disconnect();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let c2 = Arc::clone(&count);
    p.controller.on_disconnect(move |_| {
        c2.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

/// A handler reaches its endpoint through the responder, even on the very
/// first call (made as soon as the controller has the `Setup`), and calls
/// the peer back with it; once every user handle is gone the responder
/// gives none.
#[test]
fn a_handler_calls_back_through_its_responder_and_not_after_the_last_handle() {
    let (c_side, e_side) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let held_tx = Mutex::new(held_tx);
    let executor = thread::spawn(move || {
        ExecutorBuilder::new()
            .dispatcher(Arc::new(InlineTaskDispatcher::new()))
            .function("via_controller", |args, responder| {
                let answer = match responder.endpoint() {
                    Some(ep) => {
                        let tag = ep.handler_tag("ctl_xor").unwrap();
                        ep.call_sync(tag, args.as_slice()).unwrap()
                    }
                    None => WrapperFunctionBuffer::out_of_band_error("no endpoint"),
                };
                responder.respond(answer);
            })
            .function("hold", move |_args, responder| {
                held_tx.lock().unwrap().send(responder).unwrap();
            })
            .controller_handler("ctl_xor")
            .connect(e_side)
            .unwrap()
    });
    let controller = ControllerBuilder::new()
        .sync_handler("ctl_xor", |a: &[u8]| {
            WrapperFunctionBuffer::from_vec(xor_result(a))
        })
        .connect(c_side)
        .unwrap();
    // The first call races the executor's `connect` returning.
    let via = controller.function_tag("via_controller").unwrap();
    for n in 0..20u8 {
        let arg = vec![n; usize::from(n)];
        let out = controller.call_sync(via, &arg).unwrap();
        assert_eq!(out.as_slice(), xor_result(&arg).as_slice());
    }
    // A responder kept past the last user handle of its endpoint.
    let hold = controller.function_tag("hold").unwrap();
    let mut pending = controller.call(hold, b"").unwrap();
    let responder = held_rx.recv_timeout(LIMIT).unwrap();
    let executor = join_bounded(executor, LIMIT);
    assert!(
        responder.endpoint().is_some(),
        "a user handle is still alive"
    );
    run_bounded(LIMIT, move || drop(executor));
    assert!(
        responder.endpoint().is_none(),
        "the last user handle is gone: no endpoint to hand out"
    );
    assert_eq!(
        pending.wait_timeout(LIMIT).unwrap_err(),
        CallError::Disconnected
    );
    drop(responder);
    controller.disconnect();
}
