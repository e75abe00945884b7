//! The loom model of the futex (built only under `--cfg orcwire_loom`;
//! the loom choice of `wait::futex`): a loom `Mutex` and one `Condvar` per
//! word address, as `vasi-sync` does. The value check and the enqueue
//! happen under the table lock, as in the kernel under its bucket lock.
//!
//! Relies on: `loom::lazy_static` giving every model execution fresh
//! queues ([`reset`] clears them explicitly).

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
pub(crate) fn wait(word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
    let addr = word as *const AtomicU32 as usize;
    let mut queues = QUEUES.lock();
    if word.load(Ordering::Acquire) != expected {
        return;
    }
    let queue = Arc::clone(queues.entry(addr).or_default());
    drop(queue.wait(queues));
}

/// Loom model of `FUTEX_WAKE` for every waiter.
pub(crate) fn wake_all(word: &AtomicU32) {
    let addr = word as *const AtomicU32 as usize;
    let queues = QUEUES.lock();
    if let Some(queue) = queues.get(&addr) {
        queue.notify_all();
    }
}

/// Forgets every wait queue. Each loom execution starts with fresh ones
/// anyway; see `reset_loom_mocks`.
pub(crate) fn reset() {
    QUEUES.lock().clear();
}
