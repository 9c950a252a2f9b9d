//! Every `AttachError` a file can provoke, each from a crafted file, through the public
//! attach paths (by path, by shm name, by descriptor). A `SIGBUS` or panic instead of
//! the error fails the test process.
//!
//! `PageSizeMismatch` needs a host whose pages are larger than 4 KiB; it is covered by
//! the unit tests of `header::validate`, which take the host page size as a parameter.

use crate::support::{trial, unique_name, ShmGuard, TempDir};
use libtest_mimic::Trial;
use shmpool::segment::header::{HeaderFields, HEADER_LEN, LAYOUT_VERSION};
use shmpool::segment::{Access, AccessError, AttachError, FdPassError, GrowError};
use shmpool::{Segment, SegmentOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("attach_errors::empty_file", empty_file),
        trial("attach_errors::truncated_file", truncated_file),
        trial("attach_errors::zeroed_header_is_uninitialized", zeroed_header_is_uninitialized),
        trial("attach_errors::foreign_file_is_not_shmpool", foreign_file_is_not_shmpool),
        trial("attach_errors::damaged_magic", damaged_magic),
        trial("attach_errors::other_layout_version", other_layout_version),
        trial("attach_errors::corrupted_field", corrupted_field),
        trial("attach_errors::committed_beyond_truncated_file", committed_beyond_truncated_file),
        trial("attach_errors::read_only_file_opened_read_write", read_only_file_opened_read_write),
        trial("attach_errors::missing_and_misnamed", missing_and_misnamed),
        trial("attach_errors::foreign_shm_object", foreign_shm_object),
        trial("attach_errors::foreign_fd", foreign_fd),
        trial("attach_errors::closed_socket_while_receiving", closed_socket_while_receiving),
        trial("attach_errors::create_refuses_existing_and_bad_sizes", create_refuses_existing_and_bad_sizes),
        trial("attach_errors::fifo_is_refused_without_blocking", fifo_is_refused_without_blocking),
        trial(
            "attach_errors::read_only_descriptor_attached_read_write",
            read_only_descriptor_attached_read_write,
        ),
        trial(
            "attach_errors::peer_lying_about_committed_cannot_widen_access",
            peer_lying_about_committed_cannot_widen_access,
        ),
        trial(
            "attach_errors::attachers_follow_the_creators_commit_policy",
            attachers_follow_the_creators_commit_policy,
        ),
    ]
}

fn sample_fields() -> HeaderFields {
    HeaderFields {
        version: LAYOUT_VERSION,
        page_size: 4096,
        reserved_len: 1 << 20,
        created_ns: 1,
        segment_id: 7,
        creator_uid: 0,
        creator_pid: 1,
        flags: 0,
    }
}

fn open(path: &Path) -> AttachError {
    let err = Segment::open_file(path, Access::ReadWrite).expect_err("attach must fail");
    let again = Segment::inspect_file(path).expect_err("inspect must fail too");
    assert_eq!(err.to_string(), again.to_string(), "inspect and attach agree");
    err
}

/// A real segment file with one byte of data, closed; returns its path.
fn real_segment(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path("seg");
    let seg = SegmentOptions::new().size(64 << 10).create_file(&path).unwrap();
    seg.write_bytes(HEADER_LEN, b"x").unwrap();
    path
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn empty_file() {
    let dir = TempDir::new("err");
    std::fs::write(dir.path("f"), b"").unwrap();
    assert!(matches!(open(&dir.path("f")), AttachError::Empty));
}

fn truncated_file() {
    let dir = TempDir::new("err");
    std::fs::write(dir.path("f"), &sample_fields().to_bytes(8192)[..100]).unwrap();
    assert!(matches!(open(&dir.path("f")), AttachError::Truncated { len: 100, need: HEADER_LEN }));
}

fn zeroed_header_is_uninitialized() {
    let dir = TempDir::new("err");
    std::fs::write(dir.path("f"), vec![0u8; 64 << 10]).unwrap();
    assert!(matches!(open(&dir.path("f")), AttachError::Uninitialized));
}

fn foreign_file_is_not_shmpool() {
    let dir = TempDir::new("err");
    std::fs::write(dir.path("f"), b"#!/bin/sh\necho hello\n".repeat(500)).unwrap();
    assert!(matches!(open(&dir.path("f")), AttachError::NotShmpool { found } if &found == b"#!/bin/s"));
}

fn damaged_magic() {
    let dir = TempDir::new("err");
    let path = real_segment(&dir);
    patch(&path, 0, b"SHMPOOX");
    assert!(matches!(open(&path), AttachError::BadMagic { .. }));
}

fn other_layout_version() {
    let dir = TempDir::new("err");
    let mut fields = sample_fields();
    fields.version = LAYOUT_VERSION + 1;
    let mut bytes = fields.to_bytes(8192).to_vec();
    bytes.resize(8192, 0);
    std::fs::write(dir.path("f"), bytes).unwrap();
    assert!(matches!(
        open(&dir.path("f")),
        AttachError::VersionMismatch { found, expected: LAYOUT_VERSION } if found == LAYOUT_VERSION + 1
    ));
}

fn corrupted_field() {
    let dir = TempDir::new("err");
    let path = real_segment(&dir);
    patch(&path, 24, &(1u64 << 60).to_ne_bytes()); // reserved size, behind the checksum
    assert!(matches!(open(&path), AttachError::Corrupted(_)));
}

fn committed_beyond_truncated_file() {
    let dir = TempDir::new("err");
    let path = real_segment(&dir);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(8192).unwrap();
    assert!(matches!(
        open(&path),
        AttachError::CommittedBeyondFile { committed, file_len: 8192 } if committed == 64 << 10
    ));
}

fn read_only_file_opened_read_write() {
    let dir = TempDir::new("err");
    let path = real_segment(&dir);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let err = Segment::open_file(&path, Access::ReadWrite).expect_err("file is read-only");
    assert!(matches!(err, AttachError::ReadOnly(_)), "{err}");
    let ro = Segment::open_file(&path, Access::ReadOnly).expect("read-only attach works");
    let mut b = [0u8; 1];
    ro.read_bytes(HEADER_LEN, &mut b).unwrap();
    assert_eq!(&b, b"x");
    assert_eq!(ro.write_bytes(HEADER_LEN, b"y"), Err(AccessError::ReadOnly));
    assert!(matches!(ro.atomic_u64(HEADER_LEN), Err(AccessError::ReadOnly)));
    assert_eq!(ro.grow_to(1 << 20), Err(GrowError::ReadOnly));
    assert_eq!(ro.load_u64(HEADER_LEN).unwrap() & 0xff, u64::from(b'x'));
}

fn missing_and_misnamed() {
    let name = unique_name("missing");
    assert!(matches!(Segment::open_shm(&name, Access::ReadWrite), Err(AttachError::NotFound(_))));
    assert!(matches!(Segment::open_shm("a/b", Access::ReadWrite), Err(AttachError::Name(_))));
    assert!(matches!(Segment::unlink_shm(&name), Err(AttachError::NotFound(_))));
    let dir = TempDir::new("err");
    assert!(matches!(Segment::open_file(dir.path("nope"), Access::ReadOnly), Err(AttachError::NotFound(_))));
}

fn foreign_shm_object() {
    let name = unique_name("foreign");
    let _guard = ShmGuard(name.clone());
    std::fs::write(Path::new("/dev/shm").join(&name), vec![0xa5u8; 8192]).unwrap();
    assert!(matches!(Segment::open_shm(&name, Access::ReadWrite), Err(AttachError::NotShmpool { .. })));
}

fn foreign_fd() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = Segment::from_fd(a.into(), Access::ReadWrite).expect_err("a socket is no segment");
    assert!(matches!(err, AttachError::NotShmpool { .. }), "{err}");
}

fn closed_socket_while_receiving() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(b);
    let err = Segment::receive(&a, Access::ReadWrite).expect_err("peer is gone");
    assert!(matches!(err, AttachError::Receive(FdPassError::Closed)), "{err}");
    let heap = SegmentOptions::new().create_heap().unwrap();
    assert!(matches!(heap.send_to(&a), Err(FdPassError::NoFd)));
    let memfd = SegmentOptions::new().create_memfd("x").unwrap();
    let fd = memfd.handle().fd().unwrap();
    assert!(matches!(shmpool::segment::send_fd(&a, fd, b""), Err(FdPassError::EmptyBody)));
}

fn create_refuses_existing_and_bad_sizes() {
    use shmpool::CreateError;
    let name = unique_name("exists");
    let _guard = ShmGuard(name.clone());
    let _first = SegmentOptions::new().create_shm(&name).unwrap();
    assert!(matches!(SegmentOptions::new().create_shm(&name), Err(CreateError::AlreadyExists(_))));
    let bad = SegmentOptions::new().size(2 << 20).max_size(1 << 20);
    assert!(matches!(bad.create_memfd("x"), Err(CreateError::InvalidSize(_))));
    assert!(matches!(
        SegmentOptions::new().max_size(u64::MAX).create_heap(),
        Err(CreateError::InvalidSize(_))
    ));
    assert!(matches!(SegmentOptions::new().create_shm(""), Err(CreateError::Name(_))));
    // Only a maximum given: the default size shrinks to fit it.
    let small = SegmentOptions::new().max_size(64 << 10).create_heap().unwrap();
    assert_eq!((small.committed(), small.reserved()), (64 << 10, 64 << 10));
    let dir = TempDir::new("err");
    let path = real_segment(&dir);
    assert!(matches!(SegmentOptions::new().create_file(&path), Err(CreateError::AlreadyExists(_))));
    // the failed create must not have removed the existing file
    assert!(Segment::open_file(&path, Access::ReadOnly).is_ok());
}

fn fifo_is_refused_without_blocking() {
    let dir = TempDir::new("fifo");
    let path = dir.path("fifo");
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(matches!(open(&path), AttachError::NotShmpool { .. }));
    let name = unique_name("fifo");
    let _g = ShmGuard(name.clone());
    let c = std::ffi::CString::new(format!("/dev/shm/{name}")).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let err = Segment::open_shm(&name, Access::ReadOnly).expect_err("a FIFO is no segment");
    assert!(matches!(err, AttachError::NotShmpool { .. }), "{err}");
}

fn read_only_descriptor_attached_read_write() {
    let dir = TempDir::new("rofd");
    let path = real_segment(&dir);
    let fd: rustix::fd::OwnedFd = std::fs::File::open(&path).unwrap().into();
    let err = Segment::from_fd(fd, Access::ReadWrite).expect_err("descriptor is read-only");
    assert!(matches!(err, AttachError::ReadOnly(_)), "{err}");
    let fd: rustix::fd::OwnedFd = std::fs::File::open(&path).unwrap().into();
    assert!(Segment::from_fd(fd, Access::ReadOnly).is_ok());
}

/// A peer writes a committed size far beyond the mapping into the shared header: the
/// accessors must still refuse anything past this process's own mapping.
fn peer_lying_about_committed_cannot_widen_access() {
    let dir = TempDir::new("liar");
    let path = dir.path("seg");
    let seg = SegmentOptions::new().size(64 << 10).max_size(1 << 20).create_file(&path).unwrap();
    patch(&path, 72, &(1u64 << 40).to_ne_bytes());
    assert_eq!(seg.committed(), seg.reserved(), "capped at the mapping");
    let past = seg.reserved();
    assert!(matches!(seg.write_bytes(past, &[1; 8]), Err(AccessError::OutOfBounds { .. })));
    assert!(matches!(seg.atomic_u64(past + (64 << 10)), Err(AccessError::OutOfBounds { .. })));
}

fn attachers_follow_the_creators_commit_policy() {
    use shmpool::segment::{header::FLAG_LAZY, Commit};
    let name = unique_name("lazyflag");
    let _g = ShmGuard(name.clone());
    let lazy = SegmentOptions::new().commit(Commit::Lazy).create_shm(&name).unwrap();
    let other = Segment::open_shm(&name, Access::ReadWrite).unwrap();
    assert_ne!(other.info().fields.flags & FLAG_LAZY, 0);
    assert_eq!(other.backend().commit(), Commit::Lazy);
    other.grow_to(4 << 20).unwrap();
    // Lazy growth leaves the new range sparse: far fewer blocks than bytes.
    let st = std::fs::metadata(format!("/dev/shm/{name}")).unwrap();
    assert!(std::os::unix::fs::MetadataExt::blocks(&st) * 512 < 2 << 20, "grew sparse");
    assert_eq!(lazy.committed(), 4 << 20);
}
