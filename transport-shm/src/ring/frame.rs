//! The frame format: the 32-byte [`FrameHeader`] in front of every frame,
//! its flags, and the size a frame occupies in the ring.
//!
//! Pure data and arithmetic; nothing here touches ring memory (the
//! backings in `memory/` store the header's four words).

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
/// Frame flag: set in every published frame. A frame's first header word
/// is its publication: the producer stores it last, with `Release`, and
/// the slot where the next frame will start holds 0 until then.
pub const PUBLISHED: u8 = 8;
/// Every defined flag; any other bit is a protocol violation.
pub(super) const KNOWN_FLAGS: u8 = FIRST | LAST | PADDING | PUBLISHED;

/// [`FRAME_HEADER_SIZE`] as a position step.
pub(super) const HEADER: u64 = FRAME_HEADER_SIZE as u64;
/// [`FRAME_ALIGN`] as a position step.
pub(super) const ALIGN: u64 = FRAME_ALIGN as u64;

/// The 32-byte header in front of every frame, as four native-endian
/// `u64` words:
///
/// | word | bits   | field                                   |
/// |------|--------|-----------------------------------------|
/// | 0    | 0..32  | `len`: payload bytes in this frame      |
/// | 0    | 32..40 | `flags`: [`FIRST`], [`LAST`], [`PADDING`], [`PUBLISHED`] |
/// | 0    | 40..48 | `opcode` (wire value, 0..=3)            |
/// | 0    | 48..64 | reserved, 0                             |
/// | 1    |        | `seq`                                   |
/// | 2    |        | `tag`                                   |
/// | 3    |        | `total`: the whole message's length     |
///
/// A padding frame has `len` = bytes to the end of the ring minus 32,
/// flags `PADDING | PUBLISHED` and every other field 0. Word 0 is the
/// frame's publication (see [`PUBLISHED`]); it is never 0 in a published
/// frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameHeader {
    /// Payload bytes in this frame.
    pub len: u32,
    /// [`FIRST`], [`LAST`], [`PADDING`], [`PUBLISHED`].
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
    pub fn to_words(self) -> [u64; 4] {
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
    #[cfg(any(test, feature = "internals", orcwire_loom))]
    pub fn from_words(w: [u64; 4]) -> Self {
        Self::from_parts(w[0], [w[1], w[2], w[3]])
    }

    /// Splits word 0 and words 1 to 3 into fields (no checks).
    pub fn from_parts(word0: u64, rest: [u64; 3]) -> Self {
        let w = [word0, rest[0], rest[1], rest[2]];
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
pub(super) fn frame_size(len: u64) -> u64 {
    HEADER + ((len + (ALIGN - 1)) & !(ALIGN - 1))
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;

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
}
