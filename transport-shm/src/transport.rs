//! [`ShmTransport`]: `orcwire::Transport` over a shared-memory segment.
//!
//! One segment, two rings: each side produces on its outbound ring and
//! consumes its inbound ring. The controller [`create`](ShmTransport::create)s
//! the segment (writes the layout); the executor
//! [`attach`](ShmTransport::attach)es to it (validates the layout).
//!
//! # Threads
//! * `send` may be called by any number of threads: a `Mutex` around the
//!   producer end serialises them, so a message (all its fragments) goes
//!   out whole. A sender that finds the ring full waits *holding* that
//!   mutex (the others queue behind it, in the order the lock grants).
//! * `recv` has one caller at a time (the endpoint guarantees it); its
//!   consumer end sits behind an uncontended `Mutex` for `Sync`.
//!
//! # Waking
//! Each side sleeps on its own futex word ([`crate::wait`]). After
//! publishing frames a sender notifies the peer's word for
//! [`waiting::DATA`]; after consuming frames a receiver notifies the
//! peer's word for [`waiting::SPACE`]. `interrupt_recv`, `close` and
//! `mark_peer_dead` set a local flag first and then bump and wake our own
//! word, so every blocked call here re-checks and returns.
//!
//! # Ending
//! * [`close`](Transport::close) sets our `*_DISCONNECTING` bit in the
//!   state word after our last frame: the peer drains what we sent, then
//!   its `recv` returns `PeerHungUp` and its `send` fails the same way.
//! * [`mark_peer_dead`](ShmTransport::mark_peer_dead), called by the
//!   liveness watcher, sets a local flag: nothing the dead peer's memory
//!   says is consulted again, and every call returns `PeerDied`.
//! * A protocol violation by the peer (a corrupt index or frame) closes
//!   the transport and is reported as `Protocol` by every later call.
//!
//! Loom (`loom-tests/tests/handshake.rs`) checks the hang-up handshake
//! over the state word with two threads as the two processes. It cannot
//! check process death (covered by the `kill -9` tests in
//! `tests/shm_process.rs`), nor a missing `Release` on the state word:
//! loom makes every `Mutex` operation a `SeqCst` point, and `send`/`recv`
//! each take their end's lock, so such a bug would be invisible to it; the
//! `SYNC POINT` comments carry that argument instead.
//!
//! Relies on: [`crate::layout`] (init/validate, header words),
//! [`crate::ring`], [`crate::wait`], and the `sync` shim.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use crossbeam_utils::CachePadded;
use orcwire::transport::{Received, Transport, TransportError};
use orcwire::{Message, Opcode};

use crate::layout::{
    self, state, waiting, Attached, HeaderWords, LayoutError, RingCapacity, SegmentLayout,
    SharedRef, Side, DEFAULT_MAX_MESSAGE_SIZE,
};
use crate::liveness::{LivenessError, LivenessWatcher};
use crate::mapping::SharedMapping;
use crate::ring::{OutgoingMessage, RingConsumer, RingError, RingProducer, WriteStatus};
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Mutex, Ordering};
use crate::wait::{WaitOutcome, WaitStrategy, WakeWord};

/// Local flag: [`Transport::close`] was called (or a fault closed us).
const CLOSED: u32 = 1 << 0;
/// Local flag: the liveness watcher reported the peer dead.
const PEER_DEAD: u32 = 1 << 1;
/// Local flag: the peer broke the protocol.
const FAILED: u32 = 1 << 2;

/// Settings of a shared-memory transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmConfig {
    /// How blocked sends and receives wait.
    pub wait: WaitStrategy,
    /// Largest message, in bytes. The controller writes it into the
    /// segment; an executor whose own limit is lower refuses to attach.
    pub max_message_size: u64,
    /// Bytes of each ring (one per direction). Used by the controller;
    /// an executor takes the sizes from the segment.
    pub ring_capacity: RingCapacity,
}

impl Default for ShmConfig {
    fn default() -> Self {
        Self {
            wait: WaitStrategy::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            ring_capacity: RingCapacity::default(),
        }
    }
}

/// Bytes a mapping needs for a segment made with `config`.
///
/// ```
/// use orcwire_shm::{required_size, ShmConfig};
/// assert!(required_size(&ShmConfig::default()) > 2 << 20);
/// ```
pub fn required_size(config: &ShmConfig) -> usize {
    match SegmentLayout::compute(config.ring_capacity.get(), config.max_message_size) {
        Ok(layout) => layout.segment_size,
        // Only an address-space overflow gets here; no mapping can be that
        // large, so `create` reports the same error.
        Err(_) => usize::MAX,
    }
}

/// A [`Transport`] over a shared-memory segment; see the [module
/// docs](self).
///
/// ```
/// use std::sync::Arc;
/// use orcwire::{Opcode, Received, Transport};
/// use orcwire_shm::{required_size, HeapMapping, SharedMapping, ShmConfig, ShmTransport};
///
/// let config = ShmConfig::default();
/// let mapping: Arc<dyn SharedMapping> = Arc::new(HeapMapping::new(required_size(&config)).unwrap());
/// let controller = ShmTransport::create(Arc::clone(&mapping), config).unwrap();
/// let executor = ShmTransport::attach(mapping, config).unwrap();
///
/// controller.send(Opcode::CallWrapper, 1, 42, b"args").unwrap();
/// match executor.recv(None).unwrap() {
///     Received::Message(m) => assert_eq!((m.seq, m.tag, m.payload.as_slice()), (1, 42, &b"args"[..])),
///     other => panic!("{other:?}"),
/// }
/// ```
pub struct ShmTransport {
    mapping: Arc<dyn SharedMapping>,
    side: Side,
    attached: Attached,
    wait: WaitStrategy,
    state: SharedRef<CachePadded<AtomicU64>>,
    /// Our futex word: our receiver and our blocked sender sleep here.
    own: WakeWord,
    /// The peer's futex word: we wake it.
    peer: WakeWord,
    producer: Mutex<RingProducer>,
    consumer: Mutex<RingConsumer>,
    /// [`CLOSED`], [`PEER_DEAD`], [`FAILED`]; only ever set.
    local: AtomicU32,
    /// Sticky until a `recv` consumes it.
    interrupted: AtomicBool,
    /// The sender holding `producer` waits for the peer to make room:
    /// another sender that finds the producer taken is then waiting on the
    /// peer too, and says so (`on_wait`). Written only by that holder.
    room_wait: AtomicBool,
    /// The error of the first of [`CLOSED`], [`PEER_DEAD`], [`FAILED`];
    /// set (under the lock) before the flag.
    first_error: Mutex<Option<TransportError>>,
    /// The liveness watcher installed by [`watch_peer`](Self::watch_peer);
    /// dropped (stopped) with the transport.
    watcher: Mutex<Option<LivenessWatcher>>,
}

impl fmt::Debug for ShmTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmTransport")
            .field("side", &self.side)
            .field("layout", &self.attached.layout)
            .field("epoch", &self.attached.epoch)
            .field("local", &self.local.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ShmTransport {
    /// The controller's end: initialises a fresh segment in `mapping`
    /// (which no executor uses yet) and joins it.
    ///
    /// # Errors
    /// [`LayoutError::MappingTooSmall`] when the mapping is shorter than
    /// [`required_size`]`(&config)`.
    pub fn create(mapping: Arc<dyn SharedMapping>, config: ShmConfig) -> Result<Self, LayoutError> {
        let layout = SegmentLayout::compute(config.ring_capacity.get(), config.max_message_size)?;
        let attached = layout::init(&mapping, &layout)?;
        Self::join(mapping, Side::Controller, attached, config.wait)
    }

    /// The executor's end: validates the segment the controller
    /// initialised in `mapping` and joins it. Sizes come from the segment;
    /// `config` supplies the wait strategy and this side's message limit.
    ///
    /// # Errors
    /// A [`LayoutError`] when the segment is missing, from another version,
    /// inconsistent, allows larger messages than `config`, or already has
    /// an executor.
    pub fn attach(mapping: Arc<dyn SharedMapping>, config: ShmConfig) -> Result<Self, LayoutError> {
        let attached = layout::validate(&mapping, config.max_message_size)?;
        // SAFETY: `validate` checked the mapping holds a whole header.
        let words = unsafe { HeaderWords::new(&mapping) };
        // SYNC POINT: segment initialised (again): the epoch read here must
        // be the one `validate` saw after its `Acquire` of the magic.
        let before = words
            .state
            .fetch_or(state::EXECUTOR_ATTACHED, Ordering::AcqRel);
        if before & state::EXECUTOR_ATTACHED != 0 {
            return Err(LayoutError::AlreadyAttached);
        }
        if state::epoch(before) != attached.epoch {
            return Err(LayoutError::Invalid(
                "the controller re-initialised the segment while this side attached; attach again"
                    .into(),
            ));
        }
        Self::join(mapping, Side::Executor, attached, config.wait)
    }

    fn join(
        mapping: Arc<dyn SharedMapping>,
        side: Side,
        attached: Attached,
        wait: WaitStrategy,
    ) -> Result<Self, LayoutError> {
        let layout = attached.layout;
        let limit = layout.max_message_size;
        let producer = RingProducer::new(Arc::clone(&mapping), layout.ring_from(side), limit)?;
        let consumer =
            RingConsumer::new(Arc::clone(&mapping), layout.ring_from(side.peer()), limit)?;
        // SAFETY: `init`/`validate` checked the mapping holds a whole header.
        let HeaderWords {
            magic: _,
            state,
            sides: [controller, executor],
        } = unsafe { HeaderWords::new(&mapping) };
        let (own, peer) = match side {
            Side::Controller => (controller, executor),
            Side::Executor => (executor, controller),
        };
        own.pid.store(std::process::id(), Ordering::Relaxed);
        Ok(Self {
            mapping: Arc::clone(&mapping),
            side,
            attached,
            wait,
            state,
            own: WakeWord::new(own),
            peer: WakeWord::new(peer),
            producer: Mutex::new(producer),
            consumer: Mutex::new(consumer),
            local: AtomicU32::new(0),
            interrupted: AtomicBool::new(false),
            room_wait: AtomicBool::new(false),
            first_error: Mutex::new(None),
            watcher: Mutex::new(None),
        })
    }

    /// Watches the peer process: when `sock` (our end of the liveness
    /// socket) hangs up or `pidfd` turns readable, the transport is
    /// [marked dead](Self::mark_peer_dead), which wakes every waiter. The
    /// watcher lives as long as the transport.
    ///
    /// [`crate::launch`] calls this for every connection it makes.
    ///
    /// # Errors
    /// [`LivenessError`] when the watcher thread cannot be started.
    pub fn watch_peer(
        self: &Arc<Self>,
        sock: std::os::fd::OwnedFd,
        pidfd: Option<std::os::fd::OwnedFd>,
    ) -> Result<(), LivenessError> {
        // Weak: the transport owns the watcher, so a strong reference in
        // its callback would keep both alive forever.
        let weak = Arc::downgrade(self);
        let watcher = LivenessWatcher::spawn(
            sock,
            pidfd,
            Box::new(move || {
                if let Some(t) = weak.upgrade() {
                    t.mark_peer_dead();
                }
            }),
        )?;
        if let Some(old) = self.watcher.lock().replace(watcher) {
            old.stop();
        }
        Ok(())
    }

    /// The shared bytes under this transport. The peer can write them at
    /// any time; for diagnostics and fault-injection tests.
    pub fn mapping(&self) -> &Arc<dyn SharedMapping> {
        &self.mapping
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The layout, as read when this end joined.
    pub fn layout(&self) -> &SegmentLayout {
        &self.attached.layout
    }

    /// The connection epoch this end joined.
    pub fn epoch(&self) -> u32 {
        self.attached.epoch
    }

    /// The pid the peer wrote into the segment, if any. A hint (the peer
    /// can write anything there), e.g. for a pidfd-based liveness check.
    pub fn peer_pid(&self) -> Option<u32> {
        let pid = self.peer.block().pid.load(Ordering::Relaxed);
        (pid != 0).then_some(pid)
    }

    /// Records that the peer process died (called by the liveness
    /// watcher). Sets a local flag — the dead peer's memory is not trusted
    /// — and wakes every waiter: blocked and later calls return
    /// [`TransportError::PeerDied`] (unless the transport had already
    /// failed or been closed, or the peer had hung up first) and
    /// [`peer_died`](Transport::peer_died) becomes true.
    pub fn mark_peer_dead(&self) {
        // SYNC POINT: local flags. Pairs with `record`. A peer that exits
        // after the connection was closed cleanly — by us, or by itself
        // (its disconnecting bit is set: it may exit before our own close
        // in the hang-up handshake) — did not die on us: later calls keep
        // reporting the clean close. Its bit already ended every wait.
        if self.local.load(Ordering::Acquire) & CLOSED != 0 || self.peer_disconnecting() {
            self.own.wake_all();
            return;
        }
        self.record(PEER_DEAD, TransportError::PeerDied);
        self.own.wake_all();
    }

    /// The raw state word: [`state`] bits and epoch. Untrusted.
    pub fn connection_state(&self) -> u64 {
        // SYNC POINT: disconnect. Pairs with the `Release` in `shut`.
        self.state.load(Ordering::Acquire)
    }

    /// Whether the peer set its disconnecting bit.
    pub fn peer_disconnecting(&self) -> bool {
        self.connection_state() & self.side.peer().disconnecting_bit() != 0
    }

    /// Records the first terminal error and sets `flag`.
    fn record(&self, flag: u32, err: TransportError) -> TransportError {
        let mut first = self.first_error.lock();
        let first = first.get_or_insert(err);
        // SYNC POINT: local flags. Set under the lock after the error, so a
        // thread that sees the flag (`Acquire`) and takes the lock finds it.
        self.local.fetch_or(flag, Ordering::Release);
        first.clone()
    }

    fn terminal_error(&self) -> TransportError {
        self.first_error
            .lock()
            .clone()
            .unwrap_or(TransportError::Closed)
    }

    fn is_terminated(&self) -> bool {
        // SYNC POINT: local flags. Pairs with `record`.
        self.local.load(Ordering::Acquire) != 0
    }

    /// A ring error: `TooLarge` is the caller's; anything else is the
    /// peer's fault and closes the transport.
    fn ring_failed(&self, err: RingError) -> TransportError {
        let text = match err {
            RingError::TooLarge { size, limit } => return TransportError::TooLarge { size, limit },
            RingError::Corrupt(what) => format!("corrupt shared ring: {what}"),
            other => other.to_string(),
        };
        let err = self.record(FAILED, TransportError::Protocol(text));
        self.shut();
        err
    }

    /// Checks the shared state: epoch unchanged, and whether the peer is
    /// disconnecting.
    fn peer_state(&self) -> Result<bool, TransportError> {
        // SYNC POINT: disconnect. Pairs with the peer's `Release` setting
        // of its disconnecting bit in `shut`: seeing the bit makes every
        // frame it published before visible.
        let word = self.state.load(Ordering::Acquire);
        if state::epoch(word) != self.attached.epoch {
            let err = self.record(
                FAILED,
                TransportError::Protocol(format!(
                    "the segment was re-initialised (epoch {} instead of {})",
                    state::epoch(word),
                    self.attached.epoch
                )),
            );
            self.shut();
            return Err(err);
        }
        Ok(word & self.side.peer().disconnecting_bit() != 0)
    }

    fn check_send(&self) -> Result<(), TransportError> {
        if self.is_terminated() {
            return Err(self.terminal_error());
        }
        if self.peer_state()? {
            return Err(TransportError::PeerHungUp);
        }
        Ok(())
    }

    /// Tells the peer we are gone and wakes everyone.
    fn shut(&self) {
        // SYNC POINT: disconnect. Pairs with the peer's `Acquire` load in
        // `peer_state`.
        self.state
            .fetch_or(self.side.disconnecting_bit(), Ordering::Release);
        self.own.wake_all();
        self.peer.wake_all();
    }

    /// One `try_recv`, waking a peer waiting for space if it freed some.
    fn try_take(&self, consumer: &mut RingConsumer) -> Result<Option<Message>, TransportError> {
        let result = consumer.try_recv();
        if consumer.take_freed_space() {
            self.peer.notify(waiting::SPACE);
        }
        result.map_err(|e| self.ring_failed(e))
    }
}

impl Transport for ShmTransport {
    fn send_until(
        &self,
        opcode: Opcode,
        seq: u64,
        tag: u64,
        payload: &[u8],
        deadline: Option<Instant>,
        on_wait: &dyn Fn(),
    ) -> Result<(), TransportError> {
        let limit = self.attached.layout.max_message_size;
        if payload.len() as u64 > limit {
            return Err(TransportError::TooLarge {
                size: payload.len() as u64,
                limit,
            });
        }
        // Another sender may hold the producer while it waits for room:
        // wait for it only until the deadline.
        // A sender that finds the producer taken waits on the peer only if
        // the holder does (it waits for room); one merely writing a frame
        // lets go soon.
        let behind_holder = || {
            // SYNC POINT: room wait. Pairs with the holder's Release stores.
            if self.room_wait.load(Ordering::Acquire) {
                on_wait();
            }
        };
        let Some(mut producer) = crate::sync::lock_until(&self.producer, deadline, &behind_holder)
        else {
            return Err(TransportError::TimedOut);
        };
        let mut msg = OutgoingMessage::new(opcode, seq, tag, payload);
        loop {
            self.check_send()?;
            let status = producer
                .try_write(&mut msg)
                .map_err(|e| self.ring_failed(e))?;
            if producer.publish() {
                self.peer.notify(waiting::DATA);
            }
            if status == WriteStatus::Complete {
                return Ok(());
            }
            // The deadline holds only until the first frame is out: a
            // message half written must be finished.
            let deadline = if msg.is_started() { None } else { deadline };
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(TransportError::TimedOut);
            }
            // SYNC POINT: room wait (Release half, see `behind_holder`).
            self.room_wait.store(true, Ordering::Release);
            on_wait();
            // Ring full: sleep on our word until the peer frees space (it
            // bumps our word when it sees our SPACE announcement) or a
            // local event wakes us.
            let producer = &mut *producer;
            let msg = &msg;
            let outcome = self
                .own
                .wait_until(&self.wait, waiting::SPACE, deadline, || {
                    self.check_send()?;
                    // A corrupt head is reported by `try_write` next round.
                    Ok(match producer.can_write(msg) {
                        Ok(false) => Poll::Pending,
                        Ok(true) | Err(_) => Poll::Ready(()),
                    })
                });
            self.room_wait.store(false, Ordering::Release);
            if outcome? == WaitOutcome::TimedOut {
                return Err(TransportError::TimedOut);
            }
        }
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Received, TransportError> {
        let mut consumer = self.consumer.lock();
        loop {
            if self.is_terminated() {
                return Err(self.terminal_error());
            }
            // SYNC POINT: local flags. Pairs with `interrupt_recv`. A load
            // first: no read-modify-write per receive.
            if self.interrupted.load(Ordering::Relaxed)
                && self.interrupted.swap(false, Ordering::Acquire)
            {
                return Ok(Received::Interrupted);
            }
            if let Some(m) = self.try_take(&mut consumer)? {
                return Ok(Received::Message(m));
            }
            if self.peer_state()? {
                if crate::sync::is_broken("handshake") {
                    // Loom must-fail variant: hang up without draining what
                    // the peer published before its bit.
                    return Err(TransportError::PeerHungUp);
                }
                // Everything the peer published before its bit is visible.
                if let Some(m) = self.try_take(&mut consumer)? {
                    return Ok(Received::Message(m));
                }
                if consumer.has_frames() {
                    continue;
                }
                return Err(TransportError::PeerHungUp);
            }
            let consumer = &*consumer;
            let outcome = self
                .own
                .wait_until(&self.wait, waiting::DATA, deadline, || {
                    // SYNC POINT: local flags (interrupt) and SYNC POINT:
                    // disconnect (the state word); `has_frames` is the
                    // frames published point. The loop acts on what it saw.
                    let word = self.state.load(Ordering::Acquire);
                    let ready = self.is_terminated()
                        || self.interrupted.load(Ordering::Acquire)
                        || consumer.has_frames()
                        || word & self.side.peer().disconnecting_bit() != 0
                        || state::epoch(word) != self.attached.epoch;
                    Ok::<_, Infallible>(if ready {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    })
                });
            match outcome {
                Ok(WaitOutcome::Ready(())) => {}
                Ok(WaitOutcome::TimedOut) => return Ok(Received::TimedOut),
                Err(never) => match never {},
            }
        }
    }

    fn interrupt_recv(&self) {
        // SYNC POINT: local flags. Pairs with the `Acquire` swap in `recv`.
        self.interrupted.store(true, Ordering::Release);
        self.own.wake_all();
    }

    fn close(&self) {
        self.record(CLOSED, TransportError::Closed);
        self.shut();
    }

    fn peer_died(&self) -> bool {
        // SYNC POINT: local flags. Pairs with `record`.
        self.local.load(Ordering::Acquire) & PEER_DEAD != 0
    }

    fn name(&self) -> &'static str {
        "shm"
    }
}

impl Drop for ShmTransport {
    /// Dropping an end closes it, so the peer sees the connection end as
    /// it would see end-of-file on a stream.
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;
    use crate::mapping::HeapMapping;

    fn pair(config: ShmConfig) -> (ShmTransport, ShmTransport) {
        let mapping: Arc<dyn SharedMapping> =
            Arc::new(HeapMapping::new(required_size(&config)).unwrap());
        let c = ShmTransport::create(Arc::clone(&mapping), config).unwrap();
        let e = ShmTransport::attach(mapping, config).unwrap();
        (c, e)
    }

    #[test]
    fn second_executor_is_refused() {
        let config = ShmConfig::default();
        let mapping: Arc<dyn SharedMapping> =
            Arc::new(HeapMapping::new(required_size(&config)).unwrap());
        let _c = ShmTransport::create(Arc::clone(&mapping), config).unwrap();
        let _e = ShmTransport::attach(Arc::clone(&mapping), config).unwrap();
        assert_eq!(
            ShmTransport::attach(mapping, config).err(),
            Some(LayoutError::AlreadyAttached)
        );
    }

    #[test]
    fn short_mapping_is_refused() {
        let config = ShmConfig::default();
        let mapping: Arc<dyn SharedMapping> =
            Arc::new(HeapMapping::new(required_size(&config) - 4096).unwrap());
        assert!(matches!(
            ShmTransport::create(mapping, config),
            Err(LayoutError::MappingTooSmall { .. })
        ));
    }

    #[test]
    fn pids_and_sides() {
        let (c, e) = pair(ShmConfig::default());
        assert_eq!(c.side(), Side::Controller);
        assert_eq!(e.side(), Side::Executor);
        assert_eq!(c.peer_pid(), Some(std::process::id()));
        assert_eq!(e.peer_pid(), Some(std::process::id()));
        assert_eq!(c.epoch(), e.epoch());
        assert_eq!(c.name(), "shm");
    }

    #[test]
    fn close_is_seen_by_the_peer_after_draining() {
        let (c, e) = pair(ShmConfig::default());
        c.send(Opcode::Hangup, 0, 0, b"").unwrap();
        c.close();
        assert!(e.peer_disconnecting());
        match e.recv(None).unwrap() {
            Received::Message(m) => assert_eq!(m.opcode, Opcode::Hangup),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.recv(None).unwrap_err(), TransportError::PeerHungUp);
        assert_eq!(
            e.send(Opcode::Hangup, 0, 0, b"").unwrap_err(),
            TransportError::PeerHungUp
        );
        assert_eq!(
            c.send(Opcode::Hangup, 0, 0, b"").unwrap_err(),
            TransportError::Closed
        );
        e.close();
        assert_eq!(
            c.connection_state() & crate::layout::state::FLAGS,
            crate::layout::state::FLAGS,
            "both disconnecting bits and the attach bit, nothing else"
        );
    }

    #[test]
    fn too_large_is_the_callers_error_not_fatal() {
        let config = ShmConfig {
            max_message_size: 100,
            ..ShmConfig::default()
        };
        let (c, e) = pair(config);
        assert_eq!(
            c.send(Opcode::Result, 0, 0, &[0; 101]).unwrap_err(),
            TransportError::TooLarge {
                size: 101,
                limit: 100
            }
        );
        c.send(Opcode::Result, 1, 0, &[0; 100]).unwrap();
        assert!(matches!(e.recv(None).unwrap(), Received::Message(m) if m.seq == 1));
    }
}
