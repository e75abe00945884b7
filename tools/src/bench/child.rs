//! The child process of every case: this same executable, re-run with
//! [`ENV_CHILD`] set, serving as executor (or floor partner, or raw echo)
//! until the controller hangs up.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::process::{Child, ExitCode};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use orcwire::stream::{StreamConfig, StreamTransport};
use orcwire::{DisconnectReason, ExecutorBuilder, Transport, WrapperFunctionBuffer};

use orcwire_shm::attach_inherited;

use super::{floor, peer, pin, raw, BenchError, TransportKind};

/// Environment variable that makes a process a benchmark child:
/// `<kind>;<fd>,<fd>...;<controller pid>;<cpu or ->`.
pub const ENV_CHILD: &str = "ORCWIRE_BENCH_CHILD";

/// What a child is asked to be.
pub(super) struct ChildSpec {
    pub(super) kind: TransportKind,
    /// Inherited fds (floor: the memfd; pipe: read, write; uds: the
    /// socket; shm: none, `launch` passes its own).
    pub(super) fds: Vec<RawFd>,
    /// The CPU to pin to.
    pub(super) cpu: Option<usize>,
}

/// The variable that asks for `spec`.
pub(super) fn child_env(spec: &ChildSpec) -> (&'static str, String) {
    let fds: Vec<String> = spec.fds.iter().map(|f| f.to_string()).collect();
    let cpu = spec.cpu.map_or("-".to_string(), |c| c.to_string());
    (
        ENV_CHILD,
        format!(
            "{};{};{};{cpu}",
            spec.kind.name(),
            fds.join(","),
            std::process::id()
        ),
    )
}

/// Parses the variable; `Err` names what is wrong.
fn parse(value: &str) -> Result<(ChildSpec, u32), String> {
    let parts: Vec<&str> = value.split(';').collect();
    let [kind, fds, parent, cpu] = parts.as_slice() else {
        return Err(format!("{ENV_CHILD}={value:?} is not kind;fds;pid;cpu"));
    };
    let kind = TransportKind::from_name(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    let fds = fds
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<RawFd>().map_err(|_| format!("bad fd {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let parent = parent.parse().map_err(|_| format!("bad pid {parent:?}"))?;
    let cpu = match *cpu {
        "-" => None,
        c => Some(c.parse().map_err(|_| format!("bad cpu {c:?}"))?),
    };
    Ok((ChildSpec { kind, fds, cpu }, parent))
}

/// When this process is a benchmark child (see [`ENV_CHILD`]), serves as
/// one and returns its exit code; otherwise returns `None` at once.
/// Call it first thing in `main` of any program that runs benchmarks.
///
/// ```
/// if let Some(code) = orcwire_tools::bench::run_child_if_requested() {
///     std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
/// }
/// ```
pub fn run_child_if_requested() -> Option<ExitCode> {
    let value = std::env::var(ENV_CHILD).ok()?;
    // Our own children (there are none) must not take the role again.
    std::env::remove_var(ENV_CHILD);
    Some(match run(&value) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orcwire bench child: {e}");
            ExitCode::from(1)
        }
    })
}

fn run(value: &str) -> Result<(), String> {
    let (spec, parent) = parse(value)?;
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    if i64::from(ppid) != i64::from(parent) {
        return Err(format!(
            "{ENV_CHILD} names controller pid {parent} but our parent is {ppid}"
        ));
    }
    if let Some(cpu) = spec.cpu {
        pin::pin_current_thread(cpu)?;
    }
    let fds = spec
        .fds
        .iter()
        .map(|&fd| adopt(fd))
        .collect::<Result<Vec<_>, _>>()?;
    let transport: Arc<dyn Transport> = match spec.kind {
        k if k.is_floor() => {
            let fd = fds.into_iter().next().ok_or("the floor needs its memfd")?;
            return floor::serve(k, fd, parent);
        }
        // The transport alone: no engine, no Setup; echoes until Hangup.
        k if k.is_raw() => {
            let t = attach_inherited(peer::shm_config(k)).map_err(|e| e.to_string())?;
            return raw::serve(&*t);
        }
        TransportKind::Pipe => {
            let mut it = fds.into_iter();
            let (Some(read), Some(write)) = (it.next(), it.next()) else {
                return Err("the pipe child needs two fds".into());
            };
            StreamTransport::from_fds(read, write, StreamConfig::default())
                .map_err(|e| e.to_string())?
        }
        TransportKind::Uds => {
            let read = fds
                .into_iter()
                .next()
                .ok_or("the uds child needs its socket")?;
            let write = read.try_clone().map_err(|e| e.to_string())?;
            StreamTransport::from_fds(read, write, StreamConfig::default())
                .map_err(|e| e.to_string())?
        }
        k => attach_inherited(peer::shm_config(k)).map_err(|e| e.to_string())?,
    };
    serve(transport)
}

/// Takes ownership of an inherited fd (close-on-exec again).
fn adopt(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: fcntl on a number has no memory-safety preconditions.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!("inherited fd {fd} is not open"));
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: the fd is open, was inherited for this role alone (the
    // variable names it and our parent set it up), and nothing else in
    // this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Serves `echo` and `drive` until the controller disconnects.
fn serve(transport: Arc<dyn Transport>) -> Result<(), String> {
    let endpoint = ExecutorBuilder::new()
        // The argument buffer goes back as the reply, as the floor's child
        // sends back what it copied out: both cost four copies of the
        // payload per round trip, so the ratio compares transports, not
        // handlers.
        .function("echo", |args, responder| responder.respond(args))
        .function("drive", |args, responder| {
            // The responder hands out our endpoint even when the controller
            // calls before `connect` below has returned it.
            let reply = match responder.endpoint() {
                Some(ep) => peer::drive(&ep, args.as_slice()),
                None => WrapperFunctionBuffer::out_of_band_error("the executor is disconnecting"),
            };
            responder.respond(reply);
        })
        .controller_handler("ctl_echo")
        .connect(transport)
        .map_err(|e| e.to_string())?;
    // Serve until the connection ends (the controller disconnects, or dies:
    // then the liveness channel or end of stream ends it). A callback
    // dropped without being called also ends the wait.
    let (tx, rx) = mpsc::channel();
    endpoint.on_disconnect(move |reason| {
        let _ = tx.send(reason.clone());
    });
    match rx.recv().unwrap_or(DisconnectReason::Local) {
        DisconnectReason::Local | DisconnectReason::PeerHungUp => Ok(()),
        other => Err(format!("connection ended: {other}")),
    }
}

/// Waits (bounded) for a child that was told to finish; kills it if it
/// does not, and reports a failure exit.
pub(super) fn wait_child(child: &mut Child, kind: TransportKind) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(BenchError::Child(format!(
                    "the {kind} child exited: {status}"
                )))
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BenchError::Child(format!(
                    "the {kind} child did not exit within 10 s; killed"
                )));
            }
            Err(e) => {
                return Err(BenchError::Child(format!(
                    "waiting for the {kind} child: {e}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_spec_round_trips() {
        let (_, v) = child_env(&ChildSpec {
            kind: TransportKind::Pipe,
            fds: vec![5, 7],
            cpu: Some(1),
        });
        let (spec, pid) = parse(&v).unwrap();
        assert_eq!(spec.kind, TransportKind::Pipe);
        assert_eq!(spec.fds, vec![5, 7]);
        assert_eq!(spec.cpu, Some(1));
        assert_eq!(pid, std::process::id());
        assert!(parse("nope;;1;-").is_err());
        assert!(parse("pipe;x;1;-").is_err());
    }
}
