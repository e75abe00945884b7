//! [`ExecutorProcess`]: the executor a controller spawned, reaped on
//! every path (waited for, or killed and reaped on drop), with a pidfd to
//! wait on without polling where the kernel has one.
//!
//! Relies on: `std::process::Child` for the reaping, [`pidfd_open`].

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use super::handshake::poll_readable;
use crate::liveness::pidfd_open;
use crate::sync::Mutex;

/// A spawned executor process. Dropping it kills (`SIGKILL`) and reaps the
/// process if it is still running, so no zombie is left; call
/// [`wait_timeout`](Self::wait_timeout) after disconnecting to let it exit
/// on its own.
#[derive(Debug)]
pub struct ExecutorProcess {
    child: Mutex<Child>,
    pid: u32,
    pub(super) pidfd: Option<OwnedFd>,
    status: Mutex<Option<ExitStatus>>,
}

impl ExecutorProcess {
    pub(super) fn new(child: Child) -> Self {
        let pid = child.id();
        // The child is not reaped yet, so the pid still names it.
        let pidfd = pidfd_open(pid).ok();
        Self {
            child: Mutex::new(child),
            pid,
            pidfd,
            status: Mutex::new(None),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits up to `timeout` for the process to exit and reaps it.
    /// Returns `None` if it is still running.
    ///
    /// # Errors
    /// The OS error from `poll` or `waitpid`.
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = *self.status.lock() {
            return Ok(Some(s));
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.lock().try_wait()? {
                *self.status.lock() = Some(s);
                return Ok(Some(s));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            match &self.pidfd {
                Some(p) => {
                    poll_readable(p.as_fd(), deadline).map_err(io::Error::other)?;
                }
                None => std::thread::sleep((deadline - now).min(Duration::from_millis(1))),
            }
        }
    }

    /// Sends `SIGKILL` (if the process has not been reaped yet).
    ///
    /// # Errors
    /// The OS error from `kill`.
    pub fn kill(&self) -> io::Result<()> {
        if self.status.lock().is_some() {
            return Ok(());
        }
        self.child.lock().kill()
    }

    pub(super) fn kill_and_reap(&mut self) {
        let _ = self.kill();
        if let Ok(s) = self.child.lock().wait() {
            *self.status.lock() = Some(s);
        }
    }
}

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        if self.status.lock().is_none() {
            self.kill_and_reap();
        }
    }
}
