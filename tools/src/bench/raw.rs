//! The shared-memory transport with no engine on either side: the
//! ceiling that pipelined calls through the engine could reach over this
//! transport between the same two processes (the `shm-raw` case).
//!
//! Both loops use the transport as an engine would at best, with nothing
//! else on top:
//! * [`drive_in_batches`] (the caller) keeps a window of calls in flight,
//!   writes them [`BATCH`] to a [`Transport::send_batch`], reads the
//!   answers with [`Transport::recv_batch`] and checks every one against
//!   what it sent;
//! * [`echo_in_batches`] (the callee) reads up to [`BATCH`] calls with one
//!   `recv_batch` and answers them all with one `send_batch` of plain
//!   `Result`s carrying the argument buffers back.
//!
//! `orcwire bench` runs them across two processes ([`RawPeer`] and
//! [`serve`]: the child is spawned with `ExecutorCommand` and attaches
//! with `attach_inherited`, as the `shm-*` children do, but sends no
//! `Setup` and runs no `ExecutorBuilder`); the `pinned_layers` example
//! runs them between two pinned threads of one process.
//!
//! Relies on: the `orcwire::transport` message API only (any
//! [`Transport`]), [`stamp`] and [`SAMPLE_EVERY`] from the endpoint loops
//! so the results read like theirs.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orcwire::transport::{Outgoing, RESULT_OK};
use orcwire::{Message, Opcode, Transport, WrapperFunctionBuffer};
use orcwire_shm::{ExecutorCommand, ExecutorProcess, ShmTransport};

use super::child::{child_env, ChildSpec};
use super::peer::{pattern, shm_config, stamp, wait_shm_child, SAMPLE_EVERY};
use super::{BenchError, Direction, TransportKind};

/// Calls written by one `send_batch` (fewer when the window is smaller),
/// and most calls the echo reads with one `recv_batch`.
pub const BATCH: usize = 16;

/// The handler tag the raw calls carry (the raw echo ignores it).
const RAW_TAG: u64 = 1;

/// Longest the controller waits to hand the child its `Hangup`.
const HANGUP_WITHIN: Duration = Duration::from_secs(10);

/// Echoes calls in batches until a message other than a call arrives,
/// and returns that message's opcode (a controller ends with
/// [`Opcode::Hangup`]). Each `recv_batch` of up to [`BATCH`] calls is
/// answered with one `send_batch` of [`Opcode::Result`]s (tag
/// [`RESULT_OK`], the call's sequence number), the argument buffers
/// handed back as the replies. The calls read in the same batch as the
/// ending message are answered first.
///
/// # Errors
/// [`BenchError::Call`] when the transport fails (the peer went away, a
/// protocol error).
pub fn echo_in_batches<T: Transport + ?Sized>(t: &T) -> Result<Opcode, BenchError> {
    let mut msg = Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
    let mut got: Vec<(u64, WrapperFunctionBuffer)> = Vec::with_capacity(BATCH);
    loop {
        let mut other = None;
        t.recv_batch(None, BATCH, &mut msg, &mut |m| {
            if m.opcode != Opcode::CallWrapper {
                other = Some(m.opcode);
                return false;
            }
            got.push((m.seq, std::mem::take(&mut m.payload)));
            true
        })
        .map_err(|e| BenchError::Call(format!("the raw echo's receive: {e}")))?;
        let frames: [Outgoing<'_>; BATCH] = std::array::from_fn(|k| {
            let (seq, payload) = got.get(k).map_or((0, &[][..]), |(s, p)| (*s, p.as_slice()));
            Outgoing {
                opcode: Opcode::Result,
                seq,
                tag: RESULT_OK,
                payload,
            }
        });
        t.send_batch(&frames[..got.len()], None, &|| {})
            .map_err(|e| BenchError::Call(format!("the raw echo's send: {}", e.error)))?;
        got.clear();
        if let Some(opcode) = other {
            return Ok(opcode);
        }
    }
}

/// Makes `calls` calls over `t` with `window` of them in flight, as the
/// controller side of the transport alone: the calls are written
/// `min(window, BATCH)` to one `send_batch` (whenever that many slots of
/// the window are free), with tag `tag` and sequence numbers from 1 (0 is
/// `Setup`'s and `Hangup`'s); the answers are read with `recv_batch`, up
/// to a window at a time.
///
/// Call `i` (from 0) carries `base` with `i` stamped over its first (up
/// to) 8 bytes. Every answer is checked: a plain [`Opcode::Result`] (tag
/// [`RESULT_OK`]) for a call that was sent and not answered before, whose
/// payload is that call's argument; any order is accepted.
///
/// Returns the latency of every [`SAMPLE_EVERY`]-th call (from the clock
/// read just before its batch was sent to the moment its answer was
/// handed over), in ns, `calls.div_ceil(SAMPLE_EVERY)` of them in call
/// order, and the elapsed time of the whole run.
///
/// # Errors
/// [`BenchError::Unsupported`] for a window of 0; [`BenchError::Call`]
/// when the transport fails; [`BenchError::WrongResult`] for a wrong,
/// unexpected or repeated answer.
pub fn drive_in_batches<T: Transport + ?Sized>(
    t: &T,
    tag: u64,
    base: &[u8],
    window: usize,
    calls: usize,
) -> Result<(Vec<u64>, Duration), BenchError> {
    if window == 0 {
        return Err(BenchError::Unsupported(
            "a window of 0 calls in flight makes no calls".into(),
        ));
    }
    let batch = window.min(BATCH);
    let len = base.len();
    let k = len.min(8);
    // One argument slot per call of a batch, stamped in place.
    let mut args = base.repeat(batch);
    let mut samples = vec![0u64; calls.div_ceil(SAMPLE_EVERY as usize)];
    // One bit per call: answered yet.
    let mut answered = vec![0u64; calls.div_ceil(64)];
    let mut msg = Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
    let (calls, window, batch) = (calls as u64, window as u64, batch as u64);
    let start = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while received < calls {
        while sent < calls && sent - received + batch <= window {
            let n = (calls - sent).min(batch) as usize;
            for (j, slot) in args.chunks_exact_mut(len.max(1)).take(n).enumerate() {
                stamp(slot, sent + j as u64);
            }
            let frames: [Outgoing<'_>; BATCH] = std::array::from_fn(|j| Outgoing {
                opcode: Opcode::CallWrapper,
                seq: sent + j as u64 + 1,
                tag,
                payload: args.get(j * len..(j + 1) * len).unwrap_or(&[]),
            });
            // The batch's timed calls start now.
            let first_timed = sent.next_multiple_of(SAMPLE_EVERY);
            if first_timed < sent + n as u64 {
                let now = start.elapsed().as_nanos() as u64;
                for i in (first_timed..sent + n as u64).step_by(SAMPLE_EVERY as usize) {
                    samples[(i / SAMPLE_EVERY) as usize] = now;
                }
            }
            t.send_batch(&frames[..n], None, &|| {})
                .map_err(|e| BenchError::Call(format!("sending raw call {}: {}", sent + 1, e)))?;
            sent += n as u64;
        }
        let mut bad = None;
        t.recv_batch(None, window as usize, &mut msg, &mut |m| {
            let i = m.seq.wrapping_sub(1);
            let wrong = if m.opcode != Opcode::Result || m.tag != RESULT_OK {
                Some(format!(
                    "raw call {} was answered with {:?} (tag {}), not a plain Result",
                    m.seq, m.opcode, m.tag
                ))
            } else if i >= sent {
                Some(format!(
                    "an answer names raw call {}, which was not sent ({sent} sent)",
                    m.seq
                ))
            } else if answered[(i / 64) as usize] & (1 << (i % 64)) != 0 {
                Some(format!("raw call {} was answered twice", m.seq))
            } else {
                let got = m.payload.as_slice();
                let same =
                    got.len() == len && got[..k] == i.to_le_bytes()[..k] && got[k..] == base[k..];
                (!same).then(|| {
                    format!(
                        "the echo of raw call {} came back different ({} bytes for {len})",
                        m.seq,
                        got.len()
                    )
                })
            };
            if let Some(w) = wrong {
                bad = Some(BenchError::WrongResult(w));
                return false;
            }
            answered[(i / 64) as usize] |= 1 << (i % 64);
            if i % SAMPLE_EVERY == 0 {
                let s = &mut samples[(i / SAMPLE_EVERY) as usize];
                *s = (start.elapsed().as_nanos() as u64).saturating_sub(*s);
            }
            received += 1;
            true
        })
        .map_err(|e| {
            BenchError::Call(format!(
                "receiving raw answers ({received} of {calls} in): {e}"
            ))
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
    }
    Ok((samples, start.elapsed()))
}

/// The controller's side of a `shm-raw` case: the child (spawned as the
/// `shm-*` children are) and the controller's end of the transport.
pub(super) struct RawPeer {
    kind: TransportKind,
    transport: Arc<ShmTransport>,
    process: ExecutorProcess,
}

impl RawPeer {
    /// Spawns this executable as the raw echo (pinned to `child_cpu` when
    /// given) over a fresh segment with `kind`'s settings.
    pub(super) fn spawn(kind: TransportKind, child_cpu: Option<usize>) -> Result<Self, BenchError> {
        let start = |detail: String| BenchError::Start {
            kind: kind.name(),
            detail,
        };
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| start(e.to_string()))?);
        let (key, value) = child_env(&ChildSpec {
            kind,
            fds: Vec::new(),
            cpu: child_cpu,
        });
        cmd.env(key, value);
        let spawned = ExecutorCommand::new(cmd)
            .config(shm_config(kind))
            .spawn()
            .map_err(|e| start(e.to_string()))?;
        Ok(Self {
            kind,
            transport: spawned.transport,
            process: spawned.process,
        })
    }

    pub(super) fn kind(&self) -> TransportKind {
        self.kind
    }

    /// `calls` raw calls of `payload` bytes with `window` in flight, from
    /// one thread, controller → child (see [`drive_in_batches`]).
    pub(super) fn throughput(
        &self,
        direction: Direction,
        payload: usize,
        threads: usize,
        window: usize,
        calls: usize,
    ) -> Result<(Vec<u64>, Duration), BenchError> {
        if direction != Direction::ToExecutor || threads != 1 {
            return Err(BenchError::Unsupported(format!(
                "{} runs 1 thread, controller → child only (its echo has no engine to \
                 call back); asked for {threads} thread(s) {}",
                self.kind,
                direction.name()
            )));
        }
        let base = pattern(payload, payload as u64 + 7);
        drive_in_batches(&*self.transport, RAW_TAG, &base, window, calls)
    }

    /// Sends the child its `Hangup` (as a controller ends a connection)
    /// and waits (bounded) for it to exit 0; kills it if it does not.
    pub(super) fn finish(self) -> Result<(), BenchError> {
        let hangup = self.transport.send_until(
            Opcode::Hangup,
            0,
            0,
            &orcwire::sps::encode_error(None),
            Some(Instant::now() + HANGUP_WITHIN),
            &|| {},
        );
        let exited = wait_shm_child(&self.process, self.kind);
        self.transport.close();
        match (exited, hangup) {
            (Ok(()), Ok(())) => Ok(()),
            (Ok(()), Err(e)) => Err(BenchError::Child(format!(
                "the {} child exited 0 but its Hangup could not be sent: {e}",
                self.kind
            ))),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(h)) => Err(BenchError::Child(format!(
                "{e} (sending its Hangup failed: {h})"
            ))),
        }
    }
}

/// The child's side of a `shm-raw` case: echoes calls in batches until
/// the controller's `Hangup` (`Ok`, exit 0).
pub(super) fn serve<T: Transport + ?Sized>(t: &T) -> Result<(), String> {
    match echo_in_batches(t).map_err(|e| e.to_string())? {
        Opcode::Hangup => Ok(()),
        other => Err(format!(
            "the controller sent {other:?}; the raw echo takes calls and Hangup only"
        )),
    }
}
