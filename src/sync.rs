//! The one place that names the standard library's (or loom's) atomics,
//! locks, cells and threads.
//!
//! Every concurrent primitive in this crate comes through here so that the
//! `loom-tests` crate can model-check the *same* code that ships: building
//! with `RUSTFLAGS="--cfg orcwire_loom"` swaps every type below for loom's
//! instrumented twin. Nothing else in the crate may name
//! `std::sync::atomic`, `std::sync::Mutex`, `std::thread` or
//! `std::cell::UnsafeCell` directly.
//!
//! The cfg is a project cfg rather than a cargo feature so that turning it
//! on never switches a dependency's code (cargo unifies features across the
//! graph; a `--cfg` applies only where this crate reads it).

#[cfg(not(orcwire_loom))]
mod imp {
    pub use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    pub use std::sync::{Condvar, Mutex, MutexGuard, RwLock};
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
    pub use loom::sync::{Condvar, Mutex, MutexGuard, RwLock};
    pub use loom::thread;
    pub use loom::thread_local;

    /// Under loom a spin is a yield, or the model would never terminate.
    #[inline(always)]
    pub fn spin_loop() {
        loom::thread::yield_now();
    }
}

pub use imp::*;

/// Deliberate bugs for the loom models' must-fail tests.
///
/// Only built with `--cfg orcwire_loom_broken` (which `.ci/loom` turns on
/// in a separate build, next to `--cfg orcwire_loom`). Elsewhere
/// [`is_broken`](crate::sync::is_broken) is a constant `false`, so production code and the passing
/// models compile the branches away. A `#[should_panic]`
/// model [`select`]s one bug by name for its own thread, and the code
/// under test asks [`is_broken`](crate::sync::is_broken) at the place where the bug goes: a `Relaxed`
/// where a `Release` is needed, a missing re-check, a queue drained in the
/// wrong critical section. Loom runs every modelled thread on the thread
/// that called `loom::model`, so a thread-local selection reaches them
/// all and never leaks into a model running in parallel.
///
/// The names: `gate`, `ring`, `futex`, `pending`, `session`, `handshake`,
/// `engine`.
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

/// Locks `m` like [`lock`], but gives up at `deadline` (`None`: waits as
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
        Ok(g) => return Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => on_wait(),
    }
    let Some(deadline) = deadline else {
        return Some(lock(m));
    };
    let mut spins = 0u32;
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {}
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

/// Locks `m`, recovering the data if a previous holder panicked.
///
/// Poisoning protects invariants that a panic broke half-way; every lock in
/// this crate guards state whose every update is a single assignment or
/// collection operation, so a poisoned lock still holds consistent data and
/// refusing it would turn one panic into a cascade.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
