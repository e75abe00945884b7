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
use crate::ring::{FRAME_ALIGN, FRAME_HEADER_SIZE};

/// Ring data as loom cells: one `UnsafeCell` per 16 bytes, so loom checks
/// that every payload access is ordered by the index protocol.
pub(crate) struct LoomCells {
    chunks: Arc<LoomChunks>,
}

struct LoomChunks(Box<[loom::cell::UnsafeCell<[u8; FRAME_ALIGN]>]>);

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

    unsafe fn write_header(&self, offset: usize, words: [u64; 4]) {
        let mut bytes = [0u8; FRAME_HEADER_SIZE];
        for (out, w) in bytes.chunks_mut(8).zip(words) {
            out.copy_from_slice(&w.to_ne_bytes());
        }
        // SAFETY: forwarded contract.
        unsafe { self.write(offset, &bytes) }
    }

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
