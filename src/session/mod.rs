//! The executor-side [`Session`]: owner of the [`Service`]s, the
//! [`TaskDispatcher`] and the attached [`ControllerAccess`], and the place
//! where detach and shutdown are sequenced.
//!
//! This is orc-rt's `Session` (seed 000). A *service* "provides something
//! (often resource management) to the Session, is owned by the Session,
//! and receives notifications from the Session when the controller
//! detaches / is detached, and when the Session is shut down."
//!
//! # Detach
//! [`Session::detach`] happens at most once in a session's life:
//! 1. the attached access (if any) is told to
//!    [`disconnect`](ControllerAccess::disconnect), with no lock held;
//! 2. every service is told [`on_detach`](Service::on_detach), in reverse
//!    order of addition.
//!
//! After that no controller can be attached again.
//!
//! # Shutdown
//! [`Session::shutdown`] is asynchronous. The first call enters the
//! "shutting down" state — the presence of a `ShutdownInfo`, as in the
//! seed — and starts the sequence on a new thread named
//! `orcwire-shutdown`, so it may be called from a dispatcher task or a
//! handler. The sequence is:
//! 1. enter "shutting down" (no attach from here on);
//! 2. detach, unless already done (steps 1–2 of detach above); if another
//!    thread's detach is under way, wait for it to finish;
//! 3. tell every service [`on_shutdown`](Service::on_shutdown), in reverse
//!    order of addition;
//! 4. [`TaskDispatcher::shutdown`], so every task has run or been dropped;
//! 5. mark shutdown complete and release the services;
//! 6. move the on-complete callback queue out under the lock, and run it
//!    outside the lock. (The seed's fix: "moving the SI->OnCompletes queue
//!    to a new variable under the Session mutex, then draining the new
//!    queue outside the mutex".)
//!
//! A later call adds its callback to the queue; a call after step 5 runs
//! its callback at once on its own thread, so no callback is lost or run
//! twice. Each service hears `on_detach` and `on_shutdown` at most once,
//! `on_detach` first. A panic in a notification or a queued callback is
//! caught (and printed by the panic hook) so the rest of the sequence
//! still runs.
//!
//! A service added after detach began is told `on_detach` at once; one
//! added after shutdown began is told `on_detach` and then `on_shutdown` at
//! once, on the adding thread, and is not kept by the session.
//!
//! # Handles
//! Handles are `std::sync::Arc` even in the loom build: loom's `Arc`
//! cannot be coerced to a trait object, and reference counting is not
//! among the protocols the loom models check. Every lock and condvar here
//! comes from [`crate::sync`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::dispatch::{is_dispatcher_thread, TaskDispatcher};
use crate::sync::{self, thread, Condvar, Mutex, MutexGuard};

/// Something the session owns and notifies of detach and shutdown.
///
/// Each method is called at most once per service, `on_detach` before
/// `on_shutdown`, with no session lock held (so it may call back into the
/// session). A service should not hold a strong [`Session`] handle until
/// shutdown, or the two keep each other alive.
pub trait Service: Send + Sync + 'static {
    /// The controller connection went away or was detached: no further
    /// calls will be made in either direction.
    fn on_detach(&self);
    /// The session is shutting down: release what the service manages.
    fn on_shutdown(&self);
}

/// The executor's connection to its controller, as the session sees it.
///
/// From the seed: "ControllerAccess objects may be detached from the
/// Session prior to Session shutdown, in which case no further calls may
/// be made in either direction, and any pending results (from calls made
/// that haven't returned yet) should return errors."
pub trait ControllerAccess: Send + Sync + 'static {
    /// Stops all calls in both directions and fails pending results.
    ///
    /// "The ControllerAccess::disconnect method must support concurrent
    /// entry on multiple threads, and all callers must block until they
    /// can guarantee that no further calls will be received or accepted."
    /// It must also return when called from inside one of its own handlers.
    fn disconnect(&self);
}

/// Why a session operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// [`Session::attach`] while a controller is attached.
    #[error("a controller is already attached to this session; detach it first")]
    AlreadyAttached,
    /// [`Session::attach`] after detach: a session serves one controller.
    #[error("this session's controller was detached and a session cannot be re-attached; create a new session")]
    Detached,
    /// [`Session::attach`] after shutdown began.
    #[error("the session is shutting down or shut down; no controller can be attached")]
    ShuttingDown,
    /// [`Session::wait_for_shutdown`] on a thread the shutdown would have
    /// to wait for.
    #[error("waiting for shutdown here would deadlock (on a dispatcher task thread or inside the detach/shutdown sequence); call `Session::shutdown` with a callback instead")]
    WouldDeadlock,
}

type OnComplete = Box<dyn FnOnce() + Send + 'static>;

enum DetachState {
    /// No detach yet; a controller may attach.
    NotDetached,
    /// Someone is running the detach steps; `owner` is its thread once
    /// known (a shutdown that owns the detach fills it in when it starts).
    InProgress {
        owner: Option<thread::ThreadId>,
    },
    Done,
}

/// What one detach run works on: taken under the lock when it begins.
struct DetachPlan {
    access: Option<Arc<dyn ControllerAccess>>,
    services: Vec<Arc<dyn Service>>,
}

/// What the shutdown sequence works on: taken under the lock when shutdown
/// begins.
struct ShutdownPlan {
    /// Every service at the start of shutdown, in addition order.
    services: Vec<Arc<dyn Service>>,
    /// The detach to run, if shutdown began it.
    detach: Option<DetachPlan>,
}

/// Present once shutdown has begun (the seed's `ShutdownInfo`).
struct ShutdownInfo {
    /// Taken by the runner when it starts.
    plan: Option<ShutdownPlan>,
    /// The thread running the sequence, while it runs.
    runner: Option<thread::ThreadId>,
    complete: bool,
    /// Callbacks for completion; drained once, by the runner, when
    /// `complete` is set.
    on_completes: Vec<OnComplete>,
}

struct State {
    /// In addition order; emptied when shutdown begins.
    services: Vec<Arc<dyn Service>>,
    access: Option<Arc<dyn ControllerAccess>>,
    detach: DetachState,
    shutdown: Option<ShutdownInfo>,
}

struct Inner {
    dispatcher: Arc<dyn TaskDispatcher>,
    state: Mutex<State>,
    /// Signalled when detach becomes `Done`.
    detach_done: Condvar,
}

/// A running executor session. Cheap to clone; every clone is the same
/// session. See the [module docs](self) for the detach and shutdown order.
///
/// Dropping the last handle of a session that was never shut down runs the
/// whole shutdown sequence on the dropping thread (orc-rt's `~Session`
/// waits for shutdown too).
///
/// ```
/// use std::sync::Arc;
/// use orcwire::{InlineTaskDispatcher, Service, Session};
///
/// struct Cache;
/// impl Service for Cache {
///     fn on_detach(&self) {}
///     fn on_shutdown(&self) { /* free resources */ }
/// }
///
/// let session = Session::new(Arc::new(InlineTaskDispatcher::new()));
/// let _cache = session.create_service(|| Cache);
/// session.wait_for_shutdown()?;
/// assert!(session.is_shut_down() && session.is_detached());
/// # Ok::<(), orcwire::SessionError>(())
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard)
}

/// Runs one notification or callback, keeping a panic from cutting the
/// sequence short.
fn run_caught(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

impl Session {
    /// Creates a session whose tasks run on `dispatcher`.
    pub fn new(dispatcher: Arc<dyn TaskDispatcher>) -> Self {
        Session {
            inner: Arc::new(Inner {
                dispatcher,
                state: Mutex::new(State {
                    services: Vec::new(),
                    access: None,
                    detach: DetachState::NotDetached,
                    shutdown: None,
                }),
                detach_done: Condvar::new(),
            }),
        }
    }

    /// The dispatcher that runs this session's tasks.
    pub fn dispatcher(&self) -> Arc<dyn TaskDispatcher> {
        self.inner.dispatcher.clone()
    }

    /// Hands `service` to the session and returns it for direct use.
    ///
    /// If detach has begun the service is told `on_detach` at once; if
    /// shutdown has begun, also `on_shutdown`, and the session does not
    /// keep it.
    ///
    /// # Panics
    /// Only if a notification made at once panics (on this thread).
    pub fn add_service<S: Service>(&self, service: Arc<S>) -> Arc<S> {
        let as_dyn: Arc<dyn Service> = service.clone();
        let (tell_detach, tell_shutdown) = {
            let mut st = self.inner.state.lock();
            let tell_detach = !matches!(st.detach, DetachState::NotDetached);
            let tell_shutdown = st.shutdown.is_some();
            if !tell_shutdown {
                st.services.push(as_dyn);
            }
            (tell_detach, tell_shutdown)
        };
        if tell_detach {
            service.on_detach();
        }
        if tell_shutdown {
            service.on_shutdown();
        }
        service
    }

    /// Builds a service with `make` and adds it as
    /// [`add_service`](Self::add_service) does.
    ///
    /// # Panics
    /// If `make` panics, or a notification made at once panics.
    pub fn create_service<S: Service>(&self, make: impl FnOnce() -> S) -> Arc<S> {
        self.add_service(Arc::new(make()))
    }

    /// Attaches the controller connection.
    ///
    /// # Errors
    /// [`SessionError::ShuttingDown`] once shutdown began,
    /// [`SessionError::Detached`] after a detach,
    /// [`SessionError::AlreadyAttached`] if one is attached.
    pub fn attach(&self, access: Arc<dyn ControllerAccess>) -> Result<(), SessionError> {
        let mut st = self.inner.state.lock();
        if st.shutdown.is_some() {
            return Err(SessionError::ShuttingDown);
        }
        if !matches!(st.detach, DetachState::NotDetached) {
            return Err(SessionError::Detached);
        }
        if st.access.is_some() {
            return Err(SessionError::AlreadyAttached);
        }
        st.access = Some(access);
        Ok(())
    }

    /// Detaches the controller: disconnects the access (if attached), then
    /// tells every service `on_detach` in reverse order of addition.
    ///
    /// Idempotent. A caller that finds another thread's detach under way
    /// also calls `disconnect` (which supports concurrent entry) and waits
    /// until the services have been told — except on a dispatcher task
    /// thread or inside the detach itself (a service calling `detach`),
    /// where waiting could deadlock: there it returns once `disconnect`
    /// has returned.
    pub fn detach(&self) {
        self.inner.detach();
    }

    /// Starts shutdown (see the [module docs](self) for the order) and
    /// arranges for `on_complete` to run when it has finished.
    ///
    /// Never blocks on the sequence: the first call runs it on a new
    /// `orcwire-shutdown` thread; `on_complete` runs there, or at once on
    /// this thread if shutdown has already completed.
    ///
    /// If the OS refuses the thread, the sequence runs on this thread
    /// before `shutdown` returns. On a dispatcher task thread that fallback
    /// cannot wait for the calling task itself (see
    /// [`TaskDispatcher::shutdown`]) nor for another thread's detach under
    /// way: completion is then reported without those waits rather than
    /// never.
    pub fn shutdown(&self, on_complete: impl FnOnce() + Send + 'static) {
        {
            let mut st = self.inner.state.lock();
            if let Some(si) = st.shutdown.as_mut() {
                if si.complete {
                    drop(st);
                    on_complete();
                } else {
                    si.on_completes.push(Box::new(on_complete));
                }
                return;
            }
            Inner::begin_shutdown(&mut st, Some(Box::new(on_complete)));
        }
        let inner = self.inner.clone();
        let spawned = thread::Builder::new()
            .name("orcwire-shutdown".to_owned())
            .spawn(move || inner.run_shutdown());
        if spawned.is_err() {
            self.inner.run_shutdown();
        }
    }

    /// Shuts down (if not yet begun) and blocks until shutdown completes.
    ///
    /// # Errors
    /// [`SessionError::WouldDeadlock`], having started nothing, if shutdown
    /// has not completed and this thread is a dispatcher task thread or the
    /// one running the detach or shutdown sequence (a service or
    /// `disconnect` calling in): use [`shutdown`](Self::shutdown) with a
    /// callback there.
    pub fn wait_for_shutdown(&self) -> Result<(), SessionError> {
        let me = thread::current().id();
        {
            let st = self.inner.state.lock();
            if let Some(si) = &st.shutdown {
                if si.complete {
                    return Ok(());
                }
                if si.runner == Some(me) {
                    return Err(SessionError::WouldDeadlock);
                }
            }
            if let DetachState::InProgress { owner: Some(o) } = st.detach {
                if o == me {
                    return Err(SessionError::WouldDeadlock);
                }
            }
        }
        if is_dispatcher_thread() {
            return Err(SessionError::WouldDeadlock);
        }
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = done.clone();
        self.shutdown(move || {
            *signal.0.lock() = true;
            signal.1.notify_all();
        });
        let mut finished = done.0.lock();
        while !*finished {
            finished = wait(&done.1, finished);
        }
        Ok(())
    }

    /// Whether shutdown has completed (step 5 of the sequence).
    pub fn is_shut_down(&self) -> bool {
        self.inner
            .state
            .lock()
            .shutdown
            .as_ref()
            .is_some_and(|si| si.complete)
    }

    /// Whether shutdown has begun (it may not have completed).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.state.lock().shutdown.is_some()
    }

    /// Whether detach has completed: the access was disconnected and every
    /// service told.
    pub fn is_detached(&self) -> bool {
        matches!(self.inner.state.lock().detach, DetachState::Done)
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("Session")
            .field("services", &st.services.len())
            .field("attached", &st.access.is_some())
            .field("detached", &matches!(st.detach, DetachState::Done))
            .field("shutting_down", &st.shutdown.is_some())
            .field(
                "shut_down",
                &st.shutdown.as_ref().is_some_and(|si| si.complete),
            )
            .finish()
    }
}

impl Inner {
    /// Marks detach as begun and snapshots what it works on.
    fn begin_detach(st: &mut State, owner: Option<thread::ThreadId>) -> DetachPlan {
        st.detach = DetachState::InProgress { owner };
        DetachPlan {
            access: st.access.clone(),
            services: st.services.clone(),
        }
    }

    /// Detach steps 1–2, then `Done`.
    fn run_detach(&self, plan: DetachPlan) {
        if let Some(access) = &plan.access {
            access.disconnect();
        }
        for service in plan.services.iter().rev() {
            run_caught(|| service.on_detach());
        }
        let access = {
            let mut st = self.state.lock();
            st.detach = DetachState::Done;
            st.access.take()
        };
        self.detach_done.notify_all();
        // The access (an endpoint, say) may do real work when dropped:
        // never under the lock.
        drop(access);
    }

    fn detach(&self) {
        let me = thread::current().id();
        let mut st = self.state.lock();
        match st.detach {
            DetachState::NotDetached => {
                let plan = Self::begin_detach(&mut st, Some(me));
                drop(st);
                self.run_detach(plan);
            }
            DetachState::InProgress { owner } => {
                let access = st.access.clone();
                drop(st);
                if owner == Some(me) {
                    return;
                }
                if let Some(access) = access {
                    access.disconnect();
                }
                self.wait_detach_done();
            }
            DetachState::Done => {}
        }
    }

    /// Waits for someone else's detach, unless this thread may be the one
    /// it is waiting for.
    fn wait_detach_done(&self) {
        if is_dispatcher_thread() {
            return;
        }
        let me = thread::current().id();
        let mut st = self.state.lock();
        loop {
            match st.detach {
                DetachState::Done => return,
                DetachState::InProgress { owner: Some(o) } if o == me => return,
                _ => st = wait(&self.detach_done, st),
            }
        }
    }

    /// Step 1: enter "shutting down", taking the services and, if no detach
    /// has begun, the detach too (so a service added from now on is told
    /// at once and never also by the sequence).
    fn begin_shutdown(st: &mut State, on_complete: Option<OnComplete>) {
        let detach = match st.detach {
            DetachState::NotDetached => Some(Self::begin_detach(st, None)),
            _ => None,
        };
        st.shutdown = Some(ShutdownInfo {
            plan: Some(ShutdownPlan {
                services: std::mem::take(&mut st.services),
                detach,
            }),
            runner: None,
            complete: false,
            on_completes: on_complete.into_iter().collect(),
        });
    }

    /// Steps 2–6, on whichever thread runs the sequence.
    fn run_shutdown(&self) {
        let me = thread::current().id();
        let plan = {
            let mut st = self.state.lock();
            let plan = st.shutdown.as_mut().and_then(|si| {
                si.runner = Some(me);
                si.plan.take()
            });
            if plan.as_ref().is_some_and(|p| p.detach.is_some()) {
                st.detach = DetachState::InProgress { owner: Some(me) };
            }
            plan
        };
        // Only `begin_shutdown` makes a plan and only one runner is started
        // per plan, so this is always `Some`.
        let Some(ShutdownPlan { services, detach }) = plan else {
            return;
        };
        match detach {
            Some(detach) => self.run_detach(detach),
            None => self.wait_detach_done(),
        }
        for service in services.iter().rev() {
            run_caught(|| service.on_shutdown());
        }
        self.dispatcher.shutdown();
        if sync::is_broken("session") {
            // Loom must-fail variant (seed 000's bug): drain the callbacks
            // in one critical section and mark completion in another, so a
            // `shutdown` call in between queues a callback nobody runs.
            let callbacks = self
                .state
                .lock()
                .shutdown
                .as_mut()
                .map(|si| std::mem::take(&mut si.on_completes))
                .unwrap_or_default();
            if let Some(si) = self.state.lock().shutdown.as_mut() {
                si.complete = true;
                si.runner = None;
            }
            drop(services);
            callbacks.into_iter().for_each(run_caught);
            return;
        }
        let callbacks = {
            let mut st = self.state.lock();
            match st.shutdown.as_mut() {
                Some(si) => {
                    si.complete = true;
                    si.runner = None;
                    std::mem::take(&mut si.on_completes)
                }
                None => Vec::new(),
            }
        };
        drop(services);
        for callback in callbacks {
            run_caught(callback);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let never_started = {
            let mut st = self.state.lock();
            let never_started = st.shutdown.is_none();
            if never_started {
                Self::begin_shutdown(&mut st, None);
            }
            never_started
        };
        // If shutdown had started, its runner held a handle, so it has
        // finished by now.
        if never_started {
            self.run_shutdown();
        }
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests;
