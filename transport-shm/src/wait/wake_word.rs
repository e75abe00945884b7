//! [`WakeWord`]: one side's futex word and waiting announcements, and the
//! wait/notify protocol over them (see the [module docs](super) for why no
//! wake-up is lost).
//!
//! Relies on: `super::futex` (the system call, or loom's mock), the
//! [`SideBlock`] words reached through `SharedRef`, and the `sync` shim's
//! fences and atomics.

use std::task::Poll;
use std::time::Instant;

use crossbeam_utils::CachePadded;

use super::futex;
use super::strategy::{SpinBudget, WaitStrategy};
use crate::layout::{waiting, SharedRef, SideBlock};
use crate::sync::{fence, spin_loop, thread, Ordering};

/// Polls a timed spin makes before it first reads the clock: a clock read
/// costs more than a poll, and a wait that ends this early (a whole round
/// trip on an idle core) should pay for none.
const UNTIMED_POLLS: u32 = 64;

/// Spinning longer than this yields the CPU at every clock check (every
/// 16 polls). A round trip of small messages ends long before it.
const YIELD_AFTER: std::time::Duration = std::time::Duration::from_micros(20);

/// The longest one sleep in the kernel lasts before the wait looks again
/// (re-announcing itself and re-running its poll), deadline or not. The
/// protocol loses no wake-up, but the words it relies on live in memory
/// the peer can write: a peer that scribbles over our `waiting` bits (or
/// our futex word while we sleep) makes its own notifications skip us,
/// and a wait without a deadline would then sleep for ever without ever
/// looking at the state word that says the segment is broken. Seen as a
/// hang of both sides in `tests/shm_process.rs`' header corruption (about
/// one run in 750 with both processes on one CPU). With the cap such a
/// wait notices within this long; an idle side wakes ten times a second.
pub(crate) const MAX_SLEEP: std::time::Duration = std::time::Duration::from_millis(100);

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
    #[cfg(any(test, feature = "internals", orcwire_loom))]
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
        poll: impl FnMut() -> Result<Poll<T>, E>,
    ) -> Result<WaitOutcome<T>, E> {
        self.wait_until_then(strategy, reason, deadline, poll, || {})
    }

    /// [`wait_until`](Self::wait_until), calling `before_sleep` once when
    /// the spin budget is spent and the wait is about to sleep in the
    /// kernel (never when the wait ends while spinning). A sender waiting
    /// for room uses it to make sure its side reads meanwhile: only a wait
    /// that lasts needs that, and asking on every wait would wake a thread
    /// per fragment of a large message.
    ///
    /// # Errors
    /// As [`wait_until`](Self::wait_until).
    pub fn wait_until_then<T, E>(
        &self,
        strategy: &WaitStrategy,
        reason: u32,
        deadline: Option<Instant>,
        mut poll: impl FnMut() -> Result<Poll<T>, E>,
        before_sleep: impl FnOnce(),
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
        before_sleep();
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
            // Never for ever: see `MAX_SLEEP`.
            let timeout = match deadline {
                None => MAX_SLEEP,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(MAX_SLEEP),
                    _ => break Ok(WaitOutcome::TimedOut),
                },
            };
            futex::wait(&block.futex, seen, Some(timeout));
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
        match strategy.budget() {
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
                    let spun = now.duration_since(start);
                    if spun >= budget {
                        return Ok(None);
                    }
                    if spun >= YIELD_AFTER {
                        // A long spin gives the CPU to any other runnable
                        // thread of ours on it (the one copying the data we
                        // wait for, say): without this, two spinning threads
                        // pinned to one CPU take turns by time slices of
                        // milliseconds. With nothing else runnable the call
                        // returns at once.
                        thread::yield_now();
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
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn waiting_bits(&self) -> u32 {
        self.block.waiting.load(Ordering::Relaxed)
    }
}

fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use std::time::Duration;

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

    /// A thread waiting on a fresh word for `flag` (`DATA`, `deadline`),
    /// returned once it has announced itself (asleep, or about to be):
    /// the word, the flag, where its outcome arrives, and its handle.
    #[allow(clippy::type_complexity)]
    fn sleeping_waiter(
        strategy: WaitStrategy,
        deadline: Option<Instant>,
    ) -> (
        Arc<WakeWord>,
        Arc<AtomicBool>,
        mpsc::Receiver<Result<WaitOutcome<()>, ()>>,
        thread::JoinHandle<()>,
    ) {
        let word = Arc::new(WakeWord::standalone());
        let flag = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let t = {
            let (word, flag) = (Arc::clone(&word), Arc::clone(&flag));
            thread::spawn(move || {
                let r = word.wait_until(&strategy, waiting::DATA, deadline, flag_poll(&flag));
                tx.send(r).unwrap();
            })
        };
        let start = Instant::now();
        while word.waiting_bits() & waiting::DATA == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "waiter never slept"
            );
            thread::sleep(Duration::from_millis(1));
        }
        (word, flag, rx, t)
    }

    #[test]
    fn sleeper_is_woken_by_notify() {
        for strategy in [
            WaitStrategy::low_cpu(),
            WaitStrategy::balanced(),
            WaitStrategy::spin_iterations(10),
        ] {
            let (word, flag, rx, t) = sleeping_waiter(strategy, None);
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
    fn a_wake_up_the_peer_skipped_costs_one_sleep_not_a_hang() {
        let (word, flag, rx, t) = sleeping_waiter(WaitStrategy::low_cpu(), None);
        // The peer scribbles over the waiter's words while it sleeps (its
        // announcement gone, its futex word changed), then publishes: its
        // notification sees no announcement and wakes nobody.
        thread::sleep(Duration::from_millis(5));
        word.block().waiting.store(0, Ordering::Relaxed);
        word.block().futex.store(0xdead_beef, Ordering::Relaxed);
        let published = Instant::now();
        flag.store(true, Ordering::Release);
        word.notify(waiting::DATA);
        let r = rx.recv_timeout(MAX_SLEEP * 20);
        if r.is_err() {
            // Unstick the waiter before failing, so the test ends.
            word.wake_all();
        }
        assert_eq!(
            r.expect("a wait without a deadline slept for ever through a skipped wake-up"),
            Ok(WaitOutcome::Ready(()))
        );
        let took = published.elapsed();
        t.join().unwrap();
        assert!(
            took <= MAX_SLEEP + Duration::from_millis(500),
            "the waiter looked again only after {took:?}"
        );
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
    fn before_sleep_runs_only_when_the_wait_sleeps() {
        let word = WakeWord::standalone();
        let mut calls = 0;
        // Ready at once, or while spinning: no call.
        let ready = AtomicBool::new(true);
        let r = word.wait_until_then(
            &WaitStrategy::balanced(),
            waiting::SPACE,
            None,
            flag_poll(&ready),
            || calls += 1,
        );
        assert_eq!(r, Ok(WaitOutcome::Ready(())));
        let mut polls = 0;
        let r = word.wait_until_then(
            &WaitStrategy::spin_iterations(100),
            waiting::SPACE,
            None,
            || {
                polls += 1;
                Ok::<_, ()>(if polls > 10 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                })
            },
            || calls += 1,
        );
        assert_eq!(r, Ok(WaitOutcome::Ready(())));
        assert_eq!(calls, 0);
        // Spent budget: one call before it sleeps (here until the deadline).
        let never = AtomicBool::new(false);
        let r = word.wait_until_then(
            &WaitStrategy::spin_iterations(10),
            waiting::SPACE,
            Some(Instant::now() + Duration::from_millis(20)),
            flag_poll(&never),
            || calls += 1,
        );
        assert_eq!(r, Ok(WaitOutcome::TimedOut));
        assert_eq!(calls, 1);
        assert_eq!(word.waiting_bits(), 0);
    }

    #[test]
    fn notify_for_another_reason_does_not_wake() {
        let (word, flag, rx, t) = sleeping_waiter(
            WaitStrategy::low_cpu(),
            Some(Instant::now() + Duration::from_secs(5)),
        );
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
