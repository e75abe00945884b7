//! Loom model checks of orcwire's concurrency protocols.
//!
//! The models live in `tests/`, one file per protocol, and only build with
//! `RUSTFLAGS="--cfg orcwire_loom"`: that cfg switches the `orcwire_sync`
//! shim (which every atomic, lock, condvar, cell and thread in both crates
//! comes through) to loom's types, so loom checks **the code that ships**.
//! The ring's header and data, which production lays over the shared
//! mapping, live on the heap under loom (`layout/loom_shared.rs` in
//! `orcwire-shm` keeps one loom object per address of a `HeapMapping`),
//! and the ring's bytes are loom `UnsafeCell`s
//! (`ring/memory/loom_cells.rs`), so a payload read that is not ordered
//! after its write is reported as a data race. Each such backing is
//! chosen at one place in `orcwire-shm`; the code above it is the code
//! that ships.
//!
//! The models reach `orcwire-shm`'s internals (`ring`, `layout`, `wait`)
//! because `--cfg orcwire_loom` makes those modules public; without it
//! they are private to the crate.
//!
//! Run them all (what `.ci/loom` does, and `.ci/run` calls it):
//!
//! ```text
//! .ci/loom
//! # or by hand:
//! RUSTFLAGS="--cfg orcwire_loom" CARGO_TARGET_DIR=target/loom \
//!     LOOM_MAX_PREEMPTIONS=3 cargo test --release -p orcwire-loom-tests
//! ```
//!
//! The table of models, what each proves and how many executions loom
//! explores is in `docs/LOOM.md` (written once,
//! there).
//!
//! # A model must be able to fail
//!
//! Every model has a twin that turns on one deliberate bug in the shipped
//! code (`orcwire_sync::broken`, compiled only with
//! `--cfg orcwire_loom_broken`) and is `#[should_panic]`: loom must find
//! the interleaving that breaks it. `.ci/loom` builds them separately, so
//! the passing models run without the bug hooks. The bugs: `gate` (check
//! closed, then add, in two steps), `ring` (tail published `Relaxed`),
//! `futex` (the wake word read after the last check), `pending` (register
//! ignores a closed table), `waker` (the owner announces its waker with a
//! load and a store), `session` (callbacks drained and completion
//! marked in two critical sections), `handshake` (`recv` reports the hang-up
//! as soon as it sees the peer's bit, without draining first), `handles`
//! (a release frees the value whatever its count), `outbox` (a worker
//! leads again without sending the results its batch left in the
//! outbox).
//!
//! # What loom cannot check, and what covers it instead
//!
//! * **Process death.** Loom threads cannot die half-way. A dead peer is
//!   seen through the liveness socket and pidfd, not through memory:
//!   `tests/shm_process.rs` kills real executors and controllers with
//!   `SIGKILL` mid-call and asserts `PeerDied` within 100 ms, and writes
//!   random bytes into a live segment's header and rings (the peer-is-
//!   hostile rules: everything read once, range-checked, copied out).
//! * **Real futexes.** The models use a mock `FUTEX_WAIT`/`FUTEX_WAKE`
//!   (a loom `Mutex` + `Condvar` per word address, checking the value under
//!   the table lock as the kernel does under its bucket lock). That the
//!   kernel behaves so is its documented contract (futex(2)). The real
//!   syscall runs in `tests/shm_process.rs` (two processes, the balanced
//!   preset: a short spin, then `FUTEX_WAIT`; 8 threads x 10,000 calls) and
//!   in the CLI test that runs the whole demo with `--wait block` (straight
//!   to `FUTEX_WAIT`); a lost wake-up there is a hang, which the tests'
//!   timeouts turn into a failure.
//! * **`SeqCst` subtleties.** Loom treats `SeqCst` loads and stores as
//!   `AcqRel`, so it can report a false alarm but never proves a property
//!   that needs the single total order of `SeqCst` accesses. The one place
//!   that needs it, the sleeper/publisher handshake in `orcwire-shm`'s
//!   `wait/`, uses `SeqCst` *fences* (announce; fence; re-check —
//!   publish; fence; look for a sleeper), which loom does model; the
//!   argument is in `orcwire_shm::wait`'s module docs, and `futex.rs`
//!   checks it. The other way round, loom makes every `Mutex` lock and
//!   unlock a `SeqCst` point, so a missing `Release` on a store that is
//!   followed by an unrelated lock on both sides (the transport's state
//!   word: `send` and `recv` each take their end's lock) is invisible to
//!   it. Those orderings are argued at each `SYNC POINT` comment instead,
//!   where both halves are labelled; the lock-free paths (ring indices,
//!   wake word) are the ones the models check for ordering, and a
//!   `Relaxed` tail is caught (`ring.rs`).
//! * **Weak memory beyond loom's bound** and **time** (timeouts, spin
//!   budgets) are not modelled: a spin is a yield, a timed wait a full
//!   wait. Timeouts are tested with real clocks in the unit tests.
//!
//! # Bounds
//!
//! `model` reads `LOOM_MAX_PREEMPTIONS` (and loom's other `LOOM_*`
//! variables); unset, it uses [`DEFAULT_PREEMPTIONS`], the bound `.ci/loom`
//! also fixes. Under that bound loom explores every interleaving with at
//! most that many preemptions.

/// The preemption bound when `LOOM_MAX_PREEMPTIONS` is unset.
pub const DEFAULT_PREEMPTIONS: usize = 3;

/// Runs `f` under loom, exploring every interleaving within the bound,
/// with fresh shared-memory and futex mocks each time.
///
/// # Panics
/// When loom finds an interleaving in which `f` panics, deadlocks or
/// races on a cell.
#[cfg(orcwire_loom)]
pub fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    model_with(loom::model::Builder::new(), f);
}

/// [`model`] for a model that runs a whole endpoint: at most `branches`
/// branch points per execution (loom's default is 1,000; one execution of
/// an endpoint touches thousands of atomics without any of them spinning)
/// and a preemption bound of at most `max_preemptions` (the bound that
/// applies otherwise, capped: such a model grows about 300-fold per extra
/// preemption).
#[cfg(orcwire_loom)]
pub fn model_large<F>(branches: usize, max_preemptions: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    builder.max_branches = builder.max_branches.max(branches);
    let bound = builder.preemption_bound.unwrap_or(DEFAULT_PREEMPTIONS);
    builder.preemption_bound = Some(bound.min(max_preemptions));
    model_with(builder, f);
}

#[cfg(orcwire_loom)]
fn model_with<F>(mut builder: loom::model::Builder, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    let bound = builder.preemption_bound;
    // Loom runs every execution on this OS thread, so a plain thread-local
    // counts them.
    std::thread_local! {
        static EXECUTIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    EXECUTIONS.with(|n| n.set(0));
    builder.check(move || {
        EXECUTIONS.with(|n| n.set(n.get() + 1));
        orcwire_shm::reset_loom_mocks();
        f();
    });
    let executions = EXECUTIONS.with(|n| n.get());
    eprintln!(
        "loom: {} explored {executions} executions (preemption bound {bound:?})",
        std::thread::current().name().unwrap_or("model"),
    );
}

/// Runs `f` under [`model`] with the deliberate bug `bug` turned on in the
/// shipped code (see `orcwire_sync::broken`). Meant for
/// `#[should_panic]` tests: a model that cannot fail proves nothing.
///
/// # Panics
/// When loom catches the bug, which is the point.
#[cfg(all(orcwire_loom, orcwire_loom_broken))]
pub fn model_with_bug<F>(bug: &'static str, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let _selected = orcwire_sync::broken::select(bug);
    model(f);
}
