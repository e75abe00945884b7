//! [`EndLock`]: the lock around one end of a ring, whose uncontended
//! release is a plain store.
//!
//! A transport takes the lock of its producer end for every message it
//! sends and the lock of its consumer end for every message it receives.
//! `std`'s mutex releases with an atomic exchange (it must learn whether
//! someone sleeps), and on x86 every locked instruction waits until the
//! stores before it have reached the cache. A sender's stores are the
//! frame it just wrote, into lines the peer's core read last: each release
//! then waits for those lines to cross over, once per message, where
//! nothing needs to wait (measured: `docs/BENCHMARKS.md`, "2026-11-30
//! (4)"). This lock's release is a `Release` store when nobody has said
//! they sleep, which on x86 is a plain `mov`.
//!
//! The price is on the contended side. A waiter spins a little, then
//! announces itself (the state goes to [`PARKED`]) and sleeps on a
//! condition variable; a release that sees the announcement wakes it. A
//! release that read the state just before a waiter announced itself
//! stores [`FREE`] over the announcement and wakes nobody: that waiter
//! then sleeps out its timeout ([`PARK_FIRST`], doubling to
//! [`PARK_LONGEST`]) and looks again. That window is the few
//! instructions between the release's load and its store, so the
//! lost wake-up is rare, and it costs a delay, never a hang.
//!
//! Under loom the lock is a [`Mutex`](crate::Mutex) (loom checks the
//! protocols built on it, not this lock, whose timed waits loom cannot
//! model: time does not pass there).

#[cfg(not(orcwire_loom))]
pub use imp::{EndGuard, EndLock};

#[cfg(orcwire_loom)]
pub use model::{EndGuard, EndLock};

/// The lock is free.
#[cfg(not(orcwire_loom))]
const FREE: u32 = 0;
/// Held; nobody announced they sleep.
#[cfg(not(orcwire_loom))]
const LOCKED: u32 = 1;
/// Held, and a waiter may sleep: the release wakes the sleepers.
#[cfg(not(orcwire_loom))]
const PARKED: u32 = 2;

/// How many times a waiter looks at a held lock before it sleeps: a holder
/// that writes one frame lets go within a few hundred nanoseconds, and a
/// spin-loop hint costs about 140 cycles on this machine's CPUs, so this
/// is a few microseconds. (`bench --only shm-spin,shm-balanced,shm-block
/// --payloads none`, 4 threads × 64, two interleaved pairs: 50 looks did
/// as well as 200 or better, and spin less when the holder waits for the
/// peer.)
#[cfg(not(orcwire_loom))]
const SPINS: u32 = 64;

/// A waiter's first sleep, should no release wake it.
#[cfg(not(orcwire_loom))]
const PARK_FIRST: std::time::Duration = std::time::Duration::from_micros(100);

/// A waiter's longest sleep between two looks: what a lost wake-up costs
/// at most, and the rate (one look per this) at which a waiter behind a
/// holder that waits for the peer wakes up.
#[cfg(not(orcwire_loom))]
const PARK_LONGEST: std::time::Duration = std::time::Duration::from_millis(2);

#[cfg(not(orcwire_loom))]
mod imp {
    use std::cell::UnsafeCell;
    use std::ops::{Deref, DerefMut};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use super::{FREE, LOCKED, PARKED, PARK_FIRST, PARK_LONGEST, SPINS};

    /// A lock for one end of a ring (see the module docs): one locked
    /// instruction per uncontended lock and unlock, where `std`'s mutex
    /// takes two.
    pub struct EndLock<T: ?Sized> {
        /// [`FREE`], [`LOCKED`] or [`PARKED`].
        pub(super) state: AtomicU32,
        /// Where waiters sleep.
        park: std::sync::Mutex<()>,
        unpark: std::sync::Condvar,
        value: UnsafeCell<T>,
    }

    // SAFETY: the lock hands out `&mut T` to one thread at a time (the
    // state word's `Acquire`/`Release` pairs order the accesses), exactly
    // as `std::sync::Mutex` does, so the same bounds apply.
    unsafe impl<T: ?Sized + Send> Send for EndLock<T> {}
    // SAFETY: as above.
    unsafe impl<T: ?Sized + Send> Sync for EndLock<T> {}

    impl<T> EndLock<T> {
        /// A new unlocked lock holding `value`.
        pub const fn new(value: T) -> Self {
            Self {
                state: AtomicU32::new(FREE),
                park: std::sync::Mutex::new(()),
                unpark: std::sync::Condvar::new(),
                value: UnsafeCell::new(value),
            }
        }
    }

    impl<T: ?Sized> EndLock<T> {
        /// The lock if it is free now, else `None`.
        #[inline]
        pub fn try_lock(&self) -> Option<EndGuard<'_, T>> {
            self.acquire(LOCKED)
        }

        #[inline(always)]
        fn acquire(&self, held: u32) -> Option<EndGuard<'_, T>> {
            // SYNC POINT: end lock taken. The `Acquire` pairs with the
            // `Release` store or swap in `EndGuard::drop`.
            self.state
                .compare_exchange(FREE, held, Ordering::Acquire, Ordering::Relaxed)
                .ok()
                .map(|_| EndGuard { lock: self })
        }

        /// Blocks until the lock is ours.
        #[inline]
        pub fn lock(&self) -> EndGuard<'_, T> {
            match self.try_lock() {
                Some(g) => g,
                None => self.lock_slow(None).unwrap_or_else(|| {
                    unreachable!("a wait without a deadline only ends with the lock")
                }),
            }
        }

        /// Like [`lock`](Self::lock), but gives up at `deadline` (`None`:
        /// waits as long as it takes), and calls `on_wait` once if the lock
        /// is held when it arrives (for a sender that must not wait behind
        /// another one blocked on a full ring past its own deadline; the
        /// caller's `on_wait` decides whether that is a wait on the peer).
        #[inline]
        pub fn lock_until(
            &self,
            deadline: Option<Instant>,
            on_wait: &dyn Fn(),
        ) -> Option<EndGuard<'_, T>> {
            if let Some(g) = self.try_lock() {
                return Some(g);
            }
            on_wait();
            self.lock_slow(deadline)
        }

        #[cold]
        fn lock_slow(&self, deadline: Option<Instant>) -> Option<EndGuard<'_, T>> {
            // After a sleep, take the lock as `PARKED`: other waiters may
            // still sleep, and only a release that sees the word says so
            // wakes them.
            let mut held = LOCKED;
            let mut nap = PARK_FIRST;
            loop {
                for _ in 0..SPINS {
                    if self.state.load(Ordering::Relaxed) == FREE {
                        if let Some(g) = self.acquire(held) {
                            return Some(g);
                        }
                    }
                    std::hint::spin_loop();
                }
                let mut timeout = nap;
                if let Some(d) = deadline {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    timeout = timeout.min(left);
                }
                let sleep = self.park.lock().unwrap_or_else(|p| p.into_inner());
                // SYNC POINT: end lock taken (as above: a swap that finds
                // the lock free takes it).
                if self.state.swap(PARKED, Ordering::Acquire) == FREE {
                    return Some(EndGuard { lock: self });
                }
                // The release that sees `PARKED` notifies under `park`, so
                // it cannot slip between the swap and this wait.
                drop(self.unpark.wait_timeout(sleep, timeout));
                held = PARKED;
                nap = (nap * 2).min(PARK_LONGEST);
            }
        }
    }

    impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for EndLock<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("EndLock")
                .field("state", &self.state.load(Ordering::Relaxed))
                .finish_non_exhaustive()
        }
    }

    /// The lock, held; released on drop.
    pub struct EndGuard<'a, T: ?Sized> {
        lock: &'a EndLock<T>,
    }

    impl<T: ?Sized> Deref for EndGuard<'_, T> {
        type Target = T;
        #[inline(always)]
        fn deref(&self) -> &T {
            // SAFETY: the guard is the only holder of the lock.
            unsafe { &*self.lock.value.get() }
        }
    }

    impl<T: ?Sized> DerefMut for EndGuard<'_, T> {
        #[inline(always)]
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: the guard is the only holder of the lock.
            unsafe { &mut *self.lock.value.get() }
        }
    }

    impl<T: ?Sized> Drop for EndGuard<'_, T> {
        #[inline(always)]
        fn drop(&mut self) {
            let lock = self.lock;
            // Relaxed: only says which release to do; a waiter announcing
            // itself after this load is the lost wake-up the module docs
            // describe (it sleeps out its timeout).
            if lock.state.load(Ordering::Relaxed) == LOCKED {
                // SYNC POINT: end lock released. Pairs with the `Acquire`
                // CAS or swap of the next holder.
                lock.state.store(FREE, Ordering::Release);
            } else {
                // SYNC POINT: end lock released (as above).
                lock.state.swap(FREE, Ordering::Release);
                let _sleepers = lock.park.lock().unwrap_or_else(|p| p.into_inner());
                lock.unpark.notify_all();
            }
        }
    }
}

#[cfg(orcwire_loom)]
mod model {
    use crate::{Mutex, MutexGuard};

    /// Under loom: a [`Mutex`] with [`EndLock`]'s API.
    #[derive(Debug)]
    pub struct EndLock<T>(Mutex<T>);

    /// The lock, held.
    pub type EndGuard<'a, T> = MutexGuard<'a, T>;

    impl<T> EndLock<T> {
        /// A new unlocked lock holding `value`.
        pub fn new(value: T) -> Self {
            Self(Mutex::new(value))
        }

        /// The lock if it is free now, else `None`.
        pub fn try_lock(&self) -> Option<EndGuard<'_, T>> {
            self.0.try_lock()
        }

        /// Blocks until the lock is ours.
        pub fn lock(&self) -> EndGuard<'_, T> {
            self.0.lock()
        }

        /// [`crate::lock_until`] on the mutex.
        pub fn lock_until(
            &self,
            deadline: Option<std::time::Instant>,
            on_wait: &dyn Fn(),
        ) -> Option<EndGuard<'_, T>> {
            crate::lock_until(&self.0, deadline, on_wait)
        }
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn excludes_and_counts_every_increment() {
        let lock = Arc::new(EndLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        let mut g = lock.lock();
                        // Two steps, so a second holder would lose updates.
                        let v = *g;
                        std::hint::black_box(&mut *g);
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 200_000);
    }

    #[test]
    fn a_sleeping_waiter_is_woken_by_the_release() {
        let lock = Arc::new(EndLock::new(()));
        let held = lock.lock();
        let waiter = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                let _g = lock.lock();
                Instant::now()
            })
        };
        // Long enough for the waiter to spin, announce itself and sleep.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(lock.state.load(Ordering::Relaxed), PARKED);
        let released = Instant::now();
        drop(held);
        let got = waiter.join().unwrap();
        // Woken, not timed out: well under the longest nap past the
        // release (a timeout would land on a nap boundary, up to 2 ms).
        assert!(got >= released);
        assert!(got - released < PARK_LONGEST, "took {:?}", got - released);
        assert_eq!(lock.state.load(Ordering::Relaxed), FREE);
    }

    #[test]
    fn lock_until_gives_up_at_its_deadline_and_says_it_waits() {
        let lock = EndLock::new(());
        let _held = lock.lock();
        let waited = AtomicBool::new(false);
        let start = Instant::now();
        let got = lock.lock_until(Some(start + Duration::from_millis(20)), &|| {
            waited.store(true, Ordering::Relaxed)
        });
        assert!(got.is_none());
        assert!(waited.load(Ordering::Relaxed));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(20), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        // A free lock is taken without `on_wait`.
        drop(_held);
        let calls = AtomicU64::new(0);
        assert!(lock
            .lock_until(Some(Instant::now()), &|| {
                calls.fetch_add(1, Ordering::Relaxed);
            })
            .is_some());
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_holder_that_panics_releases_the_lock() {
        // No poisoning (as the shim's `Mutex`): the guard's drop runs as
        // the panic unwinds, and the next taker gets the value as it was.
        let lock = Arc::new(EndLock::new(5u32));
        let holder = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                let mut g = lock.lock();
                *g = 6;
                panic!("a handler bug");
            })
        };
        assert!(holder.join().is_err());
        let g = lock
            .lock_until(Some(Instant::now() + Duration::from_secs(5)), &|| {})
            .expect("the panicking holder left the lock held");
        assert_eq!(*g, 6);
    }

    #[test]
    fn many_waiters_all_get_through_a_held_lock() {
        // Waiters pile up asleep behind a long holder; each release must
        // get the next one in, woken or by its timeout, within bounds.
        let lock = Arc::new(EndLock::new(0u32));
        let held = lock.lock();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    let mut g = lock.lock();
                    *g += 1;
                    std::thread::sleep(Duration::from_millis(1));
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        drop(held);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 8);
        // 8 holders of 1 ms each, plus at most a lost wake-up apiece.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
}
