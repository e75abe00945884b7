//! Remote handles: a release crossing a re-send (seed 001's hazard).
//!
//! The exporter has sent one id twice. The importer received the first
//! copy; its thread drops that handle and carries the release to the
//! exporter ("in flight" between taking the batch and applying it), while
//! another thread receives the second copy, uses it and drops it in turn.
//! Both tables are the shipped `HandleTables`; the threads stand in for the
//! connection (each batch is applied as the release call's handler would).
//! Loom interleaves the drop of the first handle with the second import at
//! every lock, including the window where the first handle's count is zero
//! but its `Drop` has not taken the table lock yet.
//!
//! Proves: while the importer holds a handle the exporter still holds the
//! value; every release is accepted (none names a value already gone);
//! at the end both tables are empty and the release action ran once.
#![cfg(orcwire_loom)]

use orcwire::handles::table::HandleTables;
use orcwire_sync::{thread, Arc, AtomicUsize, Ordering};

/// Carries the importer's recorded releases to the exporter, as the
/// `orcwire.release` call does.
fn carry(importer: &HandleTables, exporter: &HandleTables) {
    let batch = importer.take_pending();
    if batch.is_empty() {
        return;
    }
    if let Err(e) = exporter.release(&batch) {
        panic!("value released early: a later release found it gone ({e})");
    }
}

fn release_crosses_resend() {
    let exporter = HandleTables::new(8);
    let importer = HandleTables::new(8);
    // loom's `Arc`: the final check must be ordered after the release
    // action, which may run on either thread.
    let ran = loom::sync::Arc::new(AtomicUsize::new(0));
    let counter = loom::sync::Arc::clone(&ran);
    let id = exporter
        .export(
            Arc::new(42u32),
            Some(Box::new(move || {
                // SYNC POINT: release ran. Pairs with the Acquire load below.
                let before = counter.fetch_add(1, Ordering::Release);
                assert_eq!(before, 0, "release action ran twice");
            })),
        )
        .unwrap();
    let first = importer.import(id).unwrap();
    exporter.export_again(id).unwrap();

    let t1 = {
        let (importer, exporter) = (Arc::clone(&importer), Arc::clone(&exporter));
        thread::spawn(move || {
            drop(first);
            carry(&importer, &exporter);
        })
    };
    let t2 = {
        let (importer, exporter) = (Arc::clone(&importer), Arc::clone(&exporter));
        thread::spawn(move || {
            let second = importer.import(id).unwrap();
            assert!(
                exporter.resolve(id).is_ok(),
                "value released early: the peer still holds a handle"
            );
            drop(second);
            carry(&importer, &exporter);
        })
    };
    t1.join().unwrap();
    t2.join().unwrap();
    carry(&importer, &exporter);
    assert_eq!(importer.imports_len(), 0);
    assert_eq!(exporter.exports_len(), 0, "a value outlived every handle");
    // SYNC POINT: release ran (Acquire half; the joins order it anyway).
    assert_eq!(ran.load(Ordering::Acquire), 1);
}

#[test]
fn handles_release_crosses_resend() {
    orcwire_loom_tests::model(release_crosses_resend);
}

/// The bug: a release frees the value whatever its count, so the first
/// copy's release frees a value the second copy still names.
#[cfg(orcwire_loom_broken)]
#[test]
#[should_panic(expected = "released early")]
fn broken_handles_is_caught() {
    orcwire_loom_tests::model_with_bug("handles", release_crosses_resend);
}
