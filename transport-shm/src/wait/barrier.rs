//! Asymmetric barriers: the sleeper pays for the Dekker handshake, the
//! notifier does not.
//!
//! The handshake in the [module docs](super) needs a full fence on both
//! sides: the sleeper's between its announcement and its re-check, the
//! notifier's between its publication and its look at the announcement.
//! The notifier's fence runs on every message sent and every message
//! received (space freed), and on x86 it waits for every store before it
//! to reach the cache: the frame just written, whose lines the peer's core
//! holds. The sleeper's runs only when a wait is about to sleep in the
//! kernel, which costs microseconds anyway.
//!
//! `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` moves the notifier's
//! fence to the sleeper: when it returns, every thread of every process
//! registered for it (`MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED`) that was
//! running has executed a full memory barrier (an interrupt on its CPU),
//! and one that was not running passed through the scheduler's barrier.
//! So for a notifier in a registered process, with the sleeper calling
//! `membarrier` where it had its fence: either the barrier struck the
//! notifier after its publication (the sleeper's re-check sees it), or
//! before it, and then after the sleeper's announcement, which the
//! notifier's later look sees. This is the asymmetric fence of
//! userspace RCU and folly's `asymmetricHeavyBarrier`, across processes.
//!
//! Who may skip: a notifier skips its fence only if its own process is
//! registered (the sleeper's barrier reaches it) *and* the sleeping side
//! announced, with the [`waiting::ASYMMETRIC`](crate::layout::waiting)
//! bit of its side block, that it sleeps with `membarrier`. A side sets
//! that bit when it joins, if its process registered. A peer that lies
//! about the bit only loses its own wake-ups; an older peer never sets it
//! and gets fences as before. If this process cannot register (an old
//! kernel, a seccomp filter), both ends fall back to fences.
//!
//! A `fork` without `exec` gives the child a fresh memory map, which the
//! kernel does not register: a handler installed with `pthread_atfork`
//! registers the child again (and marks it unregistered if that fails).
//!
//! Under loom, no process registers: every notifier fences, and the models
//! check the symmetric handshake, of which this is a substitution.

#[cfg(not(orcwire_loom))]
mod imp {
    use crate::sync::{AtomicU32, Ordering};

    /// `MEMBARRIER_CMD_GLOBAL_EXPEDITED` (linux/membarrier.h).
    const CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
    /// `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED` (linux/membarrier.h).
    const CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

    /// Not tried yet.
    const UNKNOWN: u32 = 0;
    const REGISTERED: u32 = 1;
    const UNAVAILABLE: u32 = 2;

    // A per-process fact, never modelled (under loom this module is not
    // built, so the shim's atomic is `std`'s here). Relaxed everywhere: it only
    // moves from `UNKNOWN` to a final value (bar a forked child's reset),
    // and every thread that reads `REGISTERED` may rely on the syscall
    // having returned, which happened before the store in this process.
    static STATE: AtomicU32 = AtomicU32::new(UNKNOWN);

    fn membarrier(cmd: libc::c_int) -> bool {
        // SAFETY: membarrier(2) takes a command and two integer flags; no
        // memory is passed.
        unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) == 0 }
    }

    extern "C" fn register_child() {
        // Runs in the child of a `fork`, single-threaded: the kernel gave
        // it a fresh, unregistered memory map.
        let now = if membarrier(CMD_REGISTER_GLOBAL_EXPEDITED) {
            REGISTERED
        } else {
            UNAVAILABLE
        };
        STATE.store(now, Ordering::Relaxed);
    }

    /// Whether this process takes part in asymmetric barriers; registers
    /// it on the first call.
    pub(crate) fn enabled() -> bool {
        match STATE.load(Ordering::Relaxed) {
            REGISTERED => true,
            UNAVAILABLE => false,
            _ => register(),
        }
    }

    #[cold]
    fn register() -> bool {
        // Racing first callers may both register: the command is
        // idempotent, and both store the same answer.
        let ok = membarrier(CMD_REGISTER_GLOBAL_EXPEDITED);
        if ok {
            // SAFETY: `register_child` is an `extern "C" fn()` that lives
            // as long as the program; the other two handlers are absent.
            // Installed by every racing first caller at worst, which only
            // registers a child twice.
            unsafe { libc::pthread_atfork(None, None, Some(register_child)) };
        }
        STATE.store(if ok { REGISTERED } else { UNAVAILABLE }, Ordering::Relaxed);
        ok
    }

    /// The sleeper's barrier: a full barrier on every running thread of
    /// every registered process, this one included. `false` if the call
    /// failed (it does not once registered; then fence and sleep briefly).
    pub(crate) fn heavy() -> bool {
        membarrier(CMD_GLOBAL_EXPEDITED)
    }
}

#[cfg(orcwire_loom)]
mod imp {
    /// Never under loom: the models check the symmetric handshake.
    pub(crate) fn enabled() -> bool {
        false
    }

    /// Not reached under loom (`enabled` is `false`).
    pub(crate) fn heavy() -> bool {
        false
    }
}

pub(crate) use imp::{enabled, heavy};
