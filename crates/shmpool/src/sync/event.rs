//! `Event`: a manual-reset event in shared memory: `set` wakes every waiter, and waits
//! return at once until `reset`.
//!
//! Layer: sync. One futex word: `SET | WAITING << 31`. A waiter that finds it clear sets
//! `WAITING` with an RMW and sleeps on the word (at most 20 ms at a time); `set` swaps in
//! `SET`, which clears `WAITING`, and wakes everyone if it was there.

use crate::heap::Heap;
use crate::loom::{AtomicU32, Ordering};
use crate::pools::region::{Geometry, Host, Kind, Region};
use crate::pools::{wait, PoolError};
use std::time::{Duration, Instant};

const SET: u32 = 1;
const WAITING: u32 = 1 << 31;

/// A manual-reset event shared by any processes.
#[derive(Debug)]
pub struct Event {
    region: Region,
}

impl Event {
    fn plan() -> Geometry {
        Geometry::plan(0, 0, 8).expect("a few bytes")
    }

    fn planned(unit: u64, count: u64) -> Option<Geometry> {
        (unit == 0 && count == 0).then(Self::plan)
    }

    /// Bytes an event occupies.
    pub fn footprint() -> u64 {
        Self::plan().bytes()
    }

    /// Formats an event (set or not) at `at` (64-aligned) of `host`'s segment.
    pub fn create(host: impl Into<Host>, at: u64, set: bool) -> Result<Self, PoolError> {
        let region = Region::format(host.into(), at, Kind::Event, Self::plan(), |r| {
            r.meta::<AtomicU32>(1)[0].store(u32::from(set), Ordering::Relaxed);
        })?;
        Ok(Self { region })
    }

    /// Opens the event created at `at` (in any process).
    pub fn open(host: impl Into<Host>, at: u64) -> Result<Self, PoolError> {
        Ok(Self { region: Region::open(host.into(), at, Kind::Event, Self::planned)? })
    }

    /// An event in a block of `heap`.
    pub fn create_in(heap: &Heap, set: bool) -> Result<Self, PoolError> {
        crate::pools::in_heap(heap, Self::footprint(), |at| Self::create(heap, at, set))
    }

    /// The event named `name` in `heap`, created clear by the first caller.
    pub fn named(heap: &Heap, name: &str) -> Result<Self, PoolError> {
        crate::pools::named(
            heap,
            name,
            Self::footprint(),
            |at| Self::create(heap, at, false),
            |at| Self::open(heap, at),
            |_| true,
        )
    }

    /// Where the event is in its segment: what [`Event::open`] takes.
    pub fn offset(&self) -> u64 {
        self.region.at()
    }

    fn word(&self) -> &AtomicU32 {
        &self.region.meta::<AtomicU32>(1)[0]
    }

    /// Whether the event is set (a snapshot; Acquire, as a wait).
    pub fn is_set(&self) -> bool {
        // SYNC: Acquire pairs with the Release swap of `set`.
        self.word().load(Ordering::Acquire) & SET != 0
    }

    /// Sets the event and wakes every waiter.
    pub fn set(&self) {
        set(self.word());
    }

    /// Clears the event (waiters from now on wait for the next `set`).
    pub fn reset(&self) {
        self.word().fetch_and(!SET, Ordering::Relaxed);
    }

    /// Waits until the event is set, as long as it takes.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits up to `timeout` for the event; whether it was set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        wait_until(self.word(), deadline)
    }
}

/// Sets the event word and wakes every waiter if one was announced.
pub(crate) fn set(word: &AtomicU32) {
    // SYNC: Release pairs with the Acquire of the waiters' loads: what the setter did
    // before happens before what they do after. Acquire pairs with the Release of a
    // waiter's flag (`WAITING` and `SET` meet in this one word).
    if word.swap(SET, Ordering::AcqRel) & WAITING != 0 {
        wait::wake_sleepers(word);
    }
}

/// Waits until the event word is set, or `deadline`; whether it was set.
pub(crate) fn wait_until(word: &AtomicU32, deadline: Option<Instant>) -> bool {
    loop {
        // SYNC: Acquire pairs with the Release swap of `set`.
        if word.load(Ordering::Acquire) & SET != 0 {
            return true;
        }
        // An RMW, to read the latest value and announce this waiter.
        // SYNC: AcqRel: Acquire pairs with `set`'s Release; Release (the flag) pairs
        // with `set`'s Acquire.
        let cur = word.fetch_or(WAITING, Ordering::AcqRel);
        if cur & SET != 0 {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        wait::sleep(word, cur | WAITING, deadline);
    }
}
