//! [`orcwire::Pipeline`] for C: many calls in flight from one thread,
//! sent in batches, their results taken in submission order.

use std::time::Instant;

use orcwire::{CallError, HandlerTag, Pipeline};

use super::{endpoint, orcwire_endpoint};
use crate::buffer::orc_rt_WrapperFunctionBuffer;
use crate::completion::deliver_call;
use crate::status::orcwire_status::{self, *};
use crate::status::{c_bytes, guard, put, timeout_from_ns, Failure};

/// A pipeline of calls on one endpoint (see [`orcwire::Pipeline`]). Used
/// by one thread at a time.
#[allow(non_camel_case_types)]
pub struct orcwire_pipeline {
    pipe: Pipeline,
}

/// Borrows a pipeline.
///
/// # Safety
/// `p` is NULL or live and not in use by another thread.
unsafe fn pipeline<'a>(p: *mut orcwire_pipeline) -> Result<&'a mut orcwire_pipeline, Failure> {
    // SAFETY: by the caller's contract.
    unsafe { p.as_mut() }.ok_or_else(|| Failure::null("pipeline"))
}

/// A new, empty pipeline of calls on `ep`, owned by the caller
/// (`orcwire_pipeline_free`). It keeps the connection's state alive, not
/// the endpoint handle: free it before or after the endpoint.
///
/// # Safety
/// `ep` is NULL or live; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_pipeline_new(
    ep: *const orcwire_endpoint,
    out: *mut *mut orcwire_pipeline,
) -> orcwire_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: checked non-null, writable by contract.
        unsafe { put(out, std::ptr::null_mut()) };
        // SAFETY: by the caller's contract.
        let ep = unsafe { endpoint(ep) }?;
        let p = Box::new(orcwire_pipeline {
            pipe: ep.endpoint.pipeline(),
        });
        // SAFETY: as above.
        unsafe { put(out, Box::into_raw(p)) };
        Ok(())
    })
}

/// Stages a call of `tag` with `len` bytes at `args` (copied). Never
/// blocks: staged calls go out sixteen at a time, or when
/// `orcwire_pipeline_next` would wait, or on `orcwire_pipeline_flush`. A
/// call that cannot be sent yields its error from `orcwire_pipeline_next`
/// in its place.
///
/// # Safety
/// `p` is NULL or live (one thread at a time); `args` points to `len`
/// readable bytes (or is NULL with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn orcwire_pipeline_submit(
    p: *mut orcwire_pipeline,
    tag: u64,
    args: *const u8,
    len: usize,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let p = unsafe { pipeline(p) }?;
        // SAFETY: by the caller's contract.
        let args = unsafe { c_bytes(args, len, "args") }?;
        p.pipe.submit(HandlerTag::new(tag), args);
        Ok(())
    })
}

/// Sends every staged call, waiting for room in the transport at most
/// `timeout_ns` nanoseconds (negative: no limit). `ORCWIRE_STATUS_TIMED_OUT`
/// leaves the calls not yet sent staged.
///
/// # Safety
/// `p` is NULL or live (one thread at a time).
#[no_mangle]
pub unsafe extern "C" fn orcwire_pipeline_flush(
    p: *mut orcwire_pipeline,
    timeout_ns: i64,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let p = unsafe { pipeline(p) }?;
        match timeout_from_ns(timeout_ns) {
            None => p.pipe.flush(),
            Some(t) => p.pipe.flush_deadline(Instant::now() + t)?,
        }
        Ok(())
    })
}

/// The result of the oldest call in flight, waiting at most `timeout_ns`
/// nanoseconds (negative: no limit); staged calls are sent first if it
/// has to wait. On `ORCWIRE_STATUS_OK` the caller owns `*out`: the result
/// bytes, or an out-of-band error (unknown tag, handler error). A call
/// that failed returns its status (`DISCONNECTED`, `PEER_DIED`,
/// `TOO_LARGE`, `BUSY`, ...) with `*out` empty, and is gone like a
/// successful one. `ORCWIRE_STATUS_TIMED_OUT` and
/// `ORCWIRE_STATUS_WOULD_DEADLOCK` leave the call in flight (ask again).
/// `ORCWIRE_STATUS_INVALID_STATE` when no call is in flight.
///
/// # Safety
/// `p` is NULL or live (one thread at a time); `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_pipeline_next(
    p: *mut orcwire_pipeline,
    timeout_ns: i64,
    out: *mut orc_rt_WrapperFunctionBuffer,
) -> orcwire_status {
    // SAFETY: `out` by the caller's contract.
    unsafe {
        deliver_call(out, || {
            // SAFETY: by the caller's contract.
            let p = pipeline(p)?;
            let next = match timeout_from_ns(timeout_ns) {
                None => p.pipe.next(),
                Some(t) => p.pipe.next_deadline(Instant::now() + t),
            };
            match next {
                None => Err(Failure::new(
                    ORCWIRE_STATUS_INVALID_STATE,
                    "no call is in flight in this pipeline; submit one first",
                )),
                // The call stays in flight: say so rather than the text of
                // a handle's timeout.
                Some(Err(CallError::TimedOut)) => Err(Failure::new(
                    ORCWIRE_STATUS_TIMED_OUT,
                    "no result within the timeout; the call stays in flight, ask again",
                )),
                Some(outcome) => Ok(outcome),
            }
        })
    }
}

/// Calls submitted whose results `orcwire_pipeline_next` has not returned
/// yet, staged ones included; 0 for NULL.
///
/// # Safety
/// `p` is NULL or live (one thread at a time).
#[no_mangle]
pub unsafe extern "C" fn orcwire_pipeline_in_flight(p: *const orcwire_pipeline) -> usize {
    // SAFETY: by the caller's contract.
    unsafe { p.as_ref() }.map_or(0, |p| p.pipe.in_flight())
}

/// Frees the pipeline: staged calls are never sent, results of sent ones
/// are discarded when they arrive. NULL is ignored.
///
/// # Safety
/// `p` is NULL or live and not used again.
#[no_mangle]
pub unsafe extern "C" fn orcwire_pipeline_free(p: *mut orcwire_pipeline) {
    if p.is_null() {
        return;
    }
    // Dropping runs no user code; a panic here would be a bug in orcwire,
    // and must not unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: made by `orcwire_pipeline_new`, not used again.
        drop(unsafe { Box::from_raw(p) });
    }));
}
