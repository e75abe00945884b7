//! Waiting for the peer: spin for a budget, then sleep on a futex word in
//! the segment.
//!
//! Each side has one futex word ([`SideBlock::futex`]) that it sleeps on,
//! and a set of [`waiting`] bits announcing *why* it sleeps (its consumer
//! waits for data, its producer for space). The protocol, in the spirit of
//! folly's `EventCount` and Shadow's `vasi-sync`:
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
//! Relies on: the `sync` shim, `layout::SharedRef` for the words, `libc` for the
//! futex system call (Linux only).

use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::layout::{waiting, SharedRef, SideBlock};
use crate::sync::{fence, spin_loop, Ordering};

/// Polls a timed spin makes before it first reads the clock: a clock read
/// costs more than a poll, and a wait that ends this early (a whole round
/// trip on an idle core) should pay for none.
const UNTIMED_POLLS: u32 = 64;

/// How long a blocked call spins before it sleeps in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpinBudget {
    /// Sleep at once.
    None,
    /// Poll this many times first.
    Iterations(u32),
    /// Poll for this long first (wall clock).
    Time(Duration),
}

/// How a blocked send or receive waits: a spin budget, then `FUTEX_WAIT`.
///
/// An idle endpoint always ends up asleep in the kernel and uses no CPU;
/// the budget only trades CPU for latency while traffic flows.
///
/// ```
/// use orcwire_shm::wait::{SpinBudget, WaitStrategy};
/// use std::time::Duration;
///
/// assert_eq!(WaitStrategy::low_cpu().budget(), SpinBudget::None);
/// let custom = WaitStrategy::spin_for(Duration::from_micros(20));
/// assert_eq!(custom.budget(), SpinBudget::Time(Duration::from_micros(20)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitStrategy {
    budget: SpinBudget,
}

impl WaitStrategy {
    /// Spins for 50 µs before sleeping: the peer's reply usually arrives
    /// while this side still spins, so a round trip never enters the
    /// kernel. Costs a core while traffic flows.
    pub const fn lowest_latency() -> Self {
        Self::spin_for(Duration::from_micros(50))
    }

    /// Spins for 5 µs, then sleeps: catches back-to-back messages without
    /// burning a core between bursts. The default.
    pub const fn balanced() -> Self {
        Self::spin_for(Duration::from_micros(5))
    }

    /// Sleeps at once: least CPU, a futex wake per message when idle.
    pub const fn low_cpu() -> Self {
        Self {
            budget: SpinBudget::None,
        }
    }

    /// Spins for `time`, then sleeps.
    pub const fn spin_for(time: Duration) -> Self {
        Self {
            budget: SpinBudget::Time(time),
        }
    }

    /// Polls `n` times, then sleeps (deterministic: use this under loom).
    pub const fn spin_iterations(n: u32) -> Self {
        Self {
            budget: SpinBudget::Iterations(n),
        }
    }

    /// The spin budget.
    pub const fn budget(&self) -> SpinBudget {
        self.budget
    }
}

impl Default for WaitStrategy {
    fn default() -> Self {
        Self::balanced()
    }
}

/// What a wait ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitOutcome<T> {
    /// The poll function returned `Ready`.
    Ready(T),
    /// The deadline passed first.
    TimedOut,
}

/// One side's futex word and waiting announcements.
///
/// The side that owns it sleeps on it ([`wait_until`](Self::wait_until));
/// the peer calls [`notify`](Self::notify) after publishing.
pub struct WakeWord {
    block: SharedRef<CachePadded<SideBlock>>,
}

impl WakeWord {
    pub(crate) fn new(block: SharedRef<CachePadded<SideBlock>>) -> Self {
        Self { block }
    }

    /// A word of its own on the heap, for in-process tests and loom
    /// models of the protocol.
    pub fn standalone() -> Self {
        use std::sync::Arc;

        use crate::mapping::{HeapMapping, SharedMapping, MAPPING_ALIGN};

        let mapping: Arc<dyn SharedMapping> = match HeapMapping::new(MAPPING_ALIGN) {
            Ok(m) => Arc::new(m),
            Err(_) => unreachable!("one page is a valid layout"),
        };
        // SAFETY: offset 0 of a page-aligned page; a side block is atomics
        // only and smaller than a page.
        let block =
            unsafe { SharedRef::new(&mapping, 0, || CachePadded::new(SideBlock::default())) };
        Self::new(block)
    }

    /// Waits until `poll` returns `Ready` or `Err`, or `deadline` passes.
    ///
    /// `poll` is called first at once, then during the spin budget, then
    /// after every wake-up; it must check everything the caller waits for
    /// (ring progress and local flags such as close or interrupt), and it
    /// must observe what a notifier published (an `Acquire` load of the
    /// index the notifier stores). `reason` is the [`waiting`] bit the
    /// owner announces while it sleeps ([`waiting::DATA`] or
    /// [`waiting::SPACE`]); one owner thread per bit.
    ///
    /// # Errors
    /// Whatever `poll` returns as an error; the announcement is withdrawn.
    pub fn wait_until<T, E>(
        &self,
        strategy: &WaitStrategy,
        reason: u32,
        deadline: Option<Instant>,
        mut poll: impl FnMut() -> Result<Poll<T>, E>,
    ) -> Result<WaitOutcome<T>, E> {
        debug_assert!(reason == waiting::DATA || reason == waiting::SPACE);
        if let Poll::Ready(t) = poll()? {
            return Ok(WaitOutcome::Ready(t));
        }
        if expired(deadline) {
            return Ok(WaitOutcome::TimedOut);
        }
        if let Some(t) = self.spin(strategy, deadline, &mut poll)? {
            return Ok(t);
        }
        let block = &*self.block;
        let result = loop {
            block.waiting.fetch_or(reason, Ordering::Relaxed);
            // SYNC POINT: sleeper announcement. Pairs with the fence in
            // `notify`: either the notifier sees our bit, or our re-check
            // below sees its publication.
            fence(Ordering::SeqCst);
            // SYNC POINT: wake word bump. Pairs with the `Release` increment
            // in `notify` / `wake_all`: reading a bumped value makes the
            // publication that preceded the bump visible to the re-check.
            let broken = crate::sync::is_broken("futex");
            let mut seen = if broken {
                0
            } else {
                block.futex.load(Ordering::Acquire)
            };
            match poll() {
                Ok(Poll::Ready(t)) => break Ok(WaitOutcome::Ready(t)),
                Err(e) => break Err(e),
                Ok(Poll::Pending) => {}
            }
            if broken {
                // Loom must-fail variant: the word read after the last
                // check, so a bump in between is slept through.
                seen = block.futex.load(Ordering::Acquire);
            }
            let timeout = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => break Ok(WaitOutcome::TimedOut),
                },
            };
            futex::wait(&block.futex, seen, timeout);
        };
        block.waiting.fetch_and(!reason, Ordering::Relaxed);
        result
    }

    /// The spin phase: `Some` when `poll` finished the wait.
    fn spin<T, E>(
        &self,
        strategy: &WaitStrategy,
        deadline: Option<Instant>,
        poll: &mut impl FnMut() -> Result<Poll<T>, E>,
    ) -> Result<Option<WaitOutcome<T>>, E> {
        match strategy.budget {
            SpinBudget::None => Ok(None),
            SpinBudget::Iterations(n) => {
                for _ in 0..n {
                    spin_loop();
                    if let Poll::Ready(t) = poll()? {
                        return Ok(Some(WaitOutcome::Ready(t)));
                    }
                }
                Ok(expired(deadline).then_some(WaitOutcome::TimedOut))
            }
            SpinBudget::Time(budget) => {
                // Most waits (a round trip) end within the first polls:
                // those read no clock. The budget is timed from after them,
                // so it runs that much longer (a few microseconds at most).
                for _ in 0..UNTIMED_POLLS {
                    spin_loop();
                    if let Poll::Ready(t) = poll()? {
                        return Ok(Some(WaitOutcome::Ready(t)));
                    }
                }
                let start = Instant::now();
                loop {
                    // Reading the clock costs more than a poll: look at it
                    // every few rounds.
                    for _ in 0..16 {
                        spin_loop();
                        if let Poll::Ready(t) = poll()? {
                            return Ok(Some(WaitOutcome::Ready(t)));
                        }
                    }
                    let now = Instant::now();
                    if deadline.is_some_and(|d| now >= d) {
                        return Ok(Some(WaitOutcome::TimedOut));
                    }
                    if now.duration_since(start) >= budget {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Wakes the owner if it announced `reason`. Call after publishing
    /// (after the `Release` store the owner's poll reads).
    #[inline]
    pub fn notify(&self, reason: u32) {
        let block = &*self.block;
        // SYNC POINT: sleeper announcement. Pairs with the fence in
        // `wait_until`.
        fence(Ordering::SeqCst);
        if block.waiting.load(Ordering::Relaxed) & reason != 0 {
            self.bump_and_wake();
        }
    }

    /// Wakes every thread sleeping on this word, announced or not. For
    /// local events: set the flag the waiters' polls check first.
    pub fn wake_all(&self) {
        self.bump_and_wake();
    }

    fn bump_and_wake(&self) {
        let block = &*self.block;
        // SYNC POINT: wake word bump. Pairs with the `Acquire` load in
        // `wait_until`.
        block.futex.fetch_add(1, Ordering::Release);
        futex::wake_all(&block.futex);
    }

    /// The side block holding the word.
    pub(crate) fn block(&self) -> &SideBlock {
        &self.block
    }

    /// The announced [`waiting`] bits (a snapshot, for diagnostics/tests).
    pub fn waiting_bits(&self) -> u32 {
        self.block.waiting.load(Ordering::Relaxed)
    }
}

fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Resets the loom futex mock (its wait queues). Each loom execution starts
/// with a fresh one anyway; see [`crate::layout::reset_loom_mocks`].
#[cfg(orcwire_loom)]
pub fn reset_futex_mock() {
    futex::reset();
}

/// The futex system calls (shared, not `FUTEX_PRIVATE`), also used by the
/// benchmark's raw floor.
#[cfg(not(orcwire_loom))]
pub(crate) mod futex {
    use std::time::Duration;

    use crate::sync::AtomicU32;

    /// Sleeps while `*word == expected`, at most `timeout`. Returns on a
    /// wake, a changed value, a signal or the timeout; the caller re-checks.
    pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: the word is a live, aligned u32 (kept alive by the caller's
        // borrow); the timespec, when given, outlives the call. Not
        // FUTEX_PRIVATE_FLAG: the word may be shared between processes.
        // Every result (woken, EAGAIN, EINTR, ETIMEDOUT) means "re-check".
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT,
                expected,
                ts_ptr,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }

    /// Wakes every thread (of any process) sleeping on `word`.
    pub(crate) fn wake_all(word: &AtomicU32) {
        // SAFETY: the word is a live, aligned u32; FUTEX_WAKE only reads its
        // address. A failure can only mean a bad address, which it is not.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }
}

#[cfg(orcwire_loom)]
mod futex {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::sync::{AtomicU32, Condvar, Mutex, Ordering};

    type Queues = HashMap<usize, Arc<Condvar>>;

    // The kernel's futex hash table: one wait queue per word address,
    // guarded by one lock (the bucket lock).
    loom::lazy_static! {
        static ref QUEUES: Mutex<Queues> = Mutex::new(HashMap::new());
    }

    /// Loom model of `FUTEX_WAIT`: the value check and the enqueue happen
    /// under the table lock, as in the kernel. No timeouts (loom has no
    /// time): the caller re-checks its deadline after every wake.
    pub(super) fn wait(word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
        let addr = word as *const AtomicU32 as usize;
        let mut queues = QUEUES.lock();
        if word.load(Ordering::Acquire) != expected {
            return;
        }
        let queue = Arc::clone(queues.entry(addr).or_default());
        drop(queue.wait(queues));
    }

    /// Loom model of `FUTEX_WAKE` for every waiter.
    pub(super) fn wake_all(word: &AtomicU32) {
        let addr = word as *const AtomicU32 as usize;
        let queues = QUEUES.lock();
        if let Some(queue) = queues.get(&addr) {
            queue.notify_all();
        }
    }

    pub(super) fn reset() {
        QUEUES.lock().clear();
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;
    use crate::sync::{thread, Arc, AtomicBool};
    use std::sync::mpsc;

    fn flag_poll(flag: &AtomicBool) -> impl FnMut() -> Result<Poll<()>, ()> + '_ {
        move || {
            Ok(if flag.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            })
        }
    }

    #[test]
    fn sleeper_is_woken_by_notify() {
        for strategy in [
            WaitStrategy::low_cpu(),
            WaitStrategy::balanced(),
            WaitStrategy::spin_iterations(10),
        ] {
            let word = Arc::new(WakeWord::standalone());
            let flag = Arc::new(AtomicBool::new(false));
            let (tx, rx) = mpsc::channel();
            let t = {
                let (word, flag) = (Arc::clone(&word), Arc::clone(&flag));
                thread::spawn(move || {
                    let r = word.wait_until(&strategy, waiting::DATA, None, flag_poll(&flag));
                    tx.send(r).unwrap();
                })
            };
            // Let the waiter reach the futex.
            let start = Instant::now();
            while word.waiting_bits() & waiting::DATA == 0 {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "waiter never slept"
                );
                thread::sleep(Duration::from_millis(1));
            }
            flag.store(true, Ordering::Release);
            word.notify(waiting::DATA);
            let r = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("wake-up lost");
            assert_eq!(r, Ok(WaitOutcome::Ready(())));
            t.join().unwrap();
            assert_eq!(word.waiting_bits(), 0);
        }
    }

    #[test]
    fn deadline_is_honoured() {
        let word = WakeWord::standalone();
        let flag = AtomicBool::new(false);
        let start = Instant::now();
        let r = word.wait_until(
            &WaitStrategy::balanced(),
            waiting::DATA,
            Some(start + Duration::from_millis(50)),
            flag_poll(&flag),
        );
        let took = start.elapsed();
        assert_eq!(r, Ok(WaitOutcome::TimedOut));
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn notify_for_another_reason_does_not_wake() {
        let word = Arc::new(WakeWord::standalone());
        let flag = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let t = {
            let (word, flag) = (Arc::clone(&word), Arc::clone(&flag));
            thread::spawn(move || {
                let r = word.wait_until(
                    &WaitStrategy::low_cpu(),
                    waiting::DATA,
                    Some(Instant::now() + Duration::from_secs(5)),
                    flag_poll(&flag),
                );
                tx.send(r).unwrap();
            })
        };
        let start = Instant::now();
        while word.waiting_bits() & waiting::DATA == 0 {
            assert!(start.elapsed() < Duration::from_secs(5));
            thread::sleep(Duration::from_millis(1));
        }
        word.notify(waiting::SPACE);
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        flag.store(true, Ordering::Release);
        word.wake_all();
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("wake_all lost");
        assert_eq!(r, Ok(WaitOutcome::Ready(())));
        t.join().unwrap();
    }

    #[test]
    fn poll_error_ends_the_wait() {
        let word = WakeWord::standalone();
        let r: Result<WaitOutcome<()>, &str> =
            word.wait_until(&WaitStrategy::low_cpu(), waiting::SPACE, None, || {
                Err("closed")
            });
        assert_eq!(r, Err("closed"));
        assert_eq!(word.waiting_bits(), 0);
    }
}
