//! Launch and attach: how a controller and an executor find each other.
//!
//! Three ways in, one handshake:
//!
//! * [`ExecutorCommand::spawn`] (controller): creates a sealed memfd
//!   segment and a Unix `SOCK_SEQPACKET` pair, and spawns the executor with
//!   both fds inherited (only by that child: they are made inheritable in
//!   the child between `fork` and `exec`, never in the parent). The fd
//!   numbers travel in the [`ENV_INHERITED`] environment variable together
//!   with the controller's pid, so a grandchild that inherits the variable
//!   but not the fds refuses it instead of attaching to a stranger's fd.
//! * [`ShmListener`] (controller): listens on a Unix socket path for an
//!   executor started independently, and sends it the memfd with
//!   `SCM_RIGHTS`. The socket is created mode 0600 and the peer's uid is
//!   checked (`SO_PEERCRED`).
//! * [`attach_inherited`] / [`attach_path`] (executor): the two ends of
//!   the above.
//! * [`NamedOffer`] / [`attach_named`]: a name in `/dev/shm` that leads
//!   to the memfd, for an executor that can only be told a name (no
//!   socket, no fd); liveness then comes from each side's pidfd of the
//!   other.
//!
//! In every case the executor validates the memfd (seals, size) and the
//! segment layout before it trusts anything in it, attaches, and answers
//! on the socket with one datagram: `ATTACHED`, or `ERROR <text>`. The
//! controller waits for that answer (bounded), so a failed attach is an
//! error on both sides rather than a hang.
//!
//! After the handshake the socket pair stays open, unused, as the
//! *liveness channel*: each side's [`ShmTransport::watch_peer`] sees it
//! hang up the instant the other process exits, however it exits, and the
//! transport fails every call with `PeerDied`. The controller also watches
//! the spawned child's pidfd.
//!
//! # Example
//! ```no_run
//! use std::process::Command;
//! use orcwire::ControllerBuilder;
//! use orcwire_shm::launch::ExecutorCommand;
//!
//! // The executor binary calls `orcwire_shm::launch::attach_inherited`.
//! let spawned = ExecutorCommand::new(Command::new("./my-executor")).spawn()?;
//! let controller = ControllerBuilder::new().connect(spawned.transport.clone())?;
//! // ... calls ...
//! controller.disconnect();
//! let status = spawned.process.wait_timeout(std::time::Duration::from_secs(5))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    accept4, bind, connect, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, UnixAddr,
};

use crate::fdpass::{recv_fd_timeout, send_fd, socket_pair, FdPassError};
use crate::layout::{LayoutError, SegmentHeader};
use crate::liveness::{pidfd_open, LivenessError};
use crate::mapping::SharedMapping;
use crate::named::{NamedRendezvous, NamedRendezvousError};
use crate::segment::{dup2_for_exec, Segment, SegmentError};
use crate::sync::Mutex;
use crate::transport::{required_size, ShmConfig, ShmTransport};

/// Environment variable through which a spawned executor learns its fds:
/// `<segment fd>,<socket fd>,<controller pid>`.
pub const ENV_INHERITED: &str = "ORCWIRE_SHM_FDS";

/// Payload that travels with the memfd over a listener connection.
const HELLO: &[u8] = b"ORCWSHM1 segment";
/// The executor's answer after a successful attach.
const ATTACHED: &[u8] = b"ATTACHED";
/// Prefix of the executor's answer after a failed attach.
const ERROR_PREFIX: &[u8] = b"ERROR ";
/// Longest answer read from the peer.
const MAX_ANSWER: usize = 1024;

/// Default bound on the whole handshake.
pub const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a launch, accept or attach failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The executor process could not be started.
    #[error("could not start the executor process: {0}; check the program path and permissions")]
    Spawn(#[source] io::Error),
    /// The shared segment could not be created or was refused.
    #[error("shared segment: {0}")]
    Segment(#[from] SegmentError),
    /// The segment's layout was refused.
    #[error("shared segment layout: {0}")]
    Layout(#[from] LayoutError),
    /// Passing the segment's fd failed.
    #[error("passing the segment fd: {0}")]
    FdPass(#[from] FdPassError),
    /// The liveness watcher could not start.
    #[error("{0}")]
    Liveness(#[from] LivenessError),
    /// A socket call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The error the kernel returned.
        source: Errno,
    },
    /// The executor reported that it could not attach.
    #[error("the executor could not attach: {0}")]
    PeerRefused(String),
    /// The peer went away during the handshake.
    #[error("the peer hung up or exited during the handshake{}", exit.map(|s| format!(" ({s})")).unwrap_or_default())]
    PeerGone {
        /// The spawned executor's exit status, when known.
        exit: Option<ExitStatus>,
    },
    /// The handshake did not finish in time.
    #[error(
        "the handshake did not finish within {0:?}; the peer is stuck or not an orcwire executor"
    )]
    Timeout(Duration),
    /// The peer answered something that is not part of the handshake.
    #[error("the peer broke the handshake: {0}")]
    Protocol(String),
    /// `attach_inherited` found no usable [`ENV_INHERITED`].
    #[error("{0}; start this process with orcwire_shm::launch::ExecutorCommand, or attach with attach_path")]
    NotLaunched(String),
    /// The named segment could not be created, opened or unlinked.
    #[error("named segment: {0}")]
    Named(#[from] NamedRendezvousError),
    /// A connection on the listener came from another user.
    #[error("refused a connection from uid {peer}: only uid {ours} may attach")]
    WrongUser {
        /// The connecting process's uid.
        peer: u32,
        /// Our uid.
        ours: u32,
    },
    /// The listening socket could not be set up.
    #[error("could not listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

fn os(op: &'static str) -> impl FnOnce(Errno) -> LaunchError {
    move |source| LaunchError::Os { op, source }
}

/// Waits until `fd` is readable (or hung up), up to `deadline`.
fn poll_readable(fd: BorrowedFd<'_>, deadline: Instant) -> Result<bool, LaunchError> {
    crate::fdpass::poll_readable(fd, deadline).map_err(os("poll"))
}

/// Reads the executor's one-datagram answer.
fn read_answer(
    sock: BorrowedFd<'_>,
    deadline: Instant,
    limit: Duration,
) -> Result<(), LaunchError> {
    if !poll_readable(sock, deadline)? {
        return Err(LaunchError::Timeout(limit));
    }
    let mut buf = [0u8; MAX_ANSWER];
    let n = loop {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes.
        let rc = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if rc >= 0 {
            break rc as usize;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::ECONNRESET => return Err(LaunchError::PeerGone { exit: None }),
            e => {
                return Err(LaunchError::Os {
                    op: "recv",
                    source: e,
                })
            }
        }
    };
    let answer = &buf[..n];
    if n == 0 {
        Err(LaunchError::PeerGone { exit: None })
    } else if answer == ATTACHED {
        Ok(())
    } else if let Some(text) = answer.strip_prefix(ERROR_PREFIX) {
        Err(LaunchError::PeerRefused(
            String::from_utf8_lossy(text).into_owned(),
        ))
    } else {
        Err(LaunchError::Protocol(format!(
            "unexpected answer of {n} bytes instead of ATTACHED"
        )))
    }
}

fn send_answer(sock: BorrowedFd<'_>, answer: &[u8]) {
    let answer = &answer[..answer.len().min(MAX_ANSWER)];
    // SAFETY: `answer` is valid for `answer.len()` readable bytes.
    // A failure means the controller is gone; attach reports it next.
    let _ = unsafe {
        libc::send(
            sock.as_raw_fd(),
            answer.as_ptr().cast(),
            answer.len(),
            libc::MSG_NOSIGNAL,
        )
    };
}

/// Creates a segment for `config` and the controller's transport in it.
fn create_segment(config: ShmConfig) -> Result<(Arc<Segment>, Arc<ShmTransport>), LaunchError> {
    let segment = Arc::new(Segment::create(required_size(&config))?);
    let mapping: Arc<dyn SharedMapping> = Arc::clone(&segment) as Arc<dyn SharedMapping>;
    let transport = Arc::new(ShmTransport::create(mapping, config)?);
    Ok((segment, transport))
}

/// Maps a received segment and attaches as the executor; reports the
/// outcome on `sock`.
fn attach_segment(
    memfd: OwnedFd,
    sock: &OwnedFd,
    config: ShmConfig,
) -> Result<Arc<ShmTransport>, LaunchError> {
    let attached = Segment::from_fd(memfd, std::mem::size_of::<SegmentHeader>())
        .map_err(LaunchError::from)
        .and_then(|seg| {
            let mapping: Arc<dyn SharedMapping> = Arc::new(seg);
            ShmTransport::attach(mapping, config).map_err(LaunchError::from)
        });
    match attached {
        Ok(t) => {
            send_answer(sock.as_fd(), ATTACHED);
            Ok(Arc::new(t))
        }
        Err(e) => {
            let mut msg = ERROR_PREFIX.to_vec();
            msg.extend_from_slice(e.to_string().as_bytes());
            send_answer(sock.as_fd(), &msg);
            Err(e)
        }
    }
}

/// Spawns an executor process connected over shared memory; see the
/// [module docs](self).
///
/// ```no_run
/// use std::process::Command;
/// use orcwire_shm::launch::ExecutorCommand;
/// use orcwire_shm::{ShmConfig, WaitStrategy};
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

/// A spawned executor process. Dropping it kills (`SIGKILL`) and reaps the
/// process if it is still running, so no zombie is left; call
/// [`wait_timeout`](Self::wait_timeout) after disconnecting to let it exit
/// on its own.
#[derive(Debug)]
pub struct ExecutorProcess {
    child: Mutex<Child>,
    pid: u32,
    pidfd: Option<OwnedFd>,
    status: Mutex<Option<ExitStatus>>,
}

impl ExecutorProcess {
    fn new(child: Child) -> Self {
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

    fn kill_and_reap(&mut self) {
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

/// The executor's end for a controller listening on `path` ([`ShmListener`]):
/// connects, receives the memfd, attaches and starts watching the
/// controller.
///
/// # Errors
/// [`LaunchError::Os`] when the socket cannot connect (no listener);
/// [`LaunchError::FdPass`] when no valid fd arrives within `timeout`;
/// segment and layout errors when the segment is refused.
pub fn attach_path(
    path: impl AsRef<Path>,
    config: ShmConfig,
    timeout: Duration,
) -> Result<Arc<ShmTransport>, LaunchError> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(os("socket"))?;
    let addr = UnixAddr::new(path.as_ref()).map_err(os("socket path"))?;
    connect(sock.as_raw_fd(), &addr).map_err(os("connect"))?;
    let mut buf = [0u8; 64];
    let (memfd, n) = recv_fd_timeout(sock.as_fd(), &mut buf, timeout)?;
    if &buf[..n] != HELLO {
        let e = LaunchError::Protocol("the listener's greeting is not orcwire's".into());
        let mut msg = ERROR_PREFIX.to_vec();
        msg.extend_from_slice(e.to_string().as_bytes());
        send_answer(sock.as_fd(), &msg);
        return Err(e);
    }
    let transport = attach_segment(memfd, &sock, config)?;
    transport.watch_peer(sock, None)?;
    Ok(transport)
}

/// A controller listening on a Unix socket path for independently
/// started executors ([`attach_path`]). Each [`accept`](Self::accept)
/// makes a fresh segment for one executor. The socket file is removed on
/// drop.
///
/// ```
/// use std::time::Duration;
/// use orcwire_shm::launch::{attach_path, ShmListener};
/// use orcwire_shm::ShmConfig;
///
/// let dir = std::env::temp_dir().join(format!("orcwire-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("ctl.sock");
/// let listener = ShmListener::bind(&path, ShmConfig::default())?;
/// let p = path.clone();
/// let exec = std::thread::spawn(move || attach_path(p, ShmConfig::default(), Duration::from_secs(5)));
/// let controller_end = listener.accept(Some(Duration::from_secs(5)))?;
/// let executor_end = exec.join().unwrap()?;
/// assert_eq!(executor_end.epoch(), controller_end.epoch());
/// drop(listener);
/// std::fs::remove_dir(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ShmListener {
    sock: OwnedFd,
    path: PathBuf,
    config: ShmConfig,
}

impl ShmListener {
    /// Binds a `SOCK_SEQPACKET` listener at `path` (which must not exist),
    /// mode 0600.
    ///
    /// # Errors
    /// [`LaunchError::Listen`] when the path is taken or unusable.
    pub fn bind(path: impl AsRef<Path>, config: ShmConfig) -> Result<Self, LaunchError> {
        let path = path.as_ref().to_path_buf();
        let listen_err = |source: io::Error| LaunchError::Listen {
            path: path.clone(),
            source,
        };
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| listen_err(e.into()))?;
        let addr = UnixAddr::new(&path).map_err(|e| listen_err(e.into()))?;
        bind(sock.as_raw_fd(), &addr).map_err(|e| listen_err(e.into()))?;
        // Before listen(): nobody can connect yet, so there is no window
        // in which another user could.
        use std::os::unix::fs::PermissionsExt;
        let perms = std::fs::Permissions::from_mode(0o600);
        if let Err(e) = std::fs::set_permissions(&path, perms) {
            let _ = std::fs::remove_file(&path);
            return Err(listen_err(e));
        }
        let backlog = Backlog::new(16).map_err(|e| listen_err(e.into()))?;
        if let Err(e) = listen(&sock, backlog) {
            let _ = std::fs::remove_file(&path);
            return Err(listen_err(e.into()));
        }
        Ok(Self { sock, path, config })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits (up to `timeout`, or forever with `None`) for one executor,
    /// sends it a fresh segment and waits for it to attach.
    ///
    /// # Errors
    /// [`LaunchError::Timeout`] when nobody connected or the executor did
    /// not answer in time; [`LaunchError::WrongUser`] for a connection
    /// from another uid; [`LaunchError::PeerRefused`] /
    /// [`LaunchError::PeerGone`] when the executor failed to attach.
    pub fn accept(&self, timeout: Option<Duration>) -> Result<Arc<ShmTransport>, LaunchError> {
        let limit = timeout.unwrap_or(Duration::MAX);
        let deadline = timeout.map(|t| Instant::now() + t);
        if let Some(d) = deadline {
            if !poll_readable(self.sock.as_fd(), d)? {
                return Err(LaunchError::Timeout(limit));
            }
        }
        let raw = loop {
            match accept4(self.sock.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => break fd,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(LaunchError::Os {
                        op: "accept",
                        source: e,
                    })
                }
            }
        };
        // SAFETY: accept4 returned a fresh fd that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(raw) };
        let cred = getsockopt(&conn, sockopt::PeerCredentials).map_err(os("SO_PEERCRED"))?;
        // SAFETY: geteuid has no preconditions.
        let ours = unsafe { libc::geteuid() };
        if cred.uid() != ours {
            return Err(LaunchError::WrongUser {
                peer: cred.uid(),
                ours,
            });
        }
        let (segment, transport) = create_segment(self.config)?;
        send_fd(conn.as_fd(), segment.fd(), HELLO)?;
        let answer_deadline = deadline.unwrap_or_else(|| Instant::now() + DEFAULT_ATTACH_TIMEOUT);
        read_answer(
            conn.as_fd(),
            answer_deadline,
            limit.min(DEFAULT_ATTACH_TIMEOUT),
        )?;
        let pidfd = u32::try_from(cred.pid())
            .ok()
            .and_then(|pid| pidfd_open(pid).ok());
        transport.watch_peer(conn, pidfd)?;
        Ok(transport)
    }
}

impl Drop for ShmListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A connection offered under a name, for an executor that can only be
/// told a name: the name is a [`NamedRendezvous`] that leads the executor
/// to the connection's sealed memfd (so no peer can truncate the memory
/// under us), and liveness comes from each side's pidfd of the other.
/// Give the executor [`name`](Self::name); it calls [`attach_named`].
/// Both sides unlink the name as soon as the executor is attached. See
/// [`crate::named`] for what the flow needs (same user, a dumpable
/// controller, a `/proc` that shows its fds) and for crash clean-up.
///
/// ```
/// use std::time::Duration;
/// use orcwire_shm::launch::{attach_named, NamedOffer};
/// use orcwire_shm::ShmConfig;
///
/// let offer = NamedOffer::create(ShmConfig::default())?;
/// let name = offer.name().to_owned();
/// let exec = std::thread::spawn(move || attach_named(&name, ShmConfig::default()));
/// let controller_end = offer.wait_attached(Duration::from_secs(5))?;
/// let executor_end = exec.join().unwrap()?;
/// assert_eq!(controller_end.epoch(), executor_end.epoch());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct NamedOffer {
    rendezvous: NamedRendezvous,
    transport: Arc<ShmTransport>,
}

impl NamedOffer {
    /// Creates the connection's memfd segment, the controller's end in it,
    /// and the rendezvous name leading to it.
    ///
    /// # Errors
    /// [`LaunchError::Segment`] when the segment cannot be created;
    /// [`LaunchError::Named`] when the name cannot; [`LaunchError::Layout`]
    /// for a bad `config`.
    pub fn create(config: ShmConfig) -> Result<Self, LaunchError> {
        let segment = Arc::new(Segment::create(required_size(&config))?);
        let rendezvous = NamedRendezvous::create(&segment)?;
        // The transport holds the segment, and so keeps its fd open for
        // the executor to find until it is dropped.
        let mapping: Arc<dyn SharedMapping> = segment;
        let transport = Arc::new(ShmTransport::create(mapping, config)?);
        Ok(Self {
            rendezvous,
            transport,
        })
    }

    /// The name to give the executor.
    pub fn name(&self) -> &str {
        self.rendezvous.name()
    }

    /// Waits (polling every millisecond) until an executor has attached,
    /// then unlinks the name and starts watching the executor's pid.
    /// On a timeout the name is unlinked too (dropping the offer removes
    /// it).
    ///
    /// # Errors
    /// [`LaunchError::Timeout`] when nobody attached in time;
    /// [`LaunchError::Named`] when unlinking fails.
    pub fn wait_attached(self, timeout: Duration) -> Result<Arc<ShmTransport>, LaunchError> {
        let deadline = Instant::now() + timeout;
        while self.transport.connection_state() & crate::layout::state::EXECUTOR_ATTACHED == 0 {
            if Instant::now() >= deadline {
                return Err(LaunchError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.rendezvous.unlink()?;
        watch_pid(&self.transport)?;
        Ok(self.transport)
    }
}

/// The executor's end of a [`NamedOffer`]: reads the rendezvous `name`
/// (checking owner and mode), opens the controller's memfd through
/// `/proc`, checks its seals and layout, attaches, unlinks the name, and
/// starts watching the controller's pid.
///
/// # Errors
/// [`LaunchError::Named`] when the name cannot be read or the segment
/// reached; [`LaunchError::Segment`] / [`LaunchError::Layout`] when the
/// segment is refused; [`LaunchError::Protocol`] when the segment's
/// controller is not the process the name named.
pub fn attach_named(name: &str, config: ShmConfig) -> Result<Arc<ShmTransport>, LaunchError> {
    let rendezvous = NamedRendezvous::open(name)?;
    let segment = Segment::from_fd(
        rendezvous.open_segment()?,
        std::mem::size_of::<SegmentHeader>(),
    )?;
    let mapping: Arc<dyn SharedMapping> = Arc::new(segment);
    let transport = Arc::new(ShmTransport::attach(mapping, config)?);
    rendezvous.unlink()?;
    if transport.peer_pid() != Some(rendezvous.controller_pid()) {
        orcwire::Transport::close(&*transport);
        return Err(LaunchError::Protocol(format!(
            "the segment behind {name} belongs to pid {:?}, not to pid {} that the name named",
            transport.peer_pid(),
            rendezvous.controller_pid()
        )));
    }
    watch_pid(&transport)?;
    Ok(transport)
}

/// Watches the pid the peer wrote into the segment. A pidfd turns
/// readable when its process exits; the watcher treats that as the
/// liveness channel hanging up.
fn watch_pid(transport: &Arc<ShmTransport>) -> Result<(), LaunchError> {
    let pid = transport
        .peer_pid()
        .ok_or_else(|| LaunchError::Protocol("the peer wrote no pid into the segment".into()))?;
    let pidfd = pidfd_open(pid)
        .map_err(|e| LaunchError::Protocol(format!("cannot watch peer pid {pid}: {e}")))?;
    transport.watch_peer(pidfd, None)?;
    Ok(())
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

    #[test]
    fn listener_refuses_a_wrong_greeting_and_a_non_memfd() {
        let dir = std::env::temp_dir().join(format!("orcwire-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let listener = ShmListener::bind(&path, ShmConfig::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        // Accept times out when nobody comes.
        assert!(matches!(
            listener.accept(Some(Duration::from_millis(20))),
            Err(LaunchError::Timeout(_))
        ));
        // An executor that refuses: simulate by an attach to a pipe fd.
        let (ours, theirs) = socket_pair().unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        send_fd(ours.as_fd(), r.as_fd(), HELLO).unwrap();
        let mut buf = [0u8; 64];
        let (fd, _) = recv_fd_timeout(theirs.as_fd(), &mut buf, Duration::from_secs(1)).unwrap();
        assert!(matches!(
            attach_segment(fd, &theirs, ShmConfig::default()),
            Err(LaunchError::Segment(_))
        ));
        let e = read_answer(
            ours.as_fd(),
            Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            matches!(e, LaunchError::PeerRefused(ref t) if t.contains("memfd")),
            "{e}"
        );
        drop(listener);
        assert!(!path.exists());
        std::fs::remove_dir(&dir).unwrap();
    }
}
