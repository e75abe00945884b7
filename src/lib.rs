//! orcwire: LLVM-ORC-style wrapper-function calls between a JIT controller
//! and an executor process.
#![deny(missing_docs)]

pub mod buffer;
pub mod message;
#[cfg(not(orcwire_loom))]
pub mod stream;
pub mod sync;
pub mod transport;

pub use buffer::WrapperFunctionBuffer;
pub use message::{Message, Opcode};
#[cfg(not(orcwire_loom))]
pub use stream::StreamTransport;
pub use transport::{Received, Transport, TransportError};
