//! `orcwire executor`: the executor role.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use orcwire::handles::HandleId;
use orcwire::{DisconnectReason, Endpoint, ExecutorBuilder, Responder, WrapperFunctionBuffer};
use orcwire_shm::{attach_inherited, attach_path, DEFAULT_ATTACH_TIMEOUT};
use orcwire_tools::bench::percentile;

use crate::common::{sum_reply, ExecutorArgs};

/// `call_controller`'s reply: calls made, then p50, p99, p99.9 in ns.
pub const CALL_REPLY_LEN: usize = 32;

pub fn run(opts: &ExecutorArgs) -> ExitCode {
    let config = opts.connection.shm_config();
    let attached = match &opts.connect {
        Some(path) => attach_path(path, config, DEFAULT_ATTACH_TIMEOUT),
        None => attach_inherited(config),
    };
    let transport = match attached {
        Ok(t) => t,
        Err(e) => {
            eprintln!("orcwire executor: {e}");
            return ExitCode::from(1);
        }
    };
    let mut builder = ExecutorBuilder::new();
    if let Some(d) = opts.connection.dispatcher() {
        builder = builder.dispatcher(d);
    }
    let endpoint = builder
        .sync_function("echo", WrapperFunctionBuffer::from_slice)
        .sync_function("sum", |a: &[u8]| {
            WrapperFunctionBuffer::from_slice(&sum_reply(a))
        })
        .function("call_controller", |args, responder| {
            // The responder hands out our endpoint even when the controller
            // calls before `connect` below has returned it.
            let reply = match responder.endpoint() {
                Some(ep) => call_controller(&ep, args.as_slice()),
                None => WrapperFunctionBuffer::out_of_band_error("the executor is disconnecting"),
            };
            responder.respond(reply);
        })
        .function("buffer_alloc", buffer_alloc)
        .function("buffer_sum", buffer_sum)
        .function("buffer_stats", |_args, responder| {
            let mut out = Vec::with_capacity(16);
            let exports = responder
                .endpoint()
                .map_or(0, |ep| ep.handle_counts().exports as u64);
            out.extend_from_slice(&exports.to_le_bytes());
            out.extend_from_slice(&FREED_BYTES.load(Ordering::SeqCst).to_le_bytes());
            responder.respond(WrapperFunctionBuffer::from_vec(out));
        })
        .sync_function("exit_now", |_a: &[u8]| std::process::exit(3))
        .controller_handler("ctl_echo")
        .controller_handler("log")
        .connect(transport);
    let endpoint = match endpoint {
        Ok(ep) => ep,
        Err(e) => {
            eprintln!("orcwire executor: {e}");
            return ExitCode::from(1);
        }
    };
    let (tx, rx) = mpsc::channel();
    endpoint.on_disconnect(move |reason| {
        let _ = tx.send(reason.clone());
    });
    if let Some(log) = endpoint.handler_tag("log") {
        let hello = format!("executor {} attached", std::process::id());
        if let Ok(call) = endpoint.call(log, hello.as_bytes()) {
            let mut call = call;
            let _ = call.wait_timeout(Duration::from_secs(5));
        }
    }
    // Serve until the controller disconnects or dies.
    let reason = rx.recv().unwrap_or(DisconnectReason::Local);
    match reason {
        DisconnectReason::Local | DisconnectReason::PeerHungUp => ExitCode::SUCCESS,
        DisconnectReason::PeerDied => {
            eprintln!("orcwire executor: the controller died; shutting down");
            ExitCode::from(4)
        }
        other => {
            eprintln!("orcwire executor: connection ended: {other}");
            ExitCode::from(1)
        }
    }
}

/// Makes `n` (8-byte LE argument) 64-byte calls to the controller's
/// `ctl_echo`, checks each, and reports the latency.
fn call_controller(ep: &Endpoint, args: &[u8]) -> WrapperFunctionBuffer {
    let Some(n) = args.get(..8).map(|b| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    }) else {
        return WrapperFunctionBuffer::out_of_band_error("call_controller takes a u64 count");
    };
    let Some(tag) = ep.handler_tag("ctl_echo") else {
        return WrapperFunctionBuffer::out_of_band_error("controller has no ctl_echo");
    };
    let mut samples = Vec::with_capacity(n.min(1 << 20) as usize);
    let mut payload = [0u8; 64];
    for i in 0..n {
        payload[..8].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        match ep.call_sync(tag, &payload) {
            Ok(r) if r.as_slice() == payload => samples.push(t.elapsed()),
            Ok(r) => {
                return WrapperFunctionBuffer::out_of_band_error(format!(
                    "ctl_echo call {i} returned {} wrong bytes",
                    r.len()
                ))
            }
            Err(e) => {
                return WrapperFunctionBuffer::out_of_band_error(format!(
                    "ctl_echo call {i} failed: {e}"
                ))
            }
        }
    }
    samples.sort_unstable();
    let mut out = Vec::with_capacity(CALL_REPLY_LEN);
    out.extend_from_slice(&n.to_le_bytes());
    for p in [50.0, 99.0, 99.9] {
        out.extend_from_slice(&(percentile(&samples, p).as_nanos() as u64).to_le_bytes());
    }
    WrapperFunctionBuffer::from_vec(out)
}

/// Bytes of lent buffers freed so far (their handles' release actions).
static FREED_BYTES: AtomicU64 = AtomicU64::new(0);

fn u64_arg(args: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(args.try_into().ok()?))
}

/// `buffer_alloc(len: u64) -> id`: allocates a buffer here (byte `i` is
/// `i % 251`) and lends it to the controller; it is freed when the
/// controller drops its handle (or disconnects).
fn buffer_alloc(args: WrapperFunctionBuffer, responder: Responder) {
    let reply = match (u64_arg(args.as_slice()), responder.endpoint()) {
        (Some(len), Some(ep)) => {
            let buf: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let lent = ep.export_with(buf, |buf: &Vec<u8>| {
                FREED_BYTES.fetch_add(buf.len() as u64, Ordering::SeqCst);
            });
            match lent {
                Ok(id) => WrapperFunctionBuffer::from_vec(id.to_sps()),
                Err(e) => WrapperFunctionBuffer::out_of_band_error(e.to_string()),
            }
        }
        _ => WrapperFunctionBuffer::out_of_band_error("buffer_alloc takes a u64 length"),
    };
    responder.respond(reply);
}

/// `buffer_sum(id) -> u64`: the sum of a lent buffer's bytes.
fn buffer_sum(args: WrapperFunctionBuffer, responder: Responder) {
    let reply = match responder.endpoint() {
        Some(ep) => HandleId::from_sps(args.as_slice())
            .and_then(|id| ep.resolve::<Vec<u8>>(id))
            .map(|buf: Arc<Vec<u8>>| buf.iter().map(|&b| u64::from(b)).sum::<u64>()),
        None => return,
    };
    responder.respond(match reply {
        Ok(sum) => WrapperFunctionBuffer::from_vec(sum.to_le_bytes().to_vec()),
        Err(e) => WrapperFunctionBuffer::out_of_band_error(e.to_string()),
    });
}
