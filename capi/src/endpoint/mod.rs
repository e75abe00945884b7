//! The endpoint level, shaped like orc-rt's `ControllerAccess`: a builder
//! registers C wrapper functions by name, `connect` starts an
//! [`Endpoint`] on a transport handle, calls go out synchronously or with
//! a completion callback, and a [`Responder`] handle answers an incoming
//! call once, from any thread.
//!
//! `orcwire_endpoint_free` disconnects, waits for every completion
//! callback, then for every running invocation of a C handler (other
//! than the caller's own, when it frees from inside a handler), so the
//! context pointers may be released after it returns.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use orcwire::sps::Dialect;
use orcwire::{
    ControllerBuilder, Endpoint, ExecutorBuilder, HandlerTag, Responder, WrapperFunctionBuffer,
};

use crate::buffer::orc_rt_WrapperFunctionBuffer;
use crate::completion::{deliver_call, Completions, CtxPtr, DoneFn};
use crate::status::orcwire_status::{self, *};
use crate::status::{c_bytes, c_str, guard, put, timeout_from_ns, Failure};
use crate::transport::orcwire_transport;

mod builder;
mod pipeline;
pub use builder::*;
pub use pipeline::*;

/// `void (*)(void *ctx, orc_rt_WrapperFunctionBuffer args, orcwire_responder *responder)`.
pub type HandlerFn =
    unsafe extern "C" fn(*mut c_void, orc_rt_WrapperFunctionBuffer, *mut orcwire_responder);

/// Which side an endpoint is.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum orcwire_role {
    /// The JIT side: spawns or accepts the executor, calls its functions.
    ORCWIRE_ROLE_CONTROLLER = 0,
    /// The side running JIT'd code: publishes functions, calls the
    /// controller's handlers.
    ORCWIRE_ROLE_EXECUTOR = 1,
}

/// The right to answer one incoming call. Opaque to C.
pub struct orcwire_responder {
    responder: Responder,
}

/// Counts running invocations of C handlers, so that freeing the
/// endpoint can wait for them.
#[derive(Default)]
struct Running {
    count: Mutex<usize>,
    idle: Condvar,
}

thread_local! {
    /// Addresses of the `Running` of every handler frame on this thread.
    static FRAMES: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// One running handler invocation; dropped when the C function returns.
struct Frame<'a>(&'a Running);

impl<'a> Frame<'a> {
    fn enter(running: &'a Running) -> Self {
        *lock(&running.count) += 1;
        let _ = FRAMES.try_with(|f| f.borrow_mut().push(running as *const Running as usize));
        Self(running)
    }
}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        let _ = FRAMES.try_with(|f| f.borrow_mut().pop());
        *lock(&self.0.count) -= 1;
        self.0.idle.notify_all();
    }
}

impl Running {
    /// Waits until the only running invocations are this thread's own.
    fn wait_idle(&self) {
        let me = self as *const Running as usize;
        let own = FRAMES
            .try_with(|f| f.borrow().iter().filter(|&&a| a == me).count())
            .unwrap_or(0);
        let mut n = lock(&self.count);
        while *n > own {
            n = self
                .idle
                .wait(n)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Wraps a C handler as an orcwire handler.
fn c_handler(
    f: HandlerFn,
    ctx: CtxPtr,
    running: Arc<Running>,
) -> impl Fn(WrapperFunctionBuffer, Responder) + Send + Sync + 'static {
    move |args, responder| {
        let _frame = Frame::enter(&running);
        let args = orc_rt_WrapperFunctionBuffer::from_rust(args);
        let r = Box::into_raw(Box::new(orcwire_responder { responder }));
        // SAFETY: `f` and `ctx` were registered together through
        // `orcwire_builder_add_function`, whose contract makes `f`
        // callable on any thread with `ctx` until the endpoint is freed
        // (which waits for this frame); `args` and `r` are handed over.
        unsafe { f(ctx.get(), args, r) };
    }
}

/// A connected endpoint. Opaque to C.
pub struct orcwire_endpoint {
    endpoint: Endpoint,
    role: orcwire_role,
    running: Arc<Running>,
    completions: Mutex<Option<Completions>>,
    /// Set by the endpoint's `on_disconnect` callback.
    ended: Arc<(Mutex<bool>, Condvar)>,
}

/// Borrows an endpoint.
///
/// # Safety
/// `ep` is NULL or live.
unsafe fn endpoint<'a>(ep: *const orcwire_endpoint) -> Result<&'a orcwire_endpoint, Failure> {
    // SAFETY: by the caller's contract.
    unsafe { ep.as_ref() }.ok_or_else(|| Failure::null("endpoint"))
}

/// Looks up a tag by name, for the role that may call it.
///
/// # Safety
/// As the entry points below.
unsafe fn tag_of(
    ep: *const orcwire_endpoint,
    name: *const c_char,
    out: *mut u64,
    want: orcwire_role,
) -> Result<(), Failure> {
    // SAFETY: by the caller's contract.
    let ep = unsafe { endpoint(ep) }?;
    // SAFETY: by the caller's contract.
    let name = unsafe { c_str(name, "name") }?;
    if out.is_null() {
        return Err(Failure::null("out_tag"));
    }
    if ep.role != want {
        return Err(Failure::new(
            ORCWIRE_STATUS_INVALID_STATE,
            match want {
                orcwire_role::ORCWIRE_ROLE_CONTROLLER => {
                    "orcwire_function_tag is for a controller; an executor uses orcwire_handler_tag"
                }
                orcwire_role::ORCWIRE_ROLE_EXECUTOR => {
                    "orcwire_handler_tag is for an executor; a controller uses orcwire_function_tag"
                }
            },
        ));
    }
    let tag = match want {
        orcwire_role::ORCWIRE_ROLE_CONTROLLER => ep.endpoint.function_tag(name),
        orcwire_role::ORCWIRE_ROLE_EXECUTOR => ep.endpoint.handler_tag(name),
    };
    let tag = tag.ok_or_else(|| {
        Failure::new(
            ORCWIRE_STATUS_NOT_FOUND,
            format!("\"{name}\" was not published in the executor's Setup; check the name registered or declared on the executor"),
        )
    })?;
    // SAFETY: checked non-null, writable by contract.
    unsafe { put(out, tag.get()) };
    Ok(())
}

/// Controller: the tag of the executor function `name`.
///
/// # Safety
/// `ep` is NULL or live; `name` is NULL or NUL-terminated; `out_tag` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_function_tag(
    ep: *const orcwire_endpoint,
    name: *const c_char,
    out_tag: *mut u64,
) -> orcwire_status {
    // SAFETY: the caller's contract is `tag_of`'s.
    guard(|| unsafe { tag_of(ep, name, out_tag, orcwire_role::ORCWIRE_ROLE_CONTROLLER) })
}

/// Executor: the tag of the controller handler `name` (declared with
/// `orcwire_builder_declare_controller_handler`).
///
/// # Safety
/// As `orcwire_function_tag`.
#[no_mangle]
pub unsafe extern "C" fn orcwire_handler_tag(
    ep: *const orcwire_endpoint,
    name: *const c_char,
    out_tag: *mut u64,
) -> orcwire_status {
    // SAFETY: the caller's contract is `tag_of`'s.
    guard(|| unsafe { tag_of(ep, name, out_tag, orcwire_role::ORCWIRE_ROLE_EXECUTOR) })
}

/// Calls `tag` on the peer and waits for its result, at most `timeout_ns`
/// nanoseconds in all (negative: no limit). On `ORCWIRE_STATUS_OK`,
/// `*out` is the result, owned by the caller: bytes, or an out-of-band
/// error (`Size` 0, non-NULL pointer). On failure `*out` is empty.
///
/// # Safety
/// `ep` is NULL or live; `args` points to `len` readable bytes (or is
/// NULL with `len` 0); `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_call_sync(
    ep: *const orcwire_endpoint,
    tag: u64,
    args: *const u8,
    len: usize,
    timeout_ns: i64,
    out: *mut orc_rt_WrapperFunctionBuffer,
) -> orcwire_status {
    // SAFETY: `out` by the caller's contract.
    unsafe {
        deliver_call(out, || {
            // SAFETY: by the caller's contract.
            let ep = endpoint(ep)?;
            // SAFETY: by the caller's contract.
            let args = c_bytes(args, len, "args")?;
            let tag = HandlerTag::new(tag);
            Ok(match timeout_from_ns(timeout_ns) {
                Some(t) => ep.endpoint.call_sync_timeout(tag, args, t),
                None => ep.endpoint.call_sync(tag, args),
            })
        })
    }
}

/// Calls `tag` on the peer and returns once it is sent; `done(ctx,
/// status, result)` runs exactly once, later, on an orcwire thread (one
/// per endpoint), with the result owned by the callback (empty unless the
/// status is `ORCWIRE_STATUS_OK`). If this returns an error, `done` is
/// never called.
///
/// # Safety
/// `ep` is NULL or live; `args` points to `len` readable bytes (or is
/// NULL with `len` 0); `done` is NULL or callable on any thread with
/// `ctx`.
#[no_mangle]
pub unsafe extern "C" fn orcwire_call_async(
    ep: *const orcwire_endpoint,
    tag: u64,
    args: *const u8,
    len: usize,
    done: Option<DoneFn>,
    ctx: *mut c_void,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let ep = unsafe { endpoint(ep) }?;
        let done = done.ok_or_else(|| Failure::null("done"))?;
        // SAFETY: by the caller's contract.
        let args = unsafe { c_bytes(args, len, "args") }?;
        // The lock only guards starting the thread: the call itself may
        // wait for room in the ring and must not hold up other callers.
        let submitter = {
            let mut completions = lock(&ep.completions);
            match completions.as_ref() {
                Some(c) => c.submitter(),
                None => {
                    let c = Completions::start()?;
                    let s = c.submitter();
                    *completions = Some(c);
                    s
                }
            }
        };
        let call = ep.endpoint.call(HandlerTag::new(tag), args)?;
        submitter.submit(call, done, CtxPtr::new(ctx));
        Ok(())
    })
}

/// Answers the call `r` stands for with `result` (bytes, or an
/// out-of-band error made with `orcwire_buffer_from_error`). Consumes
/// both `r` and `result` in every case, NULL `r` included; any thread,
/// exactly once per responder. After a disconnect the result is dropped
/// (the caller has already failed).
///
/// # Safety
/// `r` is NULL or a responder not yet consumed; `result` follows orc-rt's
/// rules and is not used again.
#[no_mangle]
pub unsafe extern "C" fn orcwire_respond(
    r: *mut orcwire_responder,
    result: orc_rt_WrapperFunctionBuffer,
) -> orcwire_status {
    guard(|| {
        // SAFETY: `result` is given up by the caller's contract.
        let result = unsafe { result.into_rust() };
        if r.is_null() {
            return Err(Failure::null("responder"));
        }
        // SAFETY: from `Box::into_raw` in `c_handler`, consumed once by
        // contract.
        let r = unsafe { Box::from_raw(r) };
        r.responder.respond(result);
        Ok(())
    })
}

/// Gives up the responder without a result: the caller gets an
/// out-of-band error ("the handler finished without answering"), as when
/// a Rust responder is dropped. Consumes `r`.
///
/// # Safety
/// `r` is NULL or a responder not yet consumed.
#[no_mangle]
pub unsafe extern "C" fn orcwire_responder_drop(r: *mut orcwire_responder) -> orcwire_status {
    guard(|| {
        if r.is_null() {
            return Err(Failure::null("responder"));
        }
        // SAFETY: from `Box::into_raw` in `c_handler`, consumed once by
        // contract.
        drop(unsafe { Box::from_raw(r) });
        Ok(())
    })
}

/// Disconnects: returns once no call can be made or accepted on this side
/// any more, no handler of this endpoint starts any more, the peer was
/// told, every pending call has completed (with an error if no result
/// came), and the callback of every asynchronous call has run (except
/// when called from a callback, which cannot wait for the callbacks
/// queued behind it). Any thread, any number at once, and from inside a
/// handler or a completion callback; a second call returns at once.
///
/// # Safety
/// `ep` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn orcwire_endpoint_disconnect(
    ep: *const orcwire_endpoint,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let ep = unsafe { endpoint(ep) }?;
        ep.endpoint.disconnect();
        // Every pending call has completed now; let their callbacks run
        // too. Not under the lock: a callback may call this endpoint.
        let waiter = lock(&ep.completions).as_ref().map(Completions::submitter);
        if let Some(w) = waiter {
            w.wait_idle();
        }
        Ok(())
    })
}

/// 1 once the endpoint is fully disconnected (by either side, or the
/// peer's death), 0 before, -1 for NULL.
///
/// # Safety
/// `ep` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn orcwire_endpoint_is_disconnected(ep: *const orcwire_endpoint) -> c_int {
    crate::status::guard_value(-1, || {
        // SAFETY: by the caller's contract.
        match unsafe { ep.as_ref() } {
            Some(e) => c_int::from(e.endpoint.is_disconnected()),
            None => -1,
        }
    })
}

/// Waits up to `timeout_ns` (negative: no limit) until the endpoint is
/// disconnected (by either side or the peer's death): what an executor
/// does to serve until its controller is done.
/// `ORCWIRE_STATUS_TIMED_OUT` if it is still connected.
///
/// # Safety
/// `ep` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn orcwire_endpoint_wait_disconnected(
    ep: *const orcwire_endpoint,
    timeout_ns: i64,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let ep = unsafe { endpoint(ep) }?;
        let deadline = timeout_from_ns(timeout_ns).and_then(|t| Instant::now().checked_add(t));
        let (flag, cv) = &*ep.ended;
        let mut ended = lock(flag);
        while !*ended {
            match deadline {
                None => {
                    ended = cv
                        .wait(ended)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Failure::new(
                            ORCWIRE_STATUS_TIMED_OUT,
                            "the endpoint is still connected; wait again or disconnect it",
                        ));
                    }
                    ended = cv
                        .wait_timeout(ended, d - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
        }
        Ok(())
    })
}

/// Disconnects, waits for every completion callback and every running C
/// handler (but the caller's own frames), and frees the endpoint. After
/// it returns no callback or handler of this endpoint runs, so their
/// contexts may be freed. NULL is `ORCWIRE_STATUS_NULL_ARGUMENT`; the
/// pointer is dangling afterwards.
///
/// # Safety
/// `ep` is NULL or live, and no other thread uses it during or after.
#[no_mangle]
pub unsafe extern "C" fn orcwire_endpoint_free(ep: *mut orcwire_endpoint) -> orcwire_status {
    guard(|| {
        if ep.is_null() {
            return Err(Failure::null("endpoint"));
        }
        // SAFETY: from `Box::into_raw` in `orcwire_builder_connect`,
        // handed back once by contract.
        let ep = unsafe { Box::from_raw(ep) };
        ep.endpoint.disconnect();
        if let Some(c) = lock(&ep.completions).take() {
            c.shut_down();
        }
        ep.running.wait_idle();
        Ok(())
    })
}
