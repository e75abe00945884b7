//! Status codes, the thread-local last-error message, and [`guard`], the
//! wrapper every entry point runs in so that no panic crosses the ABI.
//!
//! Every fallible entry point returns an [`orcwire_status`]; on anything
//! but [`orcwire_status::ORCWIRE_STATUS_OK`] it has also stored a message
//! saying what happened and what to do, which `orcwire_last_error()` hands
//! to C. The message lives in a thread-local `CString`, so the pointer is
//! valid until the next entry point that sets an error on the same
//! thread.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use orcwire::{CallError, TransportError};
use orcwire_shm::LaunchError;

/// What an entry point did. `ORCWIRE_STATUS_OK` is 0; every other value
/// comes with a message from `orcwire_last_error()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum orcwire_status {
    /// Success.
    ORCWIRE_STATUS_OK = 0,
    /// A required pointer argument was NULL.
    ORCWIRE_STATUS_NULL_ARGUMENT = 1,
    /// An argument is out of range: a name that is not UTF-8, an unknown
    /// opcode or role, a size that does not match, bytes NULL with a
    /// non-zero length.
    ORCWIRE_STATUS_INVALID_ARGUMENT = 2,
    /// The handle was closed (or its endpoint disconnected) on this side.
    ORCWIRE_STATUS_CLOSED = 3,
    /// The peer closed the connection in an orderly way.
    ORCWIRE_STATUS_PEER_HUNG_UP = 4,
    /// The peer process died.
    ORCWIRE_STATUS_PEER_DIED = 5,
    /// A timeout passed.
    ORCWIRE_STATUS_TIMED_OUT = 6,
    /// `orcwire_transport_interrupt_recv` interrupted the receive.
    ORCWIRE_STATUS_INTERRUPTED = 7,
    /// The peer broke the protocol; the connection is unusable.
    ORCWIRE_STATUS_PROTOCOL = 8,
    /// A message exceeds the configured size limit.
    ORCWIRE_STATUS_TOO_LARGE = 9,
    /// The operating system refused an operation.
    ORCWIRE_STATUS_IO = 10,
    /// Spawning, accepting or attaching an executor failed.
    ORCWIRE_STATUS_LAUNCH = 11,
    /// Setting up an endpoint on a transport failed.
    ORCWIRE_STATUS_CONNECT = 12,
    /// No entry point of that name was published by the peer.
    ORCWIRE_STATUS_NOT_FOUND = 13,
    /// The transport belongs to an endpoint: send and receive through
    /// the endpoint instead.
    ORCWIRE_STATUS_IN_USE = 14,
    /// Too many calls are pending on the connection.
    ORCWIRE_STATUS_BUSY = 15,
    /// A synchronous wait inside a handler could only finish by running
    /// a handler on the same thread.
    ORCWIRE_STATUS_WOULD_DEADLOCK = 16,
    /// The call is not allowed in this state or for this role.
    ORCWIRE_STATUS_INVALID_STATE = 17,
    /// The header the caller was compiled with does not match this
    /// library.
    ORCWIRE_STATUS_ABI_MISMATCH = 18,
    /// The connection was disconnected before the call completed.
    ORCWIRE_STATUS_DISCONNECTED = 19,
    /// A bug in orcwire: a Rust panic was caught at the ABI boundary.
    ORCWIRE_STATUS_PANIC = 20,
}

use orcwire_status::*;

/// An error on its way to C: a status and the message for
/// `orcwire_last_error()`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The code the entry point returns.
    pub status: orcwire_status,
    /// What happened and what to do.
    pub message: String,
}

impl Failure {
    /// A failure with `status` and `message`.
    pub fn new(status: orcwire_status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A NULL required argument.
    pub fn null(what: &str) -> Self {
        Self::new(
            ORCWIRE_STATUS_NULL_ARGUMENT,
            format!("{what} is NULL; pass a valid pointer"),
        )
    }
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Self {
        let status = match e {
            TransportError::PeerHungUp => ORCWIRE_STATUS_PEER_HUNG_UP,
            TransportError::PeerDied => ORCWIRE_STATUS_PEER_DIED,
            TransportError::Closed => ORCWIRE_STATUS_CLOSED,
            TransportError::Protocol(_) => ORCWIRE_STATUS_PROTOCOL,
            TransportError::TooLarge { .. } => ORCWIRE_STATUS_TOO_LARGE,
            TransportError::Io(_) => ORCWIRE_STATUS_IO,
            TransportError::TimedOut => ORCWIRE_STATUS_TIMED_OUT,
        };
        Self::new(status, e.to_string())
    }
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        let status = match &e {
            CallError::Disconnected => ORCWIRE_STATUS_DISCONNECTED,
            CallError::PeerDied => ORCWIRE_STATUS_PEER_DIED,
            CallError::TimedOut => ORCWIRE_STATUS_TIMED_OUT,
            CallError::AlreadyTaken => ORCWIRE_STATUS_INVALID_STATE,
            CallError::Send(t) => Failure::from(t.clone()).status,
            CallError::TooManyPending(_) => ORCWIRE_STATUS_BUSY,
            CallError::WouldDeadlock(_) => ORCWIRE_STATUS_WOULD_DEADLOCK,
        };
        Self::new(status, e.to_string())
    }
}

impl From<LaunchError> for Failure {
    fn from(e: LaunchError) -> Self {
        Self::new(ORCWIRE_STATUS_LAUNCH, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Stores `message` as this thread's last error (cut at a NUL byte).
pub fn set_last_error(message: &str) {
    let bytes = message.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    // No NUL in `bytes[..end]`, so this cannot fail; fall back to empty.
    let text = CString::new(&bytes[..end]).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone; the status
    // code still reaches the caller.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

/// Runs an entry point's body: its error becomes a status and the last
/// error message, and a panic becomes `ORCWIRE_STATUS_PANIC` instead of
/// unwinding into C.
pub fn guard(body: impl FnOnce() -> Result<(), Failure>) -> orcwire_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ORCWIRE_STATUS_OK,
        Ok(Err(f)) => {
            set_last_error(&f.message);
            f.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "orcwire panicked inside the C ABI ({what}); this is a bug in orcwire, please report it"
            ));
            ORCWIRE_STATUS_PANIC
        }
    }
}

/// Runs `body` for an entry point that returns a plain value, giving
/// `fallback` if it panics.
pub fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The message of the last failed orcwire call on this thread: a
/// NUL-terminated string owned by orcwire, valid until the next orcwire
/// call on this thread that fails. Empty when nothing failed yet. Never
/// NULL.
#[no_mangle]
pub extern "C" fn orcwire_last_error() -> *const c_char {
    static EMPTY: &[u8] = b"\0";
    guard_value(EMPTY.as_ptr().cast(), || {
        LAST_ERROR
            .try_with(|slot| slot.borrow().as_ptr())
            .unwrap_or(EMPTY.as_ptr().cast())
    })
}

/// A static, NUL-terminated name for `status` (`"ORCWIRE_STATUS_OK"`, ...),
/// or `"ORCWIRE_STATUS_(unknown)"` for a value outside the enum.
#[no_mangle]
pub extern "C" fn orcwire_status_name(status: u32) -> *const c_char {
    const NAMES: [&str; 21] = [
        "ORCWIRE_STATUS_OK\0",
        "ORCWIRE_STATUS_NULL_ARGUMENT\0",
        "ORCWIRE_STATUS_INVALID_ARGUMENT\0",
        "ORCWIRE_STATUS_CLOSED\0",
        "ORCWIRE_STATUS_PEER_HUNG_UP\0",
        "ORCWIRE_STATUS_PEER_DIED\0",
        "ORCWIRE_STATUS_TIMED_OUT\0",
        "ORCWIRE_STATUS_INTERRUPTED\0",
        "ORCWIRE_STATUS_PROTOCOL\0",
        "ORCWIRE_STATUS_TOO_LARGE\0",
        "ORCWIRE_STATUS_IO\0",
        "ORCWIRE_STATUS_LAUNCH\0",
        "ORCWIRE_STATUS_CONNECT\0",
        "ORCWIRE_STATUS_NOT_FOUND\0",
        "ORCWIRE_STATUS_IN_USE\0",
        "ORCWIRE_STATUS_BUSY\0",
        "ORCWIRE_STATUS_WOULD_DEADLOCK\0",
        "ORCWIRE_STATUS_INVALID_STATE\0",
        "ORCWIRE_STATUS_ABI_MISMATCH\0",
        "ORCWIRE_STATUS_DISCONNECTED\0",
        "ORCWIRE_STATUS_PANIC\0",
    ];
    let name = NAMES
        .get(status as usize)
        .copied()
        .unwrap_or("ORCWIRE_STATUS_(unknown)\0");
    name.as_ptr().cast()
}

/// Converts a signed nanosecond timeout from C: negative means none.
pub fn timeout_from_ns(ns: i64) -> Option<std::time::Duration> {
    u64::try_from(ns).ok().map(std::time::Duration::from_nanos)
}

/// Reads a C string argument as UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid
/// for `'a`.
pub unsafe fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let s = unsafe { std::ffi::CStr::from_ptr(ptr) };
    s.to_str().map_err(|_| {
        Failure::new(
            ORCWIRE_STATUS_INVALID_ARGUMENT,
            format!("{what} is not valid UTF-8; pass a UTF-8 string"),
        )
    })
}

/// Reads `(ptr, len)` bytes from C; `ptr` may be NULL only when `len` is 0.
///
/// # Safety
/// `ptr` is NULL or points to `len` readable bytes valid for `'a`.
pub unsafe fn c_bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::new(
            ORCWIRE_STATUS_INVALID_ARGUMENT,
            format!("{what} is NULL but its length is {len}; pass the bytes or a length of 0"),
        ));
    }
    // SAFETY: non-null, `len` readable bytes by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Writes `value` through an out pointer that was checked for NULL.
///
/// # Safety
/// `out` is non-null, aligned and writable.
pub unsafe fn put<T>(out: *mut T, value: T) {
    // SAFETY: by the caller's contract; `write` drops nothing old, since
    // out parameters hold no owned value on entry.
    unsafe { out.write(value) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: `orcwire_last_error` never returns NULL and the string
        // stays valid until the next failing call on this thread.
        unsafe { std::ffi::CStr::from_ptr(orcwire_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_not_an_unwind() {
        let s = guard(|| panic!("deliberate"));
        assert_eq!(s, ORCWIRE_STATUS_PANIC);
        let msg = last_error();
        assert!(msg.contains("deliberate") && msg.contains("bug"), "{msg}");
        assert_eq!(guard_value(7, || panic!("again")), 7);
    }

    #[test]
    fn errors_set_the_thread_local_message_and_success_keeps_it() {
        let s = guard(|| Err(Failure::new(ORCWIRE_STATUS_TIMED_OUT, "too slow\0hidden")));
        assert_eq!(s, ORCWIRE_STATUS_TIMED_OUT);
        assert_eq!(last_error(), "too slow");
        assert_eq!(guard(|| Ok(())), ORCWIRE_STATUS_OK);
        assert_eq!(last_error(), "too slow");
        // Another thread has its own message.
        std::thread::spawn(|| assert_eq!(last_error(), ""))
            .join()
            .expect("thread");
    }

    #[test]
    fn every_status_has_its_name() {
        for (value, name) in [
            (ORCWIRE_STATUS_OK, "ORCWIRE_STATUS_OK"),
            (ORCWIRE_STATUS_IN_USE, "ORCWIRE_STATUS_IN_USE"),
            (ORCWIRE_STATUS_PANIC, "ORCWIRE_STATUS_PANIC"),
        ] {
            // SAFETY: names are static NUL-terminated strings.
            let got = unsafe { std::ffi::CStr::from_ptr(orcwire_status_name(value as u32)) };
            assert_eq!(got.to_str(), Ok(name));
        }
    }

    #[test]
    fn transport_and_call_errors_map_to_their_codes() {
        assert_eq!(
            Failure::from(TransportError::PeerDied).status,
            ORCWIRE_STATUS_PEER_DIED
        );
        assert_eq!(
            Failure::from(CallError::Disconnected).status,
            ORCWIRE_STATUS_DISCONNECTED
        );
        assert_eq!(
            Failure::from(CallError::Send(TransportError::TooLarge {
                size: 2,
                limit: 1
            }))
            .status,
            ORCWIRE_STATUS_TOO_LARGE
        );
        assert_eq!(timeout_from_ns(-1), None);
        assert_eq!(timeout_from_ns(5), Some(std::time::Duration::from_nanos(5)));
    }
}
