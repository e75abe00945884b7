//! The handle methods of [`Endpoint`]: export, import, resolve, and the
//! release points (see [the module docs](crate::handles)).

use std::any::Any;
use std::time::Instant;

use super::*;

impl Endpoint {
    fn handles(&self) -> &Handles {
        &self.inner.handles
    }

    /// The tag of the peer's release function, if handles are on.
    fn release_tag(&self) -> Result<HandlerTag, HandleError> {
        let dialect = self.dialect();
        if dialect.is_llvm() {
            return Err(HandleError::Unsupported(dialect));
        }
        let tag = match self.role() {
            Role::Executor => self.handler_tag(RELEASE_FUNCTION),
            Role::Controller => {
                let announced = self.setup_info().map_value(CAPABILITY_KEY)
                    == Some(&HANDLES_VERSION.to_le_bytes()[..]);
                self.function_tag(RELEASE_FUNCTION).filter(|_| announced)
            }
        };
        tag.ok_or(HandleError::PeerLacksHandles)
    }

    /// Lends `value` to the peer: the returned id, sent once, lets the
    /// peer name it. The value is held until the peer released every copy
    /// sent, or the connection ends.
    ///
    /// The id counts as sent once; send it once (or, if it never reaches
    /// the peer, the value stays until disconnect). See [the module
    /// docs](crate::handles) for an example.
    ///
    /// # Errors
    /// [`HandleError::Unsupported`] against an LLVM peer,
    /// [`HandleError::PeerLacksHandles`], [`HandleError::Disconnected`],
    /// [`HandleError::TooManyExports`].
    pub fn export<T: Send + Sync + 'static>(&self, value: Arc<T>) -> Result<HandleId, HandleError> {
        self.release_tag()?;
        self.handles().tables.export(value, None)
    }

    /// As [`export`](Self::export), for a resource that needs a release
    /// action: `release` runs once, with the value, when the exporter drops
    /// it (every copy released, or disconnect). [`resolve`](Self::resolve)
    /// gives the value as `Arc<T>`.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use orcwire::{ControllerBuilder, ExecutorBuilder, StreamConfig, StreamTransport};
    ///
    /// let (c_side, e_side) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
    /// let executor = std::thread::spawn(move || ExecutorBuilder::new().connect(e_side).unwrap());
    /// let controller = ControllerBuilder::new().connect(c_side).unwrap();
    /// let executor = executor.join().unwrap();
    ///
    /// let freed = Arc::new(AtomicBool::new(false));
    /// let flag = Arc::clone(&freed);
    /// let id = executor
    ///     .export_with(vec![0u8; 4096], move |_buf: &Vec<u8>| flag.store(true, Ordering::SeqCst))
    ///     .unwrap();
    /// assert_eq!(executor.resolve::<Vec<u8>>(id).unwrap().len(), 4096);
    /// executor.disconnect(); // the release action runs at disconnect at the latest
    /// assert!(freed.load(Ordering::SeqCst));
    /// controller.disconnect();
    /// ```
    ///
    /// # Errors
    /// As [`export`](Self::export).
    pub fn export_with<T, F>(&self, value: T, release: F) -> Result<HandleId, HandleError>
    where
        T: Send + Sync + 'static,
        F: FnOnce(&T) + Send + 'static,
    {
        self.release_tag()?;
        let value = Arc::new(value);
        let held = Arc::clone(&value);
        self.handles()
            .tables
            .export(value, Some(Box::new(move || release(&held))))
    }

    /// Counts one more copy of `id` as sent, for sending an exported id
    /// again; returns it.
    ///
    /// # Errors
    /// [`HandleError::Unknown`] if `id` is no longer held (its value was
    /// released: export it anew), [`HandleError::Disconnected`].
    pub fn export_again(&self, id: HandleId) -> Result<HandleId, HandleError> {
        self.handles().tables.export_again(id)
    }

    /// The value this side exported under `id` (an id the peer passed
    /// back), as `Arc<T>`.
    ///
    /// # Errors
    /// [`HandleError::Unknown`] if nothing is held under `id`,
    /// [`HandleError::WrongType`] if the value is not a `T`.
    pub fn resolve<T: Send + Sync + 'static>(&self, id: HandleId) -> Result<Arc<T>, HandleError> {
        let value: Arc<dyn Any + Send + Sync> = self.handles().tables.resolve(id)?;
        value.downcast::<T>().map_err(|_| HandleError::WrongType {
            id,
            expected: std::any::type_name::<T>(),
        })
    }

    /// Takes one received copy of the peer's `id`: call it once per copy
    /// received. While a handle for `id` lives, gives that same handle.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use orcwire::{ControllerBuilder, ExecutorBuilder, StreamConfig, StreamTransport};
    ///
    /// let (c_side, e_side) = StreamTransport::unix_pair(StreamConfig::default()).unwrap();
    /// let executor = std::thread::spawn(move || ExecutorBuilder::new().connect(e_side).unwrap());
    /// let controller = ControllerBuilder::new().connect(c_side).unwrap();
    /// let executor = executor.join().unwrap();
    ///
    /// // The executor sends one id twice (in two results, say).
    /// let id = executor.export(Arc::new(5u32)).unwrap();
    /// let again = executor.export_again(id).unwrap();
    /// let a = controller.import(id).unwrap();
    /// let b = controller.import(again).unwrap();
    /// assert_eq!(a, b); // one handle per id
    /// assert_eq!(controller.handle_counts().imports, 1);
    /// drop((a, b)); // the release carries both copies
    /// controller.flush_releases().unwrap();
    /// assert_eq!(executor.handle_counts().exports, 0);
    /// controller.disconnect();
    /// ```
    ///
    /// # Errors
    /// [`HandleError::Unsupported`], [`HandleError::PeerLacksHandles`],
    /// [`HandleError::Disconnected`], [`HandleError::Unknown`] for id 0,
    /// [`HandleError::TooManyImports`].
    pub fn import(&self, id: HandleId) -> Result<RemoteHandle, HandleError> {
        self.release_tag()?;
        self.handles().tables.import(id)
    }

    /// Sends the releases recorded so far and waits until the peer has
    /// applied them and every release sent before (release point 2 in
    /// [the module docs](crate::handles#when-releases-are-sent)).
    ///
    /// # Errors
    /// [`HandleError::ReleaseRefused`] if the peer refused a batch,
    /// [`HandleError::Call`] if the connection failed meanwhile (the peer
    /// then releases everything itself), [`HandleError::Unsupported`] /
    /// [`HandleError::PeerLacksHandles`].
    pub fn flush_releases(&self) -> Result<(), HandleError> {
        let tag = self.release_tag()?;
        let (calls, mut first_err) = {
            let mut in_flight = self.handles().in_flight.lock();
            if let Err(e) = self.send_batches(tag, &mut in_flight, None) {
                in_flight.failed.get_or_insert(HandleError::Call(e));
            }
            (
                std::mem::take(&mut in_flight.calls),
                in_flight.failed.take(),
            )
        };
        for call in calls {
            if let Err(e) = outcome(call) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Release points 1 and 3: sends the recorded releases, if any,
    /// without waiting for the answers (a later flush waits for them). A
    /// send that finds the transport full until `deadline` puts its pairs
    /// back for the next release point.
    #[inline]
    pub(crate) fn send_releases(&self, deadline: Option<Instant>) {
        // The usual case (nothing to release) costs a check on every call.
        if self.handles().tables.has_pending() {
            self.send_pending_releases(deadline);
        }
    }

    #[cold]
    fn send_pending_releases(&self, deadline: Option<Instant>) {
        let Ok(tag) = self.release_tag() else {
            return;
        };
        let mut in_flight = self.handles().in_flight.lock();
        if in_flight.calls.len() >= PRUNE_AT {
            // Collect the answered ones (no wait), keeping a failure.
            let (done, open): (Vec<_>, Vec<_>) = std::mem::take(&mut in_flight.calls)
                .into_iter()
                .partition(|c| c.is_done());
            in_flight.calls = open;
            for call in done {
                if let Err(e) = outcome(call) {
                    in_flight.failed.get_or_insert(e);
                }
            }
        }
        // A closed connection needs no releases (the peer releases
        // everything); a timed-out send was put back.
        let _ = self.send_batches(tag, &mut in_flight, deadline);
    }

    /// Takes the recorded releases and sends them, [`BATCH`] pairs per
    /// call, keeping the calls in `in_flight` (whose lock the caller holds,
    /// so that batches leave in the order they were taken). Pairs not sent
    /// because of a full transport or a send error go back to the table.
    fn send_batches(
        &self,
        tag: HandlerTag,
        in_flight: &mut InFlight,
        deadline: Option<Instant>,
    ) -> Result<(), CallError> {
        let pairs = self.handles().tables.take_pending();
        for (i, chunk) in pairs.chunks(BATCH).enumerate() {
            match self.inner.call(tag.get(), &encode_batch(chunk), deadline) {
                Ok(seq) => in_flight
                    .calls
                    .push(PendingCall::new(seq, Arc::clone(&self.driver))),
                Err(e) => {
                    self.handles().tables.requeue(&pairs[i * BATCH..]);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// How many values this side holds for the peer, and how many of the
    /// peer's ids have a live handle here.
    pub fn handle_counts(&self) -> HandleCounts {
        HandleCounts {
            exports: self.handles().tables.exports_len(),
            imports: self.handles().tables.imports_len(),
        }
    }
}
