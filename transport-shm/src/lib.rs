//! orcwire-shm: the shared-memory transport for orcwire.
//!
//! Bottom up: [`mapping`] (the shared bytes), [`layout`] (what lies where
//! in them), [`ring`] (an SPSC byte ring of frames), [`wait`] (spin, then
//! futex), [`transport`] ([`ShmTransport`], an `orcwire::Transport`).
#![deny(missing_docs)]

pub mod layout;
pub mod mapping;
pub mod ring;
pub mod transport;
pub mod wait;

#[cfg(orcwire_loom)]
pub use layout::reset_loom_mocks;
pub use layout::{LayoutError, RingCapacity, SegmentLayout, Side};
pub use mapping::{HeapMapping, SharedMapping};
/// The std/loom shim shared with the core crate, so one
/// `--cfg orcwire_loom` switches both.
pub use orcwire::sync;
pub use ring::{heap_ring, RingConsumer, RingError, RingProducer, WriteStatus};
pub use transport::{required_size, ShmConfig, ShmTransport};
pub use wait::WaitStrategy;
