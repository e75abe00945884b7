//! `orcwire bench-llvm`: an orcwire controller and LLVM's own controller,
//! each calling an unmodified `llvm-jitlink-executor` over two pipes, in
//! one run.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use orcwire::{ControllerBuilder, StreamConfig, StreamTransport};

use crate::common::BenchLlvmArgs;

/// LLVM's controller, built from this source at run time (the tool is
/// not tied to one LLVM).
const SOURCE: &str = include_str!("../../../../interop/llvm/controller.cpp");
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
    let executor = PathBuf::from(format!("/usr/lib/llvm-{major}/bin/llvm-jitlink-executor"));
    if !executor.exists() {
        return Err(format!(
            "{} is missing; install LLVM {major} (apt-get install llvm-{major} llvm-{major}-dev)",
            executor.display()
        ));
    }
    let controller = build_controller(major)?;
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

/// Builds `interop/llvm/controller.cpp` against LLVM `major`, once per
/// source version (cached in the temp directory).
fn build_controller(major: u32) -> Result<PathBuf, String> {
    // FNV-1a of the source: a new source gets a new binary.
    let hash = SOURCE.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = std::env::temp_dir().join(format!("orcwire-bench-llvm-{major}-{hash:016x}"));
    let out = dir.join("controller");
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let src = dir.join("controller.cpp");
    std::fs::write(&src, SOURCE).map_err(|e| format!("writing {}: {e}", src.display()))?;
    let config = |flag: &str| -> Result<String, String> {
        let o = Command::new(format!("llvm-config-{major}"))
            .arg(flag)
            .output()
            .map_err(|e| format!("llvm-config-{major}: {e} (apt-get install llvm-{major}-dev)"))?;
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let cxxflags = config("--cxxflags")?;
    let ldflags = config("--ldflags")?;
    let o = Command::new("g++")
        .args(["-std=c++17", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .args(
            cxxflags
                .split_whitespace()
                .filter(|f| !f.starts_with("-std=")),
        )
        .args(ldflags.split_whitespace())
        .arg(format!("-lLLVM-{major}"))
        .output()
        .map_err(|e| format!("g++: {e} (apt-get install g++)"))?;
    if !o.status.success() {
        return Err(format!(
            "building LLVM's controller: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(out)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// Spawns `cmd` with `read` at fd 3 and `write` at fd 4 (both moved clear
/// of 3 and 4 first, so each `dup2` clears close-on-exec on its target).
fn spawn_at_3_and_4(mut cmd: Command, read: &OwnedFd, write: &OwnedFd) -> Result<Child, String> {
    let (r, w) = (read.as_raw_fd(), write.as_raw_fd());
    // SAFETY: the closure runs in the forked child before exec and calls
    // only fcntl and dup2, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::fcntl(r, libc::F_DUPFD_CLOEXEC, 10);
            let w = libc::fcntl(w, libc::F_DUPFD_CLOEXEC, 10);
            if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning {:?}: {e}", cmd.get_program()))
}

fn executor(program: &Path, to_exec: &OwnedFd, from_exec: &OwnedFd) -> Result<Child, String> {
    let mut cmd = Command::new(program);
    cmd.arg("filedescs=3,4");
    spawn_at_3_and_4(cmd, to_exec, from_exec)
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
fn llvm_pair(executor_program: &Path, controller: &Path, calls: usize) -> Result<u64, String> {
    let (to_exec_r, to_exec_w) = pipe()?;
    let (from_exec_r, from_exec_w) = pipe()?;
    let exec = executor(executor_program, &to_exec_r, &from_exec_w)?;
    let mut cmd = Command::new(controller);
    cmd.args(["3", "4", "bench", &calls.to_string()])
        .stdout(Stdio::piped());
    let ctl = spawn_at_3_and_4(cmd, &from_exec_r, &to_exec_w)?;
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
fn orcwire_pair(executor_program: &Path, calls: usize) -> Result<u64, String> {
    let (to_exec_r, to_exec_w) = pipe()?;
    let (from_exec_r, from_exec_w) = pipe()?;
    let exec = executor(executor_program, &to_exec_r, &from_exec_w)?;
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
