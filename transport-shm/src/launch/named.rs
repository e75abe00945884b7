//! The named flow: [`NamedOffer`] (controller) offers a connection under a
//! [`NamedRendezvous`] name; [`attach_named`] (executor) follows the name
//! to the controller's sealed memfd and attaches. With no socket between
//! them, each side watches the other's pidfd for liveness.
//!
//! Relies on: [`crate::named`] for the name and the way to the memfd, and
//! the pids each side writes into the segment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::LaunchError;
use crate::layout::{state, SegmentHeader};
use crate::liveness::pidfd_open;
use crate::mapping::SharedMapping;
use crate::named::NamedRendezvous;
use crate::segment::Segment;
use crate::transport::{required_size, ShmConfig, ShmTransport};

/// A connection offered under a name, for an executor that can only be
/// told a name: the name is a [`NamedRendezvous`] that leads the executor
/// to the connection's sealed memfd (so no peer can truncate the memory
/// under us), and liveness comes from each side's pidfd of the other.
/// Give the executor [`name`](Self::name); it calls [`attach_named`].
/// Both sides unlink the name as soon as the executor is attached. See
/// [`NamedRendezvous`] for what the flow needs (same user, a dumpable
/// controller, a `/proc` that shows its fds) and for crash clean-up.
///
/// ```
/// use std::time::Duration;
/// use orcwire_shm::{attach_named, NamedOffer, ShmConfig};
///
/// let offer = NamedOffer::create(ShmConfig::default())?;
/// let name = offer.name().to_owned();
/// let exec = std::thread::spawn(move || attach_named(&name, ShmConfig::default()));
/// let controller_end = offer.wait_attached(Duration::from_secs(5))?;
/// let executor_end = exec.join().unwrap()?;
/// assert_eq!(controller_end.epoch(), executor_end.epoch());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct NamedOffer {
    rendezvous: NamedRendezvous,
    transport: Arc<ShmTransport>,
}

impl NamedOffer {
    /// Creates the connection's memfd segment, the controller's end in it,
    /// and the rendezvous name leading to it.
    ///
    /// # Errors
    /// [`LaunchError::Segment`] when the segment cannot be created;
    /// [`LaunchError::Named`] when the name cannot; [`LaunchError::Layout`]
    /// for a bad `config`.
    pub fn create(config: ShmConfig) -> Result<Self, LaunchError> {
        let segment = Arc::new(Segment::create(required_size(&config))?);
        let rendezvous = NamedRendezvous::create(&segment)?;
        // The transport holds the segment, and so keeps its fd open for
        // the executor to find until it is dropped.
        let mapping: Arc<dyn SharedMapping> = segment;
        let transport = Arc::new(ShmTransport::create(mapping, config)?);
        Ok(Self {
            rendezvous,
            transport,
        })
    }

    /// The name to give the executor.
    pub fn name(&self) -> &str {
        self.rendezvous.name()
    }

    /// Waits (polling every millisecond) until an executor has attached,
    /// then unlinks the name and starts watching the executor's pid.
    /// On a timeout the name is unlinked too (dropping the offer removes
    /// it).
    ///
    /// # Errors
    /// [`LaunchError::Timeout`] when nobody attached in time;
    /// [`LaunchError::Named`] when unlinking fails.
    pub fn wait_attached(self, timeout: Duration) -> Result<Arc<ShmTransport>, LaunchError> {
        let deadline = Instant::now() + timeout;
        while self.transport.connection_state() & state::EXECUTOR_ATTACHED == 0 {
            if Instant::now() >= deadline {
                return Err(LaunchError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.rendezvous.unlink()?;
        watch_pid(&self.transport)?;
        Ok(self.transport)
    }
}

/// The executor's end of a [`NamedOffer`]: reads the rendezvous `name`
/// (checking owner and mode), opens the controller's memfd through
/// `/proc`, checks its seals and layout, attaches, unlinks the name, and
/// starts watching the controller's pid.
///
/// # Errors
/// [`LaunchError::Named`] when the name cannot be read or the segment
/// reached; [`LaunchError::Segment`] / [`LaunchError::Layout`] when the
/// segment is refused; [`LaunchError::Protocol`] when the segment's
/// controller is not the process the name named.
pub fn attach_named(name: &str, config: ShmConfig) -> Result<Arc<ShmTransport>, LaunchError> {
    let rendezvous = NamedRendezvous::open(name)?;
    let segment = Segment::from_fd(
        rendezvous.open_segment()?,
        std::mem::size_of::<SegmentHeader>(),
    )?;
    let mapping: Arc<dyn SharedMapping> = Arc::new(segment);
    let transport = Arc::new(ShmTransport::attach(mapping, config)?);
    rendezvous.unlink()?;
    if transport.peer_pid() != Some(rendezvous.controller_pid()) {
        orcwire::Transport::close(&*transport);
        return Err(LaunchError::Protocol(format!(
            "the segment behind {name} belongs to pid {:?}, not to pid {} that the name named",
            transport.peer_pid(),
            rendezvous.controller_pid()
        )));
    }
    watch_pid(&transport)?;
    Ok(transport)
}

/// Watches the pid the peer wrote into the segment. A pidfd turns
/// readable when its process exits; the watcher treats that as the
/// liveness channel hanging up.
fn watch_pid(transport: &Arc<ShmTransport>) -> Result<(), LaunchError> {
    let pid = transport
        .peer_pid()
        .ok_or_else(|| LaunchError::Protocol("the peer wrote no pid into the segment".into()))?;
    let pidfd = pidfd_open(pid)
        .map_err(|e| LaunchError::Protocol(format!("cannot watch peer pid {pid}: {e}")))?;
    transport.watch_peer(pidfd, None)?;
    Ok(())
}
