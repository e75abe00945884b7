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

mod fd;
mod frame;
mod liveness;
mod read;
#[cfg(test)]
mod tests;
mod write;

use fd::*;
use frame::*;
use read::*;
use write::*;

/// Size of the frame header: four little-endian `u64`s.
pub const HEADER_SIZE: usize = 32;

/// How long an end of stream waits for a watched peer process's exit to
/// become visible ([`StreamTransport::watch_process`]): a dying process
/// closes its descriptors just before it is marked exited.
pub const DEATH_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

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
    /// A pidfd of the peer process, when the application knows it
    /// ([`watch_process`](StreamTransport::watch_process)): an end of
    /// stream is then told apart from the peer's death.
    peer_process: Mutex<Option<OwnedFd>>,
    /// Set once the peer process was seen dead.
    peer_dead: AtomicBool,
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
            peer_process: Mutex::new(None),
            peer_dead: AtomicBool::new(false),
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
                let gone = if self.peer_exited() {
                    TransportError::PeerDied
                } else {
                    TransportError::PeerHungUp
                };
                let error = shared.finish(gone);
                reader.done = Some(error.clone());
                Err(error)
            }
            Err(ReadStop::Truncated(error)) => {
                // A process killed while it wrote leaves half a frame:
                // that is its death, not a protocol error.
                let error = if self.peer_exited() {
                    TransportError::PeerDied
                } else {
                    error
                };
                let error = shared.finish(error);
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

    fn peer_died(&self) -> bool {
        // SYNC POINT: see `peer_exited`.
        self.peer_dead.load(Ordering::Acquire)
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
