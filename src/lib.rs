//! orcwire: LLVM-ORC-style wrapper-function calls between a JIT controller
//! and an executor process.
#![deny(missing_docs)]

pub mod buffer;
pub mod message;
pub mod sync;
pub mod transport;

pub use buffer::WrapperFunctionBuffer;
pub use message::{Message, Opcode};
pub use transport::{Received, Transport, TransportError};
