//! Percentiles and the per-case summary.

use std::time::Duration;

/// Percentile `p` (0..=100) of `sorted` samples (nanoseconds, durations,
/// anything ordered), nearest rank; the default (zero) for no samples.
///
/// ```
/// use orcwire_tools::bench::percentile;
/// let s: Vec<u64> = (1..=1000).collect();
/// assert_eq!(percentile(&s, 50.0), 501);
/// assert_eq!(percentile(&s, 99.9), 999);
/// ```
pub fn percentile<T: Copy + Default + PartialOrd>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]), "samples sorted");
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// What one case measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Calls made (all timed for round trips; for pipelined runs one in
    /// [`SAMPLE_EVERY`](super::SAMPLE_EVERY) is timed).
    pub calls: u64,
    /// Median round trip, ns.
    pub p50_ns: u64,
    /// 99th percentile round trip, ns.
    pub p99_ns: u64,
    /// 99.9th percentile round trip, ns.
    pub p999_ns: u64,
    /// Completed calls per second over the whole timed run.
    pub ops_per_s: f64,
}

impl Summary {
    /// Summarises per-call `samples` (ns, any order) of a run that took
    /// `elapsed` in all.
    pub fn new(mut samples: Vec<u64>, elapsed: Duration) -> Self {
        samples.sort_unstable();
        let secs = elapsed.as_secs_f64();
        Self {
            calls: samples.len() as u64,
            p50_ns: percentile(&samples, 50.0),
            p99_ns: percentile(&samples, 99.0),
            p999_ns: percentile(&samples, 99.9),
            ops_per_s: if secs > 0.0 {
                samples.len() as f64 / secs
            } else {
                0.0
            },
        }
    }

    /// As [`new`](Self::new) for a run of `calls` calls of which only
    /// `samples` were timed: the percentiles are the samples', the rate
    /// counts every call.
    pub fn of_sampled(samples: Vec<u64>, calls: u64, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        Self {
            calls,
            ops_per_s: if secs > 0.0 { calls as f64 / secs } else { 0.0 },
            ..Self::new(samples, elapsed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_samples() {
        let s = Summary::new((1..=100).rev().collect(), Duration::from_millis(10));
        assert_eq!(s.calls, 100);
        assert_eq!(s.p50_ns, 51);
        assert_eq!(s.p99_ns, 99);
        assert_eq!(s.p999_ns, 100);
        assert!((s.ops_per_s - 10_000.0).abs() < 1e-6);
        assert_eq!(percentile::<u64>(&[], 50.0), 0);
        let t = Summary::of_sampled((1..=100).collect(), 800, Duration::from_millis(10));
        assert_eq!((t.calls, t.p50_ns, t.p999_ns), (800, 51, 100));
        assert!((t.ops_per_s - 80_000.0).abs() < 1e-6);
    }
}
