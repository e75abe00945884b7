//! The [`Transport`] implementation of [`ShmTransport`]: sending (frames
//! written and published, waiting for room on a full ring) and receiving
//! (frames consumed, draining what the peer sent before it hung up).
//!
//! Relies on: `ending.rs` for every check of whether the connection may
//! go on, the ring ends behind their mutexes, and the wake words.

use std::convert::Infallible;
use std::task::Poll;
use std::time::{Duration, Instant};

use orcwire::transport::{Arrival, BatchError, Outgoing, Received, Transport, TransportError};
use orcwire::{Message, Opcode, WrapperFunctionBuffer};

use super::{ShmTransport, BULK_BYTES_PER_NS, BULK_MAX_SPIN, BULK_MIN, CLOSED, PEER_DEAD};
use crate::layout::{state, waiting};
use crate::ring::{OutgoingMessage, RingConsumer, RingProducer, WriteStatus};
use crate::sync::Ordering;
use crate::trace;
use crate::wait::{WaitOutcome, WaitStrategy};

impl ShmTransport {
    /// One `try_recv_into`, waking a peer waiting for space if it freed
    /// some (unless `hold`: then the room stays unpublished, see
    /// [`Self::release_held`]). `waited`: whether the caller waited for
    /// this message (see `in_step`; `None` leaves it as it is: the rest
    /// of a batch, whose first message set it).
    #[inline(always)]
    fn try_take(
        &self,
        consumer: &mut RingConsumer,
        waited: Option<bool>,
        hold: bool,
        into: &mut Message,
    ) -> Result<bool, TransportError> {
        let result = if hold {
            consumer.try_recv_into_held(into)
        } else {
            consumer.try_recv_into(into)
        };
        if !hold && consumer.take_freed_space() {
            self.peer.notify(waiting::SPACE);
        }
        match result {
            Ok(true) => {
                self.note_size(into.payload.len());
                // Relaxed: only a hint for how to publish.
                if let Some(waited) = waited {
                    if self.in_step.load(Ordering::Relaxed) != waited {
                        self.in_step.store(waited, Ordering::Relaxed);
                    }
                }
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                self.release_held(consumer);
                Err(self.ring_failed(e))
            }
        }
    }

    /// Publishes the room of frames read under `hold`, and wakes a peer
    /// waiting for it.
    #[inline]
    fn release_held(&self, consumer: &mut RingConsumer) {
        consumer.publish_consumed();
        if consumer.take_freed_space() {
            self.peer.notify(waiting::SPACE);
        }
    }

    /// `recv_into` with the receiving end locked. With `hold`, the room of
    /// the message taken stays unpublished (the caller releases it); room
    /// held is always released before a wait.
    /// `waited` tells whether the message had to be waited for (it was not
    /// there at the first look).
    fn recv_locked(
        &self,
        consumer: &mut RingConsumer,
        deadline: Option<Instant>,
        hold: bool,
        into: &mut Message,
        waited: &mut bool,
    ) -> Result<Arrival, TransportError> {
        *waited = false;
        loop {
            if self.is_terminated() {
                self.release_held(consumer);
                return Err(self.terminal_error());
            }
            // SYNC POINT: local flags. Pairs with `interrupt_recv`. A load
            // first: no read-modify-write per receive.
            if self.interrupted.load(Ordering::Relaxed)
                && self.interrupted.swap(false, Ordering::Acquire)
            {
                self.release_held(consumer);
                return Ok(Arrival::Interrupted);
            }
            if self.try_take(consumer, Some(*waited), hold, into)? {
                return Ok(Arrival::Message);
            }
            // A message may be partly read: free its room before waiting
            // for the rest (the peer may be waiting for that room).
            self.release_held(consumer);
            if self.peer_state()? {
                if crate::sync::is_broken("handshake") {
                    // Loom must-fail variant: hang up without draining what
                    // the peer published before its bit.
                    return Err(TransportError::PeerHungUp);
                }
                // Everything the peer published before its bit is visible.
                if self.try_take(consumer, Some(*waited), false, into)? {
                    return Ok(Arrival::Message);
                }
                if consumer.has_frames() {
                    continue;
                }
                return Err(TransportError::PeerHungUp);
            }
            let consumer = &*consumer;
            let outcome = self
                .own
                .wait_until(&self.strategy(), waiting::DATA, deadline, || {
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
            *waited = true;
            match outcome {
                Ok(WaitOutcome::Ready(())) => {}
                Ok(WaitOutcome::TimedOut) => return Ok(Arrival::TimedOut),
                Err(never) => match never {},
            }
        }
    }

    /// Records the length of a message sent or received for the next
    /// waits' spin budget; small messages (the usual ones) cost a load.
    #[inline(always)]
    fn note_size(&self, len: usize) {
        let bulk = if len >= BULK_MIN { len } else { 0 };
        // Relaxed: only a hint for how long to spin.
        if self.bulk.load(Ordering::Relaxed) != bulk {
            self.bulk.store(bulk, Ordering::Relaxed);
        }
    }

    /// How the next wait spins: the configured strategy, with a time
    /// budget stretched after a large transfer to about the time the peer
    /// needs to copy it. The answer to a large call, the next fragment or
    /// the room a large message needs all come after that copy, so a
    /// budget shorter than it puts every large transfer to sleep and pays
    /// a wake-up (tens of microseconds here) for each; the stretch costs
    /// at most the CPU time the peer spends copying, and only while large
    /// messages flow. A strategy without a time budget is kept as it is.
    pub(super) fn strategy(&self) -> WaitStrategy {
        let bulk = self.bulk.load(Ordering::Relaxed);
        if bulk == 0 {
            return self.wait;
        }
        let copy = Duration::from_nanos((bulk / BULK_BYTES_PER_NS) as u64);
        self.wait.at_least(copy.min(BULK_MAX_SPIN))
    }
}

impl ShmTransport {
    /// The usual send, in fewer steps than `send_batch`: one message that
    /// goes out as one frame, with room for it now, the producer free and
    /// the connection in good order. `true`: it is published (and the peer
    /// woken if it sleeps). `false`: nothing was written, and `send_batch`
    /// takes the message (waiting for the producer or for room, reporting
    /// a hang-up or an oversized message, fragmenting a long one).
    #[inline(always)]
    fn try_send_whole(&self, opcode: Opcode, seq: u64, tag: u64, payload: &[u8]) -> bool {
        let Some(mut producer) = self.producer.try_lock() else {
            return false;
        };
        // What `check_send` checks, without building its errors: nothing
        // recorded locally, the segment's epoch ours, the peer not hanging
        // up. SYNC POINT: disconnect (as in `peer_state`).
        let word = self.state.load(Ordering::Acquire);
        if self.is_terminated()
            || state::epoch(word) != self.attached.epoch
            || word & self.side.peer().disconnecting_bit() != 0
            || payload.len() as u64 > self.attached.layout.max_message_size
        {
            return false;
        }
        if !producer.try_write_whole(opcode, seq, tag, payload) {
            return false;
        }
        self.note_size(payload.len());
        if producer.publish_with(self.in_step.load(Ordering::Relaxed)) {
            self.peer.notify(waiting::DATA);
        }
        true
    }

    /// Writes and publishes `messages` (see [`Transport::send_batch`]),
    /// waiting for the producer and for room as it must.
    fn send_frames(
        &self,
        messages: &[Outgoing<'_>],
        deadline: Option<Instant>,
        on_wait: &dyn Fn(),
    ) -> Result<(), BatchError> {
        let limit = self.attached.layout.max_message_size;
        let fail = |sent: usize, error: TransportError| BatchError { sent, error };
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
        let Some(mut producer) = self.producer.lock_until(deadline, &behind_holder) else {
            return Err(fail(0, TransportError::TimedOut));
        };
        // Frames written but not yet published: the whole batch goes out
        // with one publication and one wake-up check at its end (or
        // before any wait for room, and per fragment of a long message).
        let mut unpublished = false;
        let publish = |producer: &mut RingProducer, unpublished: &mut bool| {
            *unpublished = false;
            if producer.publish_with(self.in_step.load(Ordering::Relaxed)) {
                self.peer.notify(waiting::DATA);
            }
        };
        // Checked once a batch (and again before any wait for room): the
        // frames of a batch go out together or, past a hang-up, unread.
        if let Err(e) = self.check_send() {
            return Err(fail(0, e));
        }
        for (sent, m) in messages.iter().enumerate() {
            if m.payload.len() as u64 > limit {
                publish(&mut producer, &mut unpublished);
                return Err(fail(
                    sent,
                    TransportError::TooLarge {
                        size: m.payload.len() as u64,
                        limit,
                    },
                ));
            }
            self.note_size(m.payload.len());
            // The usual case: one frame, room for it before the ring's end.
            if producer.try_write_whole(m.opcode, m.seq, m.tag, m.payload) {
                unpublished = true;
                continue;
            }
            let mut msg = OutgoingMessage::new(m.opcode, m.seq, m.tag, m.payload);
            let mut first_try = true;
            loop {
                if !first_try {
                    if let Err(e) = self.check_send() {
                        publish(&mut producer, &mut unpublished);
                        return Err(fail(sent, e));
                    }
                }
                first_try = false;
                let status = match producer.try_write(&mut msg) {
                    Ok(status) => status,
                    Err(e) => return Err(fail(sent, self.ring_failed(e))),
                };
                match status {
                    WriteStatus::Complete => {
                        unpublished = true;
                        break;
                    }
                    // The next fragment goes out at once, this one seen
                    // by the peer meanwhile.
                    WriteStatus::Partial => {
                        publish(&mut producer, &mut unpublished);
                        continue;
                    }
                    WriteStatus::WouldBlock => publish(&mut producer, &mut unpublished),
                }
                // The deadline holds only until the first frame is out: a
                // message half written must be finished.
                let deadline = if msg.is_started() { None } else { deadline };
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(fail(sent, TransportError::TimedOut));
                }
                // SYNC POINT: room wait (Release half, see `behind_holder`).
                self.room_wait.store(true, Ordering::Release);
                // Ring full: spin, then sleep on our word until the peer
                // frees space (it bumps our word when it sees our SPACE
                // announcement) or a local event wakes us. `on_wait` runs
                // only before the sleep: a peer that is reading frees room
                // within the spin budget, and a peer that is not is the
                // case `on_wait` exists for (it may wait for us to read),
                // so it costs at most one spin budget of delay there, and
                // nothing per fragment here.
                let producer = &mut *producer;
                let msg = &msg;
                let outcome = self.own.wait_until_then(
                    &self.strategy(),
                    waiting::SPACE,
                    deadline,
                    || {
                        self.check_send()?;
                        // A corrupt head is reported by `try_write` next round.
                        Ok(match producer.can_write(msg) {
                            Ok(false) => Poll::Pending,
                            Ok(true) | Err(_) => Poll::Ready(()),
                        })
                    },
                    on_wait,
                );
                self.room_wait.store(false, Ordering::Release);
                match outcome {
                    Ok(WaitOutcome::Ready(())) => {}
                    Ok(WaitOutcome::TimedOut) => return Err(fail(sent, TransportError::TimedOut)),
                    Err(e) => return Err(fail(sent, e)),
                }
            }
        }
        if unpublished {
            publish(&mut producer, &mut unpublished);
        }
        Ok(())
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
        trace::rec(self.side, trace::Event::SendStart, 1);
        if !self.try_send_whole(opcode, seq, tag, payload) {
            let one = [Outgoing {
                opcode,
                seq,
                tag,
                payload,
            }];
            self.send_frames(&one, deadline, on_wait)
                .map_err(|e| e.error)?;
        }
        trace::rec(self.side, trace::Event::SendEnd, 1);
        Ok(())
    }

    fn send_batch(
        &self,
        messages: &[Outgoing<'_>],
        deadline: Option<Instant>,
        on_wait: &dyn Fn(),
    ) -> Result<(), BatchError> {
        trace::rec(self.side, trace::Event::SendStart, messages.len() as u64);
        self.send_frames(messages, deadline, on_wait)?;
        trace::rec(self.side, trace::Event::SendEnd, messages.len() as u64);
        Ok(())
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Received, TransportError> {
        let mut m = Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
        Ok(match self.recv_into(deadline, &mut m)? {
            Arrival::Message => Received::Message(m),
            Arrival::TimedOut => Received::TimedOut,
            Arrival::Interrupted => Received::Interrupted,
        })
    }

    fn recv_into(
        &self,
        deadline: Option<Instant>,
        into: &mut Message,
    ) -> Result<Arrival, TransportError> {
        let mut consumer = self.consumer.lock();
        self.recv_locked(&mut consumer, deadline, false, into, &mut false)
    }

    fn recv_batch(
        &self,
        deadline: Option<Instant>,
        max: usize,
        into: &mut Message,
        each: &mut dyn FnMut(&mut Message) -> bool,
    ) -> Result<Arrival, TransportError> {
        let mut consumer = self.consumer.lock();
        let mut waited = false;
        trace::rec(self.side, trace::Event::RecvStart, 0);
        let first = self.recv_locked(&mut consumer, deadline, true, into, &mut waited)?;
        if first != Arrival::Message {
            return Ok(first);
        }
        trace::rec(self.side, trace::Event::RecvFirst, u64::from(waited));
        // A first message that had to be waited for came alone: the peer
        // answers one at a time, and a look at the next slot now would be
        // a cache miss (the peer's line) before the caller can act on this
        // one. A backlog (the first was already there) is read on.
        let max = if waited { 1 } else { max };
        // The room of the whole batch is published once, at its end (or
        // once a quarter of the ring is held, so a producer waiting for
        // room does not wait for the whole batch).
        let quarter = consumer.capacity() as u64 / 4;
        let mut go_on = each(into);
        let mut taken = 1;
        while go_on && taken < max {
            if consumer.held_bytes() >= quarter {
                self.release_held(&mut consumer);
            }
            if !self.try_take(&mut consumer, None, true, into)? {
                break;
            }
            taken += 1;
            go_on = each(into);
        }
        self.release_held(&mut consumer);
        trace::rec(self.side, trace::Event::RecvEnd, taken as u64);
        Ok(Arrival::Message)
    }

    fn try_recv(&self) -> Result<Option<Message>, TransportError> {
        let mut m = Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
        Ok(self.try_recv_into(&mut m)?.then_some(m))
    }

    fn try_recv_into(&self, into: &mut Message) -> Result<bool, TransportError> {
        // A hint first, with two loads and no lock: the peer has published
        // nothing at the slot past what we consumed (our stored head; one
        // caller at a time, so nobody is mid-receive). A lone caller's
        // drain after its round trip then costs almost nothing: the slot
        // is usually on the line of the frame it just read. Only a hint: a
        // hostile peer writing the ring makes us skip a look or take the
        // checked path below, nothing more.
        // SYNC POINT: frames published (the slot's `Acquire` load pairs
        // with the producer's `Release` store; `try_take` reads it again).
        if self.inbound.is_empty() {
            return Ok(false);
        }
        let mut consumer = self.consumer.lock();
        if self.is_terminated() {
            return Err(self.terminal_error());
        }
        // Nothing whole yet, or the peer hung up: `recv` finds out which
        // (it drains what the peer published before its bit first).
        self.try_take(&mut consumer, Some(false), false, into)
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
