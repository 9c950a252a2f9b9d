//! The page lock: a futex mutex in shared memory, held only around page-run allocator
//! updates (never on the allocation fast path). It is robust: a process killed while
//! holding it does not wedge the others.
//!
//! Word states: `0` free; otherwise the holder's tag (which names its registration in
//! the process registry), with bit 31 set when a waiter may be sleeping (after Drepper,
//! "Futexes Are Tricky", mutex 2). The futex is shared (not `FUTEX_PRIVATE`), so waiters
//! in other processes are woken. A waiter sleeps at most [`POLL`] at a time and then
//! asks whether the holder named in the word is dead; if it is, it takes the word over
//! from it with a CAS (only one waiter can), and its guard says so: the caller repairs
//! what the dead holder may have left half updated before it touches it.
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
use std::time::{Duration, Instant};

const WAITERS: u32 = 1 << 31;

/// Tries before sleeping (one under loom, where each is another branch to explore).
const SPINS: usize = if cfg!(loom) { 1 } else { 100 };

/// A waiter looks at the holder's liveness this often while the lock stays taken: a
/// dead holder delays the others by about this much.
/// (Zero under loom, where time does not pass: a waiter looks at every wake.)
pub(crate) const POLL: Duration = if cfg!(loom) { Duration::ZERO } else { Duration::from_millis(10) };

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
pub(crate) struct Guard<'a> {
    lock: &'a LockWord,
    /// The lock was taken over from a holder that died holding it: what it protects may
    /// be half updated.
    pub(crate) took_over: bool,
}

impl LockWord {
    /// Takes the lock as `holder` (a non-zero tag below 2^31). `dead(tag)` says whether the
    /// holder a tag names is gone for good; it is asked only while waiting.
    pub(crate) fn lock(&self, holder: u32, dead: impl Fn(u32) -> bool) -> Guard<'_> {
        self.lock_until(holder, dead, None).expect("no deadline")
    }

    /// [`LockWord::lock`], giving up at `deadline` (`None` once it passed).
    #[inline]
    pub(crate) fn lock_until(
        &self,
        holder: u32,
        dead: impl Fn(u32) -> bool,
        deadline: Option<Instant>,
    ) -> Option<Guard<'_>> {
        debug_assert!(holder != 0 && holder & WAITERS == 0);
        // SYNC: Acquire pairs with the Release in `Guard::drop`: the previous holder's
        // updates are visible to the new one.
        if self.word.compare_exchange(0, holder, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return Some(Guard { lock: self, took_over: false });
        }
        self.lock_slow(holder, dead, deadline)
    }

    /// Takes the lock if it is free, without waiting.
    pub(crate) fn try_lock(&self, holder: u32) -> Option<Guard<'_>> {
        // SYNC: Acquire, as in `lock_until`.
        let won = self.word.compare_exchange(0, holder, Ordering::Acquire, Ordering::Relaxed).is_ok();
        // Lazily: a guard made and dropped would unlock the holder's lock.
        won.then(|| Guard { lock: self, took_over: false })
    }

    #[cold]
    fn lock_slow(
        &self,
        holder: u32,
        dead: impl Fn(u32) -> bool,
        deadline: Option<Instant>,
    ) -> Option<Guard<'_>> {
        let mut next_look = Instant::now() + POLL;
        for _ in 0..SPINS {
            core::hint::spin_loop();
            // SYNC: Acquire, as in `lock`.
            if self.word.compare_exchange(0, holder, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return Some(Guard { lock: self, took_over: false });
            }
        }
        loop {
            let cur = self.word.load(Ordering::Relaxed);
            if cur == 0 {
                // SYNC: Acquire, as in `lock`. Taken with WAITERS set, conservatively:
                // others may still sleep, so our unlock wakes one.
                let won =
                    self.word.compare_exchange(0, holder | WAITERS, Ordering::Acquire, Ordering::Relaxed);
                if won.is_ok() {
                    return Some(Guard { lock: self, took_over: false });
                }
                continue;
            }
            // Keep the holder's tag; only announce that someone waits.
            if cur & WAITERS == 0
                && self
                    .word
                    .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            self.wait(cur | WAITERS, deadline);
            // Every POLL, whatever woke the wait (a signal may, again and again).
            if Instant::now() >= next_look && {
                next_look = Instant::now() + POLL;
                dead(cur & !WAITERS)
            } {
                // SYNC: Acquire, as in `lock`; it pairs with nothing of the dead holder's,
                // which released nothing. Its partial writes are visible because its
                // process has exited; `took_over` tells the caller to repair them. Only
                // one waiter's CAS succeeds.
                let took = self.word.compare_exchange(
                    cur | WAITERS,
                    holder | WAITERS,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                );
                if took.is_ok() {
                    return Some(Guard { lock: self, took_over: true });
                }
            }
        }
    }

    /// Sleeps while the word is `expected` (futex(2) `FUTEX_WAIT`), at most [`POLL`] and
    /// not past `deadline`.
    #[cfg(not(loom))]
    fn wait(&self, expected: u32, deadline: Option<Instant>) {
        use rustix::thread::futex;
        let left = deadline.map_or(POLL, |d| d.saturating_duration_since(Instant::now()).min(POLL));
        let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: left.as_nanos() as i64 };
        let _ = futex::wait(&self.word, futex::Flags::empty(), expected, Some(&timeout));
    }

    /// Wakes one sleeper (futex(2) `FUTEX_WAKE`).
    #[cfg(not(loom))]
    fn wake(&self) {
        let _ = rustix::thread::futex::wake(&self.word, rustix::thread::futex::Flags::empty(), 1);
    }

    #[cfg(loom)]
    fn wait(&self, expected: u32, _deadline: Option<Instant>) {
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
        if self.lock.word.swap(0, Ordering::Release) & WAITERS != 0 {
            self.lock.wake();
        }
    }
}

#[cfg(all(loom, test))]
impl LockWord {
    /// A free lock in ordinary memory, for the model.
    pub(crate) fn new() -> Self {
        Self { word: AtomicU32::new(0), park: futex_model::Park::default() }
    }

    /// A free lock whose sleeps time out at once (a waiter looks at the holder after
    /// every sleep), for models in which a holder dies.
    pub(crate) fn new_timing_out() -> Self {
        let mut park = futex_model::Park::default();
        park.times_out = true;
        Self { word: AtomicU32::new(0), park }
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
        /// Sleeps time out (at once): for models where a holder dies and wakes no one.
        pub(super) times_out: bool,
    }

    impl Park {
        pub(super) fn wait(&self, word: &AtomicU32, expected: u32) {
            if self.times_out {
                loom::thread::yield_now();
                return;
            }
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
