//! [`ShmConfig`], the settings of a shared-memory transport, and
//! [`required_size`], the bytes a segment for them needs.
//!
//! Relies on: the layout's computation (`SegmentLayout::compute`).

use crate::layout::{RingCapacity, SegmentLayout, DEFAULT_MAX_MESSAGE_SIZE};
use crate::wait::WaitStrategy;

/// Settings of a shared-memory transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmConfig {
    /// How blocked sends and receives wait.
    pub wait: WaitStrategy,
    /// Largest message, in bytes. The controller writes it into the
    /// segment; an executor whose own limit is lower refuses to attach.
    pub max_message_size: u64,
    /// Bytes of each ring (one per direction). Used by the controller;
    /// an executor takes the sizes from the segment.
    pub ring_capacity: RingCapacity,
}

impl Default for ShmConfig {
    fn default() -> Self {
        Self {
            wait: WaitStrategy::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            ring_capacity: RingCapacity::default(),
        }
    }
}

/// Bytes a mapping needs for a segment made with `config`.
///
/// ```
/// use orcwire_shm::{required_size, ShmConfig};
/// assert!(required_size(&ShmConfig::default()) > 2 << 20);
/// ```
pub fn required_size(config: &ShmConfig) -> usize {
    match SegmentLayout::compute(config.ring_capacity.get(), config.max_message_size) {
        Ok(layout) => layout.segment_size,
        // Only an address-space overflow gets here; no mapping can be that
        // large, so `create` reports the same error.
        Err(_) => usize::MAX,
    }
}
