//! What `orcwire_endpoint_free` promises, checked through the C ABI from
//! Rust (both endpoints in this process, over a Unix socket pair): it
//! returns only after a running handler has returned, it does not wait
//! for the caller's own handler frame, and a responder answered after the
//! endpoint was freed is harmless; and `orcwire_endpoint_disconnect`
//! returns only after the callbacks of the calls it failed have run.

use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orcwire::{StreamConfig, StreamTransport, Transport};
use orcwire_capi::endpoint::*;
use orcwire_capi::orcwire_status::*;
use orcwire_capi::transport::{orcwire_transport, orcwire_transport_free};
use orcwire_capi::{orc_rt_WrapperFunctionBuffer, orcwire_status};

/// A transport handle pair over a Unix socket pair.
fn pair() -> (*mut orcwire_transport, *mut orcwire_transport) {
    let (c, e) = StreamTransport::unix_pair(StreamConfig::default()).expect("socket pair");
    let c: Arc<dyn Transport> = c;
    let e: Arc<dyn Transport> = e;
    (orcwire_transport::boxed(c), orcwire_transport::boxed(e))
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Builds and connects an endpoint with one function `name`.
fn connect(
    role: orcwire_role,
    t: *mut orcwire_transport,
    name: &str,
    f: Option<HandlerFn>,
    ctx: *mut c_void,
) -> *mut orcwire_endpoint {
    let mut b = std::ptr::null_mut();
    let name = CString::new(name).expect("name");
    // SAFETY: `b` is a valid out pointer; the handler and its context
    // outlive the endpoint (statics and leaked-for-the-test values).
    unsafe {
        assert_eq!(orcwire_builder_new(role as u32, &mut b), ORCWIRE_STATUS_OK);
        if f.is_some() {
            assert_eq!(
                orcwire_builder_add_function(b, name.as_ptr(), f, ctx),
                ORCWIRE_STATUS_OK
            );
        }
        let mut ep = std::ptr::null_mut();
        assert_eq!(orcwire_builder_connect(b, t, &mut ep), ORCWIRE_STATUS_OK);
        ep
    }
}

struct Slow {
    started: AtomicBool,
    finished: AtomicBool,
    responder: AtomicPtr<orcwire_responder>,
}

/// Connects an executor offering `name` (run by `handler` with `ctx`) on
/// `et`, from another thread, and a controller on `ct`:
/// `(controller, executor)`.
fn connect_pair(
    ct: *mut orcwire_transport,
    et: *mut orcwire_transport,
    name: &'static str,
    handler: unsafe extern "C" fn(
        *mut c_void,
        orc_rt_WrapperFunctionBuffer,
        *mut orcwire_responder,
    ),
    ctx: usize,
) -> (*mut orcwire_endpoint, *mut orcwire_endpoint) {
    let exec_t = std::thread::spawn({
        let et = et as usize;
        move || {
            connect(
                orcwire_role::ORCWIRE_ROLE_EXECUTOR,
                et as *mut orcwire_transport,
                name,
                Some(handler),
                ctx as *mut c_void,
            ) as usize
        }
    });
    let c = connect(
        orcwire_role::ORCWIRE_ROLE_CONTROLLER,
        ct,
        "",
        None,
        std::ptr::null_mut(),
    );
    let e = exec_t.join().expect("executor connect") as *mut orcwire_endpoint;
    (c, e)
}

/// Calls the executor's `name` from controller `c`, with no arguments,
/// completing with `done` (no context).
fn call_async(
    c: *mut orcwire_endpoint,
    name: &str,
    done: unsafe extern "C" fn(*mut c_void, orcwire_status, orc_rt_WrapperFunctionBuffer),
) {
    let name = CString::new(name).expect("name");
    let mut tag = 0u64;
    // SAFETY: `c` is a live endpoint; the pointers are valid for the call;
    // `done` needs no context.
    unsafe {
        assert_eq!(
            orcwire_function_tag(c, name.as_ptr(), &mut tag),
            ORCWIRE_STATUS_OK
        );
        assert_eq!(
            orcwire_call_async(
                c,
                tag,
                std::ptr::null(),
                0,
                Some(done),
                std::ptr::null_mut()
            ),
            ORCWIRE_STATUS_OK
        );
    }
}

unsafe extern "C" fn slow(
    ctx: *mut c_void,
    mut args: orc_rt_WrapperFunctionBuffer,
    r: *mut orcwire_responder,
) {
    // SAFETY: the test registered a `Slow` that outlives the endpoint.
    let s = unsafe { &*ctx.cast::<Slow>() };
    // SAFETY: the handler owns its arguments.
    unsafe { orcwire_capi::buffer::orcwire_buffer_dispose(&mut args) };
    s.responder.store(r, Ordering::SeqCst);
    s.started.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    s.finished.store(true, Ordering::SeqCst);
}

static DONE: AtomicUsize = AtomicUsize::new(0);
static DONE_STATUS: AtomicUsize = AtomicUsize::new(usize::MAX);

unsafe extern "C" fn done(
    _ctx: *mut c_void,
    status: orcwire_status,
    _r: orc_rt_WrapperFunctionBuffer,
) {
    DONE_STATUS.store(status as usize, Ordering::SeqCst);
    DONE.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn free_waits_for_a_running_handler_and_late_responders_are_harmless() {
    let (ct, et) = pair();
    let state: &'static Slow = Box::leak(Box::new(Slow {
        started: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        responder: AtomicPtr::new(std::ptr::null_mut()),
    }));
    let ctx = state as *const Slow as usize;
    let (c, e) = connect_pair(ct, et, "slow", slow, ctx);
    call_async(c, "slow", done);
    wait_for("the handler to start", || {
        state.started.load(Ordering::SeqCst)
    });
    let t0 = Instant::now();
    // SAFETY: `e` is live and used by no other thread from here on.
    assert_eq!(unsafe { orcwire_endpoint_free(e) }, ORCWIRE_STATUS_OK);
    assert!(
        state.finished.load(Ordering::SeqCst),
        "orcwire_endpoint_free returned while the handler still ran"
    );
    eprintln!("free waited {:?} for the running handler", t0.elapsed());
    // The handler kept its responder; answering after free is harmless.
    let mut empty = orc_rt_WrapperFunctionBuffer::EMPTY;
    // SAFETY: `empty` is a valid out pointer.
    unsafe { orcwire_capi::buffer::orcwire_buffer_init(&mut empty) };
    let r = state.responder.load(Ordering::SeqCst);
    // SAFETY: the responder was handed to the handler and not consumed.
    assert_eq!(unsafe { orcwire_respond(r, empty) }, ORCWIRE_STATUS_OK);
    // The controller's call ended (the executor hung up) exactly once.
    // SAFETY: `c` is live.
    assert_eq!(unsafe { orcwire_endpoint_free(c) }, ORCWIRE_STATUS_OK);
    assert_eq!(DONE.load(Ordering::SeqCst), 1);
    assert_ne!(
        DONE_STATUS.load(Ordering::SeqCst),
        ORCWIRE_STATUS_OK as usize
    );
    // SAFETY: both transports were given to endpoints; nobody uses them.
    unsafe {
        assert_eq!(orcwire_transport_free(ct), ORCWIRE_STATUS_OK);
        assert_eq!(orcwire_transport_free(et), ORCWIRE_STATUS_OK);
    }
}

static SELF_EP: AtomicPtr<orcwire_endpoint> = AtomicPtr::new(std::ptr::null_mut());
static SELF_FREED: AtomicBool = AtomicBool::new(false);

unsafe extern "C" fn free_self(
    _ctx: *mut c_void,
    mut args: orc_rt_WrapperFunctionBuffer,
    r: *mut orcwire_responder,
) {
    // SAFETY: the handler owns its arguments and its responder.
    unsafe {
        orcwire_capi::buffer::orcwire_buffer_dispose(&mut args);
        orcwire_responder_drop(r);
    }
    let ep = SELF_EP.load(Ordering::SeqCst);
    // SAFETY: the test published its endpoint before calling; nothing
    // else uses it any more.
    let s = unsafe { orcwire_endpoint_free(ep) };
    assert_eq!(s, ORCWIRE_STATUS_OK);
    SELF_FREED.store(true, Ordering::SeqCst);
}

#[test]
fn free_from_inside_its_own_handler_does_not_wait_for_itself() {
    let (ct, et) = pair();
    let exec_t = std::thread::spawn({
        let et = et as usize;
        move || {
            connect(
                orcwire_role::ORCWIRE_ROLE_EXECUTOR,
                et as *mut orcwire_transport,
                "free_self",
                Some(free_self),
                std::ptr::null_mut(),
            ) as usize
        }
    });
    let c = connect(
        orcwire_role::ORCWIRE_ROLE_CONTROLLER,
        ct,
        "",
        None,
        std::ptr::null_mut(),
    );
    let e = exec_t.join().expect("executor connect") as *mut orcwire_endpoint;
    SELF_EP.store(e, Ordering::SeqCst);
    let name = CString::new("free_self").expect("name");
    let mut tag = 0u64;
    let mut out = orc_rt_WrapperFunctionBuffer::EMPTY;
    // SAFETY: live handle, valid pointers.
    let s = unsafe {
        assert_eq!(
            orcwire_function_tag(c, name.as_ptr(), &mut tag),
            ORCWIRE_STATUS_OK
        );
        orcwire_call_sync(c, tag, std::ptr::null(), 0, 10_000_000_000, &mut out)
    };
    // The executor dropped the responder (an error result) and then went
    // away; either may reach us first.
    assert!(
        matches!(s, ORCWIRE_STATUS_OK | ORCWIRE_STATUS_DISCONNECTED),
        "{s:?}"
    );
    // SAFETY: `out` came from the call; disposing an empty buffer is a no-op.
    unsafe { orcwire_capi::buffer::orcwire_buffer_dispose(&mut out) };
    wait_for("the handler to free its endpoint", || {
        SELF_FREED.load(Ordering::SeqCst)
    });
    // SAFETY: `c` is live; transports were given to endpoints.
    unsafe {
        assert_eq!(orcwire_endpoint_free(c), ORCWIRE_STATUS_OK);
        assert_eq!(orcwire_transport_free(ct), ORCWIRE_STATUS_OK);
        assert_eq!(orcwire_transport_free(et), ORCWIRE_STATUS_OK);
    }
}

static SLOW_DONE_FINISHED: AtomicBool = AtomicBool::new(false);

unsafe extern "C" fn slow_done(
    _ctx: *mut c_void,
    status: orcwire_status,
    _r: orc_rt_WrapperFunctionBuffer,
) {
    assert_ne!(status, ORCWIRE_STATUS_OK);
    std::thread::sleep(Duration::from_millis(100));
    SLOW_DONE_FINISHED.store(true, Ordering::SeqCst);
}

unsafe extern "C" fn never_answer(
    ctx: *mut c_void,
    mut args: orc_rt_WrapperFunctionBuffer,
    r: *mut orcwire_responder,
) {
    // SAFETY: the handler owns its arguments; the test's context is an
    // `AtomicPtr` that outlives the endpoint.
    unsafe {
        orcwire_capi::buffer::orcwire_buffer_dispose(&mut args);
        (*ctx.cast::<AtomicPtr<orcwire_responder>>()).store(r, Ordering::SeqCst);
    }
}

/// Regression: under load a pending async call had failed, but its
/// callback had not run yet, when `orcwire_endpoint_disconnect` returned.
#[test]
fn disconnect_returns_after_the_callbacks_of_failed_calls_have_run() {
    let (ct, et) = pair();
    let held: &'static AtomicPtr<orcwire_responder> =
        Box::leak(Box::new(AtomicPtr::new(std::ptr::null_mut())));
    let ctx = held as *const AtomicPtr<orcwire_responder> as usize;
    let (c, e) = connect_pair(ct, et, "never", never_answer, ctx);
    call_async(c, "never", slow_done);
    wait_for("the call to reach the executor", || {
        !held.load(Ordering::SeqCst).is_null()
    });
    // SAFETY: `c` is live.
    assert_eq!(unsafe { orcwire_endpoint_disconnect(c) }, ORCWIRE_STATUS_OK);
    assert!(
        SLOW_DONE_FINISHED.load(Ordering::SeqCst),
        "orcwire_endpoint_disconnect returned before the failed call's callback ran"
    );
    // SAFETY: live handles used by no other thread; the held responder
    // is consumed once; transports were given to endpoints.
    unsafe {
        assert_eq!(orcwire_endpoint_free(c), ORCWIRE_STATUS_OK);
        assert_eq!(orcwire_endpoint_free(e), ORCWIRE_STATUS_OK);
        assert_eq!(
            orcwire_responder_drop(held.load(Ordering::SeqCst)),
            ORCWIRE_STATUS_OK
        );
        assert_eq!(orcwire_transport_free(ct), ORCWIRE_STATUS_OK);
        assert_eq!(orcwire_transport_free(et), ORCWIRE_STATUS_OK);
    }
}
