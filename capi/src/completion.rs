//! Completion callbacks for `orcwire_call_async`: one thread per endpoint
//! (started on the first asynchronous call) that drives each call's
//! [`PendingCall`] as a future and runs the C callback when it is ready.
//!
//! Each call is a `Task` whose waker puts it back on the thread's ready
//! queue, so a completion costs one wake-up, not a scan of every pending
//! call. The thread stops once asked to and every call it was given has
//! completed; disconnecting the endpoint completes every pending call, so
//! that follows the disconnect. This crate uses std's primitives
//! directly: it is not part of the loom-checked core.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{JoinHandle, ThreadId};

use orcwire::{CallResult, PendingCall};

use crate::buffer::orc_rt_WrapperFunctionBuffer;
use crate::status::{guard, orcwire_status, put, set_last_error, Failure};

/// `void (*)(void *ctx, orcwire_status status, orc_rt_WrapperFunctionBuffer result)`.
pub type DoneFn = unsafe extern "C" fn(*mut c_void, orcwire_status, orc_rt_WrapperFunctionBuffer);

/// A C context pointer the caller promised may be used from any thread.
#[derive(Clone, Copy)]
pub struct CtxPtr(*mut c_void);

// SAFETY: the header makes it the caller's promise that a context pointer
// may be used from any thread; orcwire never dereferences it.
unsafe impl Send for CtxPtr {}
// SAFETY: as above.
unsafe impl Sync for CtxPtr {}

impl CtxPtr {
    /// Wraps `ctx`.
    pub fn new(ctx: *mut c_void) -> Self {
        Self(ctx)
    }

    /// The pointer (a method, so closures capture the `Send` wrapper).
    pub fn get(self) -> *mut c_void {
        self.0
    }
}

/// Locks, ignoring poisoning: nothing here panics while holding a lock
/// except on a bug, and the state stays consistent at every unlock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct QueueState {
    ready: VecDeque<Arc<Task>>,
    /// Calls given to the thread whose callback has not run yet.
    outstanding: usize,
    stopping: bool,
}

struct Queue {
    state: Mutex<QueueState>,
    changed: Condvar,
}

struct Task {
    queue: Arc<Queue>,
    /// Taken when the callback runs.
    call: Mutex<Option<(PendingCall, DoneFn, CtxPtr)>>,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        let queue = Arc::clone(&self.queue);
        lock(&queue.state).ready.push_back(self);
        queue.changed.notify_one();
    }
}

/// The completion thread of one endpoint.
pub struct Completions {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

impl Completions {
    /// Starts the thread.
    ///
    /// # Errors
    /// `ORCWIRE_STATUS_IO` when the thread cannot be spawned.
    pub fn start() -> Result<Self, Failure> {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                ready: VecDeque::new(),
                outstanding: 0,
                stopping: false,
            }),
            changed: Condvar::new(),
        });
        let q = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name("orcwire-capi-done".into())
            .spawn(move || run(&q))
            .map_err(|e| {
                Failure::new(
                    orcwire_status::ORCWIRE_STATUS_IO,
                    format!("could not start the completion thread: {e}"),
                )
            })?;
        Ok(Self {
            queue,
            thread_id: thread.thread().id(),
            thread: Some(thread),
        })
    }

    /// A handle that hands calls to the thread and waits for it.
    pub fn submitter(&self) -> Submitter {
        Submitter {
            queue: Arc::clone(&self.queue),
            thread_id: self.thread_id,
        }
    }

    /// Stops the thread once every submitted call has completed, and
    /// joins it (unless this is that thread, from inside a callback).
    pub fn shut_down(mut self) {
        lock(&self.queue.state).stopping = true;
        self.queue.changed.notify_all();
        if let Some(t) = self.thread.take() {
            if std::thread::current().id() != self.thread_id {
                let _ = t.join();
            }
        }
    }
}

/// Hands calls to one endpoint's completion thread, and waits for it.
pub struct Submitter {
    queue: Arc<Queue>,
    thread_id: ThreadId,
}

impl Submitter {
    /// Hands `call` to the thread; `done(ctx, ...)` runs there once.
    pub fn submit(&self, call: PendingCall, done: DoneFn, ctx: CtxPtr) {
        let task = Arc::new(Task {
            queue: Arc::clone(&self.queue),
            call: Mutex::new(Some((call, done, ctx))),
        });
        let mut st = lock(&self.queue.state);
        st.outstanding += 1;
        st.ready.push_back(task);
        drop(st);
        self.queue.changed.notify_one();
    }

    /// Waits until every submitted call's callback has run; returns at
    /// once on the completion thread itself (a callback cannot wait for
    /// itself or for the callbacks queued behind it). Only bounded when
    /// every pending call completes, as after a disconnect.
    pub fn wait_idle(&self) {
        if std::thread::current().id() == self.thread_id {
            return;
        }
        let mut st = lock(&self.queue.state);
        while st.outstanding > 0 {
            st = self
                .queue
                .changed
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

fn run(queue: &Arc<Queue>) {
    loop {
        let task = {
            let mut st = lock(&queue.state);
            loop {
                if let Some(t) = st.ready.pop_front() {
                    break t;
                }
                if st.stopping && st.outstanding == 0 {
                    return;
                }
                st = queue
                    .changed
                    .wait(st)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        let waker = Waker::from(Arc::clone(&task));
        let mut slot = lock(&task.call);
        let Some((call, _, _)) = slot.as_mut() else {
            continue; // a late wake-up of a call already completed
        };
        let outcome = match Pin::new(call).poll(&mut Context::from_waker(&waker)) {
            Poll::Pending => continue,
            Poll::Ready(r) => r,
        };
        let Some((_, done, ctx)) = slot.take() else {
            continue;
        };
        drop(slot);
        let (status, result) = to_c(outcome);
        // A panic cannot come out of C; the catch keeps the thread (and
        // the count below) alive should a Rust callback panic.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: `done` and `ctx` were registered together through
            // `orcwire_call_async`, whose contract makes `done` callable
            // once on any thread with `ctx`; the result is handed over.
            unsafe { done(ctx.get(), status, result) };
        }));
        lock(&queue.state).outstanding -= 1;
        queue.changed.notify_all();
    }
}

/// A call's outcome as C sees it: a status and a buffer the callee owns
/// (empty unless the status is OK; an out-of-band error result is OK
/// with an error-shaped buffer). Sets the last error on failure.
pub fn to_c(outcome: CallResult) -> (orcwire_status, orc_rt_WrapperFunctionBuffer) {
    match outcome {
        Ok(b) => (
            orcwire_status::ORCWIRE_STATUS_OK,
            orc_rt_WrapperFunctionBuffer::from_rust(b),
        ),
        Err(e) => {
            let f = Failure::from(e);
            set_last_error(&f.message);
            (f.status, orc_rt_WrapperFunctionBuffer::EMPTY)
        }
    }
}

/// The body of an entry point that waits for a call's outcome and hands it
/// to C in `*out`: `*out` is emptied first, `call` runs under [`guard`]
/// (its `Err` is the entry point's failure), and the outcome becomes the
/// status and `*out` ([`to_c`]).
///
/// # Safety
/// `out` is NULL or writable.
pub unsafe fn deliver_call(
    out: *mut orc_rt_WrapperFunctionBuffer,
    call: impl FnOnce() -> Result<CallResult, Failure>,
) -> orcwire_status {
    let mut status = orcwire_status::ORCWIRE_STATUS_OK;
    let s = guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: checked non-null, writable by contract.
        unsafe { put(out, orc_rt_WrapperFunctionBuffer::EMPTY) };
        let (st, result) = to_c(call()?);
        status = st;
        // SAFETY: as above.
        unsafe { put(out, result) };
        Ok(())
    });
    // `to_c` already set the last error for a failed call.
    if s == orcwire_status::ORCWIRE_STATUS_OK {
        status
    } else {
        s
    }
}
