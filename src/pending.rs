//! Pending calls: the table from sequence number to the caller waiting for
//! that result, and [`PendingCall`], the caller's handle.
//!
//! Every call completes exactly once: with the peer's result, or with an
//! error when the connection ends. Both paths go through the table's one
//! lock — a result removes its entry under the lock, and disconnect
//! (`PendingTable::fail_all`) closes the table and drains it under the
//! same lock — so a result racing a disconnect can win or lose but never
//! complete a call twice or leave it waiting. Wakers and the waiting
//! thread are told after the lock is released.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::buffer::WrapperFunctionBuffer;
use crate::sync::{lock, Arc, AtomicBool, Mutex, Ordering};
use crate::transport::TransportError;

/// Why a call produced no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The connection was disconnected (by either side) before the result
    /// arrived, or before the call could be made.
    #[error(
        "the connection is disconnected, so the call was not answered; reconnect to call again"
    )]
    Disconnected,
    /// The peer process died before the result arrived.
    #[error("the peer process died before answering; start a new peer to call again")]
    PeerDied,
    /// [`PendingCall::wait_timeout`] ran out of time. The call is still
    /// pending: wait again, or drop the handle to forget the result.
    #[error(
        "no result within the timeout; the call is still pending, so wait again or drop the handle"
    )]
    TimedOut,
    /// The result was already taken out of this handle.
    #[error("the result of this call was already taken from its handle")]
    AlreadyTaken,
    /// The transport refused the call (for example, it is too large).
    #[error("the call could not be sent: {0}")]
    Send(TransportError),
}

impl CallError {
    /// The error that ends a call when the connection ends for `cause`.
    pub fn from_transport(cause: &TransportError) -> Self {
        match cause {
            TransportError::PeerDied => Self::PeerDied,
            _ => Self::Disconnected,
        }
    }
}

/// The outcome a call ends with.
pub type CallResult = Result<WrapperFunctionBuffer, CallError>;

#[derive(Debug)]
enum SlotState {
    /// Waiting; the waker of the last poll, if any.
    Pending(Option<Waker>),
    Ready(CallResult),
    Taken,
}

/// Where one call's result lands.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    /// Set (Release) after the state became `Ready`, so waiters can poll
    /// without taking the lock.
    done: AtomicBool,
}

impl Slot {
    fn new() -> Self {
        Self {
            state: Mutex::new(SlotState::Pending(None)),
            done: AtomicBool::new(false),
        }
    }

    /// Stores the outcome unless one is already there; returns whether it
    /// stored. Wakes the task waiting on it.
    fn complete(&self, outcome: CallResult) -> bool {
        let waker = {
            let mut st = lock(&self.state);
            match &mut *st {
                SlotState::Pending(w) => {
                    let w = w.take();
                    *st = SlotState::Ready(outcome);
                    w
                }
                _ => return false,
            }
        };
        // SYNC POINT: slot done. Release pairs with the Acquire in
        // `is_done`; the outcome itself is published by the state lock.
        self.done.store(true, Ordering::Release);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Whether an outcome is stored (or was taken).
    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        // SYNC POINT: slot done (Acquire half).
        self.done.load(Ordering::Acquire)
    }

    /// Takes the outcome if there is one.
    fn try_take(&self) -> Option<CallResult> {
        let mut st = lock(&self.state);
        match std::mem::replace(&mut *st, SlotState::Taken) {
            SlotState::Ready(r) => Some(r),
            SlotState::Taken => Some(Err(CallError::AlreadyTaken)),
            pending @ SlotState::Pending(_) => {
                *st = pending;
                None
            }
        }
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<CallResult> {
        let mut st = lock(&self.state);
        match std::mem::replace(&mut *st, SlotState::Taken) {
            SlotState::Ready(r) => Poll::Ready(r),
            SlotState::Taken => Poll::Ready(Err(CallError::AlreadyTaken)),
            SlotState::Pending(w) => {
                let w = match w {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *st = SlotState::Pending(Some(w));
                Poll::Pending
            }
        }
    }
}

/// Hashes a sequence number by Fibonacci multiplication. The keys are our
/// own consecutive numbers (a peer's result only *looks one up*), so they
/// spread well without std's seeded SipHash; and the same table behaves the
/// same in every run, which loom's exploration needs (a seeded hash drains
/// the table in a different order each time).
#[derive(Clone, Copy, Debug, Default)]
struct SeqHash;

impl BuildHasher for SeqHash {
    type Hasher = SeqHasher;

    fn build_hasher(&self) -> SeqHasher {
        SeqHasher(0)
    }
}

#[derive(Debug)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
        self.0 = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug)]
struct TableInner {
    /// Next sequence number to hand out; starts at 1 (0 is for
    /// `Setup`/`Hangup`).
    next_seq: u64,
    calls: HashMap<u64, Arc<Slot>, SeqHash>,
    /// Set by `fail_all`: the error every later registration gets.
    closed: Option<CallError>,
}

/// Sequence number to waiting caller.
#[derive(Debug)]
pub(crate) struct PendingTable {
    inner: Mutex<TableInner>,
}

/// A result arrived for a sequence number with no pending call: the peer
/// answered twice, or made one up. A protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the peer sent a result for sequence number {0}, which has no pending call")]
pub(crate) struct UnknownSeq(pub u64);

impl PendingTable {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(TableInner {
                next_seq: 1,
                calls: HashMap::with_hasher(SeqHash),
                closed: None,
            }),
        }
    }

    /// Allocates a sequence number and a slot for a new call.
    pub(crate) fn register(&self) -> Result<(u64, Arc<Slot>), CallError> {
        let mut t = lock(&self.inner);
        if let Some(e) = &t.closed {
            // Loom must-fail variant: register after `fail_all` drained the
            // table, so nothing will ever complete the call.
            if !crate::sync::is_broken("pending") {
                return Err(e.clone());
            }
        }
        let seq = t.next_seq;
        t.next_seq = t.next_seq.wrapping_add(1).max(1);
        let slot = Arc::new(Slot::new());
        t.calls.insert(seq, Arc::clone(&slot));
        Ok((seq, slot))
    }

    /// Completes call `seq` with `outcome`.
    pub(crate) fn complete(&self, seq: u64, outcome: CallResult) -> Result<(), UnknownSeq> {
        let slot = lock(&self.inner)
            .calls
            .remove(&seq)
            .ok_or(UnknownSeq(seq))?;
        slot.complete(outcome);
        Ok(())
    }

    /// Completes every pending call with `err`, and every later
    /// registration fails with it. The first error sticks.
    pub(crate) fn fail_all(&self, err: CallError) {
        let drained: Vec<Arc<Slot>> = {
            let mut t = lock(&self.inner);
            let err = t.closed.get_or_insert(err).clone();
            let slots = t.calls.drain().map(|(_, s)| s).collect::<Vec<_>>();
            drop(t);
            for s in &slots {
                s.complete(Err(err.clone()));
            }
            slots
        };
        drop(drained);
    }

    /// Number of calls waiting.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).calls.len()
    }
}

/// Hooks the endpoint gives a [`PendingCall`] so that a synchronous wait
/// can drive the inbound side itself instead of sleeping.
pub(crate) trait WaitDriver: Send + Sync {
    /// Blocks until `slot` is done or `deadline` passes.
    fn wait_for(&self, slot: &Slot, deadline: Option<std::time::Instant>);
}

/// The handle of one call in flight.
///
/// It is a [`Future`] (with no runtime dependency: any executor can poll
/// it) and can also be waited on synchronously with
/// [`wait`](Self::wait) or [`wait_timeout`](Self::wait_timeout). Dropping
/// it forgets the result; the call itself is not cancelled.
#[must_use = "a call's result is only seen through its handle"]
pub struct PendingCall {
    seq: u64,
    slot: Arc<Slot>,
    driver: Arc<dyn WaitDriver>,
}

impl std::fmt::Debug for PendingCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCall")
            .field("seq", &self.seq)
            .field("done", &self.slot.is_done())
            .finish()
    }
}

impl PendingCall {
    pub(crate) fn new(seq: u64, slot: Arc<Slot>, driver: Arc<dyn WaitDriver>) -> Self {
        Self { seq, slot, driver }
    }

    /// The call's sequence number on the wire.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the outcome has arrived.
    pub fn is_done(&self) -> bool {
        self.slot.is_done()
    }

    /// Waits for the outcome.
    ///
    /// # Errors
    /// A [`CallError`] when the connection ended first. An out-of-band
    /// error result (for example, an unknown handler tag) is *not* an
    /// error here: it is an `Ok` buffer whose
    /// [`is_error`](WrapperFunctionBuffer::is_error) is true.
    pub fn wait(self) -> CallResult {
        loop {
            if let Some(r) = self.slot.try_take() {
                return r;
            }
            self.driver.wait_for(&self.slot, None);
        }
    }

    /// Waits for the outcome at most `timeout`.
    ///
    /// # Errors
    /// [`CallError::TimedOut`] if none came in time (the call stays
    /// pending: wait again), otherwise as [`wait`](Self::wait).
    pub fn wait_timeout(&mut self, timeout: std::time::Duration) -> CallResult {
        let deadline = std::time::Instant::now().checked_add(timeout);
        loop {
            if let Some(r) = self.slot.try_take() {
                return r;
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(CallError::TimedOut);
            }
            self.driver.wait_for(&self.slot, deadline);
        }
    }
}

impl Future for PendingCall {
    type Output = CallResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CallResult> {
        self.slot.poll_take(cx)
    }
}

/// The pending-call table's own operations, exposed (only under
/// `--cfg orcwire_loom`) so the loom models in `loom-tests/` drive the same
/// code the endpoint uses, without an endpoint around it.
#[cfg(orcwire_loom)]
pub mod model {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::{CallError, CallResult, PendingTable, Slot, UnknownSeq};
    use crate::sync::Arc;

    /// A [`PendingTable`](super) of its own.
    #[derive(Debug)]
    pub struct Table(PendingTable);

    /// One registered call: a future of its outcome.
    #[derive(Debug)]
    pub struct Call(Arc<Slot>);

    impl Table {
        /// An empty, open table.
        pub fn new() -> Self {
            Self(PendingTable::new())
        }

        /// Registers a call (what `Endpoint::call` does first).
        ///
        /// # Errors
        /// The table's closing error once [`fail_all`](Self::fail_all) ran.
        pub fn register(&self) -> Result<(u64, Call), CallError> {
            self.0.register().map(|(seq, slot)| (seq, Call(slot)))
        }

        /// Delivers a result (what the reader does with a `Result`
        /// message). `false` if no call was pending under `seq`.
        pub fn complete(&self, seq: u64, outcome: CallResult) -> bool {
            !matches!(self.0.complete(seq, outcome), Err(UnknownSeq(_)))
        }

        /// Fails every pending and later call (what disconnect does).
        pub fn fail_all(&self, err: CallError) {
            self.0.fail_all(err);
        }

        /// Calls still waiting.
        pub fn len(&self) -> usize {
            self.0.len()
        }

        /// Whether no call is waiting.
        pub fn is_empty(&self) -> bool {
            self.0.len() == 0
        }
    }

    impl Default for Table {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Future for Call {
        type Output = CallResult;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CallResult> {
            self.0.poll_take(cx)
        }
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;

    #[test]
    fn complete_once_then_unknown() {
        let t = PendingTable::new();
        let (seq, slot) = t.register().unwrap();
        assert_eq!(seq, 1);
        t.complete(seq, Ok(WrapperFunctionBuffer::from_slice(b"x")))
            .unwrap();
        assert!(slot.is_done());
        assert_eq!(
            t.complete(seq, Ok(WrapperFunctionBuffer::new())),
            Err(UnknownSeq(seq))
        );
        assert_eq!(slot.try_take().unwrap().unwrap().as_slice(), b"x");
        assert_eq!(slot.try_take().unwrap(), Err(CallError::AlreadyTaken));
    }

    #[test]
    fn fail_all_completes_everything_and_sticks() {
        let t = PendingTable::new();
        let slots: Vec<_> = (0..10).map(|_| t.register().unwrap()).collect();
        t.fail_all(CallError::PeerDied);
        t.fail_all(CallError::Disconnected);
        for (seq, s) in &slots {
            assert_eq!(s.try_take().unwrap(), Err(CallError::PeerDied));
            assert!(t.complete(*seq, Ok(WrapperFunctionBuffer::new())).is_err());
        }
        assert_eq!(t.register().unwrap_err(), CallError::PeerDied);
        assert_eq!(t.len(), 0);
    }
}
