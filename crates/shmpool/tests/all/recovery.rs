//! Processes killed at named crash points (`shmpool::crash`): the survivors are not
//! wedged, what the dead process left half updated is repaired, and they go on
//! allocating and freeing.

use crate::support::{fork, trial};
use libtest_mimic::Trial;
use shmpool::heap::Heap;
use shmpool::SegmentOptions;
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Trial> {
    vec![trial("recovery::a_dead_page_lock_holder_wedges_no_one", a_dead_page_lock_holder_wedges_no_one)]
}

/// A child dies holding the page lock: right after taking it, with a run's head marked
/// but not its tails, and with a run being freed half given back. The parent's next
/// large allocation takes the lock over within a second, repairs the page-run
/// allocator, and the heap is whole: the invariant walk is clean and every unit is
/// either free or in a run.
fn a_dead_page_lock_holder_wedges_no_one() {
    for point in ["page_lock.held", "pages.run.head", "pages.free.cleared"] {
        let heap =
            Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("recovery").unwrap()).unwrap();
        let kept = heap.alloc(1 << 20).unwrap();
        let h = &heap;
        let child = fork(move || {
            shmpool::crash::arm(point);
            let big = h.alloc(2 << 20).unwrap();
            h.free(big).unwrap();
            0 // not reached: one of the two passes the point
        });
        assert_eq!(child.wait_status(), 128 + libc::SIGKILL, "{point}: the child died there");
        // On a thread, so that a wedge fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        let survivor = heap.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let big = survivor.alloc(4 << 20);
            let _ = tx.send((big, started.elapsed()));
        });
        let (big, waited) =
            rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{point}: wedged"));
        let big = big.unwrap();
        assert!(waited < Duration::from_secs(1), "{point}: the survivor waited {waited:?}");
        let report = heap.check().unwrap_or_else(|e| panic!("{point}: {e}"));
        // Runs: the parent's two large blocks, and the child's if it died having marked
        // its run (nobody can free that one: it stays allocated).
        let expect = if point == "pages.run.head" { 3 } else { 2 };
        assert_eq!(report.large_blocks, expect, "{point}: {report:?}");
        for off in [big, kept] {
            heap.free(off).unwrap();
        }
        let small: Vec<u64> = (0..1000).map(|_| heap.alloc(100).unwrap()).collect();
        small.into_iter().for_each(|off| heap.free(off).unwrap());
        heap.check().unwrap_or_else(|e| panic!("{point}, after: {e}"));
    }
}
