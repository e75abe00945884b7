//! [`ShmTransport`]: `orcwire::Transport` over a shared-memory segment.
//!
//! One segment, two rings: each side produces on its outbound ring and
//! consumes its inbound ring. The controller [`create`](ShmTransport::create)s
//! the segment (writes the layout); the executor
//! [`attach`](ShmTransport::attach)es to it (validates the layout). The
//! type's docs say what callers may rely on (threads, how a connection
//! ends); this module's docs say how it is built.
//!
//! # Waking
//! Each side sleeps on its own futex word ([`crate::wait`]). After
//! publishing frames a sender notifies the peer's word for
//! [`waiting::DATA`](crate::layout::waiting::DATA); after consuming frames
//! a receiver notifies the peer's word for
//! [`waiting::SPACE`](crate::layout::waiting::SPACE). `interrupt_recv`,
//! `close` and `mark_peer_dead` set a local flag first and then bump and
//! wake our own word, so every blocked call here re-checks and returns.
//!
//! Loom (`loom-tests/tests/handshake.rs`) checks the hang-up handshake
//! over the state word with two threads as the two processes. It cannot
//! check process death (covered by the `kill -9` tests in
//! `tests/shm_process.rs`), nor a missing `Release` on the state word:
//! loom makes every `Mutex` operation a `SeqCst` point, and `send`/`recv`
//! each take their end's lock (an `EndLock`, which is a loom `Mutex` under
//! loom), so such a bug would be invisible to it; the `SYNC POINT`
//! comments carry that argument instead.
//!
//! # Files
//! * `mod.rs`: the type, joining a segment, accessors.
//! * `config.rs`: [`ShmConfig`] and [`required_size`].
//! * `ending.rs`: local flags, the first terminal error, the state word
//!   (disconnecting bits, epoch), peer death.
//! * `send_recv.rs`: the `Transport` implementation.
//!
//! Relies on: [`crate::layout`] (init/validate, header words),
//! [`crate::ring`], [`crate::wait`], and the `sync` shim.

mod config;
mod ending;
mod send_recv;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use orcwire::transport::{Transport, TransportError};

pub use config::{required_size, ShmConfig};

use crate::layout::{
    self, state, Attached, HeaderWords, LayoutError, SegmentLayout, SharedRef, Side,
};
use crate::liveness::{LivenessError, LivenessWatcher};
use crate::mapping::SharedMapping;
use crate::ring::{RingConsumer, RingPeek, RingProducer};
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, EndLock, Mutex, Ordering};
use crate::wait::{WaitStrategy, WakeWord};

/// Local flag: [`Transport::close`] was called (or a fault closed us).
const CLOSED: u32 = 1 << 0;
/// Local flag: the liveness watcher reported the peer dead.
const PEER_DEAD: u32 = 1 << 1;
/// Local flag: the peer broke the protocol.
const FAILED: u32 = 1 << 2;

/// Messages from this size on count as large transfers for the spin
/// budget ([`ShmTransport::strategy`]).
const BULK_MIN: usize = 16 << 10;
/// Bytes a side copies per nanosecond, at least, for the spin budget after
/// a large transfer (4 GB/s: below one core's `memcpy` here, so the budget
/// covers the peer's copy with room to spare).
const BULK_BYTES_PER_NS: usize = 4;
/// The longest spin budget a large transfer earns (a 4 MiB message).
const BULK_MAX_SPIN: Duration = Duration::from_millis(1);

/// A [`Transport`] over a shared-memory segment.
///
/// # Threads
/// * `send` may be called by any number of threads: a lock around the
///   producer end serialises them, so a message (all its fragments) goes
///   out whole. A sender that finds the ring full waits *holding* that
///   lock (the others queue behind it: they spin briefly, then sleep).
/// * `recv` has one caller at a time (the endpoint guarantees it); its
///   consumer end sits behind an uncontended lock for `Sync`.
/// * Both locks are `EndLock`s (`orcwire-sync`): their uncontended
///   release is a plain store, so a message costs one locked instruction
///   per end instead of two, and the release does not wait for the frame
///   just written to reach the peer's core.
///
/// # Ending
/// * [`close`](Transport::close) sets our `*_DISCONNECTING` bit in the
///   state word after our last frame: the peer drains what we sent, then
///   its `recv` returns `PeerHungUp` and its `send` fails the same way.
/// * [`mark_peer_dead`](ShmTransport::mark_peer_dead), called by the
///   liveness watcher, sets a local flag: nothing the dead peer's memory
///   says is consulted again, and every call returns `PeerDied`.
/// * A protocol violation by the peer (a corrupt index or frame) closes
///   the transport and is reported as `Protocol` by every later call.
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
    producer: EndLock<RingProducer>,
    consumer: EndLock<RingConsumer>,
    /// The inbound ring's next slot, read without the consumer's lock by
    /// `try_recv`'s emptiness hint (only a hint: a wrong one, which only
    /// the peer could cause, skips a look or takes the checked path).
    inbound: RingPeek,
    /// [`CLOSED`], [`PEER_DEAD`], [`FAILED`]; only ever set.
    local: AtomicU32,
    /// Sticky until a `recv` consumes it.
    interrupted: AtomicBool,
    /// The sender holding `producer` waits for the peer to make room:
    /// another sender that finds the producer taken is then waiting on the
    /// peer too, and says so (`on_wait`). Written only by that holder.
    room_wait: AtomicBool,
    /// Length of the last message this side sent or received if it was
    /// large (at least [`BULK_MIN`] bytes), else 0: the waits that follow
    /// a large transfer spin for about the time the peer needs to copy it
    /// (see [`ShmTransport::strategy`]).
    bulk: AtomicUsize,
    /// Whether the last message received had to be waited for: the peer
    /// then sends one message at a time and waits for the answer, so what
    /// we publish next is handed over (see `RingProducer::publish_with`).
    /// A message already there when we looked means the peer is ahead of
    /// us: it is busy, and handing over would only cost. Only a hint.
    in_step: AtomicBool,
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
        let inbound_region = layout.ring_from(side.peer());
        let consumer = RingConsumer::new(Arc::clone(&mapping), inbound_region, limit)?;
        let inbound = RingPeek::new(&mapping, inbound_region)?;
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
            producer: EndLock::new(producer),
            consumer: EndLock::new(consumer),
            inbound,
            local: AtomicU32::new(0),
            interrupted: AtomicBool::new(false),
            room_wait: AtomicBool::new(false),
            bulk: AtomicUsize::new(0),
            in_step: AtomicBool::new(true),
            first_error: Mutex::new(None),
            watcher: Mutex::new(None),
        })
    }

    /// Watches the peer process: when `sock` (our end of the liveness
    /// socket) hangs up or `pidfd` turns readable, the transport is
    /// [marked dead](Self::mark_peer_dead), which wakes every waiter. The
    /// watch lives as long as the transport; one thread per process
    /// (`orcwire-liveness`, over `epoll`) watches every connection.
    ///
    /// Every connection made by [`ExecutorCommand`](crate::ExecutorCommand),
    /// [`ShmListener`](crate::ShmListener) or [`NamedOffer`](crate::NamedOffer)
    /// is watched so already.
    ///
    /// # Errors
    /// [`LivenessError`] when the process's watcher thread cannot be
    /// started or the fds cannot be added to its `epoll` set.
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
}

/// For orcwire's own tests and loom models.
#[cfg(any(test, feature = "internals", orcwire_loom))]
impl ShmTransport {
    internal! {
        /// Which end this is.
        fn side(&self) -> Side {
            self.side
        }
    }

    internal! {
        /// The layout, as read when this end joined.
        fn layout(&self) -> &SegmentLayout {
            &self.attached.layout
        }
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
    use orcwire::transport::Received;
    use orcwire::Opcode;

    use super::*;
    use crate::layout::waiting;
    use crate::mapping::HeapMapping;
    use std::time::Instant;

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

    /// `send_until`'s single-frame fast path hands every case it does not
    /// take to the full path: the ring's end (padding), a full ring (a
    /// wait for room), a fragmented message, an oversized one, a peer that
    /// hung up. Every message arrives whole and in order.
    #[test]
    fn the_single_frame_fast_path_leaves_every_other_case_to_the_full_path() {
        let config = ShmConfig {
            max_message_size: 4096,
            ring_capacity: crate::layout::RingCapacity::new(1024).unwrap(),
            wait: WaitStrategy::balanced(),
        };
        let (c, e) = pair(config);
        let sizes: Vec<usize> = (0..400)
            .map(|i| (i * 37) % 300)
            .chain([4096, 700])
            .collect();
        let reader = {
            let sizes = sizes.clone();
            std::thread::spawn(move || {
                for (i, &len) in sizes.iter().enumerate() {
                    match e
                        .recv(Some(Instant::now() + Duration::from_secs(10)))
                        .unwrap()
                    {
                        Received::Message(m) => {
                            assert_eq!(m.seq, i as u64);
                            assert_eq!(m.payload.as_slice(), &vec![i as u8; len][..]);
                        }
                        other => panic!("message {i}: {other:?}"),
                    }
                }
                e
            })
        };
        for (i, &len) in sizes.iter().enumerate() {
            let deadline = Some(Instant::now() + Duration::from_secs(10));
            c.send_until(
                Opcode::CallWrapper,
                i as u64,
                0,
                &vec![i as u8; len],
                deadline,
                &|| {},
            )
            .unwrap();
        }
        let e = reader.join().unwrap();
        assert_eq!(
            c.send_until(Opcode::CallWrapper, 0, 0, &[0u8; 4097], None, &|| {}),
            Err(TransportError::TooLarge {
                size: 4097,
                limit: 4096
            })
        );
        e.close();
        assert_eq!(
            c.send_until(Opcode::CallWrapper, 0, 0, b"late", None, &|| {}),
            Err(TransportError::PeerHungUp)
        );
    }

    #[test]
    fn waits_after_a_large_transfer_spin_for_its_copy() {
        // Rings large enough that every send here completes unread.
        let config = ShmConfig {
            max_message_size: 16 << 20,
            ring_capacity: crate::layout::RingCapacity::new(16 << 20).unwrap(),
            wait: WaitStrategy::balanced(),
        };
        let (c, e) = pair(config);
        let balanced = WaitStrategy::balanced();
        assert_eq!(c.strategy(), balanced);
        // 1 MiB at 4 bytes a nanosecond: 262 µs, on both sides.
        let big = vec![3u8; 1 << 20];
        let copy = WaitStrategy::spin_for(Duration::from_nanos((1 << 20) / 4));
        c.send(Opcode::CallWrapper, 1, 0, &big).unwrap();
        assert_eq!(c.strategy(), copy);
        match e.recv(None).unwrap() {
            Received::Message(m) => assert_eq!(m.payload.len(), big.len()),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.strategy(), copy);
        // A small message ends it.
        e.send(Opcode::Result, 1, 0, b"ok").unwrap();
        assert_eq!(e.strategy(), balanced);
        // The stretch is capped, and a sleep-at-once strategy stays so.
        let (c, _e) = pair(ShmConfig {
            wait: WaitStrategy::low_cpu(),
            ..config
        });
        c.send(Opcode::CallWrapper, 1, 0, &vec![0u8; 8 << 20])
            .unwrap();
        assert_eq!(c.strategy(), WaitStrategy::low_cpu());
        let (c, _e) = pair(ShmConfig {
            wait: balanced,
            ..config
        });
        c.send(Opcode::CallWrapper, 1, 0, &vec![0u8; 8 << 20])
            .unwrap();
        assert_eq!(c.strategy(), WaitStrategy::spin_for(BULK_MAX_SPIN));
    }

    #[test]
    fn a_message_that_was_waited_for_makes_the_next_send_a_hand_over() {
        let (c, e) = pair(ShmConfig::default());
        let in_step = |t: &ShmTransport| t.in_step.load(Ordering::Relaxed);
        assert!(in_step(&e), "a fresh transport hands over");
        // Already there when the receiver looked: the peer is ahead.
        c.send(Opcode::CallWrapper, 1, 0, b"first").unwrap();
        c.send(Opcode::CallWrapper, 2, 0, b"second").unwrap();
        assert!(matches!(e.recv(None).unwrap(), Received::Message(m) if m.seq == 1));
        assert!(!in_step(&e));
        assert!(matches!(e.try_recv().unwrap(), Some(m) if m.seq == 2));
        assert!(!in_step(&e));
        // Waited for: the peer sends one at a time and waits for us. The
        // sender sends once the receiver sleeps.
        let e = Arc::new(e);
        let receiver = Arc::clone(&e);
        let deadline = Instant::now() + Duration::from_secs(10);
        let sender = std::thread::spawn(move || {
            while receiver.own.waiting_bits() & waiting::DATA == 0 {
                assert!(Instant::now() < deadline, "the receiver never slept");
                std::thread::sleep(Duration::from_micros(100));
            }
            c.send(Opcode::CallWrapper, 3, 0, b"third").unwrap();
            c
        });
        assert!(matches!(e.recv(Some(deadline)).unwrap(), Received::Message(m) if m.seq == 3));
        assert!(in_step(&e));
        // Finding nothing changes nothing.
        assert!(e.try_recv().unwrap().is_none());
        assert!(in_step(&e));
        // A hand-over and a plain publication deliver alike.
        let c = sender.join().unwrap();
        e.send(Opcode::Result, 3, 0, b"handed over").unwrap();
        assert!(
            matches!(c.recv(None).unwrap(), Received::Message(m) if m.payload.as_slice() == b"handed over")
        );
        c.send(Opcode::CallWrapper, 4, 0, b"x").unwrap();
        assert!(matches!(e.recv(None).unwrap(), Received::Message(m) if m.seq == 4));
        assert!(!in_step(&e));
        e.send(Opcode::Result, 4, 0, b"published").unwrap();
        assert!(
            matches!(c.recv(None).unwrap(), Received::Message(m) if m.payload.as_slice() == b"published")
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
