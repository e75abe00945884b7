//! Round trips of one payload size between two endpoints in one process,
//! the controller's threads pinned to one CPU and the executor's to
//! another, over a heap-backed shared-memory segment: the loop behind the
//! large-message analysis in `docs/BENCHMARKS.md` ("2026-11-30, large
//! messages"), small enough to run under `perf record -a`, `perf sched`
//! or `strace -f`.
//!
//! ```text
//! cargo run --release -p orcwire-tools --example pinned_round_trip -- [BYTES] [CALLS] [SPIN_US]
//! ```
//! Defaults: 1 MiB, 1,000 calls, a 50 µs spin budget (the spin preset).
//! Prints p50/p90/p99/max of three rounds; every reply is checked.

use std::time::{Duration, Instant};

use orcwire_shm::{ShmConfig, WaitStrategy};
use orcwire_tools::bench::PinnedEchoPair;

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
    let pair = PinnedEchoPair::connect(config)?;
    let (controller, tag) = (&pair.controller, pair.echo);
    let (controller_cpu, executor_cpu) = (pair.cpus.controller, pair.cpus.child);
    println!("controller on CPU {controller_cpu}, executor on CPU {executor_cpu}, {calls} round trips of {size} B, spin {spin:?}");
    let mut arg: Vec<u8> = (0..size).map(|i| (i * 7 + 1) as u8).collect();
    for round in 1..=3 {
        let mut samples = Vec::with_capacity(calls);
        for i in 0..calls {
            if let Some(b) = arg.first_mut() {
                *b = i as u8;
            }
            let t = Instant::now();
            let got = controller.call_sync(tag, &arg).map_err(|e| e.to_string())?;
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
    pair.disconnect();
    Ok(())
}
