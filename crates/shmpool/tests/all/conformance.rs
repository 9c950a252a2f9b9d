//! One conformance suite, run against every backend: create, write, map a second time
//! (or attach from elsewhere), read, grow, bounds, fork.
//!
//! The private heap has no second mapping (nothing else can attach to it); its fork
//! check asserts the opposite of the shared backends: a child's writes stay in the child.

use crate::support::{fork, pattern, trial, unique_name, HugePool, ShmGuard, TempDir};
use libtest_mimic::Trial;
use rustix::fd::AsFd;
use shmpool::segment::{AccessError, BackendKind, Commit, GrowError, HugePageSize};
use shmpool::{Segment, SegmentOptions};

const SIZE: u64 = 64 << 10;
const MAX: u64 = 64 << 20;

/// A fresh segment of one backend, with what keeps its name or file alive. Other suites
/// (pools, buffers) run on the same fixtures.
pub struct Fixture {
    pub seg: Segment,
    pub reopen: Option<Box<dyn Fn() -> Segment>>,
    pub _guards: (Option<ShmGuard>, Option<TempDir>),
    /// For huge pages: the pool reservation, and whether huge pages must be in use.
    pub huge: Option<HugePool>,
}

pub fn opts() -> SegmentOptions {
    SegmentOptions::new().size(SIZE).max_size(MAX)
}

fn dup_reopen(seg: &Segment) -> Box<dyn Fn() -> Segment> {
    let fd = seg.handle().fd().expect("fd").try_clone_to_owned().expect("dup");
    Box::new(move || {
        let again = fd.as_fd().try_clone_to_owned().expect("dup");
        Segment::from_fd(again, Default::default()).expect("attach by fd")
    })
}

pub fn heap() -> Fixture {
    Fixture { seg: opts().create_heap().unwrap(), reopen: None, _guards: (None, None), huge: None }
}

pub fn memfd() -> Fixture {
    let seg = opts().create_memfd("conformance").unwrap();
    let reopen = Some(dup_reopen(&seg));
    Fixture { seg, reopen, _guards: (None, None), huge: None }
}

pub fn shm() -> Fixture {
    let name = unique_name("conf");
    let seg = opts().create_shm(&name).unwrap();
    let n = name.clone();
    let reopen: Box<dyn Fn() -> Segment> =
        Box::new(move || Segment::open_shm(&n, Default::default()).expect("open by name"));
    Fixture { seg, reopen: Some(reopen), _guards: (Some(ShmGuard(name)), None), huge: None }
}

/// POSIX shm with `Commit::Lazy`: grown by `ftruncate` alone, pages on first touch.
pub fn shm_lazy() -> Fixture {
    let name = unique_name("lazy");
    let seg = opts().commit(Commit::Lazy).create_shm(&name).unwrap();
    let n = name.clone();
    let reopen: Box<dyn Fn() -> Segment> =
        Box::new(move || Segment::open_shm(&n, Default::default()).expect("open by name"));
    Fixture { seg, reopen: Some(reopen), _guards: (Some(ShmGuard(name)), None), huge: None }
}

/// Huge pages: the pool is provisioned for the checks (4 pages: up to the 4 MiB growth
/// check) where this process may; elsewhere the checks run on the fallback, and
/// `create_reports_layout` asserts that the fallback is the one the pool predicts.
pub fn huge() -> Fixture {
    let pool = HugePool::reserve(4);
    let seg = opts().create_huge("conformance", HugePageSize::Size2M).unwrap();
    let reopen = Some(dup_reopen(&seg));
    Fixture { seg, reopen, _guards: (None, None), huge: Some(pool) }
}

pub fn file() -> Fixture {
    let dir = TempDir::new("conf");
    let path = dir.path("segment");
    let seg = opts().create_file(&path).unwrap();
    let reopen: Box<dyn Fn() -> Segment> =
        Box::new(move || Segment::open_file(&path, Default::default()).expect("open by path"));
    Fixture { seg, reopen: Some(reopen), _guards: (None, Some(dir)), huge: None }
}

macro_rules! suite {
    ($($backend:ident),*) => {
        pub fn tests() -> Vec<Trial> {
            let mut v = Vec::new();
            $(
                let name = |check: &str| format!("conformance::{}::{check}", stringify!($backend));
                v.extend([
                    trial(&name("create_reports_layout"), || create_reports_layout($backend())),
                    trial(&name("write_then_read"), || write_then_read($backend())),
                    trial(&name("grow_is_seen_by_every_mapping"), || grow_is_seen_by_every_mapping($backend())),
                    trial(&name("bounds_are_enforced"), || bounds_are_enforced($backend())),
                    trial(&name("forked_child_writes"), || forked_child_writes($backend())),
                ]);
                if stringify!($backend) != "heap" {
                    v.push(trial(&name("second_mapping_sees_writes"), || second_mapping_sees_writes($backend())));
                }
            )*
            v
        }
    };
}
suite!(heap, memfd, shm, shm_lazy, huge, file);

fn expected_kind(f: &Fixture) -> BackendKind {
    match &f.huge {
        Some(pool) if pool.provisioned() => BackendKind::HugePages,
        Some(_) => BackendKind::Memfd,
        None => f.seg.kind(),
    }
}

fn create_reports_layout(f: Fixture) {
    let seg = &f.seg;
    let info = seg.info();
    let page = seg.page_size();
    assert!(page.is_power_of_two() && page >= 4096);
    assert_eq!(seg.committed(), SIZE.next_multiple_of(page));
    assert_eq!(info.backing_len, seg.committed(), "the file holds exactly the committed bytes");
    assert_eq!(seg.reserved(), MAX.next_multiple_of(page));
    assert_eq!(seg.data_start(), 4096);
    assert_eq!(info.fields.creator_pid, std::process::id());
    assert_eq!(info.fields.creator_uid, rustix::process::getuid().as_raw());
    assert_eq!(info.fields.page_size, page);
    let kind = expected_kind(&f);
    assert_eq!(seg.kind(), kind);
    if f.huge.is_some() && kind == BackendKind::Memfd {
        assert!(seg.huge_fallback().is_some(), "no huge pages, so the fallback must be reported");
    }
    match kind {
        BackendKind::HugePages => {
            assert_eq!(page, 2 << 20);
            assert!(seg.huge_fallback().is_none());
        }
        _ => assert_eq!(page, rustix::param::page_size() as u64),
    }
    assert_eq!(seg.handle().fd().is_some(), kind != BackendKind::Heap);
}

fn write_then_read(f: Fixture) {
    let seg = &f.seg;
    let start = seg.data_start();
    let end = seg.committed() - 4096;
    for off in [start, start + 1, end] {
        let data = pattern(off, 4096, 7);
        seg.write_bytes(off, &data).unwrap();
        let mut back = vec![0; 4096];
        seg.read_bytes(off, &mut back).unwrap();
        assert_eq!(back, data, "at offset {off}");
    }
    let word = seg.atomic_u64(start + 8).unwrap();
    word.store(0xfeed, std::sync::atomic::Ordering::Release);
    assert_eq!(seg.load_u64(start + 8).unwrap(), 0xfeed);
}

fn second_mapping_sees_writes(f: Fixture) {
    let first = &f.seg;
    let second = (f.reopen.as_ref().expect("shareable backend"))();
    assert_eq!(second.segment_id(), first.segment_id());
    assert_eq!(second.committed(), first.committed());
    assert_ne!(first.ptr_at(4096, 1).unwrap(), second.ptr_at(4096, 1).unwrap(), "two mappings");
    let a = pattern(4096, 10_000, 1);
    first.write_bytes(4096, &a).unwrap();
    let mut back = vec![0; a.len()];
    second.read_bytes(4096, &mut back).unwrap();
    assert_eq!(back, a);
    let b = pattern(20_000, 3000, 2);
    second.write_bytes(20_000, &b).unwrap();
    let mut back = vec![0; b.len()];
    first.read_bytes(20_000, &mut back).unwrap();
    assert_eq!(back, b);
}

fn grow_is_seen_by_every_mapping(f: Fixture) {
    let seg = &f.seg;
    let second = f.reopen.as_ref().map(|r| r());
    let target = 4 << 20;
    let after = seg.grow_to(target).unwrap();
    assert!(after >= target && after.is_multiple_of(seg.page_size()));
    assert_eq!(seg.committed(), after);
    assert_eq!(seg.info().backing_len, after);
    assert_eq!(seg.grow_to(SIZE).unwrap(), after, "growing to less is a no-op");
    let last = after - 4096;
    let data = pattern(last, 4096, 3);
    let writer = second.as_ref().unwrap_or(seg);
    assert_eq!(writer.committed(), after, "the other mapping sees the new size at once");
    writer.write_bytes(last, &data).unwrap();
    let mut back = vec![0; 4096];
    seg.read_bytes(last, &mut back).unwrap();
    assert_eq!(back, data);
}

fn bounds_are_enforced(f: Fixture) {
    let seg = &f.seg;
    let c = seg.committed();
    let mut buf = [0u8; 16];
    assert!(matches!(seg.read_bytes(c - 8, &mut buf), Err(AccessError::OutOfBounds { .. })));
    assert!(matches!(seg.write_bytes(c, &buf), Err(AccessError::OutOfBounds { .. })));
    assert!(matches!(seg.read_bytes(u64::MAX - 4, &mut buf), Err(AccessError::OutOfBounds { .. })));
    assert!(matches!(seg.read_bytes(100, &mut buf), Err(AccessError::InHeader { .. })));
    assert!(matches!(seg.atomic_u64(4100), Err(AccessError::Misaligned { .. })));
    assert!(matches!(seg.atomic_u64(c), Err(AccessError::OutOfBounds { .. })));
    let too_far = seg.reserved() + 1;
    assert!(matches!(seg.grow_to(too_far), Err(GrowError::BeyondReserved { .. })));
    assert!(matches!(seg.grow_to(u64::MAX), Err(GrowError::BeyondReserved { .. })));
    assert_eq!(seg.committed(), c, "failed growth changes nothing");
    seg.read_bytes(c - 16, &mut buf).unwrap();
}

fn forked_child_writes(f: Fixture) {
    let seg = &f.seg;
    let off = seg.data_start() + 512;
    let data = pattern(off, 2048, 9);
    let child = fork(|| {
        seg.write_bytes(off, &data).unwrap();
        seg.atomic_u64(off - 8).unwrap().fetch_add(5, std::sync::atomic::Ordering::AcqRel);
        0
    });
    assert_eq!(child.wait(), 0);
    let mut back = vec![0; data.len()];
    seg.read_bytes(off, &mut back).unwrap();
    let shared = seg.kind() != BackendKind::Heap;
    assert_eq!(back == data, shared, "a child's writes are visible exactly when shared");
    assert_eq!(seg.load_u64(off - 8).unwrap(), if shared { 5 } else { 0 });
}
