//! How a connection ends, as [`ShmTransport`] keeps track of it: local
//! flags (closed, peer dead, peer broke the protocol) with the first
//! terminal error, and the shared state word (each side's disconnecting
//! bit, the epoch).
//!
//! Relies on: the `state` bits of the layout (each set by one side only,
//! never cleared within an epoch), and the wake words to end every wait.

use orcwire::transport::TransportError;

use super::{ShmTransport, CLOSED, FAILED, PEER_DEAD};
use crate::layout::state;
use crate::ring::RingError;
use crate::sync::Ordering;

impl ShmTransport {
    /// Records that the peer process died (called by the liveness
    /// watcher). Sets a local flag — the dead peer's memory is not trusted
    /// — and wakes every waiter: blocked and later calls return
    /// [`TransportError::PeerDied`] (unless the transport had already
    /// failed or been closed, or the peer had hung up first) and
    /// [`peer_died`](orcwire::Transport::peer_died) becomes true.
    pub fn mark_peer_dead(&self) {
        // SYNC POINT: local flags. Pairs with `record`. A peer that exits
        // after the connection was closed cleanly — by us, or by itself
        // (its disconnecting bit is set: it may exit before our own close
        // in the hang-up handshake) — did not die on us: later calls keep
        // reporting the clean close. Its bit already ended every wait.
        if self.local.load(Ordering::Acquire) & CLOSED != 0 || self.peer_disconnecting() {
            self.own.wake_all();
            return;
        }
        self.record(PEER_DEAD, TransportError::PeerDied);
        self.own.wake_all();
    }

    internal! {
        /// The raw state word: [`state`] bits and epoch. Untrusted.
        fn connection_state(&self) -> u64 {
            // SYNC POINT: disconnect. Pairs with the `Release` in `shut`.
            self.state.load(Ordering::Acquire)
        }
    }

    /// Whether the peer set its disconnecting bit.
    pub fn peer_disconnecting(&self) -> bool {
        self.connection_state() & self.side.peer().disconnecting_bit() != 0
    }

    /// Records the first terminal error and sets `flag`.
    pub(super) fn record(&self, flag: u32, err: TransportError) -> TransportError {
        let mut first = self.first_error.lock();
        let first = first.get_or_insert(err);
        // SYNC POINT: local flags. Set under the lock after the error, so a
        // thread that sees the flag (`Acquire`) and takes the lock finds it.
        self.local.fetch_or(flag, Ordering::Release);
        first.clone()
    }

    pub(super) fn terminal_error(&self) -> TransportError {
        self.first_error
            .lock()
            .clone()
            .unwrap_or(TransportError::Closed)
    }

    pub(super) fn is_terminated(&self) -> bool {
        // SYNC POINT: local flags. Pairs with `record`.
        self.local.load(Ordering::Acquire) != 0
    }

    /// A ring error: `TooLarge` is the caller's; anything else is the
    /// peer's fault and closes the transport.
    pub(super) fn ring_failed(&self, err: RingError) -> TransportError {
        let text = match err {
            RingError::TooLarge { size, limit } => return TransportError::TooLarge { size, limit },
            RingError::Corrupt(what) => format!("corrupt shared ring: {what}"),
            other => other.to_string(),
        };
        let err = self.record(FAILED, TransportError::Protocol(text));
        self.shut();
        err
    }

    /// Checks the shared state: epoch unchanged, and whether the peer is
    /// disconnecting.
    pub(super) fn peer_state(&self) -> Result<bool, TransportError> {
        // SYNC POINT: disconnect. Pairs with the peer's `Release` setting
        // of its disconnecting bit in `shut`: seeing the bit makes every
        // frame it published before visible.
        let word = self.state.load(Ordering::Acquire);
        if state::epoch(word) != self.attached.epoch {
            let err = self.record(
                FAILED,
                TransportError::Protocol(format!(
                    "the segment was re-initialised (epoch {} instead of {})",
                    state::epoch(word),
                    self.attached.epoch
                )),
            );
            self.shut();
            return Err(err);
        }
        Ok(word & self.side.peer().disconnecting_bit() != 0)
    }

    pub(super) fn check_send(&self) -> Result<(), TransportError> {
        if self.is_terminated() {
            return Err(self.terminal_error());
        }
        if self.peer_state()? {
            return Err(TransportError::PeerHungUp);
        }
        Ok(())
    }

    /// Tells the peer we are gone and wakes everyone.
    pub(super) fn shut(&self) {
        // SYNC POINT: disconnect. Pairs with the peer's `Acquire` load in
        // `peer_state`.
        self.state
            .fetch_or(self.side.disconnecting_bit(), Ordering::Release);
        self.own.wake_all();
        self.peer.wake_all();
    }
}
