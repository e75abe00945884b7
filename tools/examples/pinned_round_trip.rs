//! Round trips of one payload size between two endpoints in one process,
//! the controller's threads pinned to one CPU and the executor's to
//! another, over a heap-backed shared-memory segment: the loop behind the
//! large-message analysis in `docs/BENCHMARKS.md` ("2026-11-30, large
//! messages"), small enough to run under `perf record -a`, `perf sched`
//! or `strace -f`.
//!
//! ```text
//! cargo run --release -p orcwire-tools --example pinned_round_trip -- [BYTES] [CALLS] [SPIN_US] [to-executor|to-controller] [ROUNDS]
//! ```
//! Defaults: 1 MiB, 1,000 calls, a 50 µs spin budget (the spin preset),
//! the controller calling the executor, three rounds.
//! Prints p50/p90/p99/max of each round; every reply is checked.

use std::time::{Duration, Instant};

use orcwire::{Endpoint, HandlerTag};
use orcwire_shm::{ShmConfig, WaitStrategy};
use orcwire_tools::bench::{pin_current_thread, PinnedEchoPair};

fn arg(n: usize, default: u64) -> Result<u64, String> {
    match std::env::args().nth(n) {
        Some(s) => s.parse().map_err(|e| format!("argument {n}: {e}")),
        None => Ok(default),
    }
}

fn main() -> Result<(), String> {
    let size = arg(1, 1 << 20)? as usize;
    let calls = arg(2, 1000)?.max(1) as usize;
    let spin = Duration::from_micros(arg(3, 50)?);
    let config = ShmConfig {
        wait: WaitStrategy::spin_for(spin),
        max_message_size: (size as u64).max(ShmConfig::default().max_message_size),
        ..ShmConfig::default()
    };
    let to_controller = match std::env::args().nth(4).as_deref() {
        None | Some("to-executor") => false,
        Some("to-controller") => true,
        Some(other) => return Err(format!("direction {other:?}: to-executor or to-controller")),
    };
    let rounds = arg(5, 3)?.max(1) as usize;
    let pair = PinnedEchoPair::connect(config)?;
    let cpus = pair.cpus;
    println!(
        "controller on CPU {}, executor on CPU {}, {calls} round trips of {size} B {}, spin {spin:?}",
        cpus.controller,
        cpus.child,
        if to_controller { "to the controller" } else { "to the executor" }
    );
    let result = if to_controller {
        // The executor calls, from a thread on its own CPU.
        std::thread::scope(|s| {
            s.spawn(|| {
                pin_current_thread(cpus.child)?;
                round_trips(&pair.executor, pair.ctl_echo, size, calls, rounds)
            })
            .join()
            .unwrap_or_else(|_| Err("the calling thread panicked".into()))
        })
    } else {
        round_trips(&pair.controller, pair.echo, size, calls, rounds)
    };
    pair.disconnect();
    result
}

/// `rounds` rounds of `calls` echo round trips of `size` bytes on `ep`.
fn round_trips(
    ep: &Endpoint,
    tag: HandlerTag,
    size: usize,
    calls: usize,
    rounds: usize,
) -> Result<(), String> {
    let mut arg: Vec<u8> = (0..size).map(|i| (i * 7 + 1) as u8).collect();
    for round in 1..=rounds {
        let mut samples = Vec::with_capacity(calls);
        for i in 0..calls {
            if let Some(b) = arg.first_mut() {
                *b = i as u8;
            }
            let t = Instant::now();
            let got = ep.call_sync(tag, &arg).map_err(|e| e.to_string())?;
            samples.push(t.elapsed());
            if got.as_slice() != arg.as_slice() {
                return Err(format!("call {i}: wrong reply of {} bytes", got.len()));
            }
        }
        samples.sort_unstable();
        let at = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)];
        println!(
            "round {round}: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
            at(50),
            at(90),
            at(99),
            samples[samples.len() - 1]
        );
    }
    Ok(())
}
