//! `orcwire bench`: every transport next to the pipe transport and the
//! raw floor, measured in one run; see `orcwire_shm::bench`.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use orcwire_shm::bench::{
    ratios, run_suite, to_json, CaseResult, Mode, Pinning, SuiteConfig, TransportKind,
};

struct BenchOptions {
    config: SuiteConfig,
    json: Option<String>,
    quick: bool,
}

fn parse(args: &[String]) -> Result<BenchOptions, String> {
    let mut config = SuiteConfig::full();
    let mut json = None;
    let mut quick = false;
    let mut wait: Option<String> = None;
    let mut case_ms: Option<u64> = None;
    let mut only: Option<String> = None;
    let mut pin = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => json = Some(value("--json")?),
            "--wait" => wait = Some(value("--wait")?),
            "--no-pin" => pin = false,
            // Not in --help: for tests that need a bounded, smaller run.
            "--case-ms" => {
                case_ms = Some(
                    value("--case-ms")?
                        .parse()
                        .map_err(|_| "--case-ms takes a number of milliseconds".to_string())?,
                )
            }
            "--only" => only = Some(value("--only")?),
            "--payloads" => {
                let list = value("--payloads")?;
                config.payloads = list
                    .split(',')
                    .filter(|p| !p.is_empty() && *p != "none")
                    .map(|p| p.parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "--payloads takes comma-separated byte counts".to_string())?;
            }
            other => return Err(format!("unknown bench option {other:?}")),
        }
    }
    if quick {
        config = SuiteConfig {
            payloads: config.payloads.clone(),
            ..SuiteConfig::quick()
        };
    }
    if let Some(ms) = case_ms {
        config.case_time = Duration::from_millis(ms.max(1));
    }
    if let Some(w) = wait {
        let keep = match w.as_str() {
            "spin" => TransportKind::ShmSpin,
            "balanced" => TransportKind::ShmBalanced,
            "block" => TransportKind::ShmBlock,
            other => {
                return Err(format!(
                    "unknown wait strategy {other:?}: use spin, balanced or block"
                ))
            }
        };
        config.transports.retain(|k| {
            !matches!(
                k,
                TransportKind::ShmSpin | TransportKind::ShmBalanced | TransportKind::ShmBlock
            ) || *k == keep
        });
    }
    if let Some(list) = only {
        let mut kinds = Vec::new();
        for name in list.split(',') {
            kinds.push(
                TransportKind::from_name(name)
                    .ok_or_else(|| format!("unknown transport {name:?}"))?,
            );
        }
        config.transports = kinds;
    }
    if !pin {
        config.pinning = None;
    }
    Ok(BenchOptions {
        config,
        json,
        quick,
    })
}

fn us(ns: u64) -> String {
    let us = ns as f64 / 1e3;
    if us < 10.0 {
        format!("{us:.2}")
    } else if us < 1000.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("—".into(), |x| {
        if x >= 100.0 {
            format!("{x:.0}×")
        } else {
            format!("{x:.2}×")
        }
    })
}

fn mode(case: &CaseResult) -> String {
    match case.mode {
        Mode::Rtt => "rtt".into(),
        Mode::Throughput { threads, window } => format!("pipelined {threads}t×{window}"),
    }
}

fn print_table(results: &[CaseResult]) {
    println!(
        "{:<13} {:<13} {:>7} {:<16} {:>9} {:>9} {:>9} {:>11} {:>8} {:>8}",
        "transport",
        "direction",
        "payload",
        "mode",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "calls/s",
        "÷floor",
        "vs pipe"
    );
    for c in results {
        let r = ratios(results, c);
        println!(
            "{:<13} {:<13} {:>7} {:<16} {:>9} {:>9} {:>9} {:>11.0} {:>8} {:>8}",
            c.transport.name(),
            c.direction.name(),
            size(c.payload),
            mode(c),
            us(c.summary.p50_ns),
            us(c.summary.p99_ns),
            us(c.summary.p999_ns),
            c.summary.ops_per_s,
            ratio(r.to_floor),
            ratio(r.vs_pipe),
        );
    }
    println!(
        "÷floor: p50 over the same-size floor round trip (spin floor; futex floor for shm-block); \
         vs pipe: times faster than the pipe transport in the same case."
    );
}

pub fn run(args: &[String]) -> ExitCode {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("orcwire bench: {e}; see `orcwire --help`");
            return ExitCode::from(2);
        }
    };
    let c = &opts.config;
    println!(
        "orcwire bench{}: {} transports, payloads {:?} B, ~{} ms per case, every result checked",
        if opts.quick { " --quick" } else { "" },
        c.transports.len(),
        c.payloads,
        c.case_time.as_millis()
    );
    match c.pinning {
        Some(Pinning { controller, child }) => {
            println!("pinned: controller process on CPU {controller}, child process on CPU {child}")
        }
        None => println!("not pinned (fewer than 2 CPUs allowed, or --no-pin)"),
    }
    let started = Instant::now();
    let mut on_case = |case: &CaseResult| {
        eprint!(".");
        let _ = std::io::stderr().flush();
        let _ = case;
    };
    let results = match run_suite(c, &mut on_case) {
        Ok(r) => r,
        Err(e) => {
            eprintln!();
            eprintln!("orcwire bench failed: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!();
    print_table(&results);
    println!(
        "{} cases in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &opts.json {
        if let Err(e) = std::fs::write(path, to_json(&results)) {
            eprintln!("orcwire bench: writing {path}: {e}");
            return ExitCode::from(1);
        }
        println!("wrote {path}");
    }
    ExitCode::SUCCESS
}
