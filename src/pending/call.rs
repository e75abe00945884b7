//! [`PendingCall`], the caller's handle on one slot, and [`CallHost`],
//! what it needs from its endpoint.

use super::*;

/// What a [`PendingCall`] needs from its endpoint.
pub(crate) trait CallHost: Send + Sync {
    /// The table the call's slot lives in.
    fn table(&self) -> &PendingTable;
    /// Blocks until call `seq` is done or `deadline` passes; the waiting
    /// thread may read the connection to get there (completing results
    /// only, never running a handler). Sets `registered` if it stored a
    /// waker in the slot (a lone caller that reads its own result never
    /// does, and then pays nothing to clear one).
    ///
    /// # Errors
    /// [`CallError::WouldDeadlock`] when the wait could only end by running
    /// a handler on this very thread.
    fn wait_for(
        &self,
        seq: u64,
        deadline: Option<Instant>,
        registered: &mut bool,
    ) -> Result<(), CallError>;
}

/// The owner's wait for call `seq`: takes the outcome if it is there,
/// else waits through `wait_for` (see [`CallHost::wait_for`]) and looks
/// again, until `deadline`. Returns the outcome ([`CallError::TimedOut`]
/// when the deadline passed, or the wait's error) and whether the outcome
/// was taken (the slot is then no longer the owner's; otherwise the owner
/// still holds it, to wait again or abandon).
fn take_or_wait(
    table: &PendingTable,
    seq: u64,
    deadline: Option<Instant>,
    registered: &mut bool,
    wait_for: impl Fn(u64, Option<Instant>, &mut bool) -> Result<(), CallError>,
) -> (CallResult, bool) {
    loop {
        if let Some(r) = table.try_take(seq, *registered) {
            return (r, true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return (Err(CallError::TimedOut), false);
        }
        if let Err(e) = wait_for(seq, deadline, registered) {
            return (Err(e), false);
        }
    }
}

/// The handle of one call in flight.
///
/// It is a [`Future`] (with no runtime dependency: any executor can poll
/// it) and can also be waited on synchronously with
/// [`wait`](Self::wait) or [`wait_timeout`](Self::wait_timeout). A
/// waiting thread only completes results: it never runs a handler, so a
/// wait cannot re-enter user code.
///
/// Dropping it forgets the call: its slot is freed (at once, or when the
/// result arrives, which is then discarded). The call itself is not
/// cancelled on the other side.
#[must_use = "a call's result is only seen through its handle"]
pub struct PendingCall {
    seq: u64,
    host: Arc<dyn CallHost>,
    /// The outcome was taken (the slot is no longer ours).
    taken: bool,
    /// A waker was registered in the slot at some point.
    registered: bool,
}

impl std::fmt::Debug for PendingCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCall")
            .field("seq", &self.seq)
            .field("done", &self.is_done())
            .finish()
    }
}

impl PendingCall {
    pub(crate) fn new(seq: u64, host: Arc<dyn CallHost>) -> Self {
        Self {
            seq,
            host,
            taken: false,
            registered: false,
        }
    }

    /// The call's sequence number on the wire.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the outcome has arrived (or was already taken).
    pub fn is_done(&self) -> bool {
        self.taken || self.host.table().is_done(self.seq)
    }

    fn try_take(&mut self) -> Option<CallResult> {
        if self.taken {
            return Some(Err(CallError::AlreadyTaken));
        }
        let r = self.host.table().try_take(self.seq, self.registered)?;
        self.taken = true;
        Some(r)
    }

    fn wait_until(&mut self, deadline: Option<Instant>) -> CallResult {
        if self.taken {
            return Err(CallError::AlreadyTaken);
        }
        let host = &self.host;
        let (r, taken) = take_or_wait(
            host.table(),
            self.seq,
            deadline,
            &mut self.registered,
            |seq, deadline, registered| host.wait_for(seq, deadline, registered),
        );
        self.taken = taken;
        r
    }

    /// Waits for the outcome.
    ///
    /// # Errors
    /// A [`CallError`] when the connection ended first, or
    /// [`CallError::WouldDeadlock`]. An out-of-band error result (for
    /// example, an unknown handler tag) is *not* an error here: it is an
    /// `Ok` buffer whose [`is_error`](WrapperFunctionBuffer::is_error) is
    /// true.
    pub fn wait(mut self) -> CallResult {
        self.wait_until(None)
    }

    /// Waits for the outcome at most `timeout`.
    ///
    /// # Errors
    /// [`CallError::TimedOut`] if none came in time (the call stays
    /// pending: wait again or drop the handle), otherwise as
    /// [`wait`](Self::wait).
    pub fn wait_timeout(&mut self, timeout: Duration) -> CallResult {
        let deadline = Instant::now().checked_add(timeout);
        self.wait_until(deadline)
    }

    /// Waits for the outcome until `deadline`.
    ///
    /// # Errors
    /// As [`wait_timeout`](Self::wait_timeout).
    pub fn wait_deadline(&mut self, deadline: Instant) -> CallResult {
        self.wait_until(Some(deadline))
    }
}

impl Future for PendingCall {
    type Output = CallResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CallResult> {
        if let Some(r) = self.try_take() {
            return Poll::Ready(r);
        }
        self.registered = true;
        self.host.table().register_waker(self.seq, cx.waker());
        match self.try_take() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.taken {
            self.host.table().abandon(self.seq, self.registered);
        }
    }
}
