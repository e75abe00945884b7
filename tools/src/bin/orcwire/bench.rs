//! `orcwire bench`: every transport next to the pipe transport, the raw
//! floors and the transport with no engine (`shm-raw`), measured in one
//! run; see `orcwire_tools::bench`. A progress
//! bar over the cases goes to stderr (when it is a terminal), the table to
//! stdout, and optionally the JSON report and the SVG chart to files.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orcwire_tools::bench::{
    ratios, run_suite, to_json, CaseResult, Mode, Pinning, SuiteConfig, TransportKind,
};
use orcwire_tools::plot::write_svg;

use crate::common::{BenchArgs, WaitPreset};

/// The suite configuration the options ask for.
fn config(args: &BenchArgs) -> SuiteConfig {
    let mut config = if args.quick {
        SuiteConfig::quick()
    } else {
        SuiteConfig::full()
    };
    if let Some(p) = &args.payloads {
        config.payloads = p.0.clone();
    }
    if let Some(ms) = args.case_ms {
        config.case_time = Duration::from_millis(ms.max(1));
    }
    if let Some(w) = args.wait {
        let keep = match w {
            WaitPreset::Spin => TransportKind::ShmSpin,
            WaitPreset::Balanced => TransportKind::ShmBalanced,
            WaitPreset::Block => TransportKind::ShmBlock,
        };
        config.transports.retain(|k| {
            !matches!(
                k,
                TransportKind::ShmSpin | TransportKind::ShmBalanced | TransportKind::ShmBlock
            ) || *k == keep
        });
    }
    if let Some(only) = &args.only {
        config.transports = only.0.clone();
    }
    if args.no_pin {
        config.pinning = None;
    }
    config
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
        "÷floor: round trips: p50 over the same-size floor round trip (spin floor; futex floor \
         for shm-block); pipelined shm-* (any threads, either direction): shm-raw's calls/s \
         (1 thread, same payload and window) over this case's (1.00× = the transport with no \
         engine); each against the reference measured in its own direction's pass (floors and \
         shm-raw always run controller → child; their direction names the pass); vs pipe: \
         times faster than the pipe transport in the same case."
    );
}

fn case_name(case: &CaseResult) -> String {
    format!(
        "{} {} {} {}",
        case.transport.name(),
        case.direction.name(),
        size(case.payload),
        mode(case)
    )
}

/// The progress bar over the cases: on stderr, drawn only when stderr is a
/// terminal (indicatif hides it otherwise), hidden with `--quiet`.
///
/// It is redrawn only when a case ends, never from a ticker thread, so it
/// adds no thread and no wake-up to the processes being measured.
fn progress(total: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed:>4} [{bar:32}] {pos}/{len} cases  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub fn run(args: &BenchArgs) -> ExitCode {
    let c = config(args);
    println!(
        "orcwire bench{}: {} transports, payloads {:?} B, ~{} ms per case, every result checked",
        if args.quick { " --quick" } else { "" },
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
    let bar = progress(c.case_count(), args.quiet);
    bar.set_message("starting the child processes");
    let mut on_case = |case: &CaseResult| {
        bar.inc(1);
        bar.set_message(format!(
            "{}: p50 {} µs",
            case_name(case),
            us(case.summary.p50_ns)
        ));
    };
    let results = run_suite(&c, &mut on_case);
    bar.finish_and_clear();
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orcwire bench failed: {e}");
            return ExitCode::from(1);
        }
    };
    print_table(&results);
    println!(
        "{} cases in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, to_json(&results)) {
            eprintln!(
                "orcwire bench: writing {}: {e}; check that the directory exists and is writable",
                path.display()
            );
            return ExitCode::from(1);
        }
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        if let Err(e) = write_svg(&results, path) {
            eprintln!("orcwire bench: --plot: {e}");
            return ExitCode::from(1);
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
