//! Public behaviour of the stream transport: round trips over pipes, Unix
//! sockets and TCP, concurrent senders, hostile input, close unblocking
//! readers and writers, deadlines, interrupts and end of stream.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use orcwire::{Message, Opcode, Received, Transport, TransportError};
use orcwire::{StreamConfig, StreamTransport};
use orcwire_sync::{thread, Arc};

/// The longest any single wait in these tests may take.
const LIMIT: Duration = Duration::from_secs(10);

type Pair = (Arc<StreamTransport>, Arc<StreamTransport>);

fn tcp_pair(config: StreamConfig) -> Pair {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (
        StreamTransport::from_tcp(client, config.clone()).unwrap(),
        StreamTransport::from_tcp(server, config).unwrap(),
    )
}

fn all_pairs(config: StreamConfig) -> Vec<Pair> {
    vec![
        StreamTransport::pipe_pair(config.clone()).unwrap(),
        StreamTransport::unix_pair(config.clone()).unwrap(),
        tcp_pair(config),
    ]
}

/// A raw pipe `(read, write)`; the test plays the peer on one end.
fn raw_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by
    // nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn next(t: &StreamTransport) -> Result<Message, TransportError> {
    match t.recv(Some(Instant::now() + LIMIT))? {
        Received::Message(m) => Ok(m),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Runs `f` on a thread and waits at most `limit` for it, then joins the
/// thread. On a timeout the test fails without joining: a thread stuck for
/// good is exactly the bug being tested, and joining it would hang the run.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let _ = tx.send(f());
    });
    let out = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"));
    handle.join().unwrap();
    out
}

fn frame(total: u64, opcode: u64, seq: u64, tag: u64) -> Vec<u8> {
    [total, opcode, seq, tag]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

#[test]
fn round_trip_all_sizes_over_every_stream() {
    const SIZES: [usize; 7] = [0, 1, 31, 32, 33, 4096, 1 << 20];
    const OPS: [Opcode; 4] = [
        Opcode::Setup,
        Opcode::Hangup,
        Opcode::Result,
        Opcode::CallWrapper,
    ];
    for (a, b) in all_pairs(StreamConfig::default()) {
        for (dir, (tx, rx)) in [(&a, &b), (&b, &a)].into_iter().enumerate() {
            for (i, &size) in SIZES.iter().enumerate() {
                let payload = pattern(size, i as u8 + dir as u8);
                let op = OPS[i % 4];
                let seq = u64::MAX - i as u64;
                let tag = 0xDEAD_0000 + i as u64;
                // Sent from another thread: a send blocks while the stream
                // is full, and nothing reads it but `recv`.
                let m = thread::scope(|scope| {
                    let sender = scope.spawn(|| tx.send(op, seq, tag, &payload));
                    let m = next(rx);
                    sender.join().unwrap().unwrap();
                    m
                })
                .unwrap();
                assert_eq!(
                    (m.opcode, m.seq, m.tag),
                    (op, seq, tag),
                    "{} size {size}",
                    a.name()
                );
                assert!(
                    m.payload.as_slice() == &payload[..],
                    "{} size {size}: payload differs",
                    a.name()
                );
            }
        }
        a.close();
        b.close();
    }
}

#[test]
fn names() {
    let names: Vec<_> = all_pairs(StreamConfig::default())
        .iter()
        .map(|(a, b)| {
            assert_eq!(a.name(), b.name());
            a.name()
        })
        .collect();
    assert_eq!(names, ["pipe", "uds", "tcp"]);
    let (r, w) = raw_pipe();
    let t = StreamTransport::from_fds(r, w, StreamConfig::default()).unwrap();
    assert_eq!(t.name(), "pipe");
    assert!(!t.peer_died());
}

#[test]
fn wire_bytes_match_llvm_layout() {
    let (ours, mut peer) = UnixStream::pair().unwrap();
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    let t = StreamTransport::from_unix(ours, StreamConfig::default()).unwrap();

    t.send(Opcode::CallWrapper, 0x1122, 0x3344, b"abc").unwrap();
    let mut got = [0u8; 35];
    peer.read_exact(&mut got).unwrap();
    let mut want = frame(35, 3, 0x1122, 0x3344);
    want.extend_from_slice(b"abc");
    assert_eq!(&got[..], &want[..]);

    // An LLVM-written Result with an empty payload and a tagged call,
    // in one write.
    let mut bytes = frame(32, 2, 5, 0);
    bytes.extend(frame(36, 3, 6, 99));
    bytes.extend_from_slice(b"wxyz");
    peer.write_all(&bytes).unwrap();
    let m = next(&t).unwrap();
    assert_eq!(
        (m.opcode, m.seq, m.tag, m.payload.len()),
        (Opcode::Result, 5, 0, 0)
    );
    let m = next(&t).unwrap();
    assert_eq!((m.opcode, m.seq, m.tag), (Opcode::CallWrapper, 6, 99));
    assert_eq!(m.payload.as_slice(), b"wxyz");
    t.close();
}

fn concurrent_senders(pair: Pair) {
    const THREADS: u32 = 8;
    const PER_THREAD: u32 = 500;
    let (a, b) = pair;
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let a = Arc::clone(&a);
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let mut payload = Vec::new();
                    payload.extend_from_slice(&t.to_le_bytes());
                    payload.extend_from_slice(&i.to_le_bytes());
                    // Lengths vary so frames straddle buffer boundaries.
                    payload.extend(pattern((i as usize * 37 + t as usize) % 700, t as u8));
                    a.send(Opcode::CallWrapper, u64::from(t), u64::from(i), &payload)
                        .unwrap();
                }
            })
        })
        .collect();
    let mut next_index = [0u32; THREADS as usize];
    for _ in 0..THREADS * PER_THREAD {
        let m = next(&b).unwrap();
        let p = m.payload.as_slice();
        let t = u32::from_le_bytes(p[0..4].try_into().unwrap());
        let i = u32::from_le_bytes(p[4..8].try_into().unwrap());
        assert_eq!((m.seq, m.tag), (u64::from(t), u64::from(i)));
        assert_eq!(i, next_index[t as usize], "thread {t} out of order");
        next_index[t as usize] += 1;
        assert_eq!(
            &p[8..],
            &pattern((i as usize * 37 + t as usize) % 700, t as u8)[..]
        );
    }
    assert!(next_index.iter().all(|&n| n == PER_THREAD));
    for s in senders {
        s.join().unwrap();
    }
    assert!(matches!(
        b.recv(Some(Instant::now() + Duration::from_millis(20))),
        Ok(Received::TimedOut)
    ));
    a.close();
    b.close();
}

#[test]
fn concurrent_senders_pipe() {
    concurrent_senders(StreamTransport::pipe_pair(StreamConfig::default()).unwrap());
}

#[test]
fn concurrent_senders_unix() {
    concurrent_senders(StreamTransport::unix_pair(StreamConfig::default()).unwrap());
}

/// A transport reading what the test writes raw, over a pipe and over a
/// Unix socket: `(transport, raw writer)`.
fn hostile_peers(config: &StreamConfig) -> Vec<(Arc<StreamTransport>, Box<dyn Write + Send>)> {
    let (r, w) = raw_pipe();
    let (_unused_r, sink) = raw_pipe();
    let pipe = StreamTransport::from_fds(r, sink, config.clone()).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let uds = StreamTransport::from_unix(ours, config.clone()).unwrap();
    vec![
        (pipe, Box::new(std::fs::File::from(w))),
        (uds, Box::new(theirs)),
    ]
}

fn assert_hostile(bytes: &[u8], config: StreamConfig, check: impl Fn(&TransportError) -> bool) {
    for (t, mut peer) in hostile_peers(&config) {
        let start = Instant::now();
        peer.write_all(bytes).unwrap();
        let err = next(&t).unwrap_err();
        assert!(check(&err), "{}: unexpected error {err:?}", t.name());
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{}: error took {:?}",
            t.name(),
            start.elapsed()
        );
        // Sticky, and the send side is stopped too.
        assert_eq!(next(&t).unwrap_err(), err);
        assert_eq!(t.send(Opcode::Hangup, 0, 0, &[]).unwrap_err(), err);
        drop(peer);
        t.close();
        assert_eq!(next(&t).unwrap_err(), err, "first terminal cause wins");
    }
}

#[test]
fn hostile_size_below_header() {
    for total in [0, 5, 31] {
        assert_hostile(
            &frame(total, 0, 0, 0),
            StreamConfig::default(),
            |e| matches!(e, TransportError::Protocol(t) if t.contains("smaller than the 32-byte header")),
        );
    }
}

#[test]
fn hostile_unknown_opcode() {
    let mut bytes = frame(36, 9, 1, 2);
    bytes.extend_from_slice(b"abcd");
    assert_hostile(
        &bytes,
        StreamConfig::default(),
        |e| matches!(e, TransportError::Protocol(t) if t.contains("unknown message opcode 9")),
    );
}

#[test]
fn hostile_size_near_u64_max() {
    for total in [u64::MAX, u64::MAX - 31, 1 << 63] {
        assert_hostile(&frame(total, 3, 0, 0), StreamConfig::default(), |e| {
            *e == TransportError::TooLarge {
                size: total - 32,
                limit: 1 << 30,
            }
        });
    }
}

#[test]
fn hostile_size_just_above_limit_allocates_nothing() {
    // With the default 1 GiB limit: zeroing 1 GiB would take far longer
    // than the one second assert_hostile allows, and no payload follows.
    let total = 32 + (1u64 << 30) + 1;
    assert_hostile(&frame(total, 3, 0, 0), StreamConfig::default(), |e| {
        *e == TransportError::TooLarge {
            size: (1 << 30) + 1,
            limit: 1 << 30,
        }
    });
    let small = StreamConfig {
        max_message_size: 100,
    };
    assert_hostile(&frame(32 + 101, 3, 0, 0), small, |e| {
        *e == TransportError::TooLarge {
            size: 101,
            limit: 100,
        }
    });
}

#[test]
fn truncated_frames_then_eof() {
    let mut in_payload = frame(32 + 100, 3, 0, 0);
    in_payload.extend_from_slice(&[1; 10]);
    let in_header = frame(32 + 100, 3, 0, 0)[..10].to_vec();
    for (bytes, got) in [(in_payload, 42), (in_header, 10)] {
        for (t, mut peer) in hostile_peers(&StreamConfig::default()) {
            // A whole message first: it is delivered before the error.
            let mut good = frame(33, 2, 1, 0);
            good.push(0xEE);
            peer.write_all(&good).unwrap();
            peer.write_all(&bytes).unwrap();
            drop(peer);
            let m = next(&t).unwrap();
            assert_eq!(
                (m.opcode, m.seq, m.payload.as_slice()),
                (Opcode::Result, 1, &[0xEE][..])
            );
            let err = next(&t).unwrap_err();
            assert!(
                matches!(&err, TransportError::Protocol(text)
                    if text.contains("truncated") && text.contains(&format!("{got} of"))),
                "{}: {err:?}",
                t.name()
            );
            assert_eq!(next(&t).unwrap_err(), err);
            t.close();
        }
    }
}

#[test]
fn close_unblocks_reader_on_single_socket_fd() {
    // LLVM's FDSimpleRemoteEPCTransport hangs here: one socket fd for both
    // directions, a reader blocked in read(2), disconnect() closes fds.
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let read = OwnedFd::from(ours);
    let write = read.try_clone().unwrap();
    let t = StreamTransport::from_fds(read, write, StreamConfig::default()).unwrap();
    assert_eq!(t.name(), "uds");
    thread::sleep(Duration::from_millis(50)); // let the reader block
    let t2 = Arc::clone(&t);
    within(Duration::from_secs(1), move || t2.close());
    assert_eq!(next(&t).unwrap_err(), TransportError::Closed);
    assert_eq!(
        t.send(Opcode::Hangup, 0, 0, &[]).unwrap_err(),
        TransportError::Closed
    );
    // The peer sees the end of the stream.
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(peer.read(&mut buf).unwrap(), 0);
}

#[test]
fn close_unblocks_reader_on_silent_pipe() {
    let (our_read, peer_write) = raw_pipe();
    let (peer_read, our_write) = raw_pipe();
    let t = StreamTransport::from_fds(our_read, our_write, StreamConfig::default()).unwrap();
    thread::sleep(Duration::from_millis(50));
    let t2 = Arc::clone(&t);
    within(Duration::from_secs(1), move || t2.close());
    assert_eq!(next(&t).unwrap_err(), TransportError::Closed);
    // Our write end is closed: the peer reads end of stream.
    let mut peer_read = std::fs::File::from(peer_read);
    let mut buf = [0u8; 1];
    assert_eq!(peer_read.read(&mut buf).unwrap(), 0);
    drop(peer_write);
}

#[test]
fn close_is_idempotent_and_concurrent() {
    for (a, b) in all_pairs(StreamConfig::default()) {
        let closers: Vec<_> = (0..4)
            .map(|_| {
                let a = Arc::clone(&a);
                thread::spawn(move || a.close())
            })
            .collect();
        for c in closers {
            c.join().unwrap();
        }
        a.close();
        assert_eq!(next(&a).unwrap_err(), TransportError::Closed);
        // The other side sees a clean hang-up.
        assert_eq!(next(&b).unwrap_err(), TransportError::PeerHungUp);
        drop(b);
    }
}

#[test]
fn recv_deadline_is_honoured() {
    let (a, _b) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
    let start = Instant::now();
    let r = a.recv(Some(start + Duration::from_millis(100))).unwrap();
    let took = start.elapsed();
    assert!(matches!(r, Received::TimedOut), "{r:?}");
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A deadline already past does not wait.
    let start = Instant::now();
    assert!(matches!(a.recv(Some(start)).unwrap(), Received::TimedOut));
    assert!(start.elapsed() < Duration::from_millis(500));
}

#[test]
fn interrupt_before_recv_is_sticky_until_consumed_once() {
    let (a, b) = StreamTransport::pipe_pair(StreamConfig::default()).unwrap();
    a.interrupt_recv();
    a.interrupt_recv();
    let soon = || Some(Instant::now() + Duration::from_millis(30));
    assert!(matches!(a.recv(soon()).unwrap(), Received::Interrupted));
    assert!(matches!(a.recv(soon()).unwrap(), Received::TimedOut));
    // An interrupt comes before an already queued message, which follows.
    b.send(Opcode::Result, 1, 0, b"x").unwrap();
    thread::sleep(Duration::from_millis(50));
    a.interrupt_recv();
    assert!(matches!(a.recv(soon()).unwrap(), Received::Interrupted));
    assert_eq!(next(&a).unwrap().seq, 1);
}

#[test]
fn interrupt_during_recv() {
    let (a, _b) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
    let a2 = Arc::clone(&a);
    let interrupter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        a2.interrupt_recv();
    });
    let start = Instant::now();
    let r = a.recv(Some(start + LIMIT)).unwrap();
    interrupter.join().unwrap();
    assert!(matches!(r, Received::Interrupted), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        a.recv(Some(Instant::now() + Duration::from_millis(30)))
            .unwrap(),
        Received::TimedOut
    ));
}

/// Sends 16 KiB messages until one fails; reports how many went out and
/// the error.
fn flood(
    t: Arc<StreamTransport>,
) -> (
    thread::JoinHandle<()>,
    mpsc::Receiver<(usize, TransportError)>,
) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let payload = vec![0x5A; 16 * 1024];
        let mut sent = 0;
        loop {
            if let Err(e) = t.send(Opcode::CallWrapper, sent as u64, 0, &payload) {
                let _ = tx.send((sent, e));
                return;
            }
            sent += 1;
        }
    });
    (handle, rx)
}

fn close_unblocks_flood(t: Arc<StreamTransport>) {
    let (handle, rx) = flood(Arc::clone(&t));
    // The flood must block: nobody drains the other end.
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "send did not block"
    );
    let start = Instant::now();
    // On a thread, so that a close stuck behind the blocked send fails the
    // test instead of hanging it.
    let closer = Arc::clone(&t);
    within(Duration::from_secs(1), move || closer.close());
    let (sent, err) = rx
        .recv_timeout(Duration::from_secs(1))
        .expect("blocked send did not return within 1 s of close");
    handle.join().unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(sent > 0);
    assert_eq!(err, TransportError::Closed);
}

#[test]
fn close_unblocks_send_on_full_pipe() {
    let (peer_read, our_write) = raw_pipe();
    let (our_read, peer_write) = raw_pipe();
    let t = StreamTransport::from_fds(our_read, our_write, StreamConfig::default()).unwrap();
    close_unblocks_flood(t);
    drop((peer_read, peer_write));
}

#[test]
fn backpressure_blocks_sender_and_close_unblocks_it() {
    // Nothing reads the stream unless `recv` is called: nobody calls it on
    // b, so the pipe fills and the sender blocks.
    let (a, b) = StreamTransport::pipe_pair(StreamConfig::default()).unwrap();
    close_unblocks_flood(a);
    // What a wrote before the close is still there, in order.
    assert_eq!(next(&b).unwrap().seq, 0);
    assert_eq!(next(&b).unwrap().seq, 1);
    b.close();
}

#[test]
fn backpressure_resumes_when_drained() {
    let (a, b) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
    const N: u64 = 2000;
    let sender = thread::spawn({
        let a = Arc::clone(&a);
        move || {
            for i in 0..N {
                a.send(Opcode::Result, i, 0, &vec![i as u8; 8192]).unwrap();
            }
        }
    });
    for i in 0..N {
        let m = next(&b).unwrap();
        assert_eq!(m.seq, i);
        assert_eq!(m.payload.as_slice(), &vec![i as u8; 8192][..]);
    }
    sender.join().unwrap();
}

#[test]
fn eof_after_queued_messages_is_peer_hung_up() {
    for (a, b) in all_pairs(StreamConfig::default()) {
        for i in 0..3 {
            a.send(Opcode::CallWrapper, i, 0, &pattern(100, i as u8))
                .unwrap();
        }
        a.close();
        for i in 0..3 {
            assert_eq!(next(&b).unwrap().seq, i, "{}", b.name());
        }
        assert_eq!(next(&b).unwrap_err(), TransportError::PeerHungUp);
        assert_eq!(next(&b).unwrap_err(), TransportError::PeerHungUp);
        // The peer went first, so its error wins over our close.
        b.close();
        assert_eq!(next(&b).unwrap_err(), TransportError::PeerHungUp);
        assert_eq!(
            b.send(Opcode::Hangup, 0, 0, &[]).unwrap_err(),
            TransportError::PeerHungUp
        );
    }
}

#[test]
fn drop_alone_closes_and_joins() {
    let (a, b) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
    within(Duration::from_secs(1), move || drop(a));
    assert_eq!(next(&b).unwrap_err(), TransportError::PeerHungUp);
}

#[test]
fn send_to_vanished_peer_is_peer_hung_up() {
    for (a, b) in all_pairs(StreamConfig::default()) {
        drop(b);
        let err = (0..1000)
            .find_map(|_| a.send(Opcode::Result, 0, 0, &[1; 1024]).err())
            .expect("sends to a closed peer kept succeeding");
        assert_eq!(err, TransportError::PeerHungUp, "{}", a.name());
    }
}

#[test]
fn oversized_send_is_refused_before_writing() {
    let config = StreamConfig {
        max_message_size: 1024,
    };
    for (a, b) in all_pairs(config) {
        assert_eq!(
            a.send(Opcode::CallWrapper, 1, 0, &[0; 1025]).unwrap_err(),
            TransportError::TooLarge {
                size: 1025,
                limit: 1024
            }
        );
        a.send(Opcode::CallWrapper, 2, 0, &[7; 1024]).unwrap();
        let m = next(&b).unwrap();
        assert_eq!((m.seq, m.payload.len()), (2, 1024));
    }
}
