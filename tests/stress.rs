//! Randomized stress of the call engine over shared-memory rings: sizes
//! from 0 B to 4 MiB, both directions at once, synchronous calls and bursts
//! of up to 40 through `PendingCall`s or a `Pipeline`, handlers on the
//! connection's workers, inline or on a pool of 2, 2 to 16 calling threads,
//! rings from 4 KiB. Each case runs for a bounded time; every result is
//! checked, and a watchdog asserts that completed calls never stop
//! increasing for a second or more while callers are active.
//!
//! The random choices come from a fixed seed per case (printed), so a
//! failure can be replayed.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{connect_pair, dispatchers, run_bounded, shm_pair, MakeDispatcher};
use orcwire::{ControllerBuilder, Endpoint, ExecutorBuilder, HandlerTag, WrapperFunctionBuffer};
use orcwire_shm::{RingCapacity, ShmConfig};

/// How long each case keeps calling.
const RUN: Duration = Duration::from_millis(1200);
/// Longest a call may take before the case is declared stuck.
const CALL_LIMIT: Duration = Duration::from_secs(20);
/// Progress must never stop for this long.
const MAX_STALL: Duration = Duration::from_secs(1);

/// xorshift64*: small, deterministic, good enough to pick sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Mostly small payloads, some medium, a few up to 4 MiB.
    fn size(&mut self) -> usize {
        let bucket = self.below(100);
        let max = match bucket {
            0..=59 => 128,
            60..=84 => 4 << 10,
            85..=96 => 256 << 10,
            _ => 4 << 20,
        };
        self.below(max + 1) as usize
    }
}

/// The handler on both sides: every byte flipped, then the length.
fn answer(args: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = args.iter().map(|b| b ^ 0x5a).collect();
    out.extend_from_slice(&(args.len() as u64).to_le_bytes());
    out
}

fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

fn pair(ring: usize, dispatcher: MakeDispatcher) -> (Endpoint, Endpoint) {
    let config = ShmConfig {
        ring_capacity: RingCapacity::new(ring).unwrap(),
        max_message_size: (4 << 20) + 64,
        ..ShmConfig::default()
    };
    let handler = |a: &[u8]| WrapperFunctionBuffer::from_vec(answer(a));
    connect_pair(
        shm_pair(config),
        ExecutorBuilder::new()
            .sync_function("work", handler)
            .controller_handler("work"),
        ControllerBuilder::new().sync_handler("work", handler),
        dispatcher,
    )
}

/// One calling thread: synchronous calls and pipelined bursts (through
/// `PendingCall`s or a `Pipeline`), each result checked, until `stop`.
fn caller(ep: Endpoint, tag: HandlerTag, seed: u64, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut rng = Rng(seed);
    let mut n = 0u64;
    let mut pipe = ep.pipeline();
    while !stop.load(Ordering::Relaxed) {
        let burst = if rng.below(4) == 0 {
            1 + rng.below(40)
        } else {
            1
        };
        let args: Vec<Vec<u8>> = (0..burst)
            .map(|i| payload(seed ^ (n + i) << 8, rng.size()))
            .collect();
        n += burst;
        if burst > 1 && rng.below(2) == 0 {
            for a in &args {
                pipe.submit(tag, a);
            }
            for a in &args {
                let got = pipe
                    .next_deadline(Instant::now() + CALL_LIMIT)
                    .expect("a pipelined call went missing")
                    .expect("no result");
                assert_eq!(
                    got.as_slice(),
                    &answer(a)[..],
                    "wrong pipelined result for {} bytes",
                    a.len()
                );
                done.fetch_add(1, Ordering::Relaxed);
            }
            assert_eq!(pipe.in_flight(), 0);
            continue;
        }
        let calls: Vec<_> = args
            .iter()
            .map(|a| ep.call(tag, a).expect("call refused"))
            .collect();
        for (mut call, a) in calls.into_iter().zip(&args) {
            let got = call.wait_timeout(CALL_LIMIT).expect("no result");
            assert_eq!(
                got.as_slice(),
                &answer(a)[..],
                "wrong result for {} bytes",
                a.len()
            );
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn run_case(ring: usize, name: &str, dispatcher: MakeDispatcher, seed: u64) {
    let mut rng = Rng(seed);
    let (to_exec_threads, to_ctrl_threads) = (1 + rng.below(8), 1 + rng.below(8));
    eprintln!(
        "case ring {ring} B, {name}, seed {seed:#x}: {to_exec_threads} + {to_ctrl_threads} calling threads"
    );
    let (controller, executor) = pair(ring, dispatcher);
    let to_exec = controller.function_tag("work").unwrap();
    let to_ctrl = executor.handler_tag("work").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for i in 0..to_exec_threads {
        let (ep, stop, done) = (controller.clone(), Arc::clone(&stop), Arc::clone(&done));
        threads.push(thread::spawn(move || {
            caller(ep, to_exec, seed ^ (i + 1) << 32, stop, done)
        }));
    }
    for i in 0..to_ctrl_threads {
        let (ep, stop, done) = (executor.clone(), Arc::clone(&stop), Arc::clone(&done));
        threads.push(thread::spawn(move || {
            caller(ep, to_ctrl, seed ^ (i + 100) << 32, stop, done)
        }));
    }
    // The watchdog: progress is sampled every 10 ms while callers run.
    let started = Instant::now();
    let mut last = (0, Instant::now());
    let mut worst = Duration::ZERO;
    while started.elapsed() < RUN {
        thread::sleep(Duration::from_millis(10));
        let now = done.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        worst = worst.max(last.1.elapsed());
        assert!(
            worst < MAX_STALL,
            "no call completed for {worst:?} (ring {ring}, {name}, seed {seed:#x})"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let total = done.load(Ordering::Relaxed);
    eprintln!("  {total} calls checked, longest stall {worst:?}");
    assert!(total > 0);
    controller.disconnect();
    executor.disconnect();
}

#[test]
fn random_calls_both_ways_never_stall_and_always_come_back_right() {
    let dispatchers = dispatchers();
    let mut seed = 0x0bc0_ffee_1234_5678u64;
    run_bounded(Duration::from_secs(120), move || {
        for ring in [4 << 10, 64 << 10, 1 << 20] {
            for (name, dispatcher) in dispatchers {
                seed = Rng(seed).next();
                run_case(ring, name, dispatcher, seed);
            }
        }
    });
}
