//! The spawn flow: [`ExecutorCommand::spawn`] (controller) creates a
//! sealed memfd segment and a socket pair and starts the executor with
//! both fds inherited (made inheritable only in the child, between `fork`
//! and `exec`); [`attach_inherited`] (executor) finds them through
//! [`ENV_INHERITED`], checks them and attaches.
//!
//! Relies on: `handshake.rs` for the segment and the answer,
//! [`dup2_for_exec`] (async-signal-safe) in the child, and the parent pid
//! in the variable to refuse a variable inherited by a grandchild.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt, SockType};

use super::handshake::{attach_segment, create_segment, read_answer};
use super::{ExecutorProcess, LaunchError, DEFAULT_ATTACH_TIMEOUT};
use crate::fdpass::socket_pair;
use crate::segment::dup2_for_exec;
use crate::transport::{ShmConfig, ShmTransport};

/// Environment variable through which a spawned executor learns its fds:
/// `<segment fd>,<socket fd>,<controller pid>`.
pub const ENV_INHERITED: &str = "ORCWIRE_SHM_FDS";

/// Spawns an executor process connected over shared memory; see the
/// [crate docs](crate).
///
/// ```no_run
/// use std::process::Command;
/// use orcwire_shm::{ExecutorCommand, ShmConfig, WaitStrategy};
///
/// let mut cmd = Command::new("/usr/local/bin/my-executor");
/// cmd.arg("--quiet");
/// let spawned = ExecutorCommand::new(cmd)
///     .config(ShmConfig { wait: WaitStrategy::lowest_latency(), ..ShmConfig::default() })
///     .spawn()?;
/// println!("executor pid {}", spawned.process.id());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ExecutorCommand {
    command: Command,
    config: ShmConfig,
    attach_timeout: Duration,
}

/// What [`ExecutorCommand::spawn`] returns.
#[derive(Debug)]
pub struct SpawnedExecutor {
    /// The controller's end of the connection; hand it to
    /// `ControllerBuilder::connect`.
    pub transport: Arc<ShmTransport>,
    /// The executor process.
    pub process: ExecutorProcess,
}

impl ExecutorCommand {
    /// Wraps `command`, which must run a program that calls
    /// [`attach_inherited`].
    pub fn new(command: Command) -> Self {
        Self {
            command,
            config: ShmConfig::default(),
            attach_timeout: DEFAULT_ATTACH_TIMEOUT,
        }
    }

    /// Sets the segment's sizes and this side's wait strategy.
    #[must_use]
    pub fn config(mut self, config: ShmConfig) -> Self {
        self.config = config;
        self
    }

    /// How long to wait for the executor to attach (default 10 s).
    #[must_use]
    pub fn attach_timeout(mut self, timeout: Duration) -> Self {
        self.attach_timeout = timeout;
        self
    }

    /// Creates the segment, spawns the executor and waits until it has
    /// attached.
    ///
    /// # Errors
    /// [`LaunchError::Spawn`] when the process cannot start; segment and
    /// socket errors; [`LaunchError::PeerRefused`] when the executor
    /// rejected the segment; [`LaunchError::PeerGone`] when it exited
    /// first; [`LaunchError::Timeout`] when it did not answer in time (it
    /// is killed then).
    pub fn spawn(mut self) -> Result<SpawnedExecutor, LaunchError> {
        let (segment, transport) = create_segment(self.config)?;
        let (ours, theirs) = socket_pair()?;
        let seg_fd = segment.fd().as_raw_fd();
        let sock_fd = theirs.as_raw_fd();
        self.command.env(
            ENV_INHERITED,
            format!("{seg_fd},{sock_fd},{}", std::process::id()),
        );
        // SAFETY: the closure only calls fcntl (async-signal-safe via
        // `dup2_for_exec` with src == target), and both fds stay open in
        // the parent until `spawn` returns.
        unsafe {
            self.command.pre_exec(move || {
                dup2_for_exec(seg_fd, seg_fd)?;
                dup2_for_exec(sock_fd, sock_fd)
            });
        }
        let child = self.command.spawn().map_err(LaunchError::Spawn)?;
        drop(theirs);
        let mut process = ExecutorProcess::new(child);
        let deadline = Instant::now() + self.attach_timeout;
        match read_answer(ours.as_fd(), deadline, self.attach_timeout) {
            Ok(()) => {}
            Err(e) => {
                let e = match e {
                    LaunchError::PeerGone { .. } => LaunchError::PeerGone {
                        exit: process.wait_timeout(Duration::from_secs(1)).ok().flatten(),
                    },
                    other => other,
                };
                process.kill_and_reap();
                return Err(e);
            }
        }
        let pidfd = process.pidfd.as_ref().and_then(|p| p.try_clone().ok());
        transport.watch_peer(ours, pidfd)?;
        drop(segment);
        Ok(SpawnedExecutor { transport, process })
    }
}

/// The executor's end for a process started by [`ExecutorCommand`]:
/// reads [`ENV_INHERITED`], validates and maps the segment, attaches, and
/// starts watching the controller.
///
/// The inherited fds are made close-on-exec again, so the executor's own
/// children do not inherit them.
///
/// # Errors
/// [`LaunchError::NotLaunched`] when the variable is missing, malformed,
/// names fds that are not open, or was inherited from another parent;
/// segment and layout errors when the segment is refused.
pub fn attach_inherited(config: ShmConfig) -> Result<Arc<ShmTransport>, LaunchError> {
    let value = std::env::var_os(ENV_INHERITED)
        .ok_or_else(|| LaunchError::NotLaunched(format!("{ENV_INHERITED} is not set")))?;
    let (seg_fd, sock_fd, parent) = parse_inherited(&value)?;
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    if i64::from(ppid) != i64::from(parent) {
        return Err(LaunchError::NotLaunched(format!(
            "{ENV_INHERITED} names controller pid {parent} but our parent is {ppid}"
        )));
    }
    let memfd = adopt_fd(seg_fd)?;
    let sock = adopt_fd(sock_fd)?;
    check_seqpacket(sock.as_fd())?;
    let transport = attach_segment(memfd, &sock, config)?;
    transport.watch_peer(sock, None)?;
    Ok(transport)
}

/// Whether this process was started by [`ExecutorCommand`] (the variable
/// is set; [`attach_inherited`] still validates it).
pub fn is_launched_executor() -> bool {
    std::env::var_os(ENV_INHERITED).is_some()
}

fn parse_inherited(value: &OsStr) -> Result<(RawFd, RawFd, u32), LaunchError> {
    let bad = || {
        LaunchError::NotLaunched(format!(
            "{ENV_INHERITED}={:?} is not `<segment fd>,<socket fd>,<pid>`",
            value
        ))
    };
    let text = std::str::from_utf8(value.as_bytes()).map_err(|_| bad())?;
    let mut parts = text.split(',');
    let mut next = || parts.next().ok_or_else(bad);
    let seg: RawFd = next()?.parse().map_err(|_| bad())?;
    let sock: RawFd = next()?.parse().map_err(|_| bad())?;
    let pid: u32 = next()?.parse().map_err(|_| bad())?;
    if parts.next().is_some() || seg < 3 || sock < 3 || seg == sock || pid == 0 {
        return Err(bad());
    }
    Ok((seg, sock, pid))
}

/// Takes ownership of an inherited fd after checking it is open, and makes
/// it close-on-exec.
fn adopt_fd(fd: RawFd) -> Result<OwnedFd, LaunchError> {
    // SAFETY: fcntl on a number has no memory-safety preconditions.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(LaunchError::NotLaunched(format!(
            "inherited fd {fd} is not open"
        )));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(LaunchError::Os {
            op: "fcntl(F_SETFD)",
            source: Errno::last(),
        });
    }
    // SAFETY: the fd is open, was inherited for us alone (the variable
    // names it and our parent is the controller that set it up), and
    // nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check_seqpacket(sock: BorrowedFd<'_>) -> Result<(), LaunchError> {
    match getsockopt(&sock, sockopt::SockType) {
        Ok(SockType::SeqPacket) => Ok(()),
        Ok(other) => Err(LaunchError::NotLaunched(format!(
            "the inherited socket is {other:?}, not SOCK_SEQPACKET"
        ))),
        Err(e) => Err(LaunchError::NotLaunched(format!(
            "the inherited socket fd is not a socket: {e}"
        ))),
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;

    #[test]
    fn inherited_variable_is_parsed_strictly() {
        assert_eq!(parse_inherited(OsStr::new("5,6,77")).unwrap(), (5, 6, 77));
        for bad in [
            "", "5,6", "5,6,7,8", "1,6,7", "5,5,7", "a,6,7", "5,6,0", "5,-6,7",
        ] {
            assert!(
                matches!(
                    parse_inherited(OsStr::new(bad)),
                    Err(LaunchError::NotLaunched(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn adopting_a_closed_fd_is_refused() {
        assert!(matches!(
            adopt_fd(1_000_000),
            Err(LaunchError::NotLaunched(_))
        ));
    }
}
