//! orcwire against LLVM's own programs (issue #11), over two pipes as LLVM
//! runs them, for each LLVM in [`LLVMS`]: 14 (Debian 12's default; its
//! `Setup` has no bootstrap map) and 19 (Debian 12's newest; with the
//! map), so both `Setup` layouts are tested against real programs:
//! * an orcwire controller and an unmodified `llvm-jitlink-executor`;
//! * an unmodified LLVM `SimpleRemoteEPC` controller
//!   (`interop/llvm/controller.cpp`, built here with `g++` against that
//!   LLVM's `libLLVM`) and an orcwire executor.
//!
//! These tests need both LLVMs and g++. Under CI (`CI` set) a missing one
//! is a failure, never a skip: `.ci/run` installs them.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orcwire::sps::{Dialect, SpsReader, SpsWriter};
use orcwire::{
    ControllerBuilder, Endpoint, ExecutorBuilder, StreamConfig, StreamTransport,
    WrapperFunctionBuffer,
};

const LIMIT: Duration = Duration::from_secs(20);
const INSTANCE: &str = "__llvm_orc_SimpleExecutorMemoryManager_Instance";
const RESERVE: &str = "__llvm_orc_SimpleExecutorMemoryManager_reserve_wrapper";
const DEALLOCATE: &str = "__llvm_orc_SimpleExecutorMemoryManager_deallocate_wrapper";
const WRITE_U64S: &str = "__llvm_orc_bootstrap_mem_write_uint64s_wrapper";

/// The LLVMs tested, with the dialect each speaks.
const LLVMS: [(u32, Dialect); 2] = [(14, Dialect::Llvm14), (19, Dialect::Llvm15)];

/// LLVM `major`'s executor, or `None` outside CI when it is missing.
fn executor_program(major: u32) -> Option<PathBuf> {
    let path = PathBuf::from(format!("/usr/lib/llvm-{major}/bin/llvm-jitlink-executor"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "llvm-jitlink-executor (LLVM {major}) is missing under CI: `apt-get install llvm-{major}`"
    );
    eprintln!("llvm-jitlink-executor (LLVM {major}) not installed: skipping it outside CI");
    None
}

/// The executor's process and an orcwire controller connected to it.
struct LlvmExecutor {
    child: Child,
    controller: Endpoint,
}

impl Drop for LlvmExecutor {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A close-on-exec pipe: only the child it is handed to (by `dup2` onto
/// fds 3 and 4) inherits an end, so every end of stream arrives.
fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

/// Makes the child find `read` at fd 3 and `write` at fd 4 (and no other
/// fd of ours: everything else is close-on-exec). Both are first moved
/// above fd 10, so neither `dup2` can land on the other's source, and
/// each `dup2` then clears close-on-exec on its target.
fn at_fds_3_and_4(cmd: &mut Command, read: i32, write: i32) {
    // SAFETY: the closure runs in the forked child before exec and calls
    // only fcntl and dup2, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::fcntl(read, libc::F_DUPFD_CLOEXEC, 10);
            let w = libc::fcntl(write, libc::F_DUPFD_CLOEXEC, 10);
            if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts `llvm-jitlink-executor filedescs=3,4` with its end of two pipes
/// at fds 3 and 4, and connects a controller to ours.
fn start(program: &PathBuf) -> LlvmExecutor {
    let (to_exec_r, to_exec_w) = pipe();
    let (from_exec_r, from_exec_w) = pipe();
    let (r, w) = (to_exec_r.as_raw_fd(), from_exec_w.as_raw_fd());
    let mut cmd = Command::new(program);
    cmd.arg("filedescs=3,4").stdin(Stdio::null());
    at_fds_3_and_4(&mut cmd, r, w);
    let child = cmd.spawn().expect("spawn llvm-jitlink-executor");
    drop((to_exec_r, from_exec_w));
    let transport =
        StreamTransport::from_fds(from_exec_r, to_exec_w, StreamConfig::default()).unwrap();
    // Its death is then told from a hang-up.
    transport.watch_process(child.id()).unwrap();
    let controller = ControllerBuilder::new().connect(transport).unwrap();
    LlvmExecutor { child, controller }
}

fn call(ep: &Endpoint, name: &str, args: &[u8]) -> Vec<u8> {
    let tag = ep
        .function_tag(name)
        .unwrap_or_else(|| panic!("no wrapper function {name}"));
    let r = ep.call_sync_timeout(tag, args, LIMIT).unwrap();
    assert_eq!(r.error_message(), None, "{name}");
    r.as_slice().to_vec()
}

/// `SimpleExecutorMemoryManager::reserve(instance, size)`:
/// `SPSExpected<SPSExecutorAddr>(SPSExecutorAddr, uint64_t)`.
fn reserve(ep: &Endpoint, size: u64) -> Result<u64, String> {
    let instance = ep.bootstrap_symbol(INSTANCE).unwrap();
    let mut w = SpsWriter::new();
    w.u64(instance).u64(size);
    let out = call(ep, RESERVE, &w.into_inner());
    let mut r = SpsReader::new(&out);
    let result = if r.bool().unwrap() {
        Ok(r.u64().unwrap())
    } else {
        Err(r.str("error", 1 << 20).unwrap().to_owned())
    };
    r.finish().unwrap();
    result
}

/// `mem_write_uint64s`: `void(SPSSequence<SPSTuple<SPSExecutorAddr,
/// uint64_t>>)`, whose SPS result is empty.
fn write_u64s(ep: &Endpoint, writes: &[(u64, u64)]) {
    let mut w = SpsWriter::new();
    w.seq_len(writes.len());
    for &(addr, value) in writes {
        w.u64(addr).u64(value);
    }
    assert!(call(ep, WRITE_U64S, &w.into_inner()).is_empty());
}

/// `deallocate(instance, addrs)`: `SPSError(SPSExecutorAddr,
/// SPSSequence<SPSExecutorAddr>)`.
fn deallocate(ep: &Endpoint, addr: u64) -> Option<String> {
    let instance = ep.bootstrap_symbol(INSTANCE).unwrap();
    let mut w = SpsWriter::new();
    w.u64(instance).seq_len(1).u64(addr);
    orcwire::sps::decode_error(&call(ep, DEALLOCATE, &w.into_inner())).unwrap()
}

#[test]
fn an_orcwire_controller_drives_llvms_executor() {
    for (major, dialect) in LLVMS {
        if let Some(program) = executor_program(major) {
            drive_llvm_executor(major, dialect, &program);
        }
    }
}

fn drive_llvm_executor(major: u32, dialect: Dialect, program: &PathBuf) {
    for round in 0..5 {
        let round = format!("LLVM {major}, round {round}");
        let mut ex = start(program);
        let c = &ex.controller;
        assert_eq!(c.dialect(), dialect, "{round}");
        // Wrapper functions have tags; data objects only addresses.
        for name in [RESERVE, DEALLOCATE, WRITE_U64S] {
            assert!(c.function_tag(name).is_some(), "{name}");
        }
        for data in [INSTANCE, "__llvm_orc_SimpleRemoteEPC_dispatch_ctx"] {
            assert!(c.function_tag(data).is_none(), "{data} is not a function");
            assert!(c.bootstrap_symbol(data).is_some(), "{data} has an address");
        }
        // Reserve, write, deallocate; each SPS result checked.
        let addr = reserve(c, 64 << 10).expect("reserve 64 KiB");
        assert_ne!(addr, 0);
        write_u64s(c, &[(addr, 0x1122_3344_5566_7788), (addr + 8, u64::MAX)]);
        assert_eq!(deallocate(c, addr), None, "{round}");
        // An error result reaches the caller; the session goes on.
        let refused = reserve(c, 1 << 62).expect_err("reserving 4 EiB must fail");
        assert!(!refused.is_empty());
        // Arguments LLVM cannot decode: its wrapper answers with an
        // out-of-band error, which LLVM carries as an empty result.
        let tag = c.function_tag(RESERVE).unwrap();
        let garbled = c.call_sync_timeout(tag, b"xx", LIMIT).unwrap();
        assert!(garbled.is_empty(), "{round}");
        let again = reserve(c, 4096).expect("the session survives errors");
        assert_eq!(deallocate(c, again), None);
        // A clean disconnect: LLVM's executor takes our Hangup and exits 0.
        let c = c.clone();
        common::run_bounded(LIMIT, move || c.disconnect());
        let status = common::wait_child(&mut ex.child, LIMIT);
        assert!(status.success(), "{round}: executor ended with {status}");
    }
}

#[test]
fn a_killed_llvm_executor_fails_pending_calls_within_100ms_as_its_death() {
    for (major, _) in LLVMS {
        if let Some(program) = executor_program(major) {
            kill_llvm_executor(major, &program);
        }
    }
}

fn kill_llvm_executor(major: u32, program: &PathBuf) {
    for round in 0..5 {
        let round = format!("LLVM {major}, round {round}");
        let mut ex = start(program);
        let c = ex.controller.clone();
        let instance = c.bootstrap_symbol(INSTANCE).unwrap();
        let tag = c.function_tag(RESERVE).unwrap();
        let mut w = SpsWriter::new();
        w.u64(instance).u64(4096);
        let args = w.into_inner();
        // Calls in flight as the process dies.
        let pending: Vec<_> = (0..200).map(|_| c.call(tag, &args).unwrap()).collect();
        ex.child.kill().unwrap();
        let killed = Instant::now();
        let mut failed = 0;
        for mut p in pending {
            match p.wait_timeout(LIMIT) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(
                        e,
                        orcwire::CallError::PeerDied,
                        "{round}: {:?}",
                        c.disconnect_reason()
                    );
                    failed += 1;
                }
            }
        }
        let took = killed.elapsed();
        assert!(took < Duration::from_millis(100), "{round}: {took:?}");
        let deadline = Instant::now() + LIMIT;
        while !c.is_disconnected() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            c.disconnect_reason(),
            Some(orcwire::DisconnectReason::PeerDied),
            "{round} ({failed} calls failed)"
        );
    }
}

/// Builds `interop/llvm/controller.cpp` against LLVM `major` once per
/// test run (about 4 s).
fn controller_program(major: u32) -> Option<PathBuf> {
    executor_program(major)?;
    static BUILT: std::sync::Mutex<Vec<(u32, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, out)) = built.iter().find(|(m, _)| *m == major) {
        return Some(out.clone());
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("controller{major}"));
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/llvm/controller.cpp");
    let llvm_config = format!("llvm-config-{major}");
    let config = |flag: &str| {
        let o = Command::new(&llvm_config)
            .arg(flag)
            .output()
            .unwrap_or_else(|e| panic!("{llvm_config}: {e} (apt-get install llvm-{major}-dev)"));
        assert!(o.status.success(), "{llvm_config} {flag}");
        String::from_utf8(o.stdout).unwrap()
    };
    let mut cmd = Command::new("g++");
    cmd.args(["-std=c++17", "-O1", "-o"]).arg(&out).arg(src);
    // llvm-config may ask for an older standard; LLVM's headers are fine
    // with 17.
    cmd.args(
        config("--cxxflags")
            .split_whitespace()
            .filter(|f| !f.starts_with("-std=")),
    );
    cmd.args(config("--ldflags").split_whitespace())
        .arg(format!("-lLLVM-{major}"));
    let o = cmd.output().expect("g++ (apt-get install g++)");
    assert!(
        o.status.success(),
        "building the LLVM {major} controller: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    built.push((major, out.clone()));
    Some(out)
}

fn i32_pair(args: &[u8]) -> Option<(i32, i32)> {
    let mut r = SpsReader::new(args);
    let (a, b) = (r.u32().ok()? as i32, r.u32().ok()? as i32);
    r.finish().ok()?;
    Some((a, b))
}

/// An orcwire executor speaking `dialect` on `transport`.
fn orcwire_executor(transport: std::sync::Arc<StreamTransport>, dialect: Dialect) -> Endpoint {
    ExecutorBuilder::new()
        .dialect(dialect)
        .sync_function("add_i32", |args: &[u8]| match i32_pair(args) {
            Some((a, b)) => WrapperFunctionBuffer::from_slice(&a.wrapping_add(b).to_le_bytes()),
            None => WrapperFunctionBuffer::out_of_band_error("add_i32 takes two i32"),
        })
        .sync_function("mul_u64", |args: &[u8]| {
            let mut r = SpsReader::new(args);
            match (r.u64(), r.u64()) {
                (Ok(a), Ok(b)) => {
                    WrapperFunctionBuffer::from_slice(&a.wrapping_mul(b).to_le_bytes())
                }
                _ => WrapperFunctionBuffer::out_of_band_error("mul_u64 takes two u64"),
            }
        })
        .sync_function("concat", |args: &[u8]| {
            let mut r = SpsReader::new(args);
            match (r.str("a", 1 << 20), r.str("b", 1 << 20)) {
                (Ok(a), Ok(b)) => {
                    let mut w = SpsWriter::new();
                    w.str(&format!("{a}{b}"));
                    WrapperFunctionBuffer::from_vec(w.into_inner())
                }
                _ => WrapperFunctionBuffer::out_of_band_error("concat takes two strings"),
            }
        })
        .sync_function("fail", |_args: &[u8]| {
            WrapperFunctionBuffer::out_of_band_error("fail always fails")
        })
        .connect(transport)
        .unwrap()
}

#[test]
fn llvms_own_controller_calls_an_orcwire_executor() {
    for (major, dialect) in LLVMS {
        if let Some(program) = controller_program(major) {
            serve_llvm_controller(major, dialect, &program);
        }
    }
}

fn serve_llvm_controller(major: u32, dialect: Dialect, program: &PathBuf) {
    for round in 0..20 {
        let round = format!("LLVM {major}, round {round}");
        let (to_ctl_r, to_ctl_w) = pipe();
        let (from_ctl_r, from_ctl_w) = pipe();
        let (r, w) = (to_ctl_r.as_raw_fd(), from_ctl_w.as_raw_fd());
        let mut cmd = Command::new(program);
        cmd.args(["3", "4"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        at_fds_3_and_4(&mut cmd, r, w);
        let child = cmd.spawn().expect("spawn the LLVM controller");
        drop((to_ctl_r, from_ctl_w));
        let transport =
            StreamTransport::from_fds(from_ctl_r, to_ctl_w, StreamConfig::default()).unwrap();
        transport.watch_process(child.id()).unwrap();
        let executor = orcwire_executor(transport, dialect);
        // The controller disconnects when it is done; so do we.
        let deadline = Instant::now() + LIMIT;
        while !executor.is_disconnected() {
            assert!(Instant::now() < deadline, "{round}: no disconnect");
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = common::run_bounded(LIMIT, move || child.wait_with_output().unwrap());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{round}:\n{text}");
        for line in [
            "ok create",
            "ok symbols",
            "ok add_i32 = 42",
            "ok add_i32 = 44",
            "ok mul_u64 = 25769803776",
            "ok concat = orcwire",
            "ok fail is an error",
            "ok add after an error = 2",
            "ok disconnect",
        ] {
            assert!(text.contains(line), "{round}: no {line:?} in\n{text}");
        }
        assert_eq!(
            executor.disconnect_reason(),
            Some(orcwire::DisconnectReason::PeerHungUp),
            "{round}"
        );
    }
}
