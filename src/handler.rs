//! Handler tags, the handler table, and [`Responder`], through which a
//! handler answers.
//!
//! A *handler tag* names an entry point on the other side. As in orc-rt,
//! tags are chosen by the executor and published in its `Setup` message;
//! the controller binds its handlers to them by name, so "only registered
//! entry points in the controller can be used, and this avoids leaking
//! controller addresses into the executor" (seed 000). A call to a tag
//! with no handler is answered with an out-of-band error, never a crash.

use std::collections::HashMap;
use std::fmt;

use crate::buffer::WrapperFunctionBuffer;
use crate::sync::Arc;

/// Names an entry point on the other side of a connection.
///
/// ```
/// use orcwire::HandlerTag;
/// let t = HandlerTag::new(7);
/// assert_eq!(t.get(), 7);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HandlerTag(u64);

impl HandlerTag {
    /// A tag with the given wire value.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The wire value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for HandlerTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag {}", self.0)
    }
}

/// A wrapper function as a handler: it gets the argument bytes and a
/// [`Responder`], and answers through the responder now or later, from any
/// thread.
pub type HandlerFn = dyn Fn(WrapperFunctionBuffer, Responder) + Send + Sync + 'static;

/// A handler that answers with its return value: the engine runs it
/// inline without a [`Responder`] (no reference count, no second lock per
/// call), and hands its result on itself.
pub(crate) type SyncFn = dyn Fn(&[u8]) -> WrapperFunctionBuffer + Send + Sync + 'static;

/// A registered handler: the general form, and the synchronous one when it
/// was registered so.
#[derive(Clone)]
pub(crate) struct Handler {
    pub(crate) f: Arc<HandlerFn>,
    pub(crate) sync: Option<Arc<SyncFn>>,
}

impl Handler {
    /// A handler that answers through its responder.
    pub(crate) fn general(f: Arc<HandlerFn>) -> Self {
        Self { f, sync: None }
    }

    /// A handler that answers with its return value.
    pub(crate) fn sync<F>(f: F) -> Self
    where
        F: Fn(&[u8]) -> WrapperFunctionBuffer + Send + Sync + 'static,
    {
        let sync: Arc<SyncFn> = Arc::new(f);
        let inner = Arc::clone(&sync);
        Self {
            f: Arc::new(move |args: WrapperFunctionBuffer, r: Responder| {
                r.respond(inner(args.as_slice()));
            }),
            sync: Some(sync),
        }
    }
}

/// Where a [`Responder`] sends its result.
pub(crate) trait ResultSink: Send + Sync {
    fn send_result(self: Arc<Self>, seq: u64, result: WrapperFunctionBuffer);
    /// A user handle on the endpoint the call came in on, while one exists.
    fn endpoint(&self) -> Option<crate::Endpoint>;
}

/// The one-shot right to answer an incoming call.
///
/// Answer with [`respond`](Self::respond). A responder dropped without
/// answering (the handler forgot, panicked, or its task was dropped by a
/// shut-down dispatcher) answers with an out-of-band error, so the caller
/// never waits forever.
#[must_use = "an unanswered call gets an error result when its responder is dropped"]
pub struct Responder {
    seq: u64,
    sink: Option<Arc<dyn ResultSink>>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").field("seq", &self.seq).finish()
    }
}

impl Responder {
    pub(crate) fn new(seq: u64, sink: Arc<dyn ResultSink>) -> Self {
        Self {
            seq,
            sink: Some(sink),
        }
    }

    /// The sequence number of the call being answered.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The endpoint this call came in on, so a handler can call the peer
    /// back (an executor function asking the controller for a symbol, say)
    /// without having stored its endpoint anywhere: a call can arrive as
    /// soon as the peer has the `Setup`, before `connect` has returned the
    /// endpoint to whoever built it.
    ///
    /// `None` once every user handle of the endpoint has been dropped (it
    /// is then disconnecting). The returned handle is a user handle like
    /// any clone: while a handler holds it the connection does not
    /// disconnect for lack of handles, so hold it only as long as needed.
    ///
    /// ```
    /// use orcwire::{ControllerBuilder, ExecutorBuilder, StreamTransport, WrapperFunctionBuffer};
    /// use orcwire::StreamConfig;
    ///
    /// let (c_side, e_side) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
    /// let executor = std::thread::spawn(move || {
    ///     ExecutorBuilder::new()
    ///         // Asks the controller's `double` and answers with its result.
    ///         .function("via_controller", |args, responder| {
    ///             let answer = match responder.endpoint() {
    ///                 Some(ep) => {
    ///                     let tag = ep.handler_tag("double").unwrap();
    ///                     ep.call_sync(tag, args.as_slice()).unwrap()
    ///                 }
    ///                 None => WrapperFunctionBuffer::out_of_band_error("disconnected"),
    ///             };
    ///             responder.respond(answer);
    ///         })
    ///         .controller_handler("double")
    ///         .connect(e_side)
    ///         .unwrap()
    /// });
    /// let controller = ControllerBuilder::new()
    ///     .sync_handler("double", |a: &[u8]| {
    ///         WrapperFunctionBuffer::from_vec(a.iter().map(|b| b * 2).collect())
    ///     })
    ///     .connect(c_side)
    ///     .unwrap();
    /// let tag = controller.function_tag("via_controller").unwrap();
    /// let out = controller.call_sync(tag, &[1, 2, 3]).unwrap();
    /// assert_eq!(out.as_slice(), &[2, 4, 6]);
    /// controller.disconnect();
    /// executor.join().unwrap().disconnect();
    /// ```
    pub fn endpoint(&self) -> Option<crate::Endpoint> {
        self.sink.as_ref()?.endpoint()
    }

    /// Sends `result` (bytes, or an out-of-band error) to the caller. If
    /// the connection has closed meanwhile the result is dropped: the
    /// caller's call has then already failed with a disconnect error.
    pub fn respond(mut self, result: WrapperFunctionBuffer) {
        if let Some(sink) = self.sink.take() {
            sink.send_result(self.seq, result);
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.send_result(
                self.seq,
                WrapperFunctionBuffer::out_of_band_error(
                    "the handler finished without answering (it dropped its responder, panicked, or was never run)",
                ),
            );
        }
    }
}

/// A registered handler with the name it was registered under.
#[derive(Clone)]
pub(crate) struct HandlerEntry {
    pub(crate) name: Arc<str>,
    pub(crate) f: Arc<HandlerFn>,
    pub(crate) sync: Option<Arc<SyncFn>>,
}

/// Tags below this are looked up by index (tags are small consecutive
/// numbers in practice: orcwire's executor hands them out from 1).
const DENSE_TAGS: u64 = 4096;

/// Tag to handler, frozen once the connection is set up.
#[derive(Clone, Default)]
pub(crate) struct HandlerTable {
    /// Handlers of tags below [`DENSE_TAGS`], by tag: one bounds-checked
    /// index per incoming call instead of a hash.
    dense: Vec<Option<HandlerEntry>>,
    /// Handlers of larger tags (a foreign executor may choose any).
    map: HashMap<u64, HandlerEntry>,
    /// Tags the executor declared for handlers the controller lacks, kept
    /// only to say so in the error result.
    unbound: HashMap<u64, Arc<str>>,
}

impl HandlerTable {
    pub(crate) fn insert(&mut self, tag: HandlerTag, name: &str, handler: Handler) {
        let entry = HandlerEntry {
            name: Arc::from(name),
            f: handler.f,
            sync: handler.sync,
        };
        match usize::try_from(tag.get()) {
            Ok(i) if tag.get() < DENSE_TAGS => {
                if self.dense.len() <= i {
                    self.dense.resize(i + 1, None);
                }
                self.dense[i] = Some(entry);
            }
            _ => {
                self.map.insert(tag.get(), entry);
            }
        }
    }

    pub(crate) fn insert_unbound(&mut self, tag: HandlerTag, name: &str) {
        self.unbound.insert(tag.get(), Arc::from(name));
    }

    #[inline]
    pub(crate) fn get(&self, tag: u64) -> Option<&HandlerEntry> {
        if tag < DENSE_TAGS {
            // `tag < 4096` fits a usize; past the end means unbound.
            return self.dense.get(tag as usize).and_then(Option::as_ref);
        }
        self.map.get(&tag)
    }

    /// The out-of-band error for a call to `tag`, which has no handler.
    pub(crate) fn unknown_tag_error(&self, tag: u64) -> WrapperFunctionBuffer {
        let msg = match self.unbound.get(&tag) {
            Some(name) => format!(
                "no handler is registered for \"{name}\" ({}); register it on this side before connecting",
                HandlerTag(tag)
            ),
            None => format!(
                "no handler is registered for {}; only entry points registered before connecting can be called",
                HandlerTag(tag)
            ),
        };
        WrapperFunctionBuffer::out_of_band_error(msg)
    }

    pub(crate) fn len(&self) -> usize {
        self.dense.iter().flatten().count() + self.map.len()
    }

    /// `(tag, name)` of every bound handler, sorted by tag.
    pub(crate) fn entries(&self) -> Vec<(HandlerTag, String)> {
        let dense = self
            .dense
            .iter()
            .enumerate()
            .filter_map(|(t, e)| Some((HandlerTag(t as u64), e.as_ref()?.name.to_string())));
        let sparse = self
            .map
            .iter()
            .map(|(t, e)| (HandlerTag(*t), e.name.to_string()));
        let mut v: Vec<_> = dense.chain(sparse).collect();
        v.sort();
        v
    }
}

#[cfg(all(test, not(orcwire_loom)))]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_tags_are_both_found_and_listed_in_order() {
        let f: Arc<HandlerFn> = Arc::new(|_args, responder| drop(responder));
        let mut t = HandlerTable::default();
        for (tag, name) in [(3, "c"), (1, "a"), (u64::MAX, "max"), (DENSE_TAGS, "edge")] {
            t.insert(HandlerTag(tag), name, Handler::general(Arc::clone(&f)));
        }
        for (tag, name) in [(1, "a"), (3, "c"), (DENSE_TAGS, "edge"), (u64::MAX, "max")] {
            assert_eq!(&*t.get(tag).unwrap().name, name, "tag {tag}");
        }
        for missing in [0, 2, 4, DENSE_TAGS - 1, DENSE_TAGS + 1, u64::MAX - 1] {
            assert!(t.get(missing).is_none(), "tag {missing}");
        }
        assert_eq!(t.len(), 4);
        let names: Vec<_> = t.entries().into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, ["a", "c", "edge", "max"]);
    }
}
