//! [`WaitStrategy`]: how long a blocked call spins before it sleeps in
//! the kernel.
//!
//! Plain configuration; the spinning itself is `WakeWord::wait_until`'s.

use std::time::Duration;

/// How long a blocked call spins before it sleeps in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpinBudget {
    /// Sleep at once.
    None,
    /// Poll this many times first.
    Iterations(u32),
    /// Poll for this long first (wall clock).
    Time(Duration),
}

/// How a blocked send or receive waits: a spin budget, then `FUTEX_WAIT`.
///
/// An idle endpoint always ends up asleep in the kernel and uses no CPU;
/// the budget only trades CPU for latency while traffic flows. A time
/// budget is a floor: after a message of 16 KiB or more, the transport
/// spins for about the time the peer needs to copy it (at 4 bytes a
/// nanosecond, at most 1 ms), since its answer, its next fragment or the
/// room it frees cannot come sooner. [`low_cpu`](Self::low_cpu) and
/// iteration budgets are never stretched.
///
/// ```
/// use std::time::Duration;
/// use orcwire_shm::{ShmConfig, WaitStrategy};
///
/// // Spin up to 20 µs for each reply before sleeping on the futex.
/// let config = ShmConfig {
///     wait: WaitStrategy::spin_for(Duration::from_micros(20)),
///     ..ShmConfig::default()
/// };
/// assert_ne!(config.wait, ShmConfig::default().wait);
/// assert_eq!(ShmConfig::default().wait, WaitStrategy::balanced());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitStrategy {
    budget: SpinBudget,
}

impl WaitStrategy {
    /// Spins for 50 µs before sleeping: the peer's reply usually arrives
    /// while this side still spins, so a round trip never enters the
    /// kernel. Costs a core while traffic flows.
    pub const fn lowest_latency() -> Self {
        Self::spin_for(Duration::from_micros(50))
    }

    /// Spins for 5 µs, then sleeps: catches back-to-back messages without
    /// burning a core between bursts. The default.
    pub const fn balanced() -> Self {
        Self::spin_for(Duration::from_micros(5))
    }

    /// Sleeps at once: least CPU, a futex wake per message when idle.
    pub const fn low_cpu() -> Self {
        Self {
            budget: SpinBudget::None,
        }
    }

    /// Spins for `time`, then sleeps.
    pub const fn spin_for(time: Duration) -> Self {
        Self {
            budget: SpinBudget::Time(time),
        }
    }

    /// Polls `n` times, then sleeps (deterministic: use this under loom).
    pub const fn spin_iterations(n: u32) -> Self {
        Self {
            budget: SpinBudget::Iterations(n),
        }
    }

    internal! {
        /// The spin budget.
        const fn budget(&self) -> SpinBudget {
            self.budget
        }
    }

    /// This strategy with a time budget of at least `time`. A strategy
    /// that sleeps at once, or counts iterations, is kept as it is: the
    /// user asked for no spinning, or for a deterministic wait.
    pub(crate) fn at_least(self, time: Duration) -> Self {
        match self.budget {
            SpinBudget::Time(t) if t < time => Self::spin_for(time),
            _ => self,
        }
    }
}

impl Default for WaitStrategy {
    fn default() -> Self {
        Self::balanced()
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;

    #[test]
    fn presets_set_their_budgets() {
        assert_eq!(WaitStrategy::low_cpu().budget(), SpinBudget::None);
        let custom = WaitStrategy::spin_for(Duration::from_micros(20));
        assert_eq!(custom.budget(), SpinBudget::Time(Duration::from_micros(20)));
        assert_eq!(
            WaitStrategy::spin_iterations(7).budget(),
            SpinBudget::Iterations(7)
        );
        assert_eq!(WaitStrategy::default(), WaitStrategy::balanced());
    }

    #[test]
    fn at_least_only_lengthens_a_time_budget() {
        let long = Duration::from_micros(300);
        assert_eq!(WaitStrategy::balanced().at_least(long), WaitStrategy::spin_for(long));
        let spin = WaitStrategy::lowest_latency();
        assert_eq!(spin.at_least(Duration::from_micros(1)), spin);
        assert_eq!(WaitStrategy::low_cpu().at_least(long), WaitStrategy::low_cpu());
        let counted = WaitStrategy::spin_iterations(7);
        assert_eq!(counted.at_least(long), counted);
    }
}
