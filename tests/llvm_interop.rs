//! orcwire against LLVM's own programs (issue #11): an orcwire controller
//! and an unmodified `llvm-jitlink-executor` (LLVM 14, Debian's
//! `llvm-14` package) over two pipes, as LLVM runs it.
//!
//! These tests need the program. Under CI (`CI` set) a missing program is
//! a failure, never a skip: `.ci/run` installs it.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orcwire::sps::{Dialect, SpsReader, SpsWriter};
use orcwire::{ControllerBuilder, Endpoint, StreamConfig, StreamTransport};

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

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().unwrap()
}

/// Starts `llvm-jitlink-executor filedescs=3,4` with its end of two pipes
/// at fds 3 and 4, and connects a controller to ours.
fn start(program: &PathBuf) -> LlvmExecutor {
    let (to_exec_r, to_exec_w) = pipe();
    let (from_exec_r, from_exec_w) = pipe();
    let (r, w) = (to_exec_r.as_raw_fd(), from_exec_w.as_raw_fd());
    let mut cmd = Command::new(program);
    cmd.arg("filedescs=3,4").stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and calls
    // only dup2, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn llvm-jitlink-executor");
    drop((to_exec_r, from_exec_w));
    let transport =
        StreamTransport::from_fds(from_exec_r, to_exec_w, StreamConfig::default()).unwrap();
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

#[test]
fn probe() {
    let Some(program) = executor_program() else {
        return;
    };
    let ex = start(&program);
    let c = &ex.controller;
    eprintln!("dialect {:?}", c.dialect());
    for (n, a) in &c.setup_info().bootstrap_symbols {
        eprintln!("  {n} = {a:#x}");
    }
    let _ = (
        INSTANCE,
        RESERVE,
        DEALLOCATE,
        WRITE_U64S,
        Dialect::Llvm14,
        SpsReader::new(&[]),
        SpsWriter::new(),
        Arc::new(0),
        Instant::now(),
    );
    let _ = call;
    c.disconnect();
}
