//! Pipelined and round-trip 64 B echo calls between two endpoints in one
//! process, the controller's threads pinned to one CPU and the executor's
//! to another, over a heap-backed shared-memory segment.
//!
//! `orcwire bench` measures across two processes; this loop isolates the
//! same path for a profiler: with `perf record -a`, the samples of CPU
//! `--executor-cpu` are the executor's alone (its worker threads inherit
//! the pinning of the thread that connected it). `docs/BENCHMARKS.md`
//! ("2026-11-30") used it to find which side sets the pipelined pace.
//!
//! ```text
//! cargo run --release -p orcwire-tools --example pinned_pipeline -- [CALLS] [pipelined]
//! ```
//! With `pipelined` the round-trip loop is left out (for a profile of the
//! pipelined loop alone).
//! Every reply is checked against its argument.

use std::collections::VecDeque;
use std::time::Instant;

use orcwire::{PendingCall, WrapperFunctionBuffer};
use orcwire_shm::{ShmConfig, WaitStrategy};
use orcwire_tools::bench::PinnedEchoPair;

/// Calls kept in flight by the pipelined loop.
const WINDOW: usize = 64;

fn main() -> Result<(), String> {
    let calls: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|e| format!("CALLS: {e}"))?,
        None => 500_000,
    };
    let round_trips = std::env::args().nth(2).as_deref() != Some("pipelined");
    let config = ShmConfig {
        wait: WaitStrategy::lowest_latency(),
        ..ShmConfig::default()
    };
    let pair = PinnedEchoPair::connect(config)?;
    let (controller, tag) = (&pair.controller, pair.echo);
    let (controller_cpu, executor_cpu) = (pair.cpus.controller, pair.cpus.child);
    println!("controller on CPU {controller_cpu}, executor on CPU {executor_cpu}, {calls} calls of 64 B per loop");
    let check = |got: Result<WrapperFunctionBuffer, orcwire::CallError>, arg: &[u8]| match got {
        Ok(r) if r.as_slice() == arg => Ok(()),
        Ok(r) => Err(format!("wrong reply of {} bytes", r.len())),
        Err(e) => Err(format!("call failed: {e}")),
    };
    for round in 1..=3 {
        let mut in_flight: VecDeque<(PendingCall, [u8; 64])> = VecDeque::with_capacity(WINDOW);
        let start = Instant::now();
        for i in 0..calls {
            if in_flight.len() == WINDOW {
                if let Some((call, arg)) = in_flight.pop_front() {
                    check(call.wait(), &arg)?;
                }
            }
            let mut arg = [0u8; 64];
            arg[..8].copy_from_slice(&i.to_le_bytes());
            let call = controller.call(tag, &arg).map_err(|e| e.to_string())?;
            in_flight.push_back((call, arg));
        }
        while let Some((call, arg)) = in_flight.pop_front() {
            check(call.wait(), &arg)?;
        }
        let pipelined = start.elapsed();
        let start = Instant::now();
        let rtt_calls = if round_trips { calls / 2 } else { 0 };
        for i in 0..rtt_calls {
            let mut arg = [0u8; 64];
            arg[..8].copy_from_slice(&i.to_le_bytes());
            check(controller.call_sync(tag, &arg), &arg)?;
        }
        let rtt = start.elapsed();
        println!(
            "round {round}: pipelined 1 thread x {WINDOW}: {:.2} M calls/s; round trip mean {:.0} ns",
            calls as f64 / pipelined.as_secs_f64() / 1e6,
            rtt.as_nanos() as f64 / rtt_calls.max(1) as f64
        );
    }
    pair.disconnect();
    Ok(())
}
