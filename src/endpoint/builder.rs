//! The builders: [`ControllerBuilder`] and [`ExecutorBuilder`], and why a
//! connection could not be set up ([`ConnectError`]).

use super::*;
use crate::handles::{self, Handles};

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

/// Builds the controller side of a connection.
pub struct ControllerBuilder {
    common: Common,
    handlers: Vec<(String, Handler)>,
}

impl ControllerBuilder {
    /// A builder with no handlers, handlers run on the connection's own
    /// workers (see [How an endpoint works](crate::endpoint#how-an-endpoint-works)),
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
        self.handlers
            .push((name.to_owned(), Handler::general(Arc::new(f))));
        self
    }

    /// Registers a handler that answers synchronously with its return value.
    pub fn sync_handler<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(&[u8]) -> WrapperFunctionBuffer + Send + Sync + 'static,
    {
        self.handlers.push((name.to_owned(), Handler::sync(f)));
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
        let handles = Arc::new(Handles::new(self.common.config.max_handles));
        self.handlers.push((
            handles::RELEASE_FUNCTION.to_owned(),
            Handler::general(handles.release_handler()),
        ));
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
                    Some((_, f)) => table.insert(HandlerTag::new(tag), name, f.clone()),
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
            handles,
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
    functions: Vec<(String, Handler)>,
    handler_names: Vec<String>,
    dialect: Dialect,
}

impl ExecutorBuilder {
    /// A builder with no functions, functions run on the connection's own
    /// workers (see [How an endpoint works](crate::endpoint#how-an-endpoint-works)),
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
        self.functions
            .push((name.to_owned(), Handler::general(Arc::new(f))));
        self
    }

    /// Registers a wrapper function that answers with its return value.
    pub fn sync_function<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(&[u8]) -> WrapperFunctionBuffer + Send + Sync + 'static,
    {
        self.functions.push((name.to_owned(), Handler::sync(f)));
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
        let handles = Arc::new(Handles::new(self.common.config.max_handles));
        if self.dialect == Dialect::Orcwire {
            // Remote handles: the release function both ways, announced.
            setup.bootstrap_map.push(handles::capability());
            self.functions.push((
                handles::RELEASE_FUNCTION.to_owned(),
                Handler::general(handles.release_handler()),
            ));
            self.handler_names
                .push(handles::RELEASE_FUNCTION.to_owned());
        } else {
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
            table.insert(tag, name, f.clone());
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
                    table.insert(
                        tag,
                        name,
                        Handler::general(llvm_bootstrap::unimplemented(service)),
                    );
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
            handles,
        );
        Endpoint::start(inner, Role::Executor)
    }
}

impl Default for ExecutorBuilder {
    fn default() -> Self {
        Self::new()
    }
}
