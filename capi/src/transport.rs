//! The message level: an opaque `orcwire_transport` handle over any
//! [`Transport`], and what an LLVM `SimpleRemoteEPCTransport` needs from
//! it: send, blocking receive with a timeout, interrupt, close, peer
//! death.
//!
//! Threads (the [`Transport`] contract): `send` from any number of
//! threads at once; `recv` from one thread at a time (a second concurrent
//! `recv` is refused with `ORCWIRE_STATUS_INVALID_STATE`, not run); `interrupt_recv`,
//! `close` and `peer_died` from any thread at any time. `free` only after
//! `close` (or after the transport was given to an endpoint) and once no
//! other call on the handle is running.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use orcwire::{Opcode, Received, Transport};

use crate::buffer::orc_rt_WrapperFunctionBuffer;
use crate::status::orcwire_status::{self, *};
use crate::status::{c_bytes, guard, put, timeout_from_ns, Failure};

/// A connection at the message level. Opaque to C.
pub struct orcwire_transport {
    transport: Arc<dyn Transport>,
    /// The same transport when it is a stream (`orcwire_stream_from_fds`),
    /// for what only a stream does (`orcwire_stream_watch_process`).
    stream: Option<Arc<orcwire::StreamTransport>>,
    /// `orcwire_transport_close` was called on this handle.
    closed: AtomicBool,
    /// An endpoint owns the message traffic now.
    in_use: AtomicBool,
    /// A thread is inside `orcwire_transport_recv`: a second one is
    /// refused, since the transport reads as a single consumer.
    receiving: AtomicBool,
}

impl orcwire_transport {
    /// Boxes a handle around `transport`.
    pub fn boxed(transport: Arc<dyn Transport>) -> *mut Self {
        Self::boxed_with(transport, None)
    }

    /// Boxes a handle around `transport`, a stream when `stream` is set.
    fn boxed_with(
        transport: Arc<dyn Transport>,
        stream: Option<Arc<orcwire::StreamTransport>>,
    ) -> *mut Self {
        Box::into_raw(Box::new(Self {
            transport,
            stream,
            closed: AtomicBool::new(false),
            in_use: AtomicBool::new(false),
            receiving: AtomicBool::new(false),
        }))
    }

    /// Gives the transport to an endpoint: raw sends and receives are
    /// refused from now on.
    ///
    /// # Errors
    /// `ORCWIRE_STATUS_IN_USE` when an endpoint already has it,
    /// `ORCWIRE_STATUS_CLOSED` when it was closed.
    pub fn take_for_endpoint(&self) -> Result<Arc<dyn Transport>, Failure> {
        self.check_open()?;
        if self.in_use.swap(true, Ordering::AcqRel) {
            return Err(Failure::new(
                ORCWIRE_STATUS_IN_USE,
                "this transport already belongs to an endpoint; make a new transport for a new endpoint",
            ));
        }
        Ok(Arc::clone(&self.transport))
    }

    fn check_open(&self) -> Result<(), Failure> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Failure::new(
                ORCWIRE_STATUS_CLOSED,
                "the transport was closed with orcwire_transport_close; free it and make a new one",
            ));
        }
        Ok(())
    }

    fn check_raw(&self) -> Result<(), Failure> {
        self.check_open()?;
        if self.in_use.load(Ordering::Acquire) {
            return Err(Failure::new(
                ORCWIRE_STATUS_IN_USE,
                "this transport belongs to an endpoint; call through the endpoint instead",
            ));
        }
        Ok(())
    }
}

/// One received message. `payload` belongs to the caller, who disposes of
/// it with `orcwire_buffer_dispose`.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct orcwire_message {
    /// `ORCWIRE_OPCODE_SETUP` (0), `_HANGUP` (1), `_RESULT` (2) or
    /// `_CALL_WRAPPER` (3): LLVM's `SimpleRemoteEPCOpcode` values.
    pub opcode: u32,
    /// Always 0.
    pub reserved: u32,
    /// Sequence number pairing a call with its result.
    pub seq: u64,
    /// Handler tag of a call, result kind of a result, else 0.
    pub tag: u64,
    /// The bytes the message carries.
    pub payload: orc_rt_WrapperFunctionBuffer,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<orcwire_message>() == 40);
    assert!(std::mem::offset_of!(orcwire_message, seq) == 8);
    assert!(std::mem::offset_of!(orcwire_message, tag) == 16);
    assert!(std::mem::offset_of!(orcwire_message, payload) == 24);
};

/// Borrows the handle behind `t`.
///
/// # Safety
/// `t` is NULL or a live handle from this library.
unsafe fn handle<'a>(t: *const orcwire_transport) -> Result<&'a orcwire_transport, Failure> {
    // SAFETY: NULL or live by the caller's contract.
    unsafe { t.as_ref() }.ok_or_else(|| Failure::null("transport"))
}

/// Sends one message, whole; blocks while the transport is full.
///
/// # Safety
/// `t` is NULL or live; `bytes` points to `len` readable bytes (or is
/// NULL with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn orcwire_transport_send(
    t: *mut orcwire_transport,
    opcode: u32,
    seq: u64,
    tag: u64,
    bytes: *const u8,
    len: usize,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let t = unsafe { handle(t) }?;
        t.check_raw()?;
        let opcode = Opcode::from_wire(u64::from(opcode))
            .map_err(|e| Failure::new(ORCWIRE_STATUS_INVALID_ARGUMENT, e.to_string()))?;
        // SAFETY: by the caller's contract.
        let payload = unsafe { c_bytes(bytes, len, "bytes") }?;
        t.transport.send(opcode, seq, tag, payload)?;
        Ok(())
    })
}

/// Waits up to `timeout_ns` nanoseconds (negative: no limit; 0: only
/// what is already there) for the next message and stores it in `*out`.
///
/// # Safety
/// `t` is NULL or live; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_transport_recv(
    t: *mut orcwire_transport,
    timeout_ns: i64,
    out: *mut orcwire_message,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let t = unsafe { handle(t) }?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        t.check_raw()?;
        // SYNC POINT: taking and releasing the receiver role (Acquire on
        // take, Release on release), so receives never overlap.
        if t.receiving.swap(true, Ordering::Acquire) {
            return Err(Failure::new(
                ORCWIRE_STATUS_INVALID_STATE,
                "another thread is already in orcwire_transport_recv on this transport; receive from one thread at a time",
            ));
        }
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                // SYNC POINT: releasing the receiver role (see above).
                self.0.store(false, Ordering::Release);
            }
        }
        let _release = Release(&t.receiving);
        let deadline = timeout_from_ns(timeout_ns).and_then(|d| Instant::now().checked_add(d));
        match t.transport.recv(deadline)? {
            Received::Message(m) => {
                let message = orcwire_message {
                    opcode: m.opcode.to_wire() as u32,
                    reserved: 0,
                    seq: m.seq,
                    tag: m.tag,
                    payload: orc_rt_WrapperFunctionBuffer::from_rust(m.payload),
                };
                // SAFETY: checked non-null, writable by contract.
                unsafe { put(out, message) };
                Ok(())
            }
            Received::TimedOut => Err(Failure::new(
                ORCWIRE_STATUS_TIMED_OUT,
                "no message arrived within the timeout; receive again",
            )),
            Received::Interrupted => Err(Failure::new(
                ORCWIRE_STATUS_INTERRUPTED,
                "orcwire_transport_interrupt_recv interrupted the receive",
            )),
        }
    })
}

/// Makes the current or next `orcwire_transport_recv` return
/// `ORCWIRE_STATUS_INTERRUPTED`. Any thread, any time.
///
/// # Safety
/// `t` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn orcwire_transport_interrupt_recv(
    t: *mut orcwire_transport,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let t = unsafe { handle(t) }?;
        t.transport.interrupt_recv();
        Ok(())
    })
}

/// Closes the transport: sends and receives on other threads return, the
/// peer sees the connection end. A second close returns
/// `ORCWIRE_STATUS_CLOSED` and does nothing.
///
/// # Safety
/// `t` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn orcwire_transport_close(t: *mut orcwire_transport) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let t = unsafe { handle(t) }?;
        if t.closed.swap(true, Ordering::AcqRel) {
            return Err(Failure::new(
                ORCWIRE_STATUS_CLOSED,
                "the transport is already closed; only orcwire_transport_free is left to do",
            ));
        }
        t.transport.close();
        Ok(())
    })
}

/// 1 if the peer process is known to have died, 0 if not, -1 for NULL.
///
/// # Safety
/// `t` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn orcwire_transport_peer_died(t: *const orcwire_transport) -> c_int {
    crate::status::guard_value(-1, || {
        // SAFETY: by the caller's contract.
        match unsafe { t.as_ref() } {
            Some(t) => c_int::from(t.transport.peer_died()),
            None => -1,
        }
    })
}

/// Frees the handle. It must have been closed (or given to an endpoint)
/// and no other call on it may be running; otherwise nothing is freed and
/// `ORCWIRE_STATUS_INVALID_STATE` is returned. NULL is
/// `ORCWIRE_STATUS_NULL_ARGUMENT`. The pointer is dangling afterwards.
///
/// # Safety
/// `t` is NULL or live, and not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn orcwire_transport_free(t: *mut orcwire_transport) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let h = unsafe { handle(t) }?;
        if !h.closed.load(Ordering::Acquire) && !h.in_use.load(Ordering::Acquire) {
            return Err(Failure::new(
                ORCWIRE_STATUS_INVALID_STATE,
                "the transport is still open; call orcwire_transport_close first (nothing was freed)",
            ));
        }
        // SAFETY: `t` came from `Box::into_raw` in `boxed`, and the
        // caller hands it back exactly once with no other user.
        drop(unsafe { Box::from_raw(t) });
        Ok(())
    })
}

/// A connection over a byte stream: pipes, a Unix socket or TCP, in
/// LLVM's `FDSimpleRemoteEPCTransport` framing (so the peer may be one of
/// LLVM's programs, or a process started with `llvm-jitlink-executor
/// filedescs=...` style descriptors). Takes ownership of `read_fd` and
/// `write_fd` in every case (they are closed on failure); they may be the
/// same descriptor (a socket). `max_message_size` 0 means 1 GiB.
///
/// # Safety
/// The descriptors are open and owned by the caller, who gives them up;
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_stream_from_fds(
    read_fd: c_int,
    write_fd: c_int,
    max_message_size: u64,
    out: *mut *mut orcwire_transport,
) -> orcwire_status {
    guard(|| {
        use std::os::fd::{FromRawFd, OwnedFd};
        if read_fd < 0 || write_fd < 0 {
            return Err(Failure::new(
                ORCWIRE_STATUS_INVALID_ARGUMENT,
                format!("descriptors {read_fd} and {write_fd} are not both open descriptors"),
            ));
        }
        // SAFETY: open and handed over by the caller's contract; owned
        // from here on, so closed on every path below.
        let read = unsafe { OwnedFd::from_raw_fd(read_fd) };
        let write = if write_fd == read_fd {
            // One socket both ways: a second descriptor for the write side,
            // so that each end closes its own.
            read.try_clone().map_err(|e| {
                Failure::new(
                    ORCWIRE_STATUS_IO,
                    format!("dup of descriptor {read_fd}: {e}"),
                )
            })?
        } else {
            // SAFETY: as above.
            unsafe { OwnedFd::from_raw_fd(write_fd) }
        };
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let config = orcwire::StreamConfig {
            max_message_size: if max_message_size == 0 {
                orcwire::stream::DEFAULT_MAX_MESSAGE_SIZE
            } else {
                max_message_size
            },
        };
        let stream = orcwire::StreamTransport::from_fds(read, write, config)
            .map_err(|e| Failure::new(ORCWIRE_STATUS_INVALID_ARGUMENT, e.to_string()))?;
        let transport: Arc<dyn Transport> = Arc::clone(&stream) as Arc<dyn Transport>;
        // SAFETY: checked non-null, writable by contract.
        unsafe { put(out, orcwire_transport::boxed_with(transport, Some(stream))) };
        Ok(())
    })
}

/// A stream transport only: watch the peer process `pid` (a child this
/// process started, say `llvm-jitlink-executor`), so that when the stream
/// ends without a `Hangup` a kill is reported as the peer's death
/// (`ORCWIRE_STATUS_PEER_DIED`; pending endpoint calls fail that way) and
/// a normal exit as a hang-up. Any thread.
///
/// # Safety
/// `t` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn orcwire_stream_watch_process(
    t: *mut orcwire_transport,
    pid: u32,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let t = unsafe { handle(t) }?;
        let Some(stream) = &t.stream else {
            return Err(Failure::new(
                ORCWIRE_STATUS_INVALID_STATE,
                "only a stream transport (orcwire_stream_from_fds) watches a process; shared memory has its own liveness channel",
            ));
        };
        stream
            .watch_process(pid)
            .map_err(|e| Failure::new(ORCWIRE_STATUS_INVALID_ARGUMENT, e.to_string()))
    })
}
