//! Compiles the C programs in `tests/c/` against the static library and
//! runs them: the header under C11 and C++17 with warnings as errors, the
//! buffer helpers and NULL handles, a C controller spawning a C executor
//! over shared memory (message level, endpoint level both ways, `kill -9`),
//! listen/attach by path, and the README's example.
//!
//! The static library is (re)built with `cargo build -p orcwire-capi` in
//! this test's own target directory first (a no-op when it is fresh).
//! Every program runs under a timeout and is reaped; `/dev/shm` is checked
//! for left-overs at the end of each run.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{crate_dir, run_bounded, staticlib};

/// Compiles `tests/c/<file>` with `compiler` and `flags`, linked against
/// the static library, and returns the program's path. Once per file and
/// run; tests running in parallel share the result.
fn compile(compiler: &str, flags: &[&str], file: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, exe)) = built.iter().find(|(f, _)| f == file) {
        return exe.clone();
    }
    let exe = compile_uncached(compiler, flags, file);
    built.push((file.to_owned(), exe.clone()));
    exe
}

fn compile_uncached(compiler: &str, flags: &[&str], file: &str) -> PathBuf {
    let src = crate_dir().join("tests/c").join(file);
    let exe = out_dir().join(file.replace('.', "_"));
    // Linked under a private name and renamed into place, so another test
    // run sharing the target directory never execs a half-written file
    // nor has its running program overwritten ("text file busy").
    let tmp = exe.with_extension(format!("tmp{}", std::process::id()));
    let mut cmd = Command::new(compiler);
    cmd.args(flags)
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(&src)
        .arg(staticlib())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&tmp);
    let out = run_bounded(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{compiler} {file} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &exe).expect("rename the program into place");
    exe
}

/// Where this run puts its compiled programs.
fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capi-c");
    std::fs::create_dir_all(&d).expect("create the output directory");
    d
}

const C_FLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"];
const CXX_FLAGS: &[&str] = &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"];

fn compile_c(file: &str) -> PathBuf {
    compile("cc", C_FLAGS, file)
}

/// Runs a compiled program with `args` under a timeout; returns stdout.
fn run(exe: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    let start = Instant::now();
    let out = run_bounded(cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{} {args:?}: {:?}", exe.display(), start.elapsed());
    stdout
}

fn assert_no_shm_leftovers() {
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    let left: Vec<_> = dir
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("orcwire"))
        .collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

#[test]
fn header_compiles_as_c11_and_cxx17_and_links_from_cxx() {
    // Every test program is C11 with -Werror; this one is C++17.
    let exe = compile("c++", CXX_FLAGS, "header.cpp");
    assert!(run(&exe, &[]).contains("c++: ok"));
    // The header alone, as C11, compile only.
    let obj = out_dir().join("header_only.o");
    let mut cmd = Command::new("cc");
    cmd.args(C_FLAGS)
        .args(["-x", "c", "-c", "-o"])
        .arg(&obj)
        .arg(crate_dir().join("include/orcwire.h"));
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "orcwire.h alone does not compile as C11:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn buffer_status_abi_and_null_handles() {
    let exe = compile_c("buffer.c");
    assert!(run(&exe, &[]).contains("buffer: ok"));
}

/// The C controller spawns the C executor for each scenario.
fn controller_scenario(scenario: &str) -> String {
    let executor = compile_c("executor.c");
    let controller = compile_c("controller.c");
    let out = run(
        &controller,
        &[executor.to_str().expect("UTF-8 path"), scenario],
    );
    assert_no_shm_leftovers();
    out
}

#[test]
fn message_level_over_shm_between_c_processes() {
    assert!(controller_scenario("messages").contains("controller messages: ok"));
}

#[test]
fn endpoint_level_both_ways_and_disconnect_from_four_threads() {
    assert!(controller_scenario("endpoint").contains("controller endpoint: ok"));
}

#[test]
fn kill_9_of_the_executor_fails_pending_calls_with_peer_died() {
    let out = controller_scenario("kill");
    assert!(out.contains("controller kill: ok"), "{out}");
    eprint!("{out}"); // how long the calls took to fail
}

#[test]
fn listen_and_attach_by_path() {
    let exe = compile_c("listen.c");
    assert!(run(&exe, &[]).contains("listen: ok"));
}

#[test]
fn stream_transport_and_llvm_dialect_from_c() {
    let exe = compile_c("stream.c");
    assert!(run(&exe, &[]).contains("stream: ok"));
}

#[test]
fn readme_example_compiles_and_runs() {
    let exe = compile_c("readme_example.c");
    assert_eq!(run(&exe, &[]), "echo answered hi\n");
    // The README shows this very file.
    let readme = std::fs::read_to_string(crate_dir().join("../README.md")).expect("README.md");
    let example =
        std::fs::read_to_string(crate_dir().join("tests/c/readme_example.c")).expect("example");
    assert!(
        readme.contains(&example),
        "README.md's \"From C\" example differs from capi/tests/c/readme_example.c; copy the file into the README"
    );
}
