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
//! cargo run --release -p orcwire-tools --example pinned_pipeline -- [CALLS]
//! ```
//! Every reply is checked against its argument.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use orcwire::{ControllerBuilder, ExecutorBuilder, PendingCall, Transport, WrapperFunctionBuffer};
use orcwire_shm::{
    required_size, HeapMapping, SharedMapping, ShmConfig, ShmTransport, WaitStrategy,
};
use orcwire_tools::bench::{allowed_cpus, pin_current_thread};

/// Calls kept in flight by the pipelined loop.
const WINDOW: usize = 64;

fn main() -> Result<(), String> {
    let calls: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|e| format!("CALLS: {e}"))?,
        None => 500_000,
    };
    let cpus = allowed_cpus();
    let [controller_cpu, executor_cpu, ..] = cpus[..] else {
        return Err(format!("needs two CPUs to pin to; allowed: {cpus:?}"));
    };
    let config = ShmConfig {
        wait: WaitStrategy::lowest_latency(),
        ..ShmConfig::default()
    };
    let mapping: Arc<dyn SharedMapping> =
        Arc::new(HeapMapping::new(required_size(&config)).map_err(|e| e.to_string())?);
    let c: Arc<dyn Transport> =
        Arc::new(ShmTransport::create(Arc::clone(&mapping), config).map_err(|e| e.to_string())?);
    let e: Arc<dyn Transport> =
        Arc::new(ShmTransport::attach(mapping, config).map_err(|e| e.to_string())?);
    // The executor connects (sends its Setup) from a thread pinned to its
    // CPU, so its workers start there.
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
        for i in 0..calls / 2 {
            let mut arg = [0u8; 64];
            arg[..8].copy_from_slice(&i.to_le_bytes());
            check(controller.call_sync(tag, &arg), &arg)?;
        }
        let rtt = start.elapsed();
        println!(
            "round {round}: pipelined 1 thread x {WINDOW}: {:.2} M calls/s; round trip mean {:.0} ns",
            calls as f64 / pipelined.as_secs_f64() / 1e6,
            rtt.as_nanos() as f64 / (calls / 2).max(1) as f64
        );
    }
    controller.disconnect();
    executor.disconnect();
    Ok(())
}
