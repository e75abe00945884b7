//! Unit tests of the handle tables: counting, identity, validation.

use super::table::HandleTables;
use super::*;
use crate::sync::{AtomicUsize, Ordering};

fn counted(ran: &Arc<AtomicUsize>) -> Option<table::ReleaseAction> {
    let ran = Arc::clone(ran);
    Some(Box::new(move || {
        ran.fetch_add(1, Ordering::SeqCst);
    }))
}

#[test]
fn a_value_goes_only_when_every_copy_sent_is_released() {
    let t = HandleTables::new(16);
    let ran = Arc::new(AtomicUsize::new(0));
    let id = t.export(Arc::new(7u32), counted(&ran)).unwrap();
    t.export_again(id).unwrap();
    assert_eq!(t.release(&[(id.get(), 1)]), Ok(0));
    assert_eq!(t.exports_len(), 1);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(t.release(&[(id.get(), 1)]), Ok(1));
    assert_eq!(t.exports_len(), 0);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_release_pairs_are_refused_and_change_nothing() {
    let t = HandleTables::new(16);
    let ran = Arc::new(AtomicUsize::new(0));
    let id = t.export(Arc::new(()), counted(&ran)).unwrap().get();
    for batch in [
        vec![(id + 1, 1)],    // never exported
        vec![(id, 2)],        // more than sent
        vec![(id, 0)],        // nothing
        vec![(id, u64::MAX)], // far more than sent
        vec![(0, 1)],         // never an id
    ] {
        assert!(
            matches!(t.release(&batch), Err(HandleError::BadRelease { .. })),
            "{batch:?}"
        );
        assert_eq!(t.exports_len(), 1, "{batch:?}");
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    t.release(&[(id, 1)]).unwrap();
    // A second release of a released id: unknown, no double release.
    assert!(t.release(&[(id, 1)]).is_err());
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn a_bad_pair_does_not_stop_the_good_ones_of_its_batch() {
    let t = HandleTables::new(16);
    let ran = Arc::new(AtomicUsize::new(0));
    let a = t.export(Arc::new(1u8), counted(&ran)).unwrap().get();
    let b = t.export(Arc::new(2u8), counted(&ran)).unwrap().get();
    // `a` sent once but released twice: the second pair is refused, not
    // applied again; `b` goes.
    let r = t.release(&[(a, 1), (a, 1), (a + 100, 1), (b, 1)]);
    assert_eq!(
        r,
        Err(HandleError::BadRelease {
            id: a,
            count: 1,
            sent: 0
        })
    );
    assert_eq!(t.exports_len(), 0);
    assert_eq!(ran.load(Ordering::SeqCst), 2);
}

#[test]
fn an_id_received_twice_is_one_handle_released_with_its_count() {
    let t = HandleTables::new(16);
    let a = t.import(HandleId(5)).unwrap();
    let b = t.import(HandleId(5)).unwrap();
    assert_eq!(a, b);
    assert_eq!(t.imports_len(), 1);
    drop(a);
    assert!(!t.has_pending());
    drop(b);
    assert_eq!(t.take_pending(), vec![(5, 2)]);
    assert_eq!(t.imports_len(), 0);
    // Received again after the release: a new handle, counted afresh.
    let c = t.import(HandleId(5)).unwrap();
    drop(c);
    assert_eq!(t.take_pending(), vec![(5, 1)]);
}

#[test]
fn limits_refuse_exports_and_release_refused_imports() {
    let t = HandleTables::new(1);
    let _id = t.export(Arc::new(1u8), None).unwrap();
    assert_eq!(
        t.export(Arc::new(2u8), None),
        Err(HandleError::TooManyExports { limit: 1 })
    );
    let _h = t.import(HandleId(1)).unwrap();
    assert_eq!(
        t.import(HandleId(2)).unwrap_err(),
        HandleError::TooManyImports { limit: 1 }
    );
    assert_eq!(t.take_pending(), vec![(2, 1)]);
    assert_eq!(
        t.import(HandleId(0)).unwrap_err(),
        HandleError::Unknown(HandleId(0))
    );
}

#[test]
fn disconnect_releases_in_export_order_and_kills_handles() {
    let t = HandleTables::new(16);
    let order = Arc::new(crate::sync::Mutex::new(Vec::new()));
    for n in 0..4u64 {
        let order = Arc::clone(&order);
        t.export(Arc::new(n), Some(Box::new(move || order.lock().push(n))))
            .unwrap();
    }
    let h = t.import(HandleId(9)).unwrap();
    t.release_all();
    t.kill_imports();
    assert_eq!(*order.lock(), vec![0, 1, 2, 3]);
    assert_eq!(h.id(), Err(HandleError::Disconnected));
    drop(h);
    assert!(t.take_pending().is_empty());
    assert_eq!(
        t.export(Arc::new(0u8), None),
        Err(HandleError::Disconnected)
    );
}

#[test]
fn release_batches_round_trip_and_garbage_is_malformed() {
    let batch = vec![(1, 2), (3, 4)];
    assert_eq!(decode_batch(&encode_batch(&batch)).unwrap(), batch);
    assert!(matches!(
        decode_batch(&[1, 2, 3]),
        Err(HandleError::Malformed(_))
    ));
    let mut huge = encode_batch(&[]);
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        decode_batch(&huge),
        Err(HandleError::Malformed(_))
    ));
}

#[test]
fn handles_and_errors_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<RemoteHandle>();
    send_sync::<HandleError>();
    send_sync::<HandleTables>();
}
