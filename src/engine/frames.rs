//! [`Frames`]: the frames of one batch, gathered on the stack without
//! initialising the slots a batch does not use (an array of 16 frames
//! zeroed per batch cost a `memset` call and ~20 instructions a call on
//! the pipelined path; see `docs/BENCHMARKS.md`, 2026-11-30 (8)).

use std::mem::MaybeUninit;

use crate::transport::Outgoing;

/// Up to `N` frames, pushed in order; [`as_slice`](Self::as_slice) gives
/// the ones pushed so far.
pub(crate) struct Frames<'a, const N: usize> {
    slots: [MaybeUninit<Outgoing<'a>>; N],
    len: usize,
}

impl<'a, const N: usize> Frames<'a, N> {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Self {
            slots: [const { MaybeUninit::uninit() }; N],
            len: 0,
        }
    }

    /// Appends `frame`. Panics when full (callers push at most `N`).
    #[inline(always)]
    pub(crate) fn push(&mut self, frame: Outgoing<'a>) {
        self.slots[self.len].write(frame);
        self.len += 1;
    }

    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    pub(crate) fn as_slice(&self) -> &[Outgoing<'a>] {
        // SAFETY: slots `0 .. len` were written by `push` (`len` only
        // grows there, after the write); `MaybeUninit<T>` has `T`'s layout,
        // and `Outgoing` is `Copy`, so there is nothing to drop.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr().cast::<Outgoing<'a>>(), self.len) }
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;
    use crate::message::Opcode;

    #[test]
    fn frames_pushed_are_the_frames_seen_in_order() {
        let payloads: [&[u8]; 3] = [b"a", b"", b"ccc"];
        let mut f = Frames::<'_, 4>::new();
        assert!(f.as_slice().is_empty());
        for (i, p) in payloads.iter().enumerate() {
            f.push(Outgoing {
                opcode: Opcode::CallWrapper,
                seq: i as u64 + 1,
                tag: 7,
                payload: p,
            });
        }
        assert_eq!(f.len(), 3);
        let seen: Vec<_> = f.as_slice().iter().map(|o| (o.seq, o.payload)).collect();
        assert_eq!(seen, [(1, &b"a"[..]), (2, &b""[..]), (3, &b"ccc"[..])]);
    }

    #[test]
    #[should_panic]
    fn a_push_past_the_capacity_panics_instead_of_writing_past_the_end() {
        let mut f = Frames::<'_, 1>::new();
        for _ in 0..2 {
            f.push(Outgoing {
                opcode: Opcode::Result,
                seq: 1,
                tag: 0,
                payload: &[],
            });
        }
    }
}
