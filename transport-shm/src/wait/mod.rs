//! Waiting for the peer: spin for a budget, then sleep on a futex word in
//! the segment.
//!
//! Each side has one futex word
//! ([`SideBlock::futex`](crate::layout::SideBlock::futex)) that it sleeps
//! on, and a set of [`waiting`](crate::layout::waiting) bits announcing
//! *why* it sleeps (its consumer waits for data, its producer for space).
//! The protocol, in the spirit of folly's `EventCount` and Shadow's
//! `vasi-sync`:
//!
//! ```text
//! waiter                                   notifier (after publishing)
//! 1. waiting |= bit                         a. publish (Release store of an index)
//! 2. fence(SeqCst)          -- Dekker --    b. fence(SeqCst)
//! 3. v = futex.load(Acquire)                c. if waiting & bit:
//! 4. re-check the condition                       futex += 1 (Release)
//! 5. FUTEX_WAIT(futex, v)                          FUTEX_WAKE(all)
//! ```
//!
//! No lost wake-up: the two `SeqCst` fences are totally ordered. If the
//! waiter's fence comes first, the notifier's load (c) sees the announced
//! bit, bumps the word and wakes: either the waiter is already queued in
//! the kernel and is woken, or its `FUTEX_WAIT` finds the word changed from
//! `v` and returns at once. If the notifier's fence comes first, the
//! waiter's re-check (4) sees what the notifier published (a) and does not
//! sleep. If (3) reads a bumped value, that bump was a `Release` made after
//! (a), so (4) sees the publication too.
//!
//! So the word changes on every publish a sleeper could miss (those that
//! see its announcement), not on every publish: a publish that happens
//! before the announcement is caught by the re-check instead, and the fast
//! path of a busy connection costs one fence and one relaxed load, no
//! read-modify-write on a shared line.
//!
//! Local events (interrupt, close, peer death) use [`WakeWord::wake_all`]:
//! set a flag, then bump and wake unconditionally.
//!
//! No sleep lasts longer than 100 ms (`wake_word::MAX_SLEEP`), deadline or
//! not: the words above live in memory the peer can write, and a peer that
//! scribbles over our announcement (or our futex word while we sleep)
//! makes its own notifications skip us. Without the cap a wait with no
//! deadline would then sleep for ever and never look at the state word
//! that says the segment is broken; with it, it looks again within 100 ms
//! (re-announcing itself, which also repairs the announcement).
//!
//! # Spinning
//! A timed spin reads no clock for its first polls (a round trip ends
//! there), then checks the clock every 16 polls. Past 20 µs it also yields
//! the CPU at each check: on a CPU shared with another thread of the same
//! process (the one copying the data this thread waits for, say), a spin
//! that never yields holds the CPU for a whole time slice, milliseconds.
//! The transport stretches the budget after a large transfer to about the
//! time the peer needs to copy it (`ShmTransport`'s `strategy`), so that
//! large calls cross without a sleep and a wake-up on each side; measured
//! in `docs/BENCHMARKS.md` ("2026-11-30, large messages").
//!
//! The futex is shared (no `FUTEX_PRIVATE_FLAG`): the word lives in memory
//! mapped by two processes. Under `--cfg orcwire_loom` `FUTEX_WAIT` and
//! `FUTEX_WAKE` are modelled by a loom `Mutex` and one `Condvar` per word
//! address (as `vasi-sync` does); the protocol code above them is the same.
//! Loom does not model time: a timed wait there waits like an untimed one,
//! and spin budgets should be given in iterations.
//!
//! What the loom model (`loom-tests/tests/futex.rs`) cannot check: the
//! real syscall (its contract is futex(2): the value check and the enqueue
//! are atomic under the bucket lock, which the mock copies), and `SeqCst`
//! *accesses* (loom treats them as `AcqRel`; this protocol uses `SeqCst`
//! fences only, which loom models). The real futex runs in the
//! cross-process tests and the `--wait block` demo test, where a lost
//! wake-up would be a hang caught by their timeouts.
//!
//! # Files
//! * `strategy.rs`: [`WaitStrategy`], the spin budget before sleeping.
//! * `wake_word.rs`: [`WakeWord`], the protocol above: announce, re-check,
//!   sleep; notify.
//! * The futex itself, chosen here and nowhere else: `futex.rs` (the
//!   system calls, Linux only) or, under `--cfg orcwire_loom`,
//!   `loom_futex.rs` (the mock). Both are reached as `wait::futex`.
//!
//! Relies on: the `sync` shim, `layout::SharedRef` for the words, `libc`
//! for the futex system call.

mod strategy;
mod wake_word;

// The futex: chosen here, once.
#[cfg(not(orcwire_loom))]
pub(crate) mod futex;
#[cfg(orcwire_loom)]
pub(crate) mod loom_futex;
#[cfg(orcwire_loom)]
pub(crate) use loom_futex as futex;

pub use strategy::WaitStrategy;
pub use wake_word::{WaitOutcome, WakeWord};
