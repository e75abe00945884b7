//! A single-producer single-consumer byte ring of variable-length frames,
//! in memory the peer can write.
//!
//! # Frames
//! A frame is a 32-byte [`FrameHeader`] and its payload, padded so the next
//! frame starts on a 16-byte boundary. A frame never wraps: when the bytes
//! left before the end of the ring cannot hold the next frame, the producer
//! fills them with a *padding frame* (flag [`PADDING`]) and continues at
//! offset 0; when fewer than a header's 32 bytes are left (16, since every
//! position is 16-aligned), both ends skip them without a frame.
//!
//! A message is one frame flagged [`FIRST`]` | `[`LAST`], or, when its
//! payload exceeds a quarter of the ring, a run of fragments: `FIRST`,
//! zero or more unflagged middles, `LAST`. Every fragment repeats the
//! opcode, sequence number, tag and total length, and the consumer checks
//! that they agree and that the lengths add up. Quarter-ring fragments keep
//! several in flight, so a large message streams through while the
//! consumer copies it out. Small messages are never split: the producer
//! waits for room for the whole frame.
//!
//! # Indices
//! `head` and `tail` are byte positions in `0 .. 2 * capacity` (the extra
//! bit tells a full ring from an empty one), multiples of 16. The producer
//! owns `tail`, the consumer `head`; each keeps its own index privately and
//! a cached copy of the other's, re-reading the shared one only when the
//! cached copy says the ring is full (producer) or empty (consumer). The
//! producer may write several frames and publish `tail` once.
//!
//! # The peer is hostile
//! Every index, length, flag and opcode the peer wrote is read once into a
//! local, checked (indices in range, aligned and within one capacity of
//! ours; a frame inside the published bytes and inside the ring; fragments
//! consistent; totals within `max_message_size`), and payload bytes are
//! copied into private buffers before anyone parses them. No `&[u8]` or
//! `&T` of a non-atomic type is ever made over ring memory: indices and
//! frame headers are read and written with atomic loads and stores
//! (`Relaxed` for headers: the index pair orders them), payloads are
//! copied with `ptr::copy_nonoverlapping`. A violation is a
//! [`RingError::Corrupt`], never a panic, a hang or an allocation above
//! the limit; the reassembly buffer grows with the bytes actually
//! received, with fallible allocation.
//!
//! **The one remaining gap: bulk payload copies.** A payload is copied
//! with a plain `memcpy`, not atomically, because no atomic bulk copy
//! exists in Rust and a word-by-word atomic copy would halve the bandwidth.
//! While the consumer copies a published frame, a hostile producer can
//! still write those bytes: formally a data race. In practice the copy
//! reads whatever bytes are there (the memory stays mapped and its size is
//! sealed), the result lands in private memory, and every byte of it is
//! then treated as untrusted input, so the worst outcome is a garbled
//! payload, the same as a peer that sends garbage. A byte-wise atomic
//! copy would close the gap: the open `AtomicPerByte` ("atomic memcpy")
//! RFC, rust-lang/rfcs#3301, and C++'s P1478.
//!
//! # Backings
//! One implementation over two backings of `RingMemory`: in production
//! the control block and data are laid over a [`SharedMapping`]; under
//! `--cfg orcwire_loom` the indices are loom atomics and the data bytes
//! live in loom `UnsafeCell`s (16-byte chunks) on the heap, so loom checks
//! the index protocol *and* reports data races on payload bytes.
//!
//! Relies on: [`crate::layout`] for the control block and region checks,
//! the `sync` shim, and `orcwire`'s message types.

use std::fmt;
use std::sync::Arc;

use orcwire::{Message, Opcode, WrapperFunctionBuffer};

use crate::layout::{self, LayoutError, RingControl, RingRegion, SharedRef};
use crate::mapping::{HeapMapping, SharedMapping};
use crate::sync::Ordering;

/// Every frame starts at a multiple of this many bytes.
pub const FRAME_ALIGN: usize = 16;
/// Bytes of a [`FrameHeader`].
pub const FRAME_HEADER_SIZE: usize = 32;
/// Frame flag: the first frame of a message.
pub const FIRST: u8 = 1;
/// Frame flag: the last frame of a message.
pub const LAST: u8 = 2;
/// Frame flag: filler up to the end of the ring; no message data.
pub const PADDING: u8 = 4;
const KNOWN_FLAGS: u8 = FIRST | LAST | PADDING;

const HEADER: u64 = FRAME_HEADER_SIZE as u64;
const ALIGN: u64 = FRAME_ALIGN as u64;

/// The 32-byte header in front of every frame, as four native-endian
/// `u64` words:
///
/// | word | bits   | field                                   |
/// |------|--------|-----------------------------------------|
/// | 0    | 0..32  | `len`: payload bytes in this frame      |
/// | 0    | 32..40 | `flags`: [`FIRST`], [`LAST`], [`PADDING`] |
/// | 0    | 40..48 | `opcode` (wire value, 0..=3)            |
/// | 0    | 48..64 | reserved, 0                             |
/// | 1    |        | `seq`                                   |
/// | 2    |        | `tag`                                   |
/// | 3    |        | `total`: the whole message's length     |
///
/// A padding frame has `len` = bytes to the end of the ring minus 32 and
/// every other field 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameHeader {
    /// Payload bytes in this frame.
    pub len: u32,
    /// [`FIRST`], [`LAST`], [`PADDING`].
    pub flags: u8,
    /// The message's wire opcode.
    pub opcode: u8,
    /// Must be 0.
    pub reserved: u16,
    /// The message's sequence number.
    pub seq: u64,
    /// The message's tag.
    pub tag: u64,
    /// The message's total payload length.
    pub total: u64,
}

impl FrameHeader {
    /// The header as the four words stored in the ring.
    pub fn to_words(&self) -> [u64; 4] {
        [
            u64::from(self.len)
                | u64::from(self.flags) << 32
                | u64::from(self.opcode) << 40
                | u64::from(self.reserved) << 48,
            self.seq,
            self.tag,
            self.total,
        ]
    }

    /// Splits the four words read from the ring into fields (no checks).
    pub fn from_words(w: [u64; 4]) -> Self {
        Self {
            len: w[0] as u32,
            flags: (w[0] >> 32) as u8,
            opcode: (w[0] >> 40) as u8,
            reserved: (w[0] >> 48) as u16,
            seq: w[1],
            tag: w[2],
            total: w[3],
        }
    }
}

/// Bytes a frame with `len` payload bytes occupies.
fn frame_size(len: u64) -> u64 {
    HEADER + ((len + (ALIGN - 1)) & !(ALIGN - 1))
}

/// Why the ring cannot go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The peer wrote something the protocol does not allow.
    #[error("the peer corrupted the shared ring: {0}; drop the connection")]
    Corrupt(String),
    /// A message to send is larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes; raise max_message_size or send less")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The buffer for an incoming message could not be allocated.
    #[error("could not allocate {len} bytes for a message from the peer; lower max_message_size or free memory")]
    OutOfMemory {
        /// Bytes asked for.
        len: usize,
    },
    /// A new message was started while an earlier one was half written.
    #[error("a message was only partly written to the ring; finish it before starting another")]
    Unfinished,
}

fn corrupt(text: String) -> RingError {
    RingError::Corrupt(text)
}

/// Whether a write finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteStatus {
    /// The whole message is written (publish to make it visible).
    Complete,
    /// The ring is full; nothing more could be written now.
    WouldBlock,
}

/// Position arithmetic for a ring of `capacity` bytes.
#[derive(Clone, Copy, Debug)]
struct Indices {
    /// A power of two.
    capacity: u64,
}

impl Indices {
    /// Whether `pos` is a position: in `0 .. 2 * capacity`, 16-aligned.
    #[inline]
    fn is_valid(self, pos: u64) -> bool {
        pos < 2 * self.capacity && pos % ALIGN == 0
    }

    /// Offset of `pos` in the data, in `0 .. capacity`.
    #[inline]
    fn offset(self, pos: u64) -> usize {
        debug_assert!(self.is_valid(pos), "position {pos} out of range");
        (pos & (self.capacity - 1)) as usize
    }

    /// `pos` moved `n` bytes forward (`n <= capacity`, 16-aligned).
    #[inline]
    fn advance(self, pos: u64, n: u64) -> u64 {
        debug_assert!(self.is_valid(pos), "position {pos} out of range");
        debug_assert!(
            n <= self.capacity && n % ALIGN == 0,
            "step {n} out of range"
        );
        (pos + n) & (2 * self.capacity - 1)
    }

    /// Bytes from `from` forward to `to`, in `0 .. 2 * capacity`; a value
    /// above `capacity` means the two are not a valid head/tail pair.
    #[inline]
    fn distance(self, from: u64, to: u64) -> u64 {
        debug_assert!(self.is_valid(from) && self.is_valid(to));
        to.wrapping_sub(from) & (2 * self.capacity - 1)
    }
}

/// The memory of one ring: its control block and its data.
struct RingMemory {
    control: SharedRef<RingControl>,
    data: DataRegion,
    capacity: usize,
}

impl RingMemory {
    fn new(mapping: &Arc<dyn SharedMapping>, region: &RingRegion) -> Result<Self, LayoutError> {
        region.check(mapping.len(), "ring")?;
        Ok(Self {
            // SAFETY: the region was checked against the mapping just above.
            control: unsafe { layout::ring_control(mapping, region) },
            // SAFETY: as above.
            data: unsafe { DataRegion::new(mapping, region) },
            capacity: region.capacity,
        })
    }
}

/// Ring data laid over the mapping.
#[cfg(not(orcwire_loom))]
struct DataRegion {
    base: std::ptr::NonNull<u8>,
    _mapping: Arc<dyn SharedMapping>,
}

// SAFETY: the region is raw shared memory kept alive by the Arc; each ring
// end touches only the bytes the index protocol gives it, and `&mut self`
// on the ends serialises a side's accesses.
#[cfg(not(orcwire_loom))]
unsafe impl Send for DataRegion {}

#[cfg(not(orcwire_loom))]
impl DataRegion {
    /// # Safety
    /// `region` was checked against `mapping`.
    unsafe fn new(mapping: &Arc<dyn SharedMapping>, region: &RingRegion) -> Self {
        // SAFETY: the checked data offset lies inside the mapping.
        let raw = unsafe { mapping.base().add(region.data_offset) };
        let Some(base) = std::ptr::NonNull::new(raw) else {
            unreachable!("a mapping base plus an in-bounds offset is never null")
        };
        Self {
            base,
            _mapping: Arc::clone(mapping),
        }
    }

    /// Copies `src` into the ring at `offset`.
    ///
    /// # Safety
    /// `offset + src.len() <= capacity`, `offset` a multiple of 16, and the
    /// bytes are free space owned by the producer.
    unsafe fn write(&self, offset: usize, src: &[u8]) {
        // SAFETY: in bounds by the caller's contract; `src` is private
        // memory, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(offset), src.len())
        }
    }

    /// Copies `len` ring bytes at `offset` to `dst`.
    ///
    /// # Safety
    /// `offset + len <= capacity`, `offset` a multiple of 16, the bytes are
    /// published to the consumer, and `dst` is valid for `len` bytes of
    /// private memory.
    unsafe fn read(&self, offset: usize, dst: *mut u8, len: usize) {
        // SAFETY: in bounds by the caller's contract; a raw copy makes no
        // reference to the shared bytes, whatever the peer writes meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(self.base.as_ptr().add(offset), dst, len) }
    }

    /// Writes a frame header as four atomic words: the peer may read (or,
    /// if hostile, write) them at any time, and atomic accesses keep that
    /// defined behaviour on both sides.
    ///
    /// # Safety
    /// As for [`write`](Self::write), for 32 bytes.
    unsafe fn write_header(&self, offset: usize, words: [u64; 4]) {
        for (i, w) in words.into_iter().enumerate() {
            // SYNC POINT: none of its own; `Relaxed` because the tail's
            // `Release` store (`publish`) orders the header before the
            // consumer reads it.
            // SAFETY: in bounds; base and offset are 16-aligned, so each
            // word is 8-aligned; ring bytes are only ever accessed through
            // atomics (headers) or raw copies (payloads).
            unsafe {
                std::sync::atomic::AtomicU64::from_ptr(
                    self.base.as_ptr().add(offset).cast::<u64>().add(i),
                )
            }
            .store(w, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Reads a frame header once, word by word, into a local.
    ///
    /// # Safety
    /// As for [`read`](Self::read), for 32 bytes.
    unsafe fn read_header(&self, offset: usize) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (i, w) in words.iter_mut().enumerate() {
            // SYNC POINT: none of its own; `Relaxed` because the tail's
            // `Acquire` load (`refresh_tail`) made the header visible.
            // SAFETY: in bounds and aligned as in `write_header`.
            *w = unsafe {
                std::sync::atomic::AtomicU64::from_ptr(
                    self.base.as_ptr().add(offset).cast::<u64>().add(i),
                )
            }
            .load(std::sync::atomic::Ordering::Relaxed);
        }
        words
    }
}

/// Ring data as loom cells: one `UnsafeCell` per 16 bytes, so loom checks
/// that every payload access is ordered by the index protocol.
#[cfg(orcwire_loom)]
struct DataRegion {
    chunks: Arc<LoomChunks>,
}

#[cfg(orcwire_loom)]
struct LoomChunks(Box<[loom::cell::UnsafeCell<[u8; FRAME_ALIGN]>]>);

// SAFETY: every access goes through loom's `UnsafeCell::with{,_mut}`, which
// loom checks for races; that is the point of this backing.
#[cfg(orcwire_loom)]
unsafe impl Sync for LoomChunks {}
// SAFETY: as above.
#[cfg(orcwire_loom)]
unsafe impl Send for LoomChunks {}

#[cfg(orcwire_loom)]
impl DataRegion {
    /// # Safety
    /// `region` was checked against `mapping` (the address keys the model).
    unsafe fn new(mapping: &Arc<dyn SharedMapping>, region: &RingRegion) -> Self {
        let addr = mapping.base() as usize + region.data_offset;
        let chunks = region.capacity / FRAME_ALIGN;
        Self {
            chunks: layout::loom_shared::object(addr, move || {
                LoomChunks(
                    (0..chunks)
                        .map(|_| loom::cell::UnsafeCell::new([0; FRAME_ALIGN]))
                        .collect(),
                )
            }),
        }
    }

    /// # Safety
    /// See the production backing.
    unsafe fn write(&self, offset: usize, src: &[u8]) {
        debug_assert_eq!(offset % FRAME_ALIGN, 0);
        for (i, piece) in src.chunks(FRAME_ALIGN).enumerate() {
            self.chunks.0[offset / FRAME_ALIGN + i].with_mut(|chunk| {
                // SAFETY: loom hands out the chunk exclusively (and reports a
                // race if the protocol does not make it so).
                unsafe {
                    std::ptr::copy_nonoverlapping(piece.as_ptr(), chunk.cast::<u8>(), piece.len())
                }
            });
        }
    }

    /// # Safety
    /// See the production backing.
    unsafe fn read(&self, offset: usize, dst: *mut u8, len: usize) {
        debug_assert_eq!(offset % FRAME_ALIGN, 0);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(FRAME_ALIGN);
            self.chunks.0[(offset + done) / FRAME_ALIGN].with(|chunk| {
                // SAFETY: `dst` has room for `len` bytes (caller); the chunk
                // is readable under loom's checks.
                unsafe { std::ptr::copy_nonoverlapping(chunk.cast::<u8>(), dst.add(done), n) }
            });
            done += n;
        }
    }

    /// # Safety
    /// See the production backing.
    unsafe fn write_header(&self, offset: usize, words: [u64; 4]) {
        let mut bytes = [0u8; FRAME_HEADER_SIZE];
        for (out, w) in bytes.chunks_mut(8).zip(words) {
            out.copy_from_slice(&w.to_ne_bytes());
        }
        // SAFETY: forwarded contract.
        unsafe { self.write(offset, &bytes) }
    }

    /// # Safety
    /// See the production backing.
    unsafe fn read_header(&self, offset: usize) -> [u64; 4] {
        let mut bytes = [0u8; FRAME_HEADER_SIZE];
        // SAFETY: forwarded contract; `bytes` is a private 32-byte buffer.
        unsafe { self.read(offset, bytes.as_mut_ptr(), FRAME_HEADER_SIZE) };
        let mut words = [0u64; 4];
        for (w, b) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            *w = u64::from_ne_bytes(a);
        }
        words
    }
}

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
    pub fn is_complete(&self) -> bool {
        self.finished
    }

    /// Whether its first frame is written (it can no longer be withdrawn).
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Payload bytes written so far.
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
    /// Largest payload of one frame: a quarter of the ring minus a header.
    max_frame_payload: usize,
    /// A message has its first frame written but not its last.
    mid_message: bool,
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
            max_frame_payload: region.capacity / 4 - FRAME_HEADER_SIZE,
            mem,
            idx,
            tail,
            published_tail: tail,
            // Looks full, so the first write reads the real head.
            cached_head: idx.advance(tail, idx.capacity),
            max_message_size,
            mid_message: false,
        })
    }

    /// Data bytes of the ring.
    pub fn capacity(&self) -> usize {
        self.mem.capacity
    }

    /// Largest payload one frame carries; longer messages are fragmented.
    pub fn max_frame_payload(&self) -> usize {
        self.max_frame_payload
    }

    /// The largest message this end sends.
    pub fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    /// Writes as many frames of `msg` as fit now, without publishing them.
    /// Call again (after [`publish`](Self::publish) and waiting for space)
    /// until it returns [`WriteStatus::Complete`].
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
            if !self.has_room(step)? {
                return Ok(WriteStatus::WouldBlock);
            }
            let offset = self.idx.offset(self.tail);
            if contiguous < HEADER {
                // Too short for a header: both ends skip it.
                self.tail = self.idx.advance(self.tail, contiguous);
                continue;
            }
            if contiguous < frame {
                let padding = FrameHeader {
                    len: (contiguous - HEADER) as u32,
                    flags: PADDING,
                    ..FrameHeader::default()
                };
                // SAFETY: `offset + 32 <= capacity` (contiguous >= HEADER),
                // 16-aligned, and `has_room` made these bytes free.
                unsafe { self.mem.data.write_header(offset, padding.to_words()) };
                self.tail = self.idx.advance(self.tail, contiguous);
                continue;
            }
            let last = msg.written + len == msg.payload.len();
            let header = FrameHeader {
                len: len as u32,
                flags: if msg.started { 0 } else { FIRST } | if last { LAST } else { 0 },
                opcode: msg.opcode.to_wire() as u8,
                reserved: 0,
                seq: msg.seq,
                tag: msg.tag,
                total,
            };
            let payload = &msg.payload[msg.written..msg.written + len];
            // SAFETY: the frame fits before the end of the ring (contiguous
            // >= frame) and in the free space (`has_room`); 16-aligned.
            unsafe {
                self.mem.data.write_header(offset, header.to_words());
                self.mem.data.write(offset + FRAME_HEADER_SIZE, payload);
            }
            self.tail = self.idx.advance(self.tail, frame);
            msg.written += len;
            msg.started = true;
            self.mid_message = !last;
            if last {
                msg.finished = true;
                return Ok(WriteStatus::Complete);
            }
        }
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
        Ok(self.free() >= step)
    }

    /// Writes a whole message, or nothing, without publishing it: several
    /// may be written and then published at once.
    ///
    /// # Errors
    /// As for [`try_write`](Self::try_write).
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
        let mut msg = OutgoingMessage::new(opcode, seq, tag, payload);
        let status = self.try_write(&mut msg)?;
        if status == WriteStatus::WouldBlock {
            // Nothing was published, so the frames can be taken back.
            self.tail = start;
            self.mid_message = false;
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
    #[inline]
    pub fn publish(&mut self) -> bool {
        if self.tail == self.published_tail {
            return false;
        }
        // SYNC POINT: frames published. Pairs with the consumer's `Acquire`
        // load of `tail` (`refresh_tail`, `has_frames`): every frame byte
        // written above is visible to a consumer that sees this tail.
        let order = if crate::sync::is_broken("ring") {
            // Loom must-fail variant: the tail published without `Release`.
            Ordering::Relaxed
        } else {
            Ordering::Release
        };
        self.mem.control.tail.store(self.tail, order);
        self.published_tail = self.tail;
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
    /// never past `cached_tail`.
    head: u64,
    /// The head last stored to shared memory.
    published_head: u64,
    /// The producer's tail as last read and checked; at most `capacity`
    /// ahead of `head`.
    cached_tail: u64,
    max_message_size: u64,
    partial: Option<Partial>,
    /// The first error; every later call returns it again.
    failed: Option<RingError>,
    /// `head` was published since the last `take_freed_space`.
    freed: bool,
}

impl fmt::Debug for RingConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingConsumer")
            .field("capacity", &self.mem.capacity)
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
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
            // Looks empty, so the first read loads the real tail.
            cached_tail: head,
            max_message_size,
            partial: None,
            failed: None,
            freed: false,
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
    /// [`RingError::Corrupt`] when the producer broke the protocol, or
    /// [`RingError::OutOfMemory`] when a message's buffer cannot be
    /// allocated. The ring is then unusable: every later call returns the
    /// same error.
    pub fn try_recv(&mut self) -> Result<Option<Message>, RingError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.read_frames();
        self.publish_head();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.partial = None;
        }
        result
    }

    /// Whether published frames are waiting (re-reads the tail). For a
    /// waiting consumer's re-check.
    pub fn has_frames(&self) -> bool {
        // SYNC POINT: frames published. Pairs with `publish`'s `Release`
        // store; `try_recv` reads (and checks) the tail again.
        self.cached_tail != self.head || self.mem.control.tail.load(Ordering::Acquire) != self.head
    }

    /// Whether a message is partly received.
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

    /// Re-reads the producer's tail, once, and checks it: a position at
    /// most one capacity ahead of our head.
    fn refresh_tail(&mut self) -> Result<(), RingError> {
        // SYNC POINT: frames published. Pairs with `publish`'s `Release`
        // store of `tail`.
        let tail = self.mem.control.tail.load(Ordering::Acquire);
        if !self.idx.is_valid(tail) {
            return Err(corrupt(format!(
                "producer tail {tail} is not a 16-byte aligned position below {}",
                2 * self.idx.capacity
            )));
        }
        if self.idx.distance(self.head, tail) > self.idx.capacity {
            return Err(corrupt(format!(
                "producer tail {tail} is more than a ring ahead of head {}",
                self.head
            )));
        }
        self.cached_tail = tail;
        Ok(())
    }

    fn read_frames(&mut self) -> Result<Option<Message>, RingError> {
        let cap = self.idx.capacity;
        let mut consumed = 0u64;
        while consumed < cap {
            if self.head == self.cached_tail {
                self.refresh_tail()?;
                if self.head == self.cached_tail {
                    return Ok(None);
                }
            }
            let avail = self.idx.distance(self.head, self.cached_tail);
            let offset = self.idx.offset(self.head);
            let contiguous = cap - offset as u64;
            if contiguous < HEADER {
                if avail < contiguous {
                    return Err(corrupt(format!(
                        "published bytes end inside the gap at the end of the ring (position {})",
                        self.head
                    )));
                }
                self.head = self.idx.advance(self.head, contiguous);
                consumed += contiguous;
                continue;
            }
            if avail < HEADER {
                return Err(corrupt(format!(
                    "published bytes end inside a frame header (position {}, {avail} bytes)",
                    self.head
                )));
            }
            // SAFETY: 16-aligned, `offset + 32 <= capacity` and published
            // (`avail >= 32`).
            let h = FrameHeader::from_words(unsafe { self.mem.data.read_header(offset) });
            let size = frame_size(u64::from(h.len));
            if size > contiguous {
                return Err(corrupt(format!(
                    "frame of {size} bytes at offset {offset} runs past the end of the ring"
                )));
            }
            if size > avail {
                return Err(corrupt(format!(
                    "frame of {size} bytes at offset {offset} runs past the {avail} published bytes"
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
                    flags: PADDING,
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
            let done = self.take_frame(&h, offset)?;
            self.head = self.idx.advance(self.head, size);
            consumed += size;
            if done.is_some() {
                return Ok(done);
            }
        }
        Ok(None)
    }

    /// Checks a message frame against the message in progress and copies
    /// its payload out. `Some` when this frame completes a message.
    fn take_frame(&mut self, h: &FrameHeader, offset: usize) -> Result<Option<Message>, RingError> {
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
                let mut buf = WrapperFunctionBuffer::try_zeroed(len)
                    .map_err(|e| RingError::OutOfMemory { len: e.len })?;
                let dst = buf.as_mut_slice();
                // SAFETY: the payload lies inside the checked, published
                // frame; `dst` is a private buffer of `len` bytes.
                unsafe { self.mem.data.read(payload_at, dst.as_mut_ptr(), len) };
                return Ok(Some(Message::new(opcode, h.seq, h.tag, buf)));
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
            let mut data = Vec::new();
            grow(&mut data, len, total)?;
            // SAFETY: payload inside the checked, published frame; `grow`
            // reserved `len` bytes of spare capacity.
            unsafe { copy_into(&self.mem.data, &mut data, payload_at, len) };
            self.partial = Some(Partial {
                opcode,
                seq: h.seq,
                tag: h.tag,
                total: h.total,
                data,
            });
            return Ok(None);
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
            return Ok(None);
        }
        Ok(self.partial.take().map(|p| {
            Message::new(
                p.opcode,
                p.seq,
                p.tag,
                WrapperFunctionBuffer::from_vec(p.data),
            )
        }))
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

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn header_words_round_trip() {
        let h = FrameHeader {
            len: 0xdead_beef,
            flags: FIRST | LAST,
            opcode: 3,
            reserved: 0,
            seq: u64::MAX,
            tag: 42,
            total: 7,
        };
        assert_eq!(FrameHeader::from_words(h.to_words()), h);
        assert_eq!(frame_size(0), 32);
        assert_eq!(frame_size(1), 48);
        assert_eq!(frame_size(16), 48);
        assert_eq!(frame_size(17), 64);
    }

    #[test]
    fn index_arithmetic() {
        let i = Indices { capacity: 256 };
        assert!(i.is_valid(0) && i.is_valid(496) && !i.is_valid(512) && !i.is_valid(8));
        assert_eq!(i.advance(496, 32), 16);
        assert_eq!(i.distance(496, 16), 32);
        assert_eq!(i.distance(16, 496), 480);
        assert_eq!(i.offset(272), 16);
    }

    #[test]
    fn batch_is_published_once() {
        let (mut tx, mut rx) = heap_ring(4096, 1 << 20).unwrap();
        for i in 0..5u64 {
            let p = pattern(i as usize * 10, i as u8);
            assert_eq!(
                tx.try_push(Opcode::Result, i, 0, &p).unwrap(),
                WriteStatus::Complete
            );
        }
        assert!(!rx.has_frames());
        assert!(rx.try_recv().unwrap().is_none());
        assert!(tx.publish());
        assert!(!tx.publish());
        for i in 0..5u64 {
            let m = rx.try_recv().unwrap().unwrap();
            assert_eq!(m.seq, i);
            assert_eq!(m.payload.as_slice(), &pattern(i as usize * 10, i as u8)[..]);
        }
        assert!(rx.try_recv().unwrap().is_none());
        assert!(rx.take_freed_space());
        assert!(!rx.take_freed_space());
    }

    #[test]
    fn full_ring_would_block_and_push_is_all_or_nothing() {
        let (mut tx, mut rx) = heap_ring(256, 1 << 20).unwrap();
        // 256-byte ring: frames of 32 + 16.
        let mut sent = 0u64;
        while tx
            .try_send(Opcode::Result, sent, 0, &[sent as u8; 16])
            .unwrap()
            == WriteStatus::Complete
        {
            sent += 1;
        }
        assert_eq!(sent, 5);
        for seq in 0..sent {
            let m = rx.try_recv().unwrap().unwrap();
            assert_eq!((m.seq, m.payload.as_slice()), (seq, &[seq as u8; 16][..]));
        }
        // A seven-fragment message does not fit: nothing of it may appear.
        assert_eq!(
            tx.try_send(Opcode::Result, 9, 0, &[1; 16]).unwrap(),
            WriteStatus::Complete
        );
        assert_eq!(
            tx.try_send(Opcode::Result, 10, 0, &pattern(200, 3))
                .unwrap(),
            WriteStatus::WouldBlock
        );
        assert_eq!(rx.try_recv().unwrap().unwrap().seq, 9);
        assert!(rx.try_recv().unwrap().is_none());
    }

    #[test]
    fn too_large_is_refused_before_writing() {
        let (mut tx, _rx) = heap_ring(4096, 100).unwrap();
        assert_eq!(
            tx.try_send(Opcode::Result, 0, 0, &[0; 101]),
            Err(RingError::TooLarge {
                size: 101,
                limit: 100
            })
        );
        assert_eq!(
            tx.try_send(Opcode::Result, 0, 0, &[0; 100]),
            Ok(WriteStatus::Complete)
        );
    }

    #[test]
    fn interleaving_a_half_written_message_is_refused() {
        let (mut tx, _rx) = heap_ring(256, 1 << 20).unwrap();
        let big = pattern(1000, 0);
        let mut msg = OutgoingMessage::new(Opcode::Result, 1, 0, &big);
        assert_eq!(tx.try_write(&mut msg).unwrap(), WriteStatus::WouldBlock);
        assert!(msg.written() > 0);
        assert_eq!(
            tx.try_push(Opcode::Result, 2, 0, b"x"),
            Err(RingError::Unfinished)
        );
        let mut other = OutgoingMessage::new(Opcode::Result, 3, 0, b"y");
        assert_eq!(tx.try_write(&mut other), Err(RingError::Unfinished));
    }

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
