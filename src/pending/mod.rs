//! Pending calls: a fixed array of slots indexed by sequence number, and
//! [`PendingCall`], the caller's handle on one slot.
//!
//! No map, no lock, no allocation per call. A call takes the slot
//! `seq % slots` for a fresh sequence number (if that slot is busy it
//! takes the next number, so sequence numbers on the wire may skip); the
//! reader delivers a result by indexing the same slot and checking that the
//! slot still belongs to that sequence number.
//!
//! # The slot's state word
//! ```text
//!  63 ..................... 8   7 .. 6   5        4          3        2       1       0
//! [ sequence number of the owner ][  0   ][LEASED][ABANDONED][CLAIMED][WAKER][VALUE][OCCUPIED]
//! ```
//! * `OCCUPIED`: a call owns the slot. Set by `PendingTable::register`
//!   (CAS from 0), cleared (store 0) by whoever frees the slot: the owner
//!   after taking the outcome, or the completer of an abandoned call.
//! * `CLAIMED`: one completer (the reader with a result, or disconnect
//!   failing every call) won the right to write the outcome. Only the
//!   claimer writes the value cell, and only before it sets `VALUE`.
//! * `VALUE`: the outcome is in the value cell; from here only the owner
//!   (or, if `ABANDONED`, the completer) touches the cell.
//! * `ABANDONED`: the handle was dropped before the outcome came; the
//!   completer drops the outcome and frees the slot.
//! * `WAKER`: the owner has put a waker in the slot (set once per call,
//!   with a read-modify-write after the first registration). A completer
//!   wakes only if it sees the bit.
//! * `LEASED`: the slot belongs to one [`Pipeline`](crate::Pipeline)
//!   between its calls too. When it reads a call's result itself
//!   ([`PendingTable::release_own`]) the slot goes back to it as
//!   `seq << 8 | LEASED` instead of 0: not occupied, so no completer
//!   touches it, and not free, so no other call takes it. Its next call
//!   there takes the number `seq + slots` with a plain store
//!   ([`PendingTable::register_leased`]): no compare-and-swap, and a
//!   pipeline's calls cycle through the few slots of its window (they stay
//!   in this core's cache) instead of the whole table. Any other way of
//!   ending the call (taken from the slot, abandoned) frees the slot as
//!   usual and ends its lease.
//!
//! Every call therefore completes exactly once: the claim is one CAS, so a
//! result racing a disconnect wins or loses but never completes a call
//! twice, and a late result for a freed or reused slot sees another
//! sequence number (or no `OCCUPIED`) and is discarded.
//!
//! Waiting: each slot embeds an `AtomicWaker`. A
//! future registers its task's waker; a synchronous waiter registers a
//! waker that unparks its thread; then it raises `WAKER`. A completer sets
//! `VALUE` and then wakes, if `WAKER` was up. Both bits are set by
//! read-modify-writes of the one state word, so one of the two comes
//! first: the completer's `fetch_or` sees `WAKER` (and the waker, stored
//! before it), or the owner's sees `VALUE` and does not sleep. Most calls
//! are completed by a thread that reads results while their owner is
//! still busy (a pipelining caller, a lead draining a batch) and never
//! register a waker: they skip the waker's two read-modify-writes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::buffer::WrapperFunctionBuffer;
use crate::sync::{Arc, AtomicU64, Ordering, UnsafeCell};

mod call;
#[cfg(orcwire_loom)]
pub mod model;
#[cfg(all(test, not(orcwire_loom)))]
mod tests;

pub use call::PendingCall;
pub(crate) use call::CallHost;
use crate::transport::TransportError;
use crate::waker::AtomicWaker;

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
    /// A deadline passed. From [`PendingCall::wait_timeout`] the call is
    /// still pending (wait again, or drop the handle to forget it); from
    /// [`Endpoint::call_deadline`](crate::Endpoint::call_deadline) the call
    /// was not sent.
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
    /// Every pending-call slot is in use.
    #[error("{0} calls are already waiting for results on this connection; wait for some, or raise EndpointConfig::max_pending_calls")]
    TooManyPending(usize),
    /// A synchronous wait on this thread could only finish by running a
    /// handler on this same thread, which a waiting thread never does.
    #[error("this wait would deadlock: {0}")]
    WouldDeadlock(&'static str),
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

/// A call owns the slot.
pub const OCCUPIED: u64 = 1 << 0;
/// The outcome is in the value cell.
pub const VALUE: u64 = 1 << 1;
/// The owner registered a waker: the completer wakes it.
pub const WAKER: u64 = 1 << 2;
/// A completer won the right to write the outcome.
pub const CLAIMED: u64 = 1 << 3;
/// The handle was dropped; the completer frees the slot.
pub const ABANDONED: u64 = 1 << 4;
/// The slot is leased to a pipeline (see the module docs).
pub const LEASED: u64 = 1 << 5;
const SEQ_SHIFT: u32 = 8;
/// Sequence numbers stay below this (they fit the state word's seq field).
const SEQ_LIMIT: u64 = 1 << (64 - SEQ_SHIFT);

/// Where one call's result lands.
struct Slot {
    /// `seq << 8 | flags`, or 0 when free. See the module docs.
    state: AtomicU64,
    /// Written by the claimer before `VALUE`; read by the owner after.
    value: UnsafeCell<Option<CallResult>>,
    waker: AtomicWaker,
}

// SAFETY: the value cell is touched only by the thread the state word's
// protocol gives it to (the claimer before VALUE, the owner or the
// completer of an abandoned call after); see the module docs.
unsafe impl Sync for Slot {}
// SAFETY: as above; the contents are Send.
unsafe impl Send for Slot {}

impl Slot {
    fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            value: UnsafeCell::new(None),
            waker: AtomicWaker::new(),
        }
    }

    fn take_value(&self) -> Option<CallResult> {
        // SAFETY: callers own the cell by the state protocol (VALUE seen
        // with Acquire by the owner, or the claimer of an abandoned call).
        self.value.with_mut(|v| unsafe { (*v).take() })
    }
}

/// A result arrived for a sequence number this side never handed out. A
/// protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the peer sent a result for sequence number {0}, which this side never used")]
pub(crate) struct UnknownSeq(pub u64);

/// What [`PendingTable::complete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completed {
    /// The outcome was stored for the waiting call.
    Delivered,
    /// No call waits under that number any more (it was dropped, already
    /// answered, or failed by disconnect); the outcome was dropped.
    Discarded,
}

/// Sequence number to waiting caller; see the [module docs](self).
pub(crate) struct PendingTable {
    slots: Box<[CachePadded<Slot>]>,
    mask: u64,
    /// Next sequence number to try; starts at 1 (0 is `Setup`/`Hangup`).
    next_seq: CachePadded<AtomicU64>,
}

impl std::fmt::Debug for PendingTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingTable")
            .field("slots", &self.slots.len())
            .field("pending", &self.len())
            .finish()
    }
}

impl PendingTable {
    /// A table of `capacity` slots, rounded up to a power of two (at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        let n = capacity.clamp(2, 1 << 24).next_power_of_two();
        Self {
            slots: (0..n).map(|_| CachePadded::new(Slot::new())).collect(),
            mask: n as u64 - 1,
            next_seq: CachePadded::new(AtomicU64::new(1)),
        }
    }

    /// How many slots the table has.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, seq: u64) -> &Slot {
        &self.slots[(seq & self.mask) as usize]
    }

    /// Takes call `seq`'s slot if it is free, with `flags` (0 or
    /// [`LEASED`]) besides `OCCUPIED`.
    #[inline]
    fn occupy_as(&self, seq: u64, flags: u64) -> bool {
        // SYNC POINT: slot freed. Acquire pairs with the Release store of 0
        // by whoever freed the slot: its last use of the value cell
        // happened before ours.
        self.slot(seq)
            .state
            .compare_exchange(
                0,
                seq << SEQ_SHIFT | OCCUPIED | flags,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Takes a free slot under a fresh sequence number.
    pub(crate) fn register(&self) -> Result<u64, CallError> {
        self.register_as(0)
    }

    /// [`register`](Self::register) with `flags` besides `OCCUPIED`.
    fn register_as(&self, flags: u64) -> Result<u64, CallError> {
        for _ in 0..self.slots.len() {
            let mut seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            if seq >= SEQ_LIMIT || seq == 0 {
                // 2^56 calls later: start again at 1. Racing threads may
                // both reset; any number they then take is still unique
                // among the occupied slots, which is all that matters.
                self.next_seq.store(2, Ordering::Relaxed);
                seq = 1;
            }
            if self.occupy_as(seq, flags) {
                return Ok(seq);
            }
        }
        Err(CallError::TooManyPending(self.slots.len()))
    }

    /// `register_many_as` with no flags (for the tests).
    #[cfg(test)]
    pub(crate) fn register_many(&self, out: &mut [u64]) -> Result<usize, CallError> {
        self.register_many_as(out, 0)
    }

    /// Takes slots for a run of a pipeline's calls, filling `out` from the
    /// start: its slots leased to it from previous calls first (`lease`: the last sequence
    /// number each was used for; those used are taken out), each under the
    /// number `slots` above its last, with a plain store; then fresh slots,
    /// leased too. One read-modify-write for the run either way: the
    /// highest number handed out is published in `next_seq` (results for
    /// numbers above it are the peer's error).
    ///
    /// # Errors
    /// [`CallError::TooManyPending`] when not even one slot is free.
    pub(crate) fn register_leased(
        &self,
        lease: &mut Vec<u64>,
        out: &mut [u64],
    ) -> Result<usize, CallError> {
        let slots = self.mask + 1;
        let mut taken = 0;
        let mut highest = 0;
        while taken < out.len() {
            let Some(last) = lease.pop() else { break };
            let seq = last + slots;
            let state = &self.slot(last).state;
            if seq >= SEQ_LIMIT {
                // 2^56 calls later: the slot leaves the lease.
                // SYNC POINT: slot freed (Release half, see `register`).
                state.store(0, Ordering::Release);
                continue;
            }
            // Nobody else writes a leased slot that is not occupied (no
            // completer claims it, no `occupy` takes it): a plain store.
            // SYNC POINT: slot freed (Release half, see `register`): a
            // completer's claim of this call acquires it.
            state.store(seq << SEQ_SHIFT | OCCUPIED | LEASED, Ordering::Release);
            out[taken] = seq;
            highest = highest.max(seq);
            taken += 1;
        }
        if highest != 0 {
            // Relaxed: as `register`'s increment (see `complete`).
            self.next_seq.fetch_max(highest + 1, Ordering::Relaxed);
        }
        if taken == out.len() {
            return Ok(taken);
        }
        match self.register_many_as(&mut out[taken..], LEASED) {
            Ok(n) => Ok(taken + n),
            Err(_) if taken > 0 => Ok(taken),
            Err(e) => Err(e),
        }
    }

    /// Takes free slots for a run of calls (with `flags` besides
    /// `OCCUPIED`), filling `out` from the start: one read-modify-write
    /// reserves a run of fresh sequence numbers (numbers whose slot is busy
    /// are skipped, as in [`register`](Self::register), which takes over
    /// when the run falls short). Returns how many were taken: all of
    /// `out`, or fewer when every slot is in use.
    ///
    /// # Errors
    /// [`CallError::TooManyPending`] when not even one slot is free.
    fn register_many_as(&self, out: &mut [u64], flags: u64) -> Result<usize, CallError> {
        let n = out.len() as u64;
        let first = self.next_seq.fetch_add(n, Ordering::Relaxed);
        let mut taken = 0;
        if first != 0 && first.checked_add(n).is_some_and(|end| end <= SEQ_LIMIT) {
            for seq in first..first + n {
                if self.occupy_as(seq, flags) {
                    out[taken] = seq;
                    taken += 1;
                }
            }
        }
        while taken < out.len() {
            match self.register_as(flags) {
                Ok(seq) => {
                    out[taken] = seq;
                    taken += 1;
                }
                Err(e) if taken == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(taken)
    }

    /// Completes call `seq` with `outcome`.
    ///
    /// # Errors
    /// [`UnknownSeq`] for a number this table never handed out.
    pub(crate) fn complete(&self, seq: u64, outcome: CallResult) -> Result<Completed, UnknownSeq> {
        // `next_seq` only grows (bar the wrap after 2^56 calls), so a number
        // at or above it was never used. Relaxed suffices: our increment
        // happened before the call was sent, and the peer's result reached
        // us through the transport's own Release/Acquire pairs.
        if seq == 0 || seq >= SEQ_LIMIT || seq >= self.next_seq.load(Ordering::Relaxed) {
            return Err(UnknownSeq(seq));
        }
        if self.claim(seq) && self.fill(seq, outcome) {
            Ok(Completed::Delivered)
        } else {
            Ok(Completed::Discarded)
        }
    }

    /// Wins the right to write call `seq`'s outcome, if it is still waiting
    /// and nobody else won it.
    fn claim(&self, seq: u64) -> bool {
        self.claim_state(seq).is_some()
    }

    /// [`claim`](Self::claim), returning the state word it claimed (its
    /// value before `CLAIMED`).
    fn claim_state(&self, seq: u64) -> Option<u64> {
        let slot = self.slot(seq);
        let mut cur = slot.state.load(Ordering::Relaxed);
        loop {
            if cur >> SEQ_SHIFT != seq || cur & OCCUPIED == 0 || cur & CLAIMED != 0 {
                return None;
            }
            if crate::sync::is_broken("pending") {
                // Loom must-fail variant: claim with a plain store, so two
                // completers can both believe they won.
                slot.state.store(cur | CLAIMED, Ordering::Relaxed);
                return Some(cur);
            }
            // SYNC POINT: slot claimed. The RMW total order on the state
            // word makes exactly one claimer win; Acquire pairs with the
            // slot-freed Release so the cell is ours to write.
            match slot.state.compare_exchange_weak(
                cur,
                cur | CLAIMED,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(cur),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Stores a claimed call's outcome and wakes its owner; `false` if the
    /// owner had abandoned the call (the outcome was dropped).
    fn fill(&self, seq: u64, outcome: CallResult) -> bool {
        let slot = self.slot(seq);
        // SAFETY: CLAIMED is ours and VALUE not yet set: nobody else
        // touches the cell (module docs).
        slot.value.with_mut(|v| unsafe { *v = Some(outcome) });
        // SYNC POINT: outcome stored. Release pairs with the owner's
        // Acquire loads (`try_take`, `abandon`): the cell write above is
        // visible to whoever sees VALUE.
        // SYNC POINT: waker announced. The same read-modify-write learns
        // whether the owner registered a waker (see `register_waker`).
        let prev = slot.state.fetch_or(VALUE, Ordering::AcqRel);
        if prev & ABANDONED != 0 {
            // The owner left before the outcome came: drop it, free the slot.
            drop(slot.take_value());
            // SYNC POINT: slot freed (Release half, see `register`).
            slot.state.store(0, Ordering::Release);
            return false;
        }
        if prev & WAKER != 0 {
            slot.waker.wake();
        }
        true
    }

    /// Completes every call still waiting with `err`. The caller makes sure
    /// no new call registers meanwhile (the endpoint's gate is closed and
    /// idle), so afterwards the table is empty or holds only outcomes; and
    /// it leads, so no owner frees a slot under a claim of ours (see
    /// [`release_own`](Self::release_own)).
    pub(crate) fn fail_all(&self, err: CallError) {
        for slot in self.slots.iter() {
            let cur = slot.state.load(Ordering::Relaxed);
            if cur & OCCUPIED != 0 && cur & (CLAIMED | VALUE) == 0 {
                let seq = cur >> SEQ_SHIFT;
                if self.claim(seq) {
                    let _ = self.fill(seq, Err(err.clone()));
                }
            }
        }
    }

    /// Whether call `seq`'s outcome is there.
    #[inline]
    pub(crate) fn is_done(&self, seq: u64) -> bool {
        // SYNC POINT: outcome stored (Acquire half, see `fill`).
        self.slot(seq).state.load(Ordering::Acquire) & VALUE != 0
    }

    /// Takes call `seq`'s outcome and frees the slot, if the outcome is
    /// there. Owner only.
    pub(crate) fn try_take(&self, seq: u64, registered: bool) -> Option<CallResult> {
        let slot = self.slot(seq);
        // SYNC POINT: outcome stored (Acquire half, see `fill`).
        if slot.state.load(Ordering::Acquire) & VALUE == 0 {
            return None;
        }
        let r = slot.take_value();
        if registered {
            // Drop our waker now rather than leave it for the next owner.
            drop(slot.waker.take());
        }
        // SYNC POINT: slot freed (Release half, see `register`).
        slot.state.store(0, Ordering::Release);
        // The claimer stored an outcome before VALUE; `None` cannot happen.
        Some(r.unwrap_or(Err(CallError::AlreadyTaken)))
    }

    /// The owner of call `seq` read its result itself (a synchronous
    /// caller that leads): claims the call, as a completer would, and
    /// frees the slot at once, so the result never goes through the value
    /// cell. `false` when the call was claimed first (by `fail_all`, or a
    /// forged duplicate result before this one): the outcome then goes the
    /// usual way. Owner only.
    ///
    /// Unlike [`release_own`](Self::release_own) this needs no lead: the
    /// claim is the read-modify-write every completer arbitrates with.
    #[inline]
    pub(crate) fn take_own(&self, seq: u64) -> bool {
        let slot = self.slot(seq);
        let claimed = if crate::sync::is_broken("sync_own") {
            // Loom must-fail variant: no claim, the slot freed straight
            // after a check, so a completer's claim in between lands on a
            // slot nobody owns.
            let cur = slot.state.load(Ordering::Relaxed);
            (cur >> SEQ_SHIFT == seq && cur & OCCUPIED != 0 && cur & CLAIMED == 0).then_some(cur)
        } else {
            self.claim_state(seq)
        };
        let Some(cur) = claimed else {
            return false;
        };
        if cur & WAKER != 0 {
            // Nobody wakes a call that is done: drop our waker now.
            drop(slot.waker.take());
        }
        // CLAIMED is ours and the owner is us: no completer, no abandon
        // and no taker touches the slot until this store.
        // SYNC POINT: slot freed (Release half, see `register`).
        slot.state.store(0, Ordering::Release);
        true
    }

    /// Registers `waker` for call `seq`. Owner only; re-check
    /// [`is_done`](Self::is_done) afterwards.
    pub(crate) fn register_waker(&self, seq: u64, waker: &Waker) {
        let slot = self.slot(seq);
        slot.waker.register(waker);
        // Relaxed: only the owner sets the bit, so our own earlier RMW is
        // what this load may see.
        if slot.state.load(Ordering::Relaxed) & WAKER != 0 {
            return; // announced already: completers wake the cell
        }
        if crate::sync::is_broken("waker") {
            // Loom must-fail variant: announce with a load and a plain
            // store, not one read-modify-write: a completer's `fetch_or`
            // that falls between the two is erased (its `VALUE` lost).
            let cur = slot.state.load(Ordering::Relaxed);
            slot.state.store(cur | WAKER, Ordering::Relaxed);
            return;
        }
        // SYNC POINT: waker announced. Pairs with the completer's
        // `fetch_or(VALUE)` in `fill`: the state word's modification
        // order puts one of the two first. Release: the waker stored above
        // is visible to a completer that sees the bit.
        slot.state.fetch_or(WAKER, Ordering::AcqRel);
    }

    /// The owner of call `seq` read its result itself (a [`Pipeline`]
    /// that leads): frees the slot — back to the owner's lease if it was
    /// leased (`Some(true)`: the owner keeps `seq` to reuse it, see
    /// [`register_leased`](Self::register_leased)), else to everyone
    /// (`Some(false)`) — unless a completer claimed it first or a waker was
    /// registered: then `None`, and the outcome goes the usual way
    /// (`complete`, then [`try_take`](Self::try_take)). Owner only, and
    /// only while it leads.
    ///
    /// A load and a plain store, no read-modify-write: nobody else writes
    /// the state word of an occupied slot meanwhile. Its completers are
    /// whoever reads the transport, which means leading (the owner leads
    /// now), and [`fail_all`](Self::fail_all), which the endpoint runs
    /// while it leads too (disconnect takes the lead for it).
    ///
    /// [`Pipeline`]: crate::Pipeline
    #[inline]
    pub(crate) fn release_own(&self, seq: u64) -> Option<bool> {
        let state = &self.slot(seq).state;
        // Relaxed: only our own writes (`occupy`, `register_leased`) and
        // those of completers that ran before we took the lead (published
        // by the lead's Acquire) can be there.
        let cur = state.load(Ordering::Relaxed);
        if cur & !LEASED != seq << SEQ_SHIFT | OCCUPIED {
            return None;
        }
        let leased = cur & LEASED != 0;
        // Loom must-fail variant: the lease keeps the slot occupied between
        // calls, where a late result for the last one can claim it.
        let idle = if crate::sync::is_broken("lease") { cur } else { cur & !OCCUPIED };
        // SYNC POINT: slot freed (Release half, see `register`).
        state.store(if leased { idle } else { 0 }, Ordering::Release);
        Some(leased)
    }

    /// Ends the lease of a slot leased to a pipeline and not occupied
    /// (`last`: the number it was last used for). Owner only.
    pub(crate) fn end_lease(&self, last: u64) {
        // SYNC POINT: slot freed (Release half, see `register`).
        self.slot(last).state.store(0, Ordering::Release);
    }

    /// Frees the slot of call `seq`, which was never sent (so no result
    /// can be meant for it; a forged one finds the slot free and is
    /// discarded). Owner only.
    pub(crate) fn free_unsent(&self, seq: u64) {
        // SYNC POINT: slot freed (Release half, see `register`).
        self.slot(seq).state.store(0, Ordering::Release);
    }

    /// Forgets call `seq`: its outcome, now or later, is dropped and the
    /// slot freed. Owner only.
    pub(crate) fn abandon(&self, seq: u64, registered: bool) {
        let slot = self.slot(seq);
        if registered {
            drop(slot.waker.take());
        }
        let mut cur = slot.state.load(Ordering::Acquire);
        loop {
            if cur & VALUE != 0 {
                drop(self.try_take(seq, false));
                return;
            }
            // SYNC POINT: outcome stored. AcqRel: if the CAS fails because
            // VALUE was just set, the reload (Acquire) sees the cell.
            match slot.state.compare_exchange_weak(
                cur,
                cur | ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Whether every slot's state word is 0 (for the loom models).
    #[cfg(orcwire_loom)]
    pub(crate) fn all_free(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.state.load(Ordering::Relaxed) == 0)
    }

    /// Calls waiting for an outcome (or holding one not yet taken).
    pub(crate) fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                let st = s.state.load(Ordering::Relaxed);
                st & OCCUPIED != 0 && st & ABANDONED == 0
            })
            .count()
    }
}
