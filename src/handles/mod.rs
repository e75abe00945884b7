//! Remote handles: values lent across the connection by id, and released
//! deterministically when the peer is done with them.
//!
//! Either side **exports** a value ([`Endpoint::export`] for an `Arc<T>`,
//! [`Endpoint::export_with`] for a value with a release action) and gets a
//! [`HandleId`], a `u64` on the wire, to put in a call's arguments or
//! result. The exporter's table holds the value while the peer may still
//! name it, counting the copies of the id it sent: one per `export`, one
//! more per [`Endpoint::export_again`].
//!
//! The receiving side turns each id it receives into a [`RemoteHandle`]
//! with [`Endpoint::import`] (once per copy received). An id received
//! again while a handle for it lives gives that same handle (identity is
//! kept, one entry per id). The handle's id can be passed back in later
//! calls ([`RemoteHandle::id`]); there the exporter finds its value with
//! [`Endpoint::resolve`].
//!
//! # When releases are sent
//! When the last clone of a [`RemoteHandle`] drops, the importer records a
//! release for its id with the number of copies it received. Releases are
//! sent in batches at these points only, never from a timer:
//!
//! 1. before the next outgoing call on that endpoint ([`Endpoint::call`]
//!    and the calls built on it), without waiting for the peer;
//! 2. on [`Endpoint::flush_releases`], which waits until the peer has
//!    applied every release sent so far (this batch and those sent before
//!    calls): when it returns `Ok`, the exporter has dropped each value
//!    whose copies all came back, and run its release action;
//! 3. at [`Endpoint::disconnect`], before the hang-up.
//!
//! The exporter subtracts each count and drops a value only when every
//! copy it sent came back, so an id sent again while a release is in
//! flight cannot free a value the peer holds.
//!
//! # Disconnect
//! When the connection ends (either side's disconnect, or the peer's
//! death), the exporter drops every export, running release actions once
//! each in increasing id order, which is the order of export, on the
//! thread that carries out the disconnect, after pending calls have
//! failed and before the connection counts as disconnected
//! ([`Endpoint::is_disconnected`], the return of [`Endpoint::disconnect`],
//! the [`on_disconnect`](Endpoint::on_disconnect) callbacks); and every
//! [`RemoteHandle`] becomes dead: [`RemoteHandle::id`] gives
//! [`HandleError::Disconnected`], and dropping it sends nothing.
//!
//! # Wire
//! Releases travel as calls to the reserved wrapper function
//! [`RELEASE_FUNCTION`], which both orcwire endpoints register on their
//! own, with an SPS `sequence<tuple<u64 id, u64 count>>`. An orcwire
//! executor announces the feature in its `Setup` bootstrap map under
//! [`CAPABILITY_KEY`]. A release pair naming an id that is not held, a
//! count of 0, or more copies than are outstanding is refused (the call
//! gets an error result naming it, and the connection stays up); the
//! batch's other pairs are applied. Against LLVM's programs
//! ([`Dialect::Llvm14`],
//! [`Dialect::Llvm15`]) there are no handles:
//! exporting and importing give [`HandleError::Unsupported`].
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use orcwire::handles::HandleId;
//! use orcwire::{ControllerBuilder, ExecutorBuilder, StreamConfig, StreamTransport, WrapperFunctionBuffer};
//!
//! let (c_side, e_side) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
//! let executor = std::thread::spawn(move || {
//!     ExecutorBuilder::new()
//!         // Lends the controller a string; its id is the result.
//!         .function("make", |_args, responder| {
//!             let ep = responder.endpoint().unwrap();
//!             let id = ep.export(Arc::new(String::from("hello"))).unwrap();
//!             responder.respond(WrapperFunctionBuffer::from_vec(id.to_sps()));
//!         })
//!         // Reads a string the controller names by handle.
//!         .function("len", |args, responder| {
//!             let ep = responder.endpoint().unwrap();
//!             let len = HandleId::from_sps(args.as_slice())
//!                 .and_then(|id| ep.resolve::<String>(id))
//!                 .map(|s| s.len() as u64);
//!             responder.respond(match len {
//!                 Ok(n) => WrapperFunctionBuffer::from_vec(n.to_le_bytes().to_vec()),
//!                 Err(e) => WrapperFunctionBuffer::out_of_band_error(e.to_string()),
//!             });
//!         })
//!         .connect(e_side)
//!         .unwrap()
//! });
//! let controller = ControllerBuilder::new().connect(c_side).unwrap();
//! let executor = executor.join().unwrap();
//!
//! let out = controller.call_sync(controller.function_tag("make").unwrap(), &[]).unwrap();
//! let handle = controller.import(HandleId::from_sps(out.as_slice()).unwrap()).unwrap();
//! let arg = handle.id().unwrap().to_sps();
//! let len = controller.call_sync(controller.function_tag("len").unwrap(), &arg).unwrap();
//! assert_eq!(len.as_slice(), &5u64.to_le_bytes());
//! assert_eq!(executor.handle_counts().exports, 1);
//!
//! drop(handle);
//! controller.flush_releases().unwrap();
//! assert_eq!(executor.handle_counts().exports, 0); // the executor let go
//! controller.disconnect();
//! executor.disconnect();
//! ```

use std::fmt;

use crate::buffer::WrapperFunctionBuffer;
use crate::endpoint::{Endpoint, Role};
use crate::handler::{HandlerFn, HandlerTag, Responder};
use crate::pending::{CallError, PendingCall};
use crate::sps::{Dialect, SpsError, SpsReader, SpsWriter};
use crate::sync::{Arc, Mutex};

mod endpoint_api;
#[cfg(orcwire_loom)]
#[doc(hidden)]
pub mod table;
#[cfg(not(orcwire_loom))]
mod table;

pub(crate) use table::HandleTables;

/// The reserved wrapper function that carries releases (registered by
/// both orcwire endpoints on their own).
pub const RELEASE_FUNCTION: &str = "orcwire.release";
/// The bootstrap-map key with which an orcwire executor announces remote
/// handles; its value is [`HANDLES_VERSION`] as a little-endian `u32`.
pub const CAPABILITY_KEY: &str = "orcwire.handles";
/// The version of the release protocol.
pub const HANDLES_VERSION: u32 = 1;
/// Most `(id, count)` pairs a received release batch may carry.
const MAX_BATCH: usize = 1 << 20;
/// Pairs per release call sent (16 bytes each: a 64 KiB message).
const BATCH: usize = 4096;

/// An exported value's id as it travels: a `u64`, never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HandleId(pub(crate) u64);

impl HandleId {
    /// The id read from the wire. The exporter checks it on use
    /// ([`Endpoint::resolve`]); the importer on [`Endpoint::import`].
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The id as it travels.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Appends the id to an SPS stream (a `u64`).
    pub fn write(self, w: &mut SpsWriter) {
        w.u64(self.0);
    }

    /// Reads an id from an SPS stream.
    ///
    /// # Errors
    /// An [`SpsError`] if the stream ends first.
    pub fn read(r: &mut SpsReader<'_>) -> Result<Self, SpsError> {
        r.u64().map(Self)
    }

    /// The id alone, SPS-encoded (8 bytes).
    pub fn to_sps(self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    /// Decodes [`to_sps`](Self::to_sps)'s bytes.
    ///
    /// # Errors
    /// [`HandleError::Malformed`] unless `bytes` is exactly 8 bytes.
    pub fn from_sps(bytes: &[u8]) -> Result<Self, HandleError> {
        let b: [u8; 8] = bytes.try_into().map_err(|_| {
            HandleError::Malformed(format!(
                "a handle id is 8 bytes, got {}; check that both sides agree on the argument layout",
                bytes.len()
            ))
        })?;
        Ok(Self(u64::from_le_bytes(b)))
    }
}

impl fmt::Display for HandleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handle #{}", self.0)
    }
}

/// Why a handle operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The peer speaks one of LLVM's dialects, which have no handles.
    #[error("remote handles need an orcwire peer, but this connection speaks {0:?}; pass plain values instead")]
    Unsupported(Dialect),
    /// The peer did not announce remote handles in its `Setup`.
    #[error("the peer did not announce remote handles (no \"orcwire.handles\" entry in its Setup); upgrade it or pass plain values")]
    PeerLacksHandles,
    /// The connection ended: exports were released, handles are dead.
    #[error("the connection ended, so the handle is dead and its value released; export it again on a new connection")]
    Disconnected,
    /// No value is held under this id (never exported, or released).
    #[error(
        "no value is exported under {0}: it was never exported here, or every copy was released"
    )]
    Unknown(HandleId),
    /// The value under this id is of another type.
    #[error("{id} holds a value of another type than {expected}; check which handle was passed")]
    WrongType {
        /// The id.
        id: HandleId,
        /// The type asked for.
        expected: &'static str,
    },
    /// This side already holds as many exports as allowed.
    #[error("{limit} values are already exported (EndpointConfig::max_handles); release some or raise the limit")]
    TooManyExports {
        /// The limit.
        limit: usize,
    },
    /// The peer sent more distinct ids than this side holds at once.
    #[error("the peer lent {limit} handles already (EndpointConfig::max_handles); the copy was released again")]
    TooManyImports {
        /// The limit.
        limit: usize,
    },
    /// A release names an id not held, a count of 0, or more copies
    /// than are outstanding: that pair is refused.
    #[error("refused release of {count} copies of id {id}: {sent} are outstanding; the peer's handle bookkeeping is broken")]
    BadRelease {
        /// The id.
        id: u64,
        /// The copies the pair released.
        count: u64,
        /// The copies sent and outstanding (0: not held).
        sent: u64,
    },
    /// The peer refused our releases; the text is its reason.
    #[error("the peer refused a release batch: {0}")]
    ReleaseRefused(String),
    /// Bytes that should hold an id or a release batch do not.
    #[error("malformed handle data: {0}")]
    Malformed(String),
    /// The release call failed.
    #[error("sending releases failed: {0}")]
    Call(CallError),
}

/// A value the peer exported, held here. Cheap to clone; all clones (and
/// every later import of the same id while one lives) are the same handle.
/// Dropping the last one releases it at the next release point (see
/// [When releases are sent](self#when-releases-are-sent)).
#[derive(Clone)]
pub struct RemoteHandle(Arc<table::HandleCell>);

impl RemoteHandle {
    /// The id to pass back to the exporter in a call.
    ///
    /// # Errors
    /// [`HandleError::Disconnected`] once the connection ended.
    pub fn id(&self) -> Result<HandleId, HandleError> {
        if self.0.tables().is_dead() {
            return Err(HandleError::Disconnected);
        }
        Ok(HandleId(self.0.id))
    }

    /// Whether the connection it came over is still up.
    pub fn is_alive(&self) -> bool {
        !self.0.tables().is_dead()
    }
}

impl PartialEq for RemoteHandle {
    /// The same handle (not merely the same id on some connection).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RemoteHandle {}

impl fmt::Debug for RemoteHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteHandle")
            .field("id", &self.0.id)
            .field("alive", &self.is_alive())
            .finish()
    }
}

/// How many entries each table holds ([`Endpoint::handle_counts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandleCounts {
    /// Values this side holds for the peer.
    pub exports: usize,
    /// Ids of the peer's with a live [`RemoteHandle`] here.
    pub imports: usize,
}

/// An endpoint's handle state: its tables and the release calls sent but
/// not yet answered.
pub(crate) struct Handles {
    pub(crate) tables: Arc<HandleTables>,
    /// Release calls sent ahead of other calls. Its lock also serializes
    /// taking a batch with sending it, so a flush cannot pass a batch that
    /// another thread took but has not sent yet.
    in_flight: Mutex<InFlight>,
}

#[derive(Default)]
struct InFlight {
    /// Sent, not yet waited on; [`Endpoint::flush_releases`] waits for them.
    calls: Vec<PendingCall>,
    /// The first failure among calls collected without a flush, for the
    /// next flush to report.
    failed: Option<HandleError>,
}

/// Below this many calls in flight, answered ones are left for the flush.
const PRUNE_AT: usize = 32;

fn outcome(call: PendingCall) -> Result<(), HandleError> {
    match call.wait() {
        Ok(buf) => match buf.error_message() {
            Some(msg) => Err(HandleError::ReleaseRefused(msg.to_owned())),
            None => Ok(()),
        },
        Err(e) => Err(HandleError::Call(e)),
    }
}

impl Handles {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            tables: HandleTables::new(limit),
            in_flight: Mutex::new(InFlight::default()),
        }
    }

    /// The handler of [`RELEASE_FUNCTION`] for these tables.
    pub(crate) fn release_handler(&self) -> Arc<HandlerFn> {
        let tables = Arc::clone(&self.tables);
        Arc::new(move |args: WrapperFunctionBuffer, responder: Responder| {
            let outcome = decode_batch(args.as_slice()).and_then(|b| tables.release(&b));
            responder.respond(match outcome {
                Ok(_) => WrapperFunctionBuffer::new(),
                Err(e) => WrapperFunctionBuffer::out_of_band_error(e.to_string()),
            });
        })
    }

    /// Disconnect: release every export, kill every import.
    pub(crate) fn disconnected(&self) {
        self.tables.kill_imports();
        self.tables.release_all();
        self.in_flight.lock().calls.clear();
    }
}

/// The bootstrap-map entry announcing handles.
pub(crate) fn capability() -> (String, Vec<u8>) {
    (
        CAPABILITY_KEY.to_owned(),
        HANDLES_VERSION.to_le_bytes().to_vec(),
    )
}

fn encode_batch(batch: &[(u64, u64)]) -> Vec<u8> {
    let mut w = SpsWriter::with_capacity(8 + 16 * batch.len());
    w.seq_len(batch.len());
    for &(id, count) in batch {
        w.u64(id).u64(count);
    }
    w.into_inner()
}

fn decode_batch(bytes: &[u8]) -> Result<Vec<(u64, u64)>, HandleError> {
    let bad = |e: SpsError| HandleError::Malformed(format!("release batch: {e}"));
    let mut r = SpsReader::new(bytes);
    let n = r.seq_len("release batch", 16, MAX_BATCH).map_err(bad)?;
    let mut batch = Vec::with_capacity(n);
    for _ in 0..n {
        batch.push((r.u64().map_err(bad)?, r.u64().map_err(bad)?));
    }
    r.finish().map_err(bad)?;
    Ok(batch)
}

#[cfg(test)]
mod tests;
