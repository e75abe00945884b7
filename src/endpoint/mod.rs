//! [`Endpoint`]: one side of a connection — the controller's or the
//! executor's — over any [`Transport`].
//!
//! Build one with [`ControllerBuilder`] or [`ExecutorBuilder`]. The
//! executor registers its wrapper functions by name and publishes them,
//! with the tags it will use to call the controller's handlers, in its
//! `Setup` message (LLVM's `SimpleRemoteEPCExecutorInfo`, SPS-encoded); the
//! controller binds its handlers to those tags by name.
//!
//! Calls are explicit send/receive pairs (seed 002): [`Endpoint::call`]
//! sends and returns a [`PendingCall`] at once; the result is received by
//! awaiting it or waiting on it. Nothing runs a nested event loop.
//!
//! ```
//! use std::sync::Arc;
//! use orcwire::{ControllerBuilder, ExecutorBuilder, StreamTransport, WrapperFunctionBuffer};
//! use orcwire::StreamConfig;
//!
//! let (c_side, e_side) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
//! // The executor side usually runs in another process; a thread will do here.
//! let executor = std::thread::spawn(move || {
//!     ExecutorBuilder::new()
//!         .sync_function("add_one", |args: &[u8]| {
//!             WrapperFunctionBuffer::from_vec(args.iter().map(|b| b + 1).collect())
//!         })
//!         .connect(e_side)
//!         .unwrap()
//! });
//! let controller = ControllerBuilder::new().connect(c_side).unwrap();
//! let tag = controller.function_tag("add_one").unwrap();
//! let out = controller.call(tag, &[1, 2, 3]).unwrap().wait().unwrap();
//! assert_eq!(out.as_slice(), &[2, 3, 4]);
//! controller.disconnect();
//! executor.join().unwrap().disconnect();
//! ```
//!
//! # How an endpoint works
//! The engine behind [`Endpoint`] decides who reads the inbound side, who
//! runs handlers, and how a disconnect proceeds.
//!
//! ## Roles
//! * The **lead**: exactly one thread at a time reads the transport. While
//!   it leads it only *routes*: a result completes its pending-call slot, an
//!   incoming call is handed on (never run), a `Hangup` ends the
//!   connection. Routing never blocks on the peer: incoming calls beyond
//!   [`EndpointConfig::max_queued_calls`] are refused with a "busy" error
//!   result instead of stopping the reader.
//! * **Callers** waiting synchronously for their own result take the lead
//!   themselves, so a lone caller writes its frame and reads its result on
//!   its own thread: no hand-over, no thread hop. A waiting caller never
//!   runs a handler (seed 002: a wait is explicit and runs nothing else):
//!   calls it reads go to the queue for a worker. Once its own result is
//!   in, it reads on without waiting whatever has already arrived (a
//!   bounded batch, stopping at an incoming call), so pipelined calls
//!   behind it find their results done and need not lead at all.
//! * **Workers** are the connection's own threads (`orcwire-rx`). One
//!   starts with the connection; it leads while no caller wants to. When a
//!   worker reads a call it gives up the lead and runs the handler itself,
//!   on the thread that read it (no hop), or hands it to the user's
//!   [`TaskDispatcher`] if one was configured. Before a worker runs a
//!   handler it makes sure another worker is idle (spawning one, up to
//!   [`EndpointConfig::max_workers`]), so handlers that call the peer back
//!   (re-entrant chains) or block never leave the connection unread.
//! * **Batches.** A worker that finds several calls already arrived reads
//!   up to 16 in one turn and runs them as its batch: it claims each with
//!   one compare-and-swap (no lock per call), and their results —
//!   returned, or given through a responder on its thread — go out
//!   together when the batch ends (before that if a handler of it waits
//!   for a result of its own). An idle worker looks at running batches
//!   (within the standby's period below); one it finds at the same call
//!   on two looks is stuck in a handler, and it takes over the calls not
//!   yet started and sends the results held: a call or a result never
//!   waits for a blocking handler of its batch much longer than a call not
//!   yet read would. [`Pipeline`](crate::Pipeline) sends a caller's calls
//!   sixteen at a time and takes the results of its own calls straight
//!   from the transport when it reads them itself.
//!
//! ## Deadlock freedom
//! A thread that sends and finds the transport full calls the engine's
//! `on_wait` hook before it sleeps; the hook makes sure some other thread
//! leads (waking or starting a worker), so the inbound side keeps draining
//! and the peer's sends — and so its reading — can progress. At the worker
//! cap the last free worker does not start a handler: it keeps reading and
//! queues (or refuses) calls. A standby worker (started with the first
//! call) also takes a lead left free while a handler runs — it notices
//! within 100 ms, then looks every millisecond — so results
//! for futures flow even while a handler blocks without sending. If every
//! worker is inside a handler that blocks without sending or calling the
//! peer, reading resumes when one of them returns.
//!
//! ## Disconnect
//! 1. Close the gate: no call can start, no incoming call is accepted,
//!    no handler starts (each handler start enters the gate). Exactly one
//!    caller (the *doer*) does steps 2-6; all others wait for step 6.
//! 2. Drop the queued incoming calls without running them; wait (bounded)
//!    for calls being sent to leave the gate.
//! 3. Send `Hangup`: to the peer it is the request, or our acknowledgement.
//! 4. If we started it, wait (bounded by `hangup_timeout`) for the peer's
//!    `Hangup`, end of stream, or death.
//! 5. Close the transport; fail every pending call with `Disconnected`, or
//!    `PeerDied` if the peer is known dead.
//! 6. Stop the workers; release every remote-handle export and kill every
//!    imported handle ([`crate::handles`]); mark the connection
//!    disconnected; run the disconnect callbacks.
//!
//! When `disconnect()` returns no handler of the endpoint starts any more;
//! handlers already running may finish, and their results are discarded.

use std::fmt;
use std::time::Instant;

use crate::buffer::WrapperFunctionBuffer;
use crate::dispatch::TaskDispatcher;
pub use crate::engine::{DisconnectReason, EndpointConfig};
use crate::engine::{Driver, Inner};
use crate::handler::{Handler, HandlerTable, HandlerTag, Responder};
use crate::message::Opcode;
use crate::pending::{CallError, CallHost, PendingCall};
use crate::sps::{self, Dialect, SetupInfo};
use crate::sync::Arc;
use crate::transport::{Received, Transport, TransportError};

mod builder;
mod llvm_bootstrap;

pub use builder::{ConnectError, ControllerBuilder, ExecutorBuilder};

/// Which side of the connection an endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side holding the JIT (LLVM's `ExecutionSession`).
    Controller,
    /// The side running JIT'd code.
    Executor,
}

/// Disconnects when the last user handle is dropped.
struct Owner {
    inner: Arc<Inner>,
    /// False only for an endpoint that never started (its reader thread
    /// could not be spawned): there is nothing to disconnect.
    armed: bool,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if self.armed {
            self.inner.disconnect(DisconnectReason::Local);
        }
    }
}

/// One side of a connection. Cheap to clone; the connection is
/// disconnected when the last clone is dropped (or by
/// [`disconnect`](Self::disconnect)).
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) inner: Arc<Inner>,
    role: Role,
    /// Shared by every call's handle (one allocation per endpoint, not
    /// per call).
    pub(crate) driver: Arc<dyn CallHost>,
    _owner: Arc<Owner>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("role", &self.role)
            .field("transport", &self.inner.transport.name())
            .field("closed", &self.inner.gate.is_closed())
            .finish()
    }
}

impl Endpoint {
    fn start(inner: Arc<Inner>, role: Role) -> Result<Self, ConnectError> {
        let owner = Arc::new(Owner {
            inner: Arc::clone(&inner),
            armed: true,
        });
        // Before the reader runs, so that a handler of the very first call
        // finds it (`Responder::endpoint`). Weak: it keeps nothing alive.
        let weak = Arc::downgrade(&owner);
        *inner.user_handle.lock() = Some(Box::new(move || {
            let owner = weak.upgrade()?;
            let inner = Arc::clone(&owner.inner);
            Some(Endpoint {
                driver: Arc::new(Driver(Arc::clone(&inner))),
                inner,
                role,
                _owner: owner,
            })
        }));
        if let Err(e) = inner.start() {
            *inner.user_handle.lock() = None;
            // Nobody else can hold it yet: the reader never ran.
            if let Ok(mut never_started) = Arc::try_unwrap(owner) {
                never_started.armed = false;
            }
            return Err(e.into());
        }
        Ok(Self {
            _owner: owner,
            driver: Arc::new(Driver(Arc::clone(&inner))),
            inner,
            role,
        })
    }

    /// Which side this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The executor's `Setup` information (sent by us on the executor,
    /// received on the controller).
    pub fn setup_info(&self) -> &SetupInfo {
        &self.inner.setup
    }

    /// The tag of the executor wrapper function `name`, as published in
    /// `Setup`.
    ///
    /// Against an LLVM executor only its wrapper functions (names ending
    /// in `_wrapper`) have tags: a tag is the function's address in the
    /// executor, and "only registered entry points can be called" is then
    /// the executor's guarantee to give, not orcwire's. A call to a bad
    /// tag crashes LLVM's executor; orcwire reports that as the peer's
    /// hang-up or death and fails the pending calls. Other published
    /// addresses (data objects such as `..._Instance`) are read with
    /// [`bootstrap_symbol`](Self::bootstrap_symbol).
    pub fn function_tag(&self, name: &str) -> Option<HandlerTag> {
        self.inner
            .setup
            .functions(self.inner.dialect)
            .find(|(n, _)| *n == name)
            .map(|(_, t)| HandlerTag::new(t))
    }

    /// The address (or, from an orcwire executor, the tag) the executor
    /// published under `name` in its `Setup`, whatever it names.
    pub fn bootstrap_symbol(&self, name: &str) -> Option<u64> {
        self.inner.setup.symbol(name)
    }

    /// What the peer speaks, as its `Setup` showed (the executor's own
    /// choice on the executor side).
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// The tag under which the executor calls the controller handler
    /// `name` (declared with [`ExecutorBuilder::controller_handler`]).
    pub fn handler_tag(&self, name: &str) -> Option<HandlerTag> {
        self.inner
            .setup
            .handler_tags()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| HandlerTag::new(t))
    }

    /// Calls the entry point `tag` on the other side with `args`.
    ///
    /// Returns as soon as the call is sent; the [`PendingCall`] receives
    /// the result.
    ///
    /// # Errors
    /// [`CallError::Disconnected`] / [`CallError::PeerDied`] once the
    /// connection is closing or closed; [`CallError::Send`] if the
    /// transport refuses the message (for example, too large).
    ///
    /// Releases of dropped [`RemoteHandle`](crate::handles::RemoteHandle)s
    /// go out first ([release points](crate::handles#when-releases-are-sent)).
    pub fn call(&self, tag: HandlerTag, args: &[u8]) -> Result<PendingCall, CallError> {
        self.send_releases(None);
        let seq = self.inner.call(tag.get(), args, None)?;
        Ok(PendingCall::new(seq, Arc::clone(&self.driver)))
    }

    /// As [`call`](Self::call), but gives up with
    /// [`CallError::TimedOut`] (nothing sent) if the transport stays full
    /// until `deadline`. A connection whose peer stopped reading cannot
    /// hold the caller longer than that.
    ///
    /// # Errors
    /// As [`call`](Self::call), and [`CallError::TimedOut`].
    pub fn call_deadline(
        &self,
        tag: HandlerTag,
        args: &[u8],
        deadline: Instant,
    ) -> Result<PendingCall, CallError> {
        self.send_releases(Some(deadline));
        let seq = self.inner.call(tag.get(), args, Some(deadline))?;
        Ok(PendingCall::new(seq, Arc::clone(&self.driver)))
    }

    /// Calls `tag` and waits for the result, all within `timeout`: the
    /// wait for room to send and the wait for the result. On
    /// [`CallError::TimedOut`] the call is forgotten (a late result is
    /// discarded).
    ///
    /// ```
    /// use std::time::Duration;
    /// use orcwire::{CallError, ControllerBuilder, ExecutorBuilder, StreamTransport};
    /// use orcwire::StreamConfig;
    ///
    /// let (c_side, e_side) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
    /// let executor = std::thread::spawn(move || {
    ///     ExecutorBuilder::new()
    ///         // Never answers (until the connection ends).
    ///         .function("silent", |_args, responder| std::mem::forget(responder))
    ///         .connect(e_side)
    ///         .unwrap()
    /// });
    /// let controller = ControllerBuilder::new().connect(c_side).unwrap();
    /// let tag = controller.function_tag("silent").unwrap();
    /// let r = controller.call_sync_timeout(tag, b"", Duration::from_millis(20));
    /// assert_eq!(r, Err(CallError::TimedOut));
    /// assert_eq!(controller.pending_calls(), 0);
    /// controller.disconnect();
    /// executor.join().unwrap().disconnect();
    /// ```
    ///
    /// # Errors
    /// As [`call`](Self::call) and [`PendingCall::wait_timeout`].
    pub fn call_sync_timeout(
        &self,
        tag: HandlerTag,
        args: &[u8],
        timeout: std::time::Duration,
    ) -> Result<WrapperFunctionBuffer, CallError> {
        let deadline = Instant::now() + timeout;
        self.send_releases(Some(deadline));
        let seq = self.inner.call(tag.get(), args, Some(deadline))?;
        self.inner.wait_own(seq, Some(deadline))
    }

    /// Calls `tag` and waits for the result: `call(tag, args)?.wait()`.
    ///
    /// # Errors
    /// As [`call`](Self::call) and [`PendingCall::wait`].
    pub fn call_sync(
        &self,
        tag: HandlerTag,
        args: &[u8],
    ) -> Result<WrapperFunctionBuffer, CallError> {
        self.send_releases(None);
        let seq = self.inner.call(tag.get(), args, None)?;
        self.inner.wait_own(seq, None)
    }

    /// Disconnects. Safe to call from many threads at once and from inside
    /// a handler; every caller returns only when no further call can be
    /// made or accepted on this side, the peer has been told, and every
    /// pending call has completed (with an error if no result came). See
    /// [the disconnect steps](crate::endpoint#disconnect). Releases of
    /// dropped remote handles are sent first, then every export is
    /// released and every handle dies ([`crate::handles`]).
    pub fn disconnect(&self) {
        let deadline = Instant::now() + self.inner.config.hangup_timeout;
        self.send_releases(Some(deadline));
        self.inner.disconnect(DisconnectReason::Local);
    }

    /// Whether the connection is fully disconnected.
    pub fn is_disconnected(&self) -> bool {
        self.inner.is_disconnected()
    }

    /// Whether the connection is closing or closed to new calls.
    pub fn is_closing(&self) -> bool {
        self.inner.gate.is_closed()
    }

    /// Why the connection ended, once it has.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.inner.reason()
    }

    /// Runs `f` once the connection is disconnected (at once if it already
    /// is), with the reason.
    pub fn on_disconnect(&self, f: impl FnOnce(&DisconnectReason) + Send + 'static) {
        self.inner.add_disconnect_callback(Box::new(f));
    }

    /// Calls waiting for a result right now.
    pub fn pending_calls(&self) -> usize {
        self.inner.pending.len()
    }

    /// Number of handlers bound on this side.
    pub fn handler_count(&self) -> usize {
        self.inner.handlers.len()
    }

    /// `(tag, name)` of every handler the peer can call on this side.
    pub fn bound_handlers(&self) -> Vec<(HandlerTag, String)> {
        self.inner.handlers.entries()
    }

    /// The transport's short name.
    pub fn transport_name(&self) -> &'static str {
        self.inner.transport.name()
    }

    /// The task dispatcher running incoming calls, if one was configured
    /// (by default they run on the connection's own workers).
    pub fn dispatcher(&self) -> Option<Arc<dyn TaskDispatcher>> {
        self.inner.dispatcher.clone()
    }
}
