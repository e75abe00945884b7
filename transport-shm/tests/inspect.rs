//! `inspect`: decoding live segments read-only — a heap pair, a memfd
//! (mapped) and an unsealed copy of it (read with pread), our own process
//! through /proc, and garbage of every kind giving an error, not a panic.
#![cfg(not(orcwire_loom))]

use std::io::{Read, Seek, SeekFrom, Write};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use orcwire::{Opcode, Transport};
use orcwire_shm::inspect::{inspect_fd, inspect_mapping, inspect_process, InspectError, Liveness};
use orcwire_shm::layout::{
    state, RingCapacity, RingControl, RingDescriptor, SegmentHeader, Side, LAYOUT_VERSION, MAGIC,
};
use orcwire_shm::{required_size, HeapMapping, Segment, SharedMapping, ShmConfig, ShmTransport};

fn config(ring: usize) -> ShmConfig {
    ShmConfig {
        ring_capacity: RingCapacity::new(ring).unwrap(),
        ..ShmConfig::default()
    }
}

fn heap(len: usize) -> Arc<dyn SharedMapping> {
    Arc::new(HeapMapping::new(len).unwrap())
}

/// Writes `bytes` at `offset` of a mapping only this test uses.
fn poke(mapping: &dyn SharedMapping, offset: usize, bytes: &[u8]) {
    assert!(offset + bytes.len() <= mapping.len());
    // SAFETY: in bounds (asserted); no transport thread runs on this
    // mapping while the test writes, and a raw copy forms no reference.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), mapping.base().add(offset), bytes.len())
    };
}

fn ring_field(i: usize, field: usize) -> usize {
    offset_of!(SegmentHeader, rings) + i * size_of::<RingDescriptor>() + field
}

#[test]
fn a_connected_heap_pair_decodes_with_both_pids_alive_and_bytes_in_flight() {
    let cfg = config(4096);
    let mapping = heap(required_size(&cfg));
    let controller = ShmTransport::create(Arc::clone(&mapping), cfg).unwrap();
    let executor = ShmTransport::attach(Arc::clone(&mapping), cfg).unwrap();

    let r = inspect_mapping(&*mapping).unwrap();
    assert_eq!(r.magic, MAGIC);
    assert_eq!(r.version, LAYOUT_VERSION);
    assert_eq!(r.header_size as usize, size_of::<SegmentHeader>());
    assert_eq!(r.segment_size as usize, required_size(&cfg));
    assert_eq!(r.max_message_size, cfg.max_message_size);
    assert_eq!(r.epoch(), controller.epoch());
    assert!(r.state_flags().0.contains(&"EXECUTOR_ATTACHED"), "{r}");
    assert_eq!(r.state_flags().1, 0);
    for (side, s) in [Side::Controller, Side::Executor].iter().zip(&r.sides) {
        assert_eq!(s.side, *side);
        assert_eq!(s.pid, std::process::id());
        assert_eq!(s.liveness, Liveness::Alive);
    }
    for (i, ring) in r.rings.iter().enumerate() {
        assert_eq!(ring.sender.index(), i);
        assert_eq!(ring.capacity, 4096);
        assert_eq!(ring.in_flight(), Some(0));
    }

    controller.send(Opcode::Result, 1, 0, &[7; 100]).unwrap();
    let r = inspect_mapping(&*mapping).unwrap();
    let sent = r.rings[0].in_flight().unwrap();
    assert!(sent > 100 && sent < 4096, "{sent} B in flight");
    assert_eq!(r.rings[1].in_flight(), Some(0));
    let text = r.to_string();
    for expected in [
        format!("layout version {LAYOUT_VERSION}"),
        "ring 0     controller -> executor: capacity 4096 B".to_string(),
        format!("{sent} B in flight"),
        format!("controller pid {} (alive)", std::process::id()),
        "EXECUTOR_ATTACHED".to_string(),
    ] {
        assert!(text.contains(&expected), "{expected:?} not in\n{text}");
    }
    drop((controller, executor));
}

#[test]
fn a_memfd_is_mapped_read_only_and_an_unsealed_copy_is_read_with_pread() {
    let cfg = config(1 << 16);
    let seg = Arc::new(Segment::create(required_size(&cfg)).unwrap());
    let controller = ShmTransport::create(Arc::clone(&seg) as Arc<dyn SharedMapping>, cfg).unwrap();
    controller.send(Opcode::Result, 1, 0, b"hello").unwrap();

    let mapped = inspect_fd(seg.fd()).unwrap();
    assert_eq!(mapped.access, "mapped read-only");
    assert_eq!(mapped.rings[1].capacity, 1 << 16);
    assert_eq!(mapped.sides[1].liveness, Liveness::NotRecorded);
    assert!(mapped.rings[0].in_flight().unwrap() > 0);

    // The same bytes in an ordinary file, which nothing seals.
    let mut bytes = Vec::new();
    let mut memfd = std::fs::File::from(seg.fd().try_clone_to_owned().unwrap());
    memfd.seek(SeekFrom::Start(0)).unwrap();
    memfd.read_to_end(&mut bytes).unwrap();
    let path = std::env::temp_dir().join(format!("orcwire-inspect-test-{}", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let copy = std::fs::File::open(&path).unwrap();
    let read = inspect_fd(copy.as_fd());
    std::fs::remove_file(&path).unwrap();
    let read = read.unwrap();
    assert_eq!(read.access, "read with pread");
    assert_eq!(
        (read.state, read.rings, read.sides[0].pid),
        (mapped.state, mapped.rings, mapped.sides[0].pid)
    );
    drop(controller);
}

#[test]
fn our_own_process_lists_its_memfd_once_and_missing_pids_are_refused() {
    let cfg = config(4096);
    let seg = Arc::new(Segment::create(required_size(&cfg)).unwrap());
    let _controller =
        ShmTransport::create(Arc::clone(&seg) as Arc<dyn SharedMapping>, cfg).unwrap();
    // A second descriptor of the same memfd is not listed twice.
    let dup = seg.fd().try_clone_to_owned().unwrap();
    let found = inspect_process(std::process::id()).unwrap();
    let ours: Vec<_> = found
        .iter()
        .filter(|f| {
            f.result
                .as_ref()
                .is_ok_and(|r| r.sides[0].pid == std::process::id() && r.rings[0].capacity == 4096)
        })
        .collect();
    assert!(!ours.is_empty(), "{found:?}");
    assert!(ours.iter().all(|f| f.link.starts_with("/memfd:orcwire")));
    let fds: Vec<u32> = found.iter().map(|f| f.fd).collect();
    assert!(
        !(fds.contains(&(seg.fd().as_fd().as_raw_fd() as u32))
            && fds.contains(&(dup.as_fd().as_raw_fd() as u32))),
        "both descriptors of one memfd listed: {fds:?}"
    );
    drop(dup);

    for pid in [0, u32::MAX, 4_194_305] {
        assert!(
            matches!(
                inspect_process(pid),
                Err(InspectError::NoSuchProcess { .. })
            ),
            "pid {pid}"
        );
    }
}

#[test]
fn garbage_is_an_error_never_a_panic() {
    let cfg = config(4096);
    let len = required_size(&cfg);

    let zero = heap(len);
    assert!(matches!(
        inspect_mapping(&*zero),
        Err(InspectError::NotASegment { found: 0 })
    ));
    assert!(inspect_mapping(&*zero)
        .unwrap_err()
        .to_string()
        .contains("not an orcwire segment"));
    let short = heap(100);
    assert!(matches!(
        inspect_mapping(&*short),
        Err(InspectError::TooShort { len: 100, .. })
    ));

    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let noise = heap(len);
    let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
    poke(&*noise, 0, &bytes);
    assert!(matches!(
        inspect_mapping(&*noise),
        Err(InspectError::NotASegment { .. })
    ));

    // A valid segment, then one field at a time made wrong.
    let fresh = || {
        let m = heap(len);
        let t = ShmTransport::create(Arc::clone(&m), cfg).unwrap();
        drop(t);
        m
    };
    let version = fresh();
    poke(
        &*version,
        offset_of!(SegmentHeader, version),
        &7u32.to_ne_bytes(),
    );
    assert!(matches!(
        inspect_mapping(&*version),
        Err(InspectError::VersionMismatch { found: 7 })
    ));
    let size = fresh();
    poke(
        &*size,
        offset_of!(SegmentHeader, segment_size),
        &u64::MAX.to_ne_bytes(),
    );
    assert!(matches!(
        inspect_mapping(&*size),
        Err(InspectError::TooShort { .. })
    ));
    for (field, value) in [
        (offset_of!(RingDescriptor, capacity), 1000u64),
        (offset_of!(RingDescriptor, capacity), 1 << 40),
        (offset_of!(RingDescriptor, control_offset), u64::MAX - 8),
        (offset_of!(RingDescriptor, control_offset), 8),
        (offset_of!(RingDescriptor, control_offset), len as u64),
        (offset_of!(RingDescriptor, data_offset), len as u64 - 128),
    ] {
        let m = fresh();
        poke(&*m, ring_field(1, field), &value.to_ne_bytes());
        let e = inspect_mapping(&*m).unwrap_err();
        assert!(
            matches!(e, InspectError::Invalid(_)),
            "{field} = {value}: {e}"
        );
    }
    // Indices out of range decode, and say so.
    let m = fresh();
    let control = inspect_mapping(&*m).unwrap().rings[0].control_offset as usize;
    poke(
        &*m,
        control + offset_of!(RingControl, tail),
        &(1u64 << 50).to_ne_bytes(),
    );
    let r = inspect_mapping(&*m).unwrap();
    assert_eq!(r.rings[0].in_flight(), None);
    assert!(r.to_string().contains("indices inconsistent"), "{r}");
    // Unknown state bits print as hex.
    let m = fresh();
    let word = (1u64 << state::EPOCH_SHIFT) | (1 << 30);
    poke(&*m, offset_of!(SegmentHeader, state), &word.to_ne_bytes());
    assert!(inspect_mapping(&*m)
        .unwrap()
        .to_string()
        .contains("unknown 0x40000000"));

    // A valid segment with random words written over it (any but the
    // magic, version and header size): any answer but a panic. Each word
    // is replaced with probability 1/4, so some runs get as far as the
    // rings and their indices.
    let template = fresh();
    let control_end = inspect_mapping(&*template)
        .unwrap()
        .rings
        .iter()
        .map(|r| r.control_offset as usize + size_of::<RingControl>())
        .max()
        .unwrap();
    let mut decoded = 0;
    for _ in 0..500 {
        let m = fresh();
        for offset in (16..control_end).step_by(8) {
            if next() % 4 == 0 {
                let word = match next() % 3 {
                    0 => next(),
                    1 => next() % (1 << 20),
                    _ => 1 << (next() % 64),
                };
                poke(&*m, offset, &word.to_ne_bytes());
            }
        }
        if let Ok(r) = inspect_mapping(&*m) {
            decoded += 1;
            let _ = r.to_string();
        }
    }
    assert!(decoded > 0, "no random segment got past validation");

    // Not a regular file.
    let (read, _write) = nix::unistd::pipe().unwrap();
    assert!(matches!(
        inspect_fd(read.as_fd()),
        Err(InspectError::NotAFile)
    ));
}
