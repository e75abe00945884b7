//! LLVM's JIT over orcwire shared memory through the C ABI: builds
//! `interop/llvm/jit_executor.cpp` (LLVM's `SimpleRemoteEPCServer` with its
//! bootstrap services) and `interop/llvm/jit_controller.cpp` (`LLJIT` over
//! `SimpleRemoteEPC`), both over `OrcwireShmTransport` and linked against
//! the static library and LLVM 14, then runs the controller, which spawns
//! the executor with `orcwire_shm_spawn`, links IR into it and runs
//! `main` there. Also a short run of the controller's bench form (LLVM's
//! FD transport vs orcwire's, printed, not asserted: the library is a
//! debug build here).
//!
//! Needs `llvm-config-14`, LLVM 14's headers and `libLLVM-14` (`.ci/run`
//! installs them). Under CI (`CI` set) a missing LLVM is a failure, never
//! a skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{crate_dir, out_dir, run_bounded, staticlib};

const LLVM: u32 = 14;

/// `llvm-config-14`'s output for `flag`, or `None` outside CI when LLVM 14
/// is missing.
fn llvm_config(flag: &str) -> Option<String> {
    let tool = format!("llvm-config-{LLVM}");
    match Command::new(&tool).arg(flag).output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        other => {
            let why = format!("{tool} {flag} failed ({other:?}); apt-get install llvm-{LLVM}-dev");
            assert!(std::env::var_os("CI").is_none(), "under CI: {why}");
            eprintln!("{why}: skipping outside CI");
            None
        }
    }
}

/// Builds `interop/llvm/<name>.cpp` against LLVM and the static library.
fn build(name: &str, cxxflags: &str, ldflags: &str) -> PathBuf {
    let src = crate_dir()
        .join("../interop/llvm")
        .join(format!("{name}.cpp"));
    let exe = out_dir().join(name);
    // Private name, renamed into place: a concurrent run never execs a
    // half-written program.
    let tmp = exe.with_extension(format!("tmp{}", std::process::id()));
    let mut cmd = Command::new("c++");
    // llvm-config may ask for an older standard; LLVM's headers are fine
    // with 17.
    cmd.args(["-std=c++17", "-O1"])
        .args(
            cxxflags
                .split_whitespace()
                .filter(|f| !f.starts_with("-std=")),
        )
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg("-I")
        .arg(crate_dir().join("../interop/llvm"))
        .arg(&src)
        .arg(staticlib())
        .args(ldflags.split_whitespace())
        .arg(format!("-lLLVM-{LLVM}"))
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&tmp);
    let out = run_bounded(cmd, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "building {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &exe).expect("rename the program into place");
    exe
}

fn run(controller: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(controller);
    cmd.args(args);
    let out = run_bounded(cmd, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("FAILED"),
        "{} {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{}",
        controller.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn lljit_links_and_runs_code_in_an_executor_over_orcwire_shm() {
    let (Some(cxxflags), Some(ldflags)) = (llvm_config("--cxxflags"), llvm_config("--ldflags"))
    else {
        return;
    };
    let (executor, controller) = std::thread::scope(|s| {
        let e = s.spawn(|| build("jit_executor", &cxxflags, &ldflags));
        let c = build("jit_controller", &cxxflags, &ldflags);
        (e.join().expect("build thread"), c)
    });
    let exe = executor.to_str().expect("UTF-8 path");
    let out = run(&controller, &[exe]);
    eprint!("{out}");
    for step in [
        "ok connect over orcwire shared memory",
        "ok compiled, linked and looked up in the executor",
        "ok main(3) = 7326 (want 7326)",
        "ok end session and disconnect",
        "ok executor exited 0",
    ] {
        assert!(out.contains(step), "missing \"{step}\" in:\n{out}");
    }
    // The bench form: both transports carry 64 B and 1 MiB calls.
    let bench = run(&controller, &["bench", exe, "50"]);
    eprint!("{bench}");
    assert!(bench.contains("orcwire"), "{bench}");
}
