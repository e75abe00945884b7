//! Handing one fd to the peer over a Unix socket (`SCM_RIGHTS`), with a
//! few bytes of payload riding along (for instance the segment's layout
//! parameters).
//!
//! The socket pair that carried the segment stays open afterwards as the
//! liveness channel ([`crate::liveness`]). [`socket_pair`] makes a
//! `SOCK_SEQPACKET` pair, which keeps the payload of one [`send_fd`] in
//! one [`recv_fd`]; on a `SOCK_STREAM` socket the kernel may deliver
//! bytes sent before the fd in the same read, so framing is the caller's
//! job there.
//!
//! The receiver trusts nothing: it gets the fd close-on-exec
//! (`MSG_CMSG_CLOEXEC`, so no child spawned meanwhile inherits it), wants
//! exactly one fd, and closes every fd it got when the message is not
//! exactly that.
//!
//! Relies on: Unix-domain `SCM_RIGHTS` and Linux's `MSG_CMSG_CLOEXEC`
//! (through `nix`).

use std::io::IoSlice;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};

/// Room for this many fds in the receive control buffer, so a peer that
/// sends a few too many is caught (and every one of them closed) rather
/// than truncated.
const MAX_FDS_SEEN: usize = 8;

/// Something went wrong sending or receiving an fd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FdPassError {
    /// `send_fd` was given no payload.
    #[error("an fd must travel with at least one payload byte: stream sockets drop ancillary data sent with none")]
    EmptyPayload,
    /// `recv_fd` was given an empty buffer.
    #[error("the receive buffer is empty; pass room for the payload")]
    EmptyBuffer,
    /// The peer closed its end (EOF, `EPIPE` or `ECONNRESET`).
    #[error("the peer closed the socket before the fd arrived; it has exited or given up")]
    PeerClosed,
    /// A message arrived without an fd.
    #[error("the peer sent {bytes} bytes without an fd; expected the segment fd")]
    NoFd {
        /// Payload bytes received.
        bytes: usize,
    },
    /// A message arrived with more than one fd; all were closed.
    #[error("the peer sent {count} fds where exactly one was expected; all were closed")]
    TooManyFds {
        /// Fds received (at least 2; all closed).
        count: usize,
    },
    /// The kernel truncated the control data (`MSG_CTRUNC`); any fds that
    /// did arrive were closed.
    #[error("the fd message's control data was truncated (too many fds or an unexpected control message); closed what arrived")]
    ControlTruncated,
    /// The payload did not fit the buffer (`MSG_TRUNC`, datagram or
    /// seqpacket sockets); the fd was closed.
    #[error(
        "the payload sent with the fd was larger than the {buf_len}-byte buffer; the fd was closed"
    )]
    PayloadTruncated {
        /// Size of the buffer given.
        buf_len: usize,
    },
    /// Nothing arrived within the time limit.
    #[error("no fd arrived within {0:?}; the peer is slow or stuck")]
    Timeout(Duration),
    /// An OS call failed.
    #[error("{op} failed while passing an fd: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The error the kernel returned.
        source: Errno,
    },
}

/// Makes a connected `AF_UNIX`/`SOCK_SEQPACKET` pair, both ends
/// close-on-exec: one end for us, one for the peer.
///
/// # Errors
/// [`FdPassError::Os`] when `socketpair` fails (fd limit).
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd), FdPassError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|source| FdPassError::Os {
        op: "socketpair",
        source,
    })
}

/// Sends `fd` over the Unix socket `sock` together with `payload`.
///
/// Blocks while the socket buffer is full. Never raises `SIGPIPE`
/// (`MSG_NOSIGNAL`). On a stream socket a partial send is completed with
/// further sends (the fd travels with the first byte).
///
/// # Errors
/// [`FdPassError::EmptyPayload`] for an empty payload,
/// [`FdPassError::PeerClosed`] when the peer's end is closed,
/// [`FdPassError::Os`] for other failures (`EBADF`, `ENOTSOCK`, ...).
///
/// # Examples
/// ```
/// use orcwire_shm::{recv_fd, send_fd, socket_pair, Segment};
///
/// let (ours, theirs) = socket_pair()?;
/// let seg = Segment::create(4096)?;
/// send_fd(ours.as_fd(), seg.fd(), b"layout v1")?;
/// let mut buf = [0u8; 64];
/// let (fd, n) = recv_fd(theirs.as_fd(), &mut buf)?;
/// assert_eq!(&buf[..n], b"layout v1");
/// let _peer_view = Segment::from_fd(fd, 4096)?;
/// # use std::os::fd::AsFd;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn send_fd(
    sock: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    payload: &[u8],
) -> Result<(), FdPassError> {
    if payload.is_empty() {
        return Err(FdPassError::EmptyPayload);
    }
    let fds = [fd.as_raw_fd()];
    let cmsgs = [ControlMessage::ScmRights(&fds)];
    let mut sent = loop {
        let iov = [IoSlice::new(payload)];
        match sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => break n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(send_error(e)),
        }
    };
    while sent < payload.len() {
        let iov = [IoSlice::new(&payload[sent..])];
        match sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(send_error(e)),
        }
    }
    Ok(())
}

fn send_error(e: Errno) -> FdPassError {
    match e {
        Errno::EPIPE | Errno::ECONNRESET => FdPassError::PeerClosed,
        source => FdPassError::Os {
            op: "sendmsg",
            source,
        },
    }
}

/// Receives exactly one fd (close-on-exec) and its payload from the Unix
/// socket `sock`, waiting as long as it takes. Returns the fd and the
/// number of payload bytes written to `buf`.
///
/// # Errors
/// [`FdPassError::PeerClosed`] on EOF, [`FdPassError::NoFd`],
/// [`FdPassError::TooManyFds`], [`FdPassError::ControlTruncated`],
/// [`FdPassError::PayloadTruncated`] for a malformed message (every fd it
/// carried is closed), [`FdPassError::EmptyBuffer`],
/// [`FdPassError::Os`] for socket errors.
pub fn recv_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(OwnedFd, usize), FdPassError> {
    loop {
        match recv_once(sock, buf, 0) {
            Err(FdPassError::Os {
                source: Errno::EINTR,
                ..
            }) => continue,
            other => return other,
        }
    }
}

/// Like [`recv_fd`], but gives up after `timeout`.
///
/// # Errors
/// As [`recv_fd`], plus [`FdPassError::Timeout`] when nothing arrived in
/// time.
///
/// # Examples
/// ```
/// use std::os::fd::AsFd;
/// use std::time::Duration;
/// use orcwire_shm::{recv_fd_timeout, socket_pair, FdPassError};
///
/// let (_ours, theirs) = socket_pair()?;
/// let mut buf = [0u8; 16];
/// let res = recv_fd_timeout(theirs.as_fd(), &mut buf, Duration::from_millis(10));
/// assert!(matches!(res, Err(FdPassError::Timeout(_))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn recv_fd_timeout(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    timeout: Duration,
) -> Result<(OwnedFd, usize), FdPassError> {
    let deadline = Instant::now() + timeout;
    loop {
        let readable = poll_readable(sock, deadline)
            .map_err(|source| FdPassError::Os { op: "poll", source })?;
        if readable {
            // POLLHUP/POLLERR included: recvmsg then reports EOF or the error.
            match recv_once(sock, buf, libc::MSG_DONTWAIT) {
                Err(FdPassError::Os {
                    source: Errno::EAGAIN | Errno::EINTR,
                    ..
                }) => {}
                other => return other,
            }
        }
        if Instant::now() >= deadline {
            return Err(FdPassError::Timeout(timeout));
        }
    }
}

/// Waits until `fd` is readable or hung up (`true`), or `deadline` passes
/// (`false`). Interrupted polls are retried.
///
/// # Errors
/// The `poll` system call's error, other than `EINTR`.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, deadline: Instant) -> Result<bool, Errno> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up so a sub-millisecond remainder still waits rather than
        // spinning; poll's limit is an i32 of milliseconds.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd, and we pass a count of 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        if rc > 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// Control-message buffer, aligned like `struct cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 128]);

/// One `recvmsg`, validated. Every fd received is owned before any check,
/// so an early return closes them all — including the ones that did fit
/// when the control data was truncated.
fn recv_once(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    extra: libc::c_int,
) -> Result<(OwnedFd, usize), FdPassError> {
    if buf.is_empty() {
        return Err(FdPassError::EmptyBuffer);
    }
    let buf_len = buf.len();
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS_SEEN * size_of::<RawFd>()) as libc::c_uint) };
    debug_assert!(space as usize <= cbuf.0.len());
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf_len,
    };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at one iovec over `buf` (valid for `buf_len`
    // writable bytes) and at `cbuf` (valid for `space` bytes, aligned for
    // cmsghdr); both outlive the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | extra) };
    if n < 0 {
        return Err(match Errno::last() {
            Errno::ECONNRESET => FdPassError::PeerClosed,
            source => FdPassError::Os {
                op: "recvmsg",
                source,
            },
        });
    }
    let bytes = n as usize;

    let mut fds: Vec<OwnedFd> = Vec::new();
    // SAFETY: `msg` was filled in by a successful recvmsg; CMSG_FIRSTHDR /
    // CMSG_NXTHDR stay within `msg_controllen` bytes of `cbuf`, and the
    // kernel wrote every header they return.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null headers from CMSG_FIRSTHDR/NXTHDR lie inside
        // `cbuf`; read unaligned to make no assumption about padding.
        let hdr = unsafe { cmsg.read_unaligned() };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: pure arithmetic / pointer offset within the header.
            let (data, header_len) = unsafe { (libc::CMSG_DATA(cmsg), libc::CMSG_LEN(0) as usize) };
            let data_end = cbuf.0.as_ptr() as usize + cbuf.0.len();
            let room = data_end.saturating_sub(data as usize);
            let data_len = (hdr.cmsg_len as usize).saturating_sub(header_len).min(room);
            for i in 0..data_len / size_of::<RawFd>() {
                // SAFETY: `i` indexes within `data_len` bytes of the
                // header's data, inside `cbuf`.
                let raw = unsafe { data.cast::<RawFd>().add(i).read_unaligned() };
                // SAFETY: the kernel just installed `raw` in our fd table
                // for this message; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; returns null past the end.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }

    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(FdPassError::ControlTruncated);
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(FdPassError::PayloadTruncated { buf_len });
    }
    match fds.len() {
        0 if bytes == 0 => Err(FdPassError::PeerClosed),
        0 => Err(FdPassError::NoFd { bytes }),
        1 => match fds.pop() {
            Some(fd) => Ok((fd, bytes)),
            None => Err(FdPassError::NoFd { bytes }),
        },
        count => Err(FdPassError::TooManyFds { count }),
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Whether the read end `r` of a pipe sees EOF within a second, i.e.
    /// every copy of the write end has been closed.
    fn sees_eof(r: &OwnedFd) -> bool {
        let mut pfd = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if rc != 1 {
            return false;
        }
        let mut b = [0u8; 1];
        nix::unistd::read(r, &mut b) == Ok(0)
    }

    fn send_raw(sock: BorrowedFd<'_>, fds: &[RawFd], payload: &[u8]) {
        let iov = [IoSlice::new(payload)];
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            vec![]
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
    }

    #[test]
    fn passes_one_fd_with_payload_cloexec() {
        let (a, b) = socket_pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send_fd(a.as_fd(), w.as_fd(), b"hello").unwrap();
        let mut buf = [0u8; 16];
        let (got, n) = recv_fd(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_ne!(got.as_raw_fd(), w.as_raw_fd());
        // SAFETY: F_GETFD on an fd we own.
        let fl = unsafe { libc::fcntl(got.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(fl & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        nix::unistd::write(&got, b"x").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(nix::unistd::read(&r, &mut one), Ok(1));
        assert_eq!(one[0], b'x');
    }

    #[test]
    fn empty_payload_and_buffer_are_refused() {
        let (a, b) = socket_pair().unwrap();
        assert!(matches!(
            send_fd(a.as_fd(), a.as_fd(), b""),
            Err(FdPassError::EmptyPayload)
        ));
        assert!(matches!(
            recv_fd(b.as_fd(), &mut []),
            Err(FdPassError::EmptyBuffer)
        ));
    }

    #[test]
    fn message_without_fd_is_an_error() {
        let (a, b) = socket_pair().unwrap();
        send_raw(a.as_fd(), &[], b"abc");
        let mut buf = [0u8; 8];
        assert!(matches!(
            recv_fd(b.as_fd(), &mut buf),
            Err(FdPassError::NoFd { bytes: 3 })
        ));
    }

    #[test]
    fn eof_is_peer_closed() {
        let (a, b) = socket_pair().unwrap();
        drop(a);
        let mut buf = [0u8; 8];
        assert!(matches!(
            recv_fd(b.as_fd(), &mut buf),
            Err(FdPassError::PeerClosed)
        ));
        let res = recv_fd_timeout(b.as_fd(), &mut buf, Duration::from_secs(5));
        assert!(matches!(res, Err(FdPassError::PeerClosed)));
    }

    #[test]
    fn send_to_closed_peer_is_peer_closed() {
        let (a, b) = socket_pair().unwrap();
        drop(b);
        assert!(matches!(
            send_fd(a.as_fd(), a.as_fd(), b"x"),
            Err(FdPassError::PeerClosed)
        ));
    }

    #[test]
    fn two_fds_are_refused_and_closed() {
        let (a, b) = socket_pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send_raw(a.as_fd(), &[w.as_raw_fd(), w.as_raw_fd()], b"x");
        drop(w);
        let mut buf = [0u8; 8];
        let res = recv_fd(b.as_fd(), &mut buf);
        assert!(
            matches!(res, Err(FdPassError::TooManyFds { count: 2 })),
            "{res:?}"
        );
        assert!(sees_eof(&r), "a received copy of the write end was leaked");
    }

    #[test]
    fn truncated_control_data_is_refused_and_closed() {
        let (a, b) = socket_pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let many = [w.as_raw_fd(); MAX_FDS_SEEN + 4];
        send_raw(a.as_fd(), &many, b"x");
        drop(w);
        let mut buf = [0u8; 8];
        let res = recv_fd(b.as_fd(), &mut buf);
        assert!(matches!(res, Err(FdPassError::ControlTruncated)), "{res:?}");
        assert!(sees_eof(&r), "a received copy of the write end was leaked");
    }

    #[test]
    fn truncated_payload_is_refused_and_closed() {
        let (a, b) = socket_pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send_fd(a.as_fd(), w.as_fd(), &[7u8; 100]).unwrap();
        drop(w);
        let mut buf = [0u8; 10];
        let res = recv_fd(b.as_fd(), &mut buf);
        assert!(
            matches!(res, Err(FdPassError::PayloadTruncated { buf_len: 10 })),
            "{res:?}"
        );
        assert!(sees_eof(&r), "the received write end was leaked");
    }

    #[test]
    fn timeout_is_bounded_and_late_fd_arrives() {
        let (a, b) = socket_pair().unwrap();
        let mut buf = [0u8; 8];
        let t0 = Instant::now();
        let res = recv_fd_timeout(b.as_fd(), &mut buf, Duration::from_millis(50));
        let took = t0.elapsed();
        assert!(matches!(res, Err(FdPassError::Timeout(_))), "{res:?}");
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_secs(5),
            "{took:?}"
        );
        send_fd(a.as_fd(), a.as_fd(), b"late").unwrap();
        let (_fd, n) = recv_fd_timeout(b.as_fd(), &mut buf, Duration::from_secs(5)).unwrap();
        assert_eq!(&buf[..n], b"late");
    }

    #[test]
    fn stream_socket_works_too() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (_r, w) = nix::unistd::pipe().unwrap();
        send_fd(a.as_fd(), w.as_fd(), b"stream").unwrap();
        let mut buf = [0u8; 16];
        let (_fd, n) = recv_fd(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"stream");
    }
}
