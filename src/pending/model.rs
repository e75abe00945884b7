//! The pending-call table's own operations, exposed (only under
//! `--cfg orcwire_loom`) so the loom models in `loom-tests/` drive the same
//! code the endpoint uses, without an endpoint around it.

use super::{CallError, CallHost, CallResult, Completed, PendingCall, PendingTable};
use crate::sync::Arc;

struct Host(PendingTable);

impl CallHost for Host {
    fn table(&self) -> &PendingTable {
        &self.0
    }
    fn wait_for(
        &self,
        _seq: u64,
        _deadline: Option<std::time::Instant>,
        _registered: &mut bool,
    ) -> Result<(), CallError> {
        Err(CallError::WouldDeadlock("the loom model polls instead"))
    }
}

/// A [`PendingTable`](super) of its own with `slots` slots.
#[derive(Clone)]
pub struct Table(Arc<Host>);

impl Table {
    /// An empty table of (at least) `slots` slots.
    pub fn new(slots: usize) -> Self {
        Self(Arc::new(Host(PendingTable::new(slots))))
    }

    /// Registers a call (what `Endpoint::call` does first).
    ///
    /// # Errors
    /// [`CallError::TooManyPending`] when every slot is taken.
    pub fn register(&self) -> Result<PendingCall, CallError> {
        let seq = self.0 .0.register()?;
        Ok(PendingCall::new(
            seq,
            Arc::clone(&self.0) as Arc<dyn CallHost>,
        ))
    }

    /// Delivers a result (what the reader does with a `Result`
    /// message): `Some(true)` delivered, `Some(false)` discarded, `None`
    /// for a number never handed out.
    pub fn complete(&self, seq: u64, outcome: CallResult) -> Option<bool> {
        self.0
             .0
            .complete(seq, outcome)
            .ok()
            .map(|c| c == Completed::Delivered)
    }

    /// Fails every pending call (what disconnect does).
    pub fn fail_all(&self, err: CallError) {
        self.0 .0.fail_all(err);
    }

    /// Takes a slot for a call whose owner keeps no handle (what a
    /// [`Pipeline`](crate::Pipeline) does): its sequence number.
    ///
    /// # Errors
    /// [`CallError::TooManyPending`] when every slot is taken.
    pub fn register_own(&self) -> Result<u64, CallError> {
        self.0 .0.register()
    }

    /// The owner read call `seq`'s result itself (a `Pipeline` that
    /// leads): frees the slot, or `false` if a completer claimed it first.
    pub fn release_own(&self, seq: u64) -> bool {
        self.0 .0.release_own(seq)
    }

    /// The owner takes call `seq`'s outcome from its slot, if it is there.
    pub fn take_own(&self, seq: u64) -> Option<CallResult> {
        self.0 .0.try_take(seq, false)
    }

    /// Whether every slot's state word is back to free (0): no slot held,
    /// and none left marked by a completer after its owner freed it.
    pub fn all_free(&self) -> bool {
        self.0 .0.all_free()
    }

    /// Calls still holding a slot.
    pub fn len(&self) -> usize {
        self.0 .0.len()
    }

    /// Whether no slot is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
