//! The message model every transport carries.
//!
//! It is LLVM's SimpleRemoteEPC model, with the same opcode numbers, so a
//! stream carrying orcwire messages is byte-compatible with
//! `FDSimpleRemoteEPCTransport`:
//!
//! | opcode        | `seq`                        | `tag`                           | payload              |
//! |---------------|------------------------------|---------------------------------|----------------------|
//! | `Setup`       | 0                            | 0                               | SPS [`SetupInfo`](crate::sps::SetupInfo) |
//! | `Hangup`      | 0                            | 0                               | empty                |
//! | `Result`      | the call's sequence number   | [`RESULT_OK`] or [`RESULT_ERROR`] | result bytes, or UTF-8 error text |
//! | `CallWrapper` | the caller's sequence number | the callee's [`HandlerTag`](crate::HandlerTag) | argument bytes |
//!
//! LLVM sends every `Result` with a zero tag and has no way to carry an
//! out-of-band error; orcwire uses tag 1 for that, which an LLVM peer never
//! produces, so LLVM-originated results still decode as plain results.

use crate::buffer::WrapperFunctionBuffer;

/// What a message asks of its receiver. The numbers are LLVM's
/// `SimpleRemoteEPCOpcode` values and are part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// The executor describes itself (sent once, executor to controller).
    Setup = 0,
    /// The sender is disconnecting; the receiver answers with its own
    /// `Hangup` (the acknowledgement) and stops.
    Hangup = 1,
    /// The result of an earlier `CallWrapper` with the same sequence number.
    Result = 2,
    /// Call the wrapper function named by the tag.
    CallWrapper = 3,
}

impl Opcode {
    /// Decodes a wire opcode.
    ///
    /// # Errors
    /// [`UnknownOpcode`] for any value other than 0 to 3; a receiver treats
    /// that as a protocol error and disconnects.
    #[inline]
    pub fn from_wire(value: u64) -> Result<Self, UnknownOpcode> {
        match value {
            0 => Ok(Self::Setup),
            1 => Ok(Self::Hangup),
            2 => Ok(Self::Result),
            3 => Ok(Self::CallWrapper),
            other => Err(UnknownOpcode(other)),
        }
    }

    /// The wire value of this opcode.
    #[inline]
    pub fn to_wire(self) -> u64 {
        self as u64
    }
}

/// A received opcode outside 0..=3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown message opcode {0}: the peer speaks another protocol or its memory is corrupt; disconnect")]
pub struct UnknownOpcode(pub u64);

/// `Result` tag: the payload is the wrapper function's result bytes.
pub const RESULT_OK: u64 = 0;
/// `Result` tag: the payload is the UTF-8 text of an out-of-band error.
pub const RESULT_ERROR: u64 = 1;

/// One message, owned. Its payload is always plain bytes (never an
/// out-of-band error: errors travel as [`RESULT_ERROR`] results).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// What the message asks.
    pub opcode: Opcode,
    /// Sequence number pairing a `CallWrapper` with its `Result`.
    pub seq: u64,
    /// Handler tag for `CallWrapper`, result kind for `Result`, else 0.
    pub tag: u64,
    /// The bytes the message carries.
    pub payload: WrapperFunctionBuffer,
}

impl Message {
    /// Builds a message.
    pub fn new(opcode: Opcode, seq: u64, tag: u64, payload: WrapperFunctionBuffer) -> Self {
        Self {
            opcode,
            seq,
            tag,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_round_trip_and_unknown_is_rejected() {
        for op in [
            Opcode::Setup,
            Opcode::Hangup,
            Opcode::Result,
            Opcode::CallWrapper,
        ] {
            assert_eq!(Opcode::from_wire(op.to_wire()), Ok(op));
        }
        assert_eq!(Opcode::from_wire(4), Err(UnknownOpcode(4)));
        assert_eq!(Opcode::from_wire(u64::MAX), Err(UnknownOpcode(u64::MAX)));
        assert_eq!(Opcode::CallWrapper.to_wire(), 3);
    }
}
