//! Multi-process stress: 4 forked processes × 2 threads share one heap. Each worker
//! allocates blocks of random sizes, writes a pattern, and frees them itself or hands
//! them to another worker through a mailbox in the segment, where the receiver verifies
//! the contents and frees them (remote frees). At the end the invariant walk must pass
//! and every block must be accounted for.

use crate::support::{fork, trial, unique_name, wait_all, ShmGuard};
use libtest_mimic::Trial;
use shmpool::heap::Heap;
use shmpool::{Segment, SegmentOptions};
use std::sync::atomic::{AtomicU64, Ordering};

pub fn tests() -> Vec<Trial> {
    vec![trial(
        "heap_stress::four_processes_two_threads_remote_frees",
        four_processes_two_threads_remote_frees,
    )]
}

const PROCS: u64 = 4;
const THREADS: u64 = 2;
const WORKERS: u64 = PROCS * THREADS;
const SLOTS: u64 = 256;
const OPS: u64 = 20_000;

struct Shared<'a> {
    heap: &'a Heap,
    /// WORKERS mailboxes of SLOTS offsets, then counters: [done, abort, handed, remote].
    table: u64,
}

impl Shared<'_> {
    fn word(&self, i: u64) -> &AtomicU64 {
        self.heap.segment().atomic_u64(self.table + 8 * i).unwrap()
    }
    fn slot(&self, worker: u64, s: u64) -> &AtomicU64 {
        self.word(worker * SLOTS + s)
    }
    fn counter(&self, i: u64) -> &AtomicU64 {
        self.word(WORKERS * SLOTS + i)
    }
}

fn rng(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `size` and a pattern of `off` into the block.
fn stamp(heap: &Heap, off: u64, size: u64) {
    let mut buf = vec![0u8; size as usize];
    buf[..8].copy_from_slice(&size.to_ne_bytes());
    for (i, b) in buf.iter_mut().enumerate().skip(8) {
        *b = (off.wrapping_add(i as u64).wrapping_mul(131) >> 3) as u8;
    }
    heap.write(off, &buf).unwrap();
}

/// Checks a stamped block; returns false if its contents were overwritten.
fn intact(heap: &Heap, off: u64) -> bool {
    let mut head = [0u8; 8];
    heap.read(off, &mut head).unwrap();
    let size = u64::from_ne_bytes(head);
    if !(8..=200_000).contains(&size) {
        return false;
    }
    let mut buf = vec![0u8; size as usize];
    heap.read(off, &mut buf).unwrap();
    buf.iter()
        .enumerate()
        .skip(8)
        .all(|(i, &b)| b == (off.wrapping_add(i as u64).wrapping_mul(131) >> 3) as u8)
}

fn size_of_op(r: u64) -> u64 {
    match r % 100 {
        0..=69 => 8 + r / 100 % 256,
        70..=94 => 8 + r / 100 % 8192,
        _ => 8 + r / 100 % 150_000,
    }
}

/// One worker; returns an error code (0 = fine).
fn worker(sh: &Shared<'_>, me: u64) -> i32 {
    let heap = sh.heap;
    let mut seed = 0x5EED ^ me.wrapping_mul(0x1234_5678_9abc);
    let mut mine: Vec<u64> = Vec::new();
    for _ in 0..OPS {
        if sh.counter(1).load(Ordering::Relaxed) != 0 {
            return 5; // another worker failed
        }
        let r = rng(&mut seed);
        match r % 10 {
            0..=4 => {
                let size = size_of_op(rng(&mut seed));
                let off = heap.alloc(size).unwrap();
                stamp(heap, off, size);
                mine.push(off);
            }
            5..=6 if !mine.is_empty() => {
                let off = mine.swap_remove((r / 10) as usize % mine.len());
                if !intact(heap, off) {
                    return 3;
                }
                heap.free(off).unwrap();
            }
            7..=8 if !mine.is_empty() => {
                let off = mine.swap_remove((r / 10) as usize % mine.len());
                let to = (me + 1 + r / 1000 % (WORKERS - 1)) % WORKERS;
                let s = r / 100_000 % SLOTS;
                // SYNC: Release pairs with the receiver's Acquire swap: the stamp is visible.
                if sh.slot(to, s).compare_exchange(0, off, Ordering::Release, Ordering::Relaxed).is_ok() {
                    sh.counter(2).fetch_add(1, Ordering::Relaxed);
                } else {
                    mine.push(off);
                }
            }
            _ => {
                if !drain(sh, me) {
                    return 4;
                }
            }
        }
    }
    for off in mine {
        if !intact(heap, off) {
            return 3;
        }
        heap.free(off).unwrap();
    }
    // Wait until everyone stopped sending, then take what is left.
    sh.counter(0).fetch_add(1, Ordering::AcqRel);
    while sh.counter(0).load(Ordering::Acquire) < WORKERS {
        if sh.counter(1).load(Ordering::Relaxed) != 0 {
            return 5;
        }
        std::thread::yield_now();
    }
    if drain(sh, me) {
        0
    } else {
        4
    }
}

/// Verifies and frees every block in `me`'s mailbox.
fn drain(sh: &Shared<'_>, me: u64) -> bool {
    for s in 0..SLOTS {
        // SYNC: Acquire pairs with the sender's Release CAS.
        let off = sh.slot(me, s).swap(0, Ordering::Acquire);
        if off != 0 {
            if !intact(sh.heap, off) {
                return false;
            }
            sh.heap.free(off).unwrap();
            sh.counter(3).fetch_add(1, Ordering::Relaxed);
        }
    }
    true
}

fn four_processes_two_threads_remote_frees() {
    let name = unique_name("stress");
    let _g = ShmGuard(name.clone());
    let heap = Heap::create(SegmentOptions::new().max_size(1 << 30).create_shm(&name).unwrap()).unwrap();
    let table = heap.alloc_zeroed(8 * (WORKERS * SLOTS + 4)).unwrap();
    let children: Vec<_> = (0..PROCS)
        .map(|p| {
            let name = &name;
            fork(move || {
                // An unrelated-style attach by name in every child, not the inherited handle.
                let seg = Segment::open_shm(name, shmpool::segment::Access::ReadWrite).unwrap();
                let heap = Heap::attach(seg).unwrap();
                let codes: Vec<i32> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..THREADS)
                        .map(|t| {
                            let sh = Shared { heap: &heap, table };
                            s.spawn(move || {
                                let run = std::panic::AssertUnwindSafe(|| worker(&sh, p * THREADS + t));
                                let code = std::panic::catch_unwind(run).unwrap_or(101);
                                if code != 0 {
                                    sh.counter(1).store(1, Ordering::Release);
                                }
                                code
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap_or(101)).collect()
                });
                codes.into_iter().find(|&c| c != 0).unwrap_or(0)
            })
        })
        .collect();
    let sh = Shared { heap: &heap, table };
    let codes = wait_all(children, || sh.counter(1).store(1, Ordering::Release));
    assert!(
        codes.iter().all(|&c| c == 0),
        "worker codes {codes:?} (3/4: a block was overwritten, 5: stopped)"
    );
    let (handed, received) = (sh.counter(2).load(Ordering::Relaxed), sh.counter(3).load(Ordering::Relaxed));
    assert_eq!(handed, received, "every handed-over block was received and freed");
    assert!(handed > WORKERS * OPS / 20, "remote frees happened: {handed}");
    heap.free(table).unwrap();
    let report = heap.check().expect("invariants hold after the stress");
    assert_eq!(report.slab_blocks, report.pending_remote, "every block was freed: {report:?}");
    assert_eq!(report.large_blocks, 0);
}
