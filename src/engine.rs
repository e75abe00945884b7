//! The connection engine behind [`Endpoint`](crate::Endpoint): who reads
//! the inbound side, who runs handlers, and the disconnect protocol.
//!
//! The protocol (roles, deadlock freedom, disconnect) is documented for
//! users in [`crate::endpoint`]; this module implements it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use crate::buffer::WrapperFunctionBuffer;
use crate::dispatch::TaskDispatcher;
use crate::gate::Gate;
use crate::handler::{HandlerTable, Responder, ResultSink};
use crate::message::{Message, Opcode, RESULT_ERROR, RESULT_OK};
use crate::pending::{CallError, CallHost, PendingTable};
use crate::sps::SetupInfo;
use crate::sync::{
    fence, thread, Arc, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Condvar, Mutex, MutexGuard,
    Ordering,
};
use crate::transport::{Received, Transport, TransportError};

/// How often an idle worker looks at a free lead while handlers run, and
/// takes it (results for futures keep flowing at this pace even when every
/// other thread is busy in a handler).
pub const HANDOVER: Duration = Duration::from_millis(1);

/// How long an idle worker sleeps when nothing asks for it: the longest a
/// handler that blocks without sending can leave the lead free before the
/// standby notices (starting a handler wakes nobody; that would cost a
/// system call per call).
const IDLE_LOOK: Duration = Duration::from_millis(100);

/// How long a parked caller sleeps before it looks at the lead again
/// (its result wakes it at once).
const LOOK_AGAIN: Duration = Duration::from_millis(10);

/// How the engine's waits end: the timing policy, a parameter of the
/// engine so that the loom models run the same code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timing {
    /// Production. A worker that stands aside for callers, for the grace
    /// after them, or as a standby looks again after a timeout, so that no
    /// caller pays a wake-up per call (a system call, and on a shared CPU
    /// a context switch).
    Polled,
    /// Every wait ends by a notification, none by a timeout: what a model
    /// checker needs, since time does not pass under loom (its timed waits
    /// wait forever). The last caller out always wakes a worker that stood
    /// aside for it, there is no grace period, and a worker that starts a
    /// handler wakes an idle one to lead.
    Notified,
}

impl Timing {
    /// The policy of this build: `Notified` under `--cfg orcwire_loom`.
    const fn of_build() -> Self {
        if cfg!(orcwire_loom) {
            Self::Notified
        } else {
            Self::Polled
        }
    }
}

/// Refusals waiting to be sent beyond this mean the peer floods calls
/// without reading our results: a protocol error.
const MAX_REFUSALS: usize = 1 << 16;

/// Tunables of an endpoint.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// How long `disconnect()` waits for in-flight sends to finish and for
    /// the peer to acknowledge the hangup before it closes the transport
    /// anyway. Default 1 s.
    pub hangup_timeout: Duration,
    /// How long the controller waits for the executor's `Setup` message.
    /// Default 10 s.
    pub setup_timeout: Duration,
    /// After the last synchronous waiter leaves, how long the worker stays
    /// aside before it takes the lead again. A caller that makes
    /// synchronous calls back to back then never has to interrupt it.
    /// Default 200 µs.
    pub reader_grace: Duration,
    /// Calls waiting for a result at once (slots of the pending table,
    /// rounded up to a power of two). One more fails with
    /// [`CallError::TooManyPending`]. Default 1024.
    pub max_pending_calls: usize,
    /// Incoming calls queued while every worker is busy. One more is
    /// answered at once with a "busy" error result. Default 1024.
    pub max_queued_calls: usize,
    /// Most worker threads this connection starts (they run handlers and
    /// lead while nobody else does). At least 1. Default 16.
    pub max_workers: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            hangup_timeout: Duration::from_secs(1),
            setup_timeout: Duration::from_secs(10),
            reader_grace: Duration::from_micros(200),
            max_pending_calls: 1024,
            max_queued_calls: 1024,
            max_workers: 16,
        }
    }
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectReason {
    /// `disconnect()` was called on this side.
    #[error("disconnected on this side")]
    Local,
    /// The peer sent `Hangup` or closed its end.
    #[error("the peer hung up")]
    PeerHungUp,
    /// The peer process died.
    #[error("the peer process died")]
    PeerDied,
    /// The peer broke the protocol; the text says how.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The transport failed.
    #[error("transport failure: {0}")]
    Transport(TransportError),
}

impl DisconnectReason {
    fn from_transport(e: TransportError) -> Self {
        match e {
            TransportError::PeerHungUp => Self::PeerHungUp,
            TransportError::PeerDied => Self::PeerDied,
            TransportError::Closed => Self::Local,
            TransportError::Protocol(p) => Self::Protocol(p),
            other => Self::Transport(other),
        }
    }
}

/// `lead` values.
const FREE: u32 = 0;
/// A worker leads (it may be asleep in `recv`: interrupt it).
const WORKER: u32 = 1;
/// A caller leads.
const CALLER: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    Disconnecting,
    Disconnected,
}

struct ConnState {
    phase: Phase,
    /// The peer said `Hangup`, closed its end, or died.
    peer_gone: bool,
    reason: Option<DisconnectReason>,
}

type DisconnectCallback = Box<dyn FnOnce(&DisconnectReason) + Send + 'static>;

/// An incoming call not yet run.
struct Incoming {
    seq: u64,
    tag: u64,
    args: WrapperFunctionBuffer,
}

/// The workers' shared state (the slow path: queue, refusals, pool size).
struct Work {
    queue: VecDeque<Incoming>,
    /// Sequence numbers of calls refused as busy, to answer.
    refusals: Vec<u64>,
    /// A disconnect found while a caller led, for a worker to carry out.
    disconnect: Option<DisconnectReason>,
    workers: usize,
    /// Worker threads ever started (compared with [`Exits`]).
    spawned: usize,
    /// Their handles, until `disconnect` joins the ones that exited.
    handles: Vec<thread::JoinHandle<()>>,
    /// Workers parked on `work_cv`.
    idle: usize,
    /// Workers running a handler.
    busy: usize,
    stop: bool,
}

/// What one turn of leading produced for the thread to do afterwards.
#[derive(Default)]
struct Turn {
    /// A call a worker read: it runs it after giving up the lead.
    call: Option<Incoming>,
    disconnect: Option<DisconnectReason>,
    /// A caller read an incoming call (and queued or refused it).
    saw_call: bool,
}

pub(crate) struct Inner {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) gate: Gate,
    pub(crate) pending: PendingTable,
    pub(crate) handlers: HandlerTable,
    /// `None`: handlers run on the connection's workers.
    pub(crate) dispatcher: Option<Arc<dyn TaskDispatcher>>,
    pub(crate) config: EndpointConfig,
    pub(crate) setup: SetupInfo,
    /// [`FREE`], [`WORKER`] or [`CALLER`].
    lead: AtomicU32,
    /// The transport reported a terminal error: nobody reads again (each
    /// read would fail at once; a thread that kept taking the lead would
    /// spin until disconnect stops the workers). Only ever set.
    rx_dead: AtomicBool,
    /// Threads inside a synchronous wait (they want the lead).
    callers: AtomicUsize,
    /// Advanced each time a caller leaves its wait.
    caller_epoch: AtomicU64,
    /// Callers parked because another thread leads (`followers` holds
    /// their threads); the lead's release wakes them.
    follower_count: AtomicUsize,
    followers: Mutex<Vec<thread::Thread>>,
    /// A worker stands aside for callers and wants the last caller out to
    /// wake it (when it backed off its polling, or always under
    /// [`Timing::Notified`]). Set under the work lock, then `callers` is
    /// read again; the last caller lowers `callers`, then reads this: one
    /// of the two sees the other (a SeqCst fence on both ends).
    workers_backed_off: AtomicBool,
    timing: Timing,
    work: Mutex<Work>,
    work_cv: Condvar,
    exits: Arc<Exits>,
    conn: Mutex<ConnState>,
    conn_cv: Condvar,
    on_disconnect: Mutex<Vec<DisconnectCallback>>,
    /// Makes a user handle ([`crate::Endpoint`]) while one is alive, for
    /// [`Responder::endpoint`]. Set by `Endpoint::start` before the first
    /// worker runs; it holds only a weak reference, so it keeps nothing
    /// alive.
    pub(crate) user_handle: Mutex<Option<UserHandleFn>>,
}

/// See [`Inner::user_handle`].
pub(crate) type UserHandleFn = Box<dyn Fn() -> Option<crate::Endpoint> + Send + Sync>;

// Which endpoint's handler this thread is running (its `Inner` address),
// for the would-deadlock check of a synchronous wait inside a handler.
#[cfg(not(orcwire_loom))]
std::thread_local! {
    static IN_HANDLER_OF: Cell<usize> = const { Cell::new(0) };
}
#[cfg(orcwire_loom)]
loom::thread_local! {
    static IN_HANDLER_OF: Cell<usize> = Cell::new(0);
}

// Which endpoint this thread is an idle worker of (0 while it runs a
// handler, and on every other thread): disconnect does not wait for itself.
#[cfg(not(orcwire_loom))]
std::thread_local! {
    static IDLE_WORKER_OF: Cell<usize> = const { Cell::new(0) };
}
#[cfg(orcwire_loom)]
loom::thread_local! {
    static IDLE_WORKER_OF: Cell<usize> = Cell::new(0);
}

/// The worker threads that have left their loop, recorded *after* each
/// dropped its reference to the connection: once `disconnect` sees them
/// all, no idle engine thread touches the connection any more, and joining
/// them waits only for their thread teardown.
#[derive(Default)]
struct Exits {
    threads: Mutex<Vec<thread::ThreadId>>,
    cv: Condvar,
}

/// Wakes a parked thread: the waker a synchronous waiter registers in its
/// pending-call slot. One per thread, made once (no allocation per wait).
struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

#[cfg(not(orcwire_loom))]
std::thread_local! {
    static THREAD_WAKER: Waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
}
#[cfg(orcwire_loom)]
loom::thread_local! {
    static THREAD_WAKER: Waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
}

/// Parks the calling thread until unparked or `deadline` (spurious wakes
/// allowed: callers re-check).
fn park_until(deadline: Option<Instant>) {
    #[cfg(not(orcwire_loom))]
    match deadline {
        None => thread::park(),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                thread::park_timeout(left);
            }
        }
    }
    // Under loom time does not pass: park until unparked (every park here
    // has a registered waker or follower entry that ends it).
    #[cfg(orcwire_loom)]
    {
        let _ = deadline;
        thread::park();
    }
}

fn wait_cv<'a, T>(
    cv: &Condvar,
    g: MutexGuard<'a, T>,
    timeout: Option<Duration>,
) -> MutexGuard<'a, T> {
    match timeout {
        None => cv.wait(g),
        Some(d) => cv.wait_timeout(g, d).0,
    }
}

impl Inner {
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        handlers: HandlerTable,
        dispatcher: Option<Arc<dyn TaskDispatcher>>,
        config: EndpointConfig,
        setup: SetupInfo,
    ) -> Arc<Self> {
        let queue = VecDeque::with_capacity(config.max_queued_calls.clamp(1, 1 << 16));
        Arc::new(Self {
            transport,
            gate: Gate::new(),
            pending: PendingTable::new(config.max_pending_calls),
            handlers,
            dispatcher,
            setup,
            lead: AtomicU32::new(FREE),
            rx_dead: AtomicBool::new(false),
            callers: AtomicUsize::new(0),
            caller_epoch: AtomicU64::new(0),
            follower_count: AtomicUsize::new(0),
            // Sized up front: the first follower must not allocate on a
            // call's path.
            followers: Mutex::new(Vec::with_capacity(8)),
            workers_backed_off: AtomicBool::new(false),
            timing: Timing::of_build(),
            work: Mutex::new(Work {
                queue,
                refusals: Vec::new(),
                disconnect: None,
                workers: 0,
                spawned: 0,
                handles: Vec::new(),
                idle: 0,
                busy: 0,
                stop: false,
            }),
            work_cv: Condvar::new(),
            exits: Arc::new(Exits::default()),
            conn: Mutex::new(ConnState {
                phase: Phase::Open,
                peer_gone: false,
                reason: None,
            }),
            conn_cv: Condvar::new(),
            on_disconnect: Mutex::new(Vec::new()),
            user_handle: Mutex::new(None),
            config,
        })
    }

    fn id(&self) -> usize {
        self as *const Self as usize
    }

    /// Starts the first worker.
    pub(crate) fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let mut w = self.work.lock();
        self.spawn_worker(&mut w)
    }

    /// Starts one more worker (the caller holds the work lock).
    fn spawn_worker(self: &Arc<Self>, w: &mut Work) -> std::io::Result<()> {
        let me = Arc::clone(self);
        let exits = Arc::clone(&self.exits);
        let handle = thread::Builder::new()
            .name("orcwire-rx".into())
            .spawn(move || {
                IDLE_WORKER_OF.with(|c| c.set(me.id()));
                // Consumes (drops) this thread's reference first.
                me.worker_loop();
                exits.threads.lock().push(thread::current().id());
                exits.cv.notify_all();
            })?;
        w.workers += 1;
        w.spawned += 1;
        w.handles.push(handle);
        Ok(())
    }

    // ---------------------------------------------------------------
    // The lead

    fn try_lead(&self, who: u32) -> bool {
        // SYNC POINT: lead. Acquire pairs with the Release in
        // `release_lead`: the previous leader's reads of the transport
        // happened before ours.
        self.lead
            .compare_exchange(FREE, who, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    fn release_lead(&self) {
        // SYNC POINT: lead (Release half, see `try_lead`).
        self.lead.store(FREE, Ordering::Release);
        // SYNC POINT: follower hand-over. A follower announces itself, then
        // re-checks the lead; we free the lead, then check for followers.
        // The two SeqCst fences are totally ordered, so one of us sees the
        // other: it does not park, or we unpark it. (Fences, not SeqCst
        // accesses: loom models fences exactly, and costs are the same.)
        fence(Ordering::SeqCst);
        if self.follower_count.load(Ordering::Relaxed) > 0 {
            for t in self.followers.lock().iter() {
                t.unpark();
            }
        }
    }

    /// Reads and routes messages while leading. A caller (`own` is its
    /// call) stops once its result is in or `deadline` passes; a worker
    /// stops at the first call it reads (to run it) or when a caller wants
    /// the lead.
    fn lead_turn(self: &Arc<Self>, own: Option<u64>, deadline: Option<Instant>) -> Turn {
        let mut turn = Turn::default();
        loop {
            match own {
                Some(seq) if self.pending.is_done(seq) => return turn,
                None if self.callers.load(Ordering::Relaxed) > 0 => return turn,
                _ => {}
            }
            match self.transport.recv(deadline) {
                Ok(Received::Message(msg)) => {
                    self.route(msg, own.is_none(), &mut turn);
                    if turn.call.is_some() || turn.disconnect.is_some() || turn.saw_call {
                        return turn;
                    }
                }
                Ok(Received::TimedOut) | Ok(Received::Interrupted) => return turn,
                Err(e) => {
                    // SYNC POINT: reading dead. Pairs with the Acquire
                    // loads before every try to lead.
                    self.rx_dead.store(true, Ordering::Release);
                    self.note_peer_gone();
                    turn.disconnect = Some(DisconnectReason::from_transport(e));
                    return turn;
                }
            }
        }
    }

    /// The outcome a `Result` message carries, or why it is malformed.
    fn outcome_of(msg: Message) -> Result<(u64, WrapperFunctionBuffer), String> {
        match msg.tag {
            RESULT_OK => Ok((msg.seq, msg.payload)),
            RESULT_ERROR => Ok((
                msg.seq,
                WrapperFunctionBuffer::out_of_band_error(
                    String::from_utf8_lossy(msg.payload.as_slice()).into_owned(),
                ),
            )),
            other => Err(format!(
                "result for sequence number {} has unknown kind {other}",
                msg.seq
            )),
        }
    }

    /// Routes one message. Never blocks.
    fn route(self: &Arc<Self>, msg: Message, worker: bool, turn: &mut Turn) {
        match msg.opcode {
            Opcode::Result => match Self::outcome_of(msg) {
                Ok((seq, outcome)) => {
                    if let Err(e) = self.pending.complete(seq, Ok(outcome)) {
                        self.protocol_error(e.to_string(), turn);
                    }
                }
                Err(what) => self.protocol_error(what, turn),
            },
            Opcode::CallWrapper => {
                if self.gate.is_closed() {
                    return; // Disconnecting: the peer fails this call.
                }
                let call = Incoming {
                    seq: msg.seq,
                    tag: msg.tag,
                    args: msg.payload,
                };
                if worker {
                    turn.call = Some(call);
                    return;
                }
                turn.saw_call = true;
                let mut w = self.work.lock();
                if !self.enqueue(&mut w, call) {
                    drop(w);
                    self.protocol_error(
                        "the peer keeps sending calls while it does not read their results".into(),
                        turn,
                    );
                }
            }
            Opcode::Hangup => {
                self.note_peer_gone();
                turn.disconnect = Some(DisconnectReason::PeerHungUp);
            }
            Opcode::Setup => self.protocol_error(
                "a second Setup message arrived after the connection was set up".into(),
                turn,
            ),
        }
    }

    fn protocol_error(&self, what: String, turn: &mut Turn) {
        // The peer cannot be trusted to acknowledge anything any more.
        self.note_peer_gone();
        self.transport.close();
        turn.disconnect = Some(DisconnectReason::Protocol(what));
    }

    fn note_peer_gone(&self) {
        let mut c = self.conn.lock();
        c.peer_gone = true;
        self.conn_cv.notify_all();
    }

    fn peer_gone(&self) -> bool {
        self.conn.lock().peer_gone
    }

    /// A send found the transport ended (the peer hung up or died, or it
    /// broke the protocol): start the disconnect with that reason now,
    /// rather than when the reader next looks, so the reason the user sees
    /// is the cause and not a later local `disconnect()`.
    fn transport_ended(self: &Arc<Self>, e: TransportError) {
        let mut w = self.work.lock();
        w.disconnect
            .get_or_insert(DisconnectReason::from_transport(e));
        self.wake_or_spawn(&mut w);
    }

    /// The `on_wait` hook of every send: the sender is about to sleep for
    /// room, so make sure somebody reads meanwhile.
    fn ensure_reader(self: &Arc<Self>) {
        if self.lead.load(Ordering::Acquire) != FREE || self.callers.load(Ordering::Relaxed) > 0 {
            return; // someone leads, or a caller is about to
        }
        self.wake_or_spawn(&mut self.work.lock());
    }

    /// Sends on the transport with the engine's hook.
    fn send(
        self: &Arc<Self>,
        opcode: Opcode,
        seq: u64,
        tag: u64,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), TransportError> {
        self.transport
            .send_until(opcode, seq, tag, payload, deadline, &|| {
                self.ensure_reader()
            })
    }

    // ---------------------------------------------------------------
    // Callers

    /// Blocks until call `seq` is done or `deadline` passes, leading when
    /// the lead is free; never runs a handler.
    fn wait_for_call(
        self: &Arc<Self>,
        seq: u64,
        deadline: Option<Instant>,
        registered: &mut bool,
    ) -> Result<(), CallError> {
        self.callers.fetch_add(1, Ordering::SeqCst);
        let mut active = true;
        let r = self.caller_loop(seq, deadline, &mut active, registered);
        if active {
            self.caller_leaves();
        }
        r
    }

    /// A caller stops wanting the lead.
    fn caller_leaves(&self) {
        if self.callers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.caller_epoch.fetch_add(1, Ordering::Relaxed);
            // SYNC POINT: caller exit. Pairs with the fence in
            // `worker_loop`: we lowered `callers`, then read the flag; the
            // worker raised the flag, then reads `callers`.
            fence(Ordering::SeqCst);
            if self.workers_backed_off.swap(false, Ordering::Relaxed) {
                let _w = self.work.lock();
                self.work_cv.notify_all();
            }
        }
    }

    /// The caller's wait. While `active` it counts in `callers` and so
    /// keeps the workers from leading; once it reads an incoming call it
    /// turns passive: the peer is calling us while we wait (a long call, or
    /// a re-entrant chain), so a worker should lead and run those calls on
    /// the thread that reads them, and this caller's result reaches it by
    /// its waker. A passive caller still takes a lead that lies free.
    fn caller_loop(
        self: &Arc<Self>,
        seq: u64,
        deadline: Option<Instant>,
        active: &mut bool,
        registered: &mut bool,
    ) -> Result<(), CallError> {
        let mut interrupted = false;
        loop {
            if self.pending.is_done(seq) || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            // SYNC POINT: reading dead (Acquire half, see `lead_turn`).
            if self.rx_dead.load(Ordering::Acquire) {
                // Nothing more will be read: disconnect's `fail_all`
                // completes this call and wakes us.
                self.park_for_result(seq, deadline, registered, || true);
                continue;
            }
            if !*active && !self.workers_saturated() {
                // The workers lead and run the peer's calls; our result
                // comes by our waker. Look again now and then in case
                // every worker gets stuck in a handler.
                self.park_for_result(seq, deadline, registered, || true);
                self.check_would_deadlock()?;
                continue;
            }
            if self.try_lead(CALLER) {
                interrupted = false;
                let turn = self.lead_turn(Some(seq), deadline);
                self.release_lead();
                let saw_call = turn.saw_call;
                self.after_caller_turn(turn);
                self.check_would_deadlock()?;
                if saw_call && *active {
                    *active = false;
                    self.caller_leaves();
                    // Let the woken worker take the lead first.
                    self.park_as_follower(seq, deadline, registered);
                }
                continue;
            }
            if self.is_disconnected() {
                // Step 5 completes every call; nothing more will be read.
                return Ok(());
            }
            // Someone else leads. A worker may be asleep in `recv`: ask it
            // once to stand aside (it sees `callers > 0` and releases).
            if *active && !interrupted && self.lead.load(Ordering::Relaxed) == WORKER {
                interrupted = true;
                self.transport.interrupt_recv();
            }
            self.park_as_follower(seq, deadline, registered);
            self.check_would_deadlock()?;
        }
    }

    /// Parks until call `seq`'s result wakes us, `deadline`, or
    /// [`LOOK_AGAIN`] (spurious returns are fine: callers re-check), unless
    /// `still_wait` says otherwise once the waker is in place.
    fn park_for_result(
        &self,
        seq: u64,
        deadline: Option<Instant>,
        registered: &mut bool,
        still_wait: impl Fn() -> bool,
    ) {
        THREAD_WAKER.with(|w| self.pending.register_waker(seq, w));
        *registered = true;
        if !self.pending.is_done(seq) && still_wait() {
            let cap = Instant::now() + LOOK_AGAIN;
            park_until(Some(deadline.map_or(cap, |d| d.min(cap))));
        }
    }

    /// Parks until our result comes, the lead is released, or `deadline`.
    fn park_as_follower(&self, seq: u64, deadline: Option<Instant>, registered: &mut bool) {
        self.followers.lock().push(thread::current());
        self.follower_count.fetch_add(1, Ordering::Relaxed);
        // SYNC POINT: follower hand-over (see `release_lead`).
        fence(Ordering::SeqCst);
        self.park_for_result(seq, deadline, registered, || {
            self.lead.load(Ordering::Relaxed) != FREE
        });
        self.follower_count.fetch_sub(1, Ordering::Relaxed);
        let me = thread::current().id();
        let mut f = self.followers.lock();
        if let Some(i) = f.iter().position(|t| t.id() == me) {
            f.swap_remove(i);
        }
    }

    fn after_caller_turn(self: &Arc<Self>, turn: Turn) {
        if let Some(r) = turn.disconnect {
            let mut w = self.work.lock();
            w.disconnect.get_or_insert(r);
            self.wake_or_spawn(&mut w);
        }
    }

    /// Queues an incoming call for a worker, or refuses it as busy when the
    /// queue is full; `false` when even the refusals overflow.
    fn enqueue(self: &Arc<Self>, w: &mut Work, call: Incoming) -> bool {
        if w.queue.len() < self.config.max_queued_calls.max(1) {
            w.queue.push_back(call);
        } else if w.refusals.len() < MAX_REFUSALS {
            w.refusals.push(call.seq);
        } else {
            return false;
        }
        self.wake_or_spawn(w);
        true
    }

    /// Whether a worker may start a handler now: unless it is the only
    /// one allowed, another worker must stay free to read (or be startable),
    /// so results and refusals keep flowing while handlers run.
    fn may_run_handler(&self, w: &Work) -> bool {
        let max = self.config.max_workers.max(1);
        max == 1 || w.workers < max || w.workers - w.busy >= 2
    }

    /// Wakes an idle worker, or starts one if none is idle (and the cap
    /// allows). Every idle worker re-checks everything it could do, so one
    /// is enough.
    fn wake_or_spawn(self: &Arc<Self>, w: &mut Work) {
        if w.stop {
            return;
        }
        if w.idle > 0 {
            self.work_cv.notify_one();
        } else if w.workers < self.config.max_workers.max(1) {
            let _ = self.spawn_worker(w);
        }
    }

    /// Whether no worker is idle and no more can start: then nobody but a
    /// caller can lead.
    fn workers_saturated(&self) -> bool {
        let w = self.work.lock();
        w.idle == 0 && w.workers >= self.config.max_workers.max(1)
    }

    /// A caller inside one of our handlers whose wait needs a handler run
    /// that no worker can take: it would wait for itself.
    fn check_would_deadlock(&self) -> Result<(), CallError> {
        if IN_HANDLER_OF.with(|h| h.get()) != self.id() {
            return Ok(());
        }
        let w = self.work.lock();
        if !w.queue.is_empty() && w.idle == 0 && w.busy >= self.config.max_workers.max(1) {
            return Err(CallError::WouldDeadlock(
                "every worker of this connection is inside a handler (this one included) and the \
                 peer's next call cannot run; raise EndpointConfig::max_workers, or answer through \
                 the Responder later instead of waiting inside the handler",
            ));
        }
        Ok(())
    }

    // ---------------------------------------------------------------
    // Workers

    fn worker_loop(self: Arc<Self>) {
        let mut last_epoch = self.caller_epoch.load(Ordering::Relaxed);
        let base = self.config.reader_grace.max(Duration::from_micros(50));
        let mut poll = base;
        let mut w = self.work.lock();
        loop {
            if w.stop {
                w.workers -= 1;
                self.work_cv.notify_all();
                return;
            }
            if let Some(reason) = w.disconnect.take() {
                drop(w);
                self.disconnect_with(reason, false);
                w = self.work.lock();
                continue;
            }
            if !w.refusals.is_empty() {
                let refusals = std::mem::take(&mut w.refusals);
                drop(w);
                self.send_refusals(&refusals);
                w = self.work.lock();
                continue;
            }
            if self.may_run_handler(&w) {
                if let Some(call) = w.queue.pop_front() {
                    w = self.run_call(w, call);
                    continue;
                }
            }
            // Lead if no caller wants to and none left just now.
            let callers = self.callers.load(Ordering::Relaxed);
            let epoch = self.caller_epoch.load(Ordering::Relaxed);
            // SYNC POINT: reading dead (Acquire half, see `lead_turn`).
            let dead = self.rx_dead.load(Ordering::Acquire);
            if !dead && callers == 0 && epoch == last_epoch && self.try_lead(WORKER) {
                drop(w);
                poll = base;
                let turn = self.lead_turn(None, None);
                self.release_lead();
                w = self.work.lock();
                if let Some(r) = turn.disconnect {
                    w.disconnect.get_or_insert(r);
                }
                if let Some(call) = turn.call {
                    if self.may_run_handler(&w) {
                        w = self.run_call(w, call);
                    } else if !self.enqueue(&mut w, call) {
                        w.disconnect.get_or_insert(DisconnectReason::Protocol(
                            "the peer keeps sending calls while it does not read their results"
                                .into(),
                        ));
                    }
                }
                continue;
            }
            // Stand aside: callers drive, another thread leads, or the
            // grace after the last caller runs. Look again later.
            let backs_off = callers > 0 && (epoch == last_epoch || self.timing == Timing::Notified);
            if backs_off {
                self.workers_backed_off.store(true, Ordering::Relaxed);
                // SYNC POINT: caller exit (see `caller_leaves`).
                fence(Ordering::SeqCst);
                if self.callers.load(Ordering::Relaxed) == 0 {
                    // The last caller left meanwhile: look again now.
                    self.workers_backed_off.store(false, Ordering::Relaxed);
                    continue;
                }
            }
            let timeout = match self.timing {
                Timing::Notified if callers == 0 && epoch != last_epoch => {
                    // No grace period: lead at once.
                    last_epoch = epoch;
                    continue;
                }
                Timing::Notified => None,
                Timing::Polled if callers > 0 => {
                    if epoch == last_epoch {
                        poll = (poll * 2).min(Duration::from_millis(50));
                    }
                    Some(poll)
                }
                Timing::Polled if epoch != last_epoch => Some(base),
                Timing::Polled if w.busy > 0 => Some(HANDOVER),
                // Another worker leads and nothing runs: every event that
                // needs us notifies; the timeout only bounds a lead left
                // free by a handler that blocks (see `IDLE_LOOK`).
                Timing::Polled => Some(IDLE_LOOK),
            };
            last_epoch = epoch;
            w.idle += 1;
            w = wait_cv(&self.work_cv, w, timeout);
            w.idle -= 1;
        }
    }

    /// Runs one incoming call (unless the connection is closing), with the
    /// work lock released meanwhile; makes sure another worker stays idle
    /// to lead while this one is busy.
    fn run_call<'a>(
        self: &'a Arc<Self>,
        mut w: MutexGuard<'a, Work>,
        call: Incoming,
    ) -> MutexGuard<'a, Work> {
        // A handler starts only inside the gate: once disconnect closed
        // it, queued and just-read calls are dropped unrun.
        let Ok(entered) = self.gate.enter() else {
            return w;
        };
        drop(entered);
        if w.workers == 1 {
            // Start the standby, once: it leads while handlers run. More
            // workers start only where they are needed (a blocked send, a
            // call queued by a waiting caller), never on this hot path,
            // where a worker that has answered but not yet left `busy`
            // would make every race look like a need.
            self.wake_or_spawn(&mut w);
        } else if self.timing == Timing::Notified {
            // No standby polls under this policy: hand the lead on now.
            self.work_cv.notify_one();
        }
        w.busy += 1;
        drop(w);
        let idle_of = IDLE_WORKER_OF.with(|c| c.replace(0));
        let responder = Responder::new(call.seq, Arc::clone(self) as Arc<dyn ResultSink>);
        match &self.dispatcher {
            None => {
                let prev = IN_HANDLER_OF.with(|h| h.replace(self.id()));
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.invoke(call.tag, call.args, responder)
                }));
                IN_HANDLER_OF.with(|h| h.set(prev));
                // A panicking handler's responder answered with an error
                // as it unwound; the worker carries on.
                drop(ran);
            }
            Some(d) => {
                let me = Arc::clone(self);
                let (tag, args) = (call.tag, call.args);
                d.dispatch(Box::new(move || me.invoke(tag, args, responder)));
            }
        }
        IDLE_WORKER_OF.with(|c| c.set(idle_of));
        let mut w = self.work.lock();
        w.busy -= 1;
        w
    }

    fn invoke(&self, tag: u64, args: WrapperFunctionBuffer, responder: Responder) {
        match self.handlers.get(tag) {
            Some(entry) => (entry.f)(args, responder),
            None => responder.respond(self.handlers.unknown_tag_error(tag)),
        }
    }

    fn send_refusals(self: &Arc<Self>, seqs: &[u64]) {
        const BUSY: &str = "the callee is busy: its queue of incoming calls is full; call again later, or raise its EndpointConfig::max_queued_calls";
        for &seq in seqs {
            let Ok(_inside) = self.gate.enter() else {
                return;
            };
            if self
                .send(Opcode::Result, seq, RESULT_ERROR, BUSY.as_bytes(), None)
                .is_err()
            {
                return;
            }
        }
    }

    // ---------------------------------------------------------------
    // Disconnect

    /// The error a call gets when the connection is (being) closed.
    pub(crate) fn closed_error(&self) -> CallError {
        let c = self.conn.lock();
        if self.transport.peer_died() || c.reason == Some(DisconnectReason::PeerDied) {
            CallError::PeerDied
        } else {
            CallError::Disconnected
        }
    }

    pub(crate) fn reason(&self) -> Option<DisconnectReason> {
        self.conn.lock().reason.clone()
    }

    pub(crate) fn is_disconnected(&self) -> bool {
        self.conn.lock().phase == Phase::Disconnected
    }

    pub(crate) fn add_disconnect_callback(&self, cb: DisconnectCallback) {
        let mut cbs = self.on_disconnect.lock();
        // Checked under the callback lock: step 6 takes the same lock to
        // drain, so a callback is either drained there or run here.
        if self.is_disconnected() {
            drop(cbs);
            let reason = self.reason().unwrap_or(DisconnectReason::Local);
            cb(&reason);
        } else {
            cbs.push(cb);
        }
    }

    /// The disconnect protocol; see the module docs. Returns once the
    /// connection is disconnected.
    pub(crate) fn disconnect(self: &Arc<Self>, reason: DisconnectReason) {
        self.disconnect_with(reason, true);
    }

    /// As [`disconnect`](Self::disconnect); when another thread is already
    /// doing the protocol, waits for it to finish only if `wait_for_doer`.
    fn disconnect_with(self: &Arc<Self>, reason: DisconnectReason, wait_for_doer: bool) {
        let first = self.gate.close();
        {
            let mut c = self.conn.lock();
            if c.reason.is_none() {
                c.reason = Some(reason);
            }
            if first {
                c.phase = Phase::Disconnecting;
            }
        }
        if !first {
            if !wait_for_doer {
                return;
            }
            let mut c = self.conn.lock();
            while c.phase != Phase::Disconnected {
                c = self.conn_cv.wait(c);
            }
            drop(c);
            // The doer may have been a worker (it read the peer's Hangup):
            // it could not wait for itself, so wait for it here.
            self.wait_for_idle_workers_to_exit();
            return;
        }
        // Step 2: queued calls are dropped unrun (their responders answer
        // into a closed gate: nothing is sent, the peer's calls fail when
        // the connection ends); sends in flight finish or are made to fail.
        let dropped = {
            let mut w = self.work.lock();
            w.refusals.clear();
            std::mem::take(&mut w.queue)
        };
        drop(dropped);
        let deadline = Instant::now() + self.config.hangup_timeout;
        if !self.gate.wait_idle_until(deadline) {
            self.transport.close();
            // Closing fails every blocked send; they leave at once.
            self.gate
                .wait_idle_until(Instant::now() + self.config.hangup_timeout);
        }
        // Step 3: tell the peer (request or acknowledgement), bounded.
        let _ = self
            .transport
            .send_until(Opcode::Hangup, 0, 0, &[], Some(deadline), &|| {});
        // Step 4: wait for the peer's answer if we asked first. Results
        // already on their way are still delivered meanwhile.
        if !self.peer_gone() {
            self.drain_until_peer_gone(deadline);
        }
        // Step 5.
        self.transport.close();
        let err = self.closed_error();
        if !crate::sync::is_broken("engine") {
            // Loom must-fail variant: leave pending calls waiting.
            self.pending.fail_all(err);
        }
        // Step 6.
        {
            let mut w = self.work.lock();
            w.stop = true;
            self.work_cv.notify_all();
        }
        // Workers in `recv` were woken by the close in step 5, and every
        // waiting caller by its slot's waker in `fail_all`.
        self.wait_for_idle_workers_to_exit();
        let callbacks = {
            let mut cbs = self.on_disconnect.lock();
            {
                let mut c = self.conn.lock();
                c.phase = Phase::Disconnected;
                self.conn_cv.notify_all();
            }
            std::mem::take(&mut *cbs)
        };
        let reason = self.reason().unwrap_or(DisconnectReason::Local);
        for cb in callbacks {
            cb(&reason);
        }
    }

    /// Step 6: waits (bounded by `hangup_timeout`) until every worker has
    /// left its loop but those inside a handler and this thread itself,
    /// then joins those, so that no idle worker thread outlives the
    /// disconnect. Workers still in a handler finish on their own.
    fn wait_for_idle_workers_to_exit(&self) {
        let me = usize::from(IDLE_WORKER_OF.with(|c| c.get()) == self.id());
        let deadline = Instant::now() + self.config.hangup_timeout;
        let exited = {
            let mut exited = self.exits.threads.lock();
            loop {
                // Read afresh on every wake: a worker whose handler just
                // returned stops being busy, then exits and wakes us. (Lock
                // order: exits, then work; workers never hold both.)
                let enough = {
                    let w = self.work.lock();
                    w.spawned.saturating_sub(w.busy + me)
                };
                if exited.len() >= enough {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break; // a worker is stuck somewhere; do not hang on it
                }
                exited = wait_cv(&self.exits.cv, exited, Some(left));
            }
            exited.clone()
        };
        let done: Vec<_> = {
            let mut w = self.work.lock();
            let (done, running) = std::mem::take(&mut w.handles)
                .into_iter()
                .partition(|h| exited.contains(&h.thread().id()));
            w.handles = running;
            done
        };
        for handle in done {
            // It left its loop: this waits only for its teardown. An Err
            // would mean it panicked after that, which nothing there does.
            let _ = handle.join();
        }
    }

    /// Step 4: reads (as the lead, taken from whoever has it) until the
    /// peer's `Hangup`, end of stream or death, or `deadline`.
    fn drain_until_peer_gone(self: &Arc<Self>, deadline: Instant) {
        while !self.peer_gone() && Instant::now() < deadline {
            if !self.try_lead(CALLER) {
                // Whoever leads routes the peer's Hangup (or sees the end
                // of the stream) and signals `conn_cv`; look again shortly
                // in case that leader leaves without reading it.
                let c = self.conn.lock();
                if !c.peer_gone {
                    let left = deadline.saturating_duration_since(Instant::now());
                    drop(wait_cv(&self.conn_cv, c, Some(left.min(HANDOVER))));
                }
                continue;
            }
            loop {
                match self.transport.recv(Some(deadline)) {
                    Ok(Received::Message(m)) => match m.opcode {
                        Opcode::Result => {
                            if let Ok((seq, outcome)) = Self::outcome_of(m) {
                                let _ = self.pending.complete(seq, Ok(outcome));
                            }
                        }
                        Opcode::Hangup => {
                            self.note_peer_gone();
                            break;
                        }
                        _ => {}
                    },
                    Ok(Received::Interrupted) => continue,
                    Ok(Received::TimedOut) => break,
                    Err(_) => {
                        self.note_peer_gone();
                        break;
                    }
                }
            }
            self.release_lead();
        }
    }
}

/// Lets a [`PendingCall`](crate::PendingCall) drive the connection.
pub(crate) struct Driver(pub(crate) Arc<Inner>);

impl CallHost for Driver {
    fn table(&self) -> &PendingTable {
        &self.0.pending
    }

    fn wait_for(
        &self,
        seq: u64,
        deadline: Option<Instant>,
        registered: &mut bool,
    ) -> Result<(), CallError> {
        self.0.wait_for_call(seq, deadline, registered)
    }
}

impl Inner {
    /// Sends a call: the fast path of [`Endpoint::call`](crate::Endpoint::call).
    pub(crate) fn call(
        self: &Arc<Self>,
        tag: u64,
        args: &[u8],
        deadline: Option<Instant>,
    ) -> Result<u64, CallError> {
        let _inside = self.gate.enter().map_err(|_| self.closed_error())?;
        let seq = self.pending.register()?;
        if let Err(e) = self.send(Opcode::CallWrapper, seq, tag, args, deadline) {
            let err = match &e {
                TransportError::TooLarge { .. } | TransportError::Io(_) => CallError::Send(e),
                TransportError::TimedOut => CallError::TimedOut,
                _ => {
                    self.transport_ended(e);
                    self.closed_error()
                }
            };
            self.pending.free_unsent(seq);
            return Err(err);
        }
        Ok(seq)
    }
}

impl ResultSink for Inner {
    fn endpoint(&self) -> Option<crate::Endpoint> {
        self.user_handle.lock().as_ref().and_then(|make| make())
    }

    fn send_result(self: Arc<Self>, seq: u64, result: WrapperFunctionBuffer) {
        let Ok(_inside) = self.gate.enter() else {
            return; // Disconnecting: the caller's call fails on its side.
        };
        let (kind, bytes) = match result.error_message() {
            Some(msg) => (RESULT_ERROR, msg.as_bytes()),
            None => (RESULT_OK, result.as_slice()),
        };
        match self.send(Opcode::Result, seq, kind, bytes, None) {
            Err(TransportError::TooLarge { size, limit }) => {
                let msg = format!(
                    "the handler's result of {size} bytes exceeds the connection's message limit of {limit} bytes"
                );
                let _ = self.send(Opcode::Result, seq, RESULT_ERROR, msg.as_bytes(), None);
            }
            // The connection is ending; the caller's pending call fails
            // with the disconnect.
            Err(
                e @ (TransportError::PeerHungUp
                | TransportError::PeerDied
                | TransportError::Protocol(_)),
            ) => self.transport_ended(e),
            _ => {}
        }
    }
}
