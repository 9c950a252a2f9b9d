//! Processes killed at named crash points (`shmpool::crash`): the survivors are not
//! wedged, what the dead process left half updated is repaired, and they go on
//! allocating and freeing.

use crate::support::{fork, pattern, trial};
use libtest_mimic::Trial;
use shmpool::heap::Heap;
use shmpool::SegmentOptions;
use std::time::{Duration, Instant};

fn heap(max: u64) -> Heap {
    Heap::create(SegmentOptions::new().max_size(max).create_memfd("recovery").unwrap()).unwrap()
}

/// Kills the calling process as an outside SIGKILL would.
fn die() {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
}

pub fn tests() -> Vec<Trial> {
    vec![
        trial("recovery::a_dead_page_lock_holder_wedges_no_one", a_dead_page_lock_holder_wedges_no_one),
        trial("recovery::a_dead_owners_thread_heap_is_rebuilt", a_dead_owners_thread_heap_is_rebuilt),
        trial(
            "recovery::a_recoverer_that_dies_leaves_the_work_to_the_next",
            a_recoverer_that_dies_leaves_the_work_to_the_next,
        ),
        trial(
            "recovery::a_root_whose_initialiser_died_is_initialised_again",
            a_root_whose_initialiser_died_is_initialised_again,
        ),
        trial(
            "recovery::a_process_whose_main_thread_exited_is_alive",
            a_process_whose_main_thread_exited_is_alive,
        ),
        trial("recovery::a_slab_half_made_by_the_dead_goes_back", a_slab_half_made_by_the_dead_goes_back),
        trial("recovery::a_slow_page_lock_holder_is_waited_for", a_slow_page_lock_holder_is_waited_for),
        trial("recovery::an_owner_killed_draining_strands_no_slab", an_owner_killed_draining_strands_no_slab),
        trial("recovery::a_full_segment_recovers_before_it_fails", a_full_segment_recovers_before_it_fails),
    ]
}

/// A child dies holding the page lock: right after taking it, with a run's head marked
/// but not its tails, and with a run being freed half given back. The parent's next
/// large allocation takes the lock over within a second, repairs the page-run
/// allocator, and the heap is whole: the invariant walk is clean and every unit is
/// either free or in a run.
fn a_dead_page_lock_holder_wedges_no_one() {
    for point in ["page_lock.held", "pages.run.head", "pages.free.cleared"] {
        let heap = heap(64 << 20);
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

/// A child allocates 3,000 blocks, hands ten to the parent through the heap, frees most
/// of the rest (emptying its current slab) and dies: killed outright, or at a crash
/// point in the middle of its own alloc or free. `recover` rebuilds its thread heap from
/// the slabs' bitmaps: the half-done alloc or free counts as not done, the empty slab goes
/// back, the blocks it handed over are intact and free normally, the 1,000 it kept stay
/// allocated, and a new thread adopts the thread heap and allocates from it.
fn a_dead_owners_thread_heap_is_rebuilt() {
    for point in [None, Some("slab.pop"), Some("slab.release")] {
        let heap = heap(64 << 20);
        let mailbox = heap.alloc(10 * 8).unwrap();
        let h = &heap;
        let child = fork(move || {
            let blocks: Vec<u64> = (0..3000).map(|_| h.alloc(64).unwrap()).collect();
            for &off in &blocks {
                h.write(off, &pattern(off, 64, 7)).unwrap();
            }
            let handed: Vec<u8> = blocks[..10].iter().flat_map(|o| o.to_le_bytes()).collect();
            h.write(mailbox, &handed).unwrap();
            for &off in blocks[10..1000].iter().chain(&blocks[2000..]) {
                h.free(off).unwrap();
            }
            match point {
                Some(name) => shmpool::crash::arm(name),
                None => {
                    let _ = rustix::process::kill_process(
                        rustix::process::getpid(),
                        rustix::process::Signal::KILL,
                    );
                }
            }
            let last = h.alloc(64).unwrap();
            h.free(last).unwrap();
            0 // not reached
        });
        assert_eq!(child.wait_status(), 128 + libc::SIGKILL, "{point:?}: the child died");

        let report = heap.recover();
        assert_eq!((report.dead_processes, report.thread_heaps), (1, 1), "{point:?}: {report:?}");
        assert!(report.slabs_given_back >= 1, "{point:?}: the emptied current slab went back: {report:?}");
        let walk = heap.check().unwrap_or_else(|e| panic!("{point:?}: {e}"));
        assert_eq!(
            walk.slab_blocks,
            1 + 1010,
            "{point:?}: the mailbox, and the child's live blocks: {walk:?}"
        );
        let mut buf = [0u8; 80];
        heap.read(mailbox, &mut buf).unwrap();
        for off in buf.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())) {
            let mut block = [0u8; 64];
            heap.read(off, &mut block).unwrap();
            assert_eq!(block.to_vec(), pattern(off, 64, 7), "{point:?}: a handed-over block changed");
            heap.free(off).unwrap();
        }
        assert!(heap.processes().iter().all(|p| p.alive), "{point:?}: the dead child's slot is free");
        // A new thread adopts the rebuilt thread heap (the only one left over).
        let adopter = heap.clone();
        std::thread::spawn(move || {
            let blocks: Vec<u64> = (0..5000).map(|_| adopter.alloc(64).unwrap()).collect();
            let adopted = adopter.thread_heaps().iter().filter(|t| t.active).count();
            blocks.into_iter().for_each(|off| adopter.free(off).unwrap());
            assert_eq!(adopted, 2, "the parent's thread heap and the adopted one");
        })
        .join()
        .unwrap();
        let walk = heap.check().unwrap_or_else(|e| panic!("{point:?}, after adoption: {e}"));
        assert_eq!(walk.slab_blocks, 1 + 1000, "{point:?}: {walk:?}");
    }
}

/// One child dies holding a thread heap; a second dies while recovering it (it had
/// claimed the thread heap and not rebuilt it). The parent's recovery takes it up from
/// the second child's dead claim; no dead process keeps a registry slot.
fn a_recoverer_that_dies_leaves_the_work_to_the_next() {
    let heap = heap(64 << 20);
    let h = &heap;
    let owner = fork(move || {
        let kept: Vec<u64> = (0..500).map(|_| h.alloc(200).unwrap()).collect();
        kept[..250].iter().for_each(|&off| h.free(off).unwrap());
        die();
        0
    });
    assert_eq!(owner.wait_status(), 128 + libc::SIGKILL);
    let recoverer = fork(move || {
        shmpool::crash::arm("recover.rebuilding");
        h.recover();
        0
    });
    assert_eq!(recoverer.wait_status(), 128 + libc::SIGKILL, "the recoverer died rebuilding");
    let taken = heap.thread_heaps().into_iter().find(|t| t.active && !t.owner_alive).expect("left active");
    let report = heap.recover();
    // The dying recoverer freed the owner's registry slot (slots come first); its own
    // is left.
    assert_eq!((report.thread_heaps, report.dead_processes), (1, 1), "{report:?}");
    assert!(heap.processes().iter().all(|p| p.alive));
    assert!(heap.thread_heaps().iter().all(|t| t.index != taken.index || !t.active));
    let walk = heap.check().unwrap();
    assert_eq!(walk.slab_blocks, 250, "the dead owner's live blocks: {walk:?}");
}

/// A child dies initialising a named root (value written, root not published). The
/// parent's `find_or_init` does not wait out the timeout: it takes the entry over and
/// initialises the root with its own value, which every later caller then finds.
fn a_root_whose_initialiser_died_is_initialised_again() {
    let heap = heap(64 << 20);
    let h = &heap;
    let child = fork(move || {
        shmpool::crash::arm("root.init");
        let _ = h.find_or_init("config", || 1u64);
        0
    });
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL, "the child died initialising");
    let started = Instant::now();
    let root = heap.find_or_init("config", || 2u64).unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
    assert_eq!(root.read(heap.segment()).unwrap(), 2, "initialised again, by the survivor");
    let again = heap.find_or_init("config", || 3u64).unwrap();
    assert_eq!(again, root);
    heap.check().unwrap();
}

/// A process whose main thread has exited shows as a zombie in `/proc/PID/stat` while
/// its other threads run: it is alive, and its locks and thread heaps must not be taken
/// from it.
fn a_process_whose_main_thread_exited_is_alive() {
    let child = fork(|| {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY: ends the process from its last thread.
            unsafe { libc::_exit(0) };
        });
        // SAFETY: exit(2), not exit_group: only the calling (main) thread ends, without
        // unwinding; the spawned one runs on.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
        unreachable!("the thread has exited")
    });
    let pid = child.pid() as u32;
    std::thread::sleep(Duration::from_millis(100));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    assert_eq!(fields[0], "Z", "the main thread has exited: {stat}");
    let start: u64 = fields[19].parse().unwrap();
    assert!(shmpool::heap::process_alive(pid, start), "a process with a running thread is alive");
    assert_eq!(child.wait(), 0);
    assert!(!shmpool::heap::process_alive(pid, start));
}

/// A child dies making a slab's header (under the page lock, the run taken from the
/// pages). The process that takes the lock over gives the half-made slab's units back:
/// the walk is clean, and the child's thread heap, recovered, holds nothing.
fn a_slab_half_made_by_the_dead_goes_back() {
    let heap = heap(64 << 20);
    let units_before = heap.check().unwrap().free_units;
    let h = &heap;
    let child = fork(move || {
        shmpool::crash::arm("slab.new");
        let _ = h.alloc(100);
        0
    });
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL, "the child died making the slab");
    let off = heap.alloc(3000).unwrap(); // takes the page lock over: another class, a new slab
    heap.recover();
    let walk = heap.check().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((walk.slabs, walk.slab_blocks), (1, 1), "only the parent's slab: {walk:?}");
    heap.free(off).unwrap();
    assert!(heap.check().unwrap().free_units + 1 >= units_before, "the half-made slab's units came back");
}

/// A child holds the page lock for 300 ms, alive. The parent waits for it rather than
/// take the lock over, and the heap stays whole.
fn a_slow_page_lock_holder_is_waited_for() {
    let heap = heap(64 << 20);
    let h = &heap;
    let ready = heap.alloc(8).unwrap();
    let child = fork(move || {
        shmpool::crash::arm_pause("page_lock.held", Duration::from_millis(300));
        h.write(ready, &1u64.to_le_bytes()).unwrap();
        let big = h.alloc(2 << 20).unwrap(); // stops holding the lock
        h.free(big).unwrap();
        0
    });
    let mut flag = [0u8; 8];
    while flag == [0; 8] {
        heap.read(ready, &mut flag).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50)); // the child now sits in the lock
    let started = Instant::now();
    let big = heap.alloc(4 << 20).unwrap();
    let waited = started.elapsed();
    assert_eq!(child.wait(), 0);
    assert!(waited >= Duration::from_millis(150), "took the lock from a live holder after {waited:?}");
    heap.free(big).unwrap();
    heap.check().unwrap();
}

/// A child fills a slab; the parent frees one of its blocks, which queues the full slab
/// on the child's delayed stack; the child dies having taken the stack, before handling
/// it. Recovery unflags the slab (the walk is clean) and every block comes back.
fn an_owner_killed_draining_strands_no_slab() {
    use shmpool::heap::class::{class_of, GEOMETRY};
    let heap = heap(64 << 20);
    let cap = GEOMETRY[class_of(64)].capacity as u64;
    let mailbox = heap.alloc(8 * cap).unwrap();
    let go = heap.alloc(8).unwrap();
    let h = &heap;
    let child = fork(move || {
        // One more than a slab holds: the first slab is put aside as full.
        let blocks: Vec<u64> = (0..=cap).map(|_| h.alloc(64).unwrap()).collect();
        let bytes: Vec<u8> = blocks[..cap as usize].iter().flat_map(|o| o.to_le_bytes()).collect();
        h.write(mailbox, &bytes).unwrap();
        h.write(go, &1u64.to_le_bytes()).unwrap();
        let mut flag = [0u8; 8];
        while flag != 2u64.to_le_bytes() {
            h.read(go, &mut flag).unwrap();
        }
        shmpool::crash::arm("drain.popped");
        let _ = h.alloc(1 << 20); // a large block: remote frees are taken first
        0
    });
    let mut flag = [0u8; 8];
    while flag != 1u64.to_le_bytes() {
        heap.read(go, &mut flag).unwrap();
    }
    let mut bytes = vec![0u8; 8 * cap as usize];
    heap.read(mailbox, &mut bytes).unwrap();
    let blocks: Vec<u64> = bytes.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
    heap.free(blocks[0]).unwrap(); // into the full slab: queues it
    heap.write(go, &2u64.to_le_bytes()).unwrap();
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL, "the child died draining");
    let report = heap.recover();
    assert_eq!(report.thread_heaps, 1, "{report:?}");
    heap.check().unwrap_or_else(|e| panic!("{e}"));
    for &off in &blocks[1..] {
        heap.free(off).unwrap();
    }
    heap.check().unwrap_or_else(|e| panic!("{e}"));
}

/// A child fills most of a segment with small blocks, hands them all to the parent and
/// dies; the parent frees them (remote frees, which the dead owner never collects). An
/// allocation that no longer fits at the segment's maximum recovers first: the dead
/// child's slabs, empty once their remote frees are collected, come back and serve it.
fn a_full_segment_recovers_before_it_fails() {
    const N: u64 = 70_000; // the mailbox, 8 bytes a block, is then a large block
    let heap = heap(16 << 20);
    let mailbox = heap.alloc(8 * N).unwrap();
    let h = &heap;
    let child = fork(move || {
        let blocks: Vec<u8> = (0..N).flat_map(|_| h.alloc(128).unwrap().to_le_bytes()).collect();
        h.write(mailbox, &blocks).unwrap();
        die();
        0
    });
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL);
    let mut bytes = vec![0u8; (8 * N) as usize];
    heap.read(mailbox, &mut bytes).unwrap();
    for off in bytes.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())) {
        heap.free(off).unwrap();
    }
    heap.free(mailbox).unwrap();
    assert!(heap.processes().iter().any(|p| !p.alive), "not recovered yet");
    let big = heap.alloc(8 << 20).expect("the dead child's emptied slabs serve it");
    assert!(heap.processes().iter().all(|p| p.alive), "recovered on the way");
    heap.free(big).unwrap();
    heap.check().unwrap();
}
