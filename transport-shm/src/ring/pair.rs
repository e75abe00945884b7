//! Both ends of one ring at once, over a region of a mapping or on the
//! heap: for orcwire's own tests, benches of the ring alone and the loom
//! models (built only for them). A transport makes its two ends in two
//! places instead, each from the segment's layout.
//!
//! Relies on: `layout::reset_ring` and `RingRegion::standalone`.

use std::sync::Arc;

use super::{RingConsumer, RingProducer};
use crate::layout::{self, LayoutError, RingRegion};
use crate::mapping::{HeapMapping, SharedMapping};

/// Both ends of the ring in `region` of `mapping`, with the ring reset to
/// empty first.
///
/// # Errors
/// [`LayoutError`] when the region does not fit the mapping.
pub fn ring_pair(
    mapping: Arc<dyn SharedMapping>,
    region: RingRegion,
    max_message_size: u64,
) -> Result<(RingProducer, RingConsumer), LayoutError> {
    region.check(mapping.len(), "ring")?;
    // SAFETY: checked just above.
    unsafe { layout::reset_ring(&mapping, &region) };
    let producer = RingProducer::new(Arc::clone(&mapping), region, max_message_size)?;
    let consumer = RingConsumer::new(mapping, region, max_message_size)?;
    Ok((producer, consumer))
}

/// Both ends of a fresh ring of `capacity` bytes on the heap: for tests,
/// benches, Miri and loom models (under `--cfg orcwire_loom` the indices
/// are loom atomics and the data loom cells).
///
/// # Errors
/// [`LayoutError::InvalidCapacity`] for a bad capacity.
pub fn heap_ring(
    capacity: usize,
    max_message_size: u64,
) -> Result<(RingProducer, RingConsumer), LayoutError> {
    let region = RingRegion::standalone(capacity)?;
    let mapping = HeapMapping::new(region.required_len())
        .map_err(|e| LayoutError::Invalid(format!("cannot allocate the ring: {e}")))?;
    ring_pair(Arc::new(mapping), region, max_message_size)
}
