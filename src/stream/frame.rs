//! The frame header: LLVM `FDSimpleRemoteEPCTransport`'s four
//! little-endian `u64`s (size, opcode, seq, tag), encoded and checked.

use super::*;

/// The wire header of a message with `payload_len` bytes of payload.
pub(super) fn encode_header(
    opcode: Opcode,
    seq: u64,
    tag: u64,
    payload_len: u64,
) -> [u8; HEADER_SIZE] {
    let mut header = [0u8; HEADER_SIZE];
    let fields = [HEADER_SIZE as u64 + payload_len, opcode.to_wire(), seq, tag];
    for (chunk, field) in header.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&field.to_le_bytes());
    }
    header
}

/// Validates a header read from the peer: the message it announces (with
/// an empty payload still to be filled in) and the payload length. Nothing
/// is allocated for a header that fails.
pub(super) fn parse_header(
    header: &[u8; HEADER_SIZE],
    max_message_size: u64,
) -> Result<(Message, usize), TransportError> {
    let mut fields = [0u64; 4];
    for (field, chunk) in fields.iter_mut().zip(header.chunks_exact(8)) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        *field = u64::from_le_bytes(bytes);
    }
    let [total, opcode, seq, tag] = fields;
    let Some(payload_len) = total.checked_sub(HEADER_SIZE as u64) else {
        return Err(TransportError::Protocol(format!(
            "frame size {total} is smaller than the {HEADER_SIZE}-byte header"
        )));
    };
    if payload_len > max_message_size {
        return Err(TransportError::TooLarge {
            size: payload_len,
            limit: max_message_size,
        });
    }
    let message = decode_message(opcode, seq, tag, WrapperFunctionBuffer::new())?;
    // Cannot fail: max_message_size <= isize::MAX was checked at setup.
    let payload_len = usize::try_from(payload_len).map_err(|_| TransportError::TooLarge {
        size: payload_len,
        limit: max_message_size,
    })?;
    Ok((message, payload_len))
}

pub(super) fn truncated(got: usize, want: usize) -> TransportError {
    TransportError::Protocol(format!(
        "the stream ended in the middle of a message (truncated: {got} of {want} bytes); the peer crashed or wrote a partial frame"
    ))
}
