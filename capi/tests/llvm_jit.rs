//! LLVM's JIT over orcwire shared memory (issue #12): `jit_controller`
//! builds an `LLJIT` whose `ExecutorProcessControl` is LLVM's
//! `SimpleRemoteEPC` over `OrcwireShmTransport`
//! (`interop/llvm/OrcwireShmTransport.h`, on this crate's C ABI), spawns
//! `jit_executor` (LLVM's `SimpleRemoteEPCServer` with its bootstrap
//! services) over orcwire shared memory, compiles an IR module there,
//! writes data into the executor's memory, runs `main` three times and
//! ends the session; and `transport_test` holds `OrcwireShmTransport` to
//! LLVM's transport contract (disconnect from several threads, exactly
//! one `handleDisconnect`, a killed executor). The programs are built here
//! with g++ against LLVM 14 and the static library.
//!
//! Under CI (`CI` set) a missing LLVM 14 or g++ is a failure, never a
//! skip: `.ci/run` installs them.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{crate_dir, run_bounded, staticlib};

const LIMIT: Duration = Duration::from_secs(120);

/// Builds `interop/llvm/<name>.cpp` once per run (tests share the
/// result), or `None` outside CI when LLVM 14 is not installed.
fn build(name: &str) -> Option<PathBuf> {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, exe)) = built.iter().find(|(n, _)| n == name) {
        return Some(exe.clone());
    }
    let exe = build_uncached(name)?;
    built.push((name.to_owned(), exe.clone()));
    Some(exe)
}

fn build_uncached(name: &str) -> Option<PathBuf> {
    if Command::new("llvm-config-14")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "llvm-config-14 is missing under CI: apt-get install llvm-14-dev g++"
        );
        eprintln!("LLVM 14 not installed: skipping outside CI");
        return None;
    }
    let root = crate_dir()
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("llvm-jit");
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join(name);
    let tmp = exe.with_extension(format!("tmp{}", std::process::id()));
    let extra: Vec<std::ffi::OsString> = vec![
        "-I".into(),
        root.join("interop/llvm").into(),
        "-I".into(),
        crate_dir().join("include").into(),
        staticlib().into(),
    ];
    let src = root.join(format!("interop/llvm/{name}.cpp"));
    if let Err(e) = orcwire_tools::llvm::compile_against_llvm(14, &src, &tmp, &extra) {
        panic!("{e}");
    }
    std::fs::rename(&tmp, &exe).unwrap();
    Some(exe)
}

#[test]
fn lljit_runs_ir_in_an_executor_over_orcwire_shared_memory() {
    let (Some(controller), Some(executor)) = (build("jit_controller"), build("jit_executor"))
    else {
        return;
    };
    for round in 0..3 {
        let mut cmd = Command::new(&controller);
        cmd.arg(&executor);
        let out = run_bounded(cmd, LIMIT);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "round {round}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in [
            "ok connect over orcwire shared memory",
            "ok LLJIT on the remote executor",
            "ok compiled, linked and looked up in the executor",
            "ok wrote @data in the executor",
            "ok main(1) = 5324",
            "ok main(2) = 6325",
            "ok main(3) = 7326",
            "ok end session and disconnect",
            "ok executor exited 0",
        ] {
            assert!(text.contains(line), "round {round}: no {line:?} in\n{text}");
        }
        assert!(!text.contains("FAILED"), "round {round}:\n{text}");
    }
}

#[test]
fn the_llvm_transport_keeps_llvms_disconnect_contract() {
    let (Some(test), Some(executor)) = (build("transport_test"), build("jit_executor")) else {
        return;
    };
    let mut cmd = Command::new(&test);
    cmd.arg(&executor);
    let out = run_bounded(cmd, LIMIT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "ok the executor's Setup arrives",
        "ok disconnect from 4 threads ends within a second",
        "ok handleDisconnect called exactly once (1)",
        "ok a killed executor ends the session with an error within a second",
        "ok handleDisconnect called exactly once after the kill",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
}

/// An orcwire controller in Rust driving LLVM's own executor
/// (`jit_executor`: `SimpleRemoteEPCServer` over `OrcwireShmTransport`)
/// over shared memory: the Setup is read as LLVM 14's, wrapper tags are
/// LLVM's function addresses, and results come back in LLVM's dialect.
#[test]
fn an_orcwire_controller_drives_llvms_server_over_shared_memory() {
    use orcwire::sps::{Dialect, SpsReader, SpsWriter};
    use orcwire::{ControllerBuilder, HandlerTag};
    use orcwire_shm::ExecutorCommand;
    let Some(executor) = build("jit_executor") else {
        return;
    };
    for round in 0..3 {
        let spawned = ExecutorCommand::new(Command::new(&executor))
            .spawn()
            .unwrap_or_else(|e| panic!("round {round}: spawn: {e}"));
        let c = ControllerBuilder::new()
            .connect(spawned.transport.clone())
            .unwrap();
        assert_eq!(c.dialect(), Dialect::Llvm14, "round {round}");
        // `orcwire_echo` is not named like a wrapper, so it has no
        // function tag; its address, read as a symbol, is the tag.
        assert!(c.function_tag("orcwire_echo").is_none());
        let echo = HandlerTag::new(c.bootstrap_symbol("orcwire_echo").unwrap());
        for len in [0usize, 1, 64, 4096, 1 << 20] {
            let arg: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
            let got = c.call_sync_timeout(echo, &arg, LIMIT).unwrap();
            assert_eq!(got.as_slice(), &arg[..], "round {round}: {len} B");
        }
        // LLVM's memory manager through its SPS wrappers.
        let instance = c
            .bootstrap_symbol("__llvm_orc_SimpleExecutorMemoryManager_Instance")
            .unwrap();
        let reserve = c
            .function_tag("__llvm_orc_SimpleExecutorMemoryManager_reserve_wrapper")
            .unwrap();
        let mut w = SpsWriter::new();
        w.u64(instance).u64(4096);
        let out = c
            .call_sync_timeout(reserve, &w.into_inner(), LIMIT)
            .unwrap();
        let mut r = SpsReader::new(out.as_slice());
        assert!(r.bool().unwrap(), "round {round}: reserve failed");
        assert_ne!(r.u64().unwrap(), 0);
        c.disconnect();
        let status = spawned
            .process
            .wait_timeout(LIMIT)
            .unwrap()
            .expect("jit_executor did not exit");
        assert!(status.success(), "round {round}: {status}");
    }
}
