//! The producing end of a ring: [`RingProducer`] writes frames into free
//! space (a message whole, or fragment by fragment as
//! [`OutgoingMessage`] tracks), and publishes them with one `Release`
//! store: the first unpublished frame's first header word. Each frame
//! clears the slot after it before it can be published, so the consumer,
//! polling the slot at its head, finds 0 there until the next frame is
//! published. `tail` is still stored after each publication, for the
//! producer's own restart and for `orcwire inspect`; the consumer does
//! not read it.
//!
//! Relies on: `memory/` for the ring's bytes and control block, `frame.rs`
//! for the header format, `indices.rs` for positions; the consumer's
//! `head` is re-read only when the cached copy says the ring is full, and
//! checked every time.

use std::fmt;
use std::sync::Arc;

use orcwire::Opcode;

use super::frame::{
    frame_size, FrameHeader, ALIGN, FIRST, FRAME_HEADER_SIZE, HEADER, LAST, PADDING, PUBLISHED,
};
use super::indices::Indices;
use super::memory::{hint, RingBytes, RingMemory};
use super::{corrupt, RingError, WriteStatus};
use crate::layout::{LayoutError, RingRegion};
use crate::mapping::SharedMapping;
use crate::sync::Ordering;

/// Bytes past the tail fetched for writing after each publication: two
/// cache lines, a small frame's header and payload.
const PREFETCH: usize = 128;

/// Largest frame (header included) of a fragmented message, in bytes: a
/// longer message goes out in fragments of this size, each published as
/// soon as it is written ([`WriteStatus::Partial`]), so that the consumer
/// copies one out while the producer writes the next. Small enough that
/// the two copies overlap for most of a large message; large enough that
/// the per-fragment cost (a header, a publication, a wake-up check) stays
/// under 1 % of the copy. Rings smaller than four of these use a quarter
/// of their capacity instead.
pub const FRAGMENT_BYTES: usize = 32 << 10;

/// A message being written, possibly over several calls.
#[derive(Debug)]
pub struct OutgoingMessage<'a> {
    opcode: Opcode,
    seq: u64,
    tag: u64,
    payload: &'a [u8],
    /// Payload bytes already written, in `0 ..= payload.len()`.
    written: usize,
    started: bool,
    finished: bool,
}

impl<'a> OutgoingMessage<'a> {
    /// A message not yet written.
    pub fn new(opcode: Opcode, seq: u64, tag: u64, payload: &'a [u8]) -> Self {
        Self {
            opcode,
            seq,
            tag,
            payload,
            written: 0,
            started: false,
            finished: false,
        }
    }

    /// Whether every frame is written.
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn is_complete(&self) -> bool {
        self.finished
    }

    /// Whether its first frame is written (it can no longer be withdrawn).
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Payload bytes written so far.
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn written(&self) -> usize {
        self.written
    }
}

/// The producing end of a ring.
pub struct RingProducer {
    mem: RingMemory,
    idx: Indices,
    /// Where the next frame goes. In `0 .. 2 * capacity`, 16-aligned, at
    /// most `capacity` ahead of `cached_head`.
    tail: u64,
    /// The tail last stored to shared memory; `tail` is at most `capacity`
    /// ahead of it (the difference is written but unpublished).
    published_tail: u64,
    /// The consumer's head as last read and checked; never ahead of the
    /// real one (it can only lag, which makes the ring look fuller).
    cached_head: u64,
    max_message_size: u64,
    /// Largest payload of one frame: [`FRAGMENT_BYTES`] or a quarter of
    /// the ring, whichever is smaller, minus a header.
    max_frame_payload: usize,
    /// A message has its first frame written but not its last.
    mid_message: bool,
    /// The first written but unpublished frame: its offset and the first
    /// header word that publishes it (and every frame written after it,
    /// whose first words are already stored). `None` when everything
    /// written is published.
    held: Option<(usize, u64)>,
    /// Bytes from `tail` that [`try_write_whole`](Self::try_write_whole)
    /// may fill without further checks: a frame of `size` bytes with
    /// `size + ALIGN <= fast_room` ends at least a header before the end
    /// of the ring (so no gap follows it) and fits, with the slot after it,
    /// in the free space the cached head leaves. 0 whenever the tail moves
    /// any other way (it is recomputed on the next fast write).
    fast_room: u64,
    /// The CPU has `cldemote` ([`hint::can_demote`]): hand-overs demote
    /// the lines they publish.
    demote: bool,
}

impl fmt::Debug for RingProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingProducer")
            .field("capacity", &self.mem.capacity)
            .field("tail", &self.tail)
            .field("published_tail", &self.published_tail)
            .field("cached_head", &self.cached_head)
            .finish_non_exhaustive()
    }
}

impl RingProducer {
    /// The producing end of the ring in `region` of `mapping`, continuing
    /// from the tail found there (0 for a fresh ring).
    ///
    /// # Errors
    /// [`LayoutError`] when the region does not fit the mapping or the
    /// tail found is not a valid position.
    pub fn new(
        mapping: Arc<dyn SharedMapping>,
        region: RingRegion,
        max_message_size: u64,
    ) -> Result<Self, LayoutError> {
        let mem = RingMemory::new(&mapping, &region)?;
        let idx = Indices {
            capacity: region.capacity as u64,
        };
        let tail = mem.control.tail.load(Ordering::Relaxed);
        if !idx.is_valid(tail) {
            return Err(LayoutError::Invalid(format!(
                "ring tail {tail} is not a position"
            )));
        }
        Ok(Self {
            max_frame_payload: (region.capacity / 4).min(FRAGMENT_BYTES) - FRAME_HEADER_SIZE,
            mem,
            idx,
            tail,
            published_tail: tail,
            // Looks full, so the first write reads the real head.
            cached_head: idx.advance(tail, idx.capacity),
            max_message_size,
            mid_message: false,
            held: None,
            fast_room: 0,
            demote: hint::can_demote(),
        })
    }

    /// Data bytes of the ring.
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn capacity(&self) -> usize {
        self.mem.capacity
    }

    /// Largest payload one frame carries; longer messages are fragmented.
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn max_frame_payload(&self) -> usize {
        self.max_frame_payload
    }

    /// The largest message this end sends.
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    /// Writes frames of `msg` without publishing them: all of a message
    /// that fits in one frame, or the next fragment of a longer one. Call
    /// again after [`publish`](Self::publish) (and, on
    /// [`WriteStatus::WouldBlock`], after waiting for space) until it
    /// returns [`WriteStatus::Complete`].
    ///
    /// # Errors
    /// [`RingError::TooLarge`] for a message over the limit (nothing
    /// written), [`RingError::Unfinished`] when another message is half
    /// written, [`RingError::Corrupt`] when the consumer's head is invalid.
    pub fn try_write(&mut self, msg: &mut OutgoingMessage<'_>) -> Result<WriteStatus, RingError> {
        if msg.finished {
            return Ok(WriteStatus::Complete);
        }
        let total = msg.payload.len() as u64;
        if total > self.max_message_size {
            return Err(RingError::TooLarge {
                size: total,
                limit: self.max_message_size,
            });
        }
        if !msg.started && self.mid_message {
            return Err(RingError::Unfinished);
        }
        loop {
            let (step, contiguous, frame, len) = self.next_step(msg);
            if !self.has_room(self.room_for(step))? {
                return Ok(WriteStatus::WouldBlock);
            }
            let offset = self.idx.offset(self.tail);
            if contiguous < HEADER {
                // Too short for a header: both ends skip it. (The producer
                // skips such a gap as soon as a frame ends at it, so only
                // a ring left so by another producer gets here.)
                self.tail = self.idx.advance(self.tail, contiguous);
                self.fast_room = 0;
                continue;
            }
            if contiguous < frame {
                let padding = FrameHeader {
                    len: (contiguous - HEADER) as u32,
                    flags: PADDING | PUBLISHED,
                    ..FrameHeader::default()
                };
                // SAFETY: `offset + 32 <= capacity` (contiguous >= HEADER),
                // 16-aligned, and `has_room` made these bytes and the next
                // slot free.
                unsafe { self.put_frame(offset, padding, &[], contiguous) };
                continue;
            }
            let last = msg.written + len == msg.payload.len();
            let header = FrameHeader {
                len: len as u32,
                flags: if msg.started { 0 } else { FIRST } | if last { LAST } else { 0 } | PUBLISHED,
                opcode: msg.opcode.to_wire() as u8,
                reserved: 0,
                seq: msg.seq,
                tag: msg.tag,
                total,
            };
            let payload = &msg.payload[msg.written..msg.written + len];
            // SAFETY: the frame fits before the end of the ring (contiguous
            // >= frame) and, with the slot after it, in the free space
            // (`has_room`); 16-aligned.
            unsafe { self.put_frame(offset, header, payload, frame) };
            msg.written += len;
            msg.started = true;
            self.mid_message = !last;
            if last {
                msg.finished = true;
                return Ok(WriteStatus::Complete);
            }
            return Ok(WriteStatus::Partial);
        }
    }

    /// The common case of [`try_write`](Self::try_write), for a message
    /// that goes out as one frame: writes it, unpublished, if it fits
    /// before the end of the ring and the ring has room for it now, and
    /// returns `true`. `false` (nothing written) leaves the message to
    /// `try_write`, which pads, fragments, re-reads the head or reports a
    /// full ring. The caller has checked the length against the limit.
    #[inline]
    pub fn try_write_whole(&mut self, opcode: Opcode, seq: u64, tag: u64, payload: &[u8]) -> bool {
        let len = payload.len();
        if self.mid_message || len > self.max_frame_payload {
            return false;
        }
        let frame = frame_size(len as u64);
        if frame + ALIGN > self.fast_room {
            self.fast_room = self.fast_window();
            // Padding at the ring's end, a gap, or a ring that looks full:
            // `try_write` sees to those.
            if frame + ALIGN > self.fast_room {
                return false;
            }
        }
        let offset = self.idx.offset(self.tail);
        let [word0, seq, tag, total] = FrameHeader {
            len: len as u32,
            flags: FIRST | LAST | PUBLISHED,
            opcode: opcode.to_wire() as u8,
            reserved: 0,
            seq,
            tag,
            total: len as u64,
        }
        .to_words();
        // SAFETY: `frame + ALIGN <= fast_room`: the frame and the slot
        // after it lie before the end of the ring and in free space (see
        // `fast_room`); 16-aligned (the tail and frame sizes are).
        unsafe {
            self.mem.data.write_header_rest(offset, [seq, tag, total]);
            if len != 0 {
                self.mem.data.write(offset + FRAME_HEADER_SIZE, payload);
            }
            // The slot after reads 0 until a frame is published there (as
            // in `put_frame`). `Relaxed`: the publishing `Release` store
            // orders it.
            self.mem
                .data
                .store_commit(offset + frame as usize, 0, Ordering::Relaxed);
        }
        self.tail = self.idx.advance(self.tail, frame);
        self.fast_room -= frame;
        self.hold_or_store(offset, word0);
        true
    }

    /// The `fast_room` the tail and the cached head leave now.
    #[inline]
    fn fast_window(&self) -> u64 {
        let before_end = self.idx.capacity - self.idx.offset(self.tail) as u64;
        before_end.saturating_sub(HEADER).min(self.free())
    }

    /// The first word of the frame just written at `offset`: held back if
    /// it is the first unpublished frame (`publish` stores it), else
    /// stored now (the held one publishes it).
    #[inline(always)]
    fn hold_or_store(&mut self, offset: usize, word0: u64) {
        if self.held.is_none() {
            self.held = Some((offset, word0));
        } else {
            // SAFETY: the frame just written; published by the held one.
            unsafe { self.mem.data.store_commit(offset, word0, Ordering::Relaxed) };
        }
    }

    /// Writes a frame of `size` bytes at `offset` (the tail's), clears the
    /// slot after it, and moves the tail past it (and past a gap too short
    /// for a header that follows it). Its first word, which publishes it,
    /// is held back if it is the first unpublished frame (`publish` stores
    /// it) and stored now otherwise (the held one publishes it).
    ///
    /// # Safety
    /// `offset .. offset + size` lies before the end of the ring and, with
    /// the slot after it, in free space (`room_for(size)` bytes free).
    unsafe fn put_frame(&mut self, offset: usize, header: FrameHeader, payload: &[u8], size: u64) {
        let [word0, seq, tag, total] = header.to_words();
        // SAFETY: in free space before the end of the ring (our contract).
        unsafe {
            self.mem.data.write_header_rest(offset, [seq, tag, total]);
            if !payload.is_empty() {
                self.mem.data.write(offset + FRAME_HEADER_SIZE, payload);
            }
        }
        let after = self.idx.advance(self.tail, size);
        self.tail = self.idx.advance(after, self.gap_at(after));
        self.fast_room = 0;
        // The slot after this frame reads 0 until a frame is published
        // there: whatever an earlier lap left in those bytes is cleared
        // before this frame can be seen. `Relaxed`: this frame's (or the
        // held frame's) `Release` store orders it.
        // SAFETY: the slot is free (`room_for` counted it) and 16-aligned.
        unsafe {
            self.mem
                .data
                .store_commit(self.idx.offset(self.tail), 0, Ordering::Relaxed)
        };
        self.hold_or_store(offset, word0);
    }

    /// Bytes from `pos` to the end of the ring if too few for a header
    /// (skipped by both ends), else 0.
    fn gap_at(&self, pos: u64) -> u64 {
        let rest = self.idx.capacity - self.idx.offset(pos) as u64;
        if rest < HEADER {
            rest
        } else {
            0
        }
    }

    /// Free bytes a step of `step` bytes needs: the step, a gap after it,
    /// and the slot after that, which the step clears.
    fn room_for(&self, step: u64) -> u64 {
        step + self.gap_at(self.idx.advance(self.tail, step)) + ALIGN
    }

    /// The next indivisible step for `msg`: `(bytes it needs, bytes to the
    /// end of the ring, size of the next message frame, its payload)`.
    fn next_step(&self, msg: &OutgoingMessage<'_>) -> (u64, u64, u64, usize) {
        let len = (msg.payload.len() - msg.written).min(self.max_frame_payload);
        let frame = frame_size(len as u64);
        let contiguous = self.idx.capacity - self.idx.offset(self.tail) as u64;
        let step = if contiguous < frame {
            contiguous
        } else {
            frame
        };
        (step, contiguous, frame, len)
    }

    /// Whether the next step of `msg` would fit now (re-reads the head).
    /// For a waiting producer's re-check.
    ///
    /// # Errors
    /// [`RingError::Corrupt`] when the consumer's head is invalid.
    pub fn can_write(&mut self, msg: &OutgoingMessage<'_>) -> Result<bool, RingError> {
        if msg.finished {
            return Ok(true);
        }
        let (step, ..) = self.next_step(msg);
        self.refresh_head()?;
        Ok(self.free() >= self.room_for(step))
    }

    /// Writes a whole message, or nothing, without publishing it: several
    /// may be written and then published at once.
    ///
    /// # Errors
    /// As for [`try_write`](Self::try_write).
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn try_push(
        &mut self,
        opcode: Opcode,
        seq: u64,
        tag: u64,
        payload: &[u8],
    ) -> Result<WriteStatus, RingError> {
        if self.mid_message {
            return Err(RingError::Unfinished);
        }
        let start = self.tail;
        let held_before = self.held.is_some();
        let mut msg = OutgoingMessage::new(opcode, seq, tag, payload);
        let mut status = self.try_write(&mut msg)?;
        while status == WriteStatus::Partial {
            status = self.try_write(&mut msg)?;
        }
        if status == WriteStatus::WouldBlock {
            // Nothing was published, so the frames can be taken back: the
            // slot at `start` must read 0 again.
            self.tail = start;
            self.fast_room = 0;
            self.mid_message = false;
            if held_before {
                // SAFETY: `start` was the tail: a free, 16-aligned slot.
                unsafe {
                    self.mem
                        .data
                        .store_commit(self.idx.offset(start), 0, Ordering::Relaxed)
                };
            } else {
                self.held = None;
            }
        }
        Ok(status)
    }

    /// [`try_push`](Self::try_push), then [`publish`](Self::publish).
    ///
    /// ```
    /// use orcwire::Opcode;
    /// use orcwire_shm::ring::{heap_ring, WriteStatus};
    ///
    /// let (mut tx, mut rx) = heap_ring(4096, 1 << 20).unwrap();
    /// assert_eq!(tx.try_send(Opcode::CallWrapper, 1, 7, b"hi").unwrap(), WriteStatus::Complete);
    /// let m = rx.try_recv().unwrap().unwrap();
    /// assert_eq!((m.seq, m.tag, m.payload.as_slice()), (1, 7, &b"hi"[..]));
    /// assert!(rx.try_recv().unwrap().is_none());
    /// ```
    ///
    /// # Errors
    /// As for [`try_write`](Self::try_write).
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn try_send(
        &mut self,
        opcode: Opcode,
        seq: u64,
        tag: u64,
        payload: &[u8],
    ) -> Result<WriteStatus, RingError> {
        let status = self.try_push(opcode, seq, tag, payload)?;
        self.publish();
        Ok(status)
    }

    /// Makes every written frame visible to the consumer, with one store.
    /// Returns whether there was anything new (then wake the consumer).
    /// [`publish_with`](Self::publish_with)`(true)`.
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    #[inline]
    pub fn publish(&mut self) -> bool {
        self.publish_with(true)
    }

    /// Makes every written frame visible to the consumer, with one store,
    /// and returns whether there was anything new (then wake the consumer).
    ///
    /// `hand_over`: whether the consumer is probably waiting for these
    /// frames (it answers one message at a time). Then the published lines
    /// are demoted (`cldemote`, on CPUs that have it) to the cache both
    /// cores share, where the consumer's next read finds them sooner. While the
    /// consumer works through a backlog, pass `false`: demoting then gains
    /// nothing (it reads these frames later anyway) and costs the producer,
    /// whose next frame (sharing the last line of this one) must fetch the
    /// demoted line back. Measured in
    /// `docs/BENCHMARKS.md` ("2026-11-30 (3)").
    #[inline]
    pub fn publish_with(&mut self, hand_over: bool) -> bool {
        if self.tail == self.published_tail {
            return false;
        }
        if let Some((offset, word0)) = self.held.take() {
            // SYNC POINT: frames published. Pairs with the consumer's
            // `Acquire` load of the slot (`load_commit` in `read_frames`,
            // `has_frames`): every frame byte written above, the later
            // frames' first words and the cleared slot after the last are
            // visible to a consumer that sees this word.
            let order = if crate::sync::is_broken("ring") {
                // Loom must-fail variant: the frame published without
                // `Release`.
                Ordering::Relaxed
            } else {
                Ordering::Release
            };
            // SAFETY: the held frame's slot, written by `put_frame`.
            unsafe { self.mem.data.store_commit(offset, word0, order) };
        }
        // SYNC POINT: none on the consumer's path (it polls the frames);
        // `Release` so that `orcwire inspect`'s reading of head and tail
        // sees frames that are there.
        self.mem.control.tail.store(self.tail, Ordering::Release);
        if hand_over && self.demote {
            let written = self.idx.distance(self.published_tail, self.tail) as usize;
            let from = self.idx.offset(self.published_tail);
            self.mem.data.hint_lines(
                from,
                written.min(PREFETCH).min(self.mem.capacity - from),
                hint::demote,
            );
        }
        self.published_tail = self.tail;
        // Where the next frames go: fetch those lines for writing now, so
        // the next send's stores do not wait on the consumer's core then.
        let offset = self.idx.offset(self.tail);
        self.mem.data.hint_lines(
            offset,
            PREFETCH.min(self.mem.capacity - offset),
            hint::for_write,
        );
        true
    }

    fn free(&self) -> u64 {
        self.idx.capacity - self.idx.distance(self.cached_head, self.tail)
    }

    fn has_room(&mut self, need: u64) -> Result<bool, RingError> {
        if self.free() >= need {
            return Ok(true);
        }
        self.refresh_head()?;
        Ok(self.free() >= need)
    }

    /// Re-reads the consumer's head, once, and checks it: a position, not
    /// behind the cached one and not past the published tail.
    fn refresh_head(&mut self) -> Result<(), RingError> {
        // SYNC POINT: frames consumed. Pairs with the consumer's `Release`
        // store of `head` in `publish_head`: its copies out of the frames
        // before `head` are done before we overwrite them.
        let head = self.mem.control.head.load(Ordering::Acquire);
        if !self.idx.is_valid(head) {
            return Err(corrupt(format!(
                "consumer head {head} is not a 16-byte aligned position below {}",
                2 * self.idx.capacity
            )));
        }
        let limit = self.idx.distance(self.cached_head, self.published_tail);
        if self.idx.distance(head, self.published_tail) > limit {
            return Err(corrupt(format!(
                "consumer head {head} moved backwards or past the published tail {}",
                self.published_tail
            )));
        }
        self.cached_head = head;
        Ok(())
    }
}
