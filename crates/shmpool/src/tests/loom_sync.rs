//! The robust mutex's lock word taken over from a dead holder (`heap::lock`, as
//! `sync::Mutex` uses it), and the semaphore and event words (`sync::semaphore`,
//! `sync::event`), with the functions the types use.
//!
//! loom checks every interleaving for: a lock whose holder died taken over exactly once
//! (and told so), never while another holds it; a semaphore never handing out more units
//! than posted, its waiters all served by enough posts (a waiter left asleep is a
//! deadlock, which loom reports); an event's waiters all released by one `set`, seeing
//! what the setter wrote.
#![allow(unsafe_code)]

use super::model;
use crate::heap::lock::LockWord;
use crate::loom::{AtomicU32, Ordering, UnsafeCell};
use crate::sync::{event, semaphore};
use loom::sync::atomic::AtomicBool;
use loom::sync::Arc;
use loom::thread;

struct Guarded {
    lock: LockWord,
    /// Set once holder 2 has "died" (its process exited: a liveness check sees it).
    dead: AtomicBool,
    data: UnsafeCell<u32>,
    took_over: AtomicU32,
}

// SAFETY: `data` is touched only under the lock (what the model checks).
unsafe impl Sync for Guarded {}
// SAFETY: as above.
unsafe impl Send for Guarded {}

impl Guarded {
    fn is_dead(&self, tag: u32) -> bool {
        tag == 2 && self.dead.load(Ordering::Acquire)
    }

    /// Locks as `tag`, adds one to the data, and unlocks (or, for tag 2, dies holding).
    fn visit(&self, tag: u32) {
        let g = self.lock.lock(tag, |t| self.is_dead(t));
        if g.took_over {
            self.took_over.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: under the lock.
        self.data.with_mut(|d| unsafe { *d += 1 });
        if tag == 2 {
            core::mem::forget(g);
            self.dead.store(true, Ordering::Release);
        }
    }
}

/// Holder 2 dies holding the lock; two others lock it: one takes it over (and is told),
/// the other gets it after that one, never both at once.
#[test]
fn a_dead_holder_is_taken_over_once() {
    model(|| {
        let g = Arc::new(Guarded {
            lock: LockWord::new_timing_out(),
            dead: AtomicBool::new(false),
            data: UnsafeCell::new(0),
            took_over: AtomicU32::new(0),
        });
        g.visit(2);
        let others: Vec<_> = [3u32, 4]
            .into_iter()
            .map(|tag| {
                let g = g.clone();
                thread::spawn(move || g.visit(tag))
            })
            .collect();
        for t in others {
            t.join().unwrap();
        }
        assert_eq!(g.took_over.load(Ordering::Relaxed), 1, "taken over exactly once");
        // SAFETY: every thread joined.
        assert_eq!(g.data.with(|d| unsafe { *d }), 3);
    });
}

/// A semaphore of one unit used as a lock by three threads, and units that come back.
#[test]
fn a_semaphore_hands_out_only_its_units() {
    model(|| {
        let sem = Arc::new((AtomicU32::new(1), UnsafeCell::new(0u32)));
        let others: Vec<_> = (0..2)
            .map(|_| {
                let s = sem.clone();
                thread::spawn(move || {
                    assert!(semaphore::take_until(&s.0, None));
                    // SAFETY: the one unit is held.
                    s.1.with_mut(|d| unsafe { *d += 1 });
                    semaphore::post(&s.0, 1).unwrap();
                })
            })
            .collect();
        assert!(semaphore::take_until(&sem.0, None));
        // SAFETY: the one unit is held.
        sem.1.with_mut(|d| unsafe { *d += 1 });
        semaphore::post(&sem.0, 1).unwrap();
        for t in others {
            t.join().unwrap();
        }
        assert_eq!(sem.0.load(Ordering::Relaxed), 1, "the unit came back, no waiter flag left");
    });
}

/// Two waiters on an empty semaphore; two posts of one: both are served.
#[test]
fn a_semaphores_waiters_are_all_served() {
    model(|| {
        let sem = Arc::new(AtomicU32::new(0));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let s = sem.clone();
                thread::spawn(move || assert!(semaphore::take_until(&s, None)))
            })
            .collect();
        semaphore::post(&sem, 1).unwrap();
        semaphore::post(&sem, 1).unwrap();
        for w in waiters {
            w.join().unwrap();
        }
    });
}

/// Two waiters on an event; one `set` releases both, and they see the setter's write.
#[test]
fn one_set_releases_every_waiter() {
    model(|| {
        let ev = Arc::new((AtomicU32::new(0), UnsafeCell::new(0u32)));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let e = ev.clone();
                thread::spawn(move || {
                    assert!(event::wait_until(&e.0, None));
                    // SAFETY: written before `set`, read after: ordered by it.
                    assert_eq!(e.1.with(|d| unsafe { *d }), 7);
                })
            })
            .collect();
        // SAFETY: no waiter reads before the set.
        ev.1.with_mut(|d| unsafe { *d = 7 });
        event::set(&ev.0);
        for w in waiters {
            w.join().unwrap();
        }
    });
}
