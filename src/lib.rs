//! orcwire: LLVM-ORC-style wrapper-function calls between a JIT
//! *controller* process and an *executor* process.
//!
//! A wrapper function takes a buffer of bytes and returns a buffer of
//! bytes ([`WrapperFunctionBuffer`]); orcwire carries those calls in both
//! directions and never interprets the bytes. The pieces:
//!
//! * [`Message`]: LLVM SimpleRemoteEPC's message model (`Setup`, `Hangup`,
//!   `Result`, `CallWrapper`), shared by every transport.
//! * [`Transport`]: moves messages. [`StreamTransport`] runs over pipes,
//!   Unix sockets or TCP (wire-compatible with LLVM's
//!   `FDSimpleRemoteEPCTransport`); the `orcwire-shm` crate provides the
//!   shared-memory transport.
//! * [`Endpoint`]: the connection engine for both roles — pending calls,
//!   handler tags, the disconnect gate, and the hang-up handshake
//!   ([`endpoint`] documents how it works).
//! * [`handles`]: values lent across the connection by id
//!   ([`Endpoint::export`], [`Endpoint::import`] gives a [`RemoteHandle`])
//!   and released deterministically when the peer drops them.
//! * [`Session`], [`Service`], [`TaskDispatcher`]: orc-rt's executor-side
//!   session with ordered detach/shutdown; [`attach_executor`] plugs an
//!   endpoint in as its `ControllerAccess`.
//!
//! # Example
//! ```
//! use orcwire::{ControllerBuilder, ExecutorBuilder, StreamConfig, StreamTransport, WrapperFunctionBuffer};
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
//! # What is public
//! The types above, re-exported at the crate root; the modules that
//! document them ([`endpoint`], [`handles`], [`session`], [`stream`]); [`sps`] (LLVM's
//! Simple Packed Serialization, for wrapper-function arguments and the
//! `Setup` payload); and [`transport`], everything needed to write a
//! transport of one's own. The engine, the gate, the pending-call table and the handler
//! table are implementation: the loom models reach them under
//! `--cfg orcwire_loom` only.
#![deny(missing_docs)]

/// Declares internal modules: private, except under `--cfg orcwire_loom`,
/// where the loom models in `loom-tests` need to reach them (hidden from
/// the docs either way).
macro_rules! internal {
    ($($(#[$attr:meta])* $name:ident;)*) => {$(
        $(#[$attr])*
        #[cfg(orcwire_loom)]
        #[doc(hidden)]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(orcwire_loom))]
        mod $name;
    )*};
}

internal! {
    access;
    buffer;
    dispatch;
    engine;
    gate;
    handler;
    message;
    pending;
    waker;
}
pub mod endpoint;
pub mod handles;
mod pipeline;
pub mod session;
pub mod sps;
#[cfg(not(orcwire_loom))]
pub mod stream;
pub mod transport;

/// The sync shim (std's or loom's primitives), as `crate::sync`.
use orcwire_sync as sync;

pub use access::{attach_executor, AttachError};
pub use buffer::{
    AllocError, CWrapperFunctionBuffer, CWrapperFunctionBufferData, WrapperFunctionBuffer,
};
pub use dispatch::{
    is_dispatcher_thread, DispatchError, InlineTaskDispatcher, Task, TaskDispatcher,
    ThreadPoolTaskDispatcher,
};
pub use endpoint::{
    ConnectError, ControllerBuilder, DisconnectReason, Endpoint, EndpointConfig, ExecutorBuilder,
    Role,
};
pub use handler::{HandlerTag, Responder};
pub use handles::{HandleError, HandleId, RemoteHandle};
pub use message::{Message, Opcode, UnknownOpcode};
pub use pending::{CallError, CallResult, PendingCall};
pub use pipeline::Pipeline;
pub use session::{ControllerAccess, Service, Session, SessionError};
#[cfg(not(orcwire_loom))]
pub use stream::{StreamConfig, StreamError, StreamTransport};
pub use transport::{Arrival, BatchError, Outgoing, Received, Transport, TransportError};
