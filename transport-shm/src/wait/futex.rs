//! The futex system calls (shared, not `FUTEX_PRIVATE`: the word lives in
//! memory mapped by two processes), also used by the benchmark's raw
//! floor. The production choice of `wait::futex`.
//!
//! Relies on: `libc` and Linux's futex(2).

use std::time::Duration;

use crate::sync::AtomicU32;

/// Sleeps while `*word == expected`, at most `timeout`. Returns on a
/// wake, a changed value, a signal or the timeout; the caller re-checks.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: the word is a live, aligned u32 (kept alive by the caller's
    // borrow); the timespec, when given, outlives the call. Not
    // FUTEX_PRIVATE_FLAG: the word may be shared between processes.
    // Every result (woken, EAGAIN, EINTR, ETIMEDOUT) means "re-check".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every thread (of any process) sleeping on `word`.
pub(crate) fn wake_all(word: &AtomicU32) {
    // SAFETY: the word is a live, aligned u32; FUTEX_WAKE only reads its
    // address. A failure can only mean a bad address, which it is not.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}
