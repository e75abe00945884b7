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
use crate::handler::{HandlerEntry, HandlerTable, Responder, ResultSink};
use crate::message::{Message, Opcode, RESULT_ERROR, RESULT_OK};
use crate::pending::{CallError, CallHost, CallResult, PendingTable};
use crate::sps::{self, Dialect, SetupInfo};
use crate::sync::{
    fence, thread, Arc, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Condvar, EndLock, Mutex,
    MutexGuard, Ordering,
};
use crate::transport::{Arrival, Outgoing, Received, Transport, TransportError};
use frames::Frames;

mod batch;
mod caller;
mod disconnect;
mod frames;
mod lead;
mod worker;

/// How often an idle worker looks at a free lead while handlers run, and
/// takes it (results for futures keep flowing at this pace even when every
/// other thread is busy in a handler).
pub const HANDOVER: Duration = Duration::from_millis(1);

/// How long an idle worker sleeps when nothing asks for it: the longest a
/// handler that blocks without sending can leave the lead free before the
/// standby notices (starting a handler wakes nobody; that would cost a
/// system call per call).
const IDLE_LOOK: Duration = Duration::from_millis(100);

/// How far the grace a worker gives callers grows, as a multiple of
/// `EndpointConfig::reader_grace`, while callers keep coming back within
/// it (see `worker_loop`): 6.4 ms by default.
const GRACE_GROWTH: u32 = 32;

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

/// Most messages a caller reads in one batch (see `lead_turn`): enough
/// for a window of pipelined calls, few enough that a caller never reads
/// for long after its own result is in.
const DRAIN_BATCH: usize = 64;

/// Most calls a worker reads in one lead turn beyond the first: it runs
/// them one after the other (each is queued, so that another worker takes
/// over the rest if a handler blocks).
const WORKER_BATCH: usize = 15;

/// How long `disconnect` waits for workers still in a handler to finish
/// and leave, before it returns without them. A worker that has just
/// answered is still in its handler while it returns, and its caller may
/// already be disconnecting: this lets it go too. A handler that really
/// runs on costs `disconnect` this much, once.
#[cfg(not(orcwire_loom))]
const BUSY_GRACE: Duration = Duration::from_millis(50);
/// Under loom a timed wait ends only by a notification: `disconnect`
/// waits for workers in a handler until they leave (every model's handlers
/// return), so that no model thread outlives its model.
#[cfg(orcwire_loom)]
const BUSY_GRACE: Duration = Duration::from_secs(1);

/// Most calls [`Inner::call_batch`] writes with one publication.
const CALL_BATCH: usize = 16;

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
    /// While callers keep coming back within it (a [`Pipeline`] between
    /// two results, a thread calling in a loop) the grace doubles each
    /// time, up to 32 times this value, so that the worker does not wake
    /// every 200 µs on the callers' CPU; it is back to this value once the
    /// worker leads or runs a call. So the peer's calls, and results
    /// nobody waits for synchronously, are read at most two graces after
    /// the last caller leaves: 12.8 ms by default after busy callers,
    /// 400 µs after a quiet spell (lower this value to tighten both).
    /// Default 200 µs.
    ///
    /// [`Pipeline`]: crate::Pipeline
    pub reader_grace: Duration,
    /// Calls waiting for a result at once (slots of the pending table,
    /// rounded up to a power of two). One more fails with
    /// [`CallError::TooManyPending`]. A [`Pipeline`] keeps the slots of its
    /// recent calls for its next ones (up to a quarter of the table, until
    /// it is dropped): other callers then find fewer free. Default 1024.
    ///
    /// [`Pipeline`]: crate::Pipeline
    pub max_pending_calls: usize,
    /// Incoming calls queued while every worker is busy. One more is
    /// answered at once with a "busy" error result. Default 1024.
    ///
    /// Besides these, a worker holds the calls it read in one turn (at
    /// most 16) as its batch; if a handler of the batch blocks, another
    /// worker moves the calls not yet started to the front of the queue,
    /// which can then hold up to 15 more than this bound for each batch
    /// so moved (calls read are never dropped); calls that arrive while
    /// the queue is over its bound are refused as busy.
    pub max_queued_calls: usize,
    /// Most worker threads this connection starts (they run handlers and
    /// lead while nobody else does). At least 1. Default 16.
    pub max_workers: usize,
    /// Most values this side exports at once, and most of the peer's
    /// handles it holds at once ([`crate::handles`]). One more export fails
    /// with [`HandleError::TooManyExports`](crate::handles::HandleError::TooManyExports);
    /// one more import from the peer with
    /// [`HandleError::TooManyImports`](crate::handles::HandleError::TooManyImports).
    /// Default 1,048,576.
    pub max_handles: usize,
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
            max_handles: 1 << 20,
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
    /// Reading ended: end of stream, death, or a broken transport. Then
    /// nothing more is sent (LLVM's programs close their end after their
    /// `Hangup`; writing into it would only fail).
    stream_ended: bool,
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
    /// The batches workers are running (see `batch.rs`), for a worker
    /// that looks around to steal from a stuck one.
    batches: Vec<Arc<batch::Batch>>,
    /// Results of handlers a worker ran with more calls of its batch
    /// behind them, to send as one batch (see [`Inner::flush_outbox`]),
    /// and the spare vector that takes their place while a flush sends
    /// them (no allocation per batch).
    outbox: Outbox,
}

/// Results waiting to go out as one batch, and the spare vector that takes
/// their place while a flush sends them (no allocation per batch).
struct Outbox {
    results: Vec<(u64, WrapperFunctionBuffer)>,
    spare: Vec<(u64, WrapperFunctionBuffer)>,
}

impl Outbox {
    fn new() -> Self {
        Self {
            results: Vec::with_capacity(WORKER_BATCH + 1),
            spare: Vec::with_capacity(WORKER_BATCH + 1),
        }
    }

    /// The results, if any, swapped out for the spare.
    fn take(&mut self) -> Option<Vec<(u64, WrapperFunctionBuffer)>> {
        if self.results.is_empty() {
            return None;
        }
        let mut batch = std::mem::take(&mut self.spare);
        std::mem::swap(&mut batch, &mut self.results);
        Some(batch)
    }

    /// A taken batch's vector back, emptied, as the spare.
    fn give_back(&mut self, mut batch: Vec<(u64, WrapperFunctionBuffer)>) {
        batch.clear();
        if self.spare.capacity() < batch.capacity() {
            self.spare = batch;
        }
    }
}

/// A leading caller's claim on results (see [`Inner::lead_turn`]): takes
/// the payload of a result for a call it owns and returns `true`, or
/// leaves it and returns `false`.
pub(crate) type Mine<'a> = dyn FnMut(u64, &mut WrapperFunctionBuffer) -> bool + 'a;

/// What one turn of leading produced for the thread to do afterwards.
#[derive(Default)]
struct Turn {
    /// The caller's own call's result was taken by its `mine`.
    own_taken: bool,
    /// Calls a worker read (into the cells of its batch): it runs them
    /// after giving up the lead.
    read: usize,
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
    /// What the peer speaks: decides result kinds and error results.
    pub(crate) dialect: Dialect,
    /// Remote handles lent and borrowed over this connection.
    pub(crate) handles: Arc<crate::handles::Handles>,
    /// Answers given through a responder by handlers a worker ran with
    /// more calls of their batch behind them (the work's `outbox` holds
    /// those of handlers that answer with their return value): an
    /// `EndLock`, whose uncontended release is a plain store.
    answers: EndLock<Outbox>,
    /// Whether the work's `outbox` or `answers` may hold results: a look
    /// without the locks.
    outbox_full: AtomicBool,
    /// The worker that leads gives up its turn within [`HANDOVER`] (it
    /// led while handlers ran): it will send what the outbox holds.
    lead_polls: AtomicBool,
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
    /// A [`Pipeline`](crate::Pipeline) was made on this connection: its
    /// lead turns free their own calls' slots with plain stores
    /// ([`PendingTable::release_own`]), so disconnect fails the calls left
    /// while it leads. Only ever set.
    pub(crate) pipelined: AtomicBool,
    /// How a worker's batch claims its calls: with a compiler fence, the
    /// rare thief paying `membarrier` (`true`), or with a full fence on
    /// both sides where the kernel refuses `membarrier` (see
    /// [`batch`](self::batch)).
    asymmetric_fences: bool,
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

// Which endpoint's outbox the results of the handler this thread runs go
// to (its `Inner` address; 0: sent at once).
#[cfg(not(orcwire_loom))]
std::thread_local! {
    static OUTBOX_OF: Cell<usize> = const { Cell::new(0) };
}
#[cfg(orcwire_loom)]
loom::thread_local! {
    static OUTBOX_OF: Cell<usize> = Cell::new(0);
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
        dialect: Dialect,
        handles: Arc<crate::handles::Handles>,
    ) -> Arc<Self> {
        let queue = VecDeque::with_capacity(config.max_queued_calls.clamp(1, 1 << 16));
        Arc::new(Self {
            transport,
            gate: Gate::new(),
            pending: PendingTable::new(config.max_pending_calls),
            handlers,
            dispatcher,
            setup,
            dialect,
            handles,
            answers: EndLock::new(Outbox::new()),
            outbox_full: AtomicBool::new(false),
            lead_polls: AtomicBool::new(false),
            lead: AtomicU32::new(FREE),
            rx_dead: AtomicBool::new(false),
            callers: AtomicUsize::new(0),
            caller_epoch: AtomicU64::new(0),
            pipelined: AtomicBool::new(false),
            asymmetric_fences: batch::init_fences(),
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
                batches: Vec::with_capacity(config.max_workers.clamp(1, 64)),
                outbox: Outbox::new(),
            }),
            work_cv: Condvar::new(),
            exits: Arc::new(Exits::default()),
            conn: Mutex::new(ConnState {
                phase: Phase::Open,
                peer_gone: false,
                stream_ended: false,
                reason: None,
            }),
            conn_cv: Condvar::new(),
            on_disconnect: Mutex::new(Vec::new()),
            user_handle: Mutex::new(None),
            config,
        })
    }

    /// How an error result travels in the peer's dialect: its text under
    /// [`RESULT_ERROR`] to orcwire, an empty result under tag 0 to LLVM
    /// (see [`Dialect`]).
    pub(super) fn error_result<'a>(&self, message: &'a str) -> (u64, &'a [u8]) {
        if self.dialect.is_llvm() {
            (RESULT_OK, &[])
        } else {
            (RESULT_ERROR, message.as_bytes())
        }
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
            self.pending.free_unsent(seq);
            return Err(self.send_failed(e));
        }
        Ok(seq)
    }

    /// The error a call that could not be sent fails with; a transport
    /// that ended starts the disconnect.
    fn send_failed(self: &Arc<Self>, e: TransportError) -> CallError {
        match &e {
            TransportError::TooLarge { .. } | TransportError::Io(_) => CallError::Send(e),
            TransportError::TimedOut => CallError::TimedOut,
            _ => {
                self.transport_ended(e);
                self.closed_error()
            }
        }
    }

    /// Sends `count` calls (`call(i)`: the tag and arguments of call `i`)
    /// in order as batches of up to
    /// [`CALL_BATCH`]: a slot for each (the caller's `lease` first, see
    /// [`PendingTable::register_leased`]), then their frames with one
    /// publication and one wake-up check per batch (the fast path of
    /// [`Pipeline`](crate::Pipeline)). Reports each call to `done`, in
    /// order: the sequence numbers of a run of calls sent, or why one
    /// call was not sent. Returns how many
    /// calls were reported; fewer than all when `deadline` passed with the
    /// transport full (the rest are untouched, not sent).
    pub(crate) fn call_batch<'a>(
        self: &Arc<Self>,
        lease: &mut Vec<u64>,
        count: usize,
        call: impl Fn(usize) -> (u64, &'a [u8]),
        deadline: Option<Instant>,
        done: &mut impl FnMut(Result<&[u64], CallError>),
    ) -> usize {
        let Ok(_inside) = self.gate.enter() else {
            let err = self.closed_error();
            (0..count).for_each(|_| done(Err(err.clone())));
            return count;
        };
        let mut handled = 0;
        while handled < count {
            let want = (count - handled).min(CALL_BATCH);
            let mut seqs = [0u64; CALL_BATCH];
            let n = match self.pending.register_leased(lease, &mut seqs[..want]) {
                Ok(n) => n,
                // Every slot is taken: this call fails (later ones may
                // find slots freed meanwhile).
                Err(e) => {
                    done(Err(e));
                    handled += 1;
                    continue;
                }
            };
            let mut frames = Frames::<'a, CALL_BATCH>::new();
            for (i, &seq) in seqs[..n].iter().enumerate() {
                let (tag, payload) = call(handled + i);
                frames.push(Outgoing {
                    opcode: Opcode::CallWrapper,
                    seq,
                    tag,
                    payload,
                });
            }
            let (sent, error) = match self.transport.send_batch(frames.as_slice(), deadline, &|| {
                self.ensure_reader()
            }) {
                Ok(()) => (n, None),
                Err(e) => (e.sent.min(n), Some(e.error)),
            };
            if sent > 0 {
                done(Ok(&seqs[..sent]));
            }
            for &seq in &seqs[sent..n] {
                self.pending.free_unsent(seq);
            }
            handled += sent;
            let Some(error) = error else {
                continue;
            };
            // Call `handled` was not sent, nor anything after it.
            match self.send_failed(error) {
                CallError::TimedOut => return handled,
                e @ CallError::Send(_) => {
                    // Its own fault (too large): the rest may go.
                    done(Err(e));
                    handled += 1;
                }
                e => {
                    (handled..count).for_each(|_| done(Err(e.clone())));
                    return count;
                }
            }
        }
        handled
    }
}

impl Inner {
    /// Waits on this thread for call `seq`, which this thread made and
    /// owns, as [`PendingCall::wait`](crate::PendingCall::wait) does but
    /// without a handle: a synchronous call then takes and drops no
    /// reference count (a locked instruction on its path between a result
    /// and the next call). The slot is abandoned if the wait ends without
    /// the outcome (a timeout, an error, or a panic unwinding through).
    pub(crate) fn wait_own(self: &Arc<Self>, seq: u64, deadline: Option<Instant>) -> CallResult {
        /// Abandons the slot unless the outcome was taken.
        struct Owned<'a> {
            table: &'a PendingTable,
            seq: u64,
            registered: bool,
            taken: bool,
        }
        impl Drop for Owned<'_> {
            fn drop(&mut self) {
                if !self.taken {
                    self.table.abandon(self.seq, self.registered);
                }
            }
        }
        let mut own = Owned {
            table: &self.pending,
            seq,
            registered: false,
            taken: false,
        };
        // Our result, when we read it ourselves while leading (the usual
        // case of a lone caller): its payload is taken as it is read, the
        // slot claimed and freed at once (`take_own`): one read-modify-write
        // instead of a claim, an outcome stored in the slot and its `VALUE`
        // bit, and the outcome taken out again.
        let mut got: Option<WrapperFunctionBuffer> = None;
        loop {
            if let Some(r) = self.pending.try_take(seq, own.registered) {
                own.taken = true;
                return r;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(CallError::TimedOut);
            }
            let pending = &self.pending;
            let mut mine = |s: u64, payload: &mut WrapperFunctionBuffer| {
                if s != seq || got.is_some() || !pending.take_own(seq) {
                    return false;
                }
                got = Some(std::mem::take(payload));
                true
            };
            let waited = self.wait_for_mine(seq, deadline, &mut own.registered, Some(&mut mine));
            if let Some(payload) = got.take() {
                own.taken = true;
                return Ok(payload);
            }
            waited?;
        }
    }
}

impl ResultSink for Inner {
    fn endpoint(&self) -> Option<crate::Endpoint> {
        self.user_handle.lock().as_ref().and_then(|make| make())
    }

    fn send_result(self: Arc<Self>, seq: u64, result: WrapperFunctionBuffer) {
        // An inline handler on a worker running a batch of this endpoint:
        // into the batch's cells (one thread-local look, the usual case
        // when pipelining).
        if self.runs_own_batch() {
            match Self::answer_into_batch(self, seq, result) {
                Ok(()) => {}
                Err((this, seq, result)) => this.send_past_batch(seq, result),
            }
            return;
        }
        self.send_past_batch(seq, result);
    }
}

impl Inner {
    /// [`ResultSink::send_result`] of an answer that does not go into the
    /// thread's batch: into the outbox, or sent now (borrowed, not moved
    /// again).
    #[inline(always)]
    fn send_past_batch(self: Arc<Self>, seq: u64, result: WrapperFunctionBuffer) {
        if OUTBOX_OF.with(|o| o.get()) == self.id() {
            // An inline handler on a worker whose results go out together
            // (`run_call` with calls queued behind it, or a batch whose
            // cells are full): into the outbox (`flush_outbox`).
            self.answers.lock().results.push((seq, result));
            // Relaxed: the lock orders the contents; the flag is a hint
            // whose every reader takes the lock.
            self.outbox_full.store(true, Ordering::Relaxed);
            return;
        }
        self.send_one_result(seq, &result);
    }

    /// Sends one handler's result now (an over-long one as an error
    /// result saying so).
    pub(super) fn send_one_result(self: &Arc<Self>, seq: u64, result: &WrapperFunctionBuffer) {
        let Ok(_inside) = self.gate.enter() else {
            return; // Disconnecting: the caller's call fails on its side.
        };
        let (kind, bytes) = self.result_wire(result);
        if let Err(e) = self.send(Opcode::Result, seq, kind, bytes, None) {
            self.result_not_sent(seq, e);
        }
    }

    /// How a handler's result travels: its kind and bytes in the peer's
    /// dialect.
    fn result_wire<'a>(&self, result: &'a WrapperFunctionBuffer) -> (u64, &'a [u8]) {
        match result.error_message() {
            Some(msg) => self.error_result(msg),
            None => (RESULT_OK, result.as_slice()),
        }
    }

    /// Result `seq` could not be sent: one over the message limit goes as
    /// an error result saying so (`true`: the results after it may go); a
    /// transport that ended starts the disconnect (the caller's pending
    /// call fails with it).
    fn result_not_sent(self: &Arc<Self>, seq: u64, e: TransportError) -> bool {
        match e {
            TransportError::TooLarge { size, limit } => {
                let msg = format!(
                    "the handler's result of {size} bytes exceeds the connection's message limit of {limit} bytes"
                );
                let (kind, bytes) = self.error_result(&msg);
                let _ = self.send(Opcode::Result, seq, kind, bytes, None);
                true
            }
            e @ (TransportError::PeerHungUp
            | TransportError::PeerDied
            | TransportError::Protocol(_)) => {
                self.transport_ended(e);
                false
            }
            _ => false,
        }
    }
}

impl Inner {
    /// Sends the results waiting in the outbox, as batches (one
    /// publication each). A worker flushes before it leads, waits or
    /// disconnects, a thread before any wait for a result, and an idle
    /// worker whenever it looks around (at least every [`HANDOVER`] while
    /// handlers run): a result waits at most that long behind a handler of
    /// its batch that blocks. Results of a closing connection are dropped
    /// (their callers fail with the disconnect).
    #[inline]
    pub(crate) fn flush_outbox(self: &Arc<Self>) {
        // Relaxed: a hint; the lock in `send_outbox_now` orders what it
        // guards.
        if self.outbox_full.load(Ordering::Relaxed) {
            self.send_outbox_now();
        }
    }

    #[cold]
    fn send_outbox_now(self: &Arc<Self>) {
        // Taken out under the lock, sent without it: a send may wait for
        // room, and a handler answering meanwhile must not wait for that.
        self.outbox_full.store(false, Ordering::Relaxed);
        let returned = self.work.lock().outbox.take();
        let answered = self.answers.lock().take();
        if let Some(batch) = returned {
            self.send_outbox(&batch);
            self.work.lock().outbox.give_back(batch);
        }
        if let Some(batch) = answered {
            self.send_outbox(&batch);
            self.answers.lock().give_back(batch);
        }
    }

    /// Sends `outbox`'s results as batches (one publication each).
    pub(super) fn send_outbox(self: &Arc<Self>, outbox: &[(u64, WrapperFunctionBuffer)]) {
        self.send_results(outbox.len(), |i| (outbox[i].0, &outbox[i].1));
    }

    /// Sends `count` results (`result(i)`: result `i`'s sequence number
    /// and bytes) as batches (one publication each).
    #[inline]
    pub(super) fn send_results<'r>(
        self: &Arc<Self>,
        count: usize,
        result: impl Fn(usize) -> (u64, &'r WrapperFunctionBuffer),
    ) {
        let Ok(_inside) = self.gate.enter() else {
            return;
        };
        let mut at = 0;
        while at < count {
            let mut frames = Frames::<'r, CALL_BATCH>::new();
            for i in at..count.min(at + CALL_BATCH) {
                let (seq, r) = result(i);
                let (kind, bytes) = self.result_wire(r);
                frames.push(Outgoing {
                    opcode: Opcode::Result,
                    seq,
                    tag: kind,
                    payload: bytes,
                });
            }
            let n = frames.len();
            match self
                .transport
                .send_batch(frames.as_slice(), None, &|| self.ensure_reader())
            {
                Ok(()) => at += n,
                Err(e) => {
                    let failed = at + e.sent.min(n);
                    if !self.result_not_sent(result(failed).0, e.error) {
                        break;
                    }
                    at = failed + 1;
                }
            }
        }
    }
}
