//! A single-producer single-consumer byte ring of variable-length frames,
//! in memory the peer can write.
//!
//! # Frames
//! A frame is a 32-byte [`FrameHeader`](frame::FrameHeader) and its payload, padded so the next
//! frame starts on a 16-byte boundary. A frame never wraps: when the bytes
//! left before the end of the ring cannot hold the next frame, the producer
//! fills them with a *padding frame* (flag [`PADDING`](frame::PADDING)) and continues at
//! offset 0; when fewer than a header's 32 bytes are left (16, since every
//! position is 16-aligned), both ends skip them without a frame.
//!
//! A message is one frame flagged [`FIRST`](frame::FIRST)` | `[`LAST`](frame::LAST), or, when its
//! payload exceeds one frame (`FRAGMENT_BYTES`, 32 KiB, or a quarter of
//! a smaller ring), a run of fragments: `FIRST`, zero or more unflagged
//! middles, `LAST`. Every fragment repeats the opcode, sequence number,
//! tag and total length, and the consumer checks that they agree and that
//! the lengths add up. The producer publishes each fragment as soon as it
//! is written ([`WriteStatus::Partial`]), so the consumer copies one out
//! while the producer writes the next: a large message crosses in about
//! one copy's time instead of two (1 MiB round trip: 2.2× → about 0.9×
//! the raw floor, which copies serially; `docs/BENCHMARKS.md`). Small
//! messages are never split: the producer waits for room for the whole
//! frame.
//!
//! # Publication: in the frame
//! A frame's first header word is its publication. The producer writes the
//! rest of the frame, clears the *slot* after it (the first word of where
//! the next frame will start, so whatever an earlier lap left there reads
//! 0), and stores the first word last, with `Release` and the
//! [`PUBLISHED`](frame::PUBLISHED) flag set. The consumer polls the slot
//! at its head with `Acquire`: 0 means nothing yet, a published word means
//! a frame whose bytes are all visible. So one cache line crosses per small
//! message, the frame's own, where an index-then-frame ring moves two (the
//! index's line, then the frame's, fetched only once the index arrived:
//! 64 B round trip about 100 ns less here, `docs/BENCHMARKS.md`). Every
//! frame needs the slot after it free, so a ring holds 16 bytes less than
//! its capacity. The producer may write several frames and publish them
//! with one store: it holds back the first unpublished frame's word and
//! stores the others' at once, and the consumer cannot reach them before
//! the held one.
//!
//! # Indices
//! `head` and `tail` are byte positions in `0 .. 2 * capacity` (the extra
//! bit tells a full ring from an empty one), multiples of 16. The consumer
//! stores `head` after consuming, and the producer re-reads it only when
//! its cached copy says the ring is full. The producer stores `tail` after
//! each publication for its own restart and for `orcwire inspect`; the
//! consumer does not read it.
//!
//! # Cache hints
//! Each frame crosses cores, so where its cache lines are decides the
//! latency. After publishing to a consumer that waits for it (the peer
//! answers one message at a time), the producer *demotes* the lines it
//! just wrote to the shared cache (`cldemote`), so the consumer's reads are
//! served from there rather than by snooping the producer's core; while
//! the consumer works through a backlog it does not, since the next frame's
//! stores would fetch the demoted line back. It fetches the lines the next
//! frame goes to for writing (`prefetchw`), so the next frame's stores do
//! not wait on the consumer's core then. When a frame is published, the
//! consumer fetches its first lines together rather than header, then
//! payload. All are hints: no access, no fault, nothing under loom, no-ops
//! on CPUs without them.

//! # The peer is hostile
//! Every index, length, flag and opcode the peer wrote is read once into a
//! local, checked (a head in range, aligned and not past our published
//! tail; a slot either 0 or a published frame; a frame inside the ring;
//! fragments consistent; totals within `max_message_size`), and payload
//! bytes are copied into private buffers before anyone parses them. No
//! `&[u8]` or `&T` of a non-atomic type is ever made over ring memory:
//! indices and frame headers are read and written with atomic loads and
//! stores (a header's first word with `Release`/`Acquire`, the rest
//! `Relaxed`), payloads are copied with `ptr::copy_nonoverlapping`. A violation is a
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
//! # Files
//! * `frame.rs`: the frame header codec, flags and sizes.
//! * `indices.rs`: position arithmetic.
//! * `memory/`: a ring's control block and data bytes; the data's backing
//!   is chosen there, once: the mapping's bytes in production, loom cells
//!   under `--cfg orcwire_loom` (so loom checks the index protocol *and*
//!   reports data races on payload bytes). The code in the other files is
//!   the same for both.
//! * `producer.rs`: [`RingProducer`] and [`OutgoingMessage`].
//! * `consumer.rs`: [`RingConsumer`], including reassembly of fragments.
//! * `pair.rs`: both ends at once, over a region or on the heap (for
//!   tests and loom models).
//!
//! Relies on: [`crate::layout`] for the control block and region checks,
//! the `sync` shim, and `orcwire`'s message types.

mod consumer;
mod frame;
mod indices;
mod memory;
#[cfg(any(test, feature = "internals", orcwire_loom))]
mod pair;
mod producer;

pub use consumer::{RingConsumer, RingPeek};
// The frame format, for orcwire's own tests and the loom backing.
#[cfg(any(test, feature = "internals", orcwire_loom))]
pub use frame::{FrameHeader, FIRST, FRAME_ALIGN, FRAME_HEADER_SIZE, LAST, PADDING, PUBLISHED};
#[cfg(any(test, feature = "internals", orcwire_loom))]
pub use pair::{heap_ring, ring_pair};
pub use producer::{OutgoingMessage, RingProducer};
#[cfg(any(test, feature = "internals", orcwire_loom))]
pub use producer::FRAGMENT_BYTES;

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
    /// A fragment of a large message is written and more follow: publish
    /// it, then call again at once. The consumer copies each fragment out
    /// while the producer writes the next, so a large message crosses in
    /// about one copy's time instead of two.
    Partial,
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use orcwire::Opcode;

    use super::*;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
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
        // 256-byte ring: frames of 32 + 16, and each needs the slot after
        // it free (16 bytes; a fifth frame would end 16 bytes before the
        // end, a gap it must skip too: 48 + 16 + 16 > the 64 left).
        let mut sent = 0u64;
        while tx
            .try_send(Opcode::Result, sent, 0, &[sent as u8; 16])
            .unwrap()
            == WriteStatus::Complete
        {
            sent += 1;
        }
        assert_eq!(sent, 4);
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
    fn whole_frames_and_the_general_path_share_the_ring() {
        // A 512-byte ring and sizes 0..=120: over many laps the whole-frame
        // path meets every tail offset, declines near the ring's end (the
        // general path pads or skips the gap) and when the room is short,
        // and never writes then; every message arrives intact, in order.
        let (mut tx, mut rx) = heap_ring(512, 1 << 20).unwrap();
        let (mut next_sent, mut next_read, mut whole, mut declined) = (0u64, 0u64, 0, 0);
        while next_read < 3000 {
            for _ in 0..(next_sent % 5 + 1) {
                let n = (next_sent * 37 % 121) as usize;
                let p = pattern(n, next_sent as u8);
                let before = format!("{tx:?}");
                if tx.try_write_whole(Opcode::Result, next_sent, 5, &p) {
                    whole += 1;
                } else {
                    declined += 1;
                    // Declining wrote nothing: the tail did not move.
                    assert_eq!(format!("{tx:?}"), before);
                    match tx.try_push(Opcode::Result, next_sent, 5, &p).unwrap() {
                        WriteStatus::Complete => {}
                        _ => break,
                    }
                }
                next_sent += 1;
            }
            tx.publish();
            while let Some(m) = rx.try_recv().unwrap() {
                let n = (next_read * 37 % 121) as usize;
                assert_eq!((m.seq, m.tag), (next_read, 5));
                assert_eq!(m.payload.as_slice(), &pattern(n, next_read as u8)[..]);
                next_read += 1;
            }
        }
        assert!(whole > 1000 && declined > 100, "{whole} whole, {declined} declined");
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
        // A fragment at a time, until the ring is full.
        assert_eq!(tx.try_write(&mut msg).unwrap(), WriteStatus::Partial);
        while tx.try_write(&mut msg).unwrap() == WriteStatus::Partial {}
        assert!(msg.written() > 0 && !msg.is_complete());
        assert_eq!(
            tx.try_push(Opcode::Result, 2, 0, b"x"),
            Err(RingError::Unfinished)
        );
        let mut other = OutgoingMessage::new(Opcode::Result, 3, 0, b"y");
        assert_eq!(tx.try_write(&mut other), Err(RingError::Unfinished));
    }
}
