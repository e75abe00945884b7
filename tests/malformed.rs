//! A hostile or broken peer on the stream transport: every malformed input
//! ends in a clean disconnect with a clear reason, pending calls fail, and
//! nothing panics, hangs or allocates what the peer asked for.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use orcwire::sps::SetupInfo;
use orcwire::StreamConfig;
use orcwire::{
    CallError, ConnectError, ControllerBuilder, DisconnectReason, Endpoint, StreamTransport,
};

const LIMIT: Duration = Duration::from_secs(10);

fn frame(size: u64, opcode: u64, seq: u64, tag: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [size, opcode, seq, tag] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(payload);
    v
}

fn good_frame(opcode: u64, seq: u64, tag: u64, payload: &[u8]) -> Vec<u8> {
    frame(32 + payload.len() as u64, opcode, seq, tag, payload)
}

fn setup_frame() -> Vec<u8> {
    let mut s = SetupInfo::new_orcwire("x86_64-unknown-linux-gnu".into(), 4096);
    s.bootstrap_symbols.push(("f".into(), 1));
    good_frame(0, 0, 0, &s.encode())
}

/// A controller connected to a raw socket we control.
fn controller() -> (Endpoint, UnixStream) {
    let (ours, raw) = UnixStream::pair().unwrap();
    let cfg = StreamConfig {
        max_message_size: 1 << 20,
    };
    let t = StreamTransport::from_unix(ours, cfg).unwrap();
    let mut raw_w = raw.try_clone().unwrap();
    raw_w.write_all(&setup_frame()).unwrap();
    let ep = ControllerBuilder::new().connect(t).unwrap();
    (ep, raw)
}

fn wait_disconnected(ep: &Endpoint) -> DisconnectReason {
    let deadline = Instant::now() + LIMIT;
    while !ep.is_disconnected() {
        assert!(Instant::now() < deadline, "endpoint never disconnected");
        std::thread::sleep(Duration::from_millis(1));
    }
    ep.disconnect_reason().unwrap()
}

fn check(bytes: Vec<u8>, close_after: bool, expect: impl Fn(&DisconnectReason) -> bool) {
    let (ep, mut raw) = controller();
    let tag = ep.function_tag("f").unwrap();
    let call = ep.call(tag, b"pending").unwrap();
    raw.write_all(&bytes).unwrap();
    if close_after {
        raw.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let start = Instant::now();
    let reason = wait_disconnected(&ep);
    assert!(expect(&reason), "unexpected reason {reason:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(call.wait().unwrap_err(), CallError::Disconnected);
    assert_eq!(ep.call(tag, b"").unwrap_err(), CallError::Disconnected);
}

fn is_protocol(r: &DisconnectReason) -> bool {
    matches!(r, DisconnectReason::Protocol(_))
}

#[test]
fn unknown_opcode() {
    check(good_frame(7, 1, 0, b""), false, is_protocol);
}

#[test]
fn size_smaller_than_the_header() {
    check(frame(5, 2, 1, 0, b""), false, is_protocol);
}

#[test]
fn size_near_u64_max_is_refused_without_allocating() {
    check(frame(u64::MAX - 3, 2, 1, 0, b""), false, |r| {
        matches!(
            r,
            DisconnectReason::Protocol(_)
                | DisconnectReason::Transport(orcwire::TransportError::TooLarge { .. })
        )
    });
}

#[test]
fn size_just_over_the_limit_is_refused() {
    check(frame(32 + (1 << 20) + 1, 2, 1, 0, b""), false, |r| {
        matches!(
            r,
            DisconnectReason::Protocol(_)
                | DisconnectReason::Transport(orcwire::TransportError::TooLarge { .. })
        )
    });
}

#[test]
fn truncated_frame_then_end_of_stream() {
    let mut bytes = good_frame(2, 1, 0, &[1u8; 100]);
    bytes.truncate(60);
    check(bytes, true, is_protocol);
}

#[test]
fn result_for_a_sequence_number_never_used() {
    check(good_frame(2, 999, 0, b"x"), false, is_protocol);
}

#[test]
fn result_with_an_unknown_kind() {
    check(good_frame(2, 1, 77, b"x"), false, is_protocol);
}

#[test]
fn a_second_setup() {
    check(setup_frame(), false, is_protocol);
}

#[test]
fn garbage_instead_of_setup_is_a_connect_error() {
    let (ours, mut raw) = UnixStream::pair().unwrap();
    let t = StreamTransport::from_unix(ours, StreamConfig::default()).unwrap();
    raw.write_all(&good_frame(0, 0, 0, &[0xff; 40])).unwrap();
    let err = ControllerBuilder::new().connect(t).unwrap_err();
    assert!(matches!(err, ConnectError::Setup(_)), "{err:?}");

    let (ours, mut raw) = UnixStream::pair().unwrap();
    let t = StreamTransport::from_unix(ours, StreamConfig::default()).unwrap();
    raw.write_all(&good_frame(3, 1, 1, b"call before setup"))
        .unwrap();
    let err = ControllerBuilder::new().connect(t).unwrap_err();
    assert!(matches!(err, ConnectError::UnexpectedMessage(_)), "{err:?}");
}

#[test]
fn silent_peer_is_a_setup_timeout() {
    let (ours, _raw) = UnixStream::pair().unwrap();
    let t = StreamTransport::from_unix(ours, StreamConfig::default()).unwrap();
    let cfg = orcwire::EndpointConfig {
        setup_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let start = Instant::now();
    let err = ControllerBuilder::new().config(cfg).connect(t).unwrap_err();
    assert!(matches!(err, ConnectError::SetupTimeout(_)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// Everything the raw peer receives until the controller closes its end.
fn read_all(raw: &mut UnixStream) -> Vec<u8> {
    use std::io::Read;
    raw.set_read_timeout(Some(LIMIT)).unwrap();
    let mut got = Vec::new();
    raw.read_to_end(&mut got).unwrap();
    got
}

#[test]
fn a_hangup_is_acknowledged_with_an_sps_error_payload() {
    let (ep, mut raw) = controller();
    // The peer asks to end the session; LLVM puts an SPS `Error` in it.
    raw.write_all(&good_frame(1, 0, 0, &[0])).unwrap();
    assert_eq!(wait_disconnected(&ep), DisconnectReason::PeerHungUp);
    drop(ep);
    // Our answer: one Hangup frame whose payload is a success `Error`.
    assert_eq!(read_all(&mut raw), good_frame(1, 0, 0, &[0]));
}

#[test]
fn a_malformed_hangup_is_a_protocol_error() {
    check(good_frame(1, 0, 0, &[7, 7]), false, is_protocol);
}

#[test]
fn nothing_is_sent_after_the_peers_end_of_stream() {
    let (ep, mut raw) = controller();
    // LLVM 14's way of ending a session: close without a Hangup.
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(wait_disconnected(&ep), DisconnectReason::PeerHungUp);
    drop(ep);
    assert_eq!(
        read_all(&mut raw),
        Vec::<u8>::new(),
        "no Hangup into a closed stream"
    );
}
