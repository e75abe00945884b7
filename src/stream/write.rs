//! Writing whole frames (`writev`/`sendmsg`), waiting for the descriptor
//! in `poll(2)` with the wake-up eventfd.

use super::*;

/// Why a wait in `poll` ended without the descriptor being ready.
pub(super) enum WaitStop {
    /// The wake eventfd is signalled: the transport stopped.
    Woken,
    /// `poll` itself failed.
    Os(Errno),
}

/// Waits until `fd` reports `events` (or an error/hang-up, which the next
/// I/O call turns into an error) or the wake eventfd is signalled, or
/// `deadline` passes (then `Ok` with nothing ready: the caller re-checks).
pub(super) fn wait_ready(
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
pub(super) enum WriteStop {
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
    pub(super) fn write_frame(
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
