//! `Semaphore`: a counting semaphore in shared memory, on one futex word.
//!
//! Layer: sync. The word is `count | WAITING << 31`. A wait takes one with a CAS when the
//! count is positive; otherwise it sets `WAITING` with an RMW and sleeps on the word. A
//! post adds with a CAS that also clears `WAITING`, and wakes every sleeper if it was set
//! (the pattern of the slot pool's bitmap words: waiter and poster meet on one word, whose
//! RMWs are totally ordered, so no wake-up is lost). Sleeps last at most 20 ms, so a
//! poster killed between its add and its wake leaves no one asleep. A semaphore has no
//! owner: a process killed holding units does not give them back.
//!
//! Modelled in `tests/loom_sync.rs`.

use super::SyncError;
use crate::heap::Heap;
use crate::loom::{AtomicU32, Ordering};
use crate::pools::region::{Geometry, Host, Kind, Region};
use crate::pools::{wait, PoolError};
use std::time::{Duration, Instant};

const WAITING: u32 = 1 << 31;
/// The largest count.
pub const MAX_COUNT: u32 = WAITING - 1;

/// A counting semaphore shared by any processes.
#[derive(Debug)]
pub struct Semaphore {
    region: Region,
}

/// Takes one unit if the count is positive, else sets `WAITING` if `flag`; whether it
/// took one. The word's value after the attempt is returned for a sleep.
pub(crate) fn try_take(word: &AtomicU32, flag: bool) -> Result<(), u32> {
    let mut cur = word.load(Ordering::Relaxed);
    loop {
        let (new, took) = match cur & MAX_COUNT {
            0 if !flag => return Err(cur),
            // An RMW even if WAITING looks set, to read the word's latest value.
            0 => (cur | WAITING, false),
            _ => (cur - 1, true),
        };
        // SYNC: Acquire pairs with the Release of `give`: what the poster did before
        // posting happens before what the taker does after. Release (setting WAITING)
        // pairs with `give`'s Acquire, as in the slot pool's bitmap.
        match word.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) if took => return Ok(()),
            Ok(_) => return Err(new),
            Err(now) => cur = now,
        }
    }
}

/// Adds `n`, clearing `WAITING`; whether waiters are to be woken, or `None` if the count
/// would pass [`MAX_COUNT`].
pub(crate) fn give(word: &AtomicU32, n: u32) -> Option<bool> {
    let mut cur = word.load(Ordering::Relaxed);
    loop {
        let count = (cur & MAX_COUNT).checked_add(n).filter(|&c| c <= MAX_COUNT)?;
        // SYNC: Release pairs with the Acquire of `try_take`; Acquire pairs with the
        // Release of a waiter's flag.
        match word.compare_exchange_weak(cur, count, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Some(cur & WAITING != 0),
            Err(now) => cur = now,
        }
    }
}

impl Semaphore {
    fn plan() -> Geometry {
        Geometry::plan(0, 0, 8).expect("a few bytes")
    }

    fn planned(unit: u64, count: u64) -> Option<Geometry> {
        (unit == 0 && count == 0).then(Self::plan)
    }

    /// Bytes a semaphore occupies.
    pub fn footprint() -> u64 {
        Self::plan().bytes()
    }

    /// Formats a semaphore with `count` units at `at` (64-aligned) of `host`'s segment.
    pub fn create(host: impl Into<Host>, at: u64, count: u32) -> Result<Self, PoolError> {
        if count > MAX_COUNT {
            return Err(PoolError::InvalidGeometry("a semaphore counts up to 2^31 - 1"));
        }
        let region = Region::format(host.into(), at, Kind::Semaphore, Self::plan(), |r| {
            r.meta::<AtomicU32>(1)[0].store(count, Ordering::Relaxed);
        })?;
        Ok(Self { region })
    }

    /// Opens the semaphore created at `at` (in any process).
    pub fn open(host: impl Into<Host>, at: u64) -> Result<Self, PoolError> {
        Ok(Self { region: Region::open(host.into(), at, Kind::Semaphore, Self::planned)? })
    }

    /// A semaphore in a block of `heap`.
    pub fn create_in(heap: &Heap, count: u32) -> Result<Self, PoolError> {
        crate::pools::in_heap(heap, Self::footprint(), |at| Self::create(heap, at, count))
    }

    /// The semaphore named `name` in `heap`, created with `count` units by the first
    /// caller in any process.
    pub fn named(heap: &Heap, name: &str, count: u32) -> Result<Self, PoolError> {
        crate::pools::named(
            heap,
            name,
            Self::footprint(),
            |at| Self::create(heap, at, count),
            |at| Self::open(heap, at),
            |_| true,
        )
    }

    /// Where the semaphore is in its segment: what [`Semaphore::open`] takes.
    pub fn offset(&self) -> u64 {
        self.region.at()
    }

    fn word(&self) -> &AtomicU32 {
        &self.region.meta::<AtomicU32>(1)[0]
    }

    /// Units now (a snapshot).
    pub fn count(&self) -> u32 {
        self.word().load(Ordering::Relaxed) & MAX_COUNT
    }

    /// Takes a unit if one is there.
    pub fn try_wait(&self) -> bool {
        try_take(self.word(), false).is_ok()
    }

    /// Takes a unit, waiting for one as long as it takes.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Takes a unit, waiting up to `timeout`; whether it got one.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        take_until(self.word(), deadline)
    }

    /// Adds `n` units, waking the waiters.
    pub fn post(&self, n: u32) -> Result<(), SyncError> {
        post(self.word(), n)
    }
}

/// Takes a unit of the semaphore word, waiting until `deadline`; whether it got one.
pub(crate) fn take_until(word: &AtomicU32, deadline: Option<Instant>) -> bool {
    loop {
        match try_take(word, true) {
            Ok(()) => return true,
            Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => return false,
            Err(seen) => wait::sleep(word, seen, deadline),
        }
    }
}

/// Adds `n` units to the semaphore word, waking its waiters.
pub(crate) fn post(word: &AtomicU32, n: u32) -> Result<(), SyncError> {
    match give(word, n) {
        None => Err(SyncError::Overflow),
        Some(true) => {
            wait::wake_sleepers(word);
            Ok(())
        }
        Some(false) => Ok(()),
    }
}
