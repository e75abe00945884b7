//! [`Pipeline`]: many calls in flight from one thread, sent in batches,
//! their results taken in order.

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use crate::buffer::WrapperFunctionBuffer;
use crate::endpoint::Endpoint;
use crate::handler::HandlerTag;
use crate::pending::{CallError, CallResult, PendingTable};

/// Calls handed to the engine at once by [`Pipeline::flush`] (it sends
/// them in batches of its own size).
const CHUNK: usize = 16;

/// A call of a pipeline, sent or failed, whose result was not taken yet.
enum Entry {
    /// Sent under `seq`; `registered`: a waker was left in its slot.
    Sent { seq: u64, registered: bool },
    /// Answered, read by this pipeline itself: the result, its slot
    /// already free.
    Done(WrapperFunctionBuffer),
    /// Never sent: its result is this error.
    Failed(CallError),
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
    /// Staged calls: tag and argument length, oldest first.
    staged: VecDeque<(u64, usize)>,
    /// Sent or failed calls whose results were not taken, oldest first.
    sent: VecDeque<Entry>,
    /// Index in `sent` from which results this pipeline reads itself are
    /// looked for: every entry before it is done or failed, or was
    /// registered (see [`take_mine`]).
    cursor: usize,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("staged", &self.staged.len())
            .field("sent", &self.sent.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A [`Pipeline`] of calls on this connection, for many calls in
    /// flight from one thread.
    pub fn pipeline(&self) -> Pipeline {
        Pipeline {
            endpoint: self.clone(),
            args: Vec::new(),
            staged: VecDeque::new(),
            sent: VecDeque::new(),
            cursor: 0,
        }
    }
}

impl Pipeline {
    /// Stages a call of `tag` with `args` (copied): it is sent by the next
    /// [`flush`](Self::flush), or by [`next`](Self::next) when that would
    /// otherwise wait. Never blocks, never fails: a call that cannot be
    /// sent yields its error from `next`, in its place.
    pub fn submit(&mut self, tag: HandlerTag, args: &[u8]) {
        self.args.extend_from_slice(args);
        self.staged.push_back((tag.get(), args.len()));
        if self.staged.len() >= CHUNK {
            // A full batch goes out now if the transport has room for it:
            // the peer works on it while this thread takes results.
            let _ = self.flush_until(Some(Instant::now()));
        }
    }

    /// Calls whose results [`next`](Self::next) has not returned yet,
    /// staged ones included.
    pub fn in_flight(&self) -> usize {
        self.staged.len() + self.sent.len()
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
        let mut used = 0;
        let mut result = Ok(());
        while !self.staged.is_empty() {
            let mut calls: [(u64, &[u8]); CHUNK] = [(0, &[]); CHUNK];
            let mut n = 0;
            let mut at = used;
            for &(tag, len) in self.staged.iter().take(CHUNK) {
                calls[n] = (tag, &self.args[at..at + len]);
                at += len;
                n += 1;
            }
            let sent = &mut self.sent;
            let handled = inner.call_batch(&calls[..n], deadline, &mut |r| {
                sent.push_back(match r {
                    Ok(seq) => Entry::Sent {
                        seq,
                        registered: false,
                    },
                    Err(e) => Entry::Failed(e),
                })
            });
            for (_, len) in self.staged.drain(..handled) {
                used += len;
            }
            if handled < n {
                result = Err(CallError::TimedOut);
                break;
            }
        }
        self.args.drain(..used);
        result
    }

    /// As [`next`](Self::next), but gives up at `deadline` with
    /// [`CallError::TimedOut`]; the call stays in flight (the next `next`
    /// waits for it again).
    pub fn next_deadline(&mut self, deadline: Instant) -> Option<CallResult> {
        self.next_until(Some(deadline))
    }

    /// The oldest call's result, if it is there: taken (the entry popped).
    #[inline]
    fn take_front(&mut self) -> Option<CallResult> {
        let r = match self.sent.front()? {
            Entry::Sent { seq, registered } => {
                self.endpoint.inner.pending.try_take(*seq, *registered)?
            }
            Entry::Done(_) | Entry::Failed(_) => match self.sent.pop_front() {
                Some(Entry::Done(r)) => {
                    self.cursor = self.cursor.saturating_sub(1);
                    return Some(Ok(r));
                }
                Some(Entry::Failed(e)) => {
                    self.cursor = self.cursor.saturating_sub(1);
                    return Some(Err(e));
                }
                _ => unreachable!("the front was done or failed"),
            },
        };
        self.sent.pop_front();
        self.cursor = self.cursor.saturating_sub(1);
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
            let &Entry::Sent { seq, registered } = self.sent.front()? else {
                unreachable!("take_front takes done and failed calls")
            };
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Some(Err(CallError::TimedOut));
            }
            let mut reg = registered;
            let (sent, cursor) = (&mut self.sent, &mut self.cursor);
            let inner = &self.endpoint.inner;
            let waited = inner.wait_for_mine(
                seq,
                deadline,
                &mut reg,
                Some(&mut |s, payload| take_mine(&inner.pending, sent, cursor, s, payload)),
            );
            if let Some(Entry::Sent { registered, .. }) = self.sent.front_mut() {
                *registered = reg;
            }
            if let Err(e) = waited {
                // The call stays in flight (a would-deadlock error).
                return Some(Err(e));
            }
        }
    }
}

/// A result this pipeline read while it led: if it answers one of its own
/// calls (in `sent`, looked for from `cursor`, where in-order results are
/// found at once), `payload` is taken into that call's entry and its slot
/// freed with one read-modify-write ([`PendingTable::release_own`]);
/// `false` leaves the result to the usual way (another thread's call, or a
/// slot a completer claimed or a waker is registered in).
#[inline]
fn take_mine(
    pending: &PendingTable,
    sent: &mut VecDeque<Entry>,
    cursor: &mut usize,
    seq: u64,
    payload: &mut WrapperFunctionBuffer,
) -> bool {
    // Sequence numbers of a pipeline's calls grow in submission order.
    let mut at = *cursor;
    let found = loop {
        match sent.get(at) {
            None => return false,
            Some(&Entry::Sent { seq: s, .. }) if s == seq => break at,
            Some(&Entry::Sent { seq: s, .. }) if s > seq => return false,
            Some(_) => at += 1,
        }
    };
    if !pending.release_own(seq) {
        return false;
    }
    sent[found] = Entry::Done(std::mem::take(payload));
    if found == *cursor {
        while matches!(sent.get(*cursor), Some(Entry::Done(_) | Entry::Failed(_))) {
            *cursor += 1;
        }
    }
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

    fn next(&mut self) -> Option<CallResult> {
        self.next_until(None)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for entry in self.sent.drain(..) {
            if let Entry::Sent { seq, registered } = entry {
                self.endpoint.inner.pending.abandon(seq, registered);
            }
        }
    }
}
