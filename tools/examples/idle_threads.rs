//! What an idle connection's threads cost on the controller's side: which
//! threads a connection runs, how often each wakes and how much CPU it
//! uses while no call is made, for the shared-memory transport (default
//! wait preset) and the pipe transport. The executor is a child process,
//! as in `orcwire bench`; calls in both directions first start every
//! thread the connection uses.
//!
//! ```text
//! cargo run --release -p orcwire-tools --example idle_threads -- [SECONDS]
//! ```
//! Counts come from `/proc/self/task` (context switches, CPU ticks).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use orcwire_tools::bench::{run_child_if_requested, Direction, Peer, TransportKind};

/// One thread's counters.
#[derive(Clone, Copy, Default)]
struct Counters {
    switches: u64,
    ticks: u64,
}

/// Every thread of this process: id → (name, counters).
fn snapshot() -> BTreeMap<u64, (String, Counters)> {
    let mut threads = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let path = entry.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        // Fields 14 and 15 of `stat` (user and system ticks), counted after
        // the command name's closing parenthesis.
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let ticks = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        threads.insert(tid, (name.trim().to_string(), Counters { switches, ticks }));
    }
    threads
}

fn run(seconds: u64) -> Result<(), String> {
    let tick_ms = 1000.0 / 100.0; // USER_HZ is 100 on Linux
    for kind in [TransportKind::ShmBalanced, TransportKind::Pipe] {
        let mut peer = Peer::spawn(kind, None).map_err(|e| e.to_string())?;
        for direction in [Direction::ToExecutor, Direction::ToController] {
            peer.rtt(direction, 64, 1000).map_err(|e| e.to_string())?;
        }
        let before = snapshot();
        std::thread::sleep(Duration::from_secs(seconds));
        let after = snapshot();
        println!(
            "{}: the controller's threads over {seconds} s idle",
            kind.name()
        );
        for (tid, (name, now)) in &after {
            let then = before.get(tid).map(|(_, c)| *c).unwrap_or_default();
            let wakes = now.switches.saturating_sub(then.switches);
            let cpu = now.ticks.saturating_sub(then.ticks) as f64 * tick_ms;
            println!(
                "  {name:<18} {:>8.1} wake-ups/s  {cpu:>6.0} ms CPU",
                wakes as f64 / seconds as f64
            );
        }
        peer.finish().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Some(code) = run_child_if_requested() {
        return code;
    }
    let seconds = match std::env::args().nth(1).map(|s| s.parse::<u64>()) {
        None => 5,
        Some(Ok(n)) if n > 0 => n,
        _ => {
            eprintln!("SECONDS: a whole number above 0");
            return ExitCode::FAILURE;
        }
    };
    match run(seconds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle_threads: {e}");
            ExitCode::FAILURE
        }
    }
}
