//! [`StreamTransport`]: a [`Transport`] over a byte stream — a pair of
//! pipes, a Unix socket, or a TCP connection.
//!
//! # Wire format
//! Byte-compatible with LLVM's `FDSimpleRemoteEPCTransport`: every message
//! is a 32-byte header of four little-endian `u64`s — the *total* frame
//! size including the header, the opcode, the sequence number, the tag —
//! followed by the payload. An orcwire peer and an LLVM
//! `SimpleRemoteEPC`/`SimpleRemoteEPCServer` peer can talk over the same
//! pipes or socket.
//!
//! # Threads and backpressure
//! No thread of its own and no queue: the thread that calls
//! [`Transport::recv`] reads the descriptor itself, waiting in `poll(2)` on
//! the descriptor, a stop `eventfd` and an interrupt `eventfd`, so a message
//! reaches the caller with no thread hop (the endpoint makes a waiting
//! caller that reader). Each header is validated *before* anything is
//! allocated. A deadline or an interrupt that comes in the middle of a
//! frame keeps what was read: the next `recv` carries on from there.
//!
//! Nothing reads the stream unless `recv` is called, so backpressure is
//! the kernel's: once its buffers are full the peer's writes block. A
//! `send` that finds the stream full blocks too (calling the `on_wait`
//! hook first, with which the endpoint makes sure some thread reads
//! meanwhile); a deadline bounds that wait until the first byte is out.
//!
//! Senders are serialised by a mutex around the write side; each frame goes
//! out with vectored writes (header and payload together), so frames are
//! never interleaved. One `recv` at a time (the endpoint guarantees it; a
//! mutex enforces it).
//!
//! # Closing and unblocking
//! LLVM's transport closes its descriptors to stop, which leaves a reader
//! blocked in `read(2)` hanging when one socket serves both directions.
//! Here every blocking point waits in `poll` with the stop eventfd;
//! [`close`](Transport::close) signals it (it stays signalled),
//! `shutdown(2)`s sockets and closes both descriptors (so a pipe peer sees
//! end of stream, and its writes fail). Both descriptors are put in
//! non-blocking mode for this: do not share their open file descriptions
//! with other code.
//!
//! # Terminal errors
//! A clean end of stream at a frame boundary is
//! [`PeerHungUp`](TransportError::PeerHungUp); a malformed frame is
//! [`Protocol`](TransportError::Protocol) or
//! [`TooLarge`](TransportError::TooLarge); every later `recv` returns the
//! same error. [`close`](Transport::close) makes `recv` and `send` return
//! [`Closed`](TransportError::Closed) — unless a terminal error was
//! recorded first: **the first terminal cause wins**, so a transport whose
//! peer hung up before the local close keeps reporting `PeerHungUp`.
//!
//! A malformed frame also stops the send side (blocked sends return the
//! protocol error); a clean end of stream does not, since the peer may have
//! only half-closed its side and still be reading.
//!
//! # SIGPIPE
//! Writes to sockets use `MSG_NOSIGNAL`, so a vanished peer is an `EPIPE`
//! error ([`PeerHungUp`](TransportError::PeerHungUp)), never a signal.
//! Writes to a pipe have no such flag: they rely on `SIGPIPE` being ignored,
//! which the Rust runtime arranges for every Rust `main`. A process whose
//! `main` is not Rust's (a C host loading orcwire) must ignore `SIGPIPE`
//! itself before using a pipe transport.

use std::io::IoSlice;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    getsockname, sendmsg, shutdown, AddressFamily, MsgFlags, Shutdown, SockaddrLike,
    SockaddrStorage,
};
use nix::sys::stat::{fstat, SFlag};

use crate::buffer::WrapperFunctionBuffer;
use crate::message::{Message, Opcode};
use crate::sync::{self, Arc, AtomicBool, Mutex, Ordering};
use crate::transport::{decode_message, Received, Transport, TransportError};

/// Size of the frame header: four little-endian `u64`s.
pub const HEADER_SIZE: usize = 32;

/// Default [`StreamConfig::max_message_size`]: 1 GiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 1 << 30;

/// Bytes the reader asks the kernel for at once; small frames are parsed
/// out of this buffer, payloads at least this large are read in place.
const READ_BUFFER_SIZE: usize = 64 * 1024;

/// Capacity asked for the pipes [`StreamTransport::pipe_pair`] creates
/// (best effort: the default unprivileged maximum on Linux).
const PIPE_CAPACITY: i32 = 1 << 20;

/// Largest `max_message_size` accepted: a frame must fit in `isize`.
const MAX_MESSAGE_SIZE_LIMIT: u64 = (isize::MAX as u64) - HEADER_SIZE as u64;

/// Limits of a [`StreamTransport`].
///
/// ```
/// use orcwire::StreamConfig;
///
/// let config = StreamConfig { max_message_size: 16 << 20 };
/// assert_eq!(StreamConfig::default().max_message_size, orcwire::stream::DEFAULT_MAX_MESSAGE_SIZE);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// Largest payload, in bytes, accepted in either direction: a larger
    /// `send` fails with [`TransportError::TooLarge`] before anything is
    /// written, and a larger inbound frame is refused before anything is
    /// allocated. Range `0 ..= isize::MAX - 32`; default 1 GiB.
    pub max_message_size: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// Why a [`StreamTransport`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The [`StreamConfig`] is out of range.
    #[error("invalid stream transport configuration: {0}")]
    Config(String),
    /// The operating system refused a step of the setup.
    #[error("could not {what} for the stream transport: {source}; check that the descriptors are open and the process has descriptors to spare")]
    Os {
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl StreamError {
    fn os(what: &'static str, errno: Errno) -> Self {
        Self::Os {
            what,
            source: errno.into(),
        }
    }
}

/// What the stream is; decides `shutdown(2)` and [`Transport::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Pipes, FIFOs, or anything that is not a socket.
    Pipe,
    /// An `AF_UNIX` stream socket.
    Unix,
    /// A TCP socket.
    Tcp,
    /// A socket of another family (vsock, ...).
    OtherSocket,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Pipe => "pipe",
            Self::Unix => "uds",
            Self::Tcp => "tcp",
            Self::OtherSocket => "socket",
        }
    }
}

/// A [`Transport`] over a byte stream, wire-compatible with LLVM's
/// `FDSimpleRemoteEPCTransport`. See the [module docs](self) for the
/// threading, backpressure and shutdown rules.
///
/// ```
/// use orcwire::{StreamConfig, StreamTransport};
/// use orcwire::{Opcode, Received, Transport};
///
/// let (a, b) = StreamTransport::pipe_pair(StreamConfig::default())?;
/// a.send(Opcode::CallWrapper, 7, 42, b"hello")?;
/// match b.recv(None)? {
///     Received::Message(m) => {
///         assert_eq!((m.opcode, m.seq, m.tag), (Opcode::CallWrapper, 7, 42));
///         assert_eq!(m.payload.as_slice(), b"hello");
///     }
///     other => panic!("unexpected {other:?}"),
/// }
/// a.close();
/// b.close();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StreamTransport {
    kind: Kind,
    max_message_size: u64,
    shared: Shared,
    /// The write side; `None` once closed. Held for the whole of a frame's
    /// write, which is what keeps frames from interleaving.
    writer: Mutex<Option<OwnedFd>>,
    /// Whether the write side is a socket (`MSG_NOSIGNAL`, `shutdown`).
    write_is_socket: bool,
    /// The sender holding `writer` waits for the peer to drain the stream:
    /// another sender that finds the writer taken is then waiting on the
    /// peer too, and says so (`on_wait`). Written only by that holder.
    room_wait: AtomicBool,
    /// The read side, with any frame read only in part. Held by the one
    /// `recv` at a time for as long as it reads or waits.
    reader: Mutex<FrameReader>,
}

/// What every operation consults: the stop and interrupt signals and the
/// terminal error.
struct Shared {
    /// Set once by whoever stops the transport (`close`, or a `recv` that
    /// met a malformed frame), just before `wake` is signalled. Never
    /// cleared.
    stopped: AtomicBool,
    /// Signalled (and never drained) when `stopped` is set: every `poll`
    /// includes it, so no thread stays blocked on the stream after a stop.
    wake: EventFd,
    /// An `interrupt_recv` not yet consumed by a `recv`.
    interrupted: AtomicBool,
    /// Signalled by `interrupt_recv` so that a `recv` blocked in `poll`
    /// returns; drained by the `recv` that consumes the interrupt (a
    /// leftover signal only makes one `poll` return early).
    interrupt: EventFd,
    /// The first reason no more messages will come; set once, never
    /// replaced (the first terminal cause wins).
    terminal: Mutex<Option<TransportError>>,
}

impl Shared {
    /// Marks the transport stopped and wakes every `poll`. Idempotent.
    fn stop(&self) {
        // SYNC POINT: transport stopped. Pairs with the Acquire loads in
        // `send_until` and `read_some`; whatever was recorded in `terminal`
        // before this store is visible to a thread that sees `true`.
        if !self.stopped.swap(true, Ordering::AcqRel) {
            // The counter goes from 0 to 1, which cannot fail; if it did,
            // the stopped flag still ends every loop at its next check.
            let _ = self.wake.write(1);
        }
    }

    /// The error for an operation refused because the transport stopped.
    fn terminal_error(&self) -> TransportError {
        self.terminal
            .lock()
            .clone()
            .unwrap_or(TransportError::Closed)
    }

    /// Records why no more messages will come (unless a cause was recorded
    /// first) and returns the cause that stands. A fatal error (anything
    /// but the peer going away) also stops the send side.
    fn finish(&self, error: TransportError) -> TransportError {
        let fatal = !error.is_peer_gone();
        let first = self.terminal.lock().get_or_insert(error).clone();
        if fatal {
            self.stop();
        }
        first
    }

    /// Consumes a pending interrupt, if any.
    fn take_interrupt(&self) -> bool {
        // SYNC POINT: interrupt. Pairs with the Release store in
        // `interrupt_recv`. A load first: no read-modify-write per `recv`.
        if !self.interrupted.load(Ordering::Acquire)
            || !self.interrupted.swap(false, Ordering::AcqRel)
        {
            return false;
        }
        // Drain the signal (EAGAIN: it was already drained, or the writer
        // has not written yet; a late signal makes one `poll` return early).
        let _ = self.interrupt.read();
        true
    }
}

impl StreamTransport {
    /// A transport reading frames from `read` and writing them to `write`:
    /// two pipe ends, or two descriptors of the same socket (dup one with
    /// [`OwnedFd::try_clone`]). Sockets are recognised with `fstat`, and
    /// get `MSG_NOSIGNAL` and `shutdown(2)` on close. Both descriptors are
    /// switched to non-blocking mode.
    ///
    /// ```
    /// use orcwire::{StreamConfig, StreamTransport};
    /// use orcwire::Transport;
    /// use std::os::fd::OwnedFd;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let (ours, _theirs) = UnixStream::pair()?;
    /// let read = OwnedFd::from(ours);
    /// let write = read.try_clone()?;
    /// let t = StreamTransport::from_fds(read, write, StreamConfig::default())?;
    /// assert_eq!(t.name(), "uds");
    /// t.close(); // returns at once, though one socket serves both ways
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`StreamError::Config`] for an out-of-range config;
    /// [`StreamError::Os`] when a descriptor cannot be inspected or set up,
    /// or an eventfd cannot be created.
    pub fn from_fds(
        read: OwnedFd,
        write: OwnedFd,
        config: StreamConfig,
    ) -> Result<Arc<Self>, StreamError> {
        let kind = classify(read.as_fd())?;
        let write_is_socket = classify(write.as_fd())? != Kind::Pipe;
        Self::start(kind, read, write, write_is_socket, config)
    }

    /// A transport over a connected Unix stream socket.
    ///
    /// # Errors
    /// As [`from_fds`](Self::from_fds).
    pub fn from_unix(stream: UnixStream, config: StreamConfig) -> Result<Arc<Self>, StreamError> {
        let write = stream.try_clone().map_err(|source| StreamError::Os {
            what: "duplicate the socket",
            source,
        })?;
        Self::start(Kind::Unix, stream.into(), write.into(), true, config)
    }

    /// A transport over a connected TCP stream; sets `TCP_NODELAY`, since
    /// every frame is a request or reply someone is waiting for.
    ///
    /// # Errors
    /// As [`from_fds`](Self::from_fds), and [`StreamError::Os`] when
    /// `TCP_NODELAY` cannot be set.
    pub fn from_tcp(stream: TcpStream, config: StreamConfig) -> Result<Arc<Self>, StreamError> {
        stream.set_nodelay(true).map_err(|source| StreamError::Os {
            what: "set TCP_NODELAY",
            source,
        })?;
        let write = stream.try_clone().map_err(|source| StreamError::Os {
            what: "duplicate the socket",
            source,
        })?;
        Self::start(Kind::Tcp, stream.into(), write.into(), true, config)
    }

    /// Two transports connected by a pair of pipes, for in-process use and
    /// tests. The pipes are enlarged to 1 MiB where the system allows.
    ///
    /// # Errors
    /// As [`from_fds`](Self::from_fds), and [`StreamError::Os`] when the
    /// pipes cannot be created.
    pub fn pipe_pair(config: StreamConfig) -> Result<(Arc<Self>, Arc<Self>), StreamError> {
        let (a_read, b_write) = make_pipe()?;
        let (b_read, a_write) = make_pipe()?;
        let a = Self::start(Kind::Pipe, a_read, a_write, false, config.clone())?;
        let b = Self::start(Kind::Pipe, b_read, b_write, false, config)?;
        Ok((a, b))
    }

    /// Two transports connected by a Unix socket pair, for in-process use
    /// and tests.
    ///
    /// # Errors
    /// As [`from_fds`](Self::from_fds), and [`StreamError::Os`] when the
    /// socket pair cannot be created.
    pub fn unix_pair(config: StreamConfig) -> Result<(Arc<Self>, Arc<Self>), StreamError> {
        let (a, b) = UnixStream::pair().map_err(|source| StreamError::Os {
            what: "create a Unix socket pair",
            source,
        })?;
        Ok((
            Self::from_unix(a, config.clone())?,
            Self::from_unix(b, config)?,
        ))
    }

    fn start(
        kind: Kind,
        read: OwnedFd,
        write: OwnedFd,
        write_is_socket: bool,
        config: StreamConfig,
    ) -> Result<Arc<Self>, StreamError> {
        if config.max_message_size > MAX_MESSAGE_SIZE_LIMIT {
            return Err(StreamError::Config(format!(
                "max_message_size {} is above the largest supported value {MAX_MESSAGE_SIZE_LIMIT}",
                config.max_message_size
            )));
        }
        set_nonblocking(read.as_fd())?;
        set_nonblocking(write.as_fd())?;
        let eventfd = |what| {
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| StreamError::os(what, e))
        };
        Ok(Arc::new(Self {
            kind,
            max_message_size: config.max_message_size,
            shared: Shared {
                stopped: AtomicBool::new(false),
                wake: eventfd("create the wake eventfd")?,
                interrupted: AtomicBool::new(false),
                interrupt: eventfd("create the interrupt eventfd")?,
                terminal: Mutex::new(None),
            },
            writer: Mutex::new(Some(write)),
            write_is_socket,
            room_wait: AtomicBool::new(false),
            reader: Mutex::new(FrameReader::new(read, config.max_message_size)),
        }))
    }
}

impl Transport for StreamTransport {
    fn send_until(
        &self,
        opcode: Opcode,
        seq: u64,
        tag: u64,
        payload: &[u8],
        deadline: Option<Instant>,
        on_wait: &dyn Fn(),
    ) -> Result<(), TransportError> {
        let len = payload.len() as u64;
        if len > self.max_message_size {
            return Err(TransportError::TooLarge {
                size: len,
                limit: self.max_message_size,
            });
        }
        let header = encode_header(opcode, seq, tag, len);
        // Another sender may be blocked mid-frame: wait for it only until
        // the deadline.
        // A sender that finds the writer taken waits on the peer only if the
        // holder does (the stream is full); one merely writing lets go soon.
        let behind_holder = || {
            // SYNC POINT: room wait. Pairs with `write_frame`'s Release
            // stores.
            if self.room_wait.load(Ordering::Acquire) {
                on_wait();
            }
        };
        let Some(writer) = sync::lock_until(&self.writer, deadline, &behind_holder) else {
            return Err(TransportError::TimedOut);
        };
        // SYNC POINT: transport stopped (see `Shared::stop`).
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(self.shared.terminal_error());
        }
        let Some(fd) = writer.as_ref() else {
            return Err(self.shared.terminal_error());
        };
        match self.write_frame(fd.as_fd(), &header, payload, deadline, on_wait) {
            Ok(()) => Ok(()),
            Err(WriteStop::TimedOut) => Err(TransportError::TimedOut),
            Err(WriteStop::Woken) => Err(self.shared.terminal_error()),
            Err(WriteStop::PeerGone) => Err(TransportError::PeerHungUp),
            Err(WriteStop::Os(e)) => Err(TransportError::io(e.into())),
        }
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Received, TransportError> {
        let shared = &self.shared;
        if shared.take_interrupt() {
            return Ok(Received::Interrupted);
        }
        let mut reader = self.reader.lock();
        if let Some(error) = &reader.done {
            return Err(error.clone());
        }
        let io = Io { shared, deadline };
        match reader.next_frame(&io) {
            Ok(Some(message)) => Ok(Received::Message(message)),
            Ok(None) | Err(ReadStop::Eof) => {
                let error = shared.finish(TransportError::PeerHungUp);
                reader.done = Some(error.clone());
                Err(error)
            }
            Err(ReadStop::Failed(error)) => {
                let error = shared.finish(error);
                reader.done = Some(error.clone());
                Err(error)
            }
            Err(ReadStop::Stopped) => Err(shared.terminal_error()),
            Err(ReadStop::TimedOut) => Ok(Received::TimedOut),
            Err(ReadStop::Interrupted) => Ok(Received::Interrupted),
        }
    }

    fn interrupt_recv(&self) {
        // SYNC POINT: interrupt (Release half, see `take_interrupt`).
        self.shared.interrupted.store(true, Ordering::Release);
        // Wakes a `recv` blocked in `poll`; the counter cannot overflow in
        // practice, and a failed write only delays the interrupt to the
        // next `recv`.
        let _ = self.shared.interrupt.write(1);
    }

    fn close(&self) {
        self.shared
            .terminal
            .lock()
            .get_or_insert(TransportError::Closed);
        // Wakes a blocked `recv` and any blocked sender, which then release
        // the locks taken below.
        self.shared.stop();
        if let Some(fd) = self.writer.lock().take() {
            if self.write_is_socket {
                // Ends both directions of the socket even where other
                // descriptors of it stay open (a child's copy); ENOTCONN
                // just means the peer already went.
                let _ = shutdown(fd.as_raw_fd(), Shutdown::Both);
            }
            drop(fd);
        }
        // Close the read side too, so a pipe peer's writes fail at once
        // rather than fill the pipe. A `recv` holding it returns promptly:
        // it sees the stop in its next `poll` or read.
        let mut reader = self.reader.lock();
        reader.fd = None;
        reader.partial = None;
    }

    fn name(&self) -> &'static str {
        self.kind.name()
    }
}

impl Drop for StreamTransport {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for StreamTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTransport")
            .field("kind", &self.kind.name())
            .field("max_message_size", &self.max_message_size)
            .field("stopped", &self.shared.stopped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Frame header

/// The wire header of a message with `payload_len` bytes of payload.
fn encode_header(opcode: Opcode, seq: u64, tag: u64, payload_len: u64) -> [u8; HEADER_SIZE] {
    let mut header = [0u8; HEADER_SIZE];
    let fields = [HEADER_SIZE as u64 + payload_len, opcode.to_wire(), seq, tag];
    for (chunk, field) in header.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&field.to_le_bytes());
    }
    header
}

/// Validates a header read from the peer: the message it announces (with
/// an empty payload still to be filled in) and the payload length. Nothing
/// is allocated for a header that fails.
fn parse_header(
    header: &[u8; HEADER_SIZE],
    max_message_size: u64,
) -> Result<(Message, usize), TransportError> {
    let mut fields = [0u64; 4];
    for (field, chunk) in fields.iter_mut().zip(header.chunks_exact(8)) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        *field = u64::from_le_bytes(bytes);
    }
    let [total, opcode, seq, tag] = fields;
    let Some(payload_len) = total.checked_sub(HEADER_SIZE as u64) else {
        return Err(TransportError::Protocol(format!(
            "frame size {total} is smaller than the {HEADER_SIZE}-byte header"
        )));
    };
    if payload_len > max_message_size {
        return Err(TransportError::TooLarge {
            size: payload_len,
            limit: max_message_size,
        });
    }
    let message = decode_message(opcode, seq, tag, WrapperFunctionBuffer::new())?;
    // Cannot fail: max_message_size <= isize::MAX was checked at setup.
    let payload_len = usize::try_from(payload_len).map_err(|_| TransportError::TooLarge {
        size: payload_len,
        limit: max_message_size,
    })?;
    Ok((message, payload_len))
}

fn truncated(got: usize, want: usize) -> TransportError {
    TransportError::Protocol(format!(
        "the stream ended in the middle of a message (truncated: {got} of {want} bytes); the peer crashed or wrote a partial frame"
    ))
}

// ---------------------------------------------------------------------------
// Reading

/// Why a read stopped without a whole message.
enum ReadStop {
    /// The transport was stopped.
    Stopped,
    /// End of stream.
    Eof,
    /// The connection is unusable.
    Failed(TransportError),
    /// The caller's deadline passed; the partial frame is kept.
    TimedOut,
    /// `interrupt_recv` was called; the partial frame is kept.
    Interrupted,
}

/// A frame whose header was read and whose payload is arriving.
struct Partial {
    message: Message,
    /// Payload bytes received, in `0 ..= message.payload.len()`.
    filled: usize,
}

/// Buffered frame reader over the read descriptor. Every byte it took from
/// the descriptor is kept here (in `buf`, or in `partial`) before it
/// returns, so a deadline or an interrupt in the middle of a frame loses
/// nothing: the next `recv` goes on where this one stopped.
struct FrameReader {
    /// `None` once closed.
    fd: Option<OwnedFd>,
    max_message_size: u64,
    buf: Box<[u8]>,
    /// Start of the unparsed bytes; in `0 ..= end`.
    start: usize,
    /// End of the unparsed bytes; in `start ..= buf.len()`.
    end: usize,
    partial: Option<Partial>,
    /// Set once the stream ended or broke: every later `recv` returns it.
    done: Option<TransportError>,
}

/// How a `recv` waits: its deadline and the transport's signals.
struct Io<'a> {
    shared: &'a Shared,
    deadline: Option<Instant>,
}

impl FrameReader {
    fn new(fd: OwnedFd, max_message_size: u64) -> Self {
        Self {
            fd: Some(fd),
            max_message_size,
            buf: vec![0u8; READ_BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            partial: None,
            done: None,
        }
    }

    /// The next whole message; `Ok(None)` at a clean end of stream.
    fn next_frame(&mut self, io: &Io<'_>) -> Result<Option<Message>, ReadStop> {
        loop {
            debug_assert!(self.start <= self.end && self.end <= self.buf.len());
            if let Some(p) = &mut self.partial {
                let len = p.message.payload.len();
                let dst = p.message.payload.as_mut_slice();
                let take = (self.end - self.start).min(len - p.filled);
                dst[p.filled..p.filled + take]
                    .copy_from_slice(&self.buf[self.start..self.start + take]);
                self.start += take;
                p.filled += take;
                if p.filled == len {
                    let done = self.partial.take().map(|p| p.message);
                    return Ok(done);
                }
                // The buffer is empty here: everything in it went to `dst`.
                self.start = 0;
                self.end = 0;
                let want = len - p.filled;
                let Some(fd) = self.fd.as_ref() else {
                    return Err(ReadStop::Stopped);
                };
                let got = if want >= self.buf.len() {
                    // Large payloads are read in place.
                    read_some(fd.as_fd(), &mut dst[p.filled..], io)
                } else {
                    read_some(fd.as_fd(), &mut self.buf[..], io).map(|n| {
                        self.end = n;
                        0
                    })
                };
                match got {
                    Ok(n) => p.filled += n,
                    Err(ReadStop::Eof) => {
                        return Err(ReadStop::Failed(truncated(
                            HEADER_SIZE + p.filled,
                            HEADER_SIZE + len,
                        )))
                    }
                    Err(stop) => return Err(stop),
                }
                continue;
            }
            if self.end - self.start >= HEADER_SIZE {
                let mut header = [0u8; HEADER_SIZE];
                header.copy_from_slice(&self.buf[self.start..self.start + HEADER_SIZE]);
                self.start += HEADER_SIZE;
                let (mut message, len) =
                    parse_header(&header, self.max_message_size).map_err(ReadStop::Failed)?;
                message.payload = WrapperFunctionBuffer::try_zeroed(len)
                    .map_err(|e| ReadStop::Failed(TransportError::Io(e.to_string())))?;
                self.partial = Some(Partial { message, filled: 0 });
                continue;
            }
            // Not a whole header yet: make room at the end and read.
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.buf.len() - self.start < HEADER_SIZE {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let Some(fd) = self.fd.as_ref() else {
                return Err(ReadStop::Stopped);
            };
            match read_some(fd.as_fd(), &mut self.buf[self.end..], io) {
                Ok(n) => self.end += n,
                Err(ReadStop::Eof) if self.end == self.start => return Ok(None),
                Err(ReadStop::Eof) => {
                    return Err(ReadStop::Failed(truncated(
                        self.end - self.start,
                        HEADER_SIZE,
                    )))
                }
                Err(stop) => return Err(stop),
            }
        }
    }
}

/// One `read(2)` of at least one byte into a non-empty `dst`, waiting in
/// `poll` (with the stop and interrupt eventfds, until the deadline) while
/// there is nothing to read.
fn read_some(fd: BorrowedFd<'_>, dst: &mut [u8], io: &Io<'_>) -> Result<usize, ReadStop> {
    debug_assert!(!dst.is_empty());
    loop {
        // SYNC POINT: transport stopped (see `Shared::stop`). Checked on
        // every read so that a peer streaming without pause cannot keep
        // a reader from noticing a close.
        if io.shared.stopped.load(Ordering::Acquire) {
            return Err(ReadStop::Stopped);
        }
        match nix::unistd::read(fd, dst) {
            Ok(0) => return Err(ReadStop::Eof),
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => io.wait_readable(fd)?,
            // The peer closed with data unread, or its host reset the
            // connection: it is gone, whatever it was in the middle of.
            Err(Errno::ECONNRESET) => return Err(ReadStop::Failed(TransportError::PeerHungUp)),
            Err(e) => return Err(ReadStop::Failed(TransportError::io(e.into()))),
        }
    }
}

impl Io<'_> {
    /// Waits in `poll` until `fd` is readable (or reports an error, which
    /// the next read turns into one), the transport stops, an interrupt
    /// comes, or the deadline passes.
    fn wait_readable(&self, fd: BorrowedFd<'_>) -> Result<(), ReadStop> {
        loop {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ReadStop::TimedOut);
            }
            let mut fds = [
                PollFd::new(fd, PollFlags::POLLIN),
                PollFd::new(self.shared.wake.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.shared.interrupt.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, poll_timeout(self.deadline)) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ReadStop::Failed(TransportError::io(e.into()))),
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            if ready(1) {
                return Err(ReadStop::Stopped);
            }
            if ready(2) && self.shared.take_interrupt() {
                return Err(ReadStop::Interrupted);
            }
            if ready(0) {
                return Ok(());
            }
            // A timeout (checked at the top) or a stale interrupt signal.
            if ready(2) {
                let _ = self.shared.interrupt.read();
            }
        }
    }
}

/// `poll`'s timeout for `deadline`, rounded up to whole milliseconds.
fn poll_timeout(deadline: Option<Instant>) -> PollTimeout {
    match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = d
                .saturating_duration_since(Instant::now())
                .as_nanos()
                .div_ceil(1_000_000)
                .min(i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

// ---------------------------------------------------------------------------
// Writing and waiting

/// Why a wait in `poll` ended without the descriptor being ready.
enum WaitStop {
    /// The wake eventfd is signalled: the transport stopped.
    Woken,
    /// `poll` itself failed.
    Os(Errno),
}

/// Waits until `fd` reports `events` (or an error/hang-up, which the next
/// I/O call turns into an error) or the wake eventfd is signalled, or
/// `deadline` passes (then `Ok` with nothing ready: the caller re-checks).
fn wait_ready(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    wake: &EventFd,
    deadline: Option<Instant>,
) -> Result<(), WaitStop> {
    let mut fds = [
        PollFd::new(fd, events),
        PollFd::new(wake.as_fd(), PollFlags::POLLIN),
    ];
    loop {
        match poll(&mut fds, poll_timeout(deadline)) {
            Ok(_) => break,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(WaitStop::Os(e)),
        }
    }
    if fds[1].revents().is_some_and(|r| !r.is_empty()) {
        return Err(WaitStop::Woken);
    }
    Ok(())
}

/// Why a frame could not be written.
enum WriteStop {
    /// The transport stopped while the write was blocked.
    Woken,
    /// The deadline passed before any byte was written.
    TimedOut,
    /// `EPIPE`/`ECONNRESET`: nobody reads the other end any more.
    PeerGone,
    /// Any other OS error.
    Os(Errno),
}

impl StreamTransport {
    /// Writes `header` then `payload`, whole, with vectored non-blocking writes,
    /// waiting in `poll` (with the wake eventfd) while the stream is full.
    fn write_frame(
        &self,
        fd: BorrowedFd<'_>,
        header: &[u8; HEADER_SIZE],
        payload: &[u8],
        deadline: Option<Instant>,
        on_wait: &dyn Fn(),
    ) -> Result<(), WriteStop> {
        let (is_socket, wake, room_wait) =
            (self.write_is_socket, &self.shared.wake, &self.room_wait);
        let total = HEADER_SIZE + payload.len();
        let mut done = 0;
        while done < total {
            let both;
            let one;
            let iov: &[IoSlice<'_>] = if done < HEADER_SIZE {
                both = [IoSlice::new(&header[done..]), IoSlice::new(payload)];
                &both
            } else {
                one = [IoSlice::new(&payload[done - HEADER_SIZE..])];
                &one
            };
            let written = if is_socket {
                sendmsg::<()>(
                    fd.as_raw_fd(),
                    iov,
                    &[],
                    MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                    None,
                )
            } else {
                nix::sys::uio::writev(fd, iov)
            };
            match written {
                Ok(n) => done += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    // The deadline only holds before the first byte: a frame
                    // half written must be finished.
                    let deadline = if done == 0 { deadline } else { None };
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(WriteStop::TimedOut);
                    }
                    // SYNC POINT: room wait (Release half, see `send_until`).
                    room_wait.store(true, Ordering::Release);
                    on_wait();
                    let ready = wait_ready(fd, PollFlags::POLLOUT, wake, deadline);
                    room_wait.store(false, Ordering::Release);
                    match ready {
                        Ok(()) => {}
                        Err(WaitStop::Woken) => return Err(WriteStop::Woken),
                        Err(WaitStop::Os(e)) => return Err(WriteStop::Os(e)),
                    }
                }
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(WriteStop::PeerGone),
                Err(e) => return Err(WriteStop::Os(e)),
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Descriptor setup

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), StreamError> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)
        .map_err(|e| StreamError::os("read the descriptor flags", e))?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))
        .map_err(|e| StreamError::os("make the descriptor non-blocking", e))?;
    Ok(())
}

/// Tells sockets (by family) from everything else.
fn classify(fd: BorrowedFd<'_>) -> Result<Kind, StreamError> {
    let stat = fstat(fd).map_err(|e| StreamError::os("inspect the descriptor", e))?;
    let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if format != SFlag::S_IFSOCK {
        return Ok(Kind::Pipe);
    }
    let addr: SockaddrStorage =
        getsockname(fd.as_raw_fd()).map_err(|e| StreamError::os("read the socket address", e))?;
    Ok(match addr.family() {
        Some(AddressFamily::Unix) => Kind::Unix,
        Some(AddressFamily::Inet | AddressFamily::Inet6) => Kind::Tcp,
        _ => Kind::OtherSocket,
    })
}

/// A pipe `(read, write)`, close-on-exec, enlarged where allowed.
fn make_pipe() -> Result<(OwnedFd, OwnedFd), StreamError> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| StreamError::os("create a pipe", e))?;
    // Best effort: a larger pipe means fewer wake-ups for big messages; the
    // default size works too, so a refusal (EPERM above the limit) is fine.
    let _ = fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_CAPACITY));
    Ok((read, write))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(total: u64, opcode: u64, seq: u64, tag: u64) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[0..8].copy_from_slice(&total.to_le_bytes());
        h[8..16].copy_from_slice(&opcode.to_le_bytes());
        h[16..24].copy_from_slice(&seq.to_le_bytes());
        h[24..32].copy_from_slice(&tag.to_le_bytes());
        h
    }

    #[test]
    fn header_layout_is_llvms() {
        let h = encode_header(Opcode::Result, 0x0102_0304_0506_0708, 0xAA, 5);
        assert_eq!(h, header(37, 2, 0x0102_0304_0506_0708, 0xAA));
        assert_eq!(&h[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn parse_round_trips_every_opcode() {
        for op in [
            Opcode::Setup,
            Opcode::Hangup,
            Opcode::Result,
            Opcode::CallWrapper,
        ] {
            let h = encode_header(op, 9, u64::MAX, 100);
            let (m, len) = parse_header(&h, 100).unwrap();
            assert_eq!((m.opcode, m.seq, m.tag, len), (op, 9, u64::MAX, 100));
            assert!(m.payload.is_empty());
        }
    }

    #[test]
    fn parse_rejects_short_frames() {
        for total in [0, 1, 31] {
            let err = parse_header(&header(total, 0, 0, 0), 1 << 20).unwrap_err();
            assert!(
                matches!(&err, TransportError::Protocol(t) if t.contains("smaller than")),
                "{err:?}"
            );
        }
        assert_eq!(parse_header(&header(32, 1, 0, 0), 0).unwrap().1, 0);
    }

    #[test]
    fn parse_rejects_unknown_opcode() {
        let err = parse_header(&header(32, 9, 0, 0), 1 << 20).unwrap_err();
        assert!(
            matches!(&err, TransportError::Protocol(t) if t.contains("opcode 9")),
            "{err:?}"
        );
    }

    #[test]
    fn parse_enforces_the_limit_exactly() {
        assert_eq!(parse_header(&header(32 + 64, 3, 0, 0), 64).unwrap().1, 64);
        assert_eq!(
            parse_header(&header(32 + 65, 3, 0, 0), 64).unwrap_err(),
            TransportError::TooLarge {
                size: 65,
                limit: 64
            }
        );
        assert_eq!(
            parse_header(&header(u64::MAX, 3, 0, 0), DEFAULT_MAX_MESSAGE_SIZE).unwrap_err(),
            TransportError::TooLarge {
                size: u64::MAX - 32,
                limit: DEFAULT_MAX_MESSAGE_SIZE
            }
        );
    }

    #[test]
    fn size_check_comes_before_opcode_check() {
        // Either is fatal; the size is the cheaper and more telling one.
        let err = parse_header(&header(u64::MAX, 77, 0, 0), 10).unwrap_err();
        assert!(matches!(err, TransportError::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn config_limit_is_checked() {
        let config = StreamConfig {
            max_message_size: u64::MAX,
        };
        let err = StreamTransport::pipe_pair(config).unwrap_err();
        assert!(matches!(err, StreamError::Config(_)), "{err:?}");
    }
}
