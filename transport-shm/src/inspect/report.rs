//! What an inspection finds: a [`SegmentReport`] with one [`SideReport`]
//! per side and one [`RingReport`] per ring, the state and waiting bits by
//! name, and how each prints (`orcwire inspect PID`'s output).
//!
//! Plain data; nothing here reads a segment.
//!
//! Relies on: `layout::state::NAMES` and the `waiting` bits for the names.

use std::fmt;

use crate::layout::{state, waiting, Side};

/// The state flags by name: `layout::state::NAMES`, the one table to
/// edit when the state word gains or loses a flag. Bits not named there
/// print as hex.
const STATE_FLAGS: &[(u64, &str)] = &state::NAMES;

/// The waiting bits by name, with who sleeps while the bit is set.
const WAITING_BITS: &[(u32, &str, &str)] = &[
    (
        waiting::DATA,
        "DATA",
        "its consumer sleeps until the peer publishes frames",
    ),
    (
        waiting::SPACE,
        "SPACE",
        "its producer sleeps until the peer frees room",
    ),
];

/// Whether the process a side block names is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The side has not written its pid yet (0).
    NotRecorded,
    /// The number cannot be a pid (above `i32::MAX`): the segment is corrupt.
    NotAPid,
    /// A process with this pid exists (`kill(pid, 0)` succeeded or was
    /// refused for permission). Pids are reused, so this is a hint.
    Alive,
    /// No process has this pid.
    Gone,
}

/// One side's block: its futex word, waiting bits and pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SideReport {
    /// Which side.
    pub side: Side,
    /// The futex word this side sleeps on (any value; bumped per wake).
    pub futex: u32,
    /// The waiting bits this side announced (1: its consumer waits for
    /// data, 2: its producer waits for space).
    pub waiting: u32,
    /// The pid this side wrote (0: not yet).
    pub pid: u32,
    /// Whether that pid names a running process, checked while inspecting.
    pub liveness: Liveness,
}

/// One ring's descriptor and indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingReport {
    /// The side that produces into this ring.
    pub sender: Side,
    /// Data bytes of the ring.
    pub capacity: u64,
    /// Offset of the ring's control block in the segment.
    pub control_offset: u64,
    /// Offset of the ring's data in the segment.
    pub data_offset: u64,
    /// Next byte position to consume, in `0 .. 2 * capacity` when sane.
    pub head: u64,
    /// One past the last published byte position, in `0 .. 2 * capacity`
    /// when sane.
    pub tail: u64,
}

impl RingReport {
    /// Bytes published and not yet consumed (`tail - head` in the
    /// `2 * capacity` index space), or `None` when the indices are out of
    /// range or further apart than the capacity (a corrupt ring, or a
    /// producer that raced ahead between the two loads).
    pub fn in_flight(&self) -> Option<u64> {
        let span = self.capacity.checked_mul(2)?;
        if self.head >= span || self.tail >= span {
            return None;
        }
        let used = (self.tail + span - self.head) % span;
        (used <= self.capacity).then_some(used)
    }
}

/// What one segment holds, read word by word from a live mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    /// Bytes of the file or mapping.
    pub file_len: u64,
    /// How the words were read: `"mapped read-only"` or `"pread"`.
    pub access: &'static str,
    /// The magic: `ORCWSHM1` as a little-endian `u64` in a segment.
    pub magic: u64,
    /// The layout version the writer speaks.
    pub version: u32,
    /// `size_of::<SegmentHeader>()` as the writer compiled it.
    pub header_size: u32,
    /// Bytes of the segment, as the header says.
    pub segment_size: u64,
    /// Largest message either side may send.
    pub max_message_size: u64,
    /// The state word: flags (low 32 bits, named by
    /// [`state_flags`](Self::state_flags)) and epoch (high 32).
    pub state: u64,
    /// The two side blocks, indexed by [`Side::index`].
    pub sides: [SideReport; 2],
    /// The two rings, indexed by the sending side's [`Side::index`].
    pub rings: [RingReport; 2],
}

impl SegmentReport {
    /// The connection epoch.
    pub fn epoch(&self) -> u32 {
        state::epoch(self.state)
    }

    /// The names of the set state flags, and the set flag bits (low 32)
    /// that have no name.
    pub fn state_flags(&self) -> (Vec<&'static str>, u64) {
        let flags = self.state & 0xffff_ffff;
        let names = STATE_FLAGS
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        let known = STATE_FLAGS.iter().fold(0, |m, (bit, _)| m | bit);
        (names, flags & !known)
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Controller => "controller",
        Side::Executor => "executor",
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::NotRecorded => "not recorded yet",
            Liveness::NotAPid => "not a valid pid",
            Liveness::Alive => "alive",
            Liveness::Gone => "gone",
        })
    }
}

impl fmt::Display for SideReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<10} pid {} ({}), futex word {}, waiting ",
            side_name(self.side),
            self.pid,
            self.liveness,
            self.futex
        )?;
        if self.waiting == 0 {
            return f.write_str("none");
        }
        let peer = side_name(self.side.peer());
        let mut first = true;
        for (bit, name, meaning) in WAITING_BITS {
            if self.waiting & bit != 0 {
                let sep = if first { "" } else { "; " };
                write!(
                    f,
                    "{sep}{name} ({})",
                    meaning.replace("the peer", &format!("the {peer}"))
                )?;
                first = false;
            }
        }
        let known = WAITING_BITS.iter().fold(0, |m, (bit, _, _)| m | bit);
        if self.waiting & !known != 0 {
            let sep = if first { "" } else { "; " };
            write!(f, "{sep}unknown bits {:#x}", self.waiting & !known)?;
        }
        Ok(())
    }
}

impl fmt::Display for RingReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ring {}     {} -> {}: capacity {} B, head {}, tail {}, ",
            self.sender.index(),
            side_name(self.sender),
            side_name(self.sender.peer()),
            self.capacity,
            self.head,
            self.tail
        )?;
        match self.in_flight() {
            Some(n) => write!(f, "{n} B in flight"),
            None => f.write_str("indices inconsistent (out of range, or moved while read)"),
        }
    }
}

impl fmt::Display for SegmentReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  header     magic {:#018x} (\"ORCWSHM1\"), layout version {}, header {} B, \
             segment {} B (file {} B, {}), max message {} B",
            self.magic,
            self.version,
            self.header_size,
            self.segment_size,
            self.file_len,
            self.access,
            self.max_message_size
        )?;
        let (names, unknown) = self.state_flags();
        write!(
            f,
            "  state      {:#018x}: epoch {}, flags ",
            self.state,
            self.epoch()
        )?;
        match (names.is_empty(), unknown) {
            (true, 0) => f.write_str("none")?,
            _ => f.write_str(&names.join(" | "))?,
        }
        if unknown != 0 {
            let sep = if names.is_empty() { "" } else { " | " };
            write!(f, "{sep}unknown {unknown:#x}")?;
        }
        writeln!(f)?;
        for side in &self.sides {
            writeln!(f, "  {side}")?;
        }
        writeln!(f, "  {}", self.rings[0])?;
        write!(f, "  {}", self.rings[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{LAYOUT_VERSION, MAGIC};

    #[test]
    fn state_flags_by_name_and_unknown_bits_as_hex() {
        let mut r = SegmentReport {
            file_len: 0,
            access: "mapped",
            magic: MAGIC,
            version: LAYOUT_VERSION,
            header_size: 0,
            segment_size: 0,
            max_message_size: 0,
            state: (7u64 << state::EPOCH_SHIFT) | state::EXECUTOR_ATTACHED | (1 << 20),
            sides: [Side::Controller, Side::Executor].map(|side| SideReport {
                side,
                futex: 0,
                waiting: 0,
                pid: 0,
                liveness: Liveness::NotRecorded,
            }),
            rings: [Side::Controller, Side::Executor].map(|sender| RingReport {
                sender,
                capacity: 256,
                control_offset: 0,
                data_offset: 0,
                head: 0,
                tail: 0,
            }),
        };
        assert_eq!(r.epoch(), 7);
        assert_eq!(r.state_flags(), (vec!["EXECUTOR_ATTACHED"], 1 << 20));
        let text = r.to_string();
        assert!(text.contains("epoch 7, flags EXECUTOR_ATTACHED | unknown 0x100000"));
        r.sides[1].waiting = waiting::DATA | waiting::SPACE | 8;
        let text = r.to_string();
        assert!(
            text.contains(
                "waiting DATA (its consumer sleeps until the controller publishes frames); SPACE"
            ),
            "{text}"
        );
        assert!(text.contains("unknown bits 0x8"), "{text}");
    }

    #[test]
    fn in_flight_wraps_in_the_doubled_index_space() {
        let ring = |head, tail| RingReport {
            sender: Side::Controller,
            capacity: 256,
            control_offset: 0,
            data_offset: 0,
            head,
            tail,
        };
        assert_eq!(ring(0, 0).in_flight(), Some(0));
        assert_eq!(ring(16, 64).in_flight(), Some(48));
        assert_eq!(ring(496, 32).in_flight(), Some(48));
        assert_eq!(ring(0, 256).in_flight(), Some(256));
        assert_eq!(ring(0, 272).in_flight(), None);
        assert_eq!(ring(512, 0).in_flight(), None);
    }
}
