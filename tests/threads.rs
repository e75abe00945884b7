//! When `disconnect()` returns and no handler is running, none of the
//! connection's worker threads (`orcwire-rx`) is left: each has exited
//! and dropped its hold on the connection.
//!
//! Threads are counted process-wide (`/proc/self/task`), so this binary
//! holds only this test.

use std::sync::Arc;
use std::time::Duration;

use orcwire::{ControllerBuilder, ExecutorBuilder, Transport, WrapperFunctionBuffer};
use orcwire_shm::{required_size, HeapMapping, SharedMapping, ShmConfig, ShmTransport};

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
    let config = ShmConfig::default();
    let mapping: Arc<dyn SharedMapping> =
        Arc::new(HeapMapping::new(required_size(&config)).unwrap());
    let c: Arc<dyn Transport> =
        Arc::new(ShmTransport::create(Arc::clone(&mapping), config).unwrap());
    let e: Arc<dyn Transport> = Arc::new(ShmTransport::attach(mapping, config).unwrap());
    let executor = ExecutorBuilder::new()
        .function("slow_echo", |args, r| {
            // Long enough that several calls overlap and more workers start.
            std::thread::sleep(Duration::from_millis(5));
            r.respond(args)
        })
        .controller_handler("echo")
        .connect(e)
        .unwrap();
    let controller = ControllerBuilder::new()
        .sync_handler("echo", WrapperFunctionBuffer::from_slice)
        .connect(c)
        .unwrap();
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
        threads_named("orcwire-rx"),
        0,
        "worker threads outlived disconnect()"
    );
}
