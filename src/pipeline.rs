//! [`Pipeline`]: many calls in flight from one thread, sent in batches,
//! their results taken in order.

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use crate::endpoint::Endpoint;
use crate::handler::HandlerTag;
use crate::pending::{CallError, CallResult};

/// Calls handed to the engine at once by [`Pipeline::flush`] (it sends
/// them in batches of its own size).
const CHUNK: usize = 16;

/// A call of a pipeline, sent or failed, whose result was not taken yet.
enum Entry {
    /// Sent under `seq`; `registered`: a waker was left in its slot.
    Sent { seq: u64, registered: bool },
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

    fn next_until(&mut self, deadline: Option<Instant>) -> Option<CallResult> {
        let inner = &self.endpoint.inner;
        // The oldest is done: take it and send nothing (the staged calls
        // go out in a larger batch when this would wait).
        match self.sent.front() {
            Some(&Entry::Sent { seq, registered }) => {
                if let Some(r) = inner.pending.try_take(seq, registered) {
                    self.sent.pop_front();
                    return Some(r);
                }
            }
            Some(Entry::Failed(_)) => {
                let Some(Entry::Failed(e)) = self.sent.pop_front() else {
                    unreachable!("the front was a failed call")
                };
                return Some(Err(e));
            }
            None => {}
        }
        // About to wait: send what is staged first.
        if let Err(e) = self.flush_until(deadline) {
            if self.sent.is_empty() {
                return Some(Err(e));
            }
        }
        match self.sent.front_mut()? {
            Entry::Failed(_) => match self.sent.pop_front() {
                Some(Entry::Failed(e)) => Some(Err(e)),
                _ => unreachable!("the front was a failed call"),
            },
            Entry::Sent { seq, registered } => {
                let (r, taken) = self.endpoint.inner.take_or_wait(*seq, deadline, registered);
                if taken {
                    self.sent.pop_front();
                }
                Some(r)
            }
        }
    }
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
