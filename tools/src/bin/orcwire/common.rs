//! The command line of every subcommand, and helpers they share.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use orcwire::{TaskDispatcher, ThreadPoolTaskDispatcher};
use orcwire_shm::{RingCapacity, ShmConfig, WaitStrategy};
use orcwire_tools::bench::TransportKind;

/// How a blocked side waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WaitPreset {
    /// Spin long: lowest latency, a busy core per waiting side.
    Spin,
    /// Spin briefly, then sleep on the futex.
    Balanced,
    /// Sleep on the futex at once: lowest CPU.
    Block,
}

impl WaitPreset {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            WaitPreset::Spin => "spin",
            WaitPreset::Balanced => "balanced",
            WaitPreset::Block => "block",
        }
    }

    pub fn strategy(self) -> WaitStrategy {
        match self {
            WaitPreset::Spin => WaitStrategy::lowest_latency(),
            WaitPreset::Balanced => WaitStrategy::balanced(),
            WaitPreset::Block => WaitStrategy::low_cpu(),
        }
    }
}

/// Where incoming calls run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dispatch {
    /// On the thread that read them, once it has handed over reading: no
    /// thread hop, lowest latency.
    Inline,
    /// On a pool of 2 worker threads: handlers that block for long do not
    /// delay other calls.
    Pool,
}

impl Dispatch {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Dispatch::Inline => "inline",
            Dispatch::Pool => "pool",
        }
    }
}

fn ring_bytes(s: &str) -> Result<usize, String> {
    let bytes: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    RingCapacity::new(bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

/// Options of both roles.
#[derive(Clone, Debug, Args)]
pub struct ConnectionArgs {
    /// How a blocked side waits.
    #[arg(long, value_enum, default_value_t = WaitPreset::Balanced)]
    pub wait: WaitPreset,
    /// Ring capacity per direction, a power of two (the controller's
    /// choice: an executor takes the size from the segment).
    #[arg(long, value_name = "BYTES", default_value = "1048576", value_parser = ring_bytes)]
    pub ring: usize,
    /// Where incoming calls run.
    #[arg(long, value_enum, default_value_t = Dispatch::Inline)]
    pub dispatch: Dispatch,
}

impl ConnectionArgs {
    /// Where incoming calls run: `None` for inline, the engine's default
    /// (on the connection's own worker that read the call, no boxed task,
    /// no thread hop), or a pool of worker threads.
    pub fn dispatcher(&self) -> Option<Arc<dyn TaskDispatcher>> {
        if self.dispatch != Dispatch::Pool {
            return None;
        }
        match ThreadPoolTaskDispatcher::new(2) {
            Ok(pool) => Some(Arc::new(pool)),
            Err(e) => {
                eprintln!("orcwire: {e}; running calls inline instead");
                None
            }
        }
    }

    pub fn shm_config(&self) -> ShmConfig {
        ShmConfig {
            wait: self.wait.strategy(),
            // Checked by the parser.
            ring_capacity: RingCapacity::new(self.ring).unwrap_or_default(),
            ..ShmConfig::default()
        }
    }
}

/// `orcwire demo`.
#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Latency samples per direction.
    #[arg(long, value_name = "N", default_value = "20000", value_parser = at_least_one)]
    pub calls: usize,
    /// After the calls, keep the connection open and idle this long before
    /// disconnecting (for `orcwire inspect` and its test).
    #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
    pub hold_ms: u64,
}

/// `orcwire executor`.
#[derive(Clone, Debug, Args)]
pub struct ExecutorArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Attach to a controller's ShmListener at PATH instead of inherited
    /// fds.
    #[arg(long, value_name = "PATH")]
    pub connect: Option<PathBuf>,
}

/// A comma-separated list of payload sizes.
#[derive(Clone, Debug)]
pub struct Payloads(pub Vec<usize>);

fn payloads(s: &str) -> Result<Payloads, String> {
    s.split(',')
        .filter(|p| !p.is_empty() && *p != "none")
        .map(|p| match p.parse::<usize>() {
            Ok(0) => Err(
                "payload sizes start at 1 byte (the floors always run the bare \
                          ping-pong); use `none` for no payload"
                    .to_string(),
            ),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("{p:?} is not a number of bytes")),
        })
        .collect::<Result<_, _>>()
        .map(Payloads)
}

/// A comma-separated list of transports.
#[derive(Clone, Debug)]
pub struct Transports(pub Vec<TransportKind>);

fn transports(s: &str) -> Result<Transports, String> {
    s.split(',')
        .map(|name| {
            TransportKind::from_name(name).ok_or_else(|| {
                let all: Vec<&str> = TransportKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown transport {name:?}: use {}", all.join(", "))
            })
        })
        .collect::<Result<_, _>>()
        .map(Transports)
}

/// `orcwire bench`.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// About 150 ms per case instead of 1 s (the whole run in under 60 s).
    #[arg(long)]
    pub quick: bool,
    /// Write one JSON object per case to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Draw p50 round trip against payload size (one line per transport
    /// and direction, log-log axes) as an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Run only this shared-memory wait preset (the other transports, the
    /// floors and shm-raw still run).
    #[arg(long, value_enum)]
    pub wait: Option<WaitPreset>,
    /// Leave CPU placement to the scheduler instead of pinning the two
    /// processes to different CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Run only these transports, comma-separated: floor-spin, floor-futex,
    /// shm-raw, shm-spin, shm-balanced, shm-block, pipe, uds (shm-raw: the
    /// shared-memory transport with no engine, pipelined 1 thread
    /// controller → child, measured in each direction's pass; the
    /// pipelined shm-* cases' floor).
    #[arg(long, value_name = "LIST", value_parser = transports)]
    pub only: Option<Transports>,
    /// Round-trip payload sizes in bytes, comma-separated (default
    /// 8,64,4096,65536,1048576; `none` for the floors' bare ping-pong and
    /// the throughput cases only).
    #[arg(long, value_name = "LIST", value_parser = payloads)]
    pub payloads: Option<Payloads>,
    /// No progress bar (it is drawn on stderr only when that is a
    /// terminal).
    #[arg(long, short)]
    pub quiet: bool,
    /// Time each case for about MS milliseconds (for bounded test runs).
    #[arg(long, value_name = "MS", hide = true)]
    pub case_ms: Option<u64>,
}

/// `orcwire bench-llvm`.
#[derive(Clone, Debug, Args)]
pub struct BenchLlvmArgs {
    /// Which LLVM's programs to measure (its llvm-jitlink-executor, its
    /// libLLVM and llvm-config must be installed).
    #[arg(long, default_value_t = 14)]
    pub llvm: u32,
    /// Timed calls per pairing and round.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub calls: usize,
    /// Rounds; the pairings alternate within each, and the medians of the
    /// rounds are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// `orcwire inspect`.
#[derive(Clone, Debug, Args)]
pub struct InspectArgs {
    /// The process whose connections to show (yours only).
    pub pid: u32,
}

/// `(byte sum, length)` as 16 little-endian bytes: what `sum` returns.
pub fn sum_reply(bytes: &[u8]) -> [u8; 16] {
    let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&sum.to_le_bytes());
    out[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    out
}
