//! `orcwire`: the demo, the executor role, the benchmark driver and the
//! segment inspector.
//!
//! Run `orcwire --help` (or `orcwire SUBCOMMAND --help`) for the commands.
//! Exit codes: 0 success, 1 a failure (a demo result that did not check
//! out, a benchmark that could not run, no segment found), 2 a usage
//! error, 4 an executor whose controller died.

mod bench;
mod bench_llvm;
mod common;
mod demo;
mod executor;
mod inspect;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use common::{BenchArgs, BenchLlvmArgs, DemoArgs, ExecutorArgs, InspectArgs};

const AFTER_HELP: &str = "\
With no subcommand, `orcwire [OPTIONS]` runs the demo with those options.

The executor publishes these wrapper functions: echo, sum (u64 byte sum and
length), call_controller (makes N calls to the controller's ctl_echo and
reports their latency), exit_now (exits without disconnecting; for fault
demos). It calls the controller handlers ctl_echo and log.";

/// orcwire: wrapper-function calls between a JIT controller and an
/// executor process over shared memory.
#[derive(Debug, Parser)]
#[command(
    name = "orcwire",
    version,
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The demo's options, when no subcommand is given.
    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the demo (the default): spawn an executor, call both ways
    ///
    /// Spawns this binary as the executor over shared memory, calls both
    /// ways, prints what was done and a latency summary; exits 0 when
    /// every result checked.
    Demo(DemoArgs),
    /// Serve as the executor of `orcwire demo` or of a listening controller
    ///
    /// Attaches to the segment inherited from `orcwire demo` (or any
    /// ExecutorCommand), or to a controller listening on --connect PATH,
    /// and serves until the controller disconnects (exit 0) or dies
    /// (exit 4).
    Executor(ExecutorArgs),
    /// Measure every transport next to the pipe transport and the raw floor
    ///
    /// One run measures the shared-memory transport under each wait
    /// preset, the stream transport over pipes and a Unix socket, the raw
    /// floor (an atomic ping-pong over a memfd) and shm-raw (the
    /// shared-memory transport with no engine on either side, pipelined
    /// calls from 1 thread to the child): round trips of 8 B .. 1 MiB both
    /// ways and pipelined calls from 1 and 4 threads, every result
    /// checked. Prints p50/p99/p99.9, calls/s and the ratios to the floor
    /// (round trips: the floor; pipelined shm-*: shm-raw) and to the pipe.
    Bench(BenchArgs),
    /// Measure orcwire against LLVM's own programs over pipes
    ///
    /// Per-call p50 of an orcwire controller calling an unmodified
    /// llvm-jitlink-executor, next to LLVM's own SimpleRemoteEPC
    /// controller calling the same executor the same way (the C++ program
    /// in interop/llvm, built with g++ against libLLVM), in one run, the
    /// two pairings alternating. The call: mem_write_uint8s with no
    /// writes, the cheapest wrapper the executor serves.
    BenchLlvm(BenchLlvmArgs),
    /// Show the live orcwire connections of a running process, read-only
    ///
    /// Finds the process's segments through /proc/PID/fd (your own
    /// processes only), maps each read-only and prints the header, the
    /// state flags and epoch, who sleeps on which futex, each ring's
    /// capacity, head, tail and bytes in flight, and whether both pids are
    /// alive. Exits 0 when a segment was found, 1 when none.
    Inspect(InspectArgs),
}

fn main() -> ExitCode {
    // A child of `orcwire bench` serves its case and nothing else: it is
    // this same binary re-run with a variable set, and ignores its command
    // line, so this comes before any parsing.
    if let Some(code) = orcwire_tools::bench::run_child_if_requested() {
        return code;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors go to stderr with exit code 2, --help and
            // --version to stdout with 0: clap's usual behaviour.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match cli.command {
        None => demo::run(&cli.demo),
        Some(Command::Demo(args)) => demo::run(&args),
        Some(Command::Executor(args)) => executor::run(&args),
        Some(Command::Bench(args)) => bench::run(&args),
        Some(Command::BenchLlvm(args)) => bench_llvm::run(&args),
        Some(Command::Inspect(args)) => inspect::run(&args),
    }
}
