//! The contract between the endpoint and anything that moves messages.
//!
//! A [`Transport`] only moves [`Message`]s and wakes the other side. It
//! knows nothing of pending calls, handlers or the disconnect handshake:
//! those belong to the [`Endpoint`](crate::Endpoint). This split is LLVM's
//! `SimpleRemoteEPCTransport` / `SimpleRemoteEPCTransportClient` split,
//! turned from push to *pull*: the endpoint asks for the next message with
//! [`Transport::recv`], so whichever thread needs progress (a dedicated
//! reader, or a caller waiting for its own result) can drive the inbound
//! side itself without a thread hop.
//!
//! # Threads
//! * [`send`](Transport::send) may be called from any number of threads at
//!   once; the transport serialises them (each message goes out whole,
//!   never interleaved with another).
//! * [`recv`](Transport::recv) has one caller at a time; the endpoint
//!   guarantees it. A transport may rely on that.
//! * [`interrupt_recv`](Transport::interrupt_recv) and
//!   [`close`](Transport::close) may be called from any thread at any time.
//!
//! This module is everything a transport of one's own needs: the trait,
//! the message model it carries ([`Message`], [`Opcode`], the result kinds
//! [`RESULT_OK`] / [`RESULT_ERROR`]) and [`decode_message`].

use std::time::Instant;

use crate::buffer::WrapperFunctionBuffer;
pub use crate::message::{Message, Opcode, UnknownOpcode, RESULT_ERROR, RESULT_OK};

/// What [`Transport::recv`] produced.
#[derive(Debug)]
pub enum Received {
    /// The next inbound message, validated and copied out of the transport.
    Message(Message),
    /// The deadline passed with nothing to read.
    TimedOut,
    /// [`Transport::interrupt_recv`] was called (before or during this
    /// `recv`); the interrupt is consumed.
    Interrupted,
}

/// What [`Transport::recv_into`] did with the caller's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next inbound message, validated and copied out of the
    /// transport, is in the caller's message.
    Message,
    /// The deadline passed with nothing to read.
    TimedOut,
    /// [`Transport::interrupt_recv`] was called (before or during this
    /// receive); the interrupt is consumed.
    Interrupted,
}

/// Why a transport cannot carry messages any more.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer closed its side in an orderly way (end of stream).
    #[error("the peer closed the connection")]
    PeerHungUp,
    /// The peer process is known to have died (liveness channel or pidfd).
    #[error("the peer process died")]
    PeerDied,
    /// [`Transport::close`] was called on this side.
    #[error("the transport was closed on this side")]
    Closed,
    /// The peer sent something that breaks the protocol; the connection is
    /// no longer usable. The text says what was wrong.
    #[error("protocol error from the peer: {0}; the connection was dropped")]
    Protocol(String),
    /// A message is larger than the configured limit.
    #[error("message of {size} bytes exceeds the configured limit of {limit} bytes; raise the limit or send less")]
    TooLarge {
        /// The size that was asked for.
        size: u64,
        /// The configured maximum.
        limit: u64,
    },
    /// The operating system refused an operation.
    #[error("I/O error on the transport: {0}")]
    Io(String),
    /// [`Transport::send_until`]'s deadline passed before any of the
    /// message could be written; nothing was sent.
    #[error("the transport stayed full until the deadline; nothing was sent, so try again later")]
    TimedOut,
}

impl TransportError {
    /// Builds an [`Io`](TransportError::Io) error from an OS error.
    pub fn io(err: std::io::Error) -> Self {
        Self::Io(err.to_string())
    }

    /// Whether the error means the peer is gone (as opposed to us closing,
    /// or a fault).
    pub fn is_peer_gone(&self) -> bool {
        matches!(self, Self::PeerHungUp | Self::PeerDied)
    }
}

/// One message of a [`Transport::send_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing<'a> {
    /// What the message is.
    pub opcode: Opcode,
    /// Its sequence number.
    pub seq: u64,
    /// Its tag (handler tag of a call, result kind of a result).
    pub tag: u64,
    /// Its payload.
    pub payload: &'a [u8],
}

/// Why a [`Transport::send_batch`] stopped before the end of its batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error} (after {sent} messages of the batch were sent)")]
pub struct BatchError {
    /// Messages sent whole, from the start of the batch; none of the rest
    /// was sent.
    pub sent: usize,
    /// Why message `sent` was not: as for [`Transport::send_until`].
    pub error: TransportError,
}

/// Moves messages between the two processes. See the [module
/// docs](self) for the threading rules.
pub trait Transport: Send + Sync + 'static {
    /// Sends one message, whole; [`send_until`](Transport::send_until)
    /// with no deadline and no hook.
    ///
    /// # Errors
    /// As [`send_until`](Transport::send_until).
    fn send(
        &self,
        opcode: Opcode,
        seq: u64,
        tag: u64,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        self.send_until(opcode, seq, tag, payload, None, &|| {})
    }

    /// Sends one message, whole.
    ///
    /// Blocks while the transport is full. Before each time it goes to
    /// sleep — for room, or behind another sender — it calls `on_wait` (the
    /// endpoint uses it to make sure some thread keeps reading meanwhile,
    /// so two full directions cannot deadlock). `deadline` bounds the wait for room *before the first
    /// byte is written*; once part of a message is out, the rest follows
    /// (a half-written message would corrupt the stream), bounded only by
    /// [`close`](Transport::close). A concurrent `close` unblocks it with
    /// an error.
    ///
    /// # Errors
    /// [`TransportError::TimedOut`] when the deadline passed with nothing
    /// sent; another [`TransportError`] when the message cannot be sent:
    /// the transport is closed, the peer is gone, or the message is too
    /// large.
    fn send_until(
        &self,
        opcode: Opcode,
        seq: u64,
        tag: u64,
        payload: &[u8],
        deadline: Option<Instant>,
        on_wait: &dyn Fn(),
    ) -> Result<(), TransportError>;

    /// Waits for the next inbound message until `deadline` (`None`: no
    /// deadline), or until interrupted. One caller at a time.
    ///
    /// # Errors
    /// A [`TransportError`] when no message will ever come: closed, peer
    /// gone, or the peer broke the protocol. After the first error every
    /// later call returns an error too.
    fn recv(&self, deadline: Option<Instant>) -> Result<Received, TransportError>;

    /// Takes the next inbound message if it has fully arrived, without
    /// waiting: `Ok(None)` when there is none yet. Same caller rule as
    /// [`recv`](Transport::recv) (one at a time). The endpoint uses it to
    /// drain results that are already there once a waiting caller has its
    /// own, so the calls behind it find theirs done without reading.
    ///
    /// The default asks [`recv`](Transport::recv) with a deadline that has
    /// passed; a transport that can look without a clock read overrides it.
    /// It never reports [`Received::Interrupted`]; the default may consume a
    /// pending interrupt (it was meant for a reader that is not reading now).
    ///
    /// # Errors
    /// As [`recv`](Transport::recv).
    fn try_recv(&self) -> Result<Option<Message>, TransportError> {
        match self.recv(Some(Instant::now()))? {
            Received::Message(m) => Ok(Some(m)),
            Received::TimedOut | Received::Interrupted => Ok(None),
        }
    }

    /// [`recv`](Transport::recv), into `into`: the message's fields and
    /// payload overwrite it, reusing its buffer where the transport can.
    /// The endpoint reads every message so; a transport that copies out of
    /// shared memory overrides it to fill the caller's message in place
    /// (the default receives and moves). `into` is unspecified when no
    /// message arrived.
    ///
    /// # Errors
    /// As [`recv`](Transport::recv).
    fn recv_into(
        &self,
        deadline: Option<Instant>,
        into: &mut Message,
    ) -> Result<Arrival, TransportError> {
        Ok(match self.recv(deadline)? {
            Received::Message(m) => {
                *into = m;
                Arrival::Message
            }
            Received::TimedOut => Arrival::TimedOut,
            Received::Interrupted => Arrival::Interrupted,
        })
    }

    /// [`try_recv`](Transport::try_recv), into `into` (see
    /// [`recv_into`](Transport::recv_into)): `true` when a message arrived.
    ///
    /// # Errors
    /// As [`recv`](Transport::recv).
    fn try_recv_into(&self, into: &mut Message) -> Result<bool, TransportError> {
        Ok(match self.try_recv()? {
            Some(m) => {
                *into = m;
                true
            }
            None => false,
        })
    }

    /// Sends `messages` in order, each whole, as
    /// [`send_until`](Transport::send_until) would one by one, but as one
    /// batch: a transport that can make a batch visible to the peer at once
    /// (one publication, one wake-up check) overrides it; the default sends
    /// them one at a time. `deadline` bounds each message's wait for room
    /// before its first byte, as for `send_until`.
    ///
    /// # Errors
    /// [`BatchError`]: how many messages went out whole (from the start)
    /// and why the next did not; none after it was sent.
    fn send_batch(
        &self,
        messages: &[Outgoing<'_>],
        deadline: Option<Instant>,
        on_wait: &dyn Fn(),
    ) -> Result<(), BatchError> {
        for (sent, m) in messages.iter().enumerate() {
            self.send_until(m.opcode, m.seq, m.tag, m.payload, deadline, on_wait)
                .map_err(|error| BatchError { sent, error })?;
        }
        Ok(())
    }

    /// Receives every message that has already arrived, at most `max`,
    /// waiting until `deadline` for the first one if none has (as
    /// [`recv_into`](Transport::recv_into)). Each lands in `into` (reused)
    /// and is handed to `each`, which takes what it needs out of it and
    /// returns whether to go on. The endpoint reads so: a transport that
    /// copies out of shared memory overrides it to take a whole batch under
    /// one lock and free its room once; the default receives one message at
    /// a time.
    ///
    /// Returns [`Arrival::Message`] when at least one message was handed
    /// over. `each` must not receive from this transport (it may run while
    /// the transport's receiving end is locked).
    ///
    /// # Errors
    /// As [`recv`](Transport::recv), also after some messages were handed
    /// over (they were delivered; the error is about what comes next).
    fn recv_batch(
        &self,
        deadline: Option<Instant>,
        max: usize,
        into: &mut Message,
        each: &mut dyn FnMut(&mut Message) -> bool,
    ) -> Result<Arrival, TransportError> {
        let first = self.recv_into(deadline, into)?;
        if first != Arrival::Message || !each(into) {
            return Ok(first);
        }
        for _ in 1..max {
            if !self.try_recv_into(into)? || !each(into) {
                break;
            }
        }
        Ok(Arrival::Message)
    }

    /// Makes the current or next [`recv`](Transport::recv) return
    /// [`Received::Interrupted`]. Cheap and idempotent.
    fn interrupt_recv(&self);

    /// Stops the transport: further sends fail, blocked sends and receives
    /// return, the peer sees the connection end. Idempotent.
    fn close(&self);

    /// Whether the peer process is known to be dead.
    fn peer_died(&self) -> bool {
        false
    }

    /// A short name for diagnostics and benchmarks (`"pipe"`, `"shm"`, ...).
    fn name(&self) -> &'static str;
}

/// Decodes an owned message from its wire parts, checking the opcode.
///
/// # Errors
/// [`TransportError::Protocol`] for an unknown opcode.
pub fn decode_message(
    opcode: u64,
    seq: u64,
    tag: u64,
    payload: WrapperFunctionBuffer,
) -> Result<Message, TransportError> {
    let opcode = Opcode::from_wire(opcode).map_err(|e| TransportError::Protocol(e.to_string()))?;
    Ok(Message::new(opcode, seq, tag, payload))
}
