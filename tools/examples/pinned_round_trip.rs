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

use std::sync::Arc;
use std::time::{Duration, Instant};

use orcwire::{ControllerBuilder, ExecutorBuilder, Transport, WrapperFunctionBuffer};
use orcwire_shm::{
    required_size, HeapMapping, SharedMapping, ShmConfig, ShmTransport, WaitStrategy,
};
use orcwire_tools::bench::{allowed_cpus, pin_current_thread};

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
    let cpus = allowed_cpus();
    let [controller_cpu, executor_cpu, ..] = cpus[..] else {
        return Err(format!("needs two CPUs to pin to; allowed: {cpus:?}"));
    };
    let config = ShmConfig {
        wait: WaitStrategy::spin_for(spin),
        max_message_size: (size as u64).max(ShmConfig::default().max_message_size),
        ..ShmConfig::default()
    };
    let mapping: Arc<dyn SharedMapping> =
        Arc::new(HeapMapping::new(required_size(&config)).map_err(|e| e.to_string())?);
    let c: Arc<dyn Transport> =
        Arc::new(ShmTransport::create(Arc::clone(&mapping), config).map_err(|e| e.to_string())?);
    let e: Arc<dyn Transport> =
        Arc::new(ShmTransport::attach(mapping, config).map_err(|e| e.to_string())?);
    let executor = std::thread::spawn(move || {
        pin_current_thread(executor_cpu)?;
        ExecutorBuilder::new()
            .sync_function("echo", WrapperFunctionBuffer::from_slice)
            .connect(e)
            .map_err(|e| e.to_string())
    });
    pin_current_thread(controller_cpu)?;
    let controller = ControllerBuilder::new()
        .connect(c)
        .map_err(|e| e.to_string())?;
    let executor = executor
        .join()
        .map_err(|_| "the executor's thread panicked".to_string())??;
    let tag = controller
        .function_tag("echo")
        .ok_or("the executor did not publish echo")?;
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
    controller.disconnect();
    executor.disconnect();
    Ok(())
}
