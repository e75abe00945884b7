//! [`Peer`]: the controller's side of one case's two processes, and the
//! call loops both sides run (round trips, pipelined calls).

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use orcwire::{ControllerBuilder, Endpoint, HandlerTag, Transport, WrapperFunctionBuffer};
use orcwire::{StreamConfig, StreamTransport};

use std::sync::Arc;
use std::thread;

use orcwire_shm::{dup2_for_exec, ShmConfig, WaitStrategy};
use orcwire_shm::{ExecutorCommand, ExecutorProcess};

use super::child::{child_env, wait_child, ChildSpec};
use super::floor::FloorPeer;
use super::raw::RawPeer;
use super::{BenchError, Direction, TransportKind};

/// Calls that verify a case before it is timed.
const CHECK_CALLS: usize = 3;

/// The shared-memory settings of a `shm-*` kind (both sides use them);
/// `shm-raw` uses the spin preset's.
pub(super) fn shm_config(kind: TransportKind) -> ShmConfig {
    let wait = match kind {
        TransportKind::ShmSpin | TransportKind::ShmRaw => WaitStrategy::lowest_latency(),
        TransportKind::ShmBlock => WaitStrategy::low_cpu(),
        _ => WaitStrategy::balanced(),
    };
    ShmConfig {
        wait,
        ..ShmConfig::default()
    }
}

/// Deterministic test bytes (xorshift from `seed`), shared by the
/// benchmarks and the demo.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes call number `n` over the first (up to) 8 bytes, so a stale or
/// misrouted reply is caught.
pub(super) fn stamp(arg: &mut [u8], n: u64) {
    let k = arg.len().min(8);
    arg[..k].copy_from_slice(&n.to_le_bytes()[..k]);
}

/// The controller's side of a running case: the child process and the
/// connection to it.
pub struct Peer {
    inner: Inner,
}

enum Inner {
    Floor(FloorPeer),
    Raw(RawPeer),
    Endpoint(EndpointPeer),
}

enum Process {
    Shm(ExecutorProcess),
    Plain(Child),
}

struct EndpointPeer {
    kind: TransportKind,
    endpoint: Endpoint,
    process: Process,
    echo: HandlerTag,
    drive: HandlerTag,
}

/// `drive` request: mode (0 round trips, 1 pipelined), payload, calls,
/// threads, window; five little-endian u64.
fn drive_args(mode: u64, payload: usize, calls: usize, threads: usize, window: usize) -> Vec<u8> {
    [
        mode,
        payload as u64,
        calls as u64,
        threads as u64,
        window as u64,
    ]
    .iter()
    .flat_map(|v| v.to_le_bytes())
    .collect()
}

fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect()
}

fn to_bytes(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The executor's `drive` function: makes the calls the controller asked
/// for to the controller's `ctl_echo` and returns the samples (pipelined:
/// the elapsed ns first), or an out-of-band error naming what failed.
pub(super) fn drive(ep: &Endpoint, args: &[u8]) -> WrapperFunctionBuffer {
    let w = words(args);
    let [mode, payload, calls, threads, window] = w.as_slice() else {
        return WrapperFunctionBuffer::out_of_band_error("drive takes five u64");
    };
    let Some(tag) = ep.handler_tag("ctl_echo") else {
        return WrapperFunctionBuffer::out_of_band_error("the controller has no ctl_echo");
    };
    let (payload, calls) = (*payload as usize, *calls as usize);
    let result = match mode {
        0 => rtt_calls(ep, tag, payload, calls).map(|s| to_bytes(&s)),
        _ => pipelined_calls(ep, tag, payload, *threads as usize, *window as usize, calls).map(
            |(s, elapsed)| {
                let mut out = Vec::with_capacity(8 * (s.len() + 1));
                out.extend_from_slice(&(elapsed.as_nanos() as u64).to_le_bytes());
                out.extend_from_slice(&to_bytes(&s));
                out
            },
        ),
    };
    match result {
        Ok(bytes) => WrapperFunctionBuffer::from_vec(bytes),
        Err(e) => WrapperFunctionBuffer::out_of_band_error(e.to_string()),
    }
}

fn check_reply(
    got: Result<WrapperFunctionBuffer, orcwire::CallError>,
    expected: &[u8],
    what: &dyn Fn() -> String,
) -> Result<(), BenchError> {
    let got = got.map_err(|e| BenchError::Call(format!("{}: {e}", what())))?;
    if got.is_error() {
        return Err(BenchError::Call(format!(
            "{}: {}",
            what(),
            got.error_message().unwrap_or("error result")
        )));
    }
    if got.as_slice() != expected {
        return Err(BenchError::WrongResult(format!(
            "{}: the echo came back different ({} bytes for {})",
            what(),
            got.len(),
            expected.len()
        )));
    }
    Ok(())
}

/// `calls` synchronous echo calls of `payload` bytes, each timed, then
/// checked (outside the timing); samples in ns.
pub(super) fn rtt_calls(
    ep: &Endpoint,
    tag: HandlerTag,
    payload: usize,
    calls: usize,
) -> Result<Vec<u64>, BenchError> {
    let mut arg = pattern(payload, payload as u64 + 1);
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls as u64 {
        stamp(&mut arg, i);
        let t = Instant::now();
        let got = ep.call_sync(tag, &arg);
        samples.push(t.elapsed().as_nanos() as u64);
        check_reply(got, &arg, &|| format!("{payload} B call {i}"))?;
    }
    Ok(samples)
}

/// One pipelined call in this many is timed (issue to result): one per
/// window of 64. Two clock reads (~25 ns each here) for every 8 calls took
/// ~4 % of a pipelined call's time once the call cost ~170 ns
/// (`docs/BENCHMARKS.md`, 2026-11-30 (8)); a 1-second case still times
/// ~90,000 calls, a quick one ~14,000, enough for its p99.9.
pub const SAMPLE_EVERY: u64 = 64;

/// Latency samples [`pipelined_calls`] returns for `calls` calls over
/// `threads` threads.
pub fn sampled(calls: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    calls.div_ceil(threads).div_ceil(SAMPLE_EVERY as usize) * threads
}

/// `calls` echo calls of `payload` bytes split over `threads` threads,
/// each keeping `window` in flight; every reply is checked. Returns the
/// latency (issue to result) of every [`SAMPLE_EVERY`]-th call of each
/// thread and the elapsed time of the whole run.
pub(super) fn pipelined_calls(
    ep: &Endpoint,
    tag: HandlerTag,
    payload: usize,
    threads: usize,
    window: usize,
    calls: usize,
) -> Result<(Vec<u64>, Duration), BenchError> {
    let threads = threads.max(1);
    let window = window.max(1);
    let per_thread = calls.div_ceil(threads);
    let start = Instant::now();
    let results: Vec<Result<Vec<u64>, BenchError>> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || pipelined_thread(ep, tag, payload, window, per_thread, t as u64))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::Call("a calling thread panicked".into())))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut all = Vec::with_capacity(per_thread * threads);
    for r in results {
        all.extend(r?);
    }
    Ok((all, elapsed))
}

/// One calling thread's window of calls, through a [`orcwire::Pipeline`]
/// (calls sent in batches, results in order); every [`SAMPLE_EVERY`]-th
/// call timed.
fn pipelined_thread(
    ep: &Endpoint,
    tag: HandlerTag,
    payload: usize,
    window: usize,
    calls: usize,
    thread_no: u64,
) -> Result<Vec<u64>, BenchError> {
    let base = pattern(payload, payload as u64 + 7 + thread_no);
    let mut arg = base.clone();
    let mut expected = base;
    let mut samples = Vec::with_capacity(calls.div_ceil(SAMPLE_EVERY as usize));
    // Submission time (timed calls) and stamp of each call in flight,
    // oldest first.
    let mut in_flight: VecDeque<(Option<Instant>, u64)> = VecDeque::with_capacity(window);
    let stamp_of = |i: u64| (thread_no << 40) | i;
    let mut pipe = ep.pipeline();
    let mut take_one = |pipe: &mut orcwire::Pipeline,
                        in_flight: &mut VecDeque<(Option<Instant>, u64)>,
                        samples: &mut Vec<u64>|
     -> Result<(), BenchError> {
        let got = pipe.next();
        let Some((t, n)) = in_flight.pop_front() else {
            return Ok(());
        };
        if let Some(t) = t {
            samples.push(t.elapsed().as_nanos() as u64);
        }
        stamp(&mut expected, n);
        let got =
            got.ok_or_else(|| BenchError::Call(format!("pipelined call {n:#x} went missing")))?;
        check_reply(got, &expected, &|| {
            format!("pipelined {payload} B call {n:#x}")
        })
    };
    for i in 0..calls as u64 {
        if in_flight.len() == window {
            take_one(&mut pipe, &mut in_flight, &mut samples)?;
        }
        stamp(&mut arg, stamp_of(i));
        let timed = (i % SAMPLE_EVERY == 0).then(Instant::now);
        pipe.submit(tag, &arg);
        in_flight.push_back((timed, stamp_of(i)));
    }
    while !in_flight.is_empty() {
        take_one(&mut pipe, &mut in_flight, &mut samples)?;
    }
    Ok(samples)
}

/// Makes `fd` inheritable by the child only (in the child, after fork).
fn inherit(cmd: &mut Command, fd: i32) {
    // SAFETY: the closure only calls fcntl (async-signal-safe); the caller
    // keeps `fd` open until `spawn` returns.
    unsafe { cmd.pre_exec(move || dup2_for_exec(fd, fd)) };
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe2: {e}"))?;
    // As the stream transport's own pipe pairs: 1 MiB where allowed.
    let _ = fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(1 << 20));
    Ok((read, write))
}

impl Peer {
    /// Starts the child for `kind` (pinned to `child_cpu` when given) and
    /// connects to it.
    ///
    /// # Errors
    /// [`BenchError::Start`] when the child cannot be started or connected.
    pub fn spawn(kind: TransportKind, child_cpu: Option<usize>) -> Result<Self, BenchError> {
        if kind.is_floor() {
            return Ok(Self {
                inner: Inner::Floor(FloorPeer::spawn(kind, child_cpu)?),
            });
        }
        if kind.is_raw() {
            return Ok(Self {
                inner: Inner::Raw(RawPeer::spawn(kind, child_cpu)?),
            });
        }
        let start = |detail: String| BenchError::Start {
            kind: kind.name(),
            detail,
        };
        let exe = std::env::current_exe().map_err(|e| start(e.to_string()))?;
        let mut cmd = Command::new(exe);
        let spec = |fds| ChildSpec {
            kind,
            fds,
            cpu: child_cpu,
        };
        let (transport, process): (Arc<dyn Transport>, Process) = match kind {
            TransportKind::Pipe => {
                let (to_child_r, to_child_w) = pipe().map_err(start)?;
                let (from_child_r, from_child_w) = pipe().map_err(start)?;
                let fds = vec![to_child_r.as_raw_fd(), from_child_w.as_raw_fd()];
                for &fd in &fds {
                    inherit(&mut cmd, fd);
                }
                let (k, v) = child_env(&spec(fds));
                cmd.env(k, v);
                let child = cmd.spawn().map_err(|e| start(format!("spawn: {e}")))?;
                drop((to_child_r, from_child_w));
                let t =
                    StreamTransport::from_fds(from_child_r, to_child_w, StreamConfig::default())
                        .map_err(|e| start(e.to_string()))?;
                (t, Process::Plain(child))
            }
            TransportKind::Uds => {
                let (ours, theirs) = UnixStream::pair().map_err(|e| start(e.to_string()))?;
                let fd = theirs.as_raw_fd();
                inherit(&mut cmd, fd);
                let (k, v) = child_env(&spec(vec![fd]));
                cmd.env(k, v);
                let child = cmd.spawn().map_err(|e| start(format!("spawn: {e}")))?;
                drop(theirs);
                let t = StreamTransport::from_unix(ours, StreamConfig::default())
                    .map_err(|e| start(e.to_string()))?;
                (t, Process::Plain(child))
            }
            _ => {
                let (k, v) = child_env(&spec(Vec::new()));
                cmd.env(k, v);
                let spawned = ExecutorCommand::new(cmd)
                    .config(shm_config(kind))
                    .spawn()
                    .map_err(|e| start(e.to_string()))?;
                (spawned.transport, Process::Shm(spawned.process))
            }
        };
        let endpoint = ControllerBuilder::new()
            // Zero-copy echo, like the executor's `echo` (see child.rs).
            .handler("ctl_echo", |args, responder| responder.respond(args))
            .connect(transport);
        let mut process = process;
        let endpoint = match endpoint {
            Ok(ep) => ep,
            Err(e) => {
                process.kill();
                return Err(start(format!("connecting: {e}")));
            }
        };
        let tags = (
            endpoint.function_tag("echo"),
            endpoint.function_tag("drive"),
        );
        let (Some(echo), Some(drive)) = tags else {
            endpoint.disconnect();
            process.kill();
            return Err(start("the child does not publish echo and drive".into()));
        };
        Ok(Self {
            inner: Inner::Endpoint(EndpointPeer {
                kind,
                endpoint,
                process,
                echo,
                drive,
            }),
        })
    }

    /// What this peer runs over.
    pub fn kind(&self) -> TransportKind {
        match &self.inner {
            Inner::Floor(f) => f.kind(),
            Inner::Raw(r) => r.kind(),
            Inner::Endpoint(e) => e.kind,
        }
    }

    /// `calls` round trips of `payload` bytes in `direction`, after
    /// `CHECK_CALLS` (3) checked ones; every result is checked. Samples in ns.
    ///
    /// # Errors
    /// [`BenchError::Unsupported`] for a floor in the to-controller
    /// direction (the floor is symmetric) and for `shm-raw` (pipelined
    /// calls only); a failed call or wrong result.
    pub fn rtt(
        &mut self,
        direction: Direction,
        payload: usize,
        calls: usize,
    ) -> Result<Vec<u64>, BenchError> {
        match &mut self.inner {
            Inner::Floor(f) => {
                if direction != Direction::ToExecutor {
                    return Err(BenchError::Unsupported(
                        "the floor is symmetric; it runs controller → child only".into(),
                    ));
                }
                f.rtt(payload, CHECK_CALLS)?;
                f.rtt(payload, calls)
            }
            Inner::Raw(r) => Err(BenchError::Unsupported(format!(
                "{} measures pipelined calls only, no round trips",
                r.kind()
            ))),
            Inner::Endpoint(e) => {
                e.rtt(direction, payload, CHECK_CALLS)?;
                e.rtt(direction, payload, calls)
            }
        }
    }

    /// `calls` pipelined calls of `payload` bytes in `direction` from
    /// `threads` threads with `window` calls in flight each, after a
    /// checked run of one window per thread. Returns per-call latency
    /// samples and the elapsed time.
    ///
    /// # Errors
    /// [`BenchError::Unsupported`] for a floor, and for `shm-raw` in the
    /// to-controller direction or from other than 1 thread; a failed call
    /// or wrong result.
    pub fn throughput(
        &mut self,
        direction: Direction,
        payload: usize,
        threads: usize,
        window: usize,
        calls: usize,
    ) -> Result<(Vec<u64>, Duration), BenchError> {
        match &mut self.inner {
            Inner::Floor(_) => Err(BenchError::Unsupported(
                "the floor measures round trips only".into(),
            )),
            Inner::Raw(r) => {
                r.throughput(direction, payload, threads, window, threads * window)?;
                r.throughput(direction, payload, threads, window, calls)
            }
            Inner::Endpoint(e) => {
                e.throughput(direction, payload, threads, window, threads * window)?;
                e.throughput(direction, payload, threads, window, calls)
            }
        }
    }

    /// Disconnects (`shm-raw`: sends `Hangup`; a floor: its quit word)
    /// and waits for the child to exit (bounded).
    ///
    /// # Errors
    /// [`BenchError::Child`] when the child failed or had to be killed.
    pub fn finish(self) -> Result<(), BenchError> {
        match self.inner {
            Inner::Floor(f) => f.finish(),
            Inner::Raw(r) => r.finish(),
            Inner::Endpoint(e) => e.finish(),
        }
    }
}

impl Process {
    fn kill(&mut self) {
        match self {
            Process::Shm(p) => {
                let _ = p.kill();
            }
            Process::Plain(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl EndpointPeer {
    fn rtt(
        &self,
        direction: Direction,
        payload: usize,
        calls: usize,
    ) -> Result<Vec<u64>, BenchError> {
        match direction {
            Direction::ToExecutor => rtt_calls(&self.endpoint, self.echo, payload, calls),
            Direction::ToController => {
                let out = self.drive(&drive_args(0, payload, calls, 1, 1))?;
                if out.len() != calls {
                    return Err(BenchError::WrongResult(format!(
                        "the executor reported {} samples for {calls} calls",
                        out.len()
                    )));
                }
                Ok(out)
            }
        }
    }

    fn throughput(
        &self,
        direction: Direction,
        payload: usize,
        threads: usize,
        window: usize,
        calls: usize,
    ) -> Result<(Vec<u64>, Duration), BenchError> {
        match direction {
            Direction::ToExecutor => {
                pipelined_calls(&self.endpoint, self.echo, payload, threads, window, calls)
            }
            Direction::ToController => {
                let out = self.drive(&drive_args(1, payload, calls, threads, window))?;
                let expect = sampled(calls, threads);
                match out.split_first() {
                    Some((&elapsed, samples)) if samples.len() == expect => {
                        Ok((samples.to_vec(), Duration::from_nanos(elapsed)))
                    }
                    _ => Err(BenchError::WrongResult(format!(
                        "the executor reported {} words for {calls} pipelined calls",
                        out.len()
                    ))),
                }
            }
        }
    }

    fn drive(&self, args: &[u8]) -> Result<Vec<u64>, BenchError> {
        let got = self
            .endpoint
            .call_sync(self.drive, args)
            .map_err(|e| BenchError::Call(format!("drive: {e}")))?;
        let bytes = got.into_result().map_err(|e| {
            BenchError::Call(format!(
                "the executor's calls to the controller failed: {e}"
            ))
        })?;
        Ok(words(&bytes))
    }

    fn finish(mut self) -> Result<(), BenchError> {
        self.endpoint.disconnect();
        match &mut self.process {
            Process::Plain(child) => wait_child(child, self.kind),
            Process::Shm(p) => wait_shm_child(p, self.kind),
        }
    }
}

/// Waits (bounded) for a shared-memory child that was told to finish;
/// kills it if it does not exit in time (dropping `p` then reaps it), and
/// reports a failure exit.
pub(super) fn wait_shm_child(p: &ExecutorProcess, kind: TransportKind) -> Result<(), BenchError> {
    match p.wait_timeout(Duration::from_secs(10)) {
        Ok(Some(s)) if s.success() => Ok(()),
        Ok(Some(s)) => Err(BenchError::Child(format!("the {kind} child exited: {s}"))),
        Ok(None) => {
            let _ = p.kill();
            Err(BenchError::Child(format!(
                "the {kind} child did not exit within 10 s; killed"
            )))
        }
        Err(e) => Err(BenchError::Child(format!(
            "waiting for the {kind} child: {e}"
        ))),
    }
}
