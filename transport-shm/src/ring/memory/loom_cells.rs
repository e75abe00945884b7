//! The loom backing of ring data (built only under `--cfg orcwire_loom`):
//! one loom `UnsafeCell` per 16 bytes, on the heap, so loom checks that
//! every payload and header access is ordered by the index protocol and
//! reports a data race where it is not.
//!
//! Relies on: `layout::loom_shared` to find the same cells from both ends
//! (keyed by the address the data would have in the mapping).

use std::sync::Arc;

use super::RingBytes;
use crate::layout::{loom_shared, RingRegion};
use crate::mapping::SharedMapping;
use crate::ring::FRAME_ALIGN;
use crate::sync::Ordering;

/// Ring data as loom cells: one `UnsafeCell` per 16 bytes, so loom checks
/// that every payload access is ordered by the index protocol.
pub(crate) struct LoomCells {
    chunks: Arc<LoomChunks>,
}

/// The cells, and beside each one the atomic that stands for its first
/// word when a frame header starts there (its publication word, which the
/// consumer polls while the producer may write it).
struct LoomChunks(
    Box<[loom::cell::UnsafeCell<[u8; FRAME_ALIGN]>]>,
    Box<[loom::sync::atomic::AtomicU64]>,
);

// SAFETY: every access goes through loom's `UnsafeCell::with{,_mut}`, which
// loom checks for races; that is the point of this backing.
unsafe impl Sync for LoomChunks {}
// SAFETY: as above.
unsafe impl Send for LoomChunks {}

impl RingBytes for LoomCells {
    /// The address `region` would have in `mapping` keys the model.
    unsafe fn new(mapping: &Arc<dyn SharedMapping>, region: &RingRegion) -> Self {
        let addr = mapping.base() as usize + region.data_offset;
        let chunks = region.capacity / FRAME_ALIGN;
        Self {
            chunks: loom_shared::object(addr, move || {
                LoomChunks(
                    (0..chunks)
                        .map(|_| loom::cell::UnsafeCell::new([0; FRAME_ALIGN]))
                        .collect(),
                    (0..chunks)
                        .map(|_| loom::sync::atomic::AtomicU64::new(0))
                        .collect(),
                )
            }),
        }
    }

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

    unsafe fn load_commit(&self, offset: usize) -> u64 {
        // SYNC POINT: frames published (Acquire half; see the mapped
        // backing).
        self.chunks.1[offset / FRAME_ALIGN].load(Ordering::Acquire)
    }

    unsafe fn store_commit(&self, offset: usize, word: u64, order: Ordering) {
        // SYNC POINT: frames published (Release half when `order` is).
        self.chunks.1[offset / FRAME_ALIGN].store(word, order);
    }

    unsafe fn write_header_rest(&self, offset: usize, words: [u64; 3]) {
        debug_assert_eq!(offset % FRAME_ALIGN, 0);
        let [w1, w2, w3] = words.map(u64::to_ne_bytes);
        // Word 1 is the second half of the first chunk (the first half is
        // word 0, kept in the chunk's atomic); words 2 and 3 fill the next.
        self.chunks.0[offset / FRAME_ALIGN].with_mut(|chunk| {
            // SAFETY: loom hands out the chunk exclusively (and reports a
            // race if the protocol does not make it so).
            unsafe { (&mut *chunk)[8..].copy_from_slice(&w1) }
        });
        self.chunks.0[offset / FRAME_ALIGN + 1].with_mut(|chunk| {
            // SAFETY: as above.
            unsafe {
                let chunk = &mut *chunk;
                chunk[..8].copy_from_slice(&w2);
                chunk[8..].copy_from_slice(&w3);
            }
        });
    }

    unsafe fn read_header_rest(&self, offset: usize) -> [u64; 3] {
        debug_assert_eq!(offset % FRAME_ALIGN, 0);
        let word = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_ne_bytes(a)
        };
        // SAFETY: the chunks are readable under loom's checks.
        let w1 = self.chunks.0[offset / FRAME_ALIGN].with(|chunk| word(unsafe { &(&*chunk)[8..] }));
        let (w2, w3) = self.chunks.0[offset / FRAME_ALIGN + 1]
            .with(|chunk| {
                // SAFETY: as above.
                let chunk = unsafe { &*chunk };
                (word(&chunk[..8]), word(&chunk[8..]))
            });
        [w1, w2, w3]
    }
}
