//! Reading: a buffered, resumable frame reader over the read descriptor,
//! and `read(2)` / `poll(2)` with the transport's stop and interrupt
//! signals.

use super::*;

/// Why a read stopped without a whole message.
pub(super) enum ReadStop {
    /// The transport was stopped.
    Stopped,
    /// End of stream.
    Eof,
    /// End of stream inside a frame: the peer wrote part of a message and
    /// went away (it died mid-write, or it is broken).
    Truncated(TransportError),
    /// The connection is unusable.
    Failed(TransportError),
    /// The caller's deadline passed; the partial frame is kept.
    TimedOut,
    /// `interrupt_recv` was called; the partial frame is kept.
    Interrupted,
}

/// A frame whose header was read and whose payload is arriving.
pub(super) struct Partial {
    message: Message,
    /// Payload bytes received, in `0 ..= message.payload.len()`.
    filled: usize,
}

/// Buffered frame reader over the read descriptor. Every byte it took from
/// the descriptor is kept here (in `buf`, or in `partial`) before it
/// returns, so a deadline or an interrupt in the middle of a frame loses
/// nothing: the next `recv` goes on where this one stopped.
pub(super) struct FrameReader {
    /// `None` once closed.
    pub(super) fd: Option<OwnedFd>,
    max_message_size: u64,
    buf: Box<[u8]>,
    /// Start of the unparsed bytes; in `0 ..= end`.
    start: usize,
    /// End of the unparsed bytes; in `start ..= buf.len()`.
    end: usize,
    pub(super) partial: Option<Partial>,
    /// Set once the stream ended or broke: every later `recv` returns it.
    pub(super) done: Option<TransportError>,
}

/// How a `recv` waits: its deadline and the transport's signals.
pub(super) struct Io<'a> {
    pub(super) shared: &'a Shared,
    pub(super) deadline: Option<Instant>,
}

impl FrameReader {
    pub(super) fn new(fd: OwnedFd, max_message_size: u64) -> Self {
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
    pub(super) fn next_frame(&mut self, io: &Io<'_>) -> Result<Option<Message>, ReadStop> {
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
                        return Err(ReadStop::Truncated(truncated(
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
                    return Err(ReadStop::Truncated(truncated(
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
pub(super) fn read_some(
    fd: BorrowedFd<'_>,
    dst: &mut [u8],
    io: &Io<'_>,
) -> Result<usize, ReadStop> {
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
    pub(super) fn wait_readable(&self, fd: BorrowedFd<'_>) -> Result<(), ReadStop> {
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
pub(super) fn poll_timeout(deadline: Option<Instant>) -> PollTimeout {
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
