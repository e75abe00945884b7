//! The executor's `ControllerAccess` (orc-rt's name for the executor's
//! connection to its controller), backed by an [`Endpoint`].
//!
//! "ControllerAccess provides an abstract interface for bidirectional RPC
//! between the executor (running JIT'd code) and the controller ...
//! Calls from executor to controller are made via callController, with
//! handler tags ... specifying the target handler in the controller"
//! (seed 000). Here `callController` is [`Endpoint::call`] with a tag from
//! [`Endpoint::handler_tag`], and detaching is
//! [`Endpoint::disconnect`].

use crate::endpoint::{ConnectError, Endpoint, ExecutorBuilder};
use crate::session::{ControllerAccess, Session, SessionError};
use crate::sync::Arc;
use crate::transport::Transport;

impl ControllerAccess for Endpoint {
    fn disconnect(&self) {
        Endpoint::disconnect(self);
    }
}

/// Why [`attach_executor`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The connection could not be set up.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The session refused the access (already attached, detached, or
    /// shutting down).
    #[error("the session refused the controller connection: {0}")]
    Session(#[from] SessionError),
}

/// Connects an executor endpoint built by `builder` over `transport` and
/// attaches it to `session` as its controller access.
///
/// Incoming calls run on the session's task dispatcher, so session
/// shutdown waits for them. When the connection ends for any reason (the
/// controller hangs up, dies, or the session detaches) the session is
/// detached and its services are told.
///
/// ```
/// use orcwire::{attach_executor, ControllerBuilder, ExecutorBuilder, Session};
/// use orcwire::{StreamTransport, ThreadPoolTaskDispatcher, WrapperFunctionBuffer};
/// use orcwire::StreamConfig;
/// use std::sync::Arc;
///
/// let (c, e) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
/// let session = Session::new(Arc::new(ThreadPoolTaskDispatcher::new(2).unwrap()));
/// let builder = ExecutorBuilder::new()
///     .sync_function("answer", |_: &[u8]| WrapperFunctionBuffer::from_slice(&[42]));
/// let executor = attach_executor(&session, builder, e).unwrap();
/// let controller = ControllerBuilder::new().connect(c).unwrap();
/// let tag = controller.function_tag("answer").unwrap();
/// assert_eq!(controller.call_sync(tag, b"").unwrap().as_slice(), &[42]);
/// session.wait_for_shutdown().unwrap(); // detaches: the controller sees the hang-up
/// assert!(executor.is_disconnected());
/// ```
///
/// # Errors
/// [`AttachError`] if the connection cannot be set up or the session does
/// not accept it; the connection is then closed.
pub fn attach_executor(
    session: &Session,
    builder: ExecutorBuilder,
    transport: Arc<dyn Transport>,
) -> Result<Endpoint, AttachError> {
    let ep = builder
        .dispatcher(session.dispatcher())
        .connect(transport)?;
    if let Err(e) = session.attach(Arc::new(ep.clone())) {
        ep.disconnect();
        return Err(e.into());
    }
    let session = session.clone();
    ep.on_disconnect(move |_| session.detach());
    Ok(ep)
}
