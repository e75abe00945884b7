//! A worker's batch: the calls one lead turn read, run one after the other
//! by the worker that read them with no lock, no queue and no locked
//! instruction per call, their results sent together; another worker
//! steals what is left when a handler of the batch blocks.
//!
//! # The protocol
//! The owner's lead turn puts the calls it reads straight into the
//! batch's cells (between batches no thief looks at it: it is not in
//! `Work::batches`). The owner then publishes the batch (`thief` reset to
//! [`NO_THIEF`]) and counts itself busy under the work lock, and lets go
//! of the lock. It claims call `i` by storing `i + 1` in `next`, then
//! looks at `thief`: still [`NO_THIEF`], the call is its own and it runs
//! it; results go into `results[done]`, published by a `Release` store of
//! `done`. At the end it stores [`FINISHED`] in `next` and looks at
//! `thief` the same way; then it sends the results from their cells.
//!
//! A worker that looks around (at least every [`HANDOVER`] while handlers
//! run) and finds, under the work lock, that a batch's `next` has not
//! moved since its previous look steals it: it announces itself in
//! `thief`, then reads `next` — the calls below it are the owner's — and
//! publishes that index in `thief`; it queues the calls from there (none
//! of them claimed, so none runs twice), and takes the results from
//! `flushed` to `done` to send them. `disconnect` steals every batch the
//! same way and drops the calls unrun. An owner that finds `thief` set
//! takes the work lock (the thief decides under it) and reads the index:
//! the call it claimed is its own if the index is above it; either way it
//! stops after that, and sends only its results past `flushed`.
//!
//! The claim and the steal are a store then a load each, on crossed
//! words (Dekker's pattern): with a full fence between the two on both
//! sides, at least one of them sees the other, so a call runs once or
//! (stolen by `disconnect`) never, and every result is sent once: by the
//! owner (results before `flushed` never, after it always) or by the
//! thief (those between `flushed` and the `done` it read, and it moves
//! `flushed` there). The owner's fence is the hot one — one per call —
//! and it costs nothing: a compiler fence, made a full one on the owner's
//! CPU by the thief's `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`,
//! which interrupts every CPU running a thread of this process (steals
//! are rare: a handler blocked for a [`HANDOVER`]). Where the kernel
//! refuses `membarrier`, both sides use a full fence (a locked
//! instruction per call, as the compare-and-swap this replaced). Loom
//! checks the protocol with a full fence on both sides.

use super::*;
use crate::sync::UnsafeCell;

/// `next` once the owner has run every call: nothing to steal.
pub(super) const FINISHED: usize = usize::MAX;
/// `thief` while no thief took this batch's calls.
pub(super) const NO_THIEF: usize = usize::MAX;
/// `thief` while a thief decides (it holds the work lock meanwhile).
const DECIDING: usize = usize::MAX - 1;

/// The fences of the claim protocol (module docs): the owner's per call
/// (`light`), the thief's per steal (`heavy`).
mod fences {
    #[cfg(not(orcwire_loom))]
    use std::sync::OnceLock;

    use crate::sync::{fence, Ordering};

    /// Whether this process may use `membarrier` (registered once: the
    /// registration is the process's, kept across `fork` — a forked child's
    /// `PRIVATE_EXPEDITED` succeeds — and cleared by `exec`, after which
    /// this static starts unset again).
    #[cfg(not(orcwire_loom))]
    fn asymmetric() -> bool {
        static REGISTERED: OnceLock<bool> = OnceLock::new();
        *REGISTERED.get_or_init(|| {
            // SAFETY: a system call with integer arguments only; the
            // kernel checks them (ENOSYS, EINVAL or EPERM where it refuses).
            unsafe {
                libc::syscall(
                    libc::SYS_membarrier,
                    MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                    0,
                    0,
                ) == 0
            }
        })
    }

    #[cfg(not(orcwire_loom))]
    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    #[cfg(not(orcwire_loom))]
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    /// Decides once (before any batch runs) how the owner fences.
    pub(crate) fn init() -> bool {
        #[cfg(not(orcwire_loom))]
        return asymmetric();
        #[cfg(orcwire_loom)]
        return false;
    }

    /// The owner's fence between its claim and its look at `thief`.
    #[inline(always)]
    pub(crate) fn light(asymmetric: bool) {
        if crate::sync::is_broken("batch") {
            // Loom must-fail variant: no fence on the owner's side, so its
            // look at `thief` may come before its claim is seen.
            return;
        }
        if asymmetric {
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }

    /// The thief's fence between its announcement and its look at `next`.
    pub(crate) fn heavy(asymmetric: bool) {
        #[cfg(not(orcwire_loom))]
        if asymmetric {
            // SAFETY: as in `asymmetric`; registered there, so it cannot
            // fail (the kernel's documented contract).
            let r = unsafe {
                libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0)
            };
            debug_assert_eq!(r, 0, "membarrier failed after registering");
        }
        let _ = asymmetric;
        fence(Ordering::SeqCst);
    }
}
pub(super) use fences::init as init_fences;

/// Most calls in a batch: a lead turn's first and [`WORKER_BATCH`] more.
pub(super) const BATCH: usize = WORKER_BATCH + 1;

/// One worker's batch (see the module docs). Reused from batch to batch:
/// no allocation per batch.
pub(super) struct Batch {
    /// The owner's claims: calls below it are the owner's; [`FINISHED`]
    /// once it ran them all. Written by the owner only.
    next: AtomicUsize,
    /// [`NO_THIEF`], or a thief's decision: the calls from this index on
    /// are the thief's ([`DECIDING`] while it decides). Written under the
    /// work lock: by a thief, and by the owner to reset it.
    thief: AtomicUsize,
    /// Results `0 .. done` are in `results`.
    done: AtomicUsize,
    /// Results `0 .. flushed` were sent (or taken to send). Written by the
    /// owner while it owns them, else under the work lock.
    flushed: AtomicUsize,
    /// Calls in the batch. Written by the owner under the work lock.
    len: AtomicUsize,
    /// `next` as the last look saw it, and the batch it belonged to: a
    /// batch seen twice at the same place is stuck in a handler. Read and
    /// written under the work lock.
    looked: AtomicU64,
    /// Batches run so far (tells one from the next for `looked`).
    round: AtomicU64,
    calls: [UnsafeCell<Option<Incoming>>; BATCH],
    results: [UnsafeCell<Option<(u64, WrapperFunctionBuffer)>>; BATCH],
    /// A reference to the endpoint for the next responder, given back by
    /// the last one when it answered on the owner's thread: responders of
    /// a batch pass one reference along instead of each taking and
    /// dropping its own (two locked instructions a call). The owner's
    /// only; emptied at the end of each batch.
    spare: UnsafeCell<Option<Arc<dyn ResultSink>>>,
}

// SAFETY: each cell is touched by one thread at a time by the protocol
// (module docs): a call cell by the owner once it claimed the index, else
// by a thief or `disconnect` under the work lock after its swap; a result
// cell by the owner before it publishes it in `done`, then by whoever
// holds it between `flushed` and `done`. The contents are `Send`.
unsafe impl Sync for Batch {}
// SAFETY: as above.
unsafe impl Send for Batch {}

impl Batch {
    pub(super) fn new() -> Self {
        Self {
            next: AtomicUsize::new(FINISHED),
            thief: AtomicUsize::new(NO_THIEF),
            done: AtomicUsize::new(0),
            flushed: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            looked: AtomicU64::new(u64::MAX),
            round: AtomicU64::new(0),
            calls: std::array::from_fn(|_| UnsafeCell::new(None)),
            results: std::array::from_fn(|_| UnsafeCell::new(None)),
            spare: UnsafeCell::new(None),
        }
    }

    /// Swaps the spare reference (owner only).
    fn swap_spare(&self, with: Option<Arc<dyn ResultSink>>) -> Option<Arc<dyn ResultSink>> {
        // SAFETY: only the owner's thread touches `spare`, while its batch
        // runs (`BATCH_OF` names it) or between batches.
        self.spare.with_mut(|c| unsafe { std::mem::replace(&mut *c, with) })
    }

    /// The owner claims call `i` (its previous claim was `i - 1`):
    /// `false` when a thief took or is taking the batch's calls (then the
    /// owner asks the work lock whether call `i` is its own).
    #[inline(always)]
    fn claim(&self, i: usize, asymmetric: bool) -> bool {
        // SYNC POINT: batch claim. A store, a fence, a load, crossed with
        // the thief's store, fence, load in `steal_batches`: one of the
        // two sees the other (module docs).
        self.next.store(i + 1, Ordering::Relaxed);
        fences::light(asymmetric);
        self.thief.load(Ordering::Relaxed) == NO_THIEF
    }

    /// The owner puts call `i` of its next batch in its cell (between
    /// batches the batch is not in `Work::batches`, so no thief looks).
    #[inline]
    pub(super) fn put_call(&self, i: usize, call: Incoming) {
        // SAFETY: between batches every cell is the owner's (above), and
        // only the owner's thread runs its lead turns.
        self.calls[i].with_mut(|c| unsafe { *c = Some(call) });
    }

    pub(super) fn take_call(&self, i: usize) -> Option<Incoming> {
        // SAFETY: the caller owns call cell `i` (module docs).
        self.calls[i].with_mut(|c| unsafe { (*c).take() })
    }

    fn take_result(&self, i: usize) -> Option<(u64, WrapperFunctionBuffer)> {
        // SAFETY: the caller owns result cell `i` (module docs).
        self.results[i].with_mut(|c| unsafe { (*c).take() })
    }

    /// The owner's result: into the next cell, published. `Err` gives it
    /// back when every cell is used (a handler answered other calls'
    /// responders too).
    #[inline(always)]
    fn push_result(
        &self,
        seq: u64,
        result: WrapperFunctionBuffer,
    ) -> Result<(), (u64, WrapperFunctionBuffer)> {
        let done = self.done.load(Ordering::Relaxed);
        if done == BATCH {
            return Err((seq, result));
        }
        // SAFETY: cell `done` is the owner's until it publishes it below.
        self.results[done].with_mut(|c| unsafe { *c = Some((seq, result)) });
        // SYNC POINT: batch result. Release pairs with the thief's Acquire
        // load of `done`: the cell written above is visible to it.
        self.done.store(done + 1, Ordering::Release);
        Ok(())
    }

    /// Result `i` of a batch its owner finished (`next` is [`FINISHED`]:
    /// no thief takes it any more), borrowed where it lies.
    #[inline]
    fn finished_result(&self, i: usize) -> (u64, &WrapperFunctionBuffer) {
        // SAFETY: the owner's own cell (module docs: after FINISHED, results
        // between `flushed` and `done` are the owner's alone), written by
        // `push_result` and not touched until the owner takes it after
        // this borrow ends (the borrow is of `self`, which the owner holds).
        let cell = self.results[i].with(|c| unsafe { &*c });
        match cell {
            Some((seq, r)) => (*seq, r),
            None => unreachable!("results below `done` are in their cells"),
        }
    }

    /// Takes results `from .. to` into `out`.
    fn take_results(&self, from: usize, to: usize, out: &mut Vec<(u64, WrapperFunctionBuffer)>) {
        for i in from..to {
            if let Some(r) = self.take_result(i) {
                out.push(r);
            }
        }
    }
}

// The batch the handler this thread runs belongs to (its endpoint's
// address, and the batch), for answers given through a responder.
#[cfg(not(orcwire_loom))]
std::thread_local! {
    static BATCH_OF: Cell<(usize, *const Batch)> = const { Cell::new((0, std::ptr::null())) };
}
#[cfg(orcwire_loom)]
loom::thread_local! {
    static BATCH_OF: Cell<(usize, *const Batch)> = Cell::new((0, std::ptr::null()));
}

impl Inner {
    /// Whether a lead turn's calls run as a batch on this worker: handlers
    /// run on the connection's workers, another worker can take over (a
    /// thief needs one), and one more may run a handler now.
    pub(super) fn may_run_batch(&self, w: &Work) -> bool {
        self.dispatcher.is_none() && self.config.max_workers > 1 && self.may_run_handler(w)
    }

    /// Runs the `n` calls in the cells of this worker's batch `b` (put
    /// there by its lead turn, see [`Batch::put_call`]): the work lock `w`
    /// is let go meanwhile and taken again to return.
    pub(super) fn run_batch<'a>(
        self: &'a Arc<Self>,
        mut w: MutexGuard<'a, Work>,
        b: &Arc<Batch>,
        n: usize,
        out: &mut Vec<(u64, WrapperFunctionBuffer)>,
    ) -> MutexGuard<'a, Work> {
        b.len.store(n, Ordering::Relaxed);
        b.done.store(0, Ordering::Relaxed);
        b.flushed.store(0, Ordering::Relaxed);
        b.round.store(b.round.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        // Relaxed: published to thieves by the work lock.
        b.next.store(0, Ordering::Relaxed);
        b.thief.store(NO_THIEF, Ordering::Relaxed);
        w.batches.push(Arc::clone(b));
        if w.workers == 1 {
            // Start the standby, once (see `run_call`).
            self.wake_or_spawn(&mut w);
        } else if self.timing == Timing::Notified {
            self.work_cv.notify_one();
        }
        w.busy += 1;
        if n > 1
            && self.lead.load(Ordering::Relaxed) == WORKER
            && !self.lead_polls.load(Ordering::Relaxed)
        {
            // The worker that leads may sleep in `recv` until the peer
            // sends something, which it may do only once it has these
            // results: make it lead again with a deadline (`busy` is up
            // now), so that it steals them if a handler here blocks.
            self.transport.interrupt_recv();
        }
        drop(w);
        let idle_of = IDLE_WORKER_OF.with(|c| c.replace(0));
        let prev_in = IN_HANDLER_OF.with(|h| h.replace(self.id()));
        // Answers given through a responder join the batch's results when
        // more calls follow; a lone call's go out at once (its handler may
        // answer, then run on for long).
        let (outbox, batch) = if n > 1 {
            (self.id(), (self.id(), Arc::as_ptr(b)))
        } else {
            (0, (0, std::ptr::null()))
        };
        let prev_outbox = OUTBOX_OF.with(|o| o.replace(outbox));
        let prev_batch = BATCH_OF.with(|c| c.replace(batch));
        // The batch responders hand their reference back to (as `BATCH_OF`
        // says, without a thread-local look per call).
        let own = (n > 1).then_some(&**b);
        let asymmetric = self.asymmetric_fences;
        let mut stolen = false;
        for i in 0..n {
            // SYNC POINT: batch claim (see `Batch::claim`).
            let last = if b.claim(i, asymmetric) {
                false
            } else {
                // A thief took the calls left, or is taking them: it
                // decides under the work lock. Call `i` is still ours if
                // its index is above `i`; we stop after it either way.
                stolen = true;
                let from = {
                    let _w = self.work.lock();
                    b.thief.load(Ordering::Relaxed)
                };
                if from <= i {
                    break;
                }
                true
            };
            // Disconnecting: no handler starts any more.
            if let Some(call) = b.take_call(i).filter(|_| !self.gate.is_closed()) {
                if let Some(result) = self.run_inline(call.seq, call.tag, call.args, own) {
                    if let Err((seq, result)) = b.push_result(call.seq, result) {
                        self.answers.lock().results.push((seq, result));
                        self.outbox_full.store(true, Ordering::Relaxed);
                    }
                }
            }
            if last {
                break;
            }
        }
        if !stolen {
            // SYNC POINT: batch claim (the end of the batch, the same way:
            // a thief that comes later sees FINISHED and takes nothing).
            b.next.store(FINISHED, Ordering::Relaxed);
            fences::light(asymmetric);
            stolen = b.thief.load(Ordering::Relaxed) != NO_THIEF;
        }
        BATCH_OF.with(|c| c.set(prev_batch));
        // Not kept across batches: the batch outlives no reference it holds.
        drop(b.swap_spare(None));
        OUTBOX_OF.with(|o| o.set(prev_outbox));
        IN_HANDLER_OF.with(|h| h.set(prev_in));
        IDLE_WORKER_OF.with(|c| c.set(idle_of));
        let done = b.done.load(Ordering::Relaxed);
        if stolen {
            // A thief may have taken results: ours start at `flushed`,
            // which it moves under the lock.
            let w = self.work.lock();
            let from = b.flushed.load(Ordering::Relaxed);
            b.flushed.store(done, Ordering::Relaxed);
            drop(w);
            b.take_results(from, done, out);
        } else {
            // Nobody steals from a finished batch: its results are ours,
            // sent from their cells and then dropped there.
            let from = b.flushed.load(Ordering::Relaxed);
            if from < done {
                self.send_results(done - from, |i| b.finished_result(from + i));
                (from..done).for_each(|i| drop(b.take_result(i)));
            }
        }
        if !out.is_empty() {
            self.send_outbox(out);
            out.clear();
        }
        let mut w = self.work.lock();
        if let Some(i) = w.batches.iter().position(|x| Arc::ptr_eq(x, b)) {
            w.batches.swap_remove(i);
        }
        w.busy -= 1;
        w
    }

    /// Runs one call's handler on this thread (no dispatcher): the result
    /// of a handler that returns it (or of an unknown tag); `None` when a
    /// responder carries it (to [`ResultSink::send_result`]).
    #[inline]
    pub(super) fn run_inline(
        self: &Arc<Self>,
        seq: u64,
        tag: u64,
        args: WrapperFunctionBuffer,
        own: Option<&Batch>,
    ) -> Option<WrapperFunctionBuffer> {
        match self.handlers.get(tag) {
            Some(HandlerEntry { sync: Some(f), .. }) => {
                let ran =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(args.as_slice())));
                Some(ran.unwrap_or_else(|_| {
                    WrapperFunctionBuffer::out_of_band_error(
                        "the handler panicked before it returned its result",
                    )
                }))
            }
            Some(entry) => {
                let sink = own
                    .and_then(|b| b.swap_spare(None))
                    .unwrap_or_else(|| Arc::clone(self) as Arc<dyn ResultSink>);
                let responder = Responder::new(seq, sink);
                // A panicking handler's responder answered with an error
                // as it unwound; the worker carries on.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (entry.f)(args, responder)
                }));
                None
            }
            None => Some(self.handlers.unknown_tag_error(tag)),
        }
    }

    /// The batch of this endpoint this thread runs, if any.
    fn own_batch(&self) -> Option<&Batch> {
        let (of, b) = BATCH_OF.with(|c| c.get());
        if of != self.id() || b.is_null() {
            return None;
        }
        // SAFETY: set by `run_batch` on this thread to a batch its `Arc`
        // keeps alive until it resets it (before it returns); this thread
        // is its owner.
        Some(unsafe { &*b })
    }

    /// An answer given through a responder on this thread while it runs a
    /// batch of this endpoint: into the batch, and the responder's
    /// reference (`this`) kept for the next one. `Err` gives the answer
    /// back when the batch is full. Call only when
    /// [`runs_own_batch`](Self::runs_own_batch) says so.
    #[inline(always)]
    pub(super) fn answer_into_batch(
        this: Arc<Self>,
        seq: u64,
        result: WrapperFunctionBuffer,
    ) -> Result<(), (Arc<Self>, u64, WrapperFunctionBuffer)> {
        let Some(b) = this.own_batch() else {
            return Err((this, seq, result));
        };
        // Not tied to `this`, which moves into the spare below: the batch
        // outlives the call (see `own_batch`).
        let b: *const Batch = b;
        // SAFETY: as in `own_batch`.
        let b = unsafe { &*b };
        if let Err((seq, result)) = b.push_result(seq, result) {
            return Err((this, seq, result));
        }
        drop(b.swap_spare(Some(this as Arc<dyn ResultSink>)));
        Ok(())
    }

    /// Whether this thread runs a batch of this endpoint (one
    /// thread-local look). Asked before an answer moves anywhere: moving a
    /// small buffer through a returned tuple costs a store-forwarding
    /// stall, which a lone call's answer should not pay.
    #[inline(always)]
    pub(super) fn runs_own_batch(&self) -> bool {
        self.own_batch().is_some()
    }

    /// Sends the results this thread's batch holds so far (it is about to
    /// wait for a result of its own: the peer may need these first).
    #[inline]
    pub(super) fn flush_own_batch(self: &Arc<Self>) {
        if let Some(b) = self.own_batch() {
            self.flush_batch_results(b);
        }
    }

    #[cold]
    fn flush_batch_results(self: &Arc<Self>, b: &Batch) {
        let done = b.done.load(Ordering::Relaxed);
        let from = {
            let _w = self.work.lock();
            let from = b.flushed.load(Ordering::Relaxed);
            b.flushed.store(done.max(from), Ordering::Relaxed);
            from
        };
        if from < done {
            let mut out = Vec::with_capacity(done - from);
            b.take_results(from, done, &mut out);
            self.send_outbox(&out);
        }
    }

    /// Under the work lock: steals the batches whose owner has not moved
    /// since the previous look (stuck in a handler), or every batch when
    /// `all` (disconnect). Their calls go to the front of the queue
    /// (dropped when `all`); their results not yet sent into `out`.
    pub(super) fn steal_batches(
        &self,
        w: &mut Work,
        all: bool,
        out: &mut Vec<(u64, WrapperFunctionBuffer)>,
    ) {
        let Work { batches, queue, .. } = w;
        for b in batches.iter() {
            if b.thief.load(Ordering::Relaxed) != NO_THIEF {
                continue; // stolen already; its owner has not seen it yet
            }
            let next = b.next.load(Ordering::Relaxed);
            let seen = b.round.load(Ordering::Relaxed) << 8 | (next as u64 & 0xff);
            // Under `Timing::Notified` nothing polls: a look is a wake-up,
            // and any batch still running may be stuck.
            let stuck = next < BATCH
                && (b.looked.swap(seen, Ordering::Relaxed) == seen
                    || self.timing == Timing::Notified);
            if !(all || stuck) {
                continue;
            }
            // SYNC POINT: batch claim (the thief's half, see
            // `Batch::claim`): announce, fence, read the owner's claims.
            b.thief.store(DECIDING, Ordering::Relaxed);
            fences::heavy(self.asymmetric_fences);
            let from = b.next.load(Ordering::Acquire);
            // The decision, read by the owner under the work lock.
            b.thief.store(from, Ordering::Relaxed);
            if from < BATCH {
                let len = b.len.load(Ordering::Relaxed);
                let calls = (from..len).rev().filter_map(|i| b.take_call(i));
                if all {
                    calls.for_each(drop);
                } else {
                    for call in calls {
                        queue.push_front(call);
                    }
                }
                // SYNC POINT: batch result (Acquire half, see `push_result`).
                let done = b.done.load(Ordering::Acquire);
                let flushed = b.flushed.load(Ordering::Relaxed);
                if done > flushed {
                    b.take_results(flushed, done, out);
                    b.flushed.store(done, Ordering::Relaxed);
                }
            }
        }
    }
}
