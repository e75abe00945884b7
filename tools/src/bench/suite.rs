//! The full comparison: every transport and floor, every payload, both
//! directions, round trips and pipelined throughput, in one run (each
//! kind runs the cases [`TransportKind::measures_rtt`] and
//! [`TransportKind::measures_throughput`] allow).

use std::fmt::Write as _;
use std::time::Duration;

use super::pin::{pin_current_thread, Pinning};
use super::stats::Summary;
use super::{BenchError, Direction, Mode, Peer, TransportKind};

/// What [`run_suite`] measures and for how long.
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    /// Transports and floors, in the order they run.
    pub transports: Vec<TransportKind>,
    /// Round-trip payload sizes (floors also run the bare ping-pong, 0).
    pub payloads: Vec<usize>,
    /// Directions (floors and `shm-raw` run controller → child only).
    pub directions: Vec<Direction>,
    /// Payload of the pipelined throughput cases (`shm-raw`'s too).
    pub throughput_payload: usize,
    /// Calling threads of the throughput cases (one case each; `shm-raw`
    /// runs the 1-thread case only).
    pub thread_counts: Vec<usize>,
    /// Calls each calling thread keeps in flight.
    pub window: usize,
    /// Roughly how long each case is timed.
    pub case_time: Duration,
    /// Upper bound on the calls of one case.
    pub max_calls: usize,
    /// Where to run the two processes; `None`: unpinned.
    pub pinning: Option<Pinning>,
}

impl SuiteConfig {
    /// The full run: about 1 s per case.
    pub fn full() -> Self {
        Self {
            transports: TransportKind::ALL.to_vec(),
            payloads: vec![8, 64, 4 << 10, 64 << 10, 1 << 20],
            directions: vec![Direction::ToExecutor, Direction::ToController],
            throughput_payload: 64,
            thread_counts: vec![1, 4],
            window: 64,
            case_time: Duration::from_secs(1),
            max_calls: 2_000_000,
            pinning: Pinning::choose(),
        }
    }

    /// A quick run (`orcwire bench --quick`): 150 ms per case.
    pub fn quick() -> Self {
        Self {
            case_time: Duration::from_millis(150),
            max_calls: 300_000,
            ..Self::full()
        }
    }

    /// How many cases [`run_suite`] runs with this configuration (and so
    /// how many times it calls `on_case`).
    pub fn case_count(&self) -> usize {
        // The same loops and tests as `run_interleaved`, counted.
        let mut count = 0;
        for &kind in &self.transports {
            for &direction in &self.directions {
                count += self
                    .rtt_sizes()
                    .filter(|&payload| runs_rtt(kind, direction, payload))
                    .count();
                count += self
                    .thread_counts
                    .iter()
                    .filter(|&&threads| runs_throughput(kind, direction, threads))
                    .count();
            }
        }
        count
    }

    /// The round-trip sizes: 0 (the floors' bare ping-pong), then the
    /// payloads.
    fn rtt_sizes(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(0).chain(self.payloads.iter().copied())
    }
}

/// Whether `kind` runs the round trip of `payload` bytes in the pass of
/// `direction`: payload 0 is the floors' bare ping-pong only. The floors
/// run in both passes (see [`run_suite`]).
fn runs_rtt(kind: TransportKind, direction: Direction, payload: usize) -> bool {
    (kind.measures_rtt(direction) || kind.is_floor()) && (payload > 0 || kind.is_floor())
}

/// Whether `kind` runs the pipelined case of `threads` threads in the pass
/// of `direction`: `shm-raw` runs its 1-thread case in both passes (see
/// [`run_suite`]).
fn runs_throughput(kind: TransportKind, direction: Direction, threads: usize) -> bool {
    kind.measures_throughput(direction, threads) || (kind == TransportKind::ShmRaw && threads == 1)
}

/// The direction `kind` is measured in during the pass of `direction`: the
/// references (floors, `shm-raw`) always run controller → child.
fn measured_direction(kind: TransportKind, direction: Direction) -> Direction {
    if kind.is_floor() || kind == TransportKind::ShmRaw {
        Direction::ToExecutor
    } else {
        direction
    }
}

/// One measured case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CaseResult {
    /// Transport or floor.
    pub transport: TransportKind,
    /// Who calls; for a floor or `shm-raw`, which always run controller →
    /// child (they are symmetric), the direction whose pass measured it:
    /// the reference of that pass's cases (see [`run_suite`]).
    pub direction: Direction,
    /// Argument (and echoed reply) size in bytes.
    pub payload: usize,
    /// Round trips or pipelined throughput.
    pub mode: Mode,
    /// What was measured.
    pub summary: Summary,
}

/// A case compared with the others of the same run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ratios {
    /// Round trips: p50 over the p50 of the matching floor (spin floor, or
    /// futex floor for `shm-block`) at the same payload, measured in the
    /// same direction's pass. 1.0 is the floor; lower is impossible,
    /// higher is slower.
    ///
    /// Pipelined calls over shared memory (every `shm-*` kind, any thread
    /// count, either direction): `shm-raw`'s calls/s (its 1-thread,
    /// controller → child case at the same payload and window) over this
    /// case's calls/s (measured in the same direction's pass). 1.0 is the
    /// transport alone with no engine (so
    /// `shm-raw` itself is 1.0); higher is slower. Other pipelined cases
    /// (pipe, uds) have none.
    pub to_floor: Option<f64>,
    /// How many times faster than the pipe transport in the same case:
    /// pipe p50 over this p50 (round trips), this calls/s over the pipe's
    /// (throughput).
    pub vs_pipe: Option<f64>,
}

fn same_shape(a: &CaseResult, b: &CaseResult) -> bool {
    a.payload == b.payload && a.mode == b.mode
}

/// Ratios of `case` to its floor and to the pipe among `all` (see
/// [`Ratios`]).
pub fn ratios(all: &[CaseResult], case: &CaseResult) -> Ratios {
    let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    // The reference measured in the same pass, else in any.
    let reference = |matches: &dyn Fn(&CaseResult) -> bool| {
        all.iter()
            .find(|r| r.direction == case.direction && matches(r))
            .or_else(|| all.iter().find(|r| matches(r)))
    };
    let to_floor = match case.mode {
        Mode::Rtt => reference(&|f| {
            f.transport == case.transport.floor() && same_shape(f, case) && f.mode == Mode::Rtt
        })
        .and_then(|f| div(case.summary.p50_ns as f64, f.summary.p50_ns as f64)),
        Mode::Throughput { window, .. } if case.transport.is_shm() => reference(&|r| {
            r.transport == TransportKind::ShmRaw
                && r.payload == case.payload
                && r.mode == Mode::Throughput { threads: 1, window }
        })
        .and_then(|r| div(r.summary.ops_per_s, case.summary.ops_per_s)),
        Mode::Throughput { .. } => None,
    };
    let pipe = all.iter().find(|p| {
        p.transport == TransportKind::Pipe
            && same_shape(p, case)
            && (p.direction == case.direction || case.transport.is_floor())
    });
    Ratios {
        to_floor,
        vs_pipe: pipe.and_then(|p| match case.mode {
            Mode::Rtt => div(p.summary.p50_ns as f64, case.summary.p50_ns as f64),
            Mode::Throughput { .. } => div(case.summary.ops_per_s, p.summary.ops_per_s),
        }),
    }
}

/// Runs every case of `config`, calling `on_case` after each; pins this
/// thread first when `config.pinning` says so (threads started later
/// inherit the CPU).
///
/// Every child is started first and kept for the whole run, and the
/// cases run size by size with every transport in turn, so the cases a
/// ratio compares are measured seconds apart, not minutes (this machine
/// is noisy, and its two CPUs change speed relative to each other from
/// one minute to the next). For the same reason the references — the
/// floors and `shm-raw`, symmetric and always run controller → child —
/// are measured again in the to-controller pass, so each direction's
/// cases are held to references of their own pass. Idle children sleep.
/// The results come back grouped by transport.
///
/// # Errors
/// The first [`BenchError`]: a child that could not start, a failed call,
/// a wrong result.
pub fn run_suite(
    config: &SuiteConfig,
    on_case: &mut dyn FnMut(&CaseResult),
) -> Result<Vec<CaseResult>, BenchError> {
    if let Some(p) = config.pinning {
        pin_current_thread(p.controller).map_err(BenchError::Call)?;
    }
    let mut peers = Vec::with_capacity(config.transports.len());
    let mut outcome = Ok(());
    for &kind in &config.transports {
        match Peer::spawn(kind, config.pinning.map(|p| p.child)) {
            Ok(p) => peers.push(p),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let mut results = Vec::new();
    if outcome.is_ok() {
        outcome = run_interleaved(&mut peers, config, &mut results, on_case);
    }
    for peer in peers {
        let finished = peer.finish();
        if outcome.is_ok() {
            outcome = finished;
        }
    }
    outcome?;
    let order = |c: &CaseResult| {
        let t = config.transports.iter().position(|&k| k == c.transport);
        let (m, threads) = match c.mode {
            Mode::Rtt => (0, 0),
            Mode::Throughput { threads, .. } => (1, threads),
        };
        let d = usize::from(c.direction == Direction::ToController);
        (t, m, d, c.payload, threads)
    };
    results.sort_by_key(order);
    Ok(results)
}

/// The typical call's time in a calibration run: its median, so that one
/// stall (a page fault on the first large buffer, a preemption) does not
/// shrink the timed run to a few dozen calls, whose p99 is then that stall.
fn typical_ns(samples: &[u64]) -> f64 {
    if samples.is_empty() {
        return 1.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    (sorted[sorted.len() / 2] as f64).max(1.0)
}

fn calls_for(time: Duration, per_call_ns: f64, min: usize, max: usize) -> usize {
    ((time.as_nanos() as f64 / per_call_ns) as usize).clamp(min, max.max(min))
}

fn run_interleaved(
    peers: &mut [Peer],
    config: &SuiteConfig,
    results: &mut Vec<CaseResult>,
    on_case: &mut dyn FnMut(&CaseResult),
) -> Result<(), BenchError> {
    let mut record = |case: CaseResult| {
        on_case(&case);
        results.push(case);
    };
    let sizes: Vec<usize> = config.rtt_sizes().collect();
    for &direction in &config.directions {
        for &payload in &sizes {
            for peer in peers.iter_mut() {
                let kind = peer.kind();
                // Floors run controller → child in each pass (they are
                // symmetric), shm-raw no round trips; payload 0 is the
                // floors' bare ping-pong.
                if !runs_rtt(kind, direction, payload) {
                    continue;
                }
                record(rtt_case(peer, direction, payload, config)?);
            }
        }
    }
    for &direction in &config.directions {
        for &threads in &config.thread_counts {
            // Floors: none; shm-raw: 1 thread, controller → child, in
            // each pass.
            for peer in peers
                .iter_mut()
                .filter(|p| runs_throughput(p.kind(), direction, threads))
            {
                record(throughput_case(peer, direction, threads, config)?);
            }
        }
    }
    Ok(())
}

/// Calibrates on a few calls, warms up for a tenth of the case time,
/// then times enough calls to fill it.
fn rtt_case(
    peer: &mut Peer,
    direction: Direction,
    payload: usize,
    config: &SuiteConfig,
) -> Result<CaseResult, BenchError> {
    let way = measured_direction(peer.kind(), direction);
    let probe = peer.rtt(way, payload, 5)?;
    let warm = calls_for(config.case_time / 10, typical_ns(&probe), 5, 20_000);
    let warm = peer.rtt(way, payload, warm)?;
    let n = calls_for(config.case_time, typical_ns(&warm), 20, config.max_calls);
    let samples = peer.rtt(way, payload, n)?;
    let busy = Duration::from_nanos(samples.iter().sum());
    Ok(CaseResult {
        transport: peer.kind(),
        direction,
        payload,
        mode: Mode::Rtt,
        summary: Summary::new(samples, busy),
    })
}

fn throughput_case(
    peer: &mut Peer,
    direction: Direction,
    threads: usize,
    config: &SuiteConfig,
) -> Result<CaseResult, BenchError> {
    let (payload, window) = (config.throughput_payload, config.window);
    let way = measured_direction(peer.kind(), direction);
    let min = threads * window * 4;
    let (_, took) = peer.throughput(way, payload, threads, window, min)?;
    let per_call = took.as_nanos() as f64 / min as f64;
    let n = calls_for(config.case_time, per_call.max(1.0), min, config.max_calls);
    let (samples, elapsed) = peer.throughput(way, payload, threads, window, n)?;
    // Every thread makes the same number of calls (rounded up).
    let made = n.div_ceil(threads.max(1)) * threads.max(1);
    Ok(CaseResult {
        transport: peer.kind(),
        direction,
        payload,
        mode: Mode::Throughput { threads, window },
        summary: Summary::of_sampled(samples, made as u64, elapsed),
    })
}

fn json_number(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.4}"),
        _ => "null".into(),
    }
}

/// The results as a JSON array, one object per case: `transport`,
/// `direction`, `payload`, `mode`, `threads`, `in_flight`, `calls`,
/// `p50_ns`, `p99_ns`, `p999_ns`, `ops_per_s`, `ratio_to_floor`,
/// `speedup_vs_pipe` (the last two as [`Ratios`], `null` when there is
/// nothing to compare with).
pub fn to_json(results: &[CaseResult]) -> String {
    let mut out = String::from("[\n");
    for (i, c) in results.iter().enumerate() {
        let r = ratios(results, c);
        let (threads, in_flight) = match c.mode {
            Mode::Rtt => (1, 1),
            Mode::Throughput { threads, window } => (threads, window),
        };
        let _ = writeln!(
            out,
            "  {{\"transport\": \"{}\", \"direction\": \"{}\", \"payload\": {}, \"mode\": \"{}\", \
             \"threads\": {threads}, \"in_flight\": {in_flight}, \"calls\": {}, \
             \"p50_ns\": {}, \"p99_ns\": {}, \"p999_ns\": {}, \"ops_per_s\": {:.1}, \
             \"ratio_to_floor\": {}, \"speedup_vs_pipe\": {}}}{}",
            c.transport.name(),
            c.direction.name(),
            c.payload,
            c.mode.name(),
            c.summary.calls,
            c.summary.p50_ns,
            c.summary.p99_ns,
            c.summary.p999_ns,
            c.summary.ops_per_s,
            json_number(r.to_floor),
            json_number(r.vs_pipe),
            if i + 1 == results.len() { "" } else { "," },
        );
    }
    out.push(']');
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(t: TransportKind, payload: usize, p50: u64, ops: f64, mode: Mode) -> CaseResult {
        CaseResult {
            transport: t,
            direction: Direction::ToExecutor,
            payload,
            mode,
            summary: Summary {
                calls: 10,
                p50_ns: p50,
                p99_ns: p50 * 2,
                p999_ns: p50 * 3,
                ops_per_s: ops,
            },
        }
    }

    #[test]
    fn case_count_matches_the_cases_run() {
        // Floors: 2 × (bare + 5 sizes) in each direction's pass; shm-raw:
        // 1 thread in each pass; the other 5: 5 sizes and 2 thread counts,
        // both directions.
        assert_eq!(SuiteConfig::full().case_count(), 24 + 2 + 5 * 14);
        let small = SuiteConfig {
            transports: vec![
                TransportKind::FloorSpin,
                TransportKind::ShmRaw,
                TransportKind::Pipe,
            ],
            payloads: vec![8, 4096],
            directions: vec![Direction::ToController],
            ..SuiteConfig::quick()
        };
        // The references run in the to-controller pass too: the floor's
        // bare ping-pong and two sizes, shm-raw's 1-thread case; then the
        // pipe's two round trips and two pipelined cases.
        assert_eq!(small.case_count(), 3 + 1 + 2 + 2);
        let raw_only = |payloads: Vec<usize>, thread_counts: Vec<usize>| SuiteConfig {
            transports: vec![TransportKind::ShmRaw, TransportKind::ShmSpin],
            payloads,
            thread_counts,
            ..SuiteConfig::quick()
        };
        // `--payloads none`: shm-raw's case in each pass, shm-spin's 2 × 2
        // pipelined ones (no round trip has a payload).
        assert_eq!(raw_only(Vec::new(), vec![1, 4]).case_count(), 2 + 4);
        // No 1-thread case: nothing for shm-raw.
        assert_eq!(raw_only(vec![64], vec![4]).case_count(), 2 * 2);
    }

    #[test]
    fn ratios_pick_the_matching_floor_and_pipe() {
        let tp = Mode::Throughput {
            threads: 1,
            window: 64,
        };
        let all = vec![
            case(TransportKind::FloorSpin, 64, 100, 1e7, Mode::Rtt),
            case(TransportKind::FloorFutex, 64, 1000, 1e6, Mode::Rtt),
            case(TransportKind::ShmSpin, 64, 150, 6e6, Mode::Rtt),
            case(TransportKind::ShmBlock, 64, 1200, 8e5, Mode::Rtt),
            case(TransportKind::Pipe, 64, 15000, 6e4, Mode::Rtt),
            case(TransportKind::ShmSpin, 64, 0, 3e6, tp),
            case(TransportKind::Pipe, 64, 0, 1e5, tp),
        ];
        let r = ratios(&all, &all[2]);
        assert_eq!(r.to_floor, Some(1.5));
        assert_eq!(r.vs_pipe, Some(100.0));
        assert_eq!(ratios(&all, &all[3]).to_floor, Some(1.2));
        let t = ratios(&all, &all[5]);
        assert_eq!(t.to_floor, None);
        assert_eq!(t.vs_pipe, Some(30.0));
        let json = to_json(&all);
        assert!(json.starts_with("[\n  {\"transport\": \"floor-spin\""));
        assert_eq!(json.matches("\"p50_ns\"").count(), all.len());
        assert!(json.contains("\"mode\": \"throughput\""));
        assert!(json.trim_end().ends_with(']'));
    }

    #[test]
    fn each_pass_is_held_to_its_own_references() {
        let tp = Mode::Throughput {
            threads: 1,
            window: 64,
        };
        let to_controller = |mut c: CaseResult| {
            c.direction = Direction::ToController;
            c
        };
        // The CPUs were slower during the to-executor pass than during the
        // to-controller one: each pass's cases are compared with what was
        // measured beside them.
        let all = vec![
            case(TransportKind::FloorSpin, 64, 400, 2e6, Mode::Rtt),
            case(TransportKind::ShmRaw, 64, 0, 8e6, tp),
            case(TransportKind::ShmSpin, 64, 600, 1e6, Mode::Rtt),
            case(TransportKind::ShmSpin, 64, 0, 4e6, tp),
            to_controller(case(TransportKind::FloorSpin, 64, 150, 6e6, Mode::Rtt)),
            to_controller(case(TransportKind::ShmRaw, 64, 0, 20e6, tp)),
            to_controller(case(TransportKind::ShmSpin, 64, 300, 3e6, Mode::Rtt)),
            to_controller(case(TransportKind::ShmSpin, 64, 0, 10e6, tp)),
        ];
        let to_floor = |i: usize| ratios(&all, &all[i]).to_floor;
        assert_eq!(to_floor(2), Some(1.5));
        assert_eq!(to_floor(3), Some(2.0));
        assert_eq!(to_floor(6), Some(2.0));
        assert_eq!(to_floor(7), Some(2.0));
        // A pass without its own reference falls back to the other's.
        let one_pass: Vec<CaseResult> = all
            .iter()
            .copied()
            .filter(|c| {
                c.direction == Direction::ToExecutor || c.transport == TransportKind::ShmSpin
            })
            .collect();
        assert_eq!(ratios(&one_pass, &one_pass[4]).to_floor, Some(0.75));
    }

    #[test]
    fn shm_pipelined_cases_are_held_to_shm_raw() {
        let tp = |threads| Mode::Throughput {
            threads,
            window: 64,
        };
        let from = |mut c: CaseResult, d| {
            c.direction = d;
            c
        };
        let tc = Direction::ToController;
        let all = vec![
            case(TransportKind::FloorSpin, 64, 100, 1e7, Mode::Rtt),
            case(TransportKind::ShmRaw, 64, 0, 8e6, tp(1)),
            case(TransportKind::ShmSpin, 64, 150, 6e6, Mode::Rtt),
            case(TransportKind::ShmSpin, 64, 0, 4e6, tp(1)),
            from(case(TransportKind::ShmBalanced, 64, 0, 2e6, tp(4)), tc),
            case(TransportKind::ShmBlock, 64, 0, 1e6, tp(1)),
            case(TransportKind::Pipe, 64, 0, 1e6, tp(1)),
            case(TransportKind::ShmSpin, 4096, 0, 1e6, tp(1)),
            case(
                TransportKind::ShmSpin,
                64,
                0,
                4e6,
                Mode::Throughput {
                    threads: 1,
                    window: 8,
                },
            ),
        ];
        let to_floor = |i: usize| ratios(&all, &all[i]).to_floor;
        // shm-raw is its own floor; shm-spin makes half its calls/s.
        assert_eq!(to_floor(1), Some(1.0));
        assert_eq!(to_floor(3), Some(2.0));
        // Any thread count, either direction, every preset.
        assert_eq!(to_floor(4), Some(4.0));
        assert_eq!(to_floor(5), Some(8.0));
        // Round trips keep their floor.
        assert_eq!(to_floor(2), Some(1.5));
        // Not over shared memory, or no shm-raw case of that payload or
        // window: nothing to compare with.
        assert_eq!(to_floor(6), None);
        assert_eq!(to_floor(7), None);
        assert_eq!(to_floor(8), None);
        // The pipe comparison is unchanged: shm-raw's 8e6 over its 1e6.
        assert_eq!(ratios(&all, &all[1]).vs_pipe, Some(8.0));
        assert!(to_json(&all).contains(
            "\"transport\": \"shm-spin\", \"direction\": \"to-executor\", \"payload\": 64, \
             \"mode\": \"throughput\", \"threads\": 1, \"in_flight\": 64"
        ));
        assert!(to_json(&all).contains("\"ratio_to_floor\": 2.0000"));
    }
}
