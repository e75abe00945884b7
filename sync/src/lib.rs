//! `orcwire-sync`: the one place that names the standard library's (or
//! loom's) atomics, locks, cells and threads for the orcwire crates.
//!
//! Every concurrent primitive in `orcwire` and `orcwire-shm` comes through
//! here so that the `loom-tests` crate can model-check the *same* code that
//! ships: building with `RUSTFLAGS="--cfg orcwire_loom"` swaps every type
//! below for loom's instrumented twin. Nothing else in those crates may
//! name `std::sync::atomic`, `std::sync::Mutex`, `std::thread` or
//! `std::cell::UnsafeCell` directly. It is a crate of its own (not a
//! module of `orcwire`) so that it is not part of orcwire's public API;
//! it is an implementation detail of the workspace.
//!
//! [`Mutex`] and [`Condvar`] are poison-free wrappers (as tokio's
//! `loom/std` does): every lock in orcwire guards state whose updates are
//! single assignments or collection operations, so a lock a panicking
//! thread held still holds consistent data, and refusing it would turn one
//! panic into a cascade.
//!
//! The cfg is a project cfg rather than a cargo feature so that turning it
//! on never switches a dependency's code (cargo unifies features across the
//! graph; a `--cfg` applies only where this crate reads it).

#[cfg(not(orcwire_loom))]
mod imp {
    pub use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use std::sync::{Condvar as RawCondvar, Mutex as RawMutex};
    pub use std::sync::{MutexGuard, WaitTimeoutResult};
    pub use std::thread;
    pub use std::thread_local;

    /// An `UnsafeCell` with loom's closure-based access API, so code reads
    /// the same under both backings.
    #[derive(Debug, Default)]
    pub struct UnsafeCell<T: ?Sized>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        /// Wraps `value`.
        pub const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        /// Consumes the cell and returns the value.
        pub fn into_inner(self) -> T {
            self.0.into_inner()
        }
    }

    impl<T: ?Sized> UnsafeCell<T> {
        /// Runs `f` with a shared raw pointer to the contents.
        #[inline(always)]
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Runs `f` with an exclusive raw pointer to the contents.
        #[inline(always)]
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// Spin-loop hint; under loom a yield so the model can make progress.
    #[inline(always)]
    pub fn spin_loop() {
        std::hint::spin_loop();
    }
}

#[cfg(orcwire_loom)]
mod imp {
    pub use loom::cell::UnsafeCell;
    pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use loom::sync::{Condvar as RawCondvar, Mutex as RawMutex};
    pub use loom::sync::{MutexGuard, WaitTimeoutResult};
    pub use loom::thread;
    pub use loom::thread_local;

    /// Under loom a spin is a yield, or the model would never terminate.
    #[inline(always)]
    pub fn spin_loop() {
        loom::thread::yield_now();
    }
}

pub use imp::*;

mod end_lock;
pub use end_lock::{EndGuard, EndLock};

/// Deliberate bugs for the loom models' must-fail tests.
///
/// Only built with `--cfg orcwire_loom_broken` (which `.ci/loom` turns on
/// in a separate build, next to `--cfg orcwire_loom`). Elsewhere
/// [`is_broken`] is a constant `false`, so production code and the passing
/// models compile the branches away. A `#[should_panic]`
/// model [`select`]s one bug by name for its own thread, and the code
/// under test asks [`is_broken`] at the place where the bug goes: a `Relaxed`
/// where a `Release` is needed, a missing re-check, a queue drained in the
/// wrong critical section. Loom runs every modelled thread on the thread
/// that called `loom::model`, so a thread-local selection reaches them
/// all and never leaks into a model running in parallel.
///
/// The names: `gate`, `ring`, `futex`, `pending`, `session`, `handshake`,
/// `engine`, `handles`, `waker`, `outbox`.
#[cfg(orcwire_loom_broken)]
pub mod broken {
    use std::cell::Cell;

    std::thread_local! {
        static SELECTED: Cell<Option<&'static str>> = const { Cell::new(None) };
    }

    /// Selects the bug called `name` on this thread until the returned
    /// guard drops.
    pub fn select(name: &'static str) -> Selected {
        SELECTED.with(|s| s.set(Some(name)));
        Selected(())
    }

    /// Whether the bug called `name` is selected on this thread.
    #[inline]
    pub fn is(name: &str) -> bool {
        SELECTED.with(|s| s.get() == Some(name))
    }

    /// Deselects the bug on drop.
    #[derive(Debug)]
    pub struct Selected(());

    impl Drop for Selected {
        fn drop(&mut self) {
            SELECTED.with(|s| s.set(None));
        }
    }
}

/// Whether the deliberate bug `name` is selected (always `false` unless
/// built with `--cfg orcwire_loom_broken`: the loom models' must-fail
/// variants).
#[inline(always)]
pub fn is_broken(name: &str) -> bool {
    #[cfg(orcwire_loom_broken)]
    {
        broken::is(name)
    }
    #[cfg(not(orcwire_loom_broken))]
    {
        let _ = name;
        false
    }
}

/// Reference counting is std's under both backings: loom's `Arc` cannot
/// hold unsized values (`Arc<dyn Transport>`), and a reference count is not
/// one of the protocols this crate asks loom to check.
pub use std::sync::Arc;

/// Locks `m` like [`Mutex::lock`], but gives up at `deadline` (`None`: waits as
/// long as it takes), and calls `on_wait` once if the lock is held when it
/// arrives. For a sender that must not wait behind another one blocked on
/// a full transport past its own deadline; the transport's `on_wait`
/// decides whether that is a wait on the peer.
pub fn lock_until<'a, T: ?Sized>(
    m: &'a Mutex<T>,
    deadline: Option<std::time::Instant>,
    on_wait: &dyn Fn(),
) -> Option<MutexGuard<'a, T>> {
    match m.try_lock() {
        Some(g) => return Some(g),
        None => on_wait(),
    }
    let Some(deadline) = deadline else {
        return Some(m.lock());
    };
    let mut spins = 0u32;
    loop {
        if let Some(g) = m.try_lock() {
            return Some(g);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        // The holder is usually between two frames: yield a few times,
        // then back off (it may be waiting for the peer to make room).
        spins += 1;
        if spins < 16 {
            thread::yield_now();
        } else {
            nap();
        }
    }
}

/// A short sleep; under loom, where time does not pass, a yield.
fn nap() {
    #[cfg(not(orcwire_loom))]
    std::thread::sleep(std::time::Duration::from_micros(50));
    #[cfg(orcwire_loom)]
    thread::yield_now();
}

/// A mutual-exclusion lock that ignores poisoning (see the crate docs).
#[derive(Debug, Default)]
pub struct Mutex<T: ?Sized>(RawMutex<T>);

impl<T> Mutex<T> {
    /// A new unlocked mutex holding `value`.
    #[cfg(not(orcwire_loom))]
    pub const fn new(value: T) -> Self {
        Self(RawMutex::new(value))
    }

    /// A new unlocked mutex holding `value`.
    #[cfg(orcwire_loom)]
    pub fn new(value: T) -> Self {
        Self(RawMutex::new(value))
    }

    /// Consumes the mutex and returns its value.
    pub fn into_inner(self) -> T {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Blocks until the lock is ours, whether or not a previous holder
    /// panicked.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock if it is free now, else `None`.
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        match self.0.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// A condition variable over [`Mutex`] that ignores poisoning.
#[derive(Debug, Default)]
pub struct Condvar(RawCondvar);

impl Condvar {
    /// A new condition variable.
    #[cfg(not(orcwire_loom))]
    pub const fn new() -> Self {
        Self(RawCondvar::new())
    }

    /// A new condition variable.
    #[cfg(orcwire_loom)]
    pub fn new() -> Self {
        Self(RawCondvar::new())
    }

    /// Releases `guard`, waits for a notification (or a spurious wake-up),
    /// and locks again.
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    /// Like [`wait`](Self::wait), but for at most `timeout`.
    pub fn wait_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: std::time::Duration,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
        self.0
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes one waiter.
    pub fn notify_one(&self) {
        self.0.notify_one();
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}
