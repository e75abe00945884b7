//! orcwire: LLVM-ORC-style wrapper-function calls between a JIT controller
//! and an executor process.
#![deny(missing_docs)]

pub mod buffer;
pub mod dispatch;
pub mod message;
pub mod session;
pub mod sync;
pub mod transport;

pub use buffer::WrapperFunctionBuffer;
pub use dispatch::{
    is_dispatcher_thread, DispatchError, InlineTaskDispatcher, Task, TaskDispatcher,
    ThreadPoolTaskDispatcher,
};
pub use message::{Message, Opcode};
pub use session::{ControllerAccess, Service, Session, SessionError};
pub use transport::{Received, Transport, TransportError};
