//! Two real processes over the stream transport: this test binary spawns
//! itself as the executor, with one end of a Unix socket pair at fd 3.

mod common;

use orcwire_sync::{AtomicUsize, Ordering};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{spawn_child, wait_child, CHILD_ENV};
use orcwire::StreamConfig;
use orcwire::{
    CallError, ControllerBuilder, ExecutorBuilder, StreamTransport, WrapperFunctionBuffer,
};

const LIMIT: Duration = Duration::from_secs(30);

fn reverse(a: &[u8]) -> WrapperFunctionBuffer {
    WrapperFunctionBuffer::from_vec(a.iter().rev().copied().collect())
}

/// The executor role. Runs only in the child.
#[test]
fn child_executor_entry() {
    if std::env::var(CHILD_ENV).as_deref() != Ok("stream-executor") {
        return;
    }
    // SAFETY: the parent placed one end of a socket pair at fd 3 for us and
    // nothing else in this process owns fd 3.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let transport =
        StreamTransport::from_unix(UnixStream::from(fd), StreamConfig::default()).unwrap();
    let ep = ExecutorBuilder::new()
        .sync_function("reverse", |a: &[u8]| reverse(a))
        .sync_function("pid", |_a: &[u8]| {
            WrapperFunctionBuffer::from_slice(&std::process::id().to_le_bytes())
        })
        .controller_handler("square")
        .connect(transport)
        .unwrap();
    // Executor -> controller calls from this process.
    let square = ep.handler_tag("square").unwrap();
    for i in 0..100u32 {
        let out = ep.call_sync(square, &i.to_le_bytes()).unwrap();
        assert_eq!(out.as_slice(), &(i * i).to_le_bytes());
    }
    // Serve until the controller hangs up.
    let deadline = Instant::now() + LIMIT;
    while !ep.is_disconnected() {
        assert!(Instant::now() < deadline, "controller never hung up");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        ep.call_sync(square, b"").unwrap_err(),
        CallError::Disconnected
    );
}

#[test]
fn calls_both_ways_between_two_processes() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let theirs = OwnedFd::from(theirs);
    let mut child = spawn_child("child_executor_entry", "stream-executor", &theirs, &[]);
    drop(theirs);
    let squares = Arc::new(AtomicUsize::new(0));
    let sq = Arc::clone(&squares);
    let transport = StreamTransport::from_unix(ours, StreamConfig::default()).unwrap();
    let ctl = ControllerBuilder::new()
        .sync_handler("square", move |a: &[u8]| {
            sq.fetch_add(1, Ordering::SeqCst);
            let v = u32::from_le_bytes(a.try_into().unwrap_or([0; 4]));
            WrapperFunctionBuffer::from_slice(&(v * v).to_le_bytes())
        })
        .connect(transport)
        .unwrap();
    let pid = ctl
        .call_sync(ctl.function_tag("pid").unwrap(), b"")
        .unwrap();
    assert_eq!(pid.as_slice(), &child.id().to_le_bytes());
    let rev = ctl.function_tag("reverse").unwrap();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let ctl = ctl.clone();
            std::thread::spawn(move || {
                for i in 0..250u32 {
                    let args: Vec<u8> = (0..(i % 64) as u8).map(|b| b ^ t).collect();
                    let out = ctl.call_sync(rev, &args).unwrap();
                    assert_eq!(out, reverse(&args));
                }
            })
        })
        .collect();
    for t in threads {
        common::join_bounded(t, LIMIT);
    }
    let deadline = Instant::now() + LIMIT;
    while squares.load(Ordering::SeqCst) < 100 {
        assert!(Instant::now() < deadline, "child's calls never arrived");
        std::thread::sleep(Duration::from_millis(2));
    }
    ctl.disconnect();
    let status = wait_child(&mut child, LIMIT);
    assert!(status.success(), "child failed: {status:?}");
}
