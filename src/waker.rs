//! [`AtomicWaker`]: one waker cell that a single owner registers into and
//! any thread wakes, without a lock.
//!
//! The protocol is the classic one (futures' and tokio's `AtomicWaker`),
//! written out here over the [`sync`](crate::sync) shim so loom checks it
//! together with the pending-call slots that embed it:
//!
//! * `WAITING` (0): nobody touches the cell; a waker may be stored in it.
//! * `REGISTERING`: the owner is replacing the stored waker; only it may
//!   touch the cell.
//! * `WAKING`: a waker is taking the stored waker out; only it may touch
//!   the cell.
//!
//! A wake that arrives while the owner registers sets `WAKING` too; the
//! owner sees it when it tries to finish and wakes the new waker itself.
//! So a wake is never lost, and at worst a task is woken once more than
//! needed (a *spurious* wake). Everything that uses this re-checks its
//! condition after registering and after waking up, so spurious wakes are
//! harmless; the pending-call slots rely on that when a slot is reused
//! while a late wake for its previous call is still running.

use std::task::Waker;

use crate::sync::{AtomicUsize, Ordering, UnsafeCell};

const WAITING: usize = 0;
const REGISTERING: usize = 1;
const WAKING: usize = 2;

/// See the [module docs](self).
pub(crate) struct AtomicWaker {
    state: AtomicUsize,
    /// Touched only by whoever moved `state` out of `WAITING`.
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the cell is only accessed by the one thread that won the state
// transition out of `WAITING` (see the module docs); `Waker` is Send+Sync.
unsafe impl Send for AtomicWaker {}
// SAFETY: as above.
unsafe impl Sync for AtomicWaker {}

impl AtomicWaker {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicUsize::new(WAITING),
            waker: UnsafeCell::new(None),
        }
    }

    /// Stores `waker` to be woken by the next [`wake`](Self::wake). One
    /// registering thread at a time (the owner of whatever embeds this).
    pub(crate) fn register(&self, waker: &Waker) {
        // SYNC POINT: waker cell. Acquire pairs with the Release that
        // returned the state to WAITING (ours or a waker's), so the cell's
        // last writer happened before we touch it.
        match self.state.compare_exchange(
            WAITING,
            REGISTERING,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.waker.with_mut(|cell| {
                    // SAFETY: REGISTERING gives us the cell exclusively.
                    let cell = unsafe { &mut *cell };
                    match cell {
                        Some(old) if old.will_wake(waker) => {}
                        _ => *cell = Some(waker.clone()),
                    }
                });
                // SYNC POINT: waker cell. Release publishes the waker to
                // the next `wake`'s Acquire.
                match self.state.compare_exchange(
                    REGISTERING,
                    WAITING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {}
                    Err(_) => {
                        // A wake came in while we registered (state is
                        // REGISTERING | WAKING): it left the cell to us, so
                        // take the waker and wake it ourselves.
                        // SAFETY: still exclusively ours until the swap.
                        let w = self.waker.with_mut(|cell| unsafe { (*cell).take() });
                        self.state.swap(WAITING, Ordering::AcqRel);
                        if let Some(w) = w {
                            w.wake();
                        }
                    }
                }
            }
            // A wake is taking the old waker out right now: it will not see
            // ours, so wake ourselves (the caller re-checks and re-polls).
            Err(_) => waker.wake_by_ref(),
        }
    }

    /// Takes the stored waker out and wakes it, if there is one.
    pub(crate) fn wake(&self) {
        if let Some(w) = self.take() {
            w.wake();
        }
    }

    /// Takes the stored waker out without waking it.
    pub(crate) fn take(&self) -> Option<Waker> {
        // SYNC POINT: waker cell. AcqRel: Acquire pairs with `register`'s
        // Release, so the waker it stored is visible to us.
        match self.state.fetch_or(WAKING, Ordering::AcqRel) {
            WAITING => {
                // SAFETY: WAKING set from WAITING gives us the cell.
                let w = self.waker.with_mut(|cell| unsafe { (*cell).take() });
                // SYNC POINT: waker cell (Release half, see `register`).
                self.state.fetch_and(!WAKING, Ordering::Release);
                w
            }
            // Registering (the registrar sees WAKING and wakes its own
            // waker) or another wake is under way: nothing for us to do.
            _ => None,
        }
    }
}

impl std::fmt::Debug for AtomicWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicWaker")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_registered_waker_is_woken_once_and_replaced_ones_not() {
        let a = std::sync::Arc::new(Count(AtomicUsize::new(0)));
        let b = std::sync::Arc::new(Count(AtomicUsize::new(0)));
        let cell = AtomicWaker::new();
        cell.register(&Waker::from(std::sync::Arc::clone(&a)));
        cell.register(&Waker::from(std::sync::Arc::clone(&b)));
        cell.wake();
        cell.wake();
        assert_eq!(a.0.load(Ordering::Relaxed), 0);
        assert_eq!(b.0.load(Ordering::Relaxed), 1);
        assert!(cell.take().is_none());
    }
}
