//! The two futex calls of the raw floor, made directly through `libc`.
//!
//! The floor is the yardstick the transport is measured against, so it
//! does not borrow the transport's wait code: it is one `FUTEX_WAIT` and
//! one `FUTEX_WAKE`, shared (no `FUTEX_PRIVATE_FLAG`, the word lives in a
//! mapping two processes share), nothing else. Linux only.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, at most `timeout`. Returns on a wake,
/// a changed value, a signal or the timeout; the caller re-checks.
pub(super) fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the word is a live, aligned u32 (kept alive by the caller's
    // borrow) and `ts` outlives the call. Every result (woken, EAGAIN,
    // EINTR, ETIMEDOUT) means "re-check", which the caller does.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every thread (of any process) sleeping on `word`.
pub(super) fn wake_all(word: &AtomicU32) {
    // SAFETY: the word is a live, aligned u32; FUTEX_WAKE only uses its
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
