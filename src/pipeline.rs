//! [`Pipeline`]: many calls in flight from one thread, sent in batches,
//! their results taken in order.

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use crate::buffer::WrapperFunctionBuffer;
use crate::endpoint::Endpoint;
use crate::handler::HandlerTag;
use crate::pending::{CallError, CallResult, PendingTable};
use crate::sync::Ordering;

/// Calls handed to the engine at once by [`Pipeline::flush`] (it sends
/// them in batches of its own size).
const CHUNK: usize = 16;

/// A pipeline keeps at most this share of the connection's pending slots
/// leased between its calls (one in 4: 256 of the default 1,024, four
/// windows of 64): the others stay free for other callers.
const LEASE_SHARE: usize = 4;

/// The calls of a pipeline whose results are not in `done` yet, oldest
/// first: a sent call is its sequence number shifted left once, with the
/// low bit set when a waker was left in its slot; a call that was never
/// sent is [`FAILED`] (sequence numbers start at 1), its error in
/// `failures`, in the same order. Eight bytes a call: the pipelined path
/// pushes and pops one per call.
#[derive(Default)]
struct Waiting {
    sent: VecDeque<u64>,
    failures: VecDeque<CallError>,
}

/// A call of `Waiting::sent` that was never sent.
const FAILED: u64 = 0;

impl Waiting {
    fn len(&self) -> usize {
        self.sent.len()
    }

    fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// The oldest call: its sequence number and whether a waker is in its
    /// slot (`None` when there is none; never a failed call, see
    /// [`settle`]).
    #[inline(always)]
    fn front(&self) -> Option<(u64, bool)> {
        let &e = self.sent.front()?;
        debug_assert!(e != FAILED, "a failure at the front moves to `done`");
        Some((e >> 1, e & 1 != 0))
    }

    fn set_registered(&mut self, seq: u64, registered: bool) {
        if let Some(e) = self.sent.front_mut() {
            if *e != FAILED && *e >> 1 == seq {
                *e = seq << 1 | u64::from(registered);
            }
        }
    }
}

/// Many calls in flight from one thread: calls are *submitted* (staged,
/// no system call, no atomic operation), *sent* in batches — a pending
/// slot for each, their frames written with one publication and one
/// wake-up check per batch of 16 — and their results taken *in submission
/// order* with [`next`](Self::next).
///
/// Staged calls are sent by [`flush`](Self::flush), or by `next` when it
/// would otherwise wait: while results are ready, `next` returns them and
/// sends nothing, so a loop that takes one result and submits one call
/// sends its calls in batches as large as the results it found ready. This
/// is the shape for throughput ([`PendingCall`](crate::PendingCall) is the
/// shape for one call, or calls taken in any order, or a `Future`).
///
/// Every call yields exactly one result from `next`, in order; a call that
/// could not be sent (the connection closed, every pending slot taken, a
/// message over the transport's limit) yields its error in its place. A
/// waiting `next` never runs a handler, as for every wait of an endpoint.
/// Dropping the pipeline forgets its calls: staged ones are never sent,
/// results of sent ones are discarded when they arrive.
///
/// ```
/// use orcwire::{ControllerBuilder, ExecutorBuilder, StreamConfig, StreamTransport};
/// use orcwire::WrapperFunctionBuffer;
///
/// let (c_side, e_side) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
/// let executor = std::thread::spawn(move || {
///     ExecutorBuilder::new()
///         .function("double", |args, responder| {
///             let n = u64::from_le_bytes(args.as_slice().try_into().unwrap());
///             responder.respond(WrapperFunctionBuffer::from_slice(&(2 * n).to_le_bytes()));
///         })
///         .connect(e_side)
///         .unwrap()
/// });
/// let controller = ControllerBuilder::new().connect(c_side).unwrap();
/// let double = controller.function_tag("double").unwrap();
///
/// // Up to 8 calls in flight; results come back in order.
/// let mut pipe = controller.pipeline();
/// let mut results = Vec::new();
/// for n in 0..100u64 {
///     if pipe.in_flight() == 8 {
///         results.push(pipe.next().unwrap().unwrap());
///     }
///     pipe.submit(double, &n.to_le_bytes());
/// }
/// for r in pipe {
///     results.push(r.unwrap());
/// }
/// for (n, r) in results.iter().enumerate() {
///     assert_eq!(r.as_slice(), &(2 * n as u64).to_le_bytes());
/// }
/// controller.disconnect();
/// executor.join().unwrap().disconnect();
/// ```
pub struct Pipeline {
    endpoint: Endpoint,
    /// Arguments of the staged calls, back to back.
    args: Vec<u8>,
    /// Staged calls, oldest first: tag, and where in `args` their
    /// arguments start and end.
    staged: Vec<(u64, usize, usize)>,
    /// When the pipeline was made: a deadline that has always passed.
    created: Instant,
    /// Results of the oldest calls, in order, not yet returned by `next`.
    done: VecDeque<CallResult>,
    /// The calls after those (sent or failed). The oldest is never a
    /// failure: a failure that becomes the oldest moves to `done` (see
    /// [`settle`]).
    sent: Waiting,
    /// Pending slots leased to this pipeline and free for its next calls:
    /// the sequence number each was last used for (see
    /// [`PendingTable::register_leased`]). At most `lease_limit`.
    lease: Vec<u64>,
    lease_limit: usize,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("staged", &self.staged.len())
            .field("sent", &(self.done.len() + self.sent.len()))
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A [`Pipeline`] of calls on this connection, for many calls in
    /// flight from one thread.
    pub fn pipeline(&self) -> Pipeline {
        // SYNC POINT: pipelined. Stored before any call of this pipeline
        // enters the gate; disconnect loads it after closing the gate and
        // waiting for it to be idle, so every call sent before that load
        // is ordered before it (the gate's leave is Release, the wait's
        // load Acquire). SeqCst on both ends for when that wait gave up.
        self.inner.pipelined.store(true, Ordering::SeqCst);
        Pipeline {
            endpoint: self.clone(),
            args: Vec::new(),
            staged: Vec::new(),
            created: Instant::now(),
            done: VecDeque::new(),
            sent: Waiting::default(),
            lease: Vec::new(),
            lease_limit: self.inner.pending.capacity() / LEASE_SHARE,
        }
    }
}

impl Pipeline {
    /// Stages a call of `tag` with `args` (copied): it is sent by the next
    /// [`flush`](Self::flush), or by [`next`](Self::next) when that would
    /// otherwise wait. Never blocks, never fails: a call that cannot be
    /// sent yields its error from `next`, in its place.
    #[inline]
    pub fn submit(&mut self, tag: HandlerTag, args: &[u8]) {
        let at = self.args.len();
        self.args.extend_from_slice(args);
        self.staged.push((tag.get(), at, self.args.len()));
        if self.staged.len() >= CHUNK {
            // A full batch goes out now if the transport has room for it:
            // the peer works on it while this thread takes results.
            // (A deadline already past — the pipeline's creation — rather
            // than `Instant::now()`: no clock read per batch, and the
            // transport reads the clock only if it has no room.)
            let _ = self.flush_until(Some(self.created));
        }
    }

    /// Calls whose results [`next`](Self::next) has not returned yet,
    /// staged ones included.
    pub fn in_flight(&self) -> usize {
        self.staged.len() + self.done.len() + self.sent.len()
    }

    /// Calls submitted and not yet sent.
    pub fn staged(&self) -> usize {
        self.staged.len()
    }

    /// Sends every staged call, waiting for room in the transport as long
    /// as it takes (another thread keeps reading meanwhile).
    pub fn flush(&mut self) {
        // Without a deadline only a timeout could leave calls staged.
        let _ = self.flush_until(None);
    }

    /// As [`flush`](Self::flush), but gives up at `deadline` if the
    /// transport stays full until then.
    ///
    /// # Errors
    /// [`CallError::TimedOut`]: the calls not yet sent stay staged (flush
    /// again, or drop the pipeline to forget them).
    pub fn flush_deadline(&mut self, deadline: Instant) -> Result<(), CallError> {
        self.flush_until(Some(deadline))
    }

    fn flush_until(&mut self, deadline: Option<Instant>) -> Result<(), CallError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        self.endpoint.send_releases(deadline);
        let inner = &self.endpoint.inner;
        let (staged, args) = (&self.staged, &self.args[..]);
        let (done, sent) = (&mut self.done, &mut self.sent);
        let handled = inner.call_batch(
            &mut self.lease,
            staged.len(),
            |i| {
                let (tag, from, to) = staged[i];
                (tag, &args[from..to])
            },
            deadline,
            &mut |r| match r {
                Ok(seqs) => sent.sent.extend(seqs.iter().map(|&seq| seq << 1)),
                // Every call before it is done: its place is in `done`.
                Err(e) if sent.is_empty() => done.push_back(Err(e)),
                Err(e) => {
                    sent.sent.push_back(FAILED);
                    sent.failures.push_back(e);
                }
            },
        );
        if handled == self.staged.len() {
            self.staged.clear();
            self.args.clear();
            return Ok(());
        }
        // Timed out with calls left: they stay staged, their arguments
        // moved to the front.
        let used = self.staged[handled].1;
        self.staged.drain(..handled);
        for (_, from, to) in &mut self.staged {
            *from -= used;
            *to -= used;
        }
        self.args.drain(..used);
        Err(CallError::TimedOut)
    }

    /// As [`next`](Self::next), but gives up at `deadline` with
    /// [`CallError::TimedOut`]; the call stays in flight (the next `next`
    /// waits for it again).
    pub fn next_deadline(&mut self, deadline: Instant) -> Option<CallResult> {
        self.next_until(Some(deadline))
    }

    /// The oldest call's result, if it is there: taken.
    #[inline(always)]
    fn take_front(&mut self) -> Option<CallResult> {
        if let Some(r) = self.done.pop_front() {
            return Some(r);
        }
        // Completed the usual way (read by another thread, or out of order).
        let (seq, registered) = self.sent.front()?;
        let r = self.endpoint.inner.pending.try_take(seq, registered)?;
        self.sent.sent.pop_front();
        settle(&mut self.done, &mut self.sent);
        Some(r)
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Option<CallResult> {
        // The oldest is done: take it and send nothing (the staged calls
        // go out in a larger batch when this would wait).
        if let Some(r) = self.take_front() {
            return Some(r);
        }
        // About to wait: send what is staged first.
        if let Err(e) = self.flush_until(deadline) {
            if self.sent.is_empty() {
                return Some(Err(e));
            }
        }
        loop {
            if let Some(r) = self.take_front() {
                return Some(r);
            }
            let (seq, registered) = self.sent.front()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Some(Err(CallError::TimedOut));
            }
            let mut reg = registered;
            let (done, sent) = (&mut self.done, &mut self.sent);
            let mut lease = Lease {
                free: &mut self.lease,
                limit: self.lease_limit,
            };
            let inner = &self.endpoint.inner;
            let waited = inner.wait_for_mine(
                seq,
                deadline,
                &mut reg,
                Some(&mut |s, payload| {
                    take_mine(&inner.pending, done, sent, &mut lease, s, payload)
                }),
            );
            // The call waited for may be done and gone from `sent` (taken
            // by `take_mine`, which it was only if no waker was left).
            self.sent.set_registered(seq, reg);
            if let Err(e) = waited {
                // The call stays in flight (a would-deadlock error).
                return Some(Err(e));
            }
        }
    }
}

/// Moves failures that became the oldest waiting calls to `done`.
#[inline(always)]
fn settle(done: &mut VecDeque<CallResult>, waiting: &mut Waiting) {
    while waiting.sent.front() == Some(&FAILED) {
        waiting.sent.pop_front();
        if let Some(e) = waiting.failures.pop_front() {
            done.push_back(Err(e));
        }
    }
}

/// A pipeline's leased slots, as `take_mine` adds to them.
struct Lease<'a> {
    free: &'a mut Vec<u64>,
    limit: usize,
}

/// A result this pipeline read while it led: if it answers its oldest
/// call not yet done (the front of `sent`: results come in order unless
/// the peer answers out of order), `payload` is taken into `done` and the
/// call's slot freed with a plain store, back to the pipeline's lease
/// ([`PendingTable::release_own`]); `false` leaves the result to the
/// usual way (another thread's call, a later call of ours answered early,
/// or a slot a completer claimed or a waker is registered in), where
/// [`Pipeline::take_front`] finds it once its call is the oldest.
#[inline]
fn take_mine(
    pending: &PendingTable,
    done: &mut VecDeque<CallResult>,
    sent: &mut Waiting,
    lease: &mut Lease<'_>,
    seq: u64,
    payload: &mut WrapperFunctionBuffer,
) -> bool {
    // A call with a waker in its slot compares equal too: `release_own`
    // then refuses it.
    if sent.sent.front().map(|&e| e >> 1) != Some(seq) {
        return false;
    }
    match pending.release_own(seq) {
        None => return false,
        Some(false) => {}
        Some(true) if lease.free.len() < lease.limit => lease.free.push(seq),
        Some(true) => pending.end_lease(seq),
    }
    sent.sent.pop_front();
    done.push_back(Ok(std::mem::take(payload)));
    settle(done, sent);
    true
}

/// The results, in submission order: [`next`](Iterator::next) waits for
/// the oldest call (sending the staged calls first if it has to wait) and
/// returns `None` when no call is in flight.
///
/// A wait returns [`CallError::WouldDeadlock`] (the call stays in flight)
/// when it could only end by running a handler on this thread, as
/// [`PendingCall::wait`](crate::PendingCall::wait) does.
impl Iterator for Pipeline {
    type Item = CallResult;

    #[inline]
    fn next(&mut self) -> Option<CallResult> {
        // The usual case, inlined at the caller: the result is in.
        if let Some(r) = self.done.pop_front() {
            return Some(r);
        }
        self.next_until(None)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for &last in &self.lease {
            self.endpoint.inner.pending.end_lease(last);
        }
        for e in self.sent.sent.drain(..) {
            if e != FAILED {
                self.endpoint.inner.pending.abandon(e >> 1, e & 1 != 0);
            }
        }
    }
}
