//! The pending-call table's own operations, exposed (only under
//! `--cfg orcwire_loom`) so the loom models in `loom-tests/` drive the same
//! code the endpoint uses, without an endpoint around it.

use super::{CallError, CallHost, CallResult, Completed, PendingCall, PendingTable};
use crate::sync::{Arc, Mutex};

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

/// A [`PendingTable`](super) of its own with `slots` slots, and the lead
/// (a lock here): who reads the transport, which `release_own` and
/// `fail_all` need (see `PendingTable::release_own`).
#[derive(Clone)]
pub struct Table(Arc<Host>, Arc<Mutex<()>>);

impl Table {
    /// An empty table of (at least) `slots` slots.
    pub fn new(slots: usize) -> Self {
        Self(
            Arc::new(Host(PendingTable::new(slots))),
            Arc::new(Mutex::new(())),
        )
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

    /// Fails every pending call (what disconnect does, leading).
    pub fn fail_all(&self, err: CallError) {
        // Loom must-fail variant: fail the calls without leading.
        let _lead = (!crate::sync::is_broken("own")).then(|| self.1.lock());
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
        let _lead = self.1.lock();
        self.0 .0.release_own(seq).is_some()
    }

    /// The owner read call `seq`'s result itself (a synchronous caller
    /// that leads, `PendingTable::take_own`): claims and frees the slot,
    /// or `false` if a completer claimed it first. Needs no lead.
    pub fn claim_own(&self, seq: u64) -> bool {
        self.0 .0.take_own(seq)
    }

    /// Takes a slot for a pipeline's call: one of `lease` (reused under a
    /// new number, with a plain store) or a fresh one, leased: its number.
    ///
    /// # Errors
    /// [`CallError::TooManyPending`] when every slot is taken.
    pub fn register_leased(&self, lease: &mut Vec<u64>) -> Result<u64, CallError> {
        let mut out = [0];
        self.0 .0.register_leased(lease, &mut out)?;
        Ok(out[0])
    }

    /// [`release_own`](Self::release_own) for a leased slot: `true` when
    /// the slot went back to the lease (pushed onto `lease`).
    pub fn release_leased(&self, seq: u64, lease: &mut Vec<u64>) -> bool {
        let _lead = self.1.lock();
        let kept = self.0 .0.release_own(seq) == Some(true);
        if kept {
            lease.push(seq);
        }
        kept
    }

    /// Ends the leases of the slots in `lease`.
    pub fn end_leases(&self, lease: &mut Vec<u64>) {
        for last in lease.drain(..) {
            self.0 .0.end_lease(last);
        }
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
