//! The heap in one process: every size class and large blocks, every refused free,
//! realloc / zeroed / aligned allocation, exhaustion at the reserved maximum, remote
//! frees between threads (direct and through the full-slab path), and a property test
//! against a model. Every test ends with the invariant walk.

use crate::support::{pattern, trial};
use libtest_mimic::Trial;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shmpool::heap::{AllocError, FreeError, Heap};
use shmpool::segment::Access;
use shmpool::{Segment, SegmentOptions};
use std::collections::HashMap;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("heap::every_size_round_trips", every_size_round_trips),
        trial("heap::bad_frees_are_refused_and_change_nothing", bad_frees_are_refused_and_change_nothing),
        trial("heap::realloc_zeroed_and_aligned", realloc_zeroed_and_aligned),
        trial("heap::exhaustion_at_max_size_then_keeps_working", exhaustion_at_max_size_then_keeps_working),
        trial("heap::remote_frees_between_threads_are_reused", remote_frees_between_threads_are_reused),
        trial("heap::remote_frees_into_full_slabs_come_back", remote_frees_into_full_slabs_come_back),
        trial("heap::thread_exit_abandons_and_others_adopt", thread_exit_abandons_and_others_adopt),
        trial("heap::random_ops_match_a_model", random_ops_match_a_model),
        trial("heap::attach_validates", attach_validates),
        trial(
            "heap::thread_heaps_of_a_dead_process_are_reported_orphaned",
            thread_heaps_of_a_dead_process_are_reported_orphaned,
        ),
        trial(
            "heap::slabs_emptied_by_their_owner_return_to_the_pages",
            slabs_emptied_by_their_owner_return_to_the_pages,
        ),
        trial("heap::a_given_back_slab_is_not_remembered", a_given_back_slab_is_not_remembered),
        trial(
            "heap::a_trickle_of_remote_frees_is_gathered_in_batches",
            a_trickle_of_remote_frees_is_gathered_in_batches,
        ),
        trial(
            "heap::a_trickle_of_remote_frees_serves_when_memory_is_out",
            a_trickle_of_remote_frees_serves_when_memory_is_out,
        ),
        trial(
            "heap::slabs_emptied_by_remote_frees_return_to_the_pages",
            slabs_emptied_by_remote_frees_return_to_the_pages,
        ),
        trial(
            "heap::attach_to_a_small_plain_segment_is_refused_not_a_sigbus",
            attach_to_a_small_plain_segment_is_refused_not_a_sigbus,
        ),
    ]
}

fn heap(max: u64) -> Heap {
    Heap::create(SegmentOptions::new().max_size(max).create_memfd("heap-test").unwrap()).unwrap()
}

fn fill(heap: &Heap, off: u64, len: u64, seed: u64) {
    heap.write(off, &pattern(off, len as usize, seed)).unwrap();
}

fn verify(heap: &Heap, off: u64, len: u64, seed: u64) {
    verify_moved(heap, off, off, len, seed);
}

/// Checks the block at `off` holds what `fill` wrote at `origin` (before a realloc moved it).
fn verify_moved(heap: &Heap, off: u64, origin: u64, len: u64, seed: u64) {
    let mut buf = vec![0; len as usize];
    heap.read(off, &mut buf).unwrap();
    assert!(buf == pattern(origin, len as usize, seed), "block {off} ({len} bytes) was overwritten");
}

fn every_size_round_trips() {
    let heap = heap(512 << 20);
    let mut sizes: Vec<u64> = (1..=4096).step_by(7).collect();
    sizes.extend([8191, 8192, 65535, 65536, 100_000, 524_288, 524_289, 3 << 20, 17 << 20]);
    let blocks: Vec<(u64, u64)> = sizes.iter().map(|&s| (heap.alloc(s).unwrap(), s)).collect();
    for &(off, size) in &blocks {
        assert_eq!(off % 16, 0);
        let usable = heap.usable_size(off).unwrap();
        assert!(
            usable >= size && (size <= 128 || usable - size < usable / 8 || size > 512 << 10),
            "{size} -> {usable}"
        );
        fill(&heap, off, size, size);
    }
    let report = heap.check().unwrap();
    assert_eq!(report.large_blocks, 3);
    for &(off, size) in &blocks {
        verify(&heap, off, size, size);
        heap.free(off).unwrap();
    }
    let report = heap.check().unwrap();
    assert_eq!((report.slab_blocks, report.large_blocks), (0, 0));
}

fn bad_frees_are_refused_and_change_nothing() {
    let heap = heap(64 << 20);
    let a = heap.alloc(64).unwrap();
    let big = heap.alloc(1 << 20).unwrap();
    let gone = heap.alloc(1 << 20).unwrap();
    heap.free(gone).unwrap(); // its units stay managed, now free
    fill(&heap, a, 64, 1);
    let before = heap.check().unwrap();
    let arena_end = heap.segment().committed() + (1 << 30);
    let cases = [
        (0, FreeError::OutOfRange(0)),
        (arena_end, FreeError::OutOfRange(arena_end)),
        (a + 1, FreeError::Misaligned(a + 1)),
        (a + 16, FreeError::Interior(a + 16)),
        (big + 4096, FreeError::Interior(big + 4096)),
    ];
    for (off, want) in cases {
        assert_eq!(heap.free(off), Err(want), "free({off})");
    }
    // offsets in free units of the arena
    assert_eq!(heap.free(gone), Err(FreeError::NotAllocated(gone)));
    assert_eq!(heap.free(gone + 4096), Err(FreeError::NotAllocated(gone + 4096)));
    // the slab header of a's slab is not a block
    let slab_start = a & !0xffff;
    assert!(matches!(heap.free(slab_start), Err(FreeError::Interior(_))));
    assert_eq!(heap.check().unwrap(), before, "refused frees changed nothing");
    verify(&heap, a, 64, 1);
    heap.free(a).unwrap();
    assert_eq!(heap.free(a), Err(FreeError::DoubleFree(a)));
    assert!(matches!(heap.usable_size(a), Err(FreeError::DoubleFree(_))));
    heap.free(big).unwrap();
    assert!(heap.free(big).is_err(), "large double free");
    heap.check().unwrap();
}

fn realloc_zeroed_and_aligned() {
    let heap = heap(64 << 20);
    let a = heap.alloc(100).unwrap();
    fill(&heap, a, 100, 5);
    let b = heap.realloc(a, 5000).unwrap();
    verify_moved(&heap, b, a, 100, 5);
    assert!(heap.usable_size(b).unwrap() >= 5000);
    let c = heap.realloc(b, 4000).unwrap();
    assert_eq!(c, b, "shrinking a little stays in place");
    let d = heap.realloc(c, 40).unwrap();
    assert_ne!(d, c, "shrinking a lot moves to a smaller class");
    verify_moved(&heap, d, a, 40, 5);
    assert!(heap.free(c).is_err(), "the old block was freed by realloc");
    heap.free(d).unwrap();

    // a dirty block comes back zeroed from alloc_zeroed
    let dirty = heap.alloc(256).unwrap();
    heap.write(dirty, &[0xff; 256]).unwrap();
    heap.free(dirty).unwrap();
    let z = heap.alloc_zeroed(256).unwrap();
    let mut buf = [1u8; 256];
    heap.read(z, &mut buf).unwrap();
    assert_eq!(buf, [0u8; 256]);

    for align in [16u64, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536] {
        for size in [1u64, 24, 100, 1000, 5000, 70_000] {
            let off = heap.alloc_aligned(size, align).unwrap();
            let (ptr, len) = heap.resolve(off).unwrap();
            assert_eq!(off % align, 0, "offset of {size} bytes at align {align}");
            assert_eq!(ptr.as_ptr() as u64 % align, 0, "address of {size} bytes at align {align}");
            assert!(len >= size);
            heap.free(off).unwrap();
        }
    }
    assert_eq!(heap.alloc_aligned(8, 3), Err(AllocError::BadAlign(3)));
    assert_eq!(heap.alloc_aligned(8, 0), Err(AllocError::BadAlign(0)));
    assert_eq!(heap.alloc_aligned(8, 128 << 10), Err(AllocError::BadAlign(128 << 10)));
    heap.check().unwrap();
    // Every backend maps at a multiple of MAP_ALIGN, in every process that maps it.
    for seg in [
        SegmentOptions::new().max_size(8 << 20).create_heap().unwrap(),
        SegmentOptions::new().max_size(8 << 20).create_memfd("align").unwrap(),
    ] {
        assert_eq!(seg.backend().base().as_ptr() as u64 % shmpool::segment::MAP_ALIGN, 0);
    }
}

fn exhaustion_at_max_size_then_keeps_working() {
    let heap = heap(16 << 20);
    let mut blocks = Vec::new();
    let err = loop {
        match heap.alloc(4000) {
            Ok(off) => blocks.push(off),
            Err(e) => break e,
        }
        assert!(blocks.len() < 100_000, "never ran out");
    };
    assert!(matches!(err, AllocError::OutOfMemory(_)), "{err}");
    assert!(heap.segment().committed() <= 16 << 20);
    assert!(matches!(heap.alloc(64 << 20), Err(AllocError::TooLarge(_))));
    heap.check().unwrap();
    for off in blocks.drain(..).step_by(2) {
        heap.free(off).unwrap();
    }
    for _ in 0..100 {
        heap.alloc(4000).expect("memory freed is allocatable again");
    }
    heap.check().unwrap();
}

/// Thread A allocates, thread B frees them all (remote frees); A's next rounds reuse the
/// memory instead of growing.
fn remote_frees_between_threads_are_reused() {
    let heap = heap(256 << 20);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u64>>();
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let freer = {
        let heap = heap.clone();
        std::thread::spawn(move || {
            for batch in rx {
                for off in batch {
                    verify(&heap, off, 64, off);
                    heap.free(off).unwrap();
                }
                done_tx.send(()).unwrap();
            }
        })
    };
    let mut committed = Vec::new();
    for _ in 0..20 {
        let batch: Vec<u64> = (0..5000).map(|_| heap.alloc(64).unwrap()).collect();
        for &off in &batch {
            fill(&heap, off, 64, off);
        }
        tx.send(batch).unwrap();
        done.recv().unwrap();
        let report = heap.check().unwrap();
        assert_eq!(report.slab_blocks, report.pending_remote, "everything was freed remotely");
        committed.push(heap.segment().committed());
    }
    drop(tx);
    freer.join().unwrap();
    assert_eq!(committed.first(), committed.last(), "remote frees were reused, no growth");
    heap.check().unwrap();
}

/// Fill whole slabs so they go on the full list; remote frees then travel through the
/// owner's delayed list and the slabs come back into use.
/// Regression for slabs emptied only by remote frees: they must go back to the pages.
fn remote_frees_into_full_slabs_come_back() {
    let heap = heap(256 << 20);
    let n = 20_000; // many 1 KiB slabs' worth of 1 KiB blocks
    let blocks: Vec<u64> = (0..n).map(|_| heap.alloc(1024).unwrap()).collect();
    let before = heap.segment().committed();
    let other = heap.clone();
    let list = blocks.clone();
    std::thread::spawn(move || list.iter().for_each(|&b| other.free(b).unwrap())).join().unwrap();
    let report = heap.check().unwrap();
    assert_eq!(report.pending_remote, n as u64, "all frees wait for the owner");
    let slabs = report.slabs;
    // The owner's next allocation drains the delayed list: the emptied full slabs go back
    // to the pages, and the memory serves the new allocations without growth.
    let again: Vec<u64> = (0..n).map(|_| heap.alloc(1024).unwrap()).collect();
    assert_eq!(heap.segment().committed(), before, "the freed memory was reused");
    let report = heap.check().unwrap();
    assert_eq!((report.slab_blocks, report.pending_remote), (n as u64, 0));
    assert_eq!(report.slabs, slabs, "as many slabs as before: retired ones were reused");
    assert_eq!(again.len(), blocks.len());
}

fn thread_exit_abandons_and_others_adopt() {
    let heap = heap(64 << 20);
    let h = heap.clone();
    let kept = std::thread::spawn(move || {
        let off = h.alloc(64).unwrap();
        fill(&h, off, 64, 9);
        off
    })
    .join()
    .unwrap();
    let owners = heap.thread_heaps();
    assert_eq!(owners.len(), 1);
    assert!(!owners[0].active, "its thread ended: abandoned, waiting for adoption");
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start: u64 = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(19).unwrap().parse().unwrap();
    assert_eq!(
        (owners[0].pid, owners[0].start_time),
        (std::process::id(), start),
        "owner recorded for recovery"
    );
    // this thread adopts the exited thread's heap rather than taking a new one
    let mine = heap.alloc(64).unwrap();
    let owners = heap.thread_heaps();
    assert_eq!(owners.len(), 1);
    assert!(owners[0].active);
    assert_eq!(owners[0].tid, rustix::thread::gettid().as_raw_nonzero().get() as u32);
    verify(&heap, kept, 64, 9);
    heap.free(kept).unwrap(); // now a local free: we own that slab
    heap.free(mine).unwrap();
    heap.check().unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(u64),
    Free(usize),
    Realloc(usize, u64),
    BadFree(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![8 => 1u64..2048, 2 => 2048u64..70_000, 1 => 500_000u64..2_000_000];
    prop_oneof![
        5 => size.clone().prop_map(Op::Alloc),
        4 => any::<usize>().prop_map(Op::Free),
        1 => (any::<usize>(), size).prop_map(|(i, s)| Op::Realloc(i, s)),
        1 => (any::<usize>(), 1u64..64).prop_map(|(i, d)| Op::BadFree(i, d)),
    ]
}

fn run_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let heap = heap(128 << 20);
    let mut live: HashMap<u64, (u64, u64)> = HashMap::new(); // off -> (size, seed)
    let mut freed: Vec<u64> = Vec::new();
    let pick = |live: &HashMap<u64, (u64, u64)>, i: usize| {
        let mut keys: Vec<u64> = live.keys().copied().collect();
        keys.sort_unstable();
        (!keys.is_empty()).then(|| keys[i % keys.len()])
    };
    for (step, op) in ops.into_iter().enumerate() {
        let seed = step as u64;
        match op {
            Op::Alloc(size) => {
                let off = heap.alloc(size).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(!live.contains_key(&off), "handed out twice");
                fill(&heap, off, size, seed);
                live.insert(off, (size, seed));
            }
            Op::Free(i) => {
                if let Some(off) = pick(&live, i) {
                    let (size, s) = live.remove(&off).unwrap();
                    verify(&heap, off, size, s);
                    prop_assert_eq!(heap.free(off), Ok(()));
                    freed.push(off);
                }
            }
            Op::Realloc(i, new) => {
                if let Some(off) = pick(&live, i) {
                    let (size, s) = live.remove(&off).unwrap();
                    let to = heap.realloc(off, new).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    verify_moved(&heap, to, off, size.min(new), s);
                    fill(&heap, to, new, seed);
                    live.insert(to, (new, seed));
                }
            }
            Op::BadFree(i, delta) => {
                if let Some(&off) = freed.get(i % freed.len().max(1)) {
                    if !live.contains_key(&off) {
                        prop_assert!(heap.free(off).is_err(), "double free of {} accepted", off);
                    }
                }
                if let Some(off) = pick(&live, i) {
                    // Strictly inside the block: past a small block lies the next one.
                    let inside = delta % heap.usable_size(off).unwrap();
                    if inside != 0 {
                        prop_assert!(heap.free(off + inside).is_err(), "interior free accepted");
                    }
                }
            }
        }
    }
    heap.check().map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (&off, &(size, s)) in &live {
        verify(&heap, off, size, s);
    }
    Ok(())
}

fn random_ops_match_a_model() {
    let config = Config { cases: 64, failure_persistence: None, ..Config::default() };
    TestRunner::new(config).run(&proptest::collection::vec(op(), 1..300), run_model).unwrap();
}

fn attach_validates() {
    use shmpool::heap::HeapError;
    use shmpool::segment::Access;
    let name = crate::support::unique_name("heapattach");
    let _g = crate::support::ShmGuard(name.clone());
    let seg = SegmentOptions::new().max_size(64 << 20).create_shm(&name).unwrap();
    let plain = shmpool::Segment::open_shm(&name, Access::ReadWrite).unwrap();
    assert!(matches!(Heap::attach(plain), Err(HeapError::NotAHeap)));
    let heap = Heap::create(seg).unwrap();
    let off = heap.alloc(64).unwrap();
    let again = Heap::create(shmpool::Segment::open_shm(&name, Access::ReadWrite).unwrap());
    assert!(matches!(again, Err(HeapError::AlreadyFormatted)));
    let other = Heap::attach(shmpool::Segment::open_shm(&name, Access::ReadWrite).unwrap()).unwrap();
    assert_eq!(other.usable_size(off), Ok(64));
    other.free(off).unwrap();
    assert_eq!(heap.free(off), Err(FreeError::DoubleFree(off)));
}

/// Regression: attaching a heap to a plain segment whose committed size ends before the
/// heap metadata would end used to touch unbacked pages (SIGBUS) while refusing it.
fn attach_to_a_small_plain_segment_is_refused_not_a_sigbus() {
    use shmpool::heap::HeapError;
    let seg = SegmentOptions::new().size(64 << 10).max_size(16 << 20).create_memfd("small").unwrap();
    assert!(matches!(Heap::attach(seg), Err(HeapError::NotAHeap)));
    let ro = SegmentOptions::new().size(64 << 10).max_size(1 << 30).create_memfd("small2").unwrap();
    assert!(matches!(Heap::attach(ro), Err(HeapError::NotAHeap)));
}

/// The owner frees every block of many slabs, full ones and partly used ones: all but the
/// current slab of the class go back to the pages, and alloc/free of one block then
/// takes no slab and gives none back.
fn slabs_emptied_by_their_owner_return_to_the_pages() {
    let heap = heap(64 << 20);
    let blocks: Vec<u64> = (0..50_000).map(|_| heap.alloc(64).unwrap()).collect();
    let full = heap.check().unwrap();
    assert!(full.slabs > 40, "{full:?}");
    // Free in an order that empties slabs on the full list and behind the current one.
    for &off in blocks.iter().step_by(2).chain(blocks.iter().skip(1).step_by(2)) {
        heap.free(off).unwrap();
    }
    let report = heap.check().unwrap();
    assert_eq!((report.slabs, report.slab_blocks), (1, 0), "only the current slab stays: {report:?}");
    assert_eq!(report.free_units, full.free_units + full.slabs - 1);
    for _ in 0..1000 {
        heap.free(heap.alloc(64).unwrap()).unwrap();
    }
    assert_eq!(heap.check().unwrap().slabs, 1);
}

/// The free path remembers the last slab a thread freed into. Once that slab is emptied
/// and given back, and its unit serves another class, frees there are judged by the new
/// class: an offset inside a 128-byte block that was a 64-byte block's start is refused.
fn a_given_back_slab_is_not_remembered() {
    use shmpool::heap::class::{class_of, GEOMETRY};
    let heap = heap(64 << 20);
    let cap = GEOMETRY[class_of(64)].capacity as usize;
    // Slab A full (then put aside), slab B current with one block.
    let a: Vec<u64> = (0..cap).map(|_| heap.alloc(64).unwrap()).collect();
    let b = heap.alloc(64).unwrap();
    let units_before = heap.check().unwrap().free_units;
    for &off in &a {
        heap.free(off).unwrap(); // the last one empties A, which goes back
    }
    assert_eq!(heap.check().unwrap().free_units, units_before + 1, "slab A was given back");
    // A's unit comes back as a slab of 128-byte blocks.
    let big: Vec<u64> = (0..64).map(|_| heap.alloc(128).unwrap()).collect();
    assert!(big.iter().any(|&o| o & !0xffff == a[0] & !0xffff), "the unit was reused");
    for &off in &big {
        assert_eq!(heap.free(off + 64), Err(FreeError::Interior(off + 64)));
    }
    for &off in &big {
        heap.free(off).unwrap();
    }
    heap.free(b).unwrap();
    heap.check().unwrap();
}

/// When another thread frees a slab's blocks a few at a time, the owner does not come
/// back for each few: it lets the slab gather frees behind a new slab, and takes them
/// when it returns to it.
fn a_trickle_of_remote_frees_is_gathered_in_batches() {
    use shmpool::heap::class::{class_of, GEOMETRY};
    let heap = heap(64 << 20);
    let cap = GEOMETRY[class_of(64)].capacity as usize;
    let unit = |off: u64| off >> 16;
    let first: Vec<u64> = (0..cap).map(|_| heap.alloc(64).unwrap()).collect();
    assert!(first.iter().all(|&o| unit(o) == unit(first[0])), "one slab");
    let trickle = first[..3].to_vec();
    let other = heap.clone();
    std::thread::spawn(move || trickle.iter().for_each(|&o| other.free(o).unwrap())).join().unwrap();
    // Three frees came back: too few to come back for, so a new slab serves now.
    let next = heap.alloc(64).unwrap();
    assert_ne!(unit(next), unit(first[0]), "a new slab, not the three blocks");
    heap.check().unwrap();
    // Once the new slab is full, the first one's three blocks are used.
    let second: Vec<u64> = (1..cap).map(|_| heap.alloc(64).unwrap()).collect();
    assert!(second.iter().all(|&o| unit(o) == unit(next)));
    let back: Vec<u64> = (0..3).map(|_| heap.alloc(64).unwrap()).collect();
    for off in &back {
        assert!(first[..3].contains(off), "{off} is one of the blocks freed remotely");
    }
    let report = heap.check().unwrap();
    assert_eq!((report.slabs, report.slab_blocks), (2, 2 * cap as u64));
}

/// Regression: with every unit in use, a block freed back by another thread is
/// allocated again, not refused for want of room for a new slab.
fn a_trickle_of_remote_frees_serves_when_memory_is_out() {
    use shmpool::heap::class::{class_of, GEOMETRY};
    let heap = heap(8 << 20);
    let cap = GEOMETRY[class_of(64)].capacity as usize;
    let blocks: Vec<u64> = (0..cap).map(|_| heap.alloc(64).unwrap()).collect();
    let mut units = Vec::new();
    while let Ok(off) = heap.alloc_aligned(1, 64 << 10) {
        units.push(off);
    }
    assert!(!units.is_empty());
    let (other, freed) = (heap.clone(), blocks[0]);
    std::thread::spawn(move || other.free(freed).unwrap()).join().unwrap();
    assert_eq!(heap.alloc(64), Ok(freed), "the block freed back serves");
    assert!(matches!(heap.alloc(64), Err(AllocError::OutOfMemory(_))));
    heap.check().unwrap();
}

/// Regression: slabs emptied only by other threads' frees used to stay with their owner
/// for ever, so a large allocation could fail with every slab empty.
fn slabs_emptied_by_remote_frees_return_to_the_pages() {
    // ~24 MiB of 64-byte blocks in a 32 MiB segment: a 16 MiB block (an aligned run of 256
    // units) only fits once the slabs emptied by remote frees have gone back.
    let heap = heap(32 << 20);
    let blocks: Vec<u64> = (0..360_000).map(|_| heap.alloc(64).unwrap()).collect();
    let other = heap.clone();
    std::thread::spawn(move || blocks.iter().for_each(|&b| other.free(b).unwrap())).join().unwrap();
    let big = heap.alloc(16 << 20).expect("the emptied slabs' units are free again");
    heap.free(big).unwrap();
    heap.check().unwrap();
}

/// A child that allocates and exits without dropping its handle leaves an active thread
/// heap and a registry slot behind; `thread_heaps` and `processes` tell that its owner is
/// dead. A child that attaches by fd recovers it on attach: the thread heap is rebuilt and
/// left for adoption, the slot freed. A child that drops its own handle gives its slot
/// back and leaves its thread heap abandoned, for adoption.
fn thread_heaps_of_a_dead_process_are_reported_orphaned() {
    let heap = heap(64 << 20);
    heap.free(heap.alloc(64).unwrap()).unwrap();
    let h = &heap;
    let child = crate::support::fork(move || i32::from(h.alloc(64).is_err()));
    let child_pid = child.pid() as u32;
    assert_eq!(child.wait(), 0);

    let owners = heap.thread_heaps();
    let procs = heap.processes();
    let mine = owners.iter().find(|t| t.pid == std::process::id()).expect("this process's heap");
    assert!(mine.active && mine.owner_alive);
    let me = procs.iter().find(|p| p.pid == std::process::id()).expect("this process's slot");
    assert!(me.alive && me.thread_heaps == 1 && me.slot == mine.process_slot, "{me:?}");
    let orphan = owners.iter().find(|t| t.pid == child_pid).expect("the child's heap");
    assert!(orphan.active && !orphan.owner_alive, "{orphan:?}");
    assert!(!shmpool::heap::process_alive(child_pid, orphan.start_time));
    let dead = procs.iter().find(|p| p.pid == child_pid).expect("the dead child's slot");
    assert!(!dead.alive && dead.thread_heaps == 1 && dead.slot == orphan.process_slot, "{dead:?}");

    let tidy = crate::support::fork(move || {
        let fd = h.segment().backend().handle().fd().unwrap().try_clone_to_owned().unwrap();
        let own = Heap::attach(Segment::from_fd(fd, Access::ReadWrite).unwrap()).unwrap();
        let off = own.alloc(64).unwrap();
        let me = std::process::id();
        let registered = own.processes().iter().any(|p| p.pid == me && p.alive && p.thread_heaps == 1);
        own.free(off).unwrap();
        drop(own);
        i32::from(!registered)
    });
    let tidy_pid = tidy.pid() as u32;
    assert_eq!(tidy.wait(), 0, "the child saw itself registered");

    let owners = heap.thread_heaps();
    let procs = heap.processes();
    let recovered = owners.iter().find(|t| t.index == orphan.index).expect("the dead child's thread heap");
    assert!(!recovered.active, "recovered on attach and left for adoption: {recovered:?}");
    assert!(procs.iter().all(|p| p.pid != child_pid), "the dead child's slot was freed: {procs:?}");
    let left = owners.iter().find(|t| t.pid == tidy_pid).expect("the tidy child's heap");
    assert!(!left.active, "dropping the handle abandons the thread heap: {left:?}");
    assert!(procs.iter().all(|p| p.pid != tidy_pid), "the slot was given back: {procs:?}");
    assert_eq!(procs.len(), 1, "{procs:?}");
    assert_eq!(heap.recover(), shmpool::heap::RecoveryReport::default(), "nothing left to recover");
    heap.check().unwrap();
}
