//! The page lock: a futex mutex in shared memory, held only around page-run allocator
//! updates (never on the allocation fast path).
//!
//! Word states: `0` free; otherwise the holder's pid, with bit 31 set when a waiter may
//! be sleeping (after Drepper, "Futexes Are Tricky", mutex 2). The futex is shared (not
//! `FUTEX_PRIVATE`), so waiters in other processes are woken. Recording the holder's pid
//! is what lets a survivor tell a dead holder from a slow one.
//!
//! # Safety
//! `LockWord` is `#[repr(C)]` and made of atomics only, so it may be viewed in the
//! segment (`raw::Shared`).
#![allow(unsafe_code)]

use super::raw::Shared;
// A real atomic even under loom: the futex calls need one, and the lock is not modelled.
use core::sync::atomic::{AtomicU32, Ordering};
use rustix::thread::futex;

const WAITERS: u32 = 1 << 31;

/// The lock word.
#[repr(C)]
pub(crate) struct LockWord {
    word: AtomicU32,
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
        for _ in 0..100 {
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
            let _ = futex::wait(&self.word, futex::Flags::empty(), cur | WAITERS, None);
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // SYNC: Release pairs with the Acquire of the next `lock`.
        if self.0.word.swap(0, Ordering::Release) & WAITERS != 0 {
            let _ = futex::wake(&self.0.word, futex::Flags::empty(), 1);
        }
    }
}
