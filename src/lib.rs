//! orcwire: LLVM-ORC-style wrapper-function calls between a JIT
//! *controller* process and an *executor* process.
//!
//! A wrapper function takes a buffer of bytes and returns a buffer of
//! bytes ([`WrapperFunctionBuffer`]); orcwire carries those calls in both
//! directions and never interprets the bytes. The pieces:
//!
//! * [`message`]: LLVM SimpleRemoteEPC's message model (`Setup`, `Hangup`,
//!   `Result`, `CallWrapper`), shared by every transport.
//! * [`Transport`]: moves messages. [`StreamTransport`] runs over pipes,
//!   Unix sockets or TCP (wire-compatible with LLVM's
//!   `FDSimpleRemoteEPCTransport`); the `orcwire-shm` crate provides the
//!   shared-memory transport.
//! * [`Endpoint`]: the connection engine for both roles — pending calls,
//!   handler tags, the disconnect [gate], and the hang-up handshake.
//! * [`Session`], [`Service`], [`TaskDispatcher`]: orc-rt's executor-side
//!   session with ordered detach/shutdown; [`attach_executor`] plugs an
//!   endpoint in as its `ControllerAccess`.
//!
//! See [`endpoint`] for a complete example.
#![deny(missing_docs)]

pub mod access;
pub mod buffer;
pub mod dispatch;
pub mod endpoint;
pub mod engine;
pub mod gate;
pub mod handler;
pub mod message;
pub mod pending;
pub mod session;
pub mod sps;
#[cfg(not(orcwire_loom))]
pub mod stream;
pub mod transport;
mod waker;

/// The sync shim (std's or loom's primitives), as `crate::sync`.
use orcwire_sync as sync;

pub use access::{attach_executor, AttachError};
pub use buffer::WrapperFunctionBuffer;
pub use dispatch::{
    is_dispatcher_thread, DispatchError, InlineTaskDispatcher, Task, TaskDispatcher,
    ThreadPoolTaskDispatcher,
};
pub use endpoint::{
    ConnectError, ControllerBuilder, DisconnectReason, Endpoint, EndpointConfig, ExecutorBuilder,
    Role,
};
pub use handler::{HandlerTag, Responder};
pub use message::{Message, Opcode};
pub use pending::{CallError, PendingCall};
pub use session::{ControllerAccess, Service, Session, SessionError};
#[cfg(not(orcwire_loom))]
pub use stream::StreamTransport;
pub use transport::{Received, Transport, TransportError};
