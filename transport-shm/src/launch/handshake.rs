//! The parts every flow shares: the executor's one-datagram answer
//! (`ATTACHED`, or `ERROR <text>`) and the controller's bounded wait for
//! it, creating a segment with the controller's end in it, and the
//! executor's receive-validate-attach-answer step.
//!
//! Relies on: a `SOCK_SEQPACKET` socket (one datagram per answer, hang-up
//! seen as a zero-length read), [`Segment`] and [`ShmTransport`].

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::{os, LaunchError};
use crate::layout::SegmentHeader;
use crate::mapping::SharedMapping;
use crate::segment::Segment;
use crate::transport::{required_size, ShmConfig, ShmTransport};

/// Payload that travels with the memfd over a listener connection.
pub(super) const HELLO: &[u8] = b"ORCWSHM1 segment";
/// The executor's answer after a successful attach.
const ATTACHED: &[u8] = b"ATTACHED";
/// Prefix of the executor's answer after a failed attach.
pub(super) const ERROR_PREFIX: &[u8] = b"ERROR ";
/// Longest answer read from the peer.
const MAX_ANSWER: usize = 1024;

/// Waits until `fd` is readable (or hung up), up to `deadline`.
pub(super) fn poll_readable(fd: BorrowedFd<'_>, deadline: Instant) -> Result<bool, LaunchError> {
    crate::fdpass::poll_readable(fd, deadline).map_err(os("poll"))
}

/// Reads the executor's one-datagram answer.
pub(super) fn read_answer(
    sock: BorrowedFd<'_>,
    deadline: Instant,
    limit: Duration,
) -> Result<(), LaunchError> {
    if !poll_readable(sock, deadline)? {
        return Err(LaunchError::Timeout(limit));
    }
    let mut buf = [0u8; MAX_ANSWER];
    let n = loop {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes.
        let rc = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if rc >= 0 {
            break rc as usize;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::ECONNRESET => return Err(LaunchError::PeerGone { exit: None }),
            e => {
                return Err(LaunchError::Os {
                    op: "recv",
                    source: e,
                })
            }
        }
    };
    let answer = &buf[..n];
    if n == 0 {
        Err(LaunchError::PeerGone { exit: None })
    } else if answer == ATTACHED {
        Ok(())
    } else if let Some(text) = answer.strip_prefix(ERROR_PREFIX) {
        Err(LaunchError::PeerRefused(
            String::from_utf8_lossy(text).into_owned(),
        ))
    } else {
        Err(LaunchError::Protocol(format!(
            "unexpected answer of {n} bytes instead of ATTACHED"
        )))
    }
}

pub(super) fn send_answer(sock: BorrowedFd<'_>, answer: &[u8]) {
    let answer = &answer[..answer.len().min(MAX_ANSWER)];
    // SAFETY: `answer` is valid for `answer.len()` readable bytes.
    // A failure means the controller is gone; attach reports it next.
    let _ = unsafe {
        libc::send(
            sock.as_raw_fd(),
            answer.as_ptr().cast(),
            answer.len(),
            libc::MSG_NOSIGNAL,
        )
    };
}

/// Creates a segment for `config` and the controller's transport in it.
pub(super) fn create_segment(
    config: ShmConfig,
) -> Result<(Arc<Segment>, Arc<ShmTransport>), LaunchError> {
    let segment = Arc::new(Segment::create(required_size(&config))?);
    let mapping: Arc<dyn SharedMapping> = Arc::clone(&segment) as Arc<dyn SharedMapping>;
    let transport = Arc::new(ShmTransport::create(mapping, config)?);
    Ok((segment, transport))
}

/// Maps a received segment and attaches as the executor; reports the
/// outcome on `sock`.
pub(super) fn attach_segment(
    memfd: OwnedFd,
    sock: &OwnedFd,
    config: ShmConfig,
) -> Result<Arc<ShmTransport>, LaunchError> {
    let attached = Segment::from_fd(memfd, std::mem::size_of::<SegmentHeader>())
        .map_err(LaunchError::from)
        .and_then(|seg| {
            let mapping: Arc<dyn SharedMapping> = Arc::new(seg);
            ShmTransport::attach(mapping, config).map_err(LaunchError::from)
        });
    match attached {
        Ok(t) => {
            send_answer(sock.as_fd(), ATTACHED);
            Ok(Arc::new(t))
        }
        Err(e) => {
            let mut msg = ERROR_PREFIX.to_vec();
            msg.extend_from_slice(e.to_string().as_bytes());
            send_answer(sock.as_fd(), &msg);
            Err(e)
        }
    }
}
