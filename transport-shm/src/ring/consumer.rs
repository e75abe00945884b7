//! The consuming end of a ring: [`RingConsumer`] reads published frames,
//! checks every header against the protocol, copies payloads out into
//! private buffers, reassembles fragmented messages, and frees space with
//! one `Release` store of `head`.
//!
//! The reassembly buffer grows with the bytes actually received (fallible
//! allocation, never past the announced total, which is checked against
//! `max_message_size` first), so a hostile length never becomes a huge
//! allocation.
//!
//! A frame is there when the first word of the slot at the head is set
//! (read with `Acquire`; the producer clears each slot before the frame
//! before it is published, so a slot reads 0 until its frame is). The
//! consumer never reads the producer's `tail`: one cache line crosses per
//! small message instead of two (the index's, then the frame's).
//!
//! Relies on: `memory/` for the ring's bytes and control block, `frame.rs`
//! for the header format, `indices.rs` for positions.

use std::fmt;
use std::sync::Arc;

use orcwire::{Message, Opcode, WrapperFunctionBuffer};

use super::frame::{
    frame_size, FrameHeader, FIRST, FRAME_HEADER_SIZE, HEADER, KNOWN_FLAGS, LAST, PADDING, PUBLISHED,
};
use super::indices::Indices;
use super::memory::{hint, DataRegion, RingBytes, RingMemory};
use super::{corrupt, RingError};
use crate::layout::{LayoutError, RingRegion};
use crate::mapping::SharedMapping;
use crate::sync::Ordering;

/// Bytes of a newly published frame fetched at once: two cache lines, a
/// small frame's header and payload.
const PREFETCH: usize = 128;

/// Single-frame payloads up to this size are received with
/// `WrapperFunctionBuffer::try_zeroed`, which keeps those that fit inline
/// off the heap; longer ones are copied into uninitialised capacity.
/// Above `orcwire`'s inline capacity (71 bytes), so `from_vec` never copies
/// a longer payload again.
const SMALL: usize = 128;

/// A message whose first fragments have arrived.
struct Partial {
    opcode: Opcode,
    seq: u64,
    tag: u64,
    /// Announced length; at most `max_message_size`.
    total: u64,
    /// The bytes so far; `data.len() < total`, capacity at most `total`.
    data: Vec<u8>,
}

/// The consuming end of a ring.
pub struct RingConsumer {
    mem: RingMemory,
    idx: Indices,
    /// Where the next frame starts. In `0 .. 2 * capacity`, 16-aligned,
    /// never past the producer's published tail.
    head: u64,
    /// The head last stored to shared memory.
    published_head: u64,
    max_message_size: u64,
    partial: Option<Partial>,
    /// The first error; every later call returns it again.
    failed: Option<RingError>,
    /// `head` was published since the last `take_freed_space`.
    freed: bool,
    /// Bytes from `head` to the end of the ring, known while the fast path
    /// of [`try_take_whole`](Self::try_take_whole) reads frame after frame
    /// (no failure, no fragmented message in progress); 0 when not known
    /// (`read_frames` moved the head), then worked out again.
    fast_room: u64,
}

impl fmt::Debug for RingConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingConsumer")
            .field("capacity", &self.mem.capacity)
            .field("head", &self.head)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl RingConsumer {
    /// The consuming end of the ring in `region` of `mapping`, continuing
    /// from the head found there (0 for a fresh ring).
    ///
    /// # Errors
    /// [`LayoutError`] when the region does not fit the mapping or the
    /// head found is not a valid position.
    pub fn new(
        mapping: Arc<dyn SharedMapping>,
        region: RingRegion,
        max_message_size: u64,
    ) -> Result<Self, LayoutError> {
        let mem = RingMemory::new(&mapping, &region)?;
        let idx = Indices {
            capacity: region.capacity as u64,
        };
        let head = mem.control.head.load(Ordering::Relaxed);
        if !idx.is_valid(head) {
            return Err(LayoutError::Invalid(format!(
                "ring head {head} is not a position"
            )));
        }
        Ok(Self {
            mem,
            idx,
            head,
            published_head: head,
            max_message_size,
            partial: None,
            failed: None,
            freed: false,
            fast_room: 0,
        })
    }

    /// Data bytes of the ring.
    pub fn capacity(&self) -> usize {
        self.mem.capacity
    }

    /// Takes the next whole message, if one has fully arrived. Consumes up
    /// to one ring's worth of frames per call (so a peer that never stops
    /// writing cannot keep the caller here), then publishes the new head.
    ///
    /// # Errors
    /// As [`try_recv_into`](Self::try_recv_into).
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn try_recv(&mut self) -> Result<Option<Message>, RingError> {
        let mut m = Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
        Ok(self.try_recv_into(&mut m)?.then_some(m))
    }

    /// [`try_recv`](Self::try_recv), into `into`: `true` when a message
    /// arrived, its fields and payload written over `into`'s (a small
    /// payload straight into its buffer, which is reused; nothing is moved
    /// after the copy). `into` is unspecified otherwise.
    ///
    /// # Errors
    /// [`RingError::Corrupt`] when the producer broke the protocol, or
    /// [`RingError::OutOfMemory`] when a message's buffer cannot be
    /// allocated. The ring is then unusable: every later call returns the
    /// same error.
    #[inline(always)]
    pub fn try_recv_into(&mut self, into: &mut Message) -> Result<bool, RingError> {
        let result = self.try_recv_into_held(into);
        self.publish_head();
        result
    }

    /// [`try_recv_into`](Self::try_recv_into), but the frames read stay
    /// counted as used (the head is not published) until
    /// [`publish_consumed`](Self::publish_consumed): a batch of messages
    /// then frees its room with one store. Publish before waiting for the
    /// producer: it may be waiting for that room.
    ///
    /// # Errors
    /// As [`try_recv_into`](Self::try_recv_into).
    #[inline(always)]
    pub fn try_recv_into_held(&mut self, into: &mut Message) -> Result<bool, RingError> {
        if self.try_take_whole(into) {
            return Ok(true);
        }
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.fast_room = 0;
        let result = self.read_frames(into);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.partial = None;
        }
        result
    }

    /// The usual frame, read with fewer steps than `read_frames`: a whole
    /// message (flags exactly `FIRST | LAST | PUBLISHED`, reserved bits 0,
    /// a known opcode, `total` equal to its length) of at most [`SMALL`]
    /// bytes and within the limit, at the head, while no fragmented
    /// message is in progress and the ring has not failed. `true`: it is
    /// in `into` and the head is past it. `false`: nothing consumed —
    /// `read_frames` reads whatever is there (and reports it if it breaks
    /// the protocol); `into` may have been written.
    #[inline(always)]
    fn try_take_whole(&mut self, into: &mut Message) -> bool {
        const WHOLE: u64 = (FIRST | LAST | PUBLISHED) as u64;
        let mut contiguous = self.fast_room;
        if contiguous < HEADER {
            if self.failed.is_some() || self.partial.is_some() {
                return false;
            }
            contiguous = self.idx.capacity - self.idx.offset(self.head) as u64;
            if contiguous < HEADER {
                return false;
            }
        }
        let offset = (self.idx.capacity - contiguous) as usize;
        // SAFETY: `offset + 32 <= capacity`, 16-aligned.
        let word0 = unsafe { self.mem.data.load_commit(offset) };
        let len = word0 as u32 as usize;
        // Flags and the reserved bits in one test (the opcode's byte masked
        // out); 0 (nothing published) fails it too.
        if (word0 >> 32) & 0xffff_00ff != WHOLE
            || len > SMALL
            || len as u64 > self.max_message_size
        {
            return false;
        }
        let Ok(opcode) = Opcode::from_wire((word0 >> 40) & 0xff) else {
            return false;
        };
        let size = frame_size(len as u64);
        if size > contiguous {
            return false;
        }
        self.mem.data.hint_lines(offset, (size as usize).min(PREFETCH), hint::for_read);
        // SAFETY: the frame is published (its first word, read with
        // `Acquire`, is set) and lies inside the ring (`size <= contiguous`).
        let [seq, tag, total] = unsafe { self.mem.data.read_header_rest(offset) };
        if total != len as u64 {
            return false;
        }
        let Ok(dst) = into.payload.refill(len) else {
            return false;
        };
        // SAFETY: the payload lies inside the checked, published frame;
        // `dst` is a private buffer of `len` bytes.
        unsafe {
            self.mem
                .data
                .read(offset + FRAME_HEADER_SIZE, dst.as_mut_ptr(), len)
        };
        into.opcode = opcode;
        into.seq = seq;
        into.tag = tag;
        self.head = self.idx.advance(self.head, size);
        self.fast_room = contiguous - size;
        true
    }

    /// Publishes the head past every frame read (see
    /// [`try_recv_into_held`](Self::try_recv_into_held)).
    #[inline]
    pub fn publish_consumed(&mut self) {
        self.publish_head();
    }

    /// Bytes read but not yet published as free.
    #[inline]
    pub fn held_bytes(&self) -> u64 {
        self.idx.distance(self.published_head, self.head)
    }

    /// Whether a frame is published at the head (polls its slot). For a
    /// waiting consumer's re-check.
    pub fn has_frames(&self) -> bool {
        // SAFETY: the slot is a 16-aligned position of this ring.
        unsafe { self.mem.data.load_commit(self.slot()) != 0 }
    }

    /// The offset where the next frame starts.
    fn slot(&self) -> usize {
        slot_at(self.idx, self.head)
    }

    /// Whether a message is partly received.
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn is_mid_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Whether space was freed (the head published) since the last call;
    /// then wake a producer waiting for space.
    pub fn take_freed_space(&mut self) -> bool {
        std::mem::take(&mut self.freed)
    }

    fn publish_head(&mut self) {
        if self.head != self.published_head {
            // SYNC POINT: frames consumed. Pairs with the producer's
            // `Acquire` load of `head` in `refresh_head`.
            self.mem.control.head.store(self.head, Ordering::Release);
            self.published_head = self.head;
            self.freed = true;
        }
    }

    #[inline(always)]
    fn read_frames(&mut self, into: &mut Message) -> Result<bool, RingError> {
        let cap = self.idx.capacity;
        let mut consumed = 0u64;
        while consumed < cap {
            let offset = self.idx.offset(self.head);
            let contiguous = cap - offset as u64;
            if contiguous < HEADER {
                // Too short for a header: the producer skipped it when the
                // frame before it was written, so the tail is past it.
                self.head = self.idx.advance(self.head, contiguous);
                consumed += contiguous;
                continue;
            }
            // SAFETY: `offset + 32 <= capacity`, 16-aligned.
            let word0 = unsafe { self.mem.data.load_commit(offset) };
            if word0 == 0 {
                return Ok(false);
            }
            let len = word0 as u32;
            let size = frame_size(u64::from(len));
            if size > contiguous {
                return Err(corrupt(format!(
                    "frame of {size} bytes at offset {offset} runs past the end of the ring"
                )));
            }
            // Its first lines at once (the header's rest and a small
            // payload) rather than one miss after the other.
            self.mem.data.hint_lines(
                offset,
                (size as usize).min(PREFETCH),
                hint::for_read,
            );
            // SAFETY: the frame is published (its first word, read with
            // `Acquire`, is set) and lies inside the ring (`size <=
            // contiguous`).
            let h = FrameHeader::from_parts(word0, unsafe { self.mem.data.read_header_rest(offset) });
            if h.flags & PUBLISHED == 0 {
                return Err(corrupt(format!(
                    "the slot at offset {offset} holds {word0:#x}: neither 0 nor a published frame"
                )));
            }
            if h.reserved != 0 || h.flags & !KNOWN_FLAGS != 0 {
                return Err(corrupt(format!(
                    "frame at offset {offset} has unknown flags {:#x} / reserved bits {:#x}",
                    h.flags, h.reserved
                )));
            }
            if h.flags & PADDING != 0 {
                let clean = FrameHeader {
                    len: h.len,
                    flags: PADDING | PUBLISHED,
                    ..FrameHeader::default()
                };
                if h != clean || size != contiguous {
                    return Err(corrupt(format!(
                        "malformed padding frame at offset {offset}: {h:?}"
                    )));
                }
                self.head = self.idx.advance(self.head, size);
                consumed += size;
                continue;
            }
            // Copy out before the head moves past the frame.
            let done = self.take_frame(&h, offset, into)?;
            self.head = self.idx.advance(self.head, size);
            consumed += size;
            if done {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Checks a message frame against the message in progress and copies
    /// its payload out. `true` when this frame completes a message, which
    /// is then in `into`.
    #[inline(always)]
    fn take_frame(
        &mut self,
        h: &FrameHeader,
        offset: usize,
        into: &mut Message,
    ) -> Result<bool, RingError> {
        let opcode = Opcode::from_wire(u64::from(h.opcode)).map_err(|e| corrupt(e.to_string()))?;
        let len = h.len as usize;
        let payload_at = offset + FRAME_HEADER_SIZE;
        let (first, last) = (h.flags & FIRST != 0, h.flags & LAST != 0);
        if first {
            if let Some(p) = &self.partial {
                return Err(corrupt(format!(
                    "message seq {} began before message seq {} ended",
                    h.seq, p.seq
                )));
            }
            if h.total > self.max_message_size {
                return Err(corrupt(format!(
                    "the peer announced a message of {} bytes, above the limit of {}",
                    h.total, self.max_message_size
                )));
            }
            if last {
                if h.total != u64::from(h.len) {
                    return Err(corrupt(format!(
                        "single-frame message of {len} bytes claims a total of {}",
                        h.total
                    )));
                }
                into.opcode = opcode;
                into.seq = h.seq;
                into.tag = h.tag;
                if len <= SMALL {
                    // Straight into the caller's buffer, inline or reused:
                    // no allocation, and nothing moves the bytes again.
                    let dst = into
                        .payload
                        .refill(len)
                        .map_err(|e| RingError::OutOfMemory { len: e.len })?;
                    // SAFETY: the payload lies inside the checked, published
                    // frame; `dst` is a private buffer of `len` bytes.
                    unsafe { self.mem.data.read(payload_at, dst.as_mut_ptr(), len) };
                    return Ok(true);
                }
                // Larger: copied into uninitialised capacity, not zeroed
                // first and then overwritten.
                // SAFETY: the payload lies inside the checked, published
                // frame.
                let data = unsafe { self.first_bytes(payload_at, len, len)? };
                into.payload = WrapperFunctionBuffer::from_vec(data);
                return Ok(true);
            }
            if len == 0 || u64::from(h.len) >= h.total {
                return Err(corrupt(format!(
                    "first fragment of {len} bytes for a message of {} bytes",
                    h.total
                )));
            }
            let Ok(total) = usize::try_from(h.total) else {
                return Err(RingError::OutOfMemory { len: usize::MAX });
            };
            // SAFETY: the payload lies inside the checked, published frame,
            // and `len < total` (checked above).
            let data = unsafe { self.first_bytes(payload_at, len, total)? };
            self.partial = Some(Partial {
                opcode,
                seq: h.seq,
                tag: h.tag,
                total: h.total,
                data,
            });
            return Ok(false);
        }
        let Some(p) = self.partial.as_mut() else {
            return Err(corrupt(format!(
                "a continuation fragment (seq {}) arrived with no message in progress",
                h.seq
            )));
        };
        if (opcode, h.seq, h.tag, h.total) != (p.opcode, p.seq, p.tag, p.total) {
            return Err(corrupt(format!(
                "fragment ({opcode:?}, seq {}, tag {}, total {}) does not continue ({:?}, seq {}, tag {}, total {})",
                h.seq, h.tag, h.total, p.opcode, p.seq, p.tag, p.total
            )));
        }
        let after = p.data.len() as u64 + u64::from(h.len);
        let consistent = if last {
            after == p.total
        } else {
            len > 0 && after < p.total
        };
        if !consistent {
            return Err(corrupt(format!(
                "fragment of {len} bytes after {} takes message seq {} to {after} of {} bytes{}",
                p.data.len(),
                p.seq,
                p.total,
                if last { " at its end" } else { "" }
            )));
        }
        // `after <= total`, which fits a usize (checked at the first fragment).
        grow(&mut p.data, len, p.total as usize)?;
        // SAFETY: payload inside the checked, published frame; `grow`
        // reserved `len` bytes of spare capacity.
        unsafe { copy_into(&self.mem.data, &mut p.data, payload_at, len) };
        if !last {
            return Ok(false);
        }
        if let Some(p) = self.partial.take() {
            *into = Message::new(
                p.opcode,
                p.seq,
                p.tag,
                WrapperFunctionBuffer::from_vec(p.data),
            );
        }
        Ok(true)
    }
}

/// A look at a ring's next slot without its consumer: whether anything is
/// published past the head the consumer last stored. Only a hint, for a
/// caller that knows no one is mid-receive (then the stored head is the
/// consumer's own); a wrong answer, which only a peer writing the ring's
/// memory could cause, skips a look or takes the consumer's checked path.
pub struct RingPeek {
    mem: RingMemory,
    idx: Indices,
}

// SAFETY: a peek makes only atomic loads (the stored head, a slot's first
// word); it never copies or writes ring bytes, so sharing it between threads
// adds no access the protocol does not already allow.
unsafe impl Sync for RingPeek {}

impl RingPeek {
    /// A look at the ring in `region` of `mapping`.
    ///
    /// # Errors
    /// [`LayoutError`] when the region does not fit the mapping.
    pub fn new(mapping: &Arc<dyn SharedMapping>, region: RingRegion) -> Result<Self, LayoutError> {
        let mem = RingMemory::new(mapping, &region)?;
        let idx = Indices {
            capacity: region.capacity as u64,
        };
        Ok(Self { mem, idx })
    }

    /// Whether the slot at the stored head is empty: nothing to receive.
    pub fn is_empty(&self) -> bool {
        // Our own side's word: no ordering needed.
        let head = self.mem.control.head.load(Ordering::Relaxed);
        if !self.idx.is_valid(head) {
            return false; // let the checked path report it
        }
        // SAFETY: a 16-aligned position of this ring.
        unsafe { self.mem.data.load_commit(slot_at(self.idx, head)) == 0 }
    }
}

impl RingConsumer {
    /// A private buffer holding the `len` payload bytes at `offset` of a
    /// checked, published frame: the start of a message of `total` bytes
    /// (`len` when it is a single frame). Copied into uninitialised
    /// capacity; room for the rest grows with the bytes that arrive.
    ///
    /// # Safety
    /// `offset .. offset + len` lies inside a checked, published frame,
    /// and `len <= total`.
    unsafe fn first_bytes(
        &self,
        offset: usize,
        len: usize,
        total: usize,
    ) -> Result<Vec<u8>, RingError> {
        let mut data = Vec::new();
        grow(&mut data, len, total)?;
        // SAFETY: the bytes are in a checked, published frame (our
        // contract); `grow` reserved `len` bytes of spare capacity.
        unsafe { copy_into(&self.mem.data, &mut data, offset, len) };
        Ok(data)
    }
}

/// The offset where the frame at `pos` starts: `pos`'s, or the start of
/// the ring when a gap too short for a header is left before its end (both
/// ends skip it).
fn slot_at(idx: Indices, pos: u64) -> usize {
    let offset = idx.offset(pos);
    if idx.capacity - (offset as u64) < HEADER {
        0
    } else {
        offset
    }
}

/// Appends `len` ring bytes at `offset` to `data`.
///
/// # Safety
/// The bytes lie inside a checked, published frame and `data` has at least
/// `len` bytes of spare capacity.
unsafe fn copy_into(region: &DataRegion, data: &mut Vec<u8>, offset: usize, len: usize) {
    debug_assert!(data.capacity() - data.len() >= len);
    // SAFETY: by the caller's contract the destination has room for `len`
    // bytes and the source is in bounds; `set_len` covers exactly the bytes
    // just copied.
    unsafe {
        region.read(offset, data.as_mut_ptr().add(data.len()), len);
        data.set_len(data.len() + len);
    }
}

/// Makes room for `additional` more bytes in a reassembly buffer, growing
/// geometrically but never past `total` (the announced, checked length), so
/// memory follows the bytes actually received and never exceeds the limit.
fn grow(data: &mut Vec<u8>, additional: usize, total: usize) -> Result<(), RingError> {
    let needed = data.len() + additional;
    debug_assert!(needed <= total);
    if needed <= data.capacity() {
        return Ok(());
    }
    let target = data.capacity().saturating_mul(2).max(needed).min(total);
    data.try_reserve_exact(target - data.len())
        .map_err(|_| RingError::OutOfMemory { len: target })
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;

    #[test]
    fn growth_never_exceeds_total() {
        let mut v = Vec::new();
        let total = 1000;
        let mut got = 0;
        while got < total {
            let n = 96.min(total - got);
            grow(&mut v, n, total).unwrap();
            assert!(v.capacity() <= total);
            v.resize(v.len() + n, 0);
            got += n;
        }
        assert!(v.capacity() >= total);
    }
}
