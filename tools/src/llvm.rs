//! LLVM's own programs as peers: where LLVM `major`'s
//! `llvm-jitlink-executor` is, LLVM's `SimpleRemoteEPC` controller built
//! from `interop/llvm/controller.cpp` against that LLVM's libLLVM, and
//! spawning either on two pipes at fds 3 and 4, as LLVM runs them. Used by
//! `orcwire bench-llvm` and by the interop tests (`tools/tests/llvm_interop.rs`).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// LLVM's controller, built from this source at run time (nothing here is
/// tied to one LLVM).
pub const CONTROLLER_SOURCE: &str = include_str!("../../interop/llvm/controller.cpp");

/// Why an LLVM peer could not be found, built or started.
#[derive(Debug, thiserror::Error)]
pub enum LlvmError {
    /// LLVM `major` is not installed.
    #[error(
        "{path} is missing; install LLVM {major} (apt-get install llvm-{major} llvm-{major}-dev)"
    )]
    Missing {
        /// The LLVM version.
        major: u32,
        /// What was looked for.
        path: String,
    },
    /// A tool failed.
    #[error("{what}: {why}")]
    Failed {
        /// What was being done.
        what: String,
        /// Why it failed.
        why: String,
    },
}

fn failed(what: impl Into<String>, why: impl ToString) -> LlvmError {
    LlvmError::Failed {
        what: what.into(),
        why: why.to_string(),
    }
}

/// LLVM `major`'s `llvm-jitlink-executor`.
///
/// # Errors
/// [`LlvmError::Missing`] when that LLVM is not installed.
pub fn executor_program(major: u32) -> Result<PathBuf, LlvmError> {
    let path = PathBuf::from(format!("/usr/lib/llvm-{major}/bin/llvm-jitlink-executor"));
    if path.exists() {
        Ok(path)
    } else {
        Err(LlvmError::Missing {
            major,
            path: path.display().to_string(),
        })
    }
}

/// LLVM's `SimpleRemoteEPC` controller built against LLVM `major`, once
/// per source version (cached in the temp directory; about 4 s to build).
///
/// # Errors
/// [`LlvmError`] when `llvm-config-MAJOR` or `g++` is missing or the build
/// fails.
pub fn controller_program(major: u32) -> Result<PathBuf, LlvmError> {
    // FNV-1a of the source: a new source gets a new binary.
    let hash = CONTROLLER_SOURCE
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    let dir = std::env::temp_dir().join(format!("orcwire-llvm-{major}-{hash:016x}"));
    let out = dir.join("controller");
    if out.exists() {
        return Ok(out);
    }
    // Built under a private name and renamed, so that two processes
    // building at once never run a half-written binary.
    let tmp = dir.join(format!("controller.{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| failed(format!("creating {}", dir.display()), e))?;
    let src = dir.join(format!("controller.{}.cpp", std::process::id()));
    std::fs::write(&src, CONTROLLER_SOURCE)
        .map_err(|e| failed(format!("writing {}", src.display()), e))?;
    let built = compile_against_llvm(major, &src, &tmp, &[]);
    let _ = std::fs::remove_file(&src);
    built?;
    std::fs::rename(&tmp, &out).map_err(|e| failed(format!("renaming to {}", out.display()), e))?;
    Ok(out)
}

/// Compiles and links the C++ program `src` into `out` with g++ against
/// LLVM `major` (its `llvm-config` flags, C++17, `-O2`, `-lLLVM-MAJOR`),
/// with `extra` arguments (include folders, libraries) before LLVM's
/// link flags.
///
/// # Errors
/// [`LlvmError`] when `llvm-config-MAJOR` or `g++` is missing or the build
/// fails (with the compiler's messages).
pub fn compile_against_llvm(
    major: u32,
    src: &Path,
    out: &Path,
    extra: &[OsString],
) -> Result<(), LlvmError> {
    let config = |flag: &str| -> Result<String, LlvmError> {
        let o = Command::new(format!("llvm-config-{major}"))
            .arg(flag)
            .output()
            .map_err(|e| {
                failed(
                    format!("llvm-config-{major} (apt-get install llvm-{major}-dev)"),
                    e,
                )
            })?;
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (cxxflags, ldflags) = (config("--cxxflags")?, config("--ldflags")?);
    let o = Command::new("g++")
        // llvm-config may ask for an older standard; LLVM's headers are
        // fine with 17.
        .args(["-std=c++17", "-O2", "-o"])
        .arg(out)
        .arg(src)
        .args(
            cxxflags
                .split_whitespace()
                .filter(|f| !f.starts_with("-std=")),
        )
        .args(extra)
        .args(ldflags.split_whitespace())
        .arg(format!("-lLLVM-{major}"))
        .args(["-lpthread", "-ldl", "-lm"])
        .output()
        .map_err(|e| failed("g++ (apt-get install g++)", e))?;
    if !o.status.success() {
        return Err(failed(
            format!("building {} against LLVM {major}", src.display()),
            String::from_utf8_lossy(&o.stderr),
        ));
    }
    Ok(())
}

/// A close-on-exec pipe `(read, write)`: only the child an end is handed
/// to (by [`spawn_at_3_and_4`]) inherits it, so every end of stream
/// arrives.
///
/// # Errors
/// The OS error of `pipe2`.
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Spawns `cmd` (stdin from `/dev/null`) with `read` at fd 3 and `write`
/// at fd 4, and no other fd of ours. Both are first moved above fd 10, so
/// neither `dup2` can land on the other's source, and each `dup2` then
/// clears close-on-exec on its target.
///
/// # Errors
/// The spawn error.
pub fn spawn_at_3_and_4(
    mut cmd: Command,
    read: &OwnedFd,
    write: &OwnedFd,
) -> std::io::Result<Child> {
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
    cmd.stdin(Stdio::null()).spawn()
}
