//! The connection engine behind [`Endpoint`](crate::Endpoint): who reads
//! the inbound side, where each message goes, and the disconnect protocol.
//!
//! # Who reads (leader/follower)
//! Exactly one thread at a time is the *leader*: it alone calls
//! [`Transport::recv`]. Every other thread that wants progress is a
//! *follower* parked on `rx_cv`. The leader routes what it reads —
//! results complete pending calls, incoming calls become tasks — then gives
//! up the lead (waking the followers) **before** it runs anything that can
//! block or take long: dispatching tasks, disconnecting. So no handler ever
//! runs while holding the lead, and a handler that makes a synchronous call
//! or disconnects cannot deadlock against the reader.
//!
//! A dedicated reader thread leads while nobody else wants to; a thread
//! waiting synchronously for its own result takes the lead itself (the
//! reader is interrupted out of `recv` and stands aside until no
//! synchronous waiter remains, plus a short grace period), so a lone
//! synchronous caller pays no thread hop. Futures never lead: they are
//! completed by whoever leads.
//!
//! # Disconnect
//! 1. Close the [`Gate`]: no call can start, no incoming call is accepted.
//!    Exactly one caller (the *doer*) does steps 2-6; all others wait for
//!    step 6.
//! 2. Wait for operations inside the gate to leave (bounded; past the
//!    deadline the transport is closed, which makes blocked sends fail).
//! 3. Send `Hangup`: to the peer it is the request, or our acknowledgement
//!    of its request.
//! 4. If we started it, wait (bounded by `hangup_timeout`) for the peer's
//!    `Hangup`, end of stream, or death — results already on their way are
//!    still delivered meanwhile.
//! 5. Close the transport; fail every pending call with `Disconnected`, or
//!    `PeerDied` if the peer is known dead.
//! 6. Mark the connection disconnected, wake everyone, run the
//!    disconnect callbacks.
//!
//! A watchdog thread closes the transport if steps 2-4 outlive their
//! deadline, so a peer that stops reading cannot hang `disconnect()`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::buffer::WrapperFunctionBuffer;
use crate::dispatch::TaskDispatcher;
use crate::gate::Gate;
use crate::handler::{HandlerTable, Responder, ResultSink};
use crate::message::{Message, Opcode, RESULT_ERROR, RESULT_OK};
use crate::pending::{CallError, PendingTable, Slot, WaitDriver};
use crate::sps::SetupInfo;
use crate::sync::{lock, thread, Arc, Condvar, Mutex, MutexGuard};
use crate::transport::{Received, Transport, TransportError};

/// Most messages one leader takes per turn before handing the lead on.
const LEAD_BATCH: usize = 32;

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
    /// After the last synchronous waiter leaves, how long the reader thread
    /// stays aside before it takes the lead again. A caller that makes
    /// synchronous calls back to back then never has to interrupt the
    /// reader; incoming calls during that window are picked up at its end.
    /// Default 200 µs.
    pub reader_grace: Duration,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            hangup_timeout: Duration::from_secs(1),
            setup_timeout: Duration::from_secs(10),
            reader_grace: Duration::from_micros(200),
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leader {
    None,
    Reader,
    Caller,
}

struct RxState {
    leader: Leader,
    /// Threads inside `drive_until`.
    waiters: usize,
    /// `interrupt_recv` already sent to the current reader lead.
    interrupted: bool,
    /// When `waiters` last dropped to zero.
    idle_since: Option<Instant>,
    /// The transport returned a terminal error: nobody should recv again.
    dead: bool,
    /// The reader thread must exit.
    stop: bool,
    /// Followers parked on `rx_cv` right now: a notify with nobody parked
    /// is skipped (it would cost a system call per hand-over).
    parked: usize,
    /// Advanced each time a caller leaves: tells the reader whether any
    /// drive ended since it last looked (several pipelining callers keep
    /// `waiters` above zero for long, but their drives keep ending).
    drive_epoch: u64,
    /// How long the reader sleeps between looks while callers drive (zero
    /// while it leads). Doubles while the same drive goes on, up to
    /// [`MAX_READER_POLL`]; the last caller out wakes the reader only when
    /// it is backed off that way (after a long call), never per call.
    reader_poll: Duration,
}

/// The longest the reader sleeps between looks while one caller drives on
/// (a call that takes seconds costs the reader a few dozen wake-ups, not
/// thousands).
const MAX_READER_POLL: Duration = Duration::from_millis(50);

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

/// Work found while leading, done after the lead is released.
enum Deferred {
    Dispatch(crate::dispatch::Task),
    Disconnect(DisconnectReason),
}

pub(crate) struct Inner {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) gate: Gate,
    pub(crate) pending: PendingTable,
    pub(crate) handlers: HandlerTable,
    pub(crate) dispatcher: Arc<dyn TaskDispatcher>,
    pub(crate) config: EndpointConfig,
    pub(crate) setup: SetupInfo,
    rx: Mutex<RxState>,
    rx_cv: Condvar,
    /// Where the reader thread sleeps. Callers never wake it on their hot
    /// path (a wake-up per call, and on a shared CPU a context switch, was
    /// most of a round trip): it looks again every `reader_grace` while
    /// callers drive, and is woken only by `kick` and shutdown.
    reader_cv: Condvar,
    conn: Mutex<ConnState>,
    conn_cv: Condvar,
    on_disconnect: Mutex<Vec<DisconnectCallback>>,
    /// Makes a user handle ([`crate::Endpoint`]) while one is alive, for
    /// [`Responder::endpoint`]. Set by `Endpoint::start` before the reader
    /// runs; it holds only a weak reference, so it keeps nothing alive.
    pub(crate) user_handle: Mutex<Option<UserHandleFn>>,
}

/// See [`Inner::user_handle`].
pub(crate) type UserHandleFn = Box<dyn Fn() -> Option<crate::Endpoint> + Send + Sync>;

impl Inner {
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        handlers: HandlerTable,
        dispatcher: Arc<dyn TaskDispatcher>,
        config: EndpointConfig,
        setup: SetupInfo,
    ) -> Arc<Self> {
        Arc::new(Self {
            transport,
            gate: Gate::new(),
            pending: PendingTable::new(),
            handlers,
            dispatcher,
            config,
            setup,
            rx: Mutex::new(RxState {
                leader: Leader::None,
                waiters: 0,
                interrupted: false,
                idle_since: None,
                dead: false,
                stop: false,
                parked: 0,
                drive_epoch: 0,
                reader_poll: Duration::ZERO,
            }),
            rx_cv: Condvar::new(),
            reader_cv: Condvar::new(),
            conn: Mutex::new(ConnState {
                phase: Phase::Open,
                peer_gone: false,
                reason: None,
            }),
            conn_cv: Condvar::new(),
            on_disconnect: Mutex::new(Vec::new()),
            user_handle: Mutex::new(None),
        })
    }

    /// Starts the reader thread.
    pub(crate) fn start_reader(self: &Arc<Self>) -> std::io::Result<()> {
        let me = Arc::clone(self);
        thread::Builder::new()
            .name("orcwire-rx".into())
            .spawn(move || me.reader_loop())
            .map(drop)
    }

    /// Wakes every thread parked on `rx_cv` and the reader so they
    /// re-check their conditions.
    fn kick(&self) {
        let _g = lock(&self.rx);
        self.rx_cv.notify_all();
        self.reader_cv.notify_all();
    }

    /// Wakes the followers, if any is parked.
    fn notify_followers(&self, rx: &RxState) {
        if rx.parked > 0 {
            self.rx_cv.notify_all();
        }
    }

    /// Parks a follower on `rx_cv` (counted in `parked`).
    fn wait_rx<'a>(
        &self,
        mut g: MutexGuard<'a, RxState>,
        until: Option<Instant>,
    ) -> MutexGuard<'a, RxState> {
        g.parked += 1;
        let mut g = Self::wait_on(&self.rx_cv, g, until);
        g.parked -= 1;
        g
    }

    fn wait_on<'a>(
        cv: &Condvar,
        g: MutexGuard<'a, RxState>,
        until: Option<Instant>,
    ) -> MutexGuard<'a, RxState> {
        match until {
            None => match cv.wait(g) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            },
            Some(t) => {
                let d = t.saturating_duration_since(Instant::now());
                match cv.wait_timeout(g, d) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                }
            }
        }
    }

    /// The reader's first poll interval while callers drive.
    fn reader_poll_base(&self) -> Duration {
        self.config.reader_grace.max(Duration::from_micros(100))
    }

    fn reader_loop(self: Arc<Self>) {
        let base = self.reader_poll_base();
        loop {
            let mut rx = lock(&self.rx);
            let mut looked_at: Option<u64> = None;
            loop {
                if rx.stop || rx.dead {
                    return;
                }
                if rx.leader == Leader::None && rx.waiters == 0 {
                    match rx.idle_since {
                        Some(t) if t.elapsed() < self.config.reader_grace => {
                            let until = t + self.config.reader_grace;
                            rx = Self::wait_on(&self.reader_cv, rx, Some(until));
                            continue;
                        }
                        _ => break,
                    }
                }
                // Callers are driving; they do not wake us when they
                // leave (unless we backed off), so look again later: soon
                // while drives keep ending, less often while none does.
                rx.reader_poll = if looked_at == Some(rx.drive_epoch) {
                    (rx.reader_poll * 2).clamp(base, MAX_READER_POLL.max(base))
                } else {
                    base
                };
                looked_at = Some(rx.drive_epoch);
                let until = Instant::now() + rx.reader_poll;
                rx = Self::wait_on(&self.reader_cv, rx, Some(until));
            }
            rx.reader_poll = Duration::ZERO;
            rx.leader = Leader::Reader;
            rx.interrupted = false;
            drop(rx);
            let deferred = self.lead_once(None, &|| false);
            self.release_lead();
            self.run_deferred(deferred);
        }
    }

    fn release_lead(&self) {
        let mut rx = lock(&self.rx);
        rx.leader = Leader::None;
        // Only followers wait for a free lead: the reader polls.
        self.notify_followers(&rx);
    }

    /// Drives the inbound side (or waits for whoever does) until `done()`
    /// or `deadline`.
    pub(crate) fn drive_until(
        self: &Arc<Self>,
        done: &dyn Fn() -> bool,
        deadline: Option<Instant>,
    ) {
        let mut rx = lock(&self.rx);
        rx.waiters += 1;
        loop {
            if done() || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if rx.dead {
                // Nothing more will be read; whoever saw the error is
                // disconnecting and will complete everything. Wait for it.
                rx = self.wait_rx(rx, deadline);
                continue;
            }
            match rx.leader {
                Leader::None => {
                    rx.leader = Leader::Caller;
                    drop(rx);
                    let deferred = self.lead_once(deadline, done);
                    rx = lock(&self.rx);
                    rx.leader = Leader::None;
                    self.notify_followers(&rx);
                    if !deferred.is_empty() {
                        // Tasks and disconnects run outside both the lead
                        // and the lock; with nothing to run (the lone
                        // caller's usual turn) one lock hands the lead back.
                        drop(rx);
                        self.run_deferred(deferred);
                        rx = lock(&self.rx);
                    }
                }
                Leader::Reader => {
                    if !rx.interrupted {
                        rx.interrupted = true;
                        self.transport.interrupt_recv();
                    }
                    rx = self.wait_rx(rx, deadline);
                }
                Leader::Caller => rx = self.wait_rx(rx, deadline),
            }
        }
        rx.waiters -= 1;
        rx.drive_epoch = rx.drive_epoch.wrapping_add(1);
        if rx.waiters == 0 {
            // Nobody else is in here to wake; the reader notices the idle
            // connection by itself (see `reader_cv`), unless it backed off
            // because no drive ended for a while (a long call).
            rx.idle_since = Some(Instant::now());
            if rx.reader_poll > self.reader_poll_base() {
                self.reader_cv.notify_all();
            }
        }
    }

    /// One turn as leader: waits (until `deadline`) for a message, then
    /// takes whatever else has already arrived, up to [`LEAD_BATCH`]
    /// messages, without waiting again, and stops early once `done()` (a
    /// synchronous caller's own result arrived: it should not pay for
    /// routing other callers' results first). Batching amortises the
    /// hand-over of the lead (a lock and a wake-up) over a burst.
    fn lead_once(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        done: &dyn Fn() -> bool,
    ) -> VecDeque<Deferred> {
        let got = self.transport.recv(deadline);
        let mut more = matches!(got, Ok(Received::Message(_)));
        let mut out = self.route(got);
        let mut taken = 1;
        // One clock read per turn: any deadline already past means "take
        // only what has arrived".
        let now = more.then(Instant::now);
        while more && taken < LEAD_BATCH && !done() {
            let got = self.transport.recv(now);
            more = matches!(got, Ok(Received::Message(_)));
            out.extend(self.route(got));
            taken += 1;
        }
        out
    }

    /// Routes one `recv` outcome. Runs while holding the lead, so it never
    /// blocks: anything that might is returned as deferred work.
    fn route(self: &Arc<Self>, got: Result<Received, TransportError>) -> VecDeque<Deferred> {
        let mut out = VecDeque::new();
        match got {
            Ok(Received::Message(msg)) => self.route_message(msg, &mut out),
            Ok(Received::TimedOut) | Ok(Received::Interrupted) => {}
            Err(e) => {
                {
                    let mut rx = lock(&self.rx);
                    rx.dead = true;
                }
                self.note_peer_gone();
                out.push_back(Deferred::Disconnect(DisconnectReason::from_transport(e)));
            }
        }
        out
    }

    fn route_message(self: &Arc<Self>, msg: Message, out: &mut VecDeque<Deferred>) {
        match msg.opcode {
            Opcode::Result => {
                let outcome = match msg.tag {
                    RESULT_OK => msg.payload,
                    RESULT_ERROR => WrapperFunctionBuffer::out_of_band_error(
                        String::from_utf8_lossy(msg.payload.as_slice()).into_owned(),
                    ),
                    other => {
                        return self.protocol_error(
                            format!(
                                "result for sequence number {} has unknown kind {other}",
                                msg.seq
                            ),
                            out,
                        )
                    }
                };
                if let Err(e) = self.pending.complete(msg.seq, Ok(outcome)) {
                    // After we failed every pending call (disconnect step
                    // 5) a late result is expected, not an error.
                    if !self.gate.is_closed() {
                        self.protocol_error(e.to_string(), out);
                    }
                }
            }
            Opcode::CallWrapper => {
                // The gate decides acceptance; the guard is dropped before
                // the handler can run, so a handler may disconnect.
                if self.gate.enter().is_err() {
                    return; // Disconnecting: the peer fails this call.
                }
                let sink: Arc<dyn ResultSink> = Arc::clone(self) as Arc<dyn ResultSink>;
                let responder = Responder::new(msg.seq, sink);
                let task: crate::dispatch::Task = match self.handlers.get(msg.tag) {
                    Some(entry) => {
                        let f = Arc::clone(&entry.f);
                        let args = msg.payload;
                        Box::new(move || f(args, responder))
                    }
                    None => {
                        let err = self.handlers.unknown_tag_error(msg.tag);
                        Box::new(move || responder.respond(err))
                    }
                };
                out.push_back(Deferred::Dispatch(task));
            }
            Opcode::Hangup => {
                self.note_peer_gone();
                out.push_back(Deferred::Disconnect(DisconnectReason::PeerHungUp));
            }
            Opcode::Setup => self.protocol_error(
                "a second Setup message arrived after the connection was set up".into(),
                out,
            ),
        }
    }

    fn protocol_error(&self, what: String, out: &mut VecDeque<Deferred>) {
        {
            let mut rx = lock(&self.rx);
            rx.dead = true;
        }
        // The peer cannot be trusted to acknowledge anything any more.
        self.note_peer_gone();
        self.transport.close();
        out.push_back(Deferred::Disconnect(DisconnectReason::Protocol(what)));
    }

    fn note_peer_gone(&self) {
        let mut c = lock(&self.conn);
        c.peer_gone = true;
        self.conn_cv.notify_all();
        drop(c);
        self.kick();
    }

    fn peer_gone(&self) -> bool {
        lock(&self.conn).peer_gone
    }

    fn run_deferred(self: &Arc<Self>, deferred: VecDeque<Deferred>) {
        for d in deferred {
            match d {
                Deferred::Dispatch(task) => self.dispatcher.dispatch(task),
                // Found while driving: never wait for another doer here —
                // this thread may *be* the doer (step 4 drives the
                // connection), and nobody needs this thread to return late.
                Deferred::Disconnect(reason) => self.disconnect_with(reason, false),
            }
        }
    }

    /// The error a call gets when the connection is (being) closed.
    pub(crate) fn closed_error(&self) -> CallError {
        let c = lock(&self.conn);
        if self.transport.peer_died() || c.reason == Some(DisconnectReason::PeerDied) {
            CallError::PeerDied
        } else {
            CallError::Disconnected
        }
    }

    pub(crate) fn reason(&self) -> Option<DisconnectReason> {
        lock(&self.conn).reason.clone()
    }

    pub(crate) fn is_disconnected(&self) -> bool {
        lock(&self.conn).phase == Phase::Disconnected
    }

    pub(crate) fn add_disconnect_callback(&self, cb: DisconnectCallback) {
        let mut cbs = lock(&self.on_disconnect);
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
            let mut c = lock(&self.conn);
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
            let mut c = lock(&self.conn);
            while c.phase != Phase::Disconnected {
                c = match self.conn_cv.wait(c) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
            }
            return;
        }
        self.kick(); // followers re-check the gate-dependent conditions

        let deadline = Instant::now() + self.config.hangup_timeout;
        let watchdog = self.spawn_watchdog(deadline);

        // Step 2: in-flight sends finish, or are made to fail.
        if !self.gate.wait_idle_until(deadline) {
            self.transport.close();
            self.gate.wait_idle();
        }
        // Step 3: tell the peer (request or acknowledgement).
        let _ = self.transport.send(Opcode::Hangup, 0, 0, &[]);
        // Step 4: wait for the peer's answer if we asked first.
        if !self.peer_gone() {
            let me = Arc::clone(self);
            self.drive_until(&move || me.peer_gone(), Some(deadline));
        }
        // Step 5.
        self.transport.close();
        let err = self.closed_error();
        self.pending.fail_all(err);
        // Step 6.
        {
            let mut rx = lock(&self.rx);
            rx.stop = true;
            rx.dead = true;
            self.rx_cv.notify_all();
            self.reader_cv.notify_all();
        }
        let callbacks = {
            let mut cbs = lock(&self.on_disconnect);
            {
                let mut c = lock(&self.conn);
                c.phase = Phase::Disconnected;
                self.conn_cv.notify_all();
            }
            std::mem::take(&mut *cbs)
        };
        if let Some(w) = watchdog {
            // The watchdog wakes on the phase change and exits; it holds
            // only an Arc, so it need not be joined.
            drop(w);
        }
        let reason = self.reason().unwrap_or(DisconnectReason::Local);
        for cb in callbacks {
            cb(&reason);
        }
    }

    fn spawn_watchdog(self: &Arc<Self>, deadline: Instant) -> Option<thread::JoinHandle<()>> {
        let me = Arc::clone(self);
        thread::Builder::new()
            .name("orcwire-hangup".into())
            .spawn(move || {
                let mut c = lock(&me.conn);
                while c.phase != Phase::Disconnected {
                    let now = Instant::now();
                    if now >= deadline {
                        drop(c);
                        me.transport.close();
                        me.kick();
                        return;
                    }
                    c = match me.conn_cv.wait_timeout(c, deadline - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
            })
            .ok()
    }
}

impl ResultSink for Inner {
    fn endpoint(&self) -> Option<crate::Endpoint> {
        lock(&self.user_handle).as_ref().and_then(|make| make())
    }

    fn send_result(&self, seq: u64, result: WrapperFunctionBuffer) {
        let Ok(_inside) = self.gate.enter() else {
            return; // Disconnecting: the caller's call fails on its side.
        };
        let sent = match result.error_message() {
            Some(msg) => self
                .transport
                .send(Opcode::Result, seq, RESULT_ERROR, msg.as_bytes()),
            None => self
                .transport
                .send(Opcode::Result, seq, RESULT_OK, result.as_slice()),
        };
        if let Err(TransportError::TooLarge { size, limit }) = sent {
            let msg = format!(
                "the handler's result of {size} bytes exceeds the connection's message limit of {limit} bytes"
            );
            let _ = self
                .transport
                .send(Opcode::Result, seq, RESULT_ERROR, msg.as_bytes());
        }
        // Any other failure means the connection is ending; the caller's
        // pending call fails with the disconnect.
    }
}

/// Lets a [`PendingCall`](crate::PendingCall) drive the connection.
pub(crate) struct Driver(pub(crate) Arc<Inner>);

impl WaitDriver for Driver {
    fn wait_for(&self, slot: &Slot, deadline: Option<Instant>) {
        self.0.drive_until(&|| slot.is_done(), deadline);
    }
}
