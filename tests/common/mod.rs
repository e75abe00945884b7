//! Helpers shared by the integration tests: bounded joins, a tiny
//! `block_on`, and a way to run this test binary again as a child process.
#![allow(dead_code)]

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

/// Runs `f` on a thread and waits for it at most `limit`.
pub fn run_bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            h.join().expect("bounded thread panicked");
            v
        }
        Err(_) => panic!("operation did not finish within {limit:?}"),
    }
}

/// Joins `h`, failing the test if it takes longer than `limit`.
pub fn join_bounded<T: Send + 'static>(h: thread::JoinHandle<T>, limit: Duration) -> T {
    let deadline = Instant::now() + limit;
    while !h.is_finished() {
        assert!(
            Instant::now() < deadline,
            "thread did not finish within {limit:?}"
        );
        thread::sleep(Duration::from_millis(1));
    }
    h.join().expect("thread panicked")
}

struct ThreadWaker(thread::Thread);
impl Wake for ThreadWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` to completion on this thread, failing after `limit`.
pub fn block_on<F: Future>(fut: F, limit: Duration) -> F::Output {
    let waker = Waker::from(std::sync::Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + limit;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        let now = Instant::now();
        assert!(now < deadline, "future did not complete within {limit:?}");
        thread::park_timeout(deadline - now);
    }
}

/// Environment variable naming the child role.
pub const CHILD_ENV: &str = "ORCWIRE_TEST_CHILD";

/// Re-runs the current test binary as a child that executes only the test
/// `entry` (which must check `CHILD_ENV`), with `fd` placed at fd 3.
pub fn spawn_child(entry: &str, role: &str, fd: &OwnedFd, extra_env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args([entry, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, role)
        .stdin(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    // SAFETY: the closure runs in the forked child before exec and calls
    // only dup2, which is async-signal-safe; it touches no Rust state.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn child test process")
}

/// Waits for `child` at most `limit`, killing it if it overstays.
pub fn wait_child(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child process did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Both ends of a shared-memory connection inside this process, over a
/// heap-backed segment (the same ring code as a memfd): `(controller,
/// executor)`.
pub fn shm_pair(
    config: orcwire_shm::ShmConfig,
) -> (
    std::sync::Arc<dyn orcwire::Transport>,
    std::sync::Arc<dyn orcwire::Transport>,
) {
    use orcwire_shm::{required_size, HeapMapping, SharedMapping, ShmTransport};
    use std::sync::Arc;
    let mapping: Arc<dyn SharedMapping> =
        Arc::new(HeapMapping::new(required_size(&config)).unwrap());
    let c = ShmTransport::create(Arc::clone(&mapping), config).unwrap();
    let e = ShmTransport::attach(mapping, config).unwrap();
    (Arc::new(c), Arc::new(e))
}

/// Makes the dispatcher an endpoint uses (`None`: the connection's own
/// workers).
pub type MakeDispatcher = Option<fn() -> std::sync::Arc<dyn orcwire::TaskDispatcher>>;

/// Every way to run handlers, by name: the connection's workers, an
/// inline dispatcher, and a pool of two threads.
pub fn dispatchers() -> [(&'static str, MakeDispatcher); 3] {
    use orcwire::{InlineTaskDispatcher, ThreadPoolTaskDispatcher};
    [
        ("workers", None),
        (
            "inline",
            Some(|| std::sync::Arc::new(InlineTaskDispatcher::new())),
        ),
        (
            "pool of 2",
            Some(|| std::sync::Arc::new(ThreadPoolTaskDispatcher::new(2).unwrap())),
        ),
    ]
}

/// Connects `executor` on `e` and then `controller` on `c` (the executor's
/// `Setup` goes out first), both running handlers on `dispatcher`.
/// Returns `(controller, executor)`.
pub fn connect_pair(
    (c, e): (
        std::sync::Arc<dyn orcwire::Transport>,
        std::sync::Arc<dyn orcwire::Transport>,
    ),
    mut executor: orcwire::ExecutorBuilder,
    mut controller: orcwire::ControllerBuilder,
    dispatcher: MakeDispatcher,
) -> (orcwire::Endpoint, orcwire::Endpoint) {
    if let Some(make) = dispatcher {
        executor = executor.dispatcher(make());
        controller = controller.dispatcher(make());
    }
    let executor = executor.connect(e).unwrap();
    let controller = controller.connect(c).unwrap();
    (controller, executor)
}

/// A handler that never answers while the test runs: it keeps the
/// responder alive (so the call stays pending, without the "dropped
/// without an answer" error) for `limit`, on a thread of its own.
pub fn never_answer(responder: orcwire::Responder, limit: Duration) {
    thread::spawn(move || {
        thread::sleep(limit);
        drop(responder);
    });
}

/// The names in `/dev/shm` that orcwire could have made (`orcwire*`), for
/// tests that check nothing is left behind.
pub fn shm_entries() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("orcwire"))
                .collect()
        })
        .unwrap_or_default()
}
