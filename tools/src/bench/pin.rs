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

/// A controller and an executor in this process over a heap-backed
/// shared-memory segment, each side's threads pinned to its own CPU, each
/// side answering `echo` calls from the other with the argument buffer
/// itself (no copy, as the bench's echo): the set-up of the `pinned_*` examples,
/// which isolate one path for a profiler (`perf record -a` then separates
/// the two sides by CPU).
pub struct PinnedEchoPair {
    /// The controller's endpoint (its threads run on `cpus.controller`).
    pub controller: orcwire::Endpoint,
    /// The executor's endpoint (its threads run on `cpus.child`).
    pub executor: orcwire::Endpoint,
    /// The executor's `echo` function (the controller calls it).
    pub echo: orcwire::HandlerTag,
    /// The controller's `ctl_echo` handler (the executor calls it).
    pub ctl_echo: orcwire::HandlerTag,
    /// Where each side runs.
    pub cpus: Pinning,
}

impl PinnedEchoPair {
    /// Connects the pair with `config` on both sides. Pins the calling
    /// thread to the controller's CPU; the executor connects from a thread
    /// pinned to the other CPU, so its workers start there.
    ///
    /// # Errors
    /// Fewer than two allowed CPUs, or the text of whatever failed to
    /// connect.
    pub fn connect(config: orcwire_shm::ShmConfig) -> Result<Self, String> {
        use std::sync::Arc;

        use orcwire::{ControllerBuilder, ExecutorBuilder, Transport};
        use orcwire_shm::{required_size, HeapMapping, SharedMapping, ShmTransport};

        let cpus = Pinning::choose()
            .ok_or_else(|| format!("needs two CPUs to pin to; allowed: {:?}", allowed_cpus()))?;
        let mapping: Arc<dyn SharedMapping> =
            Arc::new(HeapMapping::new(required_size(&config)).map_err(|e| e.to_string())?);
        let c: Arc<dyn Transport> = Arc::new(
            ShmTransport::create(Arc::clone(&mapping), config).map_err(|e| e.to_string())?,
        );
        let e: Arc<dyn Transport> =
            Arc::new(ShmTransport::attach(mapping, config).map_err(|e| e.to_string())?);
        let executor = std::thread::spawn(move || {
            pin_current_thread(cpus.child)?;
            ExecutorBuilder::new()
                .function("echo", |args, responder| responder.respond(args))
                .controller_handler("ctl_echo")
                .connect(e)
                .map_err(|e| e.to_string())
        });
        pin_current_thread(cpus.controller)?;
        let controller = ControllerBuilder::new()
            .handler("ctl_echo", |args, responder| responder.respond(args))
            .connect(c)
            .map_err(|e| e.to_string())?;
        let executor = executor
            .join()
            .map_err(|_| "the executor's thread panicked".to_string())??;
        let echo = controller
            .function_tag("echo")
            .ok_or("the executor did not publish echo")?;
        let ctl_echo = executor
            .handler_tag("ctl_echo")
            .ok_or("the controller did not publish ctl_echo")?;
        Ok(Self {
            controller,
            executor,
            echo,
            ctl_echo,
            cpus,
        })
    }

    /// Disconnects both sides.
    pub fn disconnect(self) {
        self.controller.disconnect();
        self.executor.disconnect();
    }
}
