//! Running tasks: the [`TaskDispatcher`] interface and two implementations.
//!
//! This is orc-rt's `TaskDispatcher` (seed 000): "Incoming calls will be
//! wrapped in Tasks and dispatched. Session shutdown will wait on
//! TaskDispatcher shutdown, ensuring that all Tasks are run or destroyed
//! prior to the Session being destroyed." A [`Task`] is a boxed closure; a
//! task that will never run is *dropped*, and dropping is how it learns
//! that (an endpoint's responder, say, sends an error result from its
//! `Drop`).
//!
//! * [`ThreadPoolTaskDispatcher`]: a fixed set of worker threads taking
//!   tasks from one FIFO queue (`Mutex<VecDeque>` + `Condvar`).
//! * [`InlineTaskDispatcher`]: runs each task at once on the thread that
//!   dispatched it.
//!
//! Both mark the running thread with a thread-local record of which
//! dispatcher's task it is inside, so that [`is_dispatcher_thread`] can
//! tell a session or endpoint not to block, and so that `shutdown` called
//! from inside one of the dispatcher's own tasks does not wait for itself.
//!
//! Relies on: [`crate::sync`] for every lock, condvar, atomic and thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::sync::{thread, Arc, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering};

/// A unit of work for a [`TaskDispatcher`]. Dropping it unrun is the signal
/// that it will never run.
pub type Task = Box<dyn FnOnce() + Send + 'static>;

/// Runs [`Task`]s, somewhere, some time.
pub trait TaskDispatcher: Send + Sync + 'static {
    /// Hands `task` over to be run.
    ///
    /// Once [`shutdown`](TaskDispatcher::shutdown) has begun, the task is
    /// dropped without running (on the calling thread, with no lock held).
    fn dispatch(&self, task: Task);

    /// Stops accepting tasks and returns only when every task dispatched
    /// before the call has run or been dropped.
    ///
    /// Idempotent; any number of threads may call it at once and every one
    /// of them waits. A call made from inside one of this dispatcher's own
    /// tasks cannot wait for that task: each implementation documents what
    /// it waits for then, and it never deadlocks.
    fn shutdown(&self);
}

/// Why a dispatcher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// A thread pool was asked for zero threads.
    #[error("a thread pool needs at least one worker thread; ask for one or more")]
    NoThreads,
    /// The operating system refused to start a worker thread.
    #[error("could not start dispatcher worker thread {index}: {source}; ask for fewer threads or free system resources")]
    SpawnFailed {
        /// Which worker (0-based) failed to start.
        index: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

// The ids of the dispatchers whose tasks this thread is inside, innermost
// last (an inline dispatcher's task can dispatch into another one, so they
// nest). An id is the address of the dispatcher's shared state, which
// stays alive (and so unique) while any of its tasks runs.
#[cfg(not(orcwire_loom))]
std::thread_local! {
    static RUNNING_TASKS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}
// Loom runs its threads as coroutines on one OS thread, so only loom's own
// thread-local keeps the record per modelled thread.
#[cfg(orcwire_loom)]
loom::thread_local! {
    static RUNNING_TASKS: RefCell<Vec<usize>> = RefCell::new(Vec::new());
}

/// Whether the calling thread is inside a task run by any orcwire
/// dispatcher.
///
/// Code that might run in a task (handlers, services, callbacks) checks
/// this before a blocking wait that a task of the same dispatcher would
/// have to end: such a wait can deadlock, and the caller should choose a
/// callback-based API instead.
///
/// ```
/// use orcwire::{is_dispatcher_thread, InlineTaskDispatcher, TaskDispatcher};
///
/// assert!(!is_dispatcher_thread());
/// let d = InlineTaskDispatcher::new();
/// d.dispatch(Box::new(|| assert!(is_dispatcher_thread())));
/// ```
pub fn is_dispatcher_thread() -> bool {
    RUNNING_TASKS
        .try_with(|r| !r.borrow().is_empty())
        .unwrap_or(false)
}

/// How many tasks of dispatcher `id` the calling thread is inside.
fn tasks_on_this_thread(id: usize) -> usize {
    RUNNING_TASKS
        .try_with(|r| r.borrow().iter().filter(|&&x| x == id).count())
        .unwrap_or(0)
}

/// Marks the calling thread as inside a task of dispatcher `id` until
/// dropped (also on unwind).
struct TaskMark;

impl TaskMark {
    fn enter(id: usize) -> Self {
        let _ = RUNNING_TASKS.try_with(|r| r.borrow_mut().push(id));
        TaskMark
    }
}

impl Drop for TaskMark {
    fn drop(&mut self) {
        let _ = RUNNING_TASKS.try_with(|r| r.borrow_mut().pop());
    }
}

/// Runs `task` as a task of dispatcher `id`, catching a panic so that it
/// costs neither the worker nor the dispatcher's bookkeeping.
fn run_task(id: usize, task: Task, panicked: &AtomicUsize) {
    let _mark = TaskMark::enter(id);
    if catch_unwind(AssertUnwindSafe(task)).is_err() {
        // Relaxed: a statistic; nothing is published through it.
        panicked.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits on `cv`, recovering the guard if the lock was poisoned (see
/// [`sync::lock`]).
fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard)
}

/// A fixed pool of worker threads (named `orcwire-task-N`) taking tasks
/// from one FIFO queue.
///
/// With one thread, tasks run one at a time in dispatch order. A task that
/// panics is counted ([`panicked_tasks`](Self::panicked_tasks)) and the
/// worker carries on.
///
/// # Shutdown
/// [`shutdown`](TaskDispatcher::shutdown) stops accepting tasks, lets the
/// workers *run* every task already queued, and joins them. Called from
/// inside one of the pool's own tasks it cannot wait for that task, so it
/// waits until every *other* worker has exited (or is itself parked in
/// `shutdown` from its own task) and returns; the calling worker exits
/// after its task returns, and is joined by a later `shutdown` from outside
/// the pool or simply ends on its own. With a single worker this means the
/// tasks still queued behind the caller run after its task returns.
/// Dropping the dispatcher shuts it down.
///
/// ```
/// use std::sync::mpsc;
/// use orcwire::{TaskDispatcher, ThreadPoolTaskDispatcher};
///
/// let pool = ThreadPoolTaskDispatcher::new(2)?;
/// let (tx, rx) = mpsc::channel();
/// pool.dispatch(Box::new(move || tx.send(6 * 7).unwrap()));
/// pool.shutdown();
/// assert_eq!(rx.try_recv().unwrap(), 42);
/// # Ok::<(), orcwire::DispatchError>(())
/// ```
pub struct ThreadPoolTaskDispatcher {
    shared: Arc<PoolShared>,
    /// Handles of workers not joined yet.
    workers: Mutex<Vec<thread::JoinHandle<()>>>,
}

struct PoolShared {
    state: Mutex<PoolState>,
    /// Signalled when a task is queued or shutdown begins.
    work_ready: Condvar,
    /// Signalled when a worker exits or parks in `shutdown`.
    worker_exited: Condvar,
    panicked: AtomicUsize,
}

struct PoolState {
    queue: VecDeque<Task>,
    shutting_down: bool,
    /// Workers whose loop has not ended; `0 ..= threads`.
    live_workers: usize,
    /// Workers currently inside `shutdown` called from their own task; each
    /// is also counted in `live_workers`.
    parked_in_shutdown: Vec<thread::ThreadId>,
}

impl ThreadPoolTaskDispatcher {
    /// Starts `threads` workers.
    ///
    /// # Errors
    /// [`DispatchError::NoThreads`] if `threads` is 0;
    /// [`DispatchError::SpawnFailed`] if the OS refuses a thread (the ones
    /// already started are shut down and joined first).
    pub fn new(threads: usize) -> Result<Self, DispatchError> {
        if threads == 0 {
            return Err(DispatchError::NoThreads);
        }
        let pool = ThreadPoolTaskDispatcher {
            shared: Arc::new(PoolShared {
                state: Mutex::new(PoolState {
                    queue: VecDeque::new(),
                    shutting_down: false,
                    live_workers: 0,
                    parked_in_shutdown: Vec::new(),
                }),
                work_ready: Condvar::new(),
                worker_exited: Condvar::new(),
                panicked: AtomicUsize::new(0),
            }),
            workers: Mutex::new(Vec::with_capacity(threads)),
        };
        for index in 0..threads {
            // Counted before the spawn so that a shutdown racing with a
            // starting worker waits for it.
            pool.shared.state.lock().live_workers += 1;
            let shared = pool.shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("orcwire-task-{index}"))
                .spawn(move || worker_loop(shared));
            match spawned {
                Ok(handle) => pool.workers.lock().push(handle),
                Err(source) => {
                    pool.shared.state.lock().live_workers -= 1;
                    // Dropping `pool` shuts down and joins the started ones.
                    return Err(DispatchError::SpawnFailed { index, source });
                }
            }
        }
        Ok(pool)
    }

    /// How many tasks have panicked so far (each was caught; its worker
    /// went on).
    pub fn panicked_tasks(&self) -> usize {
        self.shared.panicked.load(Ordering::Relaxed)
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }
}

fn worker_loop(shared: Arc<PoolShared>) {
    let id = Arc::as_ptr(&shared) as usize;
    loop {
        let next = {
            let mut st = shared.state.lock();
            loop {
                if let Some(task) = st.queue.pop_front() {
                    break Some(task);
                }
                if st.shutting_down {
                    break None;
                }
                st = wait(&shared.work_ready, st);
            }
        };
        match next {
            Some(task) => run_task(id, task, &shared.panicked),
            None => break,
        }
    }
    shared.state.lock().live_workers -= 1;
    shared.worker_exited.notify_all();
}

impl TaskDispatcher for ThreadPoolTaskDispatcher {
    fn dispatch(&self, task: Task) {
        let mut st = self.shared.state.lock();
        if st.shutting_down {
            drop(st);
            drop(task);
            return;
        }
        st.queue.push_back(task);
        drop(st);
        self.shared.work_ready.notify_one();
    }

    fn shutdown(&self) {
        let me = thread::current().id();
        // 0 or 1: a pool task cannot run another task of the same pool.
        let in_own_task = tasks_on_this_thread(self.id()) > 0;
        let mut st = self.shared.state.lock();
        st.shutting_down = true;
        self.shared.work_ready.notify_all();
        if in_own_task {
            st.parked_in_shutdown.push(me);
            self.shared.worker_exited.notify_all();
            while st.live_workers > st.parked_in_shutdown.len() {
                st = wait(&self.shared.worker_exited, st);
            }
            st.parked_in_shutdown.retain(|t| *t != me);
            let parked = st.parked_in_shutdown.clone();
            drop(st);
            // Every worker not parked (and not us) has left its loop: join
            // those, keep the rest for a later shutdown from outside.
            let mut handles = self.workers.lock();
            let (still_running, exited): (Vec<_>, Vec<_>) =
                std::mem::take(&mut *handles).into_iter().partition(|h| {
                    let t = h.thread().id();
                    t == me || parked.contains(&t)
                });
            *handles = still_running;
            drop(handles);
            for h in exited {
                let _ = h.join();
            }
        } else {
            while st.live_workers > 0 {
                st = wait(&self.shared.worker_exited, st);
            }
            drop(st);
            let handles = std::mem::take(&mut *self.workers.lock());
            for h in handles {
                // A worker catches task panics, so an Err here cannot carry
                // anything to report.
                let _ = h.join();
            }
        }
    }
}

impl Drop for ThreadPoolTaskDispatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for ThreadPoolTaskDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.state.lock();
        f.debug_struct("ThreadPoolTaskDispatcher")
            .field("queued", &st.queue.len())
            .field("live_workers", &st.live_workers)
            .field("shutting_down", &st.shutting_down)
            .finish()
    }
}

/// Runs each task at once on the dispatching thread.
///
/// It counts the tasks in progress (on any thread), so
/// [`shutdown`](TaskDispatcher::shutdown) waits for tasks running on other
/// threads; called from inside one of its own tasks it waits for every
/// task except the ones the calling thread is inside (and except those of
/// other threads also parked in `shutdown` from their own tasks). After
/// shutdown has begun tasks are dropped. A panicking task is caught and
/// counted ([`panicked_tasks`](Self::panicked_tasks)).
///
/// ```
/// use orcwire::{InlineTaskDispatcher, TaskDispatcher};
/// use orcwire_sync::{Arc, AtomicBool, Ordering};
///
/// let d = InlineTaskDispatcher::new();
/// let ran = Arc::new(AtomicBool::new(false));
/// let r = ran.clone();
/// d.dispatch(Box::new(move || r.store(true, Ordering::SeqCst)));
/// assert!(ran.load(Ordering::SeqCst)); // already ran, on this thread
/// d.shutdown();
/// ```
pub struct InlineTaskDispatcher {
    state: Mutex<InlineState>,
    /// Signalled when a task ends or a caller parks in `shutdown`.
    idle: Condvar,
    panicked: AtomicUsize,
}

struct InlineState {
    shutting_down: bool,
    /// Tasks running now, on any thread.
    in_progress: usize,
    /// Tasks whose thread is inside `shutdown` called from that task;
    /// `0 ..= in_progress`.
    parked_in_shutdown: usize,
}

impl InlineTaskDispatcher {
    /// Creates a dispatcher that accepts tasks.
    pub fn new() -> Self {
        InlineTaskDispatcher {
            state: Mutex::new(InlineState {
                shutting_down: false,
                in_progress: 0,
                parked_in_shutdown: 0,
            }),
            idle: Condvar::new(),
            panicked: AtomicUsize::new(0),
        }
    }

    /// How many tasks have panicked so far (each was caught).
    pub fn panicked_tasks(&self) -> usize {
        self.panicked.load(Ordering::Relaxed)
    }

    fn id(&self) -> usize {
        // Stable while any task runs: `dispatch` borrows `self` throughout.
        self as *const Self as usize
    }
}

impl Default for InlineTaskDispatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskDispatcher for InlineTaskDispatcher {
    fn dispatch(&self, task: Task) {
        {
            let mut st = self.state.lock();
            if st.shutting_down {
                drop(st);
                drop(task);
                return;
            }
            st.in_progress += 1;
        }
        run_task(self.id(), task, &self.panicked);
        let mut st = self.state.lock();
        st.in_progress -= 1;
        // Only `shutdown` waits on `idle`, and only once it has set
        // `shutting_down` (under this lock): skip the wake-up (a system
        // call per task) otherwise.
        if st.shutting_down {
            self.idle.notify_all();
        }
    }

    fn shutdown(&self) {
        let own = tasks_on_this_thread(self.id());
        let mut st = self.state.lock();
        st.shutting_down = true;
        if own == 0 {
            while st.in_progress > 0 {
                st = wait(&self.idle, st);
            }
        } else {
            st.parked_in_shutdown += own;
            self.idle.notify_all();
            while st.in_progress > st.parked_in_shutdown {
                st = wait(&self.idle, st);
            }
            st.parked_in_shutdown -= own;
        }
    }
}

impl std::fmt::Debug for InlineTaskDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock();
        f.debug_struct("InlineTaskDispatcher")
            .field("in_progress", &st.in_progress)
            .field("shutting_down", &st.shutting_down)
            .finish()
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests;
