//! The raw floor: an atomic ping-pong over a memfd mapping between two
//! processes, with no framing — what any shared-memory call costs at
//! least on this machine.
//!
//! Layout of the floor's segment (each word on its own 128-byte line):
//!
//! ```text
//! 0      ping   u32  the caller's round number (caller writes)
//! 128    pong   u32  the last round answered (child writes)
//! 256    len    u64  the round's payload length, or QUIT (caller writes)
//! 384    ready  u32  1 once the child runs (child writes)
//! 4096   req    MAX_PAYLOAD bytes, the argument (caller writes)
//! 4096+MAX_PAYLOAD   resp  MAX_PAYLOAD bytes, the reply (child writes)
//! ```
//!
//! A round: the caller copies the argument into `req` (copy twin only),
//! stores `len`, then `ping = n` (Release); the child sees `ping == n`
//! (Acquire), copies `req` into a private buffer and the buffer into
//! `resp`, stores `pong = n` (Release); the caller sees `pong == n`
//! (Acquire) and copies `resp` out. The futex twin does the same and
//! follows each store with `FUTEX_WAKE` and each wait with `FUTEX_WAIT`
//! (no spinning at all), as the blocking preset does.
//!
//! Both processes are the benchmark's own; the floor trusts its peer
//! only as far as bounds go (a length above `MAX_PAYLOAD` ends the child).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use orcwire_shm::{dup2_for_exec, Segment, SharedMapping};

use super::child::{child_env, wait_child, ChildSpec};
use super::futex;
use super::{BenchError, TransportKind};

/// Largest floor payload.
pub(super) const MAX_PAYLOAD: usize = 1 << 20;
const PING: usize = 0;
const PONG: usize = 128;
const LEN: usize = 256;
const READY: usize = 384;
const REQ: usize = 4096;
const RESP: usize = REQ + MAX_PAYLOAD;
const SEGMENT_LEN: usize = RESP + MAX_PAYLOAD;
/// `len` value that tells the child to exit.
const QUIT: u64 = u64::MAX;
/// Spins after which a spinning waiter counts as idle and naps (some
/// milliseconds; a timed round trip never comes near it).
const IDLE_SPINS: u32 = 1 << 22;
/// Longest a caller waits for one answer before declaring the child stuck.
const STUCK: Duration = Duration::from_secs(10);

/// The floor's words over a mapping.
struct Words<'a> {
    seg: &'a Segment,
}

impl<'a> Words<'a> {
    fn new(seg: &'a Segment) -> Result<Self, String> {
        if seg.len() < SEGMENT_LEN {
            return Err(format!(
                "the floor segment has {} bytes, needs {SEGMENT_LEN}",
                seg.len()
            ));
        }
        Ok(Self { seg })
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset % 128 == 0 && offset + 4 <= REQ);
        // SAFETY: the offset is in bounds (checked in `new`), 4-aligned
        // (the mapping is page-aligned), and an AtomicU32 is valid for
        // every bit pattern; all access to the word is atomic, so a
        // shared reference stays sound while the peer writes it. The
        // reference borrows `self.seg`, which keeps the mapping alive.
        unsafe { &*self.seg.base().add(offset).cast::<AtomicU32>() }
    }

    fn ping(&self) -> &AtomicU32 {
        self.u32_at(PING)
    }

    fn pong(&self) -> &AtomicU32 {
        self.u32_at(PONG)
    }

    fn ready(&self) -> &AtomicU32 {
        self.u32_at(READY)
    }

    fn len(&self) -> &AtomicU64 {
        // SAFETY: as in `u32_at`: in bounds, 8-aligned, atomic access only.
        unsafe { &*self.seg.base().add(LEN).cast::<AtomicU64>() }
    }

    /// Copies `src` into the region at `offset`.
    fn copy_in(&self, offset: usize, src: &[u8]) {
        assert!(src.len() <= MAX_PAYLOAD, "floor payload too large");
        // SAFETY: `offset + src.len()` stays inside the mapping (both
        // regions are MAX_PAYLOAD long and checked in `new`); a raw copy
        // never forms a reference to the shared bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.seg.base().add(offset), src.len())
        }
    }

    /// Copies the region at `offset` into `dst`.
    fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        assert!(dst.len() <= MAX_PAYLOAD, "floor payload too large");
        // SAFETY: as in `copy_in`, in the other direction; `dst` is ours.
        unsafe {
            std::ptr::copy_nonoverlapping(self.seg.base().add(offset), dst.as_mut_ptr(), dst.len())
        }
    }
}

/// Waits until `word == want` (or, with `want == None`, until it differs
/// from `old`), spinning or sleeping on the futex. `alive` is asked every
/// so often; false ends the wait with `None`.
fn wait_for(
    word: &AtomicU32,
    old: u32,
    futex: bool,
    mut alive: impl FnMut() -> bool,
) -> Option<u32> {
    let mut spins = 0u32;
    loop {
        // SYNC POINT: floor request / floor reply (Acquire side).
        let v = word.load(Ordering::Acquire);
        if v != old {
            return Some(v);
        }
        if futex {
            futex::wait(word, old, Duration::from_millis(100));
            if !alive() {
                return None;
            }
        } else if spins < IDLE_SPINS {
            spin_loop();
            spins += 1;
            if spins % (1 << 16) == 0 && !alive() {
                return None;
            }
        } else {
            // Idle (other cases are running): nap on the word, and look
            // at it every millisecond (the spin floor's caller never calls
            // FUTEX_WAKE, so that stays out of its round trip).
            futex::wait(word, old, Duration::from_millis(1));
            if !alive() {
                return None;
            }
        }
    }
}

/// The caller's side of a floor.
pub(super) struct FloorPeer {
    kind: TransportKind,
    seg: Segment,
    child: Child,
    round: u32,
    reply: Vec<u8>,
}

impl FloorPeer {
    pub(super) fn spawn(kind: TransportKind, child_cpu: Option<usize>) -> Result<Self, BenchError> {
        let start = |detail: String| BenchError::Start {
            kind: kind.name(),
            detail,
        };
        let seg = Segment::create(SEGMENT_LEN).map_err(|e| start(e.to_string()))?;
        let fd: RawFd = seg.fd().as_raw_fd();
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| start(e.to_string()))?);
        let (key, value) = child_env(&ChildSpec {
            kind,
            fds: vec![fd],
            cpu: child_cpu,
        });
        cmd.env(key, value);
        // SAFETY: the closure only calls fcntl (async-signal-safe); the fd
        // stays open in this process until `spawn` returns.
        unsafe { cmd.pre_exec(move || dup2_for_exec(fd, fd)) };
        let mut child = cmd.spawn().map_err(|e| start(format!("spawn: {e}")))?;
        let deadline = Instant::now() + STUCK;
        {
            let words = Words::new(&seg).map_err(start)?;
            // SYNC POINT: floor child ready (Acquire side).
            while words.ready().load(Ordering::Acquire) == 0 {
                if Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(start("the floor child did not start".into()));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(Self {
            kind,
            seg,
            child,
            round: 0,
            reply: vec![0; MAX_PAYLOAD],
        })
    }

    pub(super) fn kind(&self) -> TransportKind {
        self.kind
    }

    /// One round trip carrying `arg` (empty: the bare ping-pong); returns
    /// its duration in ns and leaves the reply in `self.reply[..arg.len()]`.
    fn round(&mut self, arg: &[u8]) -> Result<u64, BenchError> {
        let futex = self.kind == TransportKind::FloorFutex;
        let words = Words::new(&self.seg).map_err(BenchError::Child)?;
        let child = &mut self.child;
        let t = Instant::now();
        if !arg.is_empty() {
            words.copy_in(REQ, arg);
        }
        words.len().store(arg.len() as u64, Ordering::Relaxed);
        let old = self.round;
        self.round = self.round.wrapping_add(1);
        // SYNC POINT: floor request (Release side): `req` and `len` are
        // visible to the child once it sees the new round.
        words.ping().store(self.round, Ordering::Release);
        if futex {
            futex::wake_all(words.ping());
        }
        let deadline = t + STUCK;
        let got = wait_for(words.pong(), old, futex, || {
            Instant::now() < deadline && matches!(child.try_wait(), Ok(None))
        });
        if !arg.is_empty() {
            words.copy_out(RESP, &mut self.reply[..arg.len()]);
        }
        let elapsed = t.elapsed().as_nanos() as u64;
        match got {
            Some(r) if r == self.round => Ok(elapsed),
            Some(r) => Err(BenchError::WrongResult(format!(
                "floor round {} answered as round {r}",
                self.round
            ))),
            None => Err(BenchError::Child(
                "the floor child stopped answering".into(),
            )),
        }
    }

    /// `calls` round trips of `payload` bytes, each reply checked.
    pub(super) fn rtt(&mut self, payload: usize, calls: usize) -> Result<Vec<u64>, BenchError> {
        if payload > MAX_PAYLOAD {
            return Err(BenchError::Unsupported(format!(
                "the floor carries at most {MAX_PAYLOAD} bytes"
            )));
        }
        let mut arg = super::peer::pattern(payload, payload as u64);
        let mut samples = Vec::with_capacity(calls);
        for i in 0..calls as u64 {
            super::peer::stamp(&mut arg, i);
            samples.push(self.round(&arg)?);
            if self.reply[..payload] != arg[..] {
                return Err(BenchError::WrongResult(format!(
                    "floor echo of {payload} B, round {i}, came back different"
                )));
            }
        }
        Ok(samples)
    }

    pub(super) fn finish(mut self) -> Result<(), BenchError> {
        if let Ok(words) = Words::new(&self.seg) {
            words.len().store(QUIT, Ordering::Relaxed);
            self.round = self.round.wrapping_add(1);
            // SYNC POINT: floor request (Release side), carrying QUIT.
            words.ping().store(self.round, Ordering::Release);
            futex::wake_all(words.ping());
        }
        wait_child(&mut self.child, self.kind)
    }
}

/// The child's side: answers rounds until told to quit or orphaned.
pub(super) fn serve(kind: TransportKind, fd: OwnedFd, parent: u32) -> Result<(), String> {
    let seg = Segment::from_fd(fd, SEGMENT_LEN).map_err(|e| e.to_string())?;
    let words = Words::new(&seg)?;
    let futex = kind == TransportKind::FloorFutex;
    let mut buf = vec![0u8; MAX_PAYLOAD];
    // SAFETY: getppid has no preconditions.
    let alive = || u32::try_from(unsafe { libc::getppid() }).ok() == Some(parent);
    // SYNC POINT: floor request (Acquire side): the round to start from.
    let mut last = words.ping().load(Ordering::Acquire);
    // SYNC POINT: floor child ready (Release side): the child has mapped
    // the segment and read the starting round before the caller's first
    // request can be sent.
    words.ready().store(1, Ordering::Release);
    loop {
        let Some(round) = wait_for(words.ping(), last, futex, alive) else {
            return Err("the caller went away".into());
        };
        last = round;
        let len = words.len().load(Ordering::Relaxed);
        if len == QUIT {
            return Ok(());
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_PAYLOAD)
            .ok_or_else(|| format!("the caller asked for {len} bytes"))?;
        if len > 0 {
            words.copy_out(REQ, &mut buf[..len]);
            words.copy_in(RESP, &buf[..len]);
        }
        // SYNC POINT: floor reply (Release side): `resp` is visible to the
        // caller once it sees the round answered.
        words.pong().store(round, Ordering::Release);
        if futex {
            futex::wake_all(words.pong());
        }
    }
}
