//! Pinning the two processes of a case to different CPUs.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs this process may run on, ascending (empty when unknown).
pub fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pins the calling thread (and the threads it starts later, which
/// inherit the mask) to `cpu`.
///
/// # Errors
/// The OS error text when the CPU is out of range or not allowed.
pub fn pin_current_thread(cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("pinning to CPU {cpu}: {e}"))
}

/// Where the controller and the child run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinning {
    /// The controller's CPU.
    pub controller: usize,
    /// The child's CPU.
    pub child: usize,
}

impl Pinning {
    /// The first two allowed CPUs, when there are at least two.
    pub fn choose() -> Option<Self> {
        match allowed_cpus().as_slice() {
            [a, b, ..] => Some(Self {
                controller: *a,
                child: *b,
            }),
            _ => None,
        }
    }
}
