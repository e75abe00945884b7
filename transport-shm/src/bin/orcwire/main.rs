//! `orcwire`: the demo, the executor role, and the benchmark driver.
//!
//! Run `orcwire --help` for the commands.

mod bench;
mod common;
mod demo;
mod executor;

use std::process::ExitCode;

const HELP: &str = "\
orcwire — wrapper-function calls between a JIT controller and an executor
process over shared memory.

USAGE:
    orcwire [demo] [OPTIONS]        (the default) spawn this binary as the
                                    executor over shared memory, call both
                                    ways, print what was done and a latency
                                    summary; exit 0 when every result checked
    orcwire executor [OPTIONS]      the executor role: attach to the segment
                                    inherited from `orcwire demo` (or any
                                    ExecutorCommand), or to a controller
                                    listening on --connect PATH; serve until
                                    the controller disconnects or dies
    orcwire bench [--quick] [--json PATH] [--wait spin|balanced|block]
                                    measure every transport next to the
                                    pipe transport and the raw floor (an
                                    atomic ping-pong over a memfd) in one
                                    run: round trips of 8 B .. 1 MiB both
                                    ways, pipelined calls from 1 and 4
                                    threads; prints p50/p99/p99.9, calls/s
                                    and the ratios. --quick: under 60 s;
                                    --json: one object per case; --wait:
                                    only that shm preset; --no-pin: leave
                                    CPU placement to the scheduler
    orcwire --help                  this text

OPTIONS (both roles):
    --wait spin|balanced|block      how a blocked side waits: spin long
                                    (lowest latency), spin briefly then
                                    futex (default), or futex at once
                                    (lowest CPU)
    --ring BYTES                    ring capacity per direction, a power of
                                    two (default 1048576); controller only
    --dispatch inline|pool          where incoming calls run: inline on the
                                    thread that read them, once it has
                                    handed over reading (default; no thread
                                    hop, lowest latency), or on a pool of 2
                                    worker threads (handlers that block for
                                    long do not delay other calls)
OPTIONS (demo):
    --calls N                       latency samples per direction
                                    (default 20000)
OPTIONS (executor):
    --connect PATH                  attach to a controller's ShmListener at
                                    PATH instead of inherited fds

The executor publishes these wrapper functions: echo, sum (u64 byte sum and
length), call_controller (makes N calls to the controller's ctl_echo and
reports their latency), exit_now (exits without disconnecting; for fault
demos). It calls the controller handlers ctl_echo and log.
";

fn main() -> ExitCode {
    // A child of `orcwire bench` serves its case and nothing else.
    if let Some(code) = orcwire_shm::bench::run_child_if_requested() {
        return code;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let (cmd, rest) = match args.first().map(String::as_str) {
        Some("demo") => ("demo", &args[1..]),
        Some("executor") => ("executor", &args[1..]),
        Some("bench") => return bench::run(&args[1..]),
        Some(a) if !a.starts_with('-') => {
            eprintln!("orcwire: unknown command {a:?}; see `orcwire --help`");
            return ExitCode::from(2);
        }
        _ => ("demo", &args[..]),
    };
    let opts = match common::Options::parse(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("orcwire: {e}; see `orcwire --help`");
            return ExitCode::from(2);
        }
    };
    match cmd {
        "executor" => executor::run(&opts),
        _ => demo::run(&opts),
    }
}
