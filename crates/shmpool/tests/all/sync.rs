//! Shared cells, robust mutexes, semaphores and events, between threads and processes:
//! mutual exclusion, a holder killed holding the lock (a process and a thread), timeouts,
//! waiters woken across processes, and the cells' operations and errors.

use crate::support::{fork, trial, wait_all, wait_until, SharedHeap};
use libtest_mimic::Trial;
use shmpool::heap::Heap;
use shmpool::pools::PoolError;
use shmpool::sync::{CellError, Event, LockError, Mutex, Semaphore, SharedCells, SyncError};
use shmpool::SegmentOptions;
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("sync::mutex_excludes_across_processes", mutex_excludes_across_processes),
        trial(
            "sync::a_holder_killed_holding_the_mutex_is_reported",
            a_holder_killed_holding_the_mutex_is_reported,
        ),
        trial(
            "sync::a_thread_that_ends_holding_the_mutex_is_reported",
            a_thread_that_ends_holding_the_mutex_is_reported,
        ),
        trial("sync::mutex_timeouts_and_try_lock", mutex_timeouts_and_try_lock),
        trial("sync::mutex_open_checks_the_type", mutex_open_checks_the_type),
        trial(
            "sync::semaphore_bounds_concurrency_across_processes",
            semaphore_bounds_concurrency_across_processes,
        ),
        trial(
            "sync::semaphore_waits_time_out_and_overflow_is_refused",
            semaphore_waits_time_out_and_overflow_is_refused,
        ),
        trial("sync::an_event_wakes_waiters_in_other_processes", an_event_wakes_waiters_in_other_processes),
        trial("sync::cells_offer_only_their_operations", cells_offer_only_their_operations),
        trial("sync::cells_count_from_many_processes", cells_count_from_many_processes),
    ]
}

#[derive(shmpool::ShmSafe, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Account {
    balance: u64,
    updates: u64,
}

/// Four processes add to an unguarded-looking pair 5,000 times each, with a yield
/// between the read and the write: the mutex alone keeps both fields exact.
fn mutex_excludes_across_processes() {
    let sh = SharedHeap::new("mutex-excl");
    let m = Mutex::named(&sh.heap, "acct", Account { balance: 0, updates: 0 }).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            let sh = &sh;
            fork(move || {
                let heap = sh.attach();
                let m = Mutex::named(&heap, "acct", Account { balance: 0, updates: 0 }).unwrap();
                for k in 0..5000u64 {
                    let mut g = m.lock().unwrap();
                    let seen = *g;
                    if k % 97 == 0 {
                        std::thread::yield_now();
                    }
                    *g = Account { balance: seen.balance + 3, updates: seen.updates + 1 };
                }
                0
            })
        })
        .collect();
    assert_eq!(wait_all(children, || ()), [0; 4]);
    assert_eq!(*m.lock().unwrap(), Account { balance: 60_000, updates: 20_000 });
}

/// A child takes the mutex, half updates the data and is killed: the parent's lock
/// returns `OwnerDied` with the guard (within the lock's poll), sees the half update,
/// repairs it, and later locks are clean.
fn a_holder_killed_holding_the_mutex_is_reported() {
    let sh = SharedHeap::new("mutex-dead");
    let m = Mutex::named(&sh.heap, "acct", Account { balance: 10, updates: 0 }).unwrap();
    let child = fork(|| {
        let heap = sh.attach();
        let m = Mutex::named(&heap, "acct", Account { balance: 0, updates: 0 }).unwrap();
        let mut g = m.lock().unwrap();
        g.balance = 99; // updates not yet counted
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        0
    });
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL);
    let t = Instant::now();
    match m.lock() {
        Err(LockError::OwnerDied(mut g)) => {
            assert_eq!(*g, Account { balance: 99, updates: 0 }, "the dead holder's half update");
            g.balance = 10;
            g.mark_consistent();
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|g| *g)),
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!m.is_inconsistent());
    assert_eq!(*m.lock().unwrap(), Account { balance: 10, updates: 0 });
}

/// A thread ends holding the mutex (its guard forgotten): another thread is told.
fn a_thread_that_ends_holding_the_mutex_is_reported() {
    let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("m").unwrap()).unwrap();
    let m = Mutex::create_in(&heap, 5u64).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| std::mem::forget(m.lock().unwrap())).join().unwrap();
    });
    let g = m.lock().expect_err("the holder ended");
    let LockError::OwnerDied(g) = g else { panic!("expected OwnerDied") };
    // Not marked consistent: the next locker is told again.
    drop(g);
    assert!(matches!(m.lock(), Err(LockError::OwnerDied(_))));
    match m.try_lock() {
        Err(LockError::OwnerDied(g)) => g.mark_consistent(),
        other => panic!("{:?}", other.map(|g| *g)),
    }
    assert_eq!(*m.try_lock().unwrap(), 5);
}

fn mutex_timeouts_and_try_lock() {
    let sh = SharedHeap::new("mutex-time");
    let m = Mutex::named(&sh.heap, "m", 0u32).unwrap();
    let flag = SharedCells::named(&sh.heap, "flag", 1, 1).unwrap();
    let child = fork(|| {
        let heap = sh.attach();
        let m = Mutex::named(&heap, "m", 0u32).unwrap();
        let flag = SharedCells::named(&heap, "flag", 1, 1).unwrap();
        let g = m.lock().unwrap();
        flag.store(0, 1).unwrap();
        wait_until("the parent timed out", || flag.load(0).unwrap() == 2);
        drop(g);
        0
    });
    wait_until("the child holds the mutex", || flag.load(0).unwrap() == 1);
    assert!(matches!(m.try_lock(), Err(LockError::WouldBlock)));
    let t = Instant::now();
    let r = m.lock_timeout(Duration::from_millis(60));
    assert!(matches!(r, Err(LockError::Timeout)), "{:?}", r.map(|g| *g));
    assert!(t.elapsed() >= Duration::from_millis(60));
    flag.store(0, 2).unwrap();
    let g = m.lock_timeout(Duration::from_secs(20)).expect("released by the child");
    assert_eq!(*g, 0);
    drop(g);
    assert_eq!(child.wait(), 0);
}

fn mutex_open_checks_the_type() {
    let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("m").unwrap()).unwrap();
    let m = Mutex::create_in(&heap, 1u64).unwrap();
    assert!(Mutex::<u64>::open(&heap, m.offset()).is_ok());
    assert!(matches!(Mutex::<u32>::open(&heap, m.offset()), Err(PoolError::Mismatch(_))));
    let s = Semaphore::create_in(&heap, 1).unwrap();
    assert!(matches!(Mutex::<u64>::open(&heap, s.offset()), Err(PoolError::WrongKind { .. })));
}

/// Six processes share three units: never more than three inside at once (counted in a
/// shared cell), and every unit comes back.
fn semaphore_bounds_concurrency_across_processes() {
    let sh = SharedHeap::new("sem");
    let sem = Semaphore::named(&sh.heap, "sem", 3).unwrap();
    let cells = SharedCells::named(&sh.heap, "inside", 2, 2).unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            let sh = &sh;
            fork(move || {
                let heap = sh.attach();
                let sem = Semaphore::named(&heap, "sem", 3).unwrap();
                let cells = SharedCells::named(&heap, "inside", 2, 2).unwrap();
                for _ in 0..2000 {
                    sem.wait();
                    let now = cells.fetch_add(0, 1).unwrap() + 1;
                    let _ =
                        cells.cas(1, cells.load(1).unwrap().max(now - 1), cells.load(1).unwrap().max(now));
                    if now > 3 {
                        return 1;
                    }
                    std::thread::yield_now();
                    cells.fetch_add(0, u64::MAX).unwrap(); // minus one
                    sem.post(1).unwrap();
                }
                0
            })
        })
        .collect();
    assert_eq!(wait_all(children, || ()), [0; 6]);
    assert_eq!(sem.count(), 3);
    assert_eq!(cells.load(0).unwrap(), 0);
}

fn semaphore_waits_time_out_and_overflow_is_refused() {
    let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("s").unwrap()).unwrap();
    let sem = Semaphore::create_in(&heap, 1).unwrap();
    assert!(sem.try_wait());
    assert!(!sem.try_wait());
    let t = Instant::now();
    assert!(!sem.wait_timeout(Duration::from_millis(40)));
    assert!(t.elapsed() >= Duration::from_millis(40));
    std::thread::scope(|s| {
        let waiters: Vec<_> = (0..3).map(|_| s.spawn(|| sem.wait_timeout(Duration::from_secs(20)))).collect();
        std::thread::sleep(Duration::from_millis(20));
        sem.post(3).unwrap();
        assert!(waiters.into_iter().all(|w| w.join().unwrap()), "three posts, three waiters served");
    });
    assert_eq!(sem.post(u32::MAX), Err(SyncError::Overflow));
    assert_eq!(sem.count(), 0);
    assert!(matches!(Semaphore::create_in(&heap, 1 << 31), Err(PoolError::InvalidGeometry(_))));
}

/// Two children wait on an event; the parent sets it: both return, long before their
/// timeout. Reset makes waits time out again.
fn an_event_wakes_waiters_in_other_processes() {
    let sh = SharedHeap::new("event");
    let ev = Event::named(&sh.heap, "go").unwrap();
    let ready = Semaphore::named(&sh.heap, "ready", 0).unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            let sh = &sh;
            fork(move || {
                let heap = sh.attach();
                let ev = Event::named(&heap, "go").unwrap();
                Semaphore::named(&heap, "ready", 0).unwrap().post(1).unwrap();
                i32::from(!ev.wait_timeout(Duration::from_secs(20)))
            })
        })
        .collect();
    for _ in 0..2 {
        assert!(ready.wait_timeout(Duration::from_secs(20)));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert!(!ev.is_set());
    ev.set();
    assert_eq!(wait_all(children, || ()), [0, 0]);
    assert!(ev.wait_timeout(Duration::ZERO));
    ev.reset();
    assert!(!ev.wait_timeout(Duration::from_millis(30)));
}

fn cells_offer_only_their_operations() {
    let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("c").unwrap()).unwrap();
    let cells = SharedCells::create_in(&heap, 70, 3).unwrap();
    assert_eq!((cells.count(), cells.reserved()), (70, 3));
    cells.store(2, 5).unwrap();
    assert_eq!(cells.load(2), Ok(5));
    assert_eq!(cells.cas(2, 4, 9), Ok(Err(5)));
    assert_eq!(cells.cas_seqcst(2, 5, 9), Ok(Ok(5)));
    assert_eq!(cells.fetch_add(2, u64::MAX), Ok(9));
    assert_eq!(cells.swap_segment(2, 77), Ok(8));
    cells.barrier();
    assert_eq!(cells.load(2), Ok(77));
    assert_eq!(cells.load(70), Err(CellError::OutOfRange { index: 70, count: 70 }));
    assert_eq!(cells.store(u32::MAX, 1), Err(CellError::OutOfRange { index: u32::MAX, count: 70 }));
    let dynamic: Vec<u32> = std::iter::from_fn(|| cells.alloc().ok()).collect();
    assert_eq!(dynamic, (3..70).collect::<Vec<_>>(), "every cell but the static ones");
    assert_eq!(cells.alloc(), Err(CellError::Exhausted));
    assert_eq!(cells.free(1), Err(CellError::NotAllocated(1)), "a static cell");
    cells.fetch_add(10, 4).unwrap();
    cells.free(10).unwrap();
    assert_eq!(cells.free(10), Err(CellError::NotAllocated(10)), "a double free");
    assert_eq!(cells.alloc(), Ok(10));
    assert_eq!(cells.load(10), Ok(0), "allocated zeroed");
    let again = SharedCells::open(&heap, cells.offset()).unwrap();
    assert_eq!((again.load(2), again.reserved()), (Ok(77), 3));
}

/// Four processes add to one cell with `fetch_add` and to another with a `cas` loop.
fn cells_count_from_many_processes() {
    let sh = SharedHeap::new("cells");
    let cells = SharedCells::named(&sh.heap, "n", 2, 2).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            let sh = &sh;
            fork(move || {
                let heap = sh.attach();
                let cells = SharedCells::named(&heap, "n", 2, 2).unwrap();
                for _ in 0..10_000 {
                    cells.fetch_add(0, 1).unwrap();
                    let mut v = cells.load(1).unwrap();
                    while let Err(now) = cells.cas(1, v, v + 2).unwrap() {
                        v = now;
                    }
                }
                0
            })
        })
        .collect();
    assert_eq!(wait_all(children, || ()), [0; 4]);
    assert_eq!((cells.load(0), cells.load(1)), (Ok(40_000), Ok(80_000)));
}
