//! Position arithmetic: `head` and `tail` are byte positions in
//! `0 .. 2 * capacity` (the extra bit tells a full ring from an empty
//! one), multiples of 16; [`Indices`] checks, advances and subtracts them.
//!
//! Relies on: the capacity being a power of two (checked by the layout).

use super::frame::ALIGN;

/// Position arithmetic for a ring of `capacity` bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Indices {
    /// A power of two.
    pub(super) capacity: u64,
}

impl Indices {
    /// Whether `pos` is a position: in `0 .. 2 * capacity`, 16-aligned.
    #[inline]
    pub(super) fn is_valid(self, pos: u64) -> bool {
        pos < 2 * self.capacity && pos % ALIGN == 0
    }

    /// Offset of `pos` in the data, in `0 .. capacity`.
    #[inline]
    pub(super) fn offset(self, pos: u64) -> usize {
        debug_assert!(self.is_valid(pos), "position {pos} out of range");
        (pos & (self.capacity - 1)) as usize
    }

    /// `pos` moved `n` bytes forward (`n <= capacity`, 16-aligned).
    #[inline]
    pub(super) fn advance(self, pos: u64, n: u64) -> u64 {
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
    pub(super) fn distance(self, from: u64, to: u64) -> u64 {
        debug_assert!(self.is_valid(from) && self.is_valid(to));
        to.wrapping_sub(from) & (2 * self.capacity - 1)
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;

    #[test]
    fn index_arithmetic() {
        let i = Indices { capacity: 256 };
        assert!(i.is_valid(0) && i.is_valid(496) && !i.is_valid(512) && !i.is_valid(8));
        assert_eq!(i.advance(496, 32), 16);
        assert_eq!(i.distance(496, 16), 32);
        assert_eq!(i.distance(16, 496), 480);
        assert_eq!(i.offset(272), 16);
    }
}
