//! Telling the peer's death from its hang-up: a pidfd of the peer process,
//! looked at when the stream ends without a `Hangup`.

use super::*;

impl StreamTransport {
    /// Watches the peer process `pid` (a child this process started, for
    /// example `llvm-jitlink-executor`): when the stream ends without a
    /// `Hangup`, the transport then reports
    /// [`PeerDied`](TransportError::PeerDied) if that process was killed
    /// by a signal (looking up to [`DEATH_GRACE`] for its exit to become
    /// visible after the end of stream), and
    /// [`PeerHungUp`](TransportError::PeerHungUp) if it exited normally or
    /// still runs. Pending calls then fail with `CallError::PeerDied`.
    ///
    /// # Errors
    /// [`StreamError::Os`] when `pidfd_open` fails (no such process, or a
    /// kernel before 5.3).
    pub fn watch_process(&self, pid: u32) -> Result<(), StreamError> {
        let os = |source| StreamError::Os {
            what: "open a pidfd of the peer process",
            source,
        };
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| os(std::io::Error::from_raw_os_error(libc::ESRCH)))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or
        // -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = i32::try_from(fd).map_err(|_| os(std::io::Error::last_os_error()))?;
        if fd < 0 {
            return Err(os(std::io::Error::last_os_error()));
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns
        // it.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        *self.peer_process.lock() = Some(fd);
        Ok(())
    }

    /// At an end of stream: whether the watched peer process died.
    ///
    /// Waits up to [`DEATH_GRACE`] for its exit to show. A process that
    /// exited normally hung up (LLVM 14's controller ends a session by
    /// closing its descriptors and exiting, without a `Hangup`); one killed
    /// by a signal died. When the status cannot be read (the process is
    /// not our child), an exit right after the end of stream counts as
    /// death.
    pub(super) fn peer_exited(&self) -> bool {
        let guard = self.peer_process.lock();
        let Some(pidfd) = guard.as_ref() else {
            return false;
        };
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let grace =
            PollTimeout::try_from(DEATH_GRACE.as_millis() as i32).unwrap_or(PollTimeout::ZERO);
        if !matches!(poll(&mut fds, grace), Ok(n) if n > 0) {
            return false; // still running: it only closed its end
        }
        // SAFETY: an all-zero siginfo_t is a valid value to be filled in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid siginfo_t for the kernel to write; the
        // pidfd is open; WNOWAIT leaves the child for its owner to reap.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        let died = rc != 0 || info.si_code != libc::CLD_EXITED;
        if died {
            // SYNC POINT: none; a flag read by `peer_died` after the error
            // that this recv returns, under the reader lock.
            self.peer_dead.store(true, Ordering::Release);
        }
        died
    }
}
