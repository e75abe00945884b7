//! Options and helpers shared by the commands.

use std::sync::Arc;

use orcwire::{TaskDispatcher, ThreadPoolTaskDispatcher};

use orcwire_shm::{RingCapacity, ShmConfig, WaitStrategy};

/// Parsed command-line options.
#[derive(Clone, Debug)]
pub struct Options {
    pub wait: String,
    pub ring: usize,
    pub calls: usize,
    pub connect: Option<String>,
    pub dispatch: String,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Options {
            wait: "balanced".into(),
            ring: 1 << 20,
            calls: 20_000,
            connect: None,
            dispatch: "inline".into(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--wait" => o.wait = value("--wait")?,
                "--ring" => {
                    o.ring = value("--ring")?
                        .parse()
                        .map_err(|_| "--ring takes a number of bytes".to_string())?
                }
                "--calls" => {
                    o.calls = value("--calls")?
                        .parse()
                        .map_err(|_| "--calls takes a number".to_string())?
                }
                "--connect" => o.connect = Some(value("--connect")?),
                "--dispatch" => o.dispatch = value("--dispatch")?,
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        wait_strategy(&o.wait)?;
        if o.dispatch != "inline" && o.dispatch != "pool" {
            return Err(format!(
                "unknown dispatch {:?}: use inline or pool",
                o.dispatch
            ));
        }
        RingCapacity::new(o.ring).map_err(|e| e.to_string())?;
        if o.calls == 0 {
            return Err("--calls must be at least 1".into());
        }
        Ok(o)
    }

    /// Where incoming calls run: `None` for inline, the engine's default
    /// (on the connection's own worker that read the call, no boxed task,
    /// no thread hop), or a pool of worker threads.
    pub fn dispatcher(&self) -> Option<Arc<dyn TaskDispatcher>> {
        if self.dispatch != "pool" {
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
            // Both checked in `parse`.
            wait: wait_strategy(&self.wait).unwrap_or_default(),
            ring_capacity: RingCapacity::new(self.ring).unwrap_or_default(),
            ..ShmConfig::default()
        }
    }
}

pub fn wait_strategy(name: &str) -> Result<WaitStrategy, String> {
    match name {
        "spin" => Ok(WaitStrategy::lowest_latency()),
        "balanced" => Ok(WaitStrategy::balanced()),
        "block" => Ok(WaitStrategy::low_cpu()),
        other => Err(format!(
            "unknown wait strategy {other:?}: use spin, balanced or block"
        )),
    }
}

/// `(byte sum, length)` as 16 little-endian bytes: what `sum` returns.
pub fn sum_reply(bytes: &[u8]) -> [u8; 16] {
    let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&sum.to_le_bytes());
    out[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    out
}
