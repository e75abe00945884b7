use super::*;

fn header(total: u64, opcode: u64, seq: u64, tag: u64) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..8].copy_from_slice(&total.to_le_bytes());
    h[8..16].copy_from_slice(&opcode.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&tag.to_le_bytes());
    h
}

#[test]
fn header_layout_is_llvms() {
    let h = encode_header(Opcode::Result, 0x0102_0304_0506_0708, 0xAA, 5);
    assert_eq!(h, header(37, 2, 0x0102_0304_0506_0708, 0xAA));
    assert_eq!(&h[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
}

#[test]
fn parse_round_trips_every_opcode() {
    for op in [
        Opcode::Setup,
        Opcode::Hangup,
        Opcode::Result,
        Opcode::CallWrapper,
    ] {
        let h = encode_header(op, 9, u64::MAX, 100);
        let (m, len) = parse_header(&h, 100).unwrap();
        assert_eq!((m.opcode, m.seq, m.tag, len), (op, 9, u64::MAX, 100));
        assert!(m.payload.is_empty());
    }
}

#[test]
fn parse_rejects_short_frames() {
    for total in [0, 1, 31] {
        let err = parse_header(&header(total, 0, 0, 0), 1 << 20).unwrap_err();
        assert!(
            matches!(&err, TransportError::Protocol(t) if t.contains("smaller than")),
            "{err:?}"
        );
    }
    assert_eq!(parse_header(&header(32, 1, 0, 0), 0).unwrap().1, 0);
}

#[test]
fn parse_rejects_unknown_opcode() {
    let err = parse_header(&header(32, 9, 0, 0), 1 << 20).unwrap_err();
    assert!(
        matches!(&err, TransportError::Protocol(t) if t.contains("opcode 9")),
        "{err:?}"
    );
}

#[test]
fn parse_enforces_the_limit_exactly() {
    assert_eq!(parse_header(&header(32 + 64, 3, 0, 0), 64).unwrap().1, 64);
    assert_eq!(
        parse_header(&header(32 + 65, 3, 0, 0), 64).unwrap_err(),
        TransportError::TooLarge {
            size: 65,
            limit: 64
        }
    );
    assert_eq!(
        parse_header(&header(u64::MAX, 3, 0, 0), DEFAULT_MAX_MESSAGE_SIZE).unwrap_err(),
        TransportError::TooLarge {
            size: u64::MAX - 32,
            limit: DEFAULT_MAX_MESSAGE_SIZE
        }
    );
}

#[test]
fn size_check_comes_before_opcode_check() {
    // Either is fatal; the size is the cheaper and more telling one.
    let err = parse_header(&header(u64::MAX, 77, 0, 0), 10).unwrap_err();
    assert!(matches!(err, TransportError::TooLarge { .. }), "{err:?}");
}

#[test]
fn config_limit_is_checked() {
    let config = StreamConfig {
        max_message_size: u64::MAX,
    };
    let err = StreamTransport::pipe_pair(config).unwrap_err();
    assert!(matches!(err, StreamError::Config(_)), "{err:?}");
}
