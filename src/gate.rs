//! The disconnect gate: one atomic word that says whether calls may still
//! enter, which connection epoch this is, and how many operations are
//! inside right now.
//!
//! ```text
//!  63      62 ........... 32  31 ........................ 0
//! [CLOSED][ epoch (31 bits) ][ in-flight count (32 bits)  ]
//! ```
//!
//! * [`Gate::enter`] adds one to the count unless `CLOSED` is set, in one
//!   compare-and-swap; the returned guard subtracts it again on drop.
//! * [`Gate::close`] sets `CLOSED` and advances the epoch, once; it returns
//!   whether this caller was the one that closed it.
//! * [`Gate::wait_idle`] returns once the count is zero.
//!
//! Every read-modify-write of the word is totally ordered (they all act on
//! one location), so an `enter` either comes before the `close` in that
//! order — and is counted, so `wait_idle` waits for it — or after it, and
//! sees `CLOSED`. That is the whole argument for "no call is accepted after
//! `disconnect()` returned": disconnect closes, then waits for idle.
//!
//! The count is bounded by the number of threads inside the gate at once;
//! [`Gate::enter`] refuses (as if closed) rather than overflow into the
//! epoch bits.

use crate::sync::{AtomicU64, Condvar, Mutex, Ordering};
use std::time::Instant;

/// Set once the gate is closed; never cleared. Only [`Gate::close`] sets
/// it; while it is set nobody may increment the count.
pub const CLOSED: u64 = 1 << 63;
/// The epoch field: advanced by the closing `close`.
pub const EPOCH_MASK: u64 = ((1 << 31) - 1) << EPOCH_SHIFT;
const EPOCH_SHIFT: u32 = 32;
/// The in-flight count field: operations between `enter` and guard drop.
pub const COUNT_MASK: u64 = u32::MAX as u64;

/// The gate. See the [module docs](self).
#[derive(Debug)]
pub struct Gate {
    /// `CLOSED | epoch | count`; count is in range `0..=u32::MAX`.
    word: AtomicU64,
    /// Parks [`Gate::wait_idle`] callers; the last guard out after close
    /// notifies under this lock so the wake-up cannot be missed.
    idle_lock: Mutex<()>,
    idle_cv: Condvar,
}

/// The gate was closed: no new operation may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the connection is closed to new calls (disconnect has started)")]
pub struct GateClosed;

/// Proof of being inside the gate; leaving happens on drop.
#[must_use = "dropping the guard leaves the gate at once"]
#[derive(Debug)]
pub struct GateGuard<'a> {
    gate: &'a Gate,
}

impl Gate {
    /// An open gate at epoch 0 with nobody inside.
    pub fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
            idle_lock: Mutex::new(()),
            idle_cv: Condvar::new(),
        }
    }

    /// Enters the gate.
    ///
    /// # Errors
    /// [`GateClosed`] once [`close`](Self::close) has run (or, absurdly,
    /// when 2^32 - 1 operations are already inside).
    #[inline]
    pub fn enter(&self) -> Result<GateGuard<'_>, GateClosed> {
        if crate::sync::is_broken("gate") {
            // Loom must-fail variant: check, then add in a second step, so
            // a `close` and a whole `wait_idle` can run in between.
            if self.word.load(Ordering::Acquire) & CLOSED != 0 {
                return Err(GateClosed);
            }
            self.word.fetch_add(1, Ordering::Acquire);
            return Ok(GateGuard { gate: self });
        }
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            if cur & CLOSED != 0 || cur & COUNT_MASK == COUNT_MASK {
                return Err(GateClosed);
            }
            // SYNC POINT: gate entry. Acquire pairs with the Release half
            // of `close`, so an operation that enters sees everything the
            // connection set up before it was (later) closed; the RMW total
            // order is what keeps entries after close out.
            match self.word.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(GateGuard { gate: self }),
                Err(actual) => cur = actual,
            }
        }
    }

    #[inline]
    fn leave(&self) {
        // SYNC POINT: in-flight work done. Release pairs with the Acquire
        // load in `wait_idle`: whatever the operation did inside the gate
        // (inserting a pending call, sending a message) happens-before the
        // disconnecter's next step after it saw the count reach zero.
        let prev = self.word.fetch_sub(1, Ordering::Release);
        debug_assert!(prev & COUNT_MASK > 0, "gate count underflow");
        if prev & CLOSED != 0 && prev & COUNT_MASK == 1 {
            self.wake_idle_waiters();
        }
    }

    /// Last one out after close: wakes the waiters. Taking the lock orders
    /// this notify after any waiter's check-then-wait.
    #[cold]
    fn wake_idle_waiters(&self) {
        let _g = self.idle_lock.lock();
        self.idle_cv.notify_all();
    }

    /// Closes the gate and advances the epoch. Returns `true` for the one
    /// caller that closed it, `false` if it was already closed.
    pub fn close(&self) -> bool {
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            if cur & CLOSED != 0 {
                return false;
            }
            let epoch = (cur & EPOCH_MASK).wrapping_add(1 << EPOCH_SHIFT) & EPOCH_MASK;
            let next = CLOSED | epoch | (cur & COUNT_MASK);
            // SYNC POINT: gate entry (Release half, see `enter`); AcqRel so
            // the closer also sees what earlier entrants published.
            match self
                .word
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Whether the gate is closed.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.word.load(Ordering::Acquire) & CLOSED != 0
    }

    /// (For the tests and the loom models.)
    #[cfg(any(test, orcwire_loom))]
    /// The connection epoch: 0 while the first connection is open, advanced
    /// by each close.
    pub fn epoch(&self) -> u32 {
        ((self.word.load(Ordering::Acquire) & EPOCH_MASK) >> EPOCH_SHIFT) as u32
    }

    /// (For the tests and the loom models.)
    #[cfg(any(test, orcwire_loom))]
    /// Operations inside the gate right now.
    pub fn in_flight(&self) -> u32 {
        (self.word.load(Ordering::Acquire) & COUNT_MASK) as u32
    }

    fn idle(&self) -> bool {
        // SYNC POINT: in-flight work done (Acquire half, see `leave`).
        self.word.load(Ordering::Acquire) & COUNT_MASK == 0
    }

    /// (For the tests and the loom models.)
    #[cfg(any(test, orcwire_loom))]
    /// Blocks until nobody is inside. Meant to be called after
    /// [`close`](Self::close); on an open gate it may wait forever.
    pub fn wait_idle(&self) {
        let mut g = self.idle_lock.lock();
        while !self.idle() {
            g = self.idle_cv.wait(g);
        }
    }

    /// Like [`wait_idle`](Self::wait_idle) but gives up at `deadline`;
    /// returns whether the gate is idle.
    #[cfg(not(orcwire_loom))]
    pub fn wait_idle_until(&self, deadline: Instant) -> bool {
        let mut g = self.idle_lock.lock();
        loop {
            if self.idle() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self.idle_cv.wait_timeout(g, deadline - now).0;
        }
    }

    /// Under loom time does not pass: a bounded wait is a full wait.
    #[cfg(orcwire_loom)]
    pub fn wait_idle_until(&self, _deadline: Instant) -> bool {
        self.wait_idle();
        true
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for GateGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.gate.leave();
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;
    use crate::sync::{thread, Arc};
    use std::time::Duration;

    #[test]
    fn enter_close_and_epoch() {
        let g = Gate::new();
        assert_eq!(g.epoch(), 0);
        {
            let _a = g.enter().unwrap();
            let _b = g.enter().unwrap();
            assert_eq!(g.in_flight(), 2);
        }
        assert_eq!(g.in_flight(), 0);
        assert!(g.close());
        assert!(!g.close());
        assert!(g.is_closed());
        assert_eq!(g.epoch(), 1);
        assert_eq!(g.enter().unwrap_err(), GateClosed);
        g.wait_idle();
    }

    #[test]
    fn wait_idle_waits_for_guards() {
        let g = Arc::new(Gate::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let g2 = Arc::clone(&g);
        let t = thread::spawn(move || {
            let guard = g2.enter().unwrap();
            tx.send(()).unwrap();
            thread::sleep(Duration::from_millis(50));
            drop(guard);
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(g.close());
        let start = Instant::now();
        assert!(g.wait_idle_until(Instant::now() + Duration::from_secs(5)));
        assert!(start.elapsed() >= Duration::from_millis(20));
        t.join().unwrap();
    }

    #[test]
    fn bounded_wait_gives_up() {
        let g = Gate::new();
        let _inside = g.enter().unwrap();
        g.close();
        assert!(!g.wait_idle_until(Instant::now() + Duration::from_millis(10)));
    }
}
