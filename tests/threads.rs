//! When `disconnect()` returns and no handler is running, none of the
//! connection's worker threads (`orcwire-rx`) is left: each has exited
//! and dropped its hold on the connection.
//!
//! Threads are counted process-wide (`/proc/self/task`), so this binary
//! holds only this test.

mod common;

use std::time::{Duration, Instant};

use orcwire::{ControllerBuilder, ExecutorBuilder, WrapperFunctionBuffer};
use orcwire_shm::ShmConfig;

/// Threads of this process named `name` once those that have just exited
/// are gone: a joined thread can still be listed in `/proc/self/task` for
/// a moment (the kernel wakes `pthread_join` when the thread's memory is
/// released, before it unlists the thread, and on a loaded machine the
/// exiting thread can be preempted in between). Looks again for up to
/// 100 ms while the count is above `expected`; a worker that is really
/// alive stays listed far longer (those of this test wait or run
/// handlers of 5 ms and more).
fn threads_settled(name: &str, expected: usize) -> usize {
    let until = Instant::now() + Duration::from_millis(100);
    loop {
        let n = threads_named(name);
        if n <= expected || Instant::now() >= until {
            return n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Threads of this process named `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .map(|c| c.trim_end() == name)
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn no_worker_thread_outlives_disconnect() {
    let (controller, executor) = common::connect_pair(
        common::shm_pair(ShmConfig::default()),
        ExecutorBuilder::new()
            .function("slow_echo", |args, r| {
                // Long enough that the standby takes the lead and runs
                // calls too: both workers are in handlers at times.
                std::thread::sleep(Duration::from_millis(5));
                r.respond(args)
            })
            .controller_handler("echo"),
        ControllerBuilder::new().sync_handler("echo", WrapperFunctionBuffer::from_slice),
        None,
    );
    let tag = controller.function_tag("slow_echo").unwrap();
    let back = executor.handler_tag("echo").unwrap();
    let calls: Vec<_> = (0..20u8)
        .map(|i| controller.call(tag, &[i]).unwrap())
        .collect();
    for (i, mut call) in calls.into_iter().enumerate() {
        let got = call.wait_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(got.as_slice(), &[i as u8]);
    }
    assert_eq!(executor.call_sync(back, b"x").unwrap().as_slice(), b"x");
    assert!(
        threads_named("orcwire-rx") >= 2,
        "the connection had no workers to stop"
    );

    controller.disconnect();
    executor.disconnect();
    assert_eq!(
        threads_settled("orcwire-rx", 0),
        0,
        "worker threads outlived disconnect()"
    );

    // A handler that has answered is still in its handler while it
    // returns, and its caller may disconnect at once: disconnect waits a
    // little for it (its thread must not outlive the disconnect either),
    // but not for a handler that runs on.
    for (after_answer, outlives) in [
        (Duration::from_millis(10), false),
        (Duration::from_millis(600), true),
    ] {
        let (controller, executor) = common::connect_pair(
            common::shm_pair(ShmConfig::default()),
            ExecutorBuilder::new().function("answer_then_linger", move |args, r| {
                r.respond(args);
                std::thread::sleep(after_answer);
            }),
            ControllerBuilder::new(),
            None,
        );
        let tag = controller.function_tag("answer_then_linger").unwrap();
        let mut call = controller.call(tag, b"y").unwrap();
        assert_eq!(
            call.wait_timeout(Duration::from_secs(20))
                .unwrap()
                .as_slice(),
            b"y"
        );
        let start = Instant::now();
        controller.disconnect();
        executor.disconnect();
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "disconnect waited {took:?} for a handler that runs on"
        );
        let left = threads_settled("orcwire-rx", usize::from(outlives));
        if outlives {
            assert_eq!(left, 1, "the lingering handler's worker");
            // It leaves on its own once its handler returns.
            let until = Instant::now() + Duration::from_secs(20);
            while threads_named("orcwire-rx") > 0 {
                assert!(Instant::now() < until, "the lingering worker never left");
                std::thread::sleep(Duration::from_millis(10));
            }
        } else {
            assert_eq!(left, 0, "a worker that had answered outlived disconnect()");
        }
    }
}
