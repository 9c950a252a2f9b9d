//! The pools (`SlotPool`, `FreeList`, `BumpArena`) on every backend, in a heap and by
//! name; their errors; several processes loaning, handing over, waiting and freeing at
//! once; and random operation sequences against a model.

use crate::conformance::{self, Fixture};
use crate::support::{fork, pattern, trial, unique_name, wait_all, wait_until, SharedHeap, ShmGuard};
use libtest_mimic::Trial;
use proptest::prelude::*;
use shmpool::heap::Heap;
use shmpool::pools::{BlockError, BumpArena, FreeList, Host, Pool, PoolError, SlotPool};
use shmpool::segment::Access;
use shmpool::{Segment, SegmentOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

macro_rules! on_every_backend {
    ($v:ident, $($check:ident),*) => {
        for (backend, make) in [
            ("heap", conformance::heap as fn() -> Fixture),
            ("memfd", conformance::memfd),
            ("shm", conformance::shm),
            ("huge", conformance::huge),
            ("file", conformance::file),
        ] {
            $(
                $v.push(Trial::test(format!("pools::{backend}::{}", stringify!($check)), move || {
                    $check(make());
                    Ok(())
                }));
            )*
        }
    };
}

pub fn tests() -> Vec<Trial> {
    let mut v = Vec::new();
    on_every_backend!(
        v,
        slot_pool_loans_every_slot_once,
        free_list_frees_one_by_one,
        bump_arena_bumps_and_resets
    );
    v.extend([
        trial("pools::pools_live_in_a_heap_and_by_name", pools_live_in_a_heap_and_by_name),
        trial("pools::open_validates_the_region", open_validates_the_region),
        trial("pools::bad_offsets_and_double_frees_are_refused", bad_offsets_and_double_frees_are_refused),
        trial("pools::loan_timeout_gives_up_after_its_timeout", loan_timeout_gives_up_after_its_timeout),
        trial("pools::a_waiting_thread_gets_a_returned_slot", a_waiting_thread_gets_a_returned_slot),
        trial("pools::slot_loans_are_exclusive_across_processes", slot_loans_are_exclusive_across_processes),
        trial(
            "pools::a_loan_handed_over_is_returned_in_another_process",
            a_loan_handed_over_is_returned_in_another_process,
        ),
        trial(
            "pools::a_waiter_in_another_process_is_woken_by_a_return",
            a_waiter_in_another_process_is_woken_by_a_return,
        ),
        trial(
            "pools::free_list_slots_are_exclusive_across_processes",
            free_list_slots_are_exclusive_across_processes,
        ),
        trial(
            "pools::bump_blocks_of_many_processes_are_disjoint",
            bump_blocks_of_many_processes_are_disjoint,
        ),
        trial("pools::crash::slots.returned", a_returner_killed_before_waking_leaves_no_waiter_asleep),
        trial("pools::crash::freelist.popped", a_free_list_survives_an_allocator_killed_mid_pop),
        trial("pools::crash::freelist.claimed", a_free_list_survives_a_freer_killed_mid_push),
        trial("pools::random_slot_pool_ops_match_a_model", random_slot_pool_ops_match_a_model),
        trial("pools::random_free_list_ops_match_a_model", random_free_list_ops_match_a_model),
        trial("pools::random_bump_ops_match_a_model", random_bump_ops_match_a_model),
    ]);
    v
}

/// A fixture's segment as a pool host, and the offset pools start at.
fn host(f: &mut Option<Fixture>) -> (Host, u64) {
    let f = f.as_mut().expect("fixture");
    let seg = f.reopen.as_ref().map_or_else(
        || std::mem::replace(&mut f.seg, SegmentOptions::new().create_heap().unwrap()),
        |reopen| reopen(),
    );
    let at = seg.data_start().next_multiple_of(64);
    (Host::from(seg), at)
}

/// Every slot once, distinct and in bounds; exhaustion; the bytes stay each slot's own;
/// a second handle sees the same pool; returns make every slot free again.
fn slot_pool_loans_every_slot_once(f: Fixture) {
    let mut f = Some(f);
    let (h, at) = host(&mut f);
    const SLOTS: u64 = 130; // three bitmap words, the last one partial
    let pool = SlotPool::create(h.clone(), at, 100, SLOTS).unwrap();
    assert_eq!((pool.capacity(), pool.slot_size(), pool.available()), (SLOTS, 104, SLOTS));
    let other = SlotPool::open(h.clone(), at).unwrap();
    let loans: Vec<_> = (0..SLOTS).map(|_| pool.try_loan().expect("a free slot")).collect();
    assert!(pool.try_loan().is_none() && other.try_loan().is_none(), "exhausted");
    assert_eq!(other.available(), 0);
    let indices: BTreeSet<u32> = loans.iter().map(|l| l.index()).collect();
    assert_eq!(indices, (0..SLOTS as u32).collect());
    for l in &loans {
        assert_eq!(l.offset(), pool.slot_offset(l.index()).unwrap());
        assert_eq!(pool.index_of(l.offset() + 3).unwrap(), (l.index(), 3));
        l.write(0, &pattern(l.offset(), 104, 1)).unwrap();
    }
    for l in &loans {
        let mut got = vec![0; 104];
        other.adopt(l.index()).unwrap().into_index(); // seen loaned from the other handle
        l.read(0, &mut got).unwrap();
        assert_eq!(got, pattern(l.offset(), 104, 1), "slot {} kept its bytes", l.index());
        assert!(matches!(l.write(100, &[0; 5]), Err(BlockError::BadOffset(_))));
    }
    drop(loans);
    assert_eq!(other.available(), SLOTS);
    let l = other.try_loan_at(7).unwrap();
    assert_eq!(pool.try_loan_at(7).unwrap_err(), BlockError::Exhausted);
    drop(l);
    pool.reset();
    assert_eq!(pool.available(), SLOTS);
}

/// Allocations are distinct slots; each keeps its bytes; double frees are refused;
/// exhaustion, then reuse after frees; reset frees everything.
fn free_list_frees_one_by_one(f: Fixture) {
    let mut f = Some(f);
    let (h, at) = host(&mut f);
    let list = FreeList::create(h.clone(), at, 60, 50).unwrap();
    let other = FreeList::open(h, at).unwrap();
    let offs: Vec<u64> = (0..50).map(|_| list.alloc().unwrap()).collect();
    assert_eq!(other.alloc(), Err(BlockError::Exhausted));
    assert_eq!(offs.iter().collect::<BTreeSet<_>>().len(), 50);
    for &o in &offs {
        other.write(o, &pattern(o, 64, 2)).unwrap();
    }
    for &o in &offs {
        let mut got = vec![0; 64];
        list.read(o, &mut got).unwrap();
        assert_eq!(got, pattern(o, 64, 2));
    }
    for &o in offs.iter().step_by(2) {
        other.free(o).unwrap();
        assert_eq!(list.free(o), Err(BlockError::NotAllocated(o)), "double free of {o}");
    }
    assert_eq!((list.available(), list.available_bytes()), (25, 25 * 64));
    let again: BTreeSet<u64> = (0..25).map(|_| list.alloc().unwrap()).collect();
    assert_eq!(again, offs.iter().step_by(2).copied().collect(), "freed slots come back");
    list.reset();
    assert_eq!(other.available(), 50);
}

/// Blocks are aligned, disjoint and inside the arena; exhaustion leaves the arena
/// usable; reset empties it at once.
fn bump_arena_bumps_and_resets(f: Fixture) {
    let mut f = Some(f);
    let (h, at) = host(&mut f);
    let arena = BumpArena::create(h.clone(), at, 10_000).unwrap();
    let other = BumpArena::open(h, at).unwrap();
    let mut blocks = Vec::new();
    for (i, align) in [1u64, 8, 64, 4096, 2, 16].into_iter().cycle().enumerate().take(40) {
        let size = 1 + (i as u64 * 37) % 200;
        match arena.alloc(size, align) {
            Ok(o) => {
                assert_eq!(o % align, 0);
                other.write(o, &pattern(o, size as usize, 3)).unwrap();
                blocks.push((o, size));
            }
            Err(e) => assert_eq!(e, BlockError::Exhausted),
        }
    }
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "disjoint: {w:?}");
    }
    for &(o, size) in &blocks {
        let mut got = vec![0; size as usize];
        arena.read(o, &mut got).unwrap();
        assert_eq!(got, pattern(o, size as usize, 3));
    }
    assert_eq!(other.used_bytes() + other.available_bytes(), 10_000);
    assert_eq!(arena.alloc(10_001, 1), Err(BlockError::TooLarge { size: 10_001, max: 10_000 }));
    assert_eq!(arena.alloc(8, 3), Err(BlockError::BadAlign(3)));
    assert!(matches!(arena.free(blocks[0].0), Err(BlockError::Unsupported(_))));
    other.reset();
    assert_eq!(arena.available_bytes(), 10_000);
    assert!(matches!(arena.write(blocks[0].0, b"x"), Err(BlockError::BadOffset(_))), "reset freed it");
    assert!(arena.alloc(10_000 - (arena.offset() + 64) % 64, 1).is_ok(), "the whole arena again");
}

fn heap(max: u64) -> Heap {
    Heap::create(SegmentOptions::new().max_size(max).create_memfd("pools").unwrap()).unwrap()
}

/// `create_in` places a pool in a heap block; `named` meets at one pool and refuses a
/// different geometry or kind under the same name.
fn pools_live_in_a_heap_and_by_name() {
    let h = heap(64 << 20);
    let in_heap = SlotPool::create_in(&h, 32, 10).unwrap();
    assert!(h.usable_size(in_heap.offset()).is_ok(), "the pool is a heap block");
    let a = SlotPool::named(&h, "slots", 32, 10).unwrap();
    let b = SlotPool::named(&h, "slots", 32, 10).unwrap();
    assert_eq!(a.offset(), b.offset());
    let l = a.try_loan().unwrap();
    assert_eq!(b.available(), 9);
    drop(l);
    assert!(matches!(SlotPool::named(&h, "slots", 32, 11), Err(PoolError::Mismatch(_))));
    assert!(matches!(FreeList::named(&h, "slots", 32, 10), Err(PoolError::WrongKind { .. })));
    let f = FreeList::named(&h, "list", 16, 4).unwrap();
    assert_eq!(FreeList::named(&h, "list", 16, 4).unwrap().offset(), f.offset());
    let z = BumpArena::named(&h, "arena", 1000).unwrap();
    assert_eq!(BumpArena::named(&h, "arena", 1000).unwrap().offset(), z.offset());
    assert!(matches!(BumpArena::named(&h, "arena", 999), Err(PoolError::Mismatch(_))));
    // Only the winners' regions stay allocated: the losers freed theirs.
    let before = h.check().unwrap().allocated_bytes;
    for _ in 0..10 {
        drop(FreeList::named(&h, "list", 16, 4).unwrap());
    }
    assert_eq!(h.check().unwrap().allocated_bytes, before);
}

/// Opening checks alignment, the magic and kind, the layout, and the committed bytes;
/// a read-only mapping cannot be formatted.
fn open_validates_the_region() {
    let name = unique_name("pool-open");
    let _g = ShmGuard(name.clone());
    let seg = Arc::new(SegmentOptions::new().size(64 << 10).max_size(1 << 20).create_shm(&name).unwrap());
    let at = 4096;
    assert!(matches!(SlotPool::open(seg.clone(), at), Err(PoolError::NotAPool(4096))));
    assert!(matches!(SlotPool::create(seg.clone(), at + 8, 8, 8), Err(PoolError::Misaligned(_))));
    assert!(matches!(SlotPool::create(seg.clone(), at, 8, 0), Err(PoolError::InvalidGeometry(_))));
    assert!(matches!(FreeList::create(seg.clone(), at, 0, 8), Err(PoolError::InvalidGeometry(_))));
    assert!(matches!(SlotPool::create(seg.clone(), at, u64::MAX / 2, 8), Err(PoolError::InvalidGeometry(_))));
    assert!(
        matches!(BumpArena::create(seg.clone(), at, 2 << 20), Err(PoolError::Grow(_))),
        "beyond reserved"
    );
    FreeList::create(seg.clone(), at, 8, 8).unwrap();
    let err = SlotPool::open(seg.clone(), at).unwrap_err();
    assert!(matches!(err, PoolError::WrongKind { found: "FreeList", expected: "SlotPool", .. }), "{err}");
    // A header whose slot count no longer matches its layout.
    seg.atomic_u64(at + 24).unwrap().store(1 << 40, Ordering::Relaxed);
    assert!(matches!(FreeList::open(seg.clone(), at), Err(PoolError::Corrupted { .. })));
    // A pool made in a growth is seen by a mapping made before it.
    let early = Segment::open_shm(&name, Access::ReadWrite).unwrap();
    let far = seg.committed() + 4096;
    let big = BumpArena::create(seg.clone(), 8192, far).unwrap();
    assert_eq!(BumpArena::open(early, big.offset()).unwrap().capacity(), far);
    // A pool past the committed bytes is refused, and so is a read-only mapping.
    let end = seg.committed();
    assert!(matches!(FreeList::open(seg.clone(), end), Err(PoolError::Access(_))));
    let ro = || Segment::open_shm(&name, Access::ReadOnly).unwrap();
    assert!(matches!(SlotPool::create(ro(), at, 8, 8), Err(PoolError::ReadOnly)));
    assert!(matches!(BumpArena::open(ro(), big.offset()), Err(PoolError::ReadOnly)));
}

/// Offsets that are not blocks, ranges that leave their block and frees of free blocks
/// are refused by every pool, through the `Pool` interface.
fn bad_offsets_and_double_frees_are_refused() {
    let h = heap(64 << 20);
    let slots = SlotPool::create_in(&h, 64, 4).unwrap();
    let list = FreeList::create_in(&h, 64, 4).unwrap();
    let pools: [&dyn Pool; 2] = [&slots, &list];
    for p in pools {
        let a = p.allocate(64).unwrap();
        assert_eq!(p.allocate(65), Err(BlockError::TooLarge { size: 65, max: 64 }));
        assert_eq!(p.free(a + 8), Err(BlockError::BadOffset(a + 8)), "an interior offset");
        assert_eq!(p.free(3), Err(BlockError::BadOffset(3)), "outside the pool");
        assert_eq!(p.free(a + 64 * 100), Err(BlockError::BadOffset(a + 6400)));
        assert!(p.write(a + 60, &[0; 8]).is_err(), "a write leaving its block");
        p.write(a + 8, b"inside").unwrap();
        let mut got = [0; 6];
        p.read(a + 8, &mut got).unwrap();
        assert_eq!(&got, b"inside");
        assert_eq!(p.available_bytes(), 3 * 64);
        p.free(a).unwrap();
        assert_eq!(p.free(a), Err(BlockError::NotAllocated(a)), "a double free");
        assert_eq!(p.write(a, b"x"), Err(BlockError::NotAllocated(a)), "a write to a freed block");
        assert_eq!(p.available_bytes(), 4 * 64);
        let all: Vec<u64> = (0..4).map(|_| p.allocate(1).unwrap()).collect();
        assert_eq!(p.allocate(1), Err(BlockError::Exhausted));
        p.reset().unwrap();
        assert_eq!(p.available_bytes(), 4 * 64, "{all:?} freed by reset");
    }
    assert_eq!(slots.release(4), Err(BlockError::BadIndex(4)));
    assert!(matches!(slots.adopt(2), Err(BlockError::NotAllocated(_))), "adopting a free slot");
}

fn loan_timeout_gives_up_after_its_timeout() {
    let h = heap(64 << 20);
    let pool = SlotPool::create_in(&h, 8, 1).unwrap();
    let held = pool.loan();
    let t = Instant::now();
    assert!(pool.loan_timeout(Duration::from_millis(50)).is_none());
    assert!(t.elapsed() >= Duration::from_millis(50), "waited its timeout");
    assert!(pool.loan_timeout(Duration::ZERO).is_none());
    drop(held);
    assert!(pool.loan_timeout(Duration::ZERO).is_some());
}

fn a_waiting_thread_gets_a_returned_slot() {
    let h = heap(64 << 20);
    let pool = SlotPool::create_in(&h, 8, 2).unwrap();
    let held = [pool.loan(), pool.loan()];
    std::thread::scope(|s| {
        let waiters: Vec<_> = (0..3)
            .map(|_| s.spawn(|| pool.loan_timeout(Duration::from_secs(3)).map(|l| l.into_index())))
            .collect();
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
        let got: Vec<Option<u32>> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(got.iter().flatten().count(), 2, "two returned slots, two waiters served: {got:?}");
        // the third waiter timed out only after the others kept their slots
        for i in got.into_iter().flatten() {
            pool.release(i).unwrap();
        }
    });
    assert_eq!(pool.available(), 2);
}

/// Four processes loan from eight slots 20,000 times each; every holder stamps its slot
/// and checks the stamp before returning it, so a slot loaned twice at once shows.
fn slot_loans_are_exclusive_across_processes() {
    let sh = SharedHeap::new("pool-excl");
    let pool = SlotPool::named(&sh.heap, "pool", 16, 8).unwrap();
    let children: Vec<_> = (1..=4u64)
        .map(|p| {
            let sh = &sh;
            fork(move || {
                let heap = sh.attach();
                let pool = SlotPool::named(&heap, "pool", 16, 8).unwrap();
                let seg = heap.segment();
                sh.barrier(&heap, 4);
                for k in 0..20_000u64 {
                    let l = pool.loan();
                    let stamp = p << 32 | k;
                    seg.atomic_u64(l.offset()).unwrap().store(stamp, Ordering::Relaxed);
                    if k % 64 == 0 {
                        std::thread::yield_now();
                    }
                    if seg.atomic_u64(l.offset()).unwrap().load(Ordering::Relaxed) != stamp {
                        return 1;
                    }
                }
                0
            })
        })
        .collect();
    assert_eq!(wait_all(children, || ()), [0, 0, 0, 0]);
    assert_eq!(pool.available(), 8, "every loan came back");
}

/// A loan made in one process is adopted and returned in another, and back.
fn a_loan_handed_over_is_returned_in_another_process() {
    let sh = SharedHeap::new("pool-hand");
    let pool = SlotPool::named(&sh.heap, "pool", 64, 4).unwrap();
    let word = sh.word(&sh.heap, "handover");
    let loan = pool.try_loan().unwrap();
    loan.write(0, b"from the parent").unwrap();
    let cell = sh.heap.segment().atomic_u64(word).unwrap();
    cell.store(u64::from(loan.into_index()) + 1, Ordering::Release);
    assert_eq!(pool.available(), 3);
    let child = fork(|| {
        let heap = sh.attach();
        let pool = SlotPool::named(&heap, "pool", 64, 4).unwrap();
        let cell = heap.segment().atomic_u64(word).unwrap();
        let i = (cell.load(Ordering::Acquire) - 1) as u32;
        let l = pool.adopt(i).unwrap();
        let mut got = [0; 15];
        l.read(0, &mut got).unwrap();
        assert_eq!(&got, b"from the parent");
        drop(l); // returned here
        let mine = pool.try_loan().unwrap();
        cell.store(u64::from(mine.into_index()) + 100, Ordering::Release);
        0
    });
    assert_eq!(child.wait(), 0);
    let theirs = (cell.load(Ordering::Acquire) - 100) as u32;
    assert_eq!(pool.available(), 3, "the parent's loan came back, the child's is held");
    pool.release(theirs).unwrap();
    assert_eq!(pool.release(theirs), Err(BlockError::NotAllocated(pool.slot_offset(theirs).unwrap())));
    assert_eq!(pool.available(), 4);
}

/// A child waits for a slot of a full pool; the parent returns one: the child is woken
/// and gets it long before its 20 s timeout.
fn a_waiter_in_another_process_is_woken_by_a_return() {
    let sh = SharedHeap::new("pool-wake");
    let pool = SlotPool::named(&sh.heap, "pool", 8, 1).unwrap();
    let word = sh.word(&sh.heap, "waiting");
    let held = pool.loan();
    let child = fork(|| {
        let heap = sh.attach();
        let pool = SlotPool::named(&heap, "pool", 8, 1).unwrap();
        heap.segment().atomic_u64(word).unwrap().store(1, Ordering::Release);
        let got = pool.loan_timeout(Duration::from_secs(20)).map(|l| l.index());
        i32::from(got != Some(0))
    });
    wait_until("the child waits", || sh.heap.segment().load_u64(word).unwrap() == 1);
    std::thread::sleep(Duration::from_millis(50)); // most likely asleep by now
    drop(held);
    assert_eq!(child.wait(), 0);
    assert_eq!(pool.available(), 1);
}

/// Four processes allocate and free 64-byte slots of one free list, each stamping its
/// slots: no slot is handed to two at once, and all come back.
fn free_list_slots_are_exclusive_across_processes() {
    let sh = SharedHeap::new("list-excl");
    let list = FreeList::named(&sh.heap, "list", 64, 16).unwrap();
    let children: Vec<_> = (1..=4u64)
        .map(|p| {
            let sh = &sh;
            fork(move || {
                let heap = sh.attach();
                let list = FreeList::named(&heap, "list", 64, 16).unwrap();
                let mut held = Vec::new();
                sh.barrier(&heap, 4);
                for k in 0..20_000u64 {
                    if held.len() < 3 {
                        if let Ok(o) = list.alloc() {
                            list.write(o, &pattern(o, 64, p << 20 | k)).unwrap();
                            held.push((o, p << 20 | k));
                        }
                    } else {
                        let (o, seed) = held.swap_remove((k % 3) as usize);
                        let mut got = [0; 64];
                        list.read(o, &mut got).unwrap();
                        if got[..] != pattern(o, 64, seed)[..] {
                            return 1;
                        }
                        list.free(o).unwrap();
                    }
                }
                for (o, _) in held {
                    list.free(o).unwrap();
                }
                0
            })
        })
        .collect();
    assert_eq!(wait_all(children, || ()), [0, 0, 0, 0]);
    assert_eq!(list.available(), 16);
    let all: BTreeSet<u64> = (0..16).map(|_| list.alloc().unwrap()).collect();
    assert_eq!(all.len(), 16, "the stack holds every slot once");
}

/// Four processes bump one arena at once, each recording its blocks in a free list of
/// records: the blocks are disjoint and keep their writers' bytes.
fn bump_blocks_of_many_processes_are_disjoint() {
    let sh = SharedHeap::new("bump-procs");
    let arena = BumpArena::named(&sh.heap, "arena", 4 << 20).unwrap();
    let table = sh.heap.alloc_zeroed(4 * 2000 * 16).unwrap();
    let children: Vec<_> = (0..4u64)
        .map(|p| {
            let sh = &sh;
            fork(move || {
                let heap = sh.attach();
                let arena = BumpArena::named(&heap, "arena", 4 << 20).unwrap();
                sh.barrier(&heap, 4);
                for k in 0..2000u64 {
                    let size = 1 + (k * 7 + p) % 300;
                    let o = arena.alloc(size, 1 << (k % 5)).unwrap();
                    arena.write(o, &pattern(o, size as usize, p)).unwrap();
                    let rec = table + (p * 2000 + k) * 16;
                    heap.segment().atomic_u64(rec).unwrap().store(o, Ordering::Relaxed);
                    heap.segment().atomic_u64(rec + 8).unwrap().store(size, Ordering::Relaxed);
                }
                0
            })
        })
        .collect();
    assert_eq!(wait_all(children, || ()), [0, 0, 0, 0]);
    let seg = sh.heap.segment();
    let mut blocks: Vec<(u64, u64, u64)> = (0..8000u64)
        .map(|r| (seg.load_u64(table + r * 16).unwrap(), seg.load_u64(table + r * 16 + 8).unwrap(), r / 2000))
        .collect();
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "disjoint: {w:?}");
    }
    for &(o, size, p) in &blocks {
        let mut got = vec![0; size as usize];
        arena.read(o, &mut got).unwrap();
        assert_eq!(got, pattern(o, size as usize, p));
    }
}

/// The crash point `slots.returned`: a returner dies after clearing its slot's bit and
/// the waiters' flag, before waking them. A waiter with no deadline still gets the slot
/// (its sleeps are bounded), and the pool is whole.
fn a_returner_killed_before_waking_leaves_no_waiter_asleep() {
    let sh = SharedHeap::new("pool-crash-ret");
    let pool = SlotPool::named(&sh.heap, "pool", 8, 1).unwrap();
    // The bitmap's one word, right after the pool's 64-byte header.
    let word = sh.heap.segment().atomic_u64(pool.offset() + 64).unwrap();
    let returner = fork(|| {
        let heap = sh.attach();
        let pool = SlotPool::named(&heap, "pool", 8, 1).unwrap();
        let loan = pool.try_loan().unwrap();
        let word = heap.segment().atomic_u64(pool.offset() + 64).unwrap();
        wait_until("the waiter flagged the word", || word.load(Ordering::Acquire) >> 63 != 0);
        shmpool::crash::arm("slots.returned");
        drop(loan);
        0
    });
    wait_until("the returner's loan", || word.load(Ordering::Acquire) & 1 != 0);
    let waiter = fork(|| {
        let heap = sh.attach();
        let pool = SlotPool::named(&heap, "pool", 8, 1).unwrap();
        let got = pool.loan().index();
        i32::from(got != 0)
    });
    assert_eq!(returner.wait_status(), 128 + libc::SIGKILL, "killed at the point");
    assert_eq!(waiter.wait(), 0, "the waiter got the slot");
    assert_eq!(pool.available(), 1);
}

/// The crash point `freelist.popped`: an allocator dies with the slot off the stack but
/// not yet marked taken. Its one slot is lost; every other allocates and frees, and a
/// free of the lost slot is refused.
fn a_free_list_survives_an_allocator_killed_mid_pop() {
    let h = heap(64 << 20);
    let list = FreeList::create_in(&h, 16, 8).unwrap();
    let lost = list.alloc().unwrap();
    list.free(lost).unwrap(); // on top: the child's allocation takes it
    let child = fork(|| {
        shmpool::crash::arm("freelist.popped");
        let _ = list.alloc();
        0
    });
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL);
    free_list_works_without(&list, lost);
}

/// The crash point `freelist.claimed`: a freer dies with its slot's link claimed but the
/// slot not yet on the stack. The slot is lost (a second free of it is refused); the
/// others allocate and free.
fn a_free_list_survives_a_freer_killed_mid_push() {
    let h = heap(64 << 20);
    let list = FreeList::create_in(&h, 16, 8).unwrap();
    let lost = list.alloc().unwrap();
    let child = fork(|| {
        shmpool::crash::arm("freelist.claimed");
        let _ = list.free(lost);
        0
    });
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL);
    free_list_works_without(&list, lost);
}

/// Every slot but `lost` allocates, each once; they all free; `lost` is never handed
/// out, and its free is refused.
fn free_list_works_without(list: &FreeList, lost: u64) {
    for _ in 0..3 {
        let got: BTreeSet<u64> = std::iter::from_fn(|| list.alloc().ok()).collect();
        assert_eq!(got.len() as u64, list.capacity() - 1);
        assert!(!got.contains(&lost));
        for o in got {
            list.free(o).unwrap();
        }
    }
    assert_eq!(list.free(lost), Err(BlockError::NotAllocated(lost)));
}

#[derive(Debug, Clone)]
enum Op {
    Take,
    /// Return (or free) the k-th held block, modulo the count held.
    Give(usize),
    /// Return the k-th block again after it was given back (a double free).
    GiveAgain(usize),
    /// Free at an offset off a block's start.
    Stray(u64),
    Reset,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        6 => Just(Op::Take),
        5 => any::<usize>().prop_map(Op::Give),
        1 => any::<usize>().prop_map(Op::GiveAgain),
        1 => (1u64..200).prop_map(Op::Stray),
        1 => Just(Op::Reset),
    ];
    prop::collection::vec(op, 1..200)
}

fn run_proptest(f: impl Fn(Vec<Op>) -> Result<(), TestCaseError>) {
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 64, ..Default::default() });
    runner.run(&ops(), f).unwrap();
}

/// Runs `ops` on a fixed-slot pool (through `Pool`) beside a model of the taken blocks.
fn fixed_slots_match_a_model(p: &dyn Pool, slots: u64, slot: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut held: BTreeMap<u64, u8> = BTreeMap::new();
    let mut given: Vec<u64> = Vec::new();
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            Op::Take => match p.allocate(slot) {
                Ok(o) => {
                    prop_assert!(!held.contains_key(&o), "handed out twice: {o}");
                    p.write(o, &[n as u8; 8]).unwrap();
                    held.insert(o, n as u8);
                }
                Err(e) => prop_assert_eq!((e, held.len() as u64), (BlockError::Exhausted, slots)),
            },
            Op::Give(k) if !held.is_empty() => {
                let (&o, &v) = held.iter().nth(k % held.len()).unwrap();
                let mut got = [0; 8];
                p.read(o, &mut got).unwrap();
                prop_assert_eq!(got, [v; 8], "block {} kept its bytes", o);
                p.free(o).unwrap();
                held.remove(&o);
                given.push(o);
            }
            Op::GiveAgain(k) if !given.is_empty() => {
                let o = given[k % given.len()];
                let r = p.free(o);
                if held.contains_key(&o) {
                    held.remove(&o); // allocated again since: a real free
                    prop_assert_eq!(r, Ok(()));
                } else {
                    prop_assert_eq!(r, Err(BlockError::NotAllocated(o)));
                }
            }
            Op::Stray(d) if !held.is_empty() => {
                let &o = held.keys().next().unwrap();
                let r = p.free(o + 1 + d % (slot - 1));
                prop_assert!(matches!(r, Err(BlockError::BadOffset(_))), "{:?}", r);
            }
            Op::Reset => {
                p.reset().unwrap();
                held.clear();
            }
            _ => {}
        }
        prop_assert_eq!(p.available_bytes(), (slots - held.len() as u64) * slot);
    }
    Ok(())
}

fn random_slot_pool_ops_match_a_model() {
    random_fixed_slot_ops(|h| {
        let p = SlotPool::create_in(h, 16, 70).unwrap();
        (p.offset(), Box::new(p))
    });
}

fn random_free_list_ops_match_a_model() {
    random_fixed_slot_ops(|h| {
        let p = FreeList::create_in(h, 16, 70).unwrap();
        (p.offset(), Box::new(p))
    });
}

/// Random operations on fresh pools of 70 slots of 16 bytes that `make` places in a heap.
fn random_fixed_slot_ops(make: fn(&Heap) -> (u64, Box<dyn Pool>)) {
    let h = heap(64 << 20);
    run_proptest(|ops| {
        let (at, pool) = make(&h);
        fixed_slots_match_a_model(&*pool, 70, 16, ops)?;
        drop(pool);
        let _ = h.free(at);
        Ok(())
    });
}

/// Bump allocations against a model of the used bytes: each block starts at the model's
/// aligned end, exhaustion exactly when the block does not fit, reset back to zero.
fn random_bump_ops_match_a_model() {
    let h = heap(64 << 20);
    run_proptest(|ops| {
        let arena = BumpArena::create_in(&h, 5000).unwrap();
        let data = arena.offset() + 64;
        let mut used = 0u64;
        for op in ops {
            match op {
                Op::Take | Op::Give(_) => {
                    let (size, align) = match op {
                        Op::Give(k) => (k as u64 % 300, 1u64 << (k % 7)),
                        _ => (40, 16),
                    };
                    let start = (data + used).next_multiple_of(align);
                    match arena.alloc(size, align) {
                        Ok(o) => {
                            prop_assert_eq!(o, start);
                            used = start + size - data;
                        }
                        Err(e) => {
                            prop_assert_eq!(e, BlockError::Exhausted);
                            prop_assert!(start + size - data > 5000);
                        }
                    }
                }
                Op::Reset => {
                    arena.reset();
                    used = 0;
                }
                _ => prop_assert!(matches!(arena.free(data), Err(BlockError::Unsupported(_)))),
            }
            prop_assert_eq!(arena.used_bytes(), used);
        }
        let _ = h.free(arena.offset());
        Ok(())
    });
}
