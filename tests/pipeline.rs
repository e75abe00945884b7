//! `Pipeline`: calls staged and sent in batches, results in submission
//! order with every dispatcher and transport; calls that cannot be sent
//! yield their error in their place; deadlines; a dropped pipeline frees
//! its slots; and a result of a batch is not held back by a handler of the
//! same batch that blocks.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{connect_pair, dispatchers, never_answer, pseudo_random, run_bounded, shm_pair};
use orcwire::{
    CallError, ControllerBuilder, Endpoint, EndpointConfig, ExecutorBuilder, HandlerTag,
    StreamConfig, StreamTransport, Transport, TransportError, WrapperFunctionBuffer,
};
use orcwire_shm::{RingCapacity, ShmConfig};

const LIMIT: Duration = Duration::from_secs(60);

/// A shm pair with 64 KiB rings and a 256 KiB message limit (larger
/// messages go out in fragments), or a Unix socket pair.
fn transports(shm: bool) -> (Arc<dyn Transport>, Arc<dyn Transport>) {
    if shm {
        shm_pair(ShmConfig {
            ring_capacity: RingCapacity::new(64 << 10).unwrap(),
            max_message_size: 256 << 10,
            ..ShmConfig::default()
        })
    } else {
        let (c, e) = StreamTransport::unix_pair(StreamConfig {
            max_message_size: 256 << 10,
        })
        .unwrap();
        (c, e)
    }
}

/// An executor serving `echo`, `fail` (an error result) and `silent`
/// (never answers while the test runs).
fn pair(
    shm: bool,
    dispatcher: common::MakeDispatcher,
    config: EndpointConfig,
) -> (Endpoint, Endpoint) {
    connect_pair(
        transports(shm),
        ExecutorBuilder::new()
            .sync_function("echo", WrapperFunctionBuffer::from_slice)
            .sync_function("fail", |_| {
                WrapperFunctionBuffer::out_of_band_error("refused on purpose")
            })
            .function("silent", |_, responder| {
                never_answer(responder, Duration::from_secs(5))
            })
            .config(config.clone()),
        ControllerBuilder::new().config(config),
        dispatcher,
    )
}

fn tag(ep: &Endpoint, name: &str) -> HandlerTag {
    ep.function_tag(name).unwrap()
}

/// 3,000 calls, up to 64 in flight, sizes from 0 B to 200 KiB (fragmented
/// on shm), every 7th an error result: every result in its place.
#[test]
fn results_come_in_submission_order_with_every_dispatcher_and_transport() {
    for shm in [true, false] {
        for (name, dispatcher) in dispatchers() {
            run_bounded(LIMIT, move || {
                let (controller, executor) = pair(shm, dispatcher, EndpointConfig::default());
                let (echo, fail) = (tag(&controller, "echo"), tag(&controller, "fail"));
                let mut pipe = controller.pipeline();
                let mut expected = std::collections::VecDeque::new();
                let mut taken = 0;
                let check = |r: Result<WrapperFunctionBuffer, CallError>,
                             want: Option<Vec<u8>>,
                             i: usize| match (r, want) {
                    (Ok(got), Some(want)) => {
                        assert_eq!(got.as_slice(), &want[..], "{name}, shm {shm}: call {i}")
                    }
                    (Ok(got), None) => assert_eq!(
                        got.error_message(),
                        Some("refused on purpose"),
                        "{name}, shm {shm}: call {i}"
                    ),
                    (Err(e), _) => panic!("{name}, shm {shm}: call {i} failed: {e}"),
                };
                for i in 0..3_000usize {
                    if pipe.in_flight() == 64 {
                        let want = expected.pop_front().unwrap();
                        check(pipe.next().unwrap(), want, taken);
                        taken += 1;
                    }
                    if i % 7 == 3 {
                        pipe.submit(fail, b"x");
                        expected.push_back(None);
                    } else {
                        let len = match i % 50 {
                            0 => 200 << 10,
                            n => n * 13,
                        };
                        let args = pseudo_random(i as u64, len);
                        pipe.submit(echo, &args);
                        expected.push_back(Some(args));
                    }
                }
                for r in pipe.by_ref() {
                    let want = expected.pop_front().unwrap();
                    check(r, want, taken);
                    taken += 1;
                }
                assert_eq!((taken, pipe.in_flight()), (3_000, 0));
                assert_eq!(controller.pending_calls(), 0);
                controller.disconnect();
                executor.disconnect();
            });
        }
    }
}

/// A call over the transport's limit, calls beyond the pending slots and
/// calls after disconnect: each yields its error in its place, the others
/// their results.
#[test]
fn calls_that_cannot_be_sent_yield_their_error_in_their_place() {
    run_bounded(LIMIT, || {
        let config = EndpointConfig {
            max_pending_calls: 4,
            ..EndpointConfig::default()
        };
        let (controller, executor) = pair(true, None, config);
        let echo = tag(&controller, "echo");
        let mut pipe = controller.pipeline();
        pipe.submit(echo, b"a");
        pipe.submit(echo, &vec![0u8; 300 << 10]);
        pipe.submit(echo, b"b");
        assert_eq!(pipe.staged(), 3);
        pipe.flush();
        assert_eq!((pipe.staged(), pipe.in_flight()), (0, 3));
        assert_eq!(pipe.next().unwrap().unwrap().as_slice(), b"a");
        match pipe.next().unwrap() {
            Err(CallError::Send(TransportError::TooLarge { size, .. })) => {
                assert_eq!(size, 300 << 10)
            }
            other => panic!("a message over the limit gave {other:?}"),
        }
        assert_eq!(pipe.next().unwrap().unwrap().as_slice(), b"b");
        assert!(pipe.next().is_none());

        // Four slots: the first four go out, the other two fail at once.
        for i in 0..6u8 {
            pipe.submit(echo, &[i]);
        }
        pipe.flush();
        for i in 0..4u8 {
            assert_eq!(pipe.next().unwrap().unwrap().as_slice(), &[i]);
        }
        for _ in 4..6 {
            assert_eq!(pipe.next().unwrap(), Err(CallError::TooManyPending(4)));
        }

        controller.disconnect();
        pipe.submit(echo, b"late");
        assert_eq!(pipe.next().unwrap(), Err(CallError::Disconnected));
        assert!(pipe.next().is_none());
        executor.disconnect();
    });
}

/// `next_deadline` gives up and leaves the call in flight; dropping the
/// pipeline forgets its calls: staged ones are never sent, slots of sent
/// ones are freed.
#[test]
fn deadlines_and_dropping_leave_nothing_pending() {
    run_bounded(LIMIT, || {
        let (controller, executor) = pair(true, None, EndpointConfig::default());
        let (echo, silent) = (tag(&controller, "echo"), tag(&controller, "silent"));
        let mut pipe = controller.pipeline();
        pipe.submit(silent, b"");
        let start = Instant::now();
        assert_eq!(
            pipe.next_deadline(start + Duration::from_millis(30)),
            Some(Err(CallError::TimedOut))
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(pipe.in_flight(), 1);
        assert_eq!(controller.pending_calls(), 1);
        for i in 0..100u8 {
            pipe.submit(echo, &[i]);
        }
        pipe.flush();
        pipe.submit(echo, b"never sent");
        assert_eq!(pipe.in_flight(), 102);
        drop(pipe);
        // The silent call's slot is abandoned now; the echoes' ones as
        // their results arrive.
        let start = Instant::now();
        while controller.pending_calls() > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} calls still pending after the pipeline was dropped",
                controller.pending_calls()
            );
            thread::sleep(Duration::from_millis(1));
        }
        // The connection still works.
        assert_eq!(controller.call_sync(echo, b"ok").unwrap().as_slice(), b"ok");
        controller.disconnect();
        executor.disconnect();
    });
}

/// A pipeline keeps the slots of calls whose results it read itself
/// (leased, for its next calls), at most a quarter of them; the others stay
/// free for other callers, and dropping the pipeline frees its own.
#[test]
fn a_pipeline_leases_at_most_a_quarter_of_the_slots_and_frees_them_when_dropped() {
    run_bounded(LIMIT, || {
        let config = EndpointConfig {
            max_pending_calls: 8,
            ..EndpointConfig::default()
        };
        let (controller, executor) = pair(true, None, config);
        let (echo, silent) = (tag(&controller, "echo"), tag(&controller, "silent"));
        let mut pipe = controller.pipeline();
        // Up to 4 in flight: every result read by this thread, in order.
        for round in 0..50u8 {
            for i in 0..4u8 {
                pipe.submit(echo, &[round, i]);
            }
            for i in 0..4u8 {
                assert_eq!(pipe.next().unwrap().unwrap().as_slice(), &[round, i]);
            }
        }
        assert_eq!(pipe.in_flight(), 0);
        assert_eq!(controller.pending_calls(), 0);
        // The pipeline is idle and holds 2 of the 8 slots: 6 other calls
        // find a slot, the 7th none.
        let held: Vec<_> = (0..6)
            .map(|i| {
                controller
                    .call(silent, b"")
                    .unwrap_or_else(|e| panic!("call {i} beside an idle pipeline: {e}"))
            })
            .collect();
        assert_eq!(
            controller.call(silent, b"").err(),
            Some(CallError::TooManyPending(8)),
            "the pipeline kept more than a quarter of the slots"
        );
        // Its own next calls still go out (in its leased slots).
        pipe.submit(echo, b"x");
        pipe.submit(echo, b"y");
        assert_eq!(pipe.next().unwrap().unwrap().as_slice(), b"x");
        assert_eq!(pipe.next().unwrap().unwrap().as_slice(), b"y");
        // Dropped: its 2 slots are free again (the 6 silent calls keep
        // theirs, held or abandoned, until their answer).
        drop(pipe);
        let more: Vec<_> = (0..2)
            .map(|i| {
                controller
                    .call(silent, b"")
                    .unwrap_or_else(|e| panic!("call {i} after the pipeline was dropped: {e}"))
            })
            .collect();
        assert_eq!(controller.pending_calls(), 8);
        drop((held, more));
        controller.disconnect();
        executor.disconnect();
    });
}

/// A pipeline waiting for its results (it leads) while another thread
/// disconnects: disconnect takes the lead from it to fail the calls left
/// (its own results free their slots without a read-modify-write, so
/// nobody may claim them meanwhile) and returns promptly, and the wait
/// ends with `Disconnected` for each call in flight.
#[test]
fn a_disconnect_while_a_pipeline_waits_fails_its_calls_promptly() {
    run_bounded(LIMIT, || {
        let config = EndpointConfig {
            // Disconnect gives up on the lead only after this long.
            hangup_timeout: Duration::from_secs(5),
            ..EndpointConfig::default()
        };
        let (controller, executor) = pair(true, None, config);
        let (echo, silent) = (tag(&controller, "echo"), tag(&controller, "silent"));
        let mut pipe = controller.pipeline();
        // Results read by the pipeline: its slots are leased now.
        for i in 0..8u8 {
            pipe.submit(echo, &[i]);
        }
        for i in 0..8u8 {
            assert_eq!(pipe.next().unwrap().unwrap().as_slice(), &[i]);
        }
        for _ in 0..4 {
            pipe.submit(silent, b"");
        }
        pipe.flush();
        let disconnecter = {
            let controller = controller.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                let start = Instant::now();
                controller.disconnect();
                start.elapsed()
            })
        };
        for i in 0..4 {
            assert_eq!(
                pipe.next(),
                Some(Err(CallError::Disconnected)),
                "silent call {i}"
            );
        }
        assert!(pipe.next().is_none());
        let took = disconnecter.join().unwrap();
        assert!(
            took < Duration::from_secs(4),
            "disconnect took {took:?}: it waited for the lead the pipeline held"
        );
        assert_eq!(controller.pending_calls(), 0);
        drop(pipe);
        executor.disconnect();
    });
}

/// Two calls sent in one batch and read by one worker in one turn: the
/// second's handler blocks until the controller has the first's result.
/// The first result is sent although the worker that ran its handler is
/// stuck in the second (an idle worker sends it), rounds after round.
#[test]
fn a_result_is_not_held_back_by_a_blocking_handler_of_its_batch() {
    run_bounded(LIMIT, || {
        let seen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&seen);
        let (controller, executor) = connect_pair(
            shm_pair(ShmConfig::default()),
            ExecutorBuilder::new()
                .sync_function("echo", WrapperFunctionBuffer::from_slice)
                .sync_function("wait_for_first", move |_| {
                    let start = Instant::now();
                    while !flag.swap(false, Ordering::AcqRel) {
                        if start.elapsed() > Duration::from_secs(10) {
                            return WrapperFunctionBuffer::out_of_band_error("never released");
                        }
                        thread::sleep(Duration::from_micros(100));
                    }
                    WrapperFunctionBuffer::from_slice(b"released")
                }),
            ControllerBuilder::new(),
            None,
        );
        let (echo, wait) = (tag(&controller, "echo"), tag(&controller, "wait_for_first"));
        let mut pipe = controller.pipeline();
        let mut slowest = Duration::ZERO;
        for round in 0..30u8 {
            let start = Instant::now();
            pipe.submit(echo, &[round]);
            pipe.submit(wait, b"");
            assert_eq!(pipe.next().unwrap().unwrap().as_slice(), &[round]);
            slowest = slowest.max(start.elapsed());
            seen.store(true, Ordering::Release);
            assert_eq!(pipe.next().unwrap().unwrap().as_slice(), b"released");
        }
        // An idle worker looks within its idle period (100 ms) at worst.
        assert!(
            slowest < Duration::from_secs(2),
            "a result waited {slowest:?} behind a blocking handler"
        );
        controller.disconnect();
        executor.disconnect();
    });
}

/// A call read in the same batch as a handler that blocks until that call
/// has run: another worker takes it over (steals the rest of the batch),
/// so the two finish, round after round — once with handlers that return
/// their result, once with handlers that answer through their responder.
#[test]
fn a_call_behind_a_blocking_handler_of_its_batch_still_runs() {
    for responder in [false, true] {
        run_bounded(LIMIT, move || {
            let ran = Arc::new(AtomicBool::new(false));
            let (set, wait) = (Arc::clone(&ran), Arc::clone(&ran));
            let wait_for_next = move || {
                let start = Instant::now();
                while !wait.swap(false, Ordering::AcqRel) {
                    if start.elapsed() > Duration::from_secs(10) {
                        return WrapperFunctionBuffer::out_of_band_error("the next call never ran");
                    }
                    thread::sleep(Duration::from_micros(100));
                }
                WrapperFunctionBuffer::from_slice(b"released")
            };
            let set_flag = move || {
                set.store(true, Ordering::Release);
                WrapperFunctionBuffer::from_slice(b"set")
            };
            let builder = if responder {
                ExecutorBuilder::new()
                    .function("wait_for_next", move |_, r| r.respond(wait_for_next()))
                    .function("set", move |_, r| r.respond(set_flag()))
            } else {
                ExecutorBuilder::new()
                    .sync_function("wait_for_next", move |_| wait_for_next())
                    .sync_function("set", move |_| set_flag())
            };
            let (controller, executor) = connect_pair(
                shm_pair(ShmConfig::default()),
                builder,
                ControllerBuilder::new(),
                None,
            );
            let (wait, set) = (tag(&controller, "wait_for_next"), tag(&controller, "set"));
            let mut pipe = controller.pipeline();
            let mut slowest = Duration::ZERO;
            for _ in 0..20 {
                let start = Instant::now();
                pipe.submit(wait, b"");
                pipe.submit(set, b"");
                assert_eq!(pipe.next().unwrap().unwrap().as_slice(), b"released");
                assert_eq!(pipe.next().unwrap().unwrap().as_slice(), b"set");
                slowest = slowest.max(start.elapsed());
            }
            // A stuck batch is seen by two looks of an idle worker, the
            // first within its idle period (100 ms) at worst.
            assert!(
                slowest < Duration::from_secs(2),
                "a call waited {slowest:?} behind a blocking handler of its batch"
            );
            controller.disconnect();
            executor.disconnect();
        });
    }
}

/// A handler that answers through its responder and then blocks until
/// the controller has that answer, followed by another call in the same
/// batch: the answer, held with the batch's results, is sent anyway (an
/// idle worker takes it), round after round.
#[test]
fn an_answer_given_before_a_handler_blocks_is_not_held_back() {
    run_bounded(LIMIT, || {
        // Rounds whose answer the controller has: a handler of round `r`
        // (its argument) returns once this passes `r`. (Not a flag to
        // consume: the handler of one round may still be polling when the
        // next round's starts.)
        let seen = Arc::new(AtomicU8::new(0));
        let answered = Arc::clone(&seen);
        let (controller, executor) = connect_pair(
            shm_pair(ShmConfig::default()),
            ExecutorBuilder::new()
                .sync_function("echo", WrapperFunctionBuffer::from_slice)
                .function("answer_then_wait", move |args, responder| {
                    responder.respond(WrapperFunctionBuffer::from_slice(b"answered"));
                    let round = args.as_slice()[0];
                    let start = Instant::now();
                    while answered.load(Ordering::Acquire) <= round {
                        if start.elapsed() > Duration::from_secs(10) {
                            return;
                        }
                        thread::sleep(Duration::from_micros(100));
                    }
                }),
            ControllerBuilder::new(),
            None,
        );
        let (answer, echo) = (
            tag(&controller, "answer_then_wait"),
            tag(&controller, "echo"),
        );
        let mut pipe = controller.pipeline();
        let mut slowest = Duration::ZERO;
        for round in 0..20u8 {
            let start = Instant::now();
            pipe.submit(answer, &[round]);
            pipe.submit(echo, &[round]);
            assert_eq!(pipe.next().unwrap().unwrap().as_slice(), b"answered");
            slowest = slowest.max(start.elapsed());
            seen.store(round + 1, Ordering::Release);
            assert_eq!(pipe.next().unwrap().unwrap().as_slice(), &[round]);
        }
        assert!(
            slowest < Duration::from_secs(2),
            "an answer waited {slowest:?} behind its own handler"
        );
        controller.disconnect();
        executor.disconnect();
    });
}

/// A result over the connection's message limit comes back as an error
/// result saying so, alone (a synchronous call) or in the middle of a
/// batch (the outbox), and the results around it still arrive.
#[test]
fn a_result_over_the_limit_is_an_error_result_and_the_rest_still_arrive() {
    for shm in [true, false] {
        run_bounded(LIMIT, move || {
            let (controller, executor) = connect_pair(
                transports(shm),
                ExecutorBuilder::new()
                    .sync_function("echo", WrapperFunctionBuffer::from_slice)
                    .sync_function("huge", |_| {
                        WrapperFunctionBuffer::from_vec(vec![7; 300 << 10])
                    })
                    .function("huge_later", |_, responder| {
                        responder.respond(WrapperFunctionBuffer::from_vec(vec![7; 300 << 10]))
                    }),
                ControllerBuilder::new(),
                None,
            );
            let (echo, huge, later) = (
                tag(&controller, "echo"),
                tag(&controller, "huge"),
                tag(&controller, "huge_later"),
            );
            let too_large = |r: Result<WrapperFunctionBuffer, CallError>| {
                let r = r.unwrap();
                assert!(
                    r.error_message()
                        .is_some_and(|m| m.contains("exceeds the connection's message limit")),
                    "shm {shm}: {:?}",
                    r.error_message()
                );
            };
            too_large(controller.call_sync(huge, b""));
            for _ in 0..20 {
                let mut pipe = controller.pipeline();
                for (i, t) in [echo, huge, echo, later, echo].into_iter().enumerate() {
                    pipe.submit(t, &[i as u8]);
                }
                for (i, r) in pipe.enumerate() {
                    if i % 2 == 1 {
                        too_large(r);
                    } else {
                        assert_eq!(r.unwrap().as_slice(), &[i as u8], "shm {shm}");
                    }
                }
            }
            controller.disconnect();
            executor.disconnect();
        });
    }
}
