//! The two tables behind remote handles, and the counting that makes
//! release deterministic.
//!
//! * **Exports** (values this side lent to the peer): id -> the value, its
//!   release action, and `sent`, how many copies of the id went out and
//!   have not come back. An entry goes only when a release brings `sent`
//!   to zero, or at disconnect.
//! * **Imports** (ids the peer lent us): id -> a weak reference to the one
//!   live [`RemoteHandle`] for it, and `received`, how many copies of the
//!   id arrived while that handle lived. When the handle's last clone
//!   drops, `(id, received)` is queued for the peer.
//!
//! Why counts: the exporter may send an id again while the importer's
//! release of the earlier copies is in flight. The importer then makes a
//! fresh handle (its old one is gone) and will release that copy later;
//! the exporter, having sent two copies and got one back, keeps the value.
//! Without counts the first release would free a value the peer holds
//! again (the loom model `loom-tests/tests/handles.rs` checks this code,
//! and its broken twin, which ignores counts, is caught).
//!
//! A handle whose last clone is being dropped while the same id arrives
//! again is told apart by a generation number: the arrival finds the weak
//! reference dead, queues the old handle's release itself and installs a
//! new entry; the old handle's `Drop` then sees a newer generation and
//! queues nothing.
//!
//! Both tables live under the shim's locks; the user's values are held by
//! std's `Arc` (the shim's `Arc` is std's too). Release actions run after
//! the lock is released, so one may call back into the endpoint.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Weak;

use super::{HandleError, HandleId, RemoteHandle};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};

/// A value held for the peer.
pub(crate) type Value = Arc<dyn Any + Send + Sync>;
/// Runs once when the exporter drops the value.
pub(crate) type ReleaseAction = Box<dyn FnOnce() + Send>;

struct ExportEntry {
    value: Value,
    release: Option<ReleaseAction>,
    /// Copies of the id sent and not yet released by the peer: at least 1
    /// while the entry exists.
    sent: u64,
}

struct Exports {
    /// The next id to hand out: starts at 1 (0 is never an id) and only
    /// grows, so an id is never reused on one connection.
    next_id: u64,
    entries: HashMap<u64, ExportEntry>,
    /// Set at disconnect: nothing can be exported any more.
    closed: bool,
}

struct ImportEntry {
    handle: Weak<HandleCell>,
    /// Which handle this entry is for (see the module docs).
    generation: u64,
    /// Copies of the id received while this handle lived: at least 1.
    received: u64,
}

struct Imports {
    entries: HashMap<u64, ImportEntry>,
    /// Releases not yet sent: `(id, count)`.
    pending: Vec<(u64, u64)>,
    next_generation: u64,
    /// Set at disconnect: every handle is dead; dropping one sends nothing.
    dead: bool,
}

/// The live handle's shared part; [`RemoteHandle`] is an `Arc` of it.
pub(crate) struct HandleCell {
    pub(crate) id: u64,
    generation: u64,
    tables: Arc<HandleTables>,
}

impl HandleCell {
    pub(crate) fn tables(&self) -> &HandleTables {
        &self.tables
    }
}

impl Drop for HandleCell {
    fn drop(&mut self) {
        self.tables.dropped(self.id, self.generation);
    }
}

/// One endpoint's export and import tables.
pub struct HandleTables {
    exports: Mutex<Exports>,
    imports: Mutex<Imports>,
    /// Whether `imports.pending` may be non-empty: a hint read without the
    /// lock on every outgoing call. Written under the imports lock; a
    /// `Relaxed` load suffices because a drop that happens before a call
    /// is seen by it (coherence), and the queue itself is read under the
    /// lock.
    has_pending: AtomicBool,
    /// Most entries each table may hold ([`EndpointConfig::max_handles`](crate::EndpointConfig::max_handles)).
    limit: usize,
}

impl HandleTables {
    /// Empty tables holding at most `limit` entries each.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            exports: Mutex::new(Exports {
                next_id: 1,
                entries: HashMap::new(),
                closed: false,
            }),
            imports: Mutex::new(Imports {
                entries: HashMap::new(),
                pending: Vec::new(),
                next_generation: 0,
                dead: false,
            }),
            has_pending: AtomicBool::new(false),
            limit,
        })
    }

    /// Holds `value` for the peer, counted as sent once.
    ///
    /// # Errors
    /// [`HandleError::Disconnected`] after disconnect,
    /// [`HandleError::TooManyExports`] at the limit.
    pub fn export(
        &self,
        value: Value,
        release: Option<ReleaseAction>,
    ) -> Result<HandleId, HandleError> {
        let mut ex = self.exports.lock();
        if ex.closed {
            return Err(HandleError::Disconnected);
        }
        if ex.entries.len() >= self.limit {
            return Err(HandleError::TooManyExports { limit: self.limit });
        }
        let id = ex.next_id;
        ex.next_id += 1;
        ex.entries.insert(
            id,
            ExportEntry {
                value,
                release,
                sent: 1,
            },
        );
        Ok(HandleId(id))
    }

    /// Counts one more copy of `id` as sent.
    ///
    /// # Errors
    /// [`HandleError::Unknown`] if `id` is not held (never exported, or
    /// already released), [`HandleError::Disconnected`] after disconnect.
    pub fn export_again(&self, id: HandleId) -> Result<HandleId, HandleError> {
        let mut ex = self.exports.lock();
        if ex.closed {
            return Err(HandleError::Disconnected);
        }
        let e = ex.entries.get_mut(&id.0).ok_or(HandleError::Unknown(id))?;
        e.sent = e.sent.saturating_add(1);
        Ok(id)
    }

    /// The value exported under `id`.
    ///
    /// # Errors
    /// [`HandleError::Unknown`] if `id` is not held.
    pub fn resolve(&self, id: HandleId) -> Result<Value, HandleError> {
        let ex = self.exports.lock();
        ex.entries
            .get(&id.0)
            .map(|e| Arc::clone(&e.value))
            .ok_or(HandleError::Unknown(id))
    }

    /// Applies the peer's releases pair by pair: a pair naming an id not
    /// held, a count of 0, or more copies than are outstanding is refused
    /// and changes nothing; the others are applied (so one bad pair cannot
    /// make the batch's good ones leak). Runs the release actions of the
    /// values that went, in the batch's order, after unlocking. Returns how
    /// many values went.
    ///
    /// # Errors
    /// [`HandleError::BadRelease`] naming the first refused pair (the
    /// batch's good pairs were applied all the same).
    pub fn release(&self, batch: &[(u64, u64)]) -> Result<usize, HandleError> {
        let mut gone = Vec::new();
        let mut refused = None;
        {
            let mut ex = self.exports.lock();
            for &(id, count) in batch {
                let Some(e) = ex
                    .entries
                    .get_mut(&id)
                    .filter(|e| (1..=e.sent).contains(&count))
                else {
                    let sent = ex.entries.get(&id).map_or(0, |e| e.sent);
                    refused.get_or_insert(HandleError::BadRelease { id, count, sent });
                    continue;
                };
                e.sent -= count;
                // Loom must-fail variant: the first release frees the value,
                // whatever copies are still out.
                if e.sent == 0 || crate::sync::is_broken("handles") {
                    gone.extend(ex.entries.remove(&id));
                }
            }
        }
        let n = gone.len();
        for e in gone {
            if let Some(release) = e.release {
                release();
            }
        }
        refused.map_or(Ok(n), Err)
    }

    /// Disconnect: drops every export, running the release actions in
    /// increasing id order (the order of export), once each; later exports
    /// fail.
    pub fn release_all(&self) {
        let mut all: Vec<_> = {
            let mut ex = self.exports.lock();
            ex.closed = true;
            ex.entries.drain().collect()
        };
        all.sort_unstable_by_key(|(id, _)| *id);
        for (_, e) in all {
            if let Some(release) = e.release {
                release();
            }
        }
    }

    /// Values held for the peer.
    pub fn exports_len(&self) -> usize {
        self.exports.lock().entries.len()
    }

    /// Takes one received copy of the peer's `id`: the live handle for it
    /// if there is one, else a new one.
    ///
    /// # Errors
    /// [`HandleError::Disconnected`] after disconnect,
    /// [`HandleError::Unknown`] for id 0, [`HandleError::TooManyImports`]
    /// at the limit (that copy is queued for release at once, so the
    /// exporter is not left holding it).
    pub fn import(self: &Arc<Self>, id: HandleId) -> Result<RemoteHandle, HandleError> {
        let mut im = self.imports.lock();
        if im.dead {
            return Err(HandleError::Disconnected);
        }
        if id.0 == 0 {
            return Err(HandleError::Unknown(id));
        }
        if let Some(e) = im.entries.get_mut(&id.0) {
            if let Some(cell) = e.handle.upgrade() {
                e.received = e.received.saturating_add(1);
                return Ok(RemoteHandle(cell));
            }
            // Its last clone is being dropped on another thread, whose
            // `Drop` has not run yet: release its copies here (that `Drop`
            // will see the newer generation and queue nothing).
            let received = e.received;
            im.entries.remove(&id.0);
            self.queue(&mut im, id.0, received);
        }
        if im.entries.len() >= self.limit {
            self.queue(&mut im, id.0, 1);
            return Err(HandleError::TooManyImports { limit: self.limit });
        }
        let generation = im.next_generation;
        im.next_generation += 1;
        let cell = Arc::new(HandleCell {
            id: id.0,
            generation,
            tables: Arc::clone(self),
        });
        im.entries.insert(
            id.0,
            ImportEntry {
                handle: Arc::downgrade(&cell),
                generation,
                received: 1,
            },
        );
        Ok(RemoteHandle(cell))
    }

    fn queue(&self, im: &mut Imports, id: u64, count: u64) {
        im.pending.push((id, count));
        self.has_pending.store(true, Ordering::Relaxed);
    }

    /// The last clone of the handle `(id, generation)` dropped.
    fn dropped(&self, id: u64, generation: u64) {
        let mut im = self.imports.lock();
        if im.dead {
            return;
        }
        match im.entries.get(&id) {
            Some(e) if e.generation == generation => {
                let received = e.received;
                im.entries.remove(&id);
                self.queue(&mut im, id, received);
            }
            // A newer handle for the id replaced ours and released our
            // copies already.
            _ => {}
        }
    }

    /// Whether releases may be waiting (a hint; see `has_pending`).
    pub fn has_pending(&self) -> bool {
        self.has_pending.load(Ordering::Relaxed)
    }

    /// Takes the releases waiting to be sent.
    pub fn take_pending(&self) -> Vec<(u64, u64)> {
        let mut im = self.imports.lock();
        self.has_pending.store(false, Ordering::Relaxed);
        std::mem::take(&mut im.pending)
    }

    /// Puts back releases that could not be sent (unless the connection
    /// ended meanwhile: then nothing is owed).
    pub fn requeue(&self, pairs: &[(u64, u64)]) {
        let mut im = self.imports.lock();
        if im.dead || pairs.is_empty() {
            return;
        }
        im.pending.extend_from_slice(pairs);
        self.has_pending.store(true, Ordering::Relaxed);
    }

    /// Ids of the peer's with a live handle here.
    pub fn imports_len(&self) -> usize {
        self.imports.lock().entries.len()
    }

    /// Whether the connection ended (every handle is dead).
    pub fn is_dead(&self) -> bool {
        self.imports.lock().dead
    }

    /// Disconnect: every handle becomes dead, and nothing is sent for any.
    pub fn kill_imports(&self) {
        let entries = {
            let mut im = self.imports.lock();
            im.dead = true;
            im.pending.clear();
            self.has_pending.store(false, Ordering::Relaxed);
            std::mem::take(&mut im.entries)
        };
        // Weak references only: dropping them outside the lock runs no
        // handle's `Drop`, but keeps the lock short.
        drop(entries);
    }
}
