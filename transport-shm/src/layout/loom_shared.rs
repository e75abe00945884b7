//! The loom stand-in for memory shared between processes (built only under
//! `--cfg orcwire_loom`): one heap object per address, per model
//! execution, and the loom backing of [`SharedRef`](super::SharedRef),
//! which looks its word up here. The ring's loom backing keeps its data
//! cells here too.
//!
//! No loom object is ever placed in a mapping: loom cannot track memory it
//! did not allocate. The address a word would have in the mapping keys the
//! object instead, the same way the futex mock keys wait queues.
//!
//! Relies on: lookups happening when endpoints are built, before model
//! threads share them, and `loom::lazy_static` giving every execution a
//! fresh table.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use crate::mapping::SharedMapping;
use crate::sync::Mutex;

type Objects = HashMap<usize, Arc<dyn Any + Send + Sync>>;

loom::lazy_static! {
    static ref OBJECTS: Mutex<Objects> = Mutex::new(HashMap::new());
}

/// The object at `addr`, made with `make` on first use. Lookups happen
/// when endpoints are built, before model threads share them.
pub(crate) fn object<T: Any + Send + Sync>(addr: usize, make: impl FnOnce() -> T) -> Arc<T> {
    let mut objects = OBJECTS.lock();
    if let Some(found) = objects.get(&addr) {
        if let Ok(typed) = Arc::clone(found).downcast::<T>() {
            return typed;
        }
    }
    let fresh = Arc::new(make());
    objects.insert(addr, Arc::clone(&fresh) as Arc<dyn Any + Send + Sync>);
    fresh
}

/// Forgets every modelled object.
pub(crate) fn reset() {
    OBJECTS.lock().clear();
}

/// The loom object standing in for the `T` in the mapping.
pub(super) struct Slot<T>(Arc<T>);

impl<T: Send + Sync + 'static> Slot<T> {
    /// # Safety
    /// As for [`SharedRef::new`](super::SharedRef::new) (the address keys
    /// the model).
    pub(super) unsafe fn new(
        mapping: &Arc<dyn SharedMapping>,
        offset: usize,
        make: fn() -> T,
    ) -> Self {
        let addr = mapping.base() as usize + offset;
        Self(object(addr, make))
    }
}

impl<T> Slot<T> {
    /// The `T`.
    ///
    /// # Safety
    /// None here (the object is on the heap); `unsafe` to match the
    /// production backing.
    #[inline(always)]
    pub(super) unsafe fn get(&self) -> &T {
        &self.0
    }
}
