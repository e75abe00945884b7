//! orcwire against LLVM's own programs (issue #11), over two pipes as LLVM
//! runs them:
//! * an orcwire controller and an unmodified `llvm-jitlink-executor`
//!   (LLVM 14, Debian's `llvm-14` package);
//! * an unmodified LLVM 14 `SimpleRemoteEPC` controller
//!   (`interop/llvm/controller14.cpp`, built here with `g++` against
//!   `libLLVM-14`) and an orcwire executor.
//!
//! These tests need LLVM 14 and g++. Under CI (`CI` set) a missing one is
//! a failure, never a skip: `.ci/run` installs them.

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

/// Where LLVM 14's executor is, or `None` outside CI when it is missing.
fn executor_program() -> Option<PathBuf> {
    let found = [
        "/usr/lib/llvm-14/bin/llvm-jitlink-executor",
        "/usr/bin/llvm-jitlink-executor-14",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "llvm-jitlink-executor (LLVM 14) is missing under CI: `apt-get install llvm-14`"
        );
        eprintln!("llvm-jitlink-executor (LLVM 14) not installed: skipping outside CI");
    }
    found
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
fn an_orcwire_controller_drives_llvm_14s_executor() {
    let Some(program) = executor_program() else {
        return;
    };
    for round in 0..5 {
        let mut ex = start(&program);
        let c = &ex.controller;
        assert_eq!(c.dialect(), Dialect::Llvm14, "round {round}");
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
        assert_eq!(deallocate(c, addr), None, "round {round}");
        // An error result reaches the caller; the session goes on.
        let refused = reserve(c, 1 << 62).expect_err("reserving 4 EiB must fail");
        assert!(!refused.is_empty());
        // Arguments LLVM cannot decode: its wrapper answers with an
        // out-of-band error, which LLVM carries as an empty result.
        let tag = c.function_tag(RESERVE).unwrap();
        let garbled = c.call_sync_timeout(tag, b"xx", LIMIT).unwrap();
        assert!(garbled.is_empty(), "round {round}");
        let again = reserve(c, 4096).expect("the session survives errors");
        assert_eq!(deallocate(c, again), None);
        // A clean disconnect: LLVM's executor takes our Hangup and exits 0.
        let c = c.clone();
        common::run_bounded(LIMIT, move || c.disconnect());
        let status = common::wait_child(&mut ex.child, LIMIT);
        assert!(
            status.success(),
            "round {round}: executor ended with {status}"
        );
    }
}

#[test]
fn a_killed_llvm_executor_fails_pending_calls_within_100ms_as_its_death() {
    let Some(program) = executor_program() else {
        return;
    };
    for round in 0..5 {
        let mut ex = start(&program);
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
                        "round {round}: {:?}",
                        c.disconnect_reason()
                    );
                    failed += 1;
                }
            }
        }
        let took = killed.elapsed();
        assert!(took < Duration::from_millis(100), "round {round}: {took:?}");
        let deadline = Instant::now() + LIMIT;
        while !c.is_disconnected() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            c.disconnect_reason(),
            Some(orcwire::DisconnectReason::PeerDied),
            "round {round} ({failed} calls failed)"
        );
    }
}

/// Builds `interop/llvm/controller14.cpp` once per test run (about 4 s).
fn controller_program() -> Option<PathBuf> {
    executor_program()?;
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let out = BUILT.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("controller14");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/llvm/controller14.cpp");
        let config = |flag: &str| {
            let o = Command::new("llvm-config-14")
                .arg(flag)
                .output()
                .expect("llvm-config-14");
            assert!(o.status.success(), "llvm-config-14 {flag}");
            String::from_utf8(o.stdout).unwrap()
        };
        let mut cmd = Command::new("g++");
        cmd.args(["-std=c++17", "-O1", "-o"]).arg(&out).arg(src);
        // llvm-config asks for C++14; LLVM 14's headers are fine with 17.
        cmd.args(
            config("--cxxflags")
                .split_whitespace()
                .filter(|f| !f.starts_with("-std=")),
        );
        cmd.args(config("--ldflags").split_whitespace())
            .arg("-lLLVM-14");
        let o = cmd.output().expect("g++ (apt-get install g++)");
        assert!(
            o.status.success(),
            "building controller14: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    });
    Some(out.clone())
}

fn i32_pair(args: &[u8]) -> Option<(i32, i32)> {
    let mut r = SpsReader::new(args);
    let (a, b) = (r.u32().ok()? as i32, r.u32().ok()? as i32);
    r.finish().ok()?;
    Some((a, b))
}

/// An orcwire executor speaking LLVM 14's dialect on `transport`.
fn orcwire_executor(transport: std::sync::Arc<StreamTransport>) -> Endpoint {
    ExecutorBuilder::new()
        .dialect(Dialect::Llvm14)
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
fn llvm_14s_own_controller_calls_an_orcwire_executor() {
    let Some(program) = controller_program() else {
        return;
    };
    for round in 0..20 {
        let (to_ctl_r, to_ctl_w) = pipe();
        let (from_ctl_r, from_ctl_w) = pipe();
        let (r, w) = (to_ctl_r.as_raw_fd(), from_ctl_w.as_raw_fd());
        let mut cmd = Command::new(&program);
        cmd.args(["3", "4"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        at_fds_3_and_4(&mut cmd, r, w);
        let child = cmd.spawn().expect("spawn controller14");
        drop((to_ctl_r, from_ctl_w));
        let transport =
            StreamTransport::from_fds(from_ctl_r, to_ctl_w, StreamConfig::default()).unwrap();
        transport.watch_process(child.id()).unwrap();
        let executor = orcwire_executor(transport);
        // The controller disconnects when it is done; so do we.
        let deadline = Instant::now() + LIMIT;
        while !executor.is_disconnected() {
            assert!(Instant::now() < deadline, "round {round}: no disconnect");
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = common::run_bounded(LIMIT, move || child.wait_with_output().unwrap());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "round {round}:\n{text}");
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
            assert!(text.contains(line), "round {round}: no {line:?} in\n{text}");
        }
        assert_eq!(
            executor.disconnect_reason(),
            Some(orcwire::DisconnectReason::PeerHungUp),
            "round {round}"
        );
    }
}
