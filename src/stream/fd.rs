//! Descriptor setup: non-blocking mode and telling sockets from pipes.

use super::*;

pub(super) fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), StreamError> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)
        .map_err(|e| StreamError::os("read the descriptor flags", e))?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))
        .map_err(|e| StreamError::os("make the descriptor non-blocking", e))?;
    Ok(())
}

/// Tells sockets (by family) from everything else.
pub(super) fn classify(fd: BorrowedFd<'_>) -> Result<Kind, StreamError> {
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
pub(super) fn make_pipe() -> Result<(OwnedFd, OwnedFd), StreamError> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| StreamError::os("create a pipe", e))?;
    // Best effort: a larger pipe means fewer wake-ups for big messages; the
    // default size works too, so a refusal (EPERM above the limit) is fine.
    let _ = fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_CAPACITY));
    Ok((read, write))
}
