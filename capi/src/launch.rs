//! Getting a shared-memory transport: the controller spawns an executor
//! (segment inherited) or listens on a path; the executor attaches to the
//! inherited segment or connects to the path. Wraps
//! `orcwire_shm`'s launch API; also the `orcwire_process` handle for a spawned
//! executor.

use std::ffi::{c_char, c_int, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use orcwire::Transport;
use orcwire_shm::{
    attach_inherited, attach_path, is_launched_executor, ExecutorCommand, ExecutorProcess,
    RingCapacity, ShmConfig, ShmListener, WaitStrategy, DEFAULT_ATTACH_TIMEOUT,
};

use crate::status::orcwire_status::{self, *};
use crate::status::{c_str, guard, put, timeout_from_ns, Failure};
use crate::transport::orcwire_transport;

/// How a blocked send or receive waits.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum orcwire_wait {
    /// orcwire's default (`WaitStrategy::balanced`).
    ORCWIRE_WAIT_DEFAULT = 0,
    /// Spin longest before sleeping (`WaitStrategy::lowest_latency`).
    ORCWIRE_WAIT_LOWEST_LATENCY = 1,
    /// `WaitStrategy::balanced`.
    ORCWIRE_WAIT_BALANCED = 2,
    /// Sleep almost at once (`WaitStrategy::low_cpu`).
    ORCWIRE_WAIT_LOW_CPU = 3,
}

/// Settings of a shared-memory transport. A NULL pointer where one is
/// taken means all defaults; a 0 field means that field's default.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct orcwire_shm_config {
    /// An `orcwire_wait` value.
    pub wait: u32,
    /// Always 0.
    pub reserved: u32,
    /// Bytes of each ring: a power of two of at least 256 (controller
    /// only; an executor takes the sizes from the segment). 0: 1 MiB.
    pub ring_capacity: u64,
    /// Largest message in bytes. 0: 1 GiB.
    pub max_message_size: u64,
}

/// Reads an optional config from C.
///
/// # Safety
/// `config` is NULL or points to a readable `orcwire_shm_config`.
unsafe fn shm_config(config: *const orcwire_shm_config) -> Result<ShmConfig, Failure> {
    let mut out = ShmConfig::default();
    // SAFETY: NULL or readable by the caller's contract.
    let Some(c) = (unsafe { config.as_ref() }) else {
        return Ok(out);
    };
    out.wait = match c.wait {
        0 | 2 => WaitStrategy::balanced(),
        1 => WaitStrategy::lowest_latency(),
        3 => WaitStrategy::low_cpu(),
        other => {
            return Err(Failure::new(
                ORCWIRE_STATUS_INVALID_ARGUMENT,
                format!("wait = {other} is not an orcwire_wait value; use 0 to 3"),
            ))
        }
    };
    if c.ring_capacity != 0 {
        let bytes = usize::try_from(c.ring_capacity).unwrap_or(usize::MAX);
        out.ring_capacity = RingCapacity::new(bytes)
            .map_err(|e| Failure::new(ORCWIRE_STATUS_INVALID_ARGUMENT, e.to_string()))?;
    }
    if c.max_message_size != 0 {
        out.max_message_size = c.max_message_size;
    }
    Ok(out)
}

/// A spawned executor process. Opaque to C.
pub struct orcwire_process {
    process: ExecutorProcess,
}

/// Timeout for a handshake, from C nanoseconds (negative: 10 s default).
fn attach_timeout(ns: i64) -> Duration {
    timeout_from_ns(ns).unwrap_or(DEFAULT_ATTACH_TIMEOUT)
}

/// Controller: spawns `argv[0]` with arguments `argv[1..]` (a
/// NULL-terminated array; `argv[0]` is looked up in `PATH` as `execvp`
/// does) with a fresh segment inherited, and waits up to
/// `attach_timeout_ns` (negative: 10 s) for it to attach. The program
/// must call `orcwire_shm_attach_inherited`. On success `*out_transport`
/// and `*out_process` are new handles the caller owns.
///
/// # Safety
/// `argv` is NULL or a NULL-terminated array of NUL-terminated strings;
/// `config` is NULL or readable; the out pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_shm_spawn(
    argv: *const *const c_char,
    config: *const orcwire_shm_config,
    attach_timeout_ns: i64,
    out_transport: *mut *mut orcwire_transport,
    out_process: *mut *mut orcwire_process,
) -> orcwire_status {
    guard(|| {
        if argv.is_null() {
            return Err(Failure::null("argv"));
        }
        if out_transport.is_null() || out_process.is_null() {
            return Err(Failure::null("out_transport or out_process"));
        }
        let mut args = Vec::new();
        for i in 0.. {
            // SAFETY: the array is NULL-terminated by contract, and we stop
            // at the first NULL.
            let p = unsafe { *argv.add(i) };
            if p.is_null() {
                break;
            }
            // SAFETY: NUL-terminated by contract.
            args.push(OsStr::from_bytes(
                unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes(),
            ));
        }
        let Some((program, rest)) = args.split_first() else {
            return Err(Failure::new(
                ORCWIRE_STATUS_INVALID_ARGUMENT,
                "argv is empty; pass the executor program as argv[0]",
            ));
        };
        let mut command = Command::new(program);
        command.args(rest);
        // SAFETY: by the caller's contract.
        let config = unsafe { shm_config(config) }?;
        let spawned = ExecutorCommand::new(command)
            .config(config)
            .attach_timeout(attach_timeout(attach_timeout_ns))
            .spawn()?;
        let transport: Arc<dyn Transport> = spawned.transport;
        // SAFETY: both checked non-null, writable by contract.
        unsafe {
            put(out_transport, orcwire_transport::boxed(transport));
            put(
                out_process,
                Box::into_raw(Box::new(orcwire_process {
                    process: spawned.process,
                })),
            );
        }
        Ok(())
    })
}

/// 1 if this process was started by `orcwire_shm_spawn` (its environment
/// says so; `orcwire_shm_attach_inherited` still validates it), else 0.
#[no_mangle]
pub extern "C" fn orcwire_shm_is_launched_executor() -> c_int {
    crate::status::guard_value(0, || c_int::from(is_launched_executor()))
}

/// Executor: attaches to the segment inherited from a controller's
/// `orcwire_shm_spawn`. `*out` becomes a new transport handle.
///
/// # Safety
/// `config` is NULL or readable; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_shm_attach_inherited(
    config: *const orcwire_shm_config,
    out: *mut *mut orcwire_transport,
) -> orcwire_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: by the caller's contract.
        let config = unsafe { shm_config(config) }?;
        let transport: Arc<dyn Transport> = attach_inherited(config)?;
        // SAFETY: checked non-null, writable by contract.
        unsafe { put(out, orcwire_transport::boxed(transport)) };
        Ok(())
    })
}

/// Executor: connects to a controller listening on `path`
/// (`orcwire_shm_listen`) and attaches, within `timeout_ns` (negative:
/// 10 s). `*out` becomes a new transport handle.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `config` is NULL or readable; `out`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_shm_attach_path(
    path: *const c_char,
    config: *const orcwire_shm_config,
    timeout_ns: i64,
    out: *mut *mut orcwire_transport,
) -> orcwire_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: by the caller's contract.
        let path = unsafe { c_str(path, "path") }?;
        // SAFETY: by the caller's contract.
        let config = unsafe { shm_config(config) }?;
        let transport: Arc<dyn Transport> = attach_path(path, config, attach_timeout(timeout_ns))?;
        // SAFETY: checked non-null, writable by contract.
        unsafe { put(out, orcwire_transport::boxed(transport)) };
        Ok(())
    })
}

/// A controller's listening socket. Opaque to C.
pub struct orcwire_shm_listener {
    listener: ShmListener,
}

/// Controller: listens on the Unix socket `path` (which must not exist;
/// mode 0600; removed by `orcwire_shm_listener_free`).
///
/// # Safety
/// `path` is NULL or NUL-terminated; `config` is NULL or readable; `out`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_shm_listen(
    path: *const c_char,
    config: *const orcwire_shm_config,
    out: *mut *mut orcwire_shm_listener,
) -> orcwire_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: by the caller's contract.
        let path = unsafe { c_str(path, "path") }?;
        // SAFETY: by the caller's contract.
        let config = unsafe { shm_config(config) }?;
        let listener = ShmListener::bind(path, config)?;
        // SAFETY: checked non-null, writable by contract.
        unsafe {
            put(
                out,
                Box::into_raw(Box::new(orcwire_shm_listener { listener })),
            )
        };
        Ok(())
    })
}

/// Controller: waits up to `timeout_ns` (negative: no limit) for one
/// executor, gives it a fresh segment and waits for it to attach. One
/// thread at a time per listener.
///
/// # Safety
/// `listener` is NULL or live; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_shm_accept(
    listener: *mut orcwire_shm_listener,
    timeout_ns: i64,
    out: *mut *mut orcwire_transport,
) -> orcwire_status {
    guard(|| {
        // SAFETY: NULL or live by contract.
        let l = unsafe { listener.as_ref() }.ok_or_else(|| Failure::null("listener"))?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let transport: Arc<dyn Transport> = l.listener.accept(timeout_from_ns(timeout_ns))?;
        // SAFETY: checked non-null, writable by contract.
        unsafe { put(out, orcwire_transport::boxed(transport)) };
        Ok(())
    })
}

/// Closes the listener and removes its socket file. Transports it
/// accepted stay usable. NULL is ignored; the pointer is dangling after.
///
/// # Safety
/// `listener` is NULL or live and not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn orcwire_shm_listener_free(listener: *mut orcwire_shm_listener) {
    if !listener.is_null() {
        // SAFETY: from `Box::into_raw` in `orcwire_shm_listen`, handed
        // back once by contract.
        let l = unsafe { Box::from_raw(listener) };
        crate::status::guard_value((), move || drop(l));
    }
}

/// Borrows a process handle.
///
/// # Safety
/// `p` is NULL or live.
unsafe fn process<'a>(p: *const orcwire_process) -> Result<&'a orcwire_process, Failure> {
    // SAFETY: NULL or live by contract.
    unsafe { p.as_ref() }.ok_or_else(|| Failure::null("process"))
}

/// The process id, or -1 for NULL.
///
/// # Safety
/// `p` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn orcwire_process_pid(p: *const orcwire_process) -> i64 {
    // SAFETY: by the caller's contract.
    unsafe { process(p) }.map_or(-1, |p| i64::from(p.process.id()))
}

/// Waits up to `timeout_ns` (negative: no limit) for the process to exit
/// and reaps it; `*out_wait_status` gets the `waitpid` status (use
/// `WIFEXITED` and friends). `ORCWIRE_STATUS_TIMED_OUT` if it still runs.
///
/// # Safety
/// `p` is NULL or live; `out_wait_status` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_process_wait(
    p: *mut orcwire_process,
    timeout_ns: i64,
    out_wait_status: *mut c_int,
) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let p = unsafe { process(p) }?;
        if out_wait_status.is_null() {
            return Err(Failure::null("out_wait_status"));
        }
        // Far enough to mean "no limit", near enough not to overflow `Instant`.
        let timeout = timeout_from_ns(timeout_ns).unwrap_or(Duration::from_secs(1 << 32));
        match p.process.wait_timeout(timeout) {
            Ok(Some(status)) => {
                // SAFETY: checked non-null, writable by contract.
                unsafe { put(out_wait_status, status.into_raw()) };
                Ok(())
            }
            Ok(None) => Err(Failure::new(
                ORCWIRE_STATUS_TIMED_OUT,
                "the executor is still running; wait again or orcwire_process_kill it",
            )),
            Err(e) => Err(Failure::new(
                ORCWIRE_STATUS_IO,
                format!("waiting for the executor failed: {e}"),
            )),
        }
    })
}

/// Sends `SIGKILL` to the process (nothing if it was reaped already).
///
/// # Safety
/// `p` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn orcwire_process_kill(p: *mut orcwire_process) -> orcwire_status {
    guard(|| {
        // SAFETY: by the caller's contract.
        let p = unsafe { process(p) }?;
        p.process
            .kill()
            .map_err(|e| Failure::new(ORCWIRE_STATUS_IO, format!("kill failed: {e}")))
    })
}

/// Frees the handle; if the process has not been reaped yet it is killed
/// (`SIGKILL`) and reaped, so no zombie is left. Wait for it first to let
/// it exit on its own. NULL is ignored; the pointer is dangling after.
///
/// # Safety
/// `p` is NULL or live and not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn orcwire_process_free(p: *mut orcwire_process) {
    if !p.is_null() {
        // SAFETY: from `Box::into_raw` in `orcwire_shm_spawn`, handed back
        // once by contract.
        let b = unsafe { Box::from_raw(p) };
        crate::status::guard_value((), move || drop(b));
    }
}
