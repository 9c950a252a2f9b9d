//! The page lock: a futex mutex in shared memory, held only around page-run allocator
//! updates (never on the allocation fast path).
//!
//! Word states: `0` free; otherwise the holder's pid, with bit 31 set when a waiter may
//! be sleeping (after Drepper, "Futexes Are Tricky", mutex 2). The futex is shared (not
//! `FUTEX_PRIVATE`), so waiters in other processes are woken. Recording the holder's pid
//! is what lets a survivor tell a dead holder from a slow one.
//!
//! Modelled in `tests/loom_pages.rs` (mutual exclusion, no lost wake-up, and the
//! page-run free lists it protects), with the futex replaced by a faithful model.
//!
//! # Safety
//! `LockWord` is `#[repr(C)]` and made of atomics only, so it may be viewed in the
//! segment (`raw::Shared`).
#![allow(unsafe_code)]

use super::raw::Shared;
use crate::loom::{AtomicU32, Ordering};

const WAITERS: u32 = 1 << 31;

/// Tries before sleeping (one under loom, where each is another branch to explore).
const SPINS: usize = if cfg!(loom) { 1 } else { 100 };

/// The lock word.
#[repr(C)]
pub(crate) struct LockWord {
    word: AtomicU32,
    /// The futex model's sleepers (loom only; the real lock is one word).
    #[cfg(loom)]
    park: futex_model::Park,
}

// SAFETY: repr(C), atomics only.
unsafe impl Shared for LockWord {}

/// Held lock; unlocks on drop.
pub(crate) struct Guard<'a>(&'a LockWord);

impl LockWord {
    /// Takes the lock for process `pid` (non-zero, below 2^31).
    pub(crate) fn lock(&self, pid: u32) -> Guard<'_> {
        debug_assert!(pid != 0 && pid & WAITERS == 0);
        // SYNC: Acquire pairs with the Release in `Guard::drop`: the previous holder's
        // updates are visible to the new one.
        if self.word.compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.lock_slow(pid);
        }
        Guard(self)
    }

    #[cold]
    fn lock_slow(&self, pid: u32) {
        for _ in 0..SPINS {
            core::hint::spin_loop();
            // SYNC: Acquire, as in `lock`.
            if self.word.compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return;
            }
        }
        loop {
            let cur = self.word.load(Ordering::Relaxed);
            if cur == 0 {
                // SYNC: Acquire, as in `lock`. Taken with WAITERS set, conservatively:
                // others may still sleep, so our unlock wakes one.
                let won = self.word.compare_exchange(0, pid | WAITERS, Ordering::Acquire, Ordering::Relaxed);
                if won.is_ok() {
                    return;
                }
                continue;
            }
            // Keep the holder's pid; only announce that someone waits.
            if cur & WAITERS == 0
                && self
                    .word
                    .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            self.wait(cur | WAITERS);
        }
    }

    /// Sleeps while the word is `expected` (futex(2) `FUTEX_WAIT`; may return early).
    #[cfg(not(loom))]
    fn wait(&self, expected: u32) {
        let _ =
            rustix::thread::futex::wait(&self.word, rustix::thread::futex::Flags::empty(), expected, None);
    }

    /// Wakes one sleeper (futex(2) `FUTEX_WAKE`).
    #[cfg(not(loom))]
    fn wake(&self) {
        let _ = rustix::thread::futex::wake(&self.word, rustix::thread::futex::Flags::empty(), 1);
    }

    #[cfg(loom)]
    fn wait(&self, expected: u32) {
        self.park.wait(&self.word, expected);
    }

    #[cfg(loom)]
    fn wake(&self) {
        self.park.wake();
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // SYNC: Release pairs with the Acquire of the next `lock`.
        if self.0.word.swap(0, Ordering::Release) & WAITERS != 0 {
            self.0.wake();
        }
    }
}

#[cfg(all(loom, test))]
impl LockWord {
    /// A free lock in ordinary memory, for the model.
    pub(crate) fn new() -> Self {
        Self { word: AtomicU32::new(0), park: futex_model::Park::default() }
    }
}

/// A futex for loom: the kernel checks the word and queues the waiter atomically with
/// respect to wakes on the same word, which a mutex around the check and a condition
/// variable reproduce. A lost wake-up then shows as a deadlock that loom reports.
#[cfg(loom)]
mod futex_model {
    use crate::loom::{AtomicU32, Ordering};
    use loom::sync::{Condvar, Mutex};

    #[derive(Default)]
    pub(super) struct Park {
        queue: Mutex<()>,
        sleepers: Condvar,
    }

    impl Park {
        pub(super) fn wait(&self, word: &AtomicU32, expected: u32) {
            let queued = self.queue.lock().unwrap();
            if word.load(Ordering::Relaxed) == expected {
                drop(self.sleepers.wait(queued).unwrap());
            }
        }

        pub(super) fn wake(&self) {
            let _queued = self.queue.lock().unwrap();
            self.sleepers.notify_one();
        }
    }
}
