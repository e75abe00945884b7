//! Criterion suite: round-trip latency over every transport and the raw
//! floor, pipelined throughput from one and four threads, both directions.
//!
//! Every case runs between two real processes: this bench binary re-runs
//! itself as the child (see `orcwire_tools::bench`), so
//! `run_child_if_requested` comes first in `main` and criterion's own
//! arguments never reach the child. Every result is checked before and
//! while it is timed; a wrong result panics the bench.
//!
//! ```text
//! cargo bench --bench transports                      # everything
//! cargo bench --bench transports -- rtt/to-executor   # a filter
//! cargo bench --bench transports -- --quick
//! ```
//! `orcwire bench` prints the same comparison as one table with ratios.

use std::process::ExitCode;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use orcwire_tools::bench::{
    pin_current_thread, run_child_if_requested, Direction, Peer, Pinning, TransportKind,
};

const PAYLOADS: [usize; 5] = [8, 64, 4 << 10, 64 << 10, 1 << 20];
const WINDOW: usize = 64;

fn peer(kind: TransportKind, pinning: Option<Pinning>) -> Peer {
    match Peer::spawn(kind, pinning.map(|p| p.child)) {
        Ok(p) => p,
        Err(e) => panic!("starting the {kind} child: {e}"),
    }
}

fn rtt(c: &mut Criterion, pinning: Option<Pinning>) {
    for direction in [Direction::ToExecutor, Direction::ToController] {
        let mut group = c.benchmark_group(format!("rtt/{}", direction.name()));
        for kind in TransportKind::ALL {
            if !kind.measures_rtt(direction) {
                continue; // the floor is symmetric; shm-raw is pipelined only
            }
            let mut p = peer(kind, pinning);
            let sizes = if kind.is_floor() {
                [0].into_iter().chain(PAYLOADS).collect::<Vec<_>>()
            } else {
                PAYLOADS.to_vec()
            };
            for payload in sizes {
                // Checked before timing (the run also checks every reply).
                if let Err(e) = p.rtt(direction, payload, 3) {
                    panic!("{kind} {payload} B: {e}");
                }
                group.throughput(Throughput::Bytes(2 * payload as u64));
                group.bench_function(BenchmarkId::new(kind.name(), payload), |b| {
                    b.iter_custom(|iters| match p.rtt(direction, payload, iters as usize) {
                        Ok(s) => Duration::from_nanos(s.iter().sum()),
                        Err(e) => panic!("{kind} {payload} B: {e}"),
                    })
                });
            }
            if let Err(e) = p.finish() {
                panic!("{kind}: {e}");
            }
        }
        group.finish();
    }
}

fn pipelined(c: &mut Criterion, pinning: Option<Pinning>) {
    for direction in [Direction::ToExecutor, Direction::ToController] {
        let mut group = c.benchmark_group(format!("pipelined/{}", direction.name()));
        group.throughput(Throughput::Elements(1));
        for kind in TransportKind::ALL {
            // Floors: none; shm-raw: 1 thread to the executor only.
            let thread_counts: Vec<usize> = [1usize, 4]
                .into_iter()
                .filter(|&t| kind.measures_throughput(direction, t))
                .collect();
            if thread_counts.is_empty() {
                continue;
            }
            let mut p = peer(kind, pinning);
            for threads in thread_counts {
                if let Err(e) = p.throughput(direction, 64, threads, WINDOW, threads * WINDOW) {
                    panic!("{kind} pipelined: {e}");
                }
                let id = BenchmarkId::new(kind.name(), format!("64B-{threads}t-x{WINDOW}"));
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        // At least one window per thread, so every thread
                        // actually pipelines; the time is per call.
                        let calls = (iters as usize).max(threads * WINDOW);
                        // Every thread makes the same number of calls
                        // (rounded up); one in SAMPLE_EVERY is sampled,
                        // so the samples do not count them.
                        let made = calls.div_ceil(threads) * threads;
                        match p.throughput(direction, 64, threads, WINDOW, calls) {
                            Ok((_, took)) => took.mul_f64(iters as f64 / made as f64),
                            Err(e) => panic!("{kind} pipelined: {e}"),
                        }
                    })
                });
            }
            if let Err(e) = p.finish() {
                panic!("{kind}: {e}");
            }
        }
        group.finish();
    }
}

fn main() -> ExitCode {
    if let Some(code) = run_child_if_requested() {
        return code;
    }
    let pinning = Pinning::choose();
    if let Some(p) = pinning {
        if let Err(e) = pin_current_thread(p.controller) {
            eprintln!("not pinned: {e}");
        } else {
            eprintln!(
                "pinned: bench process on CPU {}, child processes on CPU {}",
                p.controller, p.child
            );
        }
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    rtt(&mut c, pinning);
    pipelined(&mut c, pinning);
    c.final_summary();
    ExitCode::SUCCESS
}
