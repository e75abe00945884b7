//! The types laid over the shared memory, and the constants that describe
//! them: the [`SegmentHeader`] at offset 0 (with one [`SideBlock`] per
//! side), a [`RingControl`] per ring, the [`state`] and [`waiting`] bits,
//! and [`Side`].
//!
//! Everything here is `#[repr(C)]`, holds offsets rather than pointers
//! (each process maps the segment at its own address) and holds only
//! atomics and plain integers; the plain integers are written once, before
//! [`MAGIC`] is published. Their sizes and field offsets are asserted at
//! compile time where they are laid over a mapping (`mapped.rs`).
//!
//! Relies on: `crossbeam_utils::CachePadded` being `#[repr(C)]` with its
//! value at offset 0, and the `sync` shim for the atomics.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU32, AtomicU64};

/// First eight bytes of every segment: `"ORCWSHM1"` read as a little-endian
/// `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"ORCWSHM1");
/// Version of this layout; bumped on any incompatible change.
pub const LAYOUT_VERSION: u32 = 3;
/// Smallest ring capacity in bytes.
pub const MIN_RING_CAPACITY: usize = 256;
/// Largest ring capacity in bytes (frame lengths are 32-bit).
pub const MAX_RING_CAPACITY: usize = if usize::BITS >= 64 { 1 << 32 } else { 1 << 28 };
/// Default capacity of each ring: 1 MiB.
pub const DEFAULT_RING_CAPACITY: usize = 1 << 20;
/// Default largest message: 1 GiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 1 << 30;
/// Alignment the validator requires of ring control blocks and ring data.
/// [`SegmentLayout::compute`](super::SegmentLayout::compute) places data
/// on page boundaries; a segment written by another implementation need
/// only meet this.
pub const REGION_ALIGN: usize = 128;

/// Bits and fields of the connection state word
/// ([`SegmentHeader::state`]).
///
/// The low 32 bits are flags, the high 32 bits the connection epoch. Within
/// one epoch flags are only ever set (`fetch_or`), never cleared, and each
/// flag has exactly one side allowed to set it, named below. Nothing read
/// from this word is trusted for memory safety: it only decides which error
/// a blocked call returns.
///
/// There is one hang-up handshake, the engine's: each side sends a
/// `Hangup` message and waits (bounded) for the peer's. A disconnecting
/// bit is the transport's end of stream under it: the side publishes
/// nothing more, so the peer's blocked waits end at once instead of at a
/// timeout. Version 1 also had acknowledgement and death bits; nothing
/// read them, and version 2 dropped them.
pub mod state {
    /// Set by the **controller** when it closes its side: it publishes no
    /// frame after setting it (all its frames are published before, so a
    /// reader that sees the bit with `Acquire` sees them all).
    pub const CONTROLLER_DISCONNECTING: u64 = 1 << 0;
    /// Set by the **executor** when it closes its side; as above.
    pub const EXECUTOR_DISCONNECTING: u64 = 1 << 1;
    /// Set by the **executor** when it attaches; a second attach to the
    /// same epoch is refused.
    pub const EXECUTOR_ATTACHED: u64 = 1 << 2;
    // `FLAGS` and `NAMES` describe the format for diagnostics and tests;
    // the transport itself only ever reads single bits.
    /// Every defined flag.
    #[allow(dead_code)]
    pub const FLAGS: u64 = 0x7;
    /// Every flag with its name, for diagnostics (`orcwire inspect`).
    #[allow(dead_code)]
    pub const NAMES: [(u64, &str); 3] = [
        (CONTROLLER_DISCONNECTING, "CONTROLLER_DISCONNECTING"),
        (EXECUTOR_DISCONNECTING, "EXECUTOR_DISCONNECTING"),
        (EXECUTOR_ATTACHED, "EXECUTOR_ATTACHED"),
    ];
    /// The epoch lives in the high 32 bits. Written by the **controller**
    /// only, in [`init`](crate::layout::init()), before the segment is published;
    /// never changes afterwards. A side that sees another epoch than the
    /// one it attached to knows the segment was re-initialised under it.
    pub const EPOCH_SHIFT: u32 = 32;

    /// The epoch field of a state word.
    pub fn epoch(word: u64) -> u32 {
        (word >> EPOCH_SHIFT) as u32
    }
}

/// Bits of [`SideBlock::waiting`]: the announcements a side makes before it
/// sleeps on its futex word, read by the peer to decide whether to wake it.
pub mod waiting {
    /// This side's consumer sleeps until the peer publishes frames into the
    /// side's inbound ring. Set and cleared only by that consumer.
    pub const DATA: u32 = 1 << 0;
    /// This side's producer sleeps until the peer frees space in the side's
    /// outbound ring. Set and cleared only by that producer (one at a time:
    /// senders are serialised).
    pub const SPACE: u32 = 1 << 1;
}

/// One end of the connection.
///
/// The controller sends on ring 0 (controller → executor) and the executor
/// on ring 1; side blocks are indexed the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The JIT controller: creates and initialises the segment.
    Controller,
    /// The executor: attaches to the segment and validates it.
    Executor,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Controller => Side::Executor,
            Side::Executor => Side::Controller,
        }
    }

    /// Index of this side's block in the segment header and of the ring
    /// it sends on: 0 for the controller, 1 for the executor.
    pub fn index(self) -> usize {
        match self {
            Side::Controller => 0,
            Side::Executor => 1,
        }
    }

    internal! {
        /// The [`state`] bit this side sets when it disconnects.
        fn disconnecting_bit(self) -> u64 {
            match self {
                Side::Controller => state::CONTROLLER_DISCONNECTING,
                Side::Executor => state::EXECUTOR_DISCONNECTING,
            }
        }
    }
}

/// Where one ring lives in the segment (plain integers, written once).
#[repr(C)]
#[derive(Debug)]
pub struct RingDescriptor {
    /// Data bytes of the ring; a power of two in
    /// `MIN_RING_CAPACITY..=MAX_RING_CAPACITY`.
    pub capacity: u64,
    /// Offset of the ring's [`RingControl`] from the segment start;
    /// a multiple of [`REGION_ALIGN`].
    pub control_offset: u64,
    /// Offset of the ring's data from the segment start; a multiple of
    /// [`REGION_ALIGN`].
    pub data_offset: u64,
}

/// Per-side words, on their own cache line.
///
/// All atomics: the peer writes `futex`, this side writes the rest, and
/// both read them at any time.
#[repr(C)]
#[derive(Debug, Default)]
pub struct SideBlock {
    /// The word this side sleeps on (`FUTEX_WAIT`). Any value; the peer
    /// increments it (wrapping) before waking this side, this side
    /// increments it to wake itself (interrupt, close).
    pub futex: AtomicU32,
    /// [`waiting`] bits this side has announced. Only this side sets or
    /// clears them; the peer only reads.
    pub waiting: AtomicU32,
    /// Process id of this side, written by this side when it joins; 0 while
    /// unknown. A hint for diagnostics and liveness checks, never trusted.
    pub pid: AtomicU32,
}

/// The segment header at offset 0.
///
/// Never referenced as a whole (`&SegmentHeader` would claim the plain
/// fields cannot change while the peer can write them): fields are reached
/// through raw pointers, the plain ones by atomic loads and stores.
#[repr(C)]
#[derive(Debug)]
pub struct SegmentHeader {
    /// [`MAGIC`] once the header is complete; stored last with `Release`.
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub version: u32,
    /// `size_of::<SegmentHeader>()` as the writer compiled it.
    pub header_size: u32,
    /// Bytes of the whole segment (header, control blocks, data), at most
    /// the mapping's length.
    pub segment_size: u64,
    /// Largest message either side may send, in bytes.
    pub max_message_size: u64,
    /// The two rings: index 0 carries controller → executor, 1 the reverse.
    pub rings: [RingDescriptor; 2],
    /// The connection state and epoch: [`state`] bits (low 32) and epoch
    /// (high 32).
    pub state: CachePadded<AtomicU64>,
    /// One block per side, indexed by [`Side::index`].
    pub sides: [CachePadded<SideBlock>; 2],
}

/// Head and tail of one ring, each on its own cache line.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RingControl {
    /// Byte position of the next frame to consume. Written only by the
    /// consumer. In range `0 .. 2 * capacity`, a multiple of 16.
    pub head: CachePadded<AtomicU64>,
    /// Byte position one past the last published frame. Written only by
    /// the producer. In range `0 .. 2 * capacity`, a multiple of 16, never
    /// more than `capacity` ahead of `head`. The consumer does not read it
    /// (frames publish themselves, see the ring docs); the producer
    /// resumes from it and `orcwire inspect` reports it.
    pub tail: CachePadded<AtomicU64>,
}
