//! Building an endpoint from C: `orcwire_builder` (role, C wrapper
//! functions by name, declared controller handlers, an executor's
//! dialect) and connecting it on a transport.

use super::*;

/// An endpoint under construction. Opaque to C.
pub struct orcwire_builder {
    role: orcwire_role,
    functions: Vec<(String, HandlerFn, CtxPtr)>,
    declared: Vec<String>,
    dialect: Dialect,
}

/// What an executor speaks (`orcwire_builder_set_dialect`); a controller
/// learns the executor's from its `Setup`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum orcwire_dialect {
    /// Two orcwire endpoints (the default).
    ORCWIRE_DIALECT_ORCWIRE = 0,
    /// LLVM 14's `SimpleRemoteEPC` as the controller.
    ORCWIRE_DIALECT_LLVM14 = 1,
    /// LLVM 15 or later as the controller.
    ORCWIRE_DIALECT_LLVM15 = 2,
}

/// Executor only: speak `dialect` (an `orcwire_dialect`) to the
/// controller, for example LLVM's own `SimpleRemoteEPC`. Controller
/// handlers cannot be declared then. Default `ORCWIRE_DIALECT_ORCWIRE`.
///
/// # Safety
/// `b` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn orcwire_builder_set_dialect(
    b: *mut orcwire_builder,
    dialect: u32,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let b = unsafe { builder(b) }?;
        if b.role != orcwire_role::ORCWIRE_ROLE_EXECUTOR {
            return Err(Failure::new(
                ORCWIRE_STATUS_INVALID_STATE,
                "only an executor chooses a dialect; a controller learns it from the executor's Setup",
            ));
        }
        b.dialect = match dialect {
            0 => Dialect::Orcwire,
            1 => Dialect::Llvm14,
            2 => Dialect::Llvm15,
            other => {
                return Err(Failure::new(
                    ORCWIRE_STATUS_INVALID_ARGUMENT,
                    format!("unknown dialect {other}; use an orcwire_dialect"),
                ))
            }
        };
        Ok(())
    })
}

/// Starts a builder for `role` (an `orcwire_role` value).
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_builder_new(
    role: u32,
    out: *mut *mut orcwire_builder,
) -> orcwire_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let role = match role {
            0 => orcwire_role::ORCWIRE_ROLE_CONTROLLER,
            1 => orcwire_role::ORCWIRE_ROLE_EXECUTOR,
            other => {
                return Err(Failure::new(
                    ORCWIRE_STATUS_INVALID_ARGUMENT,
                    format!("role = {other} is not an orcwire_role; use ORCWIRE_ROLE_CONTROLLER or ORCWIRE_ROLE_EXECUTOR"),
                ))
            }
        };
        let b = orcwire_builder {
            role,
            functions: Vec::new(),
            declared: Vec::new(),
            dialect: Dialect::Orcwire,
        };
        // SAFETY: checked non-null, writable by contract.
        unsafe { put(out, Box::into_raw(Box::new(b))) };
        Ok(())
    })
}

/// Borrows a builder mutably.
///
/// # Safety
/// `b` is NULL or live and not used by another thread.
unsafe fn builder<'a>(b: *mut orcwire_builder) -> Result<&'a mut orcwire_builder, Failure> {
    // SAFETY: by the caller's contract.
    unsafe { b.as_mut() }.ok_or_else(|| Failure::null("builder"))
}

/// Registers `handler` under `name`: on an executor, a wrapper function
/// the controller calls; on a controller, a handler the executor calls.
///
/// # Safety
/// `b` is NULL or live; `name` is NULL or NUL-terminated; `handler` is
/// NULL or callable from any thread with `ctx` until the endpoint is
/// freed.
#[no_mangle]
pub unsafe extern "C" fn orcwire_builder_add_function(
    b: *mut orcwire_builder,
    name: *const c_char,
    handler: Option<HandlerFn>,
    ctx: *mut c_void,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let b = unsafe { builder(b) }?;
        // SAFETY: by the caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        let f = handler.ok_or_else(|| Failure::null("handler"))?;
        b.functions.push((name.to_owned(), f, CtxPtr::new(ctx)));
        Ok(())
    })
}

/// Executor only: declares a controller handler this executor will call
/// (its tag comes from `orcwire_handler_tag` after connecting).
///
/// # Safety
/// `b` is NULL or live; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn orcwire_builder_declare_controller_handler(
    b: *mut orcwire_builder,
    name: *const c_char,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let b = unsafe { builder(b) }?;
        // SAFETY: by the caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        if b.role != orcwire_role::ORCWIRE_ROLE_EXECUTOR {
            return Err(Failure::new(
                ORCWIRE_STATUS_INVALID_STATE,
                "only an executor declares controller handlers; a controller registers them with orcwire_builder_add_function",
            ));
        }
        b.declared.push(name.to_owned());
        Ok(())
    })
}

/// Connects: an executor sends its `Setup` on `t`; a controller waits
/// (5 s by default) for the executor's. Consumes `b` in every case. The
/// transport then belongs to the endpoint (raw send/recv on it return
/// `ORCWIRE_STATUS_IN_USE`); free the transport handle whenever you like.
/// On failure the transport is closed.
///
/// # Safety
/// `b` is NULL or live and not used again; `t` is NULL or live; `out` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_builder_connect(
    b: *mut orcwire_builder,
    t: *mut orcwire_transport,
    out: *mut *mut orcwire_endpoint,
) -> orcwire_status {
    guard(|| {
        if b.is_null() {
            return Err(Failure::null("builder"));
        }
        // SAFETY: from `Box::into_raw` in `orcwire_builder_new`, given up
        // by the caller's contract.
        let b = unsafe { Box::from_raw(b) };
        // SAFETY: NULL or live by contract.
        let t = unsafe { t.as_ref() }.ok_or_else(|| Failure::null("transport"))?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let transport = t.take_for_endpoint()?;
        let running = Arc::new(Running::default());
        let connected = match b.role {
            orcwire_role::ORCWIRE_ROLE_EXECUTOR => {
                let mut eb = ExecutorBuilder::new().dialect(b.dialect);
                for (name, f, ctx) in &b.functions {
                    eb = eb.function(name, c_handler(*f, *ctx, Arc::clone(&running)));
                }
                for name in &b.declared {
                    eb = eb.controller_handler(name);
                }
                eb.connect(transport)
            }
            orcwire_role::ORCWIRE_ROLE_CONTROLLER => {
                let mut cb = ControllerBuilder::new();
                for (name, f, ctx) in &b.functions {
                    cb = cb.handler(name, c_handler(*f, *ctx, Arc::clone(&running)));
                }
                cb.connect(transport)
            }
        };
        let endpoint =
            connected.map_err(|e| Failure::new(ORCWIRE_STATUS_CONNECT, e.to_string()))?;
        let ended = Arc::new((Mutex::new(false), Condvar::new()));
        let e = Arc::clone(&ended);
        endpoint.on_disconnect(move |_| {
            *lock(&e.0) = true;
            e.1.notify_all();
        });
        let ep = orcwire_endpoint {
            endpoint,
            role: b.role,
            running,
            completions: Mutex::new(None),
            ended,
        };
        // SAFETY: checked non-null, writable by contract.
        unsafe { put(out, Box::into_raw(Box::new(ep))) };
        Ok(())
    })
}

/// Frees a builder that was not connected. NULL is ignored.
///
/// # Safety
/// `b` is NULL or live and not used again.
#[no_mangle]
pub unsafe extern "C" fn orcwire_builder_free(b: *mut orcwire_builder) {
    if !b.is_null() {
        // SAFETY: from `Box::into_raw`, handed back once by contract.
        let b = unsafe { Box::from_raw(b) };
        crate::status::guard_value((), move || drop(b));
    }
}
