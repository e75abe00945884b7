//! The memfd segment: seals, receive-side checks, shared visibility, and
//! handing it to real child processes by inheritance and by SCM_RIGHTS.
#![cfg(not(orcwire_loom))]

mod common;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::unistd::ftruncate;
use orcwire_shm::{
    page_size, recv_fd_timeout, send_fd, socket_pair, Segment, SegmentError, SharedMapping,
};

use common::{spawn_with_fd, CHILD_FD};

/// Env var that turns `child_entry` into the child side of
/// `fd_passed_to_real_child_over_scm_rights`.
const CHILD_ENV: &str = "ORCWIRE_SEGMENT_TEST_CHILD";
const PARENT_MARK: u64 = 0x0123_4567_89ab_cdef;
const CHILD_MARK: u64 = 0xfeed_face_cafe_beef;

fn write_u64(m: &impl SharedMapping, off: usize, v: u64) {
    assert!(off + 8 <= m.len() && off % 8 == 0);
    // SAFETY: in bounds and 8-aligned (base is page-aligned).
    unsafe { m.base().add(off).cast::<u64>().write_volatile(v) }
}

fn read_u64(m: &impl SharedMapping, off: usize) -> u64 {
    assert!(off + 8 <= m.len() && off % 8 == 0);
    // SAFETY: in bounds and 8-aligned (base is page-aligned).
    unsafe { m.base().add(off).cast::<u64>().read_volatile() }
}

fn raw_memfd(len: i64, seals: SealFlag) -> OwnedFd {
    let fd = memfd_create(c"test", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
    ftruncate(&fd, len).unwrap();
    if !seals.is_empty() {
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
    }
    fd
}

#[test]
fn created_segment_cannot_be_resized_or_resealed() {
    let seg = Segment::create(2 * page_size()).unwrap();
    let len = seg.len() as i64;
    assert_eq!(
        ftruncate(seg.fd(), len * 2),
        Err(Errno::EPERM),
        "grow must be sealed"
    );
    assert_eq!(
        ftruncate(seg.fd(), len / 2),
        Err(Errno::EPERM),
        "shrink must be sealed"
    );
    assert_eq!(
        ftruncate(seg.fd(), 0),
        Err(Errno::EPERM),
        "shrink must be sealed"
    );
    assert_eq!(
        fcntl(seg.fd(), FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)),
        Err(Errno::EPERM),
        "the seal set itself must be sealed"
    );
    // The mapping is still whole and writable, first byte to last.
    write_u64(&seg, 0, 1);
    write_u64(&seg, seg.len() - 8, 2);
    assert_eq!((read_u64(&seg, 0), read_u64(&seg, seg.len() - 8)), (1, 2));
}

#[test]
fn unsealed_memfds_are_refused() {
    let cases = [
        (SealFlag::empty(), "no seals"),
        (
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW,
            "seal set left open",
        ),
        (SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL, "may grow"),
        (SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL, "may shrink"),
    ];
    for (seals, what) in cases {
        let err = Segment::from_fd(raw_memfd(4096, seals), 4096).unwrap_err();
        assert!(
            matches!(err, SegmentError::NotSealed { .. }),
            "{what}: {err}"
        );
    }
    // Without MFD_ALLOW_SEALING a memfd carries only F_SEAL_SEAL: it can
    // never get the size seals, so it is refused too.
    let fd = memfd_create(c"test", MFdFlags::MFD_CLOEXEC).unwrap();
    ftruncate(&fd, 4096).unwrap();
    let err = Segment::from_fd(fd, 4096).unwrap_err();
    match err {
        SegmentError::NotSealed { missing, .. } => {
            assert_eq!(missing, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW)
        }
        other => panic!("expected NotSealed, got {other}"),
    }
}

#[test]
fn too_small_segments_are_refused() {
    let seg = Segment::create(4096).unwrap();
    let dup = seg.fd().try_clone_to_owned().unwrap();
    let err = Segment::from_fd(dup, seg.len() + 1).unwrap_err();
    assert!(matches!(err, SegmentError::TooSmall { .. }), "{err}");
    let err = Segment::from_fd(
        raw_memfd(
            0,
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
        0,
    )
    .unwrap_err();
    assert!(
        matches!(err, SegmentError::TooSmall { len: 0, .. }),
        "{err}"
    );
    // Exactly the size is fine.
    let dup = seg.fd().try_clone_to_owned().unwrap();
    assert_eq!(Segment::from_fd(dup, seg.len()).unwrap().len(), seg.len());
}

#[test]
fn two_mappings_of_one_fd_share_memory() {
    let a = Segment::create(3 * page_size()).unwrap();
    let b = Segment::from_fd(a.fd().try_clone_to_owned().unwrap(), a.len()).unwrap();
    assert_ne!(a.base(), b.base(), "two distinct mappings");
    assert_eq!(a.len(), b.len());
    assert_eq!(b.base() as usize % orcwire_shm::MAPPING_ALIGN, 0);
    for off in (0..a.len()).step_by(page_size() / 2) {
        assert_eq!(read_u64(&b, off), 0, "a new segment is zeroed");
        write_u64(&a, off, off as u64 ^ PARENT_MARK);
    }
    for off in (0..a.len()).step_by(page_size() / 2) {
        assert_eq!(read_u64(&b, off), off as u64 ^ PARENT_MARK);
        write_u64(&b, off + 8, off as u64 ^ CHILD_MARK);
        assert_eq!(read_u64(&a, off + 8), off as u64 ^ CHILD_MARK);
    }
    // The memory outlives either handle.
    drop(a);
    assert_eq!(read_u64(&b, 0), PARENT_MARK);
}

#[test]
fn inherited_fd_is_shared_with_a_real_child() {
    let seg = Segment::create(4096).unwrap();
    let dup = seg.fd().try_clone_to_owned().unwrap();
    // `1<>` opens read-write without O_TRUNC (which the seals forbid), so
    // the child's write lands at offset 0 of the memfd.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("printf hello 1<>/proc/self/fd/{CHILD_FD}"));
    let mut child = spawn_with_fd(&mut cmd, dup);
    assert!(child.wait_timeout(Duration::from_secs(10)).success());
    let mut got = [0u8; 5];
    for (i, b) in got.iter_mut().enumerate() {
        // SAFETY: 5 bytes are within the 4096-byte mapping.
        *b = unsafe { seg.base().add(i).read_volatile() };
    }
    assert_eq!(&got, b"hello");
}

#[test]
fn fd_passed_to_real_child_over_scm_rights() {
    let seg = Segment::create(2 * page_size()).unwrap();
    write_u64(&seg, 0, PARENT_MARK);
    let (ours, theirs) = socket_pair().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1");
    cmd.stdout(std::process::Stdio::null());
    let mut child = spawn_with_fd(&mut cmd, theirs);
    send_fd(ours.as_fd(), seg.fd(), &(seg.len() as u64).to_le_bytes()).unwrap();
    // The child answers with a plain byte once it has written its mark.
    let mut pfd = libc::pollfd {
        fd: ours.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(ready, 1, "child never answered");
    let mut ack = [0u8; 1];
    assert_eq!(nix::unistd::read(&ours, &mut ack), Ok(1));
    assert_eq!(
        read_u64(&seg, 8),
        CHILD_MARK,
        "the child's write is visible here"
    );
    assert!(child.wait_timeout(Duration::from_secs(10)).success());
}

/// The child side of `fd_passed_to_real_child_over_scm_rights`; a no-op
/// in a normal test run.
#[test]
fn child_entry() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // SAFETY: the parent placed our end of the socket pair at CHILD_FD and
    // nothing else in this process owns that number.
    let sock = unsafe { OwnedFd::from_raw_fd(CHILD_FD) };
    let mut buf = [0u8; 8];
    let (fd, n) = recv_fd_timeout(sock.as_fd(), &mut buf, Duration::from_secs(10)).unwrap();
    assert_eq!(n, 8);
    let len = u64::from_le_bytes(buf) as usize;
    let seg = Segment::from_fd(fd, len).unwrap();
    assert_eq!(seg.len(), len);
    assert_eq!(
        read_u64(&seg, 0),
        PARENT_MARK,
        "the parent's write is visible here"
    );
    write_u64(&seg, 8, CHILD_MARK);
    nix::unistd::write(&sock, b"k").unwrap();
}
