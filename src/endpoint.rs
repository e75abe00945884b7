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
//!   calls it reads go to the queue for a worker.
//! * **Workers** are the connection's own threads (`orcwire-rx`). One
//!   starts with the connection; it leads while no caller wants to. When a
//!   worker reads a call it gives up the lead and runs the handler itself,
//!   on the thread that read it (no hop), or hands it to the user's
//!   [`TaskDispatcher`] if one was configured. Before a worker runs a
//!   handler it makes sure another worker is idle (spawning one, up to
//!   [`EndpointConfig::max_workers`]), so handlers that call the peer back
//!   (re-entrant chains) or block never leave the connection unread.
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
//! 6. Mark the connection disconnected, stop the workers, run the
//!    disconnect callbacks.
//!
//! When `disconnect()` returns no handler of the endpoint starts any more;
//! handlers already running may finish, and their results are discarded.

use std::fmt;
use std::time::Instant;

use crate::buffer::WrapperFunctionBuffer;
use crate::dispatch::TaskDispatcher;
pub use crate::engine::{DisconnectReason, EndpointConfig};
use crate::engine::{Driver, Inner};
use crate::handler::{HandlerFn, HandlerTable, HandlerTag, Responder};
use crate::message::Opcode;
use crate::pending::{CallError, CallHost, PendingCall};
use crate::sps::{self, Dialect, SetupInfo};
use crate::sync::Arc;
use crate::transport::{Received, Transport, TransportError};

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The executor's `Setup` did not arrive in time.
    #[error("the executor sent no Setup message within {0:?}; check that it started and uses the same transport")]
    SetupTimeout(std::time::Duration),
    /// The transport failed during set-up.
    #[error("the transport failed during connection set-up: {0}")]
    Transport(#[from] TransportError),
    /// The `Setup` message was malformed or of another protocol version.
    #[error("the executor's Setup message is unusable: {0}")]
    Setup(#[from] sps::SpsError),
    /// The first message was not `Setup`.
    #[error("expected the executor's Setup message first, got {0:?}; the peer is not an orcwire executor")]
    UnexpectedMessage(Opcode),
    /// The reader thread could not be started.
    #[error("could not start the connection's worker thread: {0}")]
    Thread(#[from] std::io::Error),
    /// Two entries were registered under one name.
    #[error("\"{0}\" is registered twice; each name may be registered once")]
    DuplicateName(String),
    /// Controller handlers were declared for an LLVM controller.
    #[error("controller handler \"{0}\" was declared, but the executor speaks LLVM's dialect: an LLVM controller has no handlers to call by tag; drop the declaration or speak Dialect::Orcwire")]
    HandlersNeedOrcwire(String),
}

struct Common {
    dispatcher: Option<Arc<dyn TaskDispatcher>>,
    config: EndpointConfig,
}

impl Common {
    fn new() -> Self {
        Self {
            dispatcher: None,
            config: EndpointConfig::default(),
        }
    }

    fn dispatcher(&mut self) -> Option<Arc<dyn TaskDispatcher>> {
        self.dispatcher.take()
    }
}

fn wrap_sync<F>(f: F) -> Arc<HandlerFn>
where
    F: Fn(&[u8]) -> WrapperFunctionBuffer + Send + Sync + 'static,
{
    Arc::new(move |args: WrapperFunctionBuffer, r: Responder| {
        r.respond(f(args.as_slice()));
    })
}

/// Builds the controller side of a connection.
pub struct ControllerBuilder {
    common: Common,
    handlers: Vec<(String, Arc<HandlerFn>)>,
}

impl ControllerBuilder {
    /// A builder with no handlers, handlers run on the connection's own
    /// workers (see [How an endpoint works](self#how-an-endpoint-works)),
    /// and default [`EndpointConfig`].
    pub fn new() -> Self {
        Self {
            common: Common::new(),
            handlers: Vec::new(),
        }
    }

    /// Registers the handler the executor reaches under `name`. Only
    /// registered handlers can be called.
    pub fn handler<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(WrapperFunctionBuffer, Responder) + Send + Sync + 'static,
    {
        self.handlers.push((name.to_owned(), Arc::new(f)));
        self
    }

    /// Registers a handler that answers synchronously with its return value.
    pub fn sync_handler<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(&[u8]) -> WrapperFunctionBuffer + Send + Sync + 'static,
    {
        self.handlers.push((name.to_owned(), wrap_sync(f)));
        self
    }

    /// Runs incoming calls on `dispatcher` (for example a
    /// [`Session`](crate::Session)'s) instead of on the connection's own
    /// workers. Each call then costs a boxed task and, for a pool, a thread
    /// hop; with too few threads, handlers that call the peer back can wait
    /// for each other.
    pub fn dispatcher(mut self, dispatcher: Arc<dyn TaskDispatcher>) -> Self {
        self.common.dispatcher = Some(dispatcher);
        self
    }

    /// Replaces the endpoint configuration.
    pub fn config(mut self, config: EndpointConfig) -> Self {
        self.common.config = config;
        self
    }

    /// Waits for the executor's `Setup` on `transport`, binds the handlers
    /// and starts the connection.
    ///
    /// # Errors
    /// A [`ConnectError`] if `Setup` does not come in time, is malformed or
    /// of another protocol version, or a thread cannot start. The transport
    /// is closed on error.
    pub fn connect(mut self, transport: Arc<dyn Transport>) -> Result<Endpoint, ConnectError> {
        let result = self.connect_inner(&transport);
        if result.is_err() {
            transport.close();
        }
        result
    }

    fn connect_inner(&mut self, transport: &Arc<dyn Transport>) -> Result<Endpoint, ConnectError> {
        let mut names = std::collections::HashSet::new();
        for (n, _) in &self.handlers {
            if !names.insert(n.as_str()) {
                return Err(ConnectError::DuplicateName(n.clone()));
            }
        }
        let timeout = self.common.config.setup_timeout;
        let deadline = Instant::now() + timeout;
        let (setup, dialect) = loop {
            match transport.recv(Some(deadline))? {
                Received::Message(m) if m.opcode == Opcode::Setup => {
                    break SetupInfo::decode(m.payload.as_slice())?;
                }
                Received::Message(m) => return Err(ConnectError::UnexpectedMessage(m.opcode)),
                Received::Interrupted => continue,
                Received::TimedOut => return Err(ConnectError::SetupTimeout(timeout)),
            }
        };
        let mut table = HandlerTable::default();
        if dialect == Dialect::Orcwire {
            // The protocol entry is a capability: present, it must match.
            let version = setup.protocol_version()?;
            if version != sps::PROTOCOL_VERSION {
                return Err(ConnectError::Setup(sps::SpsError::VersionMismatch {
                    ours: sps::PROTOCOL_VERSION,
                    theirs: version,
                }));
            }
            for (name, tag) in setup.handler_tags() {
                match self.handlers.iter().find(|(n, _)| n == name) {
                    Some((_, f)) => table.insert(HandlerTag::new(tag), name, Arc::clone(f)),
                    None => table.insert_unbound(HandlerTag::new(tag), name),
                }
            }
        }
        let dispatcher = self.common.dispatcher();
        let config = self.common.config.clone();
        let inner = Inner::new(
            Arc::clone(transport),
            table,
            dispatcher,
            config,
            setup,
            dialect,
        );
        Endpoint::start(inner, Role::Controller)
    }
}

impl Default for ControllerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the executor side of a connection.
pub struct ExecutorBuilder {
    common: Common,
    functions: Vec<(String, Arc<HandlerFn>)>,
    handler_names: Vec<String>,
    dialect: Dialect,
}

impl ExecutorBuilder {
    /// A builder with no functions, functions run on the connection's own
    /// workers (see [How an endpoint works](self#how-an-endpoint-works)),
    /// and default [`EndpointConfig`].
    pub fn new() -> Self {
        Self {
            common: Common::new(),
            functions: Vec::new(),
            handler_names: Vec::new(),
            dialect: Dialect::Orcwire,
        }
    }

    /// Registers a wrapper function the controller may call as `name`; it
    /// is published in `Setup` as a bootstrap symbol `name -> tag`.
    pub fn function<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(WrapperFunctionBuffer, Responder) + Send + Sync + 'static,
    {
        self.functions.push((name.to_owned(), Arc::new(f)));
        self
    }

    /// Registers a wrapper function that answers with its return value.
    pub fn sync_function<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(&[u8]) -> WrapperFunctionBuffer + Send + Sync + 'static,
    {
        self.functions.push((name.to_owned(), wrap_sync(f)));
        self
    }

    /// Speaks `dialect` to the controller (default
    /// [`Dialect::Orcwire`]): [`Dialect::Llvm14`] or [`Dialect::Llvm15`]
    /// for a controller that is LLVM's own `SimpleRemoteEPC` of that
    /// version. The executor talks first, so it must be told. Controller
    /// handlers ([`controller_handler`](Self::controller_handler)) exist
    /// only between orcwire endpoints.
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// Declares a controller handler this executor will call; after
    /// connecting, [`Endpoint::handler_tag`] gives its tag.
    pub fn controller_handler(mut self, name: &str) -> Self {
        self.handler_names.push(name.to_owned());
        self
    }

    /// Runs incoming calls on `dispatcher` instead of on the connection's
    /// own workers (see [`ControllerBuilder::dispatcher`]).
    pub fn dispatcher(mut self, dispatcher: Arc<dyn TaskDispatcher>) -> Self {
        self.common.dispatcher = Some(dispatcher);
        self
    }

    /// Replaces the endpoint configuration.
    pub fn config(mut self, config: EndpointConfig) -> Self {
        self.common.config = config;
        self
    }

    /// Sends `Setup` on `transport` and starts the connection.
    ///
    /// # Errors
    /// A [`ConnectError`] if `Setup` cannot be sent, a name is registered
    /// twice, or a thread cannot start. The transport is closed on error.
    pub fn connect(mut self, transport: Arc<dyn Transport>) -> Result<Endpoint, ConnectError> {
        let result = self.connect_inner(&transport);
        if result.is_err() {
            transport.close();
        }
        result
    }

    fn connect_inner(&mut self, transport: &Arc<dyn Transport>) -> Result<Endpoint, ConnectError> {
        let mut setup = SetupInfo::new_orcwire(sps::host_target_triple(), sps::host_page_size());
        if self.dialect != Dialect::Orcwire {
            setup.bootstrap_map.clear();
        }
        let mut table = HandlerTable::default();
        let mut names = std::collections::HashSet::new();
        // Tags are small integers counted from 1, so they reveal nothing
        // about either process's address space.
        let mut next_tag = 1u64;
        for (name, f) in &self.functions {
            if !names.insert(name.clone()) {
                return Err(ConnectError::DuplicateName(name.clone()));
            }
            let tag = HandlerTag::new(next_tag);
            next_tag += 1;
            table.insert(tag, name, Arc::clone(f));
            setup.bootstrap_symbols.push((name.clone(), tag.get()));
        }
        if self.dialect.is_llvm() {
            if let Some(name) = self.handler_names.first() {
                return Err(ConnectError::HandlersNeedOrcwire(name.clone()));
            }
            // What LLVM's `SimpleRemoteEPC::Create` looks up at set-up,
            // unless the application registered it.
            for (name, kind) in llvm_bootstrap::SYMBOLS {
                if !names.insert(name.to_string()) {
                    continue;
                }
                let tag = HandlerTag::new(next_tag);
                next_tag += 1;
                if let llvm_bootstrap::Kind::Wrapper(service) = kind {
                    table.insert(tag, name, llvm_bootstrap::unimplemented(service));
                }
                setup.bootstrap_symbols.push((name.to_string(), tag.get()));
            }
        }
        for name in &self.handler_names {
            let full = format!("{}{name}", sps::HANDLER_PREFIX);
            if !names.insert(full.clone()) {
                return Err(ConnectError::DuplicateName(name.clone()));
            }
            setup.bootstrap_symbols.push((full, next_tag));
            next_tag += 1;
        }
        transport.send(Opcode::Setup, 0, 0, &setup.encode_for(self.dialect))?;
        let dispatcher = self.common.dispatcher();
        let config = self.common.config.clone();
        let inner = Inner::new(
            Arc::clone(transport),
            table,
            dispatcher,
            config,
            setup,
            self.dialect,
        );
        Endpoint::start(inner, Role::Executor)
    }
}

impl Default for ExecutorBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The bootstrap symbols an LLVM 14 controller requires of an executor.
///
/// `SimpleRemoteEPC::Create` looks these up before it returns (the JIT
/// dispatch context and function, `run_as_main`, the default memory
/// manager and memory access), and LLVM's dylib manager and EH-frame
/// registration look up the rest on first use. An orcwire executor
/// speaking LLVM's dialect publishes every one the application did not
/// register itself, so that an unmodified LLVM controller connects and
/// calls the application's functions. **None of them is implemented
/// yet:** the wrappers answer with an error (an LLVM caller sees a failed
/// result), and the data objects are tags no handler answers. Running
/// LLVM's JIT inside an orcwire executor (issue #12) registers real ones
/// under these names.
mod llvm_bootstrap {
    use std::sync::Arc;

    use crate::buffer::WrapperFunctionBuffer;
    use crate::handler::HandlerFn;

    pub(super) enum Kind {
        /// An address LLVM keeps (never calls as a wrapper).
        Data,
        /// A wrapper function of the named service.
        Wrapper(&'static str),
    }

    /// LLVM 14's set, and what LLVM 19 added or renamed.
    pub(super) const SYMBOLS: [(&str, Kind); 26] = [
        ("__llvm_orc_SimpleRemoteEPC_dispatch_ctx", Kind::Data),
        ("__llvm_orc_SimpleRemoteEPC_dispatch_fn", Kind::Data),
        (
            "__llvm_orc_bootstrap_run_as_main_wrapper",
            Kind::Wrapper("run_as_main"),
        ),
        (
            "__llvm_orc_SimpleExecutorMemoryManager_Instance",
            Kind::Data,
        ),
        (
            "__llvm_orc_SimpleExecutorMemoryManager_reserve_wrapper",
            Kind::Wrapper("the memory manager"),
        ),
        (
            "__llvm_orc_SimpleExecutorMemoryManager_finalize_wrapper",
            Kind::Wrapper("the memory manager"),
        ),
        (
            "__llvm_orc_SimpleExecutorMemoryManager_deallocate_wrapper",
            Kind::Wrapper("the memory manager"),
        ),
        (
            "__llvm_orc_bootstrap_mem_write_uint8s_wrapper",
            Kind::Wrapper("memory access"),
        ),
        (
            "__llvm_orc_bootstrap_mem_write_uint16s_wrapper",
            Kind::Wrapper("memory access"),
        ),
        (
            "__llvm_orc_bootstrap_mem_write_uint32s_wrapper",
            Kind::Wrapper("memory access"),
        ),
        (
            "__llvm_orc_bootstrap_mem_write_uint64s_wrapper",
            Kind::Wrapper("memory access"),
        ),
        (
            "__llvm_orc_bootstrap_mem_write_buffers_wrapper",
            Kind::Wrapper("memory access"),
        ),
        (
            "__llvm_orc_bootstrap_register_ehframe_section_wrapper",
            Kind::Wrapper("EH-frame registration"),
        ),
        (
            "__llvm_orc_bootstrap_deregister_ehframe_section_wrapper",
            Kind::Wrapper("EH-frame registration"),
        ),
        ("__llvm_orc_SimpleExecutorDylibManager_Instance", Kind::Data),
        (
            "__llvm_orc_SimpleExecutorDylibManager_open_wrapper",
            Kind::Wrapper("the dylib manager"),
        ),
        (
            "__llvm_orc_SimpleExecutorDylibManager_lookup_wrapper",
            Kind::Wrapper("the dylib manager"),
        ),
        (
            "__llvm_orc_bootstrap_run_as_void_function_wrapper",
            Kind::Wrapper("run_as_void_function"),
        ),
        (
            "__llvm_orc_bootstrap_run_as_int_function_wrapper",
            Kind::Wrapper("run_as_int_function"),
        ),
        (
            "llvm_orc_registerEHFrameSectionWrapper",
            Kind::Wrapper("EH-frame registration"),
        ),
        (
            "llvm_orc_deregisterEHFrameSectionWrapper",
            Kind::Wrapper("EH-frame registration"),
        ),
        (
            "__llvm_orc_ExecutorSharedMemoryMapperService_Instance",
            Kind::Data,
        ),
        (
            "__llvm_orc_ExecutorSharedMemoryMapperService_Reserve",
            Kind::Wrapper("the shared-memory mapper"),
        ),
        (
            "__llvm_orc_ExecutorSharedMemoryMapperService_Initialize",
            Kind::Wrapper("the shared-memory mapper"),
        ),
        (
            "__llvm_orc_ExecutorSharedMemoryMapperService_Deinitialize",
            Kind::Wrapper("the shared-memory mapper"),
        ),
        (
            "__llvm_orc_ExecutorSharedMemoryMapperService_Release",
            Kind::Wrapper("the shared-memory mapper"),
        ),
    ];

    /// A wrapper that answers every call with an error naming `service`.
    pub(super) fn unimplemented(service: &'static str) -> Arc<HandlerFn> {
        Arc::new(move |_args, responder| {
            responder.respond(WrapperFunctionBuffer::out_of_band_error(format!(
                "this orcwire executor does not implement {service} (LLVM's JIT in an orcwire executor is issue #12)"
            )))
        })
    }
}

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
    inner: Arc<Inner>,
    role: Role,
    /// Shared by every call's handle (one allocation per endpoint, not
    /// per call).
    driver: Arc<dyn CallHost>,
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
    pub fn call(&self, tag: HandlerTag, args: &[u8]) -> Result<PendingCall, CallError> {
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
        self.call_deadline(tag, args, deadline)?
            .wait_deadline(deadline)
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
        self.call(tag, args)?.wait()
    }

    /// Disconnects. Safe to call from many threads at once and from inside
    /// a handler; every caller returns only when no further call can be
    /// made or accepted on this side, the peer has been told, and every
    /// pending call has completed (with an error if no result came). See
    /// [the disconnect steps](self#disconnect).
    pub fn disconnect(&self) {
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
