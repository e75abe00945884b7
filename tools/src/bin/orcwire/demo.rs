//! `orcwire demo`: spawn this binary as the executor and call both ways.

use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use orcwire::handles::HandleId;
use orcwire::{ControllerBuilder, Endpoint, HandlerTag, WrapperFunctionBuffer};
use orcwire_shm::ExecutorCommand;
use orcwire_tools::bench::{pattern, percentile};

use crate::common::{sum_reply, DemoArgs};
use crate::executor::CALL_REPLY_LEN;

type DemoResult<T> = Result<T, String>;

pub fn run(opts: &DemoArgs) -> ExitCode {
    match demo(opts) {
        Ok(()) => {
            println!("demo: every result checked; OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("orcwire demo failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn tag(ep: &Endpoint, name: &str) -> DemoResult<HandlerTag> {
    ep.function_tag(name)
        .ok_or_else(|| format!("the executor did not publish {name}"))
}

fn summary(label: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    println!(
        "  {label:<34} n={:<6} p50={:>7.2} µs  p99={:>7.2} µs  p99.9={:>7.2} µs",
        samples.len(),
        percentile(samples, 50.0).as_secs_f64() * 1e6,
        percentile(samples, 99.0).as_secs_f64() * 1e6,
        percentile(samples, 99.9).as_secs_f64() * 1e6,
    );
}

fn demo(opts: &DemoArgs) -> DemoResult<()> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut cmd = Command::new(exe);
    let conn = &opts.connection;
    cmd.args([
        "executor",
        "--wait",
        conn.wait.name(),
        "--dispatch",
        conn.dispatch.name(),
    ]);
    let config = conn.shm_config();
    println!(
        "orcwire demo: shared memory, rings of {} KiB each way, wait preset `{}`, {} dispatch",
        config.ring_capacity.get() >> 10,
        conn.wait.name(),
        conn.dispatch.name()
    );
    let spawned = ExecutorCommand::new(cmd)
        .config(config)
        .spawn()
        .map_err(|e| format!("spawning the executor: {e}"))?;
    println!("  spawned executor pid {}", spawned.process.id());
    let mut builder = ControllerBuilder::new();
    if let Some(d) = conn.dispatcher() {
        builder = builder.dispatcher(d);
    }
    let controller = builder
        .sync_handler("ctl_echo", WrapperFunctionBuffer::from_slice)
        .sync_handler("log", |msg: &[u8]| {
            println!("  [executor says] {}", String::from_utf8_lossy(msg));
            WrapperFunctionBuffer::new()
        })
        .connect(spawned.transport.clone())
        .map_err(|e| format!("connecting: {e}"))?;
    let names: Vec<&str> = controller
        .setup_info()
        .functions(controller.dialect())
        .map(|(n, _)| n)
        .collect();
    println!("  executor publishes: {}", names.join(", "));

    let result = calls(&controller, opts);
    if result.is_ok() && opts.hold_ms > 0 {
        println!(
            "  holding the connection idle for {} ms (controller pid {}, executor pid {}; \
             a line on stdin ends it early)",
            opts.hold_ms,
            std::process::id(),
            spawned.process.id()
        );
        hold(Duration::from_millis(opts.hold_ms));
    }
    controller.disconnect();
    let status = spawned
        .process
        .wait_timeout(Duration::from_secs(10))
        .map_err(|e| format!("waiting for the executor: {e}"))?;
    match status {
        Some(s) => println!("  disconnected; executor exited: {s}"),
        None => return Err("the executor did not exit within 10 s of disconnect".into()),
    }
    result?;
    if status.is_some_and(|s| !s.success()) {
        return Err("the executor exited with an error".into());
    }
    Ok(())
}

/// Keeps the connection idle for `time`, or until a line arrives on stdin.
/// End of input does not end it, so a demo run without stdin holds the
/// whole time.
fn hold(time: Duration) {
    let (tx, rx) = mpsc::channel();
    // Left blocked in `read_line` when the time runs out; the process exits
    // soon after.
    thread::spawn(move || {
        let mut line = String::new();
        if matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0) {
            let _ = tx.send(());
        }
    });
    let deadline = Instant::now() + time;
    if let Err(mpsc::RecvTimeoutError::Disconnected) = rx.recv_timeout(time) {
        thread::sleep(deadline.saturating_duration_since(Instant::now()));
    }
}

fn calls(controller: &Endpoint, opts: &DemoArgs) -> DemoResult<()> {
    let echo = tag(controller, "echo")?;
    let sum = tag(controller, "sum")?;
    let call_controller = tag(controller, "call_controller")?;

    println!("controller → executor, small calls:");
    for len in [0usize, 1, 7, 8, 9, 64, 4096] {
        let arg = pattern(len, len as u64);
        let got = controller
            .call_sync(echo, &arg)
            .map_err(|e| format!("echo of {len} B: {e}"))?;
        if got.as_slice() != arg.as_slice() {
            return Err(format!("echo of {len} B came back wrong"));
        }
    }
    println!("  echo of 0, 1, 7, 8, 9, 64, 4096 B: all correct");
    let mut samples = Vec::with_capacity(opts.calls);
    let arg = pattern(64, 1);
    for _ in 0..opts.calls {
        let t = Instant::now();
        let got = controller
            .call_sync(echo, &arg)
            .map_err(|e| format!("echo: {e}"))?;
        samples.push(t.elapsed());
        if got.as_slice() != arg.as_slice() {
            return Err("a 64 B echo came back wrong".into());
        }
    }
    summary("64 B echo round trip", &mut samples);

    let big = pattern(64 << 20, 64);
    let t = Instant::now();
    let got = controller
        .call_sync(sum, &big)
        .map_err(|e| format!("64 MiB sum: {e}"))?;
    let one_way = t.elapsed();
    if got.as_slice() != sum_reply(&big) {
        return Err("the 64 MiB sum is wrong".into());
    }
    let t = Instant::now();
    let got = controller
        .call_sync(echo, &big)
        .map_err(|e| format!("64 MiB echo: {e}"))?;
    let both_ways = t.elapsed();
    if got.as_slice() != big.as_slice() {
        return Err("the 64 MiB echo came back wrong".into());
    }
    println!(
        "  64 MiB argument (checksummed by the executor): {:.1} ms, {:.2} GiB/s",
        one_way.as_secs_f64() * 1e3,
        64.0 / 1024.0 / one_way.as_secs_f64()
    );
    println!(
        "  64 MiB echo (there and back):                   {:.1} ms",
        both_ways.as_secs_f64() * 1e3
    );
    drop(big);
    drop(got);

    let threads = 4;
    let per_thread = opts.calls.div_ceil(threads).max(1);
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let c = controller.clone();
            thread::spawn(move || -> DemoResult<Vec<Duration>> {
                let mut lat = Vec::with_capacity(per_thread);
                for j in 0..per_thread {
                    let arg = pattern(16 + (j % 48), (i * 1_000_000 + j) as u64);
                    let s = Instant::now();
                    let got = c
                        .call_sync(echo, &arg)
                        .map_err(|e| format!("thread {i} call {j}: {e}"))?;
                    lat.push(s.elapsed());
                    if got.as_slice() != arg.as_slice() {
                        return Err(format!("thread {i} call {j} got another call's result"));
                    }
                }
                Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| "a caller thread panicked".to_string())??,
        );
    }
    let elapsed = t.elapsed();
    println!(
        "  {threads} threads × {per_thread} calls, each checked: {:.0} calls/s",
        all.len() as f64 / elapsed.as_secs_f64()
    );
    summary("round trip under 4-thread load", &mut all);

    // Pipelined: one thread keeps a window of calls in flight.
    let window = 64;
    let total = opts.calls.max(window);
    let arg = pattern(64, 2);
    let t = Instant::now();
    let mut in_flight = std::collections::VecDeque::with_capacity(window);
    for i in 0..total {
        if in_flight.len() == window {
            let call: orcwire::PendingCall = in_flight.pop_front().ok_or("window underflow")?;
            let got = call.wait().map_err(|e| format!("pipelined call: {e}"))?;
            if got.as_slice() != arg.as_slice() {
                return Err(format!("pipelined call {i} came back wrong"));
            }
        }
        in_flight.push_back(
            controller
                .call(echo, &arg)
                .map_err(|e| format!("pipelined call: {e}"))?,
        );
    }
    for call in in_flight {
        let got = call.wait().map_err(|e| format!("pipelined call: {e}"))?;
        if got.as_slice() != arg.as_slice() {
            return Err("a pipelined call came back wrong".into());
        }
    }
    println!(
        "  pipelined, 1 thread, {window} calls in flight: {:.0} calls/s",
        total as f64 / t.elapsed().as_secs_f64()
    );

    lend_buffers(controller)?;

    println!("executor → controller:");
    let n = opts.calls as u64;
    let got = controller
        .call_sync(call_controller, &n.to_le_bytes())
        .map_err(|e| format!("call_controller: {e}"))?;
    let reply = got
        .into_result()
        .map_err(|e| format!("the executor's calls failed: {e}"))?;
    if reply.len() != CALL_REPLY_LEN {
        return Err(format!("call_controller replied {} bytes", reply.len()));
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&reply[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    if word(0) != n {
        return Err(format!("the executor made {} calls, not {n}", word(0)));
    }
    println!(
        "  {:<34} n={:<6} p50={:>7.2} µs  p99={:>7.2} µs  p99.9={:>7.2} µs",
        "64 B ctl_echo round trip",
        n,
        word(1) as f64 / 1e3,
        word(2) as f64 / 1e3,
        word(3) as f64 / 1e3
    );
    Ok(())
}

/// Remote handles: buffers allocated in the executor, lent to the
/// controller by handle, freed there when the controller drops them.
fn lend_buffers(controller: &Endpoint) -> DemoResult<()> {
    const BUFFERS: u64 = 8;
    const LEN: u64 = 1 << 20;
    let alloc = tag(controller, "buffer_alloc")?;
    let sum = tag(controller, "buffer_sum")?;
    let stats = tag(controller, "buffer_stats")?;
    let words = |out: WrapperFunctionBuffer, n: usize| -> DemoResult<Vec<u64>> {
        let bytes = out
            .into_result()
            .map_err(|e| format!("the executor failed: {e}"))?;
        if bytes.len() != 8 * n {
            return Err(format!("expected {n} u64s, got {} bytes", bytes.len()));
        }
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect())
    };
    let call = |t: HandlerTag, args: &[u8]| {
        controller
            .call_sync(t, args)
            .map_err(|e| format!("handle demo call: {e}"))
    };
    let print_tables = |when: &str| -> DemoResult<(u64, u64)> {
        let s = words(call(stats, &[])?, 2)?;
        println!(
            "  {when:<8} controller holds {} handles; executor holds {} buffers, has freed {} MiB",
            controller.handle_counts().imports,
            s[0],
            s[1] >> 20
        );
        Ok((s[0], s[1]))
    };
    println!(
        "remote handles: {BUFFERS} buffers of {} MiB allocated in the executor:",
        LEN >> 20
    );
    let (_, freed_before) = print_tables("before")?;
    let mut handles = Vec::new();
    for _ in 0..BUFFERS {
        let out = call(alloc, &LEN.to_le_bytes())?;
        let bytes = out
            .into_result()
            .map_err(|e| format!("buffer_alloc: {e}"))?;
        let id = HandleId::from_sps(&bytes).map_err(|e| e.to_string())?;
        handles.push(controller.import(id).map_err(|e| e.to_string())?);
    }
    let (held, _) = print_tables("lent")?;
    let expected: u64 = (0..LEN).map(|i| i % 251).sum();
    for h in &handles {
        let id = h.id().map_err(|e| e.to_string())?;
        if words(call(sum, &id.to_sps())?, 1)?[0] != expected {
            return Err(format!("buffer {id}: wrong sum"));
        }
    }
    println!("  the executor summed each buffer by handle: all correct");
    drop(handles);
    controller.flush_releases().map_err(|e| e.to_string())?;
    let (after, freed) = print_tables("released")?;
    if held != BUFFERS || after != 0 || freed - freed_before != BUFFERS * LEN {
        return Err(format!(
            "handle tables: {held} held, {after} left after release, {} bytes freed",
            freed - freed_before
        ));
    }
    Ok(())
}
