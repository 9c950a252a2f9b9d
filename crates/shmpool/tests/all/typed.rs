//! The typed layer: `Offset<T>`, `ShmBox<T>` handed between processes, named roots
//! raced by several processes, and `allocator_api2` collections read by a forked child.

use crate::support::{fork, trial, unique_name, wait_all, ShmGuard};
use libtest_mimic::Trial;
use shmpool::heap::{Heap, RootError, ShmBox, MAX_ROOTS};
use shmpool::segment::{Access, AccessError};
use shmpool::{Offset, Segment, SegmentOptions, ShmSafe};
use std::sync::atomic::{AtomicU64, Ordering};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("typed::offsets_check_bounds_and_alignment", offsets_check_bounds_and_alignment),
        trial("typed::shm_box_owns_and_hands_over", shm_box_owns_and_hands_over),
        trial("typed::named_roots_meet_across_processes", named_roots_meet_across_processes),
        trial("typed::named_root_errors", named_root_errors),
        trial("typed::allocator_api2_vec_seen_by_forked_child", allocator_api2_vec_seen_by_forked_child),
    ]
}

#[derive(ShmSafe, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Account {
    id: u64,
    balance: i64,
    history: [u32; 4],
    next: Offset<Account>,
}

fn named_heap(tag: &str) -> (ShmGuard, Heap) {
    let name = unique_name(tag);
    let seg = SegmentOptions::new().max_size(256 << 20).create_shm(&name).unwrap();
    (ShmGuard(name), Heap::create(seg).unwrap())
}

fn attach(name: &str) -> Heap {
    Heap::attach(Segment::open_shm(name, Access::ReadWrite).unwrap()).unwrap()
}

fn offsets_check_bounds_and_alignment() {
    let seg = SegmentOptions::new().size(64 << 10).create_memfd("typed").unwrap();
    let a = Account { id: 7, balance: -3, history: [1, 2, 3, 4], next: Offset::null() };
    let at = Offset::<Account>::from_raw(seg.data_start() + 64);
    at.write(&seg, &a).unwrap();
    assert_eq!(at.read(&seg).unwrap(), a);
    let odd = Offset::<Account>::from_raw(seg.data_start() + 4);
    assert!(matches!(odd.read(&seg), Err(AccessError::Misaligned { .. })));
    let end = Offset::<Account>::from_raw(seg.committed() - 8);
    assert!(matches!(end.write(&seg, &a), Err(AccessError::OutOfBounds { .. })));
    assert!(matches!(Offset::<Account>::null().read(&seg), Err(AccessError::InHeader { .. })));
}

fn shm_box_owns_and_hands_over() {
    let (guard, heap) = named_heap("box");
    let mut b =
        ShmBox::new_in(&heap, Account { id: 1, balance: 10, history: [0; 4], next: Offset::null() }).unwrap();
    b.balance += 5;
    assert_eq!(b.balance, 15);
    let off = b.into_offset();
    assert_eq!(off.read(heap.segment()).unwrap().balance, 15, "still allocated after into_offset");
    // Another process takes it over by offset, changes it and drops it (freeing it).
    let name = guard.0.clone();
    let child = fork(move || {
        let heap = attach(&name);
        // SAFETY: the parent handed this block over and no longer uses it.
        let mut b = unsafe { ShmBox::from_offset(&heap, off) }.unwrap();
        b.history[0] = 99;
        i32::from(b.id != 1)
    });
    assert_eq!(child.wait(), 0);
    assert!(heap.usable_size(off.get()).is_err(), "the receiver's drop freed the block");
    heap.check().unwrap();
    // from_offset refuses what is not an allocated block
    // SAFETY: the offset is bogus on purpose; from_offset must refuse it.
    assert!(unsafe { ShmBox::<Account>::from_offset(&heap, Offset::from_raw(off.get() + 16)) }.is_err());
}

fn named_roots_meet_across_processes() {
    let (guard, heap) = named_heap("roots");
    const PROCS: u64 = 4;
    let children: Vec<_> = (0..PROCS)
        .map(|_| {
            let name = guard.0.clone();
            fork(move || {
                let heap = attach(&name);
                let me = std::process::id() as u64;
                let root = heap
                    .find_or_init("bank/ledger", || Account {
                        id: me,
                        balance: 0,
                        history: [0; 4],
                        next: Offset::null(),
                    })
                    .unwrap();
                let count = heap.find_or_init("bank/visits", || 0u64).unwrap();
                heap.segment().atomic_u64(count.get()).unwrap().fetch_add(1, Ordering::AcqRel);
                // report which offset this process was given
                let report = heap.find_or_init("bank/offsets", || [0u64; 4]).unwrap();
                let slots = heap.segment().atomic_u64(report.get()).unwrap() as *const AtomicU64;
                // SAFETY: the root holds 4 u64 words; a CAS claims the first free one.
                let slots = unsafe { std::slice::from_raw_parts(slots, 4) };
                let free = slots
                    .iter()
                    .find(|s| s.compare_exchange(0, root.get(), Ordering::AcqRel, Ordering::Relaxed).is_ok());
                i32::from(free.is_none())
            })
        })
        .collect();
    let codes = wait_all(children, || {});
    assert!(codes.iter().all(|&c| c == 0), "{codes:?}");
    let ledger = heap.find_or_init::<Account>("bank/ledger", || unreachable!("already made")).unwrap();
    let offsets = heap
        .find_or_init::<[u64; 4]>("bank/offsets", || unreachable!())
        .unwrap()
        .read(heap.segment())
        .unwrap();
    assert_eq!(offsets, [ledger.get(); 4], "every process got the same root");
    let visits = heap.find_or_init::<u64>("bank/visits", || unreachable!()).unwrap();
    assert_eq!(visits.read(heap.segment()).unwrap(), PROCS, "all processes share one counter");
    let owner = ledger.read(heap.segment()).unwrap().id;
    assert!(owner > 0 && owner != std::process::id() as u64, "one child initialised it");
}

fn named_root_errors() {
    let (_g, heap) = named_heap("rooterr");
    heap.find_or_init("a", || 1u64).unwrap();
    assert!(matches!(
        heap.find_or_init("a", || 1u32),
        Err(RootError::TypeMismatch { size: 8, align: 8, .. })
    ));
    assert_eq!(heap.find_or_init("", || 1u64), Err(RootError::BadName(0)));
    assert_eq!(heap.find_or_init(&"x".repeat(97), || 1u64), Err(RootError::BadName(97)));
    for i in 1..MAX_ROOTS {
        heap.find_or_init(&format!("root-{i}"), || u64::from(i)).unwrap();
    }
    assert_eq!(heap.find_or_init("one too many", || 0u32), Err(RootError::TableFull));
    let err = heap.find_or_init("root-7", || 0u32).unwrap_err();
    assert_eq!(err, RootError::TypeMismatch { name: "root-7".into(), size: 8, align: 8 });
    // a full table still finds what it holds
    assert_eq!(heap.find_or_init::<u64>("root-9", || 0).unwrap().read(heap.segment()).unwrap(), 9);
    heap.check().unwrap();
}

fn allocator_api2_vec_seen_by_forked_child() {
    let (_g, heap) = named_heap("vec");
    let mut v: allocator_api2::vec::Vec<u64, Heap> = allocator_api2::vec::Vec::new_in(heap.clone());
    for i in 0..10_000u64 {
        v.push(i * 3); // grows by reallocating inside the segment
    }
    let result = heap.find_or_init("sum", || 0u64).unwrap();
    let child = fork(|| {
        // same mapping address after fork: the Vec's buffer pointer is valid here
        let sum: u64 = v.iter().sum();
        heap.segment().atomic_u64(result.get()).unwrap().store(sum, Ordering::Release);
        0
    });
    assert_eq!(child.wait(), 0);
    assert_eq!(result.read(heap.segment()).unwrap(), 3 * 9_999 * 10_000 / 2);
    let (ptr, _) = heap
        .resolve((v.as_ptr() as usize - heap.segment().backend().base().as_ptr() as usize) as u64)
        .unwrap();
    assert_eq!(ptr.as_ptr() as *const u64, v.as_ptr(), "the buffer is a heap block");
    drop(v);
    heap.check().unwrap();
}
