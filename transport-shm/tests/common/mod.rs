//! Helpers shared by the integration tests: children that inherit an fd,
//! are always reaped, and are waited for with a time limit.
#![allow(dead_code)] // each test binary uses a subset

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// The fd number a child finds its inherited end at.
pub const CHILD_FD: i32 = 3;

/// A child process that is killed and reaped when dropped, so a failing
/// assertion never leaves a process behind.
pub struct Reaped(pub Child);

impl Reaped {
    /// Waits up to `limit` for the child to exit; panics (and the drop
    /// kills and reaps it) when it does not.
    pub fn wait_timeout(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child {} did not exit within {limit:?}",
                self.0.id()
            );
            orcwire_sync::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` with `fd` available to it as [`CHILD_FD`] (and nowhere
/// else: every other fd of ours is close-on-exec), then closes our copy
/// of `fd`.
pub fn spawn_with_fd(cmd: &mut Command, fd: OwnedFd) -> Reaped {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only
    // calls dup2/fcntl, which are async-signal-safe; `raw` stays open in
    // the parent until `spawn` has returned.
    unsafe { cmd.pre_exec(move || orcwire_shm::dup2_for_exec(raw, CHILD_FD)) };
    let child = cmd.spawn().unwrap();
    drop(fd);
    Reaped(child)
}

/// Number of fds open in this process.
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Whether `/dev/shm` has an entry for the shm object `name` (with its
/// leading `/`).
pub fn shm_exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm")
        .join(name.trim_start_matches('/'))
        .exists()
}
