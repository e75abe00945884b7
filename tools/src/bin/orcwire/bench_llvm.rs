//! `orcwire bench-llvm`: an orcwire controller and LLVM's own controller,
//! each calling an unmodified `llvm-jitlink-executor` over two pipes, in
//! one run.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use orcwire::{ControllerBuilder, StreamConfig, StreamTransport};
use orcwire_tools::llvm::{controller_program, executor_program, pipe, spawn_at_3_and_4};

use crate::common::BenchLlvmArgs;

/// The wrapper both controllers call, with an SPS sequence of no writes.
const WRAPPER: &str = "__llvm_orc_bootstrap_mem_write_uint8s_wrapper";
const LIMIT: Duration = Duration::from_secs(120);

pub fn run(args: &BenchLlvmArgs) -> ExitCode {
    match measure(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orcwire bench-llvm: {e}");
            ExitCode::from(1)
        }
    }
}

fn measure(args: &BenchLlvmArgs) -> Result<(), String> {
    let major = args.llvm;
    let executor = executor_program(major).map_err(|e| e.to_string())?;
    let controller = controller_program(major).map_err(|e| e.to_string())?;
    println!(
        "orcwire bench-llvm: LLVM {major}, {} calls of {WRAPPER} (no writes) per pairing and round, over pipes",
        args.calls
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        let llvm = llvm_pair(&executor, &controller, args.calls)?;
        let orc = orcwire_pair(&executor, args.calls)?;
        println!(
            "  round {round}: LLVM -> LLVM p50 {:.1} µs, orcwire -> LLVM p50 {:.1} µs ({:.2}×)",
            llvm as f64 / 1e3,
            orc as f64 / 1e3,
            llvm as f64 / orc as f64
        );
        theirs.push(llvm);
        ours.push(orc);
    }
    let (m_llvm, m_ours) = (median(&mut theirs), median(&mut ours));
    println!(
        "median: LLVM's controller {:.1} µs, orcwire's controller {:.1} µs per call: orcwire {:.2}× as fast",
        m_llvm as f64 / 1e3,
        m_ours as f64 / 1e3,
        m_llvm as f64 / m_ours as f64
    );
    Ok(())
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn executor(program: &Path, to_exec: &OwnedFd, from_exec: &OwnedFd) -> Result<Child, String> {
    let mut cmd = Command::new(program);
    cmd.arg("filedescs=3,4");
    spawn_at_3_and_4(cmd, to_exec, from_exec)
        .map_err(|e| format!("spawning {}: {e}", program.display()))
}

/// Both ends of one pipe: `(read, write)`.
type Pipe = (OwnedFd, OwnedFd);

/// The pipe to the executor and the pipe from it.
fn pipes() -> Result<(Pipe, Pipe), String> {
    let p = || pipe().map_err(|e| format!("pipe: {e}"));
    Ok((p()?, p()?))
}

/// Waits for `child` at most [`LIMIT`], killing it if it overstays.
fn reap(mut child: Child, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{what} ended with {status}")),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish within {LIMIT:?}"));
            }
        }
    }
}

/// LLVM's controller against LLVM's executor: the p50 it prints.
fn llvm_pair(exec_program: &Path, controller: &Path, calls: usize) -> Result<u64, String> {
    let ((to_exec_r, to_exec_w), (from_exec_r, from_exec_w)) = pipes()?;
    let exec = executor(exec_program, &to_exec_r, &from_exec_w)?;
    let mut cmd = Command::new(controller);
    cmd.args(["3", "4", "bench", &calls.to_string()])
        .stdout(Stdio::piped());
    let ctl = spawn_at_3_and_4(cmd, &from_exec_r, &to_exec_w)
        .map_err(|e| format!("spawning LLVM's controller: {e}"))?;
    drop((to_exec_r, to_exec_w, from_exec_r, from_exec_w));
    let out = ctl
        .wait_with_output()
        .map_err(|e| format!("LLVM's controller: {e}"))?;
    reap(exec, "llvm-jitlink-executor")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("p50_ns ")?.trim().parse().ok())
        .ok_or_else(|| format!("LLVM's controller printed no p50 ({}):\n{text}", out.status))
}

/// orcwire's controller against LLVM's executor: the p50 of `calls`.
fn orcwire_pair(exec_program: &Path, calls: usize) -> Result<u64, String> {
    let ((to_exec_r, to_exec_w), (from_exec_r, from_exec_w)) = pipes()?;
    let exec = executor(exec_program, &to_exec_r, &from_exec_w)?;
    drop((to_exec_r, from_exec_w));
    let transport = StreamTransport::from_fds(from_exec_r, to_exec_w, StreamConfig::default())
        .map_err(|e| e.to_string())?;
    let c = ControllerBuilder::new()
        .connect(transport)
        .map_err(|e| format!("connecting to llvm-jitlink-executor: {e}"))?;
    let tag = c
        .function_tag(WRAPPER)
        .ok_or_else(|| format!("the executor publishes no {WRAPPER}"))?;
    let args = [0u8; 8];
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let r = c
            .call_sync_timeout(tag, &args, LIMIT)
            .map_err(|e| format!("call: {e}"))?;
        samples.push(t.elapsed().as_nanos() as u64);
        if !r.is_empty() {
            return Err(format!(
                "{WRAPPER} returned {} bytes, expected none",
                r.len()
            ));
        }
    }
    c.disconnect();
    reap(exec, "llvm-jitlink-executor")?;
    Ok(median(&mut samples))
}
