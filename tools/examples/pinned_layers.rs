//! Where a 64 B call's time goes, layer by layer, in one process with the
//! two sides pinned to different CPUs: the raw floor (one cache line handed
//! over each way), the layout alone (orcwire's frame format and checks in
//! a minimal ring: no lock, no wake-up protocol), the ring ends
//! (`RingProducer`/`RingConsumer`, spinning), the shared-memory
//! transport's `send_until`/`recv_into` (adding the end locks, the state
//! checks and the wake-up protocol), and the endpoint's `call_sync` /
//! pipelined `call` (the call engine on top). Each layer runs in turn
//! within every round, so the rounds see the same machine state; compare a
//! layer with the floor of the same round.
//!
//! ```text
//! cargo run --release -p orcwire-tools --example pinned_layers -- [CALLS] [ROUNDS] [MODE]
//! ```
//! A fourth argument `trace` (with `--features phase-trace`) prints, after
//! each round of `pipeline`, `batched` and the `engine-*` modes, where
//! each side's time went in nanoseconds a call: reading, working between
//! reading and sending, sending, waiting (`orcwire_shm::trace`).
//!
//! MODE runs one loop alone (for a profile of it): `transport` (the round
//! trips of the floor, the layout alone, the ring ends and the transport,
//! with the transport's mean), `one-thread`, `round-trip` (the floor, then
//! the endpoint's `call_sync`), `pipeline`,
//! `batched` (the transport in batches), or one
//! of the two that put the engine on one side only, the other side being
//! the transport alone in batches: `engine-executor` (a raw controller
//! against an executor `Endpoint`) and `engine-controller` (a `Pipeline`
//! against a raw executor). They tell which side's engine sets the pace.
//! "In batches" is the transport alone used as an engine would at best:
//! 64 calls in flight sent 16 to a batch, the peer echoing each batch it
//! reads with one `send_batch`, no engine at all: the ceiling of pipelined
//! calls over this transport on this machine (`drive_in_batches` and
//! `echo_in_batches` of `orcwire_tools::bench`, which `orcwire bench`
//! runs across two processes as `shm-raw`).
//! Every reply is checked against its argument.
//!
//! With `ORCWIRE_SPIN_FOREVER` set, every wait spins (never sleeps) and
//! `round-trip` skips the floor: for callgrind, which runs one thread at a
//! time (`tools/callgrind-per-call.sh round-trip`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orcwire::transport::{Arrival, Received, Transport};
use orcwire::{Opcode, WrapperFunctionBuffer};
use orcwire_shm::{
    required_size, HeapMapping, SharedMapping, ShmConfig, ShmTransport, WaitStrategy,
};
use orcwire_tools::bench::{
    drive_in_batches, echo_in_batches, percentile, pin_current_thread, PinnedEchoPair, Pinning,
};

/// Calls kept in flight by the pipelined loops.
const WINDOW: u64 = 64;
/// The argument's size.
const BYTES: usize = 64;

/// How long the raw layers (`minimal_ring`, `ring_ends`) wait for a frame
/// before they call the run failed.
const STUCK: Duration = Duration::from_secs(1);

/// One word on a line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Line(AtomicU64);

fn main() -> Result<(), String> {
    let arg = |i: usize, default: u64| -> Result<u64, String> {
        std::env::args().nth(i).map_or(Ok(default), |s| {
            s.parse().map_err(|e| format!("argument {i}: {e}"))
        })
    };
    let calls = arg(1, 100_000)?;
    let rounds = arg(2, 3)?;
    let only = std::env::args().nth(3);
    let all = only.is_none();
    // A fourth argument `trace` prints each round's phase trace (see
    // `trace_round`).
    let traced = std::env::args().nth(4).as_deref() == Some("trace");
    // Under callgrind (`tools/callgrind-per-call.sh`), which runs one
    // thread at a time, a wait must not go to sleep: `ORCWIRE_SPIN_FOREVER`
    // makes every wait spin (for ten seconds), so the instructions counted
    // are those of the spinning path a round trip takes on real CPUs.
    let spin_forever = std::env::var_os("ORCWIRE_SPIN_FOREVER").is_some();
    let wait = if spin_forever {
        WaitStrategy::spin_for(Duration::from_secs(10))
    } else {
        WaitStrategy::lowest_latency()
    };
    let config = ShmConfig {
        wait,
        ..ShmConfig::default()
    };
    if only.as_deref() == Some("one-thread") {
        for round in 1..=rounds {
            let code = one_thread(config, calls)?;
            println!(
                "round {round}: transport on one thread {code:.0} ns a call (2 sends, 2 receives)"
            );
        }
        return Ok(());
    }
    let cpus = Pinning::choose().ok_or("needs two CPUs")?;
    let pair = PinnedEchoPair::connect(config)?;
    if only.as_deref() == Some("pipeline") {
        for round in 1..=rounds {
            trace_round(traced, false)?;
            let pp = endpoint_pipeline(&pair, calls)?;
            println!("round {round}: Pipeline 1 thread x {WINDOW}: {pp:.2} M/s");
            trace_round(traced, true)?;
        }
        pair.disconnect();
        return Ok(());
    }
    if let Some(mode @ ("engine-executor" | "engine-controller")) = only.as_deref() {
        for round in 1..=rounds {
            trace_round(traced, false)?;
            let rate = if mode == "engine-executor" {
                raw_controller_engine_executor(config, cpus, calls)?
            } else {
                pipeline_against_raw_executor(config, cpus, calls)?
            };
            println!("round {round}: {mode} 1 thread x {WINDOW}: {rate:.2} M/s");
            trace_round(traced, true)?;
        }
        pair.disconnect();
        return Ok(());
    }
    if only.as_deref() == Some("round-trip") {
        for round in 1..=rounds {
            trace_round(traced, false)?;
            // The floor first: which of this VM's placements the round ran
            // in (not under callgrind: see `ORCWIRE_SPIN_FOREVER`).
            let f = if spin_forever {
                f64::NAN
            } else {
                floor(cpus, false, calls)?
            };
            let start = Instant::now();
            let e = endpoint_round_trips(&pair, calls)?;
            // The mean, for comparing builds: the p50 moves in steps of
            // the clock's resolution. It includes the loop's own work.
            let mean = start.elapsed().as_nanos() as f64 / calls as f64;
            println!(
                "round {round}: floor p50 {f:.0} ns; endpoint round trip p50 {e:.0} ns, mean {mean:.1} ns"
            );
            trace_round(traced, true)?;
        }
        pair.disconnect();
        return Ok(());
    }
    if only.as_deref() == Some("batched") {
        let (t, peer) = batched_pair(config, cpus)?;
        for round in 1..=rounds {
            trace_round(traced, false)?;
            let tb = transport_batched(&t, calls)?;
            println!("round {round}: transport in batches 1 thread x {WINDOW}: {tb:.2} M/s");
            trace_round(traced, true)?;
        }
        hang_up(&t, peer, "batched")?;
        pair.disconnect();
        return Ok(());
    }
    let (transport, transport_peer) = transport_pair(config, cpus)?;
    if only.as_deref() == Some("transport") {
        for round in 1..=rounds {
            let f = floor(cpus, false, calls)?;
            let mr = minimal_ring(cpus, calls)?;
            let re = ring_ends(cpus, calls)?;
            let start = Instant::now();
            let t = transport_round_trips(&transport, calls)?;
            let mean = start.elapsed().as_nanos() as f64 / calls as f64;
            let ce = controller_engine_round_trips(config, cpus, calls)?;
            let e = endpoint_round_trips(&pair, calls)?;
            println!(
                "round {round}: round trip p50: floor {f:.0} ns, layout alone {mr:.0} ns, \
                 ring ends {re:.0} ns, transport {t:.0} ns (mean {mean:.1} ns), \
                 controller engine {ce:.0} ns, endpoint {e:.0} ns"
            );
        }
        hang_up(&transport, transport_peer, "transport")?;
        pair.disconnect();
        return Ok(());
    }
    let (batched, batched_peer) = batched_pair(config, cpus)?;
    println!(
        "controller on CPU {}, executor on CPU {}, {calls} calls of {BYTES} B per layer and round",
        cpus.controller, cpus.child
    );
    for round in 1..=rounds {
        let f = floor(cpus, false, calls)?;
        let f2 = floor(cpus, true, calls)?;
        let mr = minimal_ring(cpus, calls)?;
        let re = ring_ends(cpus, calls)?;
        let t = transport_round_trips(&transport, calls)?;
        let e = if all {
            endpoint_round_trips(&pair, calls)?
        } else {
            f64::NAN
        };
        let tp = transport_pipelined(&transport, calls)?;
        let tb = transport_batched(&batched, calls)?;
        let (ep, pp) = if all {
            (
                endpoint_pipelined(&pair, calls)?,
                endpoint_pipeline(&pair, calls)?,
            )
        } else {
            (f64::NAN, f64::NAN)
        };
        // The transport's code alone: both ends on this thread, no cache
        // line crossing a core.
        let code = one_thread(config, calls)?;
        println!(
            "round {round}: round trip p50: floor {f:.0} ns (two lines each way {f2:.0} ns), \
             layout alone {mr:.0} ns, ring ends {re:.0} ns, \
             transport {t:.0} ns ({:.2}x), endpoint {e:.0} ns ({:.2}x); \
             pipelined 1 thread x {WINDOW}: transport {tp:.2} M/s (in batches {tb:.2} M/s), \
             endpoint {ep:.2} M/s, Pipeline {pp:.2} M/s; \
             transport on one thread {code:.0} ns a call (2 sends, 2 receives)",
            t / f,
            e / f,
        );
    }
    hang_up(&transport, transport_peer, "transport")?;
    hang_up(&batched, batched_peer, "batched")?;
    pair.disconnect();
    Ok(())
}

/// Ends one of the echo peers (`transport_pair`, `batched_pair`): sends
/// it `Hangup` and waits for its thread, which returns once it reads it.
fn hang_up(
    t: &ShmTransport,
    peer: std::thread::JoinHandle<Result<(), String>>,
    which: &str,
) -> Result<(), String> {
    t.send_until(Opcode::Hangup, 0, 0, &[], None, &|| {})
        .map_err(|e| e.to_string())?;
    peer.join()
        .map_err(|_| format!("the {which} peer panicked"))?
}

/// The raw floor: `ping` written by the caller, `pong` by a spinning peer
/// thread on the other CPU. With `two_lines`, each side also writes a word
/// on a second line before its flag (`req`, `resp`), which the other reads
/// after seeing the flag: the shape of a ring whose consumer polls an index
/// and then reads the frame (two lines cross each way, the second fetched
/// only once the first arrived).
struct Floor {
    lines: Arc<[Line; 4]>,
    two_lines: bool,
    peer: std::thread::JoinHandle<()>,
}

impl Floor {
    fn start(cpus: Pinning, two_lines: bool) -> Self {
        let lines: Arc<[Line; 4]> = Arc::new(Default::default());
        let peer_lines = Arc::clone(&lines);
        let peer = std::thread::spawn(move || {
            // Unpinned if pinning fails: the numbers then say so.
            let _ = pin_current_thread(cpus.child);
            let [ping, pong, req, resp] = &*peer_lines;
            loop {
                let n = ping.0.load(Ordering::Acquire);
                if n == u64::MAX {
                    return;
                }
                if n != pong.0.load(Ordering::Relaxed) {
                    if two_lines {
                        resp.0
                            .store(req.0.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    pong.0.store(n, Ordering::Release);
                }
                std::hint::spin_loop();
            }
        });
        Self {
            lines,
            two_lines,
            peer,
        }
    }

    /// p50 of `calls` round trips, in nanoseconds.
    fn round_trips(&self, calls: u64) -> Result<f64, String> {
        let [ping, pong, req, resp] = &*self.lines;
        let mut times = Vec::with_capacity(calls as usize);
        let mut n = ping.0.load(Ordering::Relaxed);
        for _ in 0..calls {
            n += 1;
            let start = Instant::now();
            if self.two_lines {
                req.0.store(n, Ordering::Relaxed);
            }
            ping.0.store(n, Ordering::Release);
            while pong.0.load(Ordering::Acquire) != n {
                std::hint::spin_loop();
            }
            if self.two_lines && resp.0.load(Ordering::Relaxed) != n {
                return Err(format!("floor round {n}: the second line was not answered"));
            }
            times.push(start.elapsed());
        }
        Ok(p50_ns(&mut times))
    }

    fn stop(self) -> Result<(), String> {
        self.lines[0].0.store(u64::MAX, Ordering::Release);
        self.peer
            .join()
            .map_err(|_| "the floor's peer panicked".into())
    }
}

/// One floor measurement, its spinning peer running only meanwhile.
fn floor(cpus: Pinning, two_lines: bool, calls: u64) -> Result<f64, String> {
    let floor = Floor::start(cpus, two_lines);
    let p50 = floor.round_trips(calls);
    floor.stop()?;
    p50
}

fn p50_ns(times: &mut [Duration]) -> f64 {
    times.sort_unstable();
    percentile(times, 0.5).as_nanos() as f64
}

/// The two ends of a fresh heap-backed shm segment: (controller, executor).
fn heap_transports(config: ShmConfig) -> Result<(ShmTransport, ShmTransport), String> {
    let mapping: Arc<dyn SharedMapping> =
        Arc::new(HeapMapping::new(required_size(&config)).map_err(|e| e.to_string())?);
    let ours = ShmTransport::create(Arc::clone(&mapping), config).map_err(|e| e.to_string())?;
    let theirs = ShmTransport::attach(mapping, config).map_err(|e| e.to_string())?;
    Ok((ours, theirs))
}

/// Two shm transports over one heap segment; the second echoes every call
/// from a thread pinned to the executor's CPU until it reads `Hangup`.
fn transport_pair(
    config: ShmConfig,
    cpus: Pinning,
) -> Result<(ShmTransport, std::thread::JoinHandle<Result<(), String>>), String> {
    let (ours, theirs) = heap_transports(config)?;
    let peer = std::thread::spawn(move || -> Result<(), String> {
        pin_current_thread(cpus.child)?;
        // Received in place, as the engine does (`recv_into`).
        let mut m = orcwire::Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
        loop {
            if theirs.recv_into(None, &mut m).map_err(|e| e.to_string())? != Arrival::Message {
                continue;
            }
            if m.opcode == Opcode::Hangup {
                return Ok(());
            }
            theirs
                .send_until(Opcode::Result, m.seq, 0, m.payload.as_slice(), None, &|| {})
                .map_err(|e| e.to_string())?;
        }
    });
    Ok((ours, peer))
}

/// With `traced`: before a round (`!report`) empties the transport's
/// phase trace, after it (`report`) prints where each side's time went, in
/// nanoseconds a call (`orcwire_shm::trace`; needs `--features
/// phase-trace`).
#[cfg(feature = "phase-trace")]
fn trace_round(traced: bool, report: bool) -> Result<(), String> {
    use orcwire_shm::trace;
    if !traced {
        return Ok(());
    }
    let records = trace::take();
    if !report {
        return Ok(());
    }
    let ticks_per_ns = trace::ticks_per_ns(Duration::from_millis(50));
    let (calls, span, phases) = trace::summarize(&records, ticks_per_ns);
    println!(
        "  phase trace, the run's middle half: {calls} calls in {:.0} µs ({:.2} M/s)",
        span / 1000.0,
        calls as f64 / span * 1000.0
    );
    for p in phases {
        println!(
            "  {:<10} {:>13} -> {:<13} {:6.1} ns a call ({} times)",
            format!("{:?}", p.side),
            p.from.name(),
            p.to.name(),
            p.ns_per_call,
            p.times
        );
    }
    Ok(())
}

#[cfg(not(feature = "phase-trace"))]
fn trace_round(traced: bool, _report: bool) -> Result<(), String> {
    if traced {
        return Err("the phase trace needs `--features phase-trace`".into());
    }
    Ok(())
}

fn argument(i: u64) -> [u8; BYTES] {
    let mut a = [0u8; BYTES];
    a[..8].copy_from_slice(&i.to_le_bytes());
    a
}

fn check(got: &[u8], i: u64) -> Result<(), String> {
    if got == argument(i) {
        Ok(())
    } else {
        Err(format!("reply {i} is wrong ({} bytes)", got.len()))
    }
}

/// Receives the next message from the echo peer.
fn receive(t: &ShmTransport) -> Result<orcwire::Message, String> {
    loop {
        if let Received::Message(m) = t.recv(None).map_err(|e| e.to_string())? {
            return Ok(m);
        }
    }
}

fn transport_round_trips(t: &ShmTransport, calls: u64) -> Result<f64, String> {
    let mut times = Vec::with_capacity(calls as usize);
    // Received in place, as the engine does (`recv_into`).
    let mut m = orcwire::Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
    for i in 0..calls {
        let start = Instant::now();
        t.send_until(Opcode::CallWrapper, i, 1, &argument(i), None, &|| {})
            .map_err(|e| e.to_string())?;
        while t.recv_into(None, &mut m).map_err(|e| e.to_string())? != Arrival::Message {}
        times.push(start.elapsed());
        check(m.payload.as_slice(), i)?;
    }
    Ok(p50_ns(&mut times))
}

fn transport_pipelined(t: &ShmTransport, calls: u64) -> Result<f64, String> {
    let start = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while received < calls {
        while sent < calls && sent - received < WINDOW {
            t.send_until(Opcode::CallWrapper, sent, 1, &argument(sent), None, &|| {})
                .map_err(|e| e.to_string())?;
            sent += 1;
        }
        let m = receive(t)?;
        check(m.payload.as_slice(), received)?;
        received += 1;
    }
    Ok(calls as f64 / start.elapsed().as_secs_f64() / 1e6)
}

fn endpoint_round_trips(pair: &PinnedEchoPair, calls: u64) -> Result<f64, String> {
    let mut times = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        let start = Instant::now();
        let r: WrapperFunctionBuffer = pair
            .controller
            .call_sync(pair.echo, &argument(i))
            .map_err(|e| e.to_string())?;
        times.push(start.elapsed());
        check(r.as_slice(), i)?;
    }
    Ok(p50_ns(&mut times))
}

fn endpoint_pipelined(pair: &PinnedEchoPair, calls: u64) -> Result<f64, String> {
    let start = Instant::now();
    let mut in_flight = std::collections::VecDeque::with_capacity(WINDOW as usize);
    for i in 0..calls {
        if in_flight.len() as u64 == WINDOW {
            if let Some((call, j)) = in_flight.pop_front() {
                let call: orcwire::PendingCall = call;
                check(call.wait().map_err(|e| e.to_string())?.as_slice(), j)?;
            }
        }
        let call = pair
            .controller
            .call(pair.echo, &argument(i))
            .map_err(|e| e.to_string())?;
        in_flight.push_back((call, i));
    }
    while let Some((call, j)) = in_flight.pop_front() {
        check(call.wait().map_err(|e| e.to_string())?.as_slice(), j)?;
    }
    Ok(calls as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// The same window of calls through a [`orcwire::Pipeline`]: sent in
/// batches, results taken in order.
fn endpoint_pipeline(pair: &PinnedEchoPair, calls: u64) -> Result<f64, String> {
    endpoint_pipeline_with(&pair.controller, pair.echo, calls)
}

/// [`endpoint_pipeline`] from `controller` to its peer's `echo`.
fn endpoint_pipeline_with(
    controller: &orcwire::Endpoint,
    echo: orcwire::HandlerTag,
    calls: u64,
) -> Result<f64, String> {
    let start = Instant::now();
    let mut pipe = controller.pipeline();
    let mut taken = 0;
    for i in 0..calls {
        if pipe.in_flight() as u64 == WINDOW {
            let r = pipe.next().ok_or("a call went missing")?;
            check(r.map_err(|e| e.to_string())?.as_slice(), taken)?;
            taken += 1;
        }
        pipe.submit(echo, &argument(i));
    }
    for r in pipe {
        check(r.map_err(|e| e.to_string())?.as_slice(), taken)?;
        taken += 1;
    }
    Ok(calls as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// Two shm transports whose second end echoes calls in batches
/// (`recv_batch` of up to 16, their answers with one `send_batch`): the
/// ceiling for an engine over this transport.
fn batched_pair(
    config: ShmConfig,
    cpus: Pinning,
) -> Result<(ShmTransport, std::thread::JoinHandle<Result<(), String>>), String> {
    let (ours, theirs) = heap_transports(config)?;
    let peer = std::thread::spawn(move || -> Result<(), String> {
        pin_current_thread(cpus.child)?;
        echo_in_batches(&theirs)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    Ok((ours, peer))
}

/// 64 calls in flight over [`batched_pair`], sent 16 to a batch, answers
/// read in batches.
fn transport_batched(t: &ShmTransport, calls: u64) -> Result<f64, String> {
    batched_rate(t, 1, calls)
}

/// [`drive_in_batches`] of `calls` calls of `tag`, [`BYTES`] bytes each
/// (zeros but for the call number), [`WINDOW`] in flight: millions of
/// calls a second.
fn batched_rate(t: &ShmTransport, tag: u64, calls: u64) -> Result<f64, String> {
    let (_, elapsed) = drive_in_batches(t, tag, &[0u8; BYTES], WINDOW as usize, calls as usize)
        .map_err(|e| e.to_string())?;
    Ok(calls as f64 / elapsed.as_secs_f64() / 1e6)
}

/// The transport alone in batches on the controller's side (as in
/// [`transport_batched`]) against an executor `Endpoint` answering `echo`
/// through its responder: the executor's engine alone sets the pace.
fn raw_controller_engine_executor(
    config: ShmConfig,
    cpus: Pinning,
    calls: u64,
) -> Result<f64, String> {
    let (c, e) = heap_transports(config)?;
    let executor = std::thread::spawn(move || -> Result<orcwire::Endpoint, String> {
        pin_current_thread(cpus.child)?;
        orcwire::ExecutorBuilder::new()
            .function("echo", |args, responder| responder.respond(args))
            .connect(Arc::new(e) as Arc<dyn Transport>)
            .map_err(|e| e.to_string())
    });
    pin_current_thread(cpus.controller)?;
    let setup = match receive(&c)? {
        m if m.opcode == Opcode::Setup => {
            orcwire::sps::SetupInfo::decode(m.payload.as_slice())
                .map_err(|e| e.to_string())?
                .0
        }
        m => return Err(format!("expected the executor's Setup, got {:?}", m.opcode)),
    };
    let tag = setup
        .bootstrap_symbols
        .iter()
        .find(|(name, _)| name == "echo")
        .map(|(_, tag)| *tag)
        .ok_or("the executor did not publish echo")?;
    let executor = executor.join().map_err(|_| "the executor panicked")??;
    let rate = batched_rate(&c, tag, calls)?;
    // Hang up as a controller does, and wait for the executor's answer.
    c.send_until(
        Opcode::Hangup,
        0,
        0,
        &orcwire::sps::encode_error(None),
        None,
        &|| {},
    )
    .map_err(|e| e.to_string())?;
    while receive(&c).is_ok_and(|m| m.opcode != Opcode::Hangup) {}
    executor.disconnect();
    Ok(rate)
}

/// A controller `Endpoint` connected to an executor that is the transport
/// alone, on a thread pinned to the executor's CPU: it sends a `Setup`
/// publishing `echo` as tag 1, runs `serve` (which answers calls until it
/// reads the message it returns), and acknowledges a `Hangup` as an
/// executor does. Returns the controller, `echo`'s tag and the thread.
#[allow(clippy::type_complexity)]
fn against_raw_executor(
    config: ShmConfig,
    cpus: Pinning,
    serve: impl FnOnce(&ShmTransport) -> Result<Opcode, String> + Send + 'static,
) -> Result<
    (
        orcwire::Endpoint,
        orcwire::HandlerTag,
        std::thread::JoinHandle<Result<(), String>>,
    ),
    String,
> {
    let (c, e) = heap_transports(config)?;
    let executor = std::thread::spawn(move || -> Result<(), String> {
        pin_current_thread(cpus.child)?;
        let fail = |e: orcwire::transport::TransportError| e.to_string();
        let mut setup = orcwire::sps::SetupInfo::new_orcwire("pinned-layers".into(), 4096);
        setup.bootstrap_symbols.push(("echo".into(), 1));
        e.send_until(Opcode::Setup, 0, 0, &setup.encode(), None, &|| {})
            .map_err(fail)?;
        if serve(&e)? == Opcode::Hangup {
            let bye = orcwire::sps::encode_error(None);
            e.send_until(Opcode::Hangup, 0, 0, &bye, None, &|| {})
                .map_err(fail)?;
        }
        Ok(())
    });
    pin_current_thread(cpus.controller)?;
    let controller = orcwire::ControllerBuilder::new()
        .connect(Arc::new(c) as Arc<dyn Transport>)
        .map_err(|e| e.to_string())?;
    let echo = controller
        .function_tag("echo")
        .ok_or("the executor did not publish echo")?;
    Ok((controller, echo, executor))
}

/// A controller's [`orcwire::Pipeline`] against an executor that is the
/// transport alone in batches (it echoes every batch of calls it reads
/// with one `send_batch`): the controller's engine alone sets the pace.
fn pipeline_against_raw_executor(
    config: ShmConfig,
    cpus: Pinning,
    calls: u64,
) -> Result<f64, String> {
    let (controller, echo, executor) = against_raw_executor(config, cpus, |e| {
        echo_in_batches(e).map_err(|e| e.to_string())
    })?;
    let rate = endpoint_pipeline_with(&controller, echo, calls)?;
    controller.disconnect();
    executor.join().map_err(|_| "the raw executor panicked")??;
    Ok(rate)
}

/// The round trips of a controller `Endpoint`'s `call_sync` against an
/// executor that is the transport alone, echoing each call as it reads it:
/// the controller's engine on its own. p50 in nanoseconds.
fn controller_engine_round_trips(
    config: ShmConfig,
    cpus: Pinning,
    calls: u64,
) -> Result<f64, String> {
    let (controller, echo, executor) = against_raw_executor(config, cpus, |e| {
        let fail = |e: orcwire::transport::TransportError| e.to_string();
        let mut m = orcwire::Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
        loop {
            if e.recv_into(None, &mut m).map_err(fail)? != Arrival::Message {
                continue;
            }
            match m.opcode {
                // A plain result (kind 0) echoing the arguments.
                Opcode::CallWrapper => e
                    .send_until(Opcode::Result, m.seq, 0, m.payload.as_slice(), None, &|| {})
                    .map_err(fail)?,
                other => return Ok(other),
            }
        }
    })?;
    let mut times = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        let start = Instant::now();
        let r = controller
            .call_sync(echo, &argument(i))
            .map_err(|e| e.to_string())?;
        times.push(start.elapsed());
        check(r.as_slice(), i)?;
    }
    controller.disconnect();
    executor.join().map_err(|_| "the raw executor panicked")??;
    Ok(p50_ns(&mut times))
}

/// Both ends of a fresh transport pair on this thread, in batches of
/// [`WINDOW`]: calls out, answers back, answers in. Nanoseconds per call
/// (two sends and two receives), with no cache line crossing a core: the
/// code's own cost.
fn one_thread(config: ShmConfig, calls: u64) -> Result<f64, String> {
    let (a, b) = heap_transports(config)?;
    let fail = |e: orcwire::transport::TransportError| e.to_string();
    let start = Instant::now();
    let mut i = 0;
    while i < calls {
        for k in i..i + WINDOW {
            a.send_until(Opcode::CallWrapper, k, 1, &argument(k), None, &|| {})
                .map_err(fail)?;
        }
        for _ in 0..WINDOW {
            let m = b.try_recv().map_err(fail)?.ok_or("a call went missing")?;
            b.send_until(Opcode::Result, m.seq, 0, m.payload.as_slice(), None, &|| {})
                .map_err(fail)?;
        }
        for k in i..i + WINDOW {
            let m = a
                .try_recv()
                .map_err(fail)?
                .ok_or("an answer went missing")?;
            check(m.payload.as_slice(), k)?;
        }
        i += WINDOW;
    }
    Ok(start.elapsed().as_nanos() as f64 / i as f64)
}

/// The layout alone: one ring each way with orcwire's frame format (a
/// 32-byte header whose first word publishes the frame, payload after it,
/// 16-byte aligned, the slot after each frame cleared before it is
/// published) and its checks on receipt (flags, length, total), with
/// nothing else: no lock, no wake-up protocol, no head published, no
/// hints. What the transport's code adds is the transport's time over
/// this one's.
struct MinRing {
    words: Box<[AtomicU64]>,
}

impl MinRing {
    fn new(bytes: usize) -> Self {
        Self {
            words: (0..bytes / 8).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn mask(&self) -> usize {
        self.words.len() - 1
    }

    /// Writes a frame at word `at`, returns the next frame's word.
    fn send(&self, at: usize, seq: u64, payload: &[u8; BYTES]) -> usize {
        let w = &self.words;
        let m = self.mask();
        let frame = (32 + BYTES).div_ceil(16) * 2;
        w[(at + 1) & m].store(seq, Ordering::Relaxed);
        w[(at + 2) & m].store(0, Ordering::Relaxed);
        w[(at + 3) & m].store(BYTES as u64, Ordering::Relaxed);
        for (i, c) in payload.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            w[(at + 4 + i) & m].store(v, Ordering::Relaxed);
        }
        let next = (at + frame) & m;
        w[next].store(0, Ordering::Relaxed);
        w[at].store(BYTES as u64 | 7 << 32 | 1 << 40, Ordering::Release);
        next
    }

    /// Waits for the frame at word `at`, checks and copies it out.
    fn recv(&self, at: usize, out: &mut [u8; BYTES]) -> Result<(usize, u64), String> {
        let w = &self.words;
        let m = self.mask();
        let mut spins = 0u32;
        let mut since: Option<Instant> = None;
        let word0 = loop {
            let v = w[at].load(Ordering::Acquire);
            if v != 0 {
                break v;
            }
            std::hint::spin_loop();
            spins += 1;
            // The clock only now and then; a peer gone for a second is an
            // error, not a hang.
            if spins % 4096 == 0 && since.get_or_insert_with(Instant::now).elapsed() > STUCK {
                return Err("minimal ring: no frame for a second".into());
            }
        };
        let len = word0 as u32 as usize;
        if (word0 >> 32) & 0xffff_00ff != 7 || len != BYTES {
            return Err(format!("minimal ring: bad header {word0:#x}"));
        }
        let seq = w[(at + 1) & m].load(Ordering::Relaxed);
        if w[(at + 3) & m].load(Ordering::Relaxed) != len as u64 {
            return Err("minimal ring: bad total".into());
        }
        for (i, c) in out.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&w[(at + 4 + i) & m].load(Ordering::Relaxed).to_le_bytes());
        }
        Ok(((at + (32 + BYTES).div_ceil(16) * 2) & m, seq))
    }
}

/// p50 of `calls` round trips over two [`MinRing`]s, the echo on the other CPU.
fn minimal_ring(cpus: Pinning, calls: u64) -> Result<f64, String> {
    let rings = Arc::new((MinRing::new(1 << 20), MinRing::new(1 << 20)));
    let peer_rings = Arc::clone(&rings);
    let peer = std::thread::spawn(move || -> Result<(), String> {
        pin_current_thread(cpus.child)?;
        let (to_peer, to_us) = (&peer_rings.0, &peer_rings.1);
        let (mut rx, mut tx) = (0, 0);
        let mut buf = [0u8; BYTES];
        for _ in 0..calls {
            let (next, seq) = to_peer.recv(rx, &mut buf)?;
            rx = next;
            tx = to_us.send(tx, seq, &buf);
        }
        Ok(())
    });
    let (to_peer, to_us) = (&rings.0, &rings.1);
    let (mut rx, mut tx) = (0, 0);
    let mut buf = [0u8; BYTES];
    let mut times = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        let start = Instant::now();
        tx = to_peer.send(tx, i, &argument(i));
        let (next, seq) = to_us.recv(rx, &mut buf)?;
        rx = next;
        times.push(start.elapsed());
        if seq != i {
            return Err(format!("minimal ring: answer {seq} to call {i}"));
        }
        check(&buf, i)?;
    }
    peer.join().map_err(|_| "minimal ring peer panicked")??;
    Ok(p50_ns(&mut times))
}

/// The transport's ring ends alone (`RingProducer::try_write_whole` and
/// `publish_with`, `RingConsumer::try_recv_into`), spinning, with no lock,
/// no state checks and no wake-up protocol.
fn ring_ends(cpus: Pinning, calls: u64) -> Result<f64, String> {
    use orcwire_shm::ring::heap_ring;
    let fail = |e: orcwire_shm::ring::RingError| e.to_string();
    let layout = |e: orcwire_shm::LayoutError| e.to_string();
    let (mut tx, mut peer_rx) = heap_ring(1 << 20, 1 << 20).map_err(layout)?;
    let (mut peer_tx, mut rx) = heap_ring(1 << 20, 1 << 20).map_err(layout)?;
    let recv = move |rx: &mut orcwire_shm::ring::RingConsumer,
                     into: &mut orcwire::Message|
          -> Result<(), String> {
        let started = Instant::now();
        while !rx.try_recv_into(into).map_err(fail)? {
            std::hint::spin_loop();
            if started.elapsed() > STUCK {
                return Err("ring ends: no message for a second".into());
            }
        }
        Ok(())
    };
    let peer = std::thread::spawn(move || -> Result<(), String> {
        pin_current_thread(cpus.child)?;
        let mut m = orcwire::Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
        for _ in 0..calls {
            recv(&mut peer_rx, &mut m)?;
            if !peer_tx.try_write_whole(Opcode::Result, m.seq, 0, m.payload.as_slice())
                && peer_tx
                    .try_push(Opcode::Result, m.seq, 0, m.payload.as_slice())
                    .map_err(fail)?
                    != orcwire_shm::ring::WriteStatus::Complete
            {
                return Err("ring ends: no room".into());
            }
            peer_tx.publish_with(true);
        }
        Ok(())
    });
    let mut m = orcwire::Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
    let mut times = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        let start = Instant::now();
        if !tx.try_write_whole(Opcode::CallWrapper, i, 1, &argument(i))
            && tx
                .try_push(Opcode::CallWrapper, i, 1, &argument(i))
                .map_err(fail)?
                != orcwire_shm::ring::WriteStatus::Complete
        {
            return Err("ring ends: no room".into());
        }
        tx.publish_with(true);
        recv(&mut rx, &mut m)?;
        times.push(start.elapsed());
        check(m.payload.as_slice(), i)?;
    }
    peer.join().map_err(|_| "ring ends peer panicked")??;
    Ok(p50_ns(&mut times))
}
