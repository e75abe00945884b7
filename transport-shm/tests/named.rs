//! The named segment: exclusive creation with mode 0600, owner/mode
//! checks on open, unlink, and nothing left in /dev/shm.
#![cfg(not(orcwire_loom))]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::ftruncate;
use orcwire_shm::{
    page_size, remove_stale_segments, NamedSegment, NamedSegmentError, SharedMapping,
};

use common::shm_exists;

/// Removes a test-made shm object even when the test fails.
struct ShmName(String);

impl Drop for ShmName {
    fn drop(&mut self) {
        let _ = shm_unlink(self.0.as_str());
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates a raw shm object the way an attacker or a crashed creator
/// would have left it.
fn raw_object(name: &str, len: i64, mode: u32) -> ShmName {
    let guard = ShmName(name.to_owned());
    let fd = shm_open(
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        Mode::from_bits_truncate(mode),
    )
    .unwrap();
    fchmod(&fd, Mode::from_bits_truncate(mode)).unwrap();
    ftruncate(&fd, len).unwrap();
    guard
}

fn unique(tag: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("/orcwire-test-{tag}-{}-{nanos}", std::process::id())
}

#[test]
fn create_makes_a_private_exclusive_object() {
    let seg = NamedSegment::create(5000).unwrap();
    let name = seg.name().to_owned();
    let prefix = format!("/orcwire-{}-", std::process::id());
    let random = name.strip_prefix(&prefix).expect("name carries our pid");
    assert_eq!(random.len(), 32);
    assert!(random.bytes().all(|b| b.is_ascii_hexdigit()));

    let meta = std::fs::metadata(Path::new("/dev/shm").join(&name[1..])).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), euid());
    assert_eq!(meta.len() as usize, 2 * page_size());
    assert_eq!(seg.len(), 2 * page_size());
    assert_eq!(seg.base() as usize % orcwire_shm::mapping::MAPPING_ALIGN, 0);

    // Exclusive: nobody can create the same name again, and ours is
    // different every time.
    let err = shm_open(
        name.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        Mode::S_IRUSR | Mode::S_IWUSR,
    );
    assert_eq!(err.err(), Some(nix::errno::Errno::EEXIST));
    let other = NamedSegment::create(4096).unwrap();
    assert_ne!(other.name(), name);
    drop(other);
    drop(seg);
    assert!(!shm_exists(&name));
}

#[test]
fn opener_sees_writes_and_unlink_is_idempotent() {
    let created = NamedSegment::create(4096).unwrap();
    let name = created.name().to_owned();
    let opened = NamedSegment::open(&name, 4096).unwrap();
    assert_eq!(opened.len(), created.len());
    // SAFETY: offsets 0 and 1 are inside both 4096-byte mappings.
    unsafe {
        created.base().write_volatile(0xA5);
        assert_eq!(opened.base().read_volatile(), 0xA5);
        opened.base().add(1).write_volatile(0x5A);
        assert_eq!(created.base().add(1).read_volatile(), 0x5A);
    }
    // The opener unlinks (either side may); the creator's unlink and drop
    // then find the name gone and are fine with it.
    opened.unlink().unwrap();
    assert!(!shm_exists(&name));
    opened.unlink().unwrap();
    created.unlink().unwrap();
    // Still mapped and shared after the name is gone.
    // SAFETY: offset 0 is inside both mappings.
    unsafe {
        opened.base().write_volatile(0x11);
        assert_eq!(created.base().read_volatile(), 0x11);
    }
    assert!(matches!(
        NamedSegment::open(&name, 1),
        Err(NamedSegmentError::Os {
            source: nix::errno::Errno::ENOENT,
            ..
        })
    ));
}

#[test]
fn creator_drop_unlinks_opener_drop_does_not() {
    let created = NamedSegment::create(4096).unwrap();
    let name = created.name().to_owned();
    let opened = NamedSegment::open(&name, 4096).unwrap();
    drop(opened);
    assert!(
        shm_exists(&name),
        "only the creator removes the name on drop"
    );
    drop(created);
    assert!(!shm_exists(&name), "the creator's drop removes the name");
}

#[test]
fn wrong_mode_is_refused() {
    for mode in [0o644, 0o660, 0o606, 0o400, 0o700] {
        let obj = raw_object(&unique("mode"), 4096, mode);
        let err = NamedSegment::open(&obj.0, 4096).unwrap_err();
        assert!(
            matches!(err, NamedSegmentError::WrongMode { mode: m, .. } if m == mode),
            "{mode:o}: {err}"
        );
        drop(obj);
    }
}

#[test]
fn wrong_owner_is_refused() {
    let obj = raw_object(&unique("owner"), 4096, 0o600);
    if euid() != 0 {
        // Only root can give an object away; without it the check cannot
        // be provoked, and our own object must be accepted.
        assert!(NamedSegment::open(&obj.0, 4096).is_ok());
        return;
    }
    let path = Path::new("/dev/shm").join(&obj.0[1..]);
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    let err = NamedSegment::open(&obj.0, 4096).unwrap_err();
    assert!(
        matches!(err, NamedSegmentError::WrongOwner { owner: 65534, .. }),
        "{err}"
    );
}

#[test]
fn bad_sizes_and_names_are_refused() {
    let small = raw_object(&unique("small"), 4096, 0o600);
    let err = NamedSegment::open(&small.0, 8192).unwrap_err();
    assert!(matches!(err, NamedSegmentError::Segment { .. }), "{err}");
    let odd = raw_object(&unique("odd"), 4097, 0o600);
    let err = NamedSegment::open(&odd.0, 1).unwrap_err();
    assert!(matches!(err, NamedSegmentError::Segment { .. }), "{err}");
    for name in ["orcwire-no-slash", "/a/b", "/"] {
        assert!(matches!(
            NamedSegment::open(name, 1),
            Err(NamedSegmentError::InvalidName { .. })
        ));
    }
    assert!(matches!(
        NamedSegment::create(0),
        Err(NamedSegmentError::Segment { .. })
    ));
}

#[test]
fn stale_segments_of_dead_processes_are_removed() {
    // A pid that certainly belonged to a process that is gone now.
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = raw_object(
        &format!("/orcwire-{dead_pid}-stale{}", std::process::id()),
        4096,
        0o600,
    );
    let live = NamedSegment::create(4096).unwrap();
    let removed = remove_stale_segments().unwrap();
    assert!(removed >= 1, "removed {removed}");
    assert!(!shm_exists(&stale.0), "a dead creator's segment is removed");
    assert!(shm_exists(live.name()), "a live creator's segment is kept");
    let name = live.name().to_owned();
    drop(live);
    assert!(!shm_exists(&name));
}
