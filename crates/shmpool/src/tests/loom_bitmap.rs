//! The slot pool's bitmap (`pools::bitmap`) and its waiters (`pools::wait`), with the
//! functions the pool uses.
//!
//! loom checks every interleaving for: a slot never loaned to two threads at once
//! (loom's `UnsafeCell` reports overlapping or unordered access to the slot), the last
//! holder's writes seen by the next loaner, exhaustion reported only when every slot is
//! held, a returned slot never lost, and no lost wake-up for a waiter (a waiter left
//! asleep is a deadlock, which loom reports).
#![allow(unsafe_code)]

use super::model;
use crate::loom::{AtomicU32, AtomicU64, UnsafeCell};
use crate::pools::{bitmap, wait};
use loom::sync::Arc;
use loom::thread;

const SLOTS: u64 = 2;

struct Pool {
    words: [AtomicU64; 1],
    wake: AtomicU32,
    /// Each slot's bytes: every holder adds one.
    slots: [UnsafeCell<u32>; SLOTS as usize],
}

// SAFETY: a slot's cell is touched only by the thread holding its bit (what the model
// checks).
unsafe impl Sync for Pool {}
// SAFETY: as above.
unsafe impl Send for Pool {}

impl Pool {
    fn new() -> Self {
        Self::new_with(SLOTS)
    }

    /// A pool of `slots` (at most `SLOTS`) slots.
    fn new_with(slots: u64) -> Self {
        let p = Self {
            words: [AtomicU64::new(0)],
            wake: AtomicU32::new(0),
            slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
        };
        bitmap::init(&p.words, slots);
        p
    }

    /// Uses slot `i` as its holder: the holder before it must be ordered before.
    fn touch(&self, i: u64) {
        // SAFETY: the caller holds slot `i`.
        self.slots[i as usize].with_mut(|v| unsafe { *v += 1 });
    }

    /// `SlotPool::give_back`.
    fn give_back(&self, i: u64) {
        let c = bitmap::clear_at(&self.words, bitmap::Place::of(i));
        assert!(c.was_loaned, "a held slot is loaned");
        if c.waiters {
            wait::wake(&self.wake);
        }
    }

    /// `SlotPool::wait_slow`'s loop, without a deadline.
    fn loan_waiting(&self) -> u64 {
        loop {
            let seen = wait::seq(&self.wake);
            if let Some(i) = bitmap::claim_or_flag(&self.words) {
                return i;
            }
            wait::sleep(&self.wake, seen, None);
        }
    }

    fn total(&self) -> u32 {
        // SAFETY: every thread joined.
        self.slots.iter().map(|s| s.with(|v| unsafe { *v })).sum()
    }
}

/// Three threads loan, use and return slots of a pool of two.
#[test]
fn a_slot_is_held_by_one_thread_at_a_time() {
    model(|| {
        let pool = Arc::new(Pool::new());
        let others: Vec<_> = (0..2)
            .map(|_| {
                let p = pool.clone();
                thread::spawn(move || {
                    if let Some(i) = bitmap::claim(&p.words, 0).map(|p| p.index()) {
                        p.touch(i);
                        p.give_back(i);
                    }
                })
            })
            .collect();
        let mine = bitmap::claim(&pool.words, 0).map(|p| p.index());
        if let Some(i) = mine {
            pool.touch(i);
            pool.give_back(i);
        }
        let used = others.into_iter().map(|t| t.join().unwrap()).count();
        assert_eq!(used, 2);
        assert_eq!(bitmap::count(&pool.words, SLOTS), 0, "every slot came back");
        // With two slots and three loaners, one may find both held, never more.
        assert!(pool.total() >= 2, "at most one of three loaners found the pool exhausted");
    });
}

/// Exhaustion is reported only when every slot is really held: two holders keep their
/// slots, a third loaner must find none, and a fourth slot never appears.
#[test]
fn exhaustion_means_every_slot_is_held() {
    model(|| {
        let pool = Arc::new(Pool::new());
        let holders: Vec<_> = (0..2)
            .map(|_| {
                let p = pool.clone();
                thread::spawn(move || bitmap::claim(&p.words, 0).expect("two slots for two holders").index())
            })
            .collect();
        let mut got: Vec<u64> = holders.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(bitmap::claim(&pool.words, 0), None);
        got.sort_unstable();
        assert_eq!(got, [0, 1]);
    });
}

/// A waiter sleeps on a full pool while the holder returns the slots: it is woken and
/// gets one, whatever the interleaving.
#[test]
fn a_waiter_is_woken_by_a_return() {
    model(|| {
        let pool = Arc::new(Pool::new());
        let a = bitmap::claim(&pool.words, 0).unwrap().index();
        let b = bitmap::claim(&pool.words, 0).unwrap().index();
        let p = pool.clone();
        let waiter = thread::spawn(move || {
            let i = p.loan_waiting();
            p.touch(i);
            p.give_back(i);
        });
        pool.touch(a);
        pool.give_back(a);
        pool.touch(b);
        pool.give_back(b);
        waiter.join().unwrap();
        assert_eq!(pool.total(), 3);
    });
}

/// Two waiters sleep on a pool of one slot; the holder returns it, and each waiter
/// returns it after use: both are served, whichever is woken first.
#[test]
fn two_waiters_are_both_served() {
    model(|| {
        let pool = Arc::new(Pool::new_with(1));
        let held = bitmap::claim(&pool.words, 0).unwrap().index();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let p = pool.clone();
                thread::spawn(move || {
                    let i = p.loan_waiting();
                    p.touch(i);
                    p.give_back(i);
                })
            })
            .collect();
        pool.touch(held);
        pool.give_back(held);
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(pool.total(), 3);
    });
}
