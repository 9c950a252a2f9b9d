//! Every named crash point (`shmpool::crash::POINTS`): a child process dies there, the
//! survivor is not held up (an allocation completes within a second), recovers, finds
//! the invariant walk clean, and allocates and frees normally.

use crate::support::{fork, pattern};
use libtest_mimic::Trial;
use shmpool::heap::class::{class_of, GEOMETRY};
use shmpool::heap::Heap;
use shmpool::SegmentOptions;
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Trial> {
    shmpool::crash::POINTS
        .iter()
        .map(|&point| {
            Trial::test(format!("crash_points::{point}"), move || {
                dies_at(point);
                Ok(())
            })
        })
        .collect()
}

/// What the survivor prepared for the child's workload.
struct Stage {
    /// A block of the survivor's full slab (a remote free queues the slab).
    in_full_slab: u64,
    /// An empty slot for `alloc_in`.
    slot: u64,
}

/// A workload that passes every crash point, in this order: a first allocation (the
/// registry slot, the thread heap, a new slab, the page lock), an owner's free, an
/// `alloc_in`, a named root, a remote free into a full slab, a drain of the child's own
/// delayed stack (filled by a second thread), a large block freed, and a recovery of a
/// process that died before.
fn workload(heap: &Heap, stage: &Stage) {
    let b = heap.alloc(100).unwrap();
    heap.free(b).unwrap();
    heap.alloc_in(stage.slot, 200).unwrap();
    heap.find_or_init("crash/root", || 5u64).unwrap();
    heap.free(stage.in_full_slab).unwrap();
    let cap = u64::from(GEOMETRY[class_of(48)].capacity);
    let mine: Vec<u64> = (0..=cap).map(|_| heap.alloc(48).unwrap()).collect();
    let other = heap.clone();
    std::thread::spawn(move || other.free(mine[0]).unwrap()).join().unwrap();
    let large = heap.alloc(1 << 20).unwrap(); // drains the delayed stack first
    heap.free(large).unwrap();
    heap.recover();
}

fn dies_at(point: &str) {
    let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("crash").unwrap()).unwrap();
    // A process that died holding a thread heap, for the workload's recovery.
    let h = &heap;
    let victim = fork(move || {
        let kept: Vec<u64> = (0..100).map(|_| h.alloc(64).unwrap()).collect();
        h.free(kept[0]).unwrap();
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        0
    });
    assert_eq!(victim.wait_status(), 128 + libc::SIGKILL);
    // The survivor's first slab of 64 B blocks is full.
    let cap = u64::from(GEOMETRY[class_of(64)].capacity);
    let full: Vec<u64> = (0..=cap).map(|_| heap.alloc(64).unwrap()).collect();
    let stage = Stage { in_full_slab: full[0], slot: heap.alloc_zeroed(64).unwrap() };

    let child = fork(|| {
        shmpool::crash::arm(point);
        workload(&heap, &stage);
        0
    });
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL, "{point}: the workload passes the point");

    // Not held up: the page lock (which a large block needs) and a small block, on a
    // thread so that a wedge fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let survivor = heap.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let blocks = (survivor.alloc(4 << 20), survivor.alloc(100));
        let _ = tx.send((blocks, started.elapsed()));
    });
    let ((big, small), waited) =
        rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{point}: wedged"));
    assert!(waited < Duration::from_secs(1), "{point}: the survivor waited {waited:?}");

    let report = heap.recover();
    heap.check().unwrap_or_else(|e| panic!("{point}: after recovery ({report:?}): {e}"));
    // A recorded allocation stands or was undone, never leaked half made.
    let recorded = heap.segment().load_u64(stage.slot).unwrap();
    match point {
        "journal.taken" => assert_eq!(recorded, 0, "{point}: the unrecorded block went back"),
        "journal.recorded" => assert!(heap.usable_size(recorded).is_ok(), "{point}: the record stands"),
        _ => assert!(recorded == 0 || heap.usable_size(recorded).is_ok(), "{point}"),
    }
    if point == "root.init" {
        let root = heap.find_or_init("crash/root", || 9u64).unwrap();
        assert_eq!(root.read(heap.segment()).unwrap(), 9, "initialised again by the survivor");
    }

    // Allocates and frees normally.
    let blocks: Vec<(u64, usize)> = (0..2000u64)
        .map(|i| {
            let len = 16 + (i * 37 % 4000) as usize;
            let off = heap.alloc(len as u64).unwrap();
            heap.write(off, &pattern(off, len, 3)).unwrap();
            (off, len)
        })
        .collect();
    for &(off, len) in &blocks {
        let mut back = vec![0u8; len];
        heap.read(off, &mut back).unwrap();
        assert_eq!(back, pattern(off, len, 3), "{point}: a block changed");
        heap.free(off).unwrap();
    }
    for off in full.into_iter().skip(1).chain([big.unwrap(), small.unwrap()]) {
        heap.free(off).unwrap();
    }
    heap.check().unwrap_or_else(|e| panic!("{point}: after use: {e}"));
}
