//! Huge pages, both paths. The pool is global machine state, so both checks run in one
//! test, one after the other.
//!
//! 1. Fallback: ask for more 2 MiB pages than the pool has free; the segment must still
//!    work, on normal pages, and say why.
//! 2. Huge path: make sure the pool has free pages (as root, by raising
//!    `/proc/sys/vm/nr_hugepages`, restored afterwards), then the segment must be on huge
//!    pages. Where the pool cannot be provisioned (not root, read-only procfs), the test
//!    instead asserts that the backend reports the fallback the pool state predicts.
//!    The pool is restored when the test ends, pass or fail (`HugePool`).

use crate::support::{fork, pattern, trial, HugePool};
use libtest_mimic::Trial;
use shmpool::segment::{BackendKind, HugeFallback, HugePageSize};
use shmpool::SegmentOptions;

pub fn tests() -> Vec<Trial> {
    vec![trial("huge::fallback_then_huge_path", fallback_then_huge_path)]
}

fn fallback_then_huge_path() {
    let page = HugePageSize::Size2M;
    let free = page.free_pages().unwrap_or(0);

    // 1. More than the pool holds: falls back, reports why, and works.
    let want = (free + 2) * page.bytes();
    let seg = SegmentOptions::new().size(want).max_size(want * 2).create_huge("fallback", page).unwrap();
    assert_eq!(seg.kind(), BackendKind::Memfd);
    assert_eq!(seg.page_size(), rustix::param::page_size() as u64);
    match seg.huge_fallback() {
        Some(HugeFallback::NoFreePages { needed, .. }) => assert_eq!(*needed, free + 2),
        Some(other @ HugeFallback::Unsupported { .. }) => eprintln!("kernel refuses huge memfds: {other}"),
        None => panic!("asked for more huge pages than exist, yet no fallback was reported"),
    }
    seg.write_bytes(want - 4096, &[1; 4096]).unwrap();
    drop(seg);

    // 2. The real thing.
    let pool = HugePool::reserve(1);
    let seg = SegmentOptions::new().size(2 << 20).max_size(64 << 20).create_huge("huge", page).unwrap();
    if pool.provisioned() {
        assert_eq!(seg.kind(), BackendKind::HugePages, "pool has pages: {:?}", seg.huge_fallback());
        assert_eq!(seg.page_size(), 2 << 20);
        assert!(seg.huge_fallback().is_none());
        let off = seg.data_start();
        seg.write_bytes(off, &pattern(off, 8192, 5)).unwrap();
        let s = &seg;
        let child = fork(|| {
            let mut b = vec![0; 8192];
            s.read_bytes(off, &mut b).unwrap();
            i32::from(b != pattern(off, 8192, 5))
        });
        assert_eq!(child.wait(), 0, "a forked child reads the huge pages");
        // Growth beyond what the pool holds is a typed error, not a SIGBUS at first touch.
        let need = ((64 << 20) - seg.committed()) / page.bytes();
        let free_now = page.free_pages().unwrap_or(0);
        let grown = seg.grow_to(64 << 20);
        if free_now >= need {
            assert_eq!(grown, Ok(64 << 20));
        } else {
            assert!(matches!(grown, Err(shmpool::GrowError::NoSpace { .. })), "{grown:?}");
            assert_eq!(seg.committed(), 2 << 20, "a failed growth changes nothing");
        }
    } else {
        eprintln!("huge page pool could not be provisioned; checking the reported fallback");
        assert!(seg.huge_fallback().is_some(), "no free huge pages, so a fallback must be reported");
    }
}
