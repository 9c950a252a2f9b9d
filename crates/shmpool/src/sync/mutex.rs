//! `Mutex<T>`: a futex mutex in shared memory guarding a `T`, robust: when its holder
//! dies (its process killed, or its thread ended) the next locker takes it over and is
//! told, so it can repair the data.
//!
//! Layer: sync. The lock word is the heap's robust page lock (`heap::lock`, after
//! Drepper, "Futexes Are Tricky", mutex 2), tagged with the holder's tid; the holder
//! writes its identity beside it (`owner.rs`). A waiter sleeps at most 10 ms at a time
//! and then asks whether the holder still runs; if not, one waiter takes the word over
//! with a CAS and the mutex is marked *inconsistent*: every lock returns
//! [`LockError::OwnerDied`] with the guard until a holder calls
//! [`MutexGuard::mark_consistent`] (after POSIX robust mutexes, without the
//! unrecoverable state: the data is the caller's to repair).
//!
//! Region: a header, then the meta words `[lock word, holder identity, inconsistent]`,
//! then the `T` (64-aligned).
//!
//! ```
//! use shmpool::sync::{LockError, Mutex};
//! use shmpool::SegmentOptions;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let seg = SegmentOptions::new().create_memfd("doc")?;
//! let at = seg.data_start();
//! let m = Mutex::create(seg, at, 0u64)?; // other processes: Mutex::<u64>::open
//! *m.lock().map_err(|_| "the holder died")? += 1;
//! match m.lock() {
//!     Ok(g) => assert_eq!(*g, 1),
//!     Err(LockError::OwnerDied(g)) => g.mark_consistent(), // repair, then say so
//!     Err(e) => return Err(e.to_string().into()),
//! }
//! # Ok(()) }
//! ```
#![allow(unsafe_code)]

use super::owner::{self, Me};
use super::LockError;
use crate::heap::lock::{Guard, LockWord};
use crate::heap::Heap;
use crate::loom::{AtomicU64, Ordering};
use crate::offset::ShmSafe;
use crate::pools::region::{Geometry, Host, Kind, Region};
use crate::pools::PoolError;
use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// Meta bytes: the lock word (padded to 8), the holder's identity, the inconsistent flag,
/// the value's size and alignment.
const META: u64 = 32;
const HOLDER: u64 = 8;
const INCONSISTENT: u64 = 16;
const SHAPE: u64 = 24;

/// A mutex in shared memory guarding a `T`, usable from any process.
pub struct Mutex<T: ShmSafe> {
    region: Region,
    _t: PhantomData<fn() -> T>,
}

impl<T: ShmSafe> core::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mutex").field("offset", &self.region.at()).finish_non_exhaustive()
    }
}

// SAFETY: the `T` is reached only through a guard, under the lock; `T: ShmSafe` holds no
// pointers, so handing it between threads is sound.
unsafe impl<T: ShmSafe> Sync for Mutex<T> {}
// SAFETY: as above.
unsafe impl<T: ShmSafe> Send for Mutex<T> {}

impl<T: ShmSafe> Mutex<T> {
    fn plan() -> Result<Geometry, PoolError> {
        if align_of::<T>() > 64 {
            return Err(PoolError::InvalidGeometry("a mutex's value is at most 64-aligned"));
        }
        Self::planned(size_of::<T>() as u64, 1).ok_or(PoolError::InvalidGeometry("the value is too large"))
    }

    /// The geometry for one value of `size` bytes (a unit of at least 1).
    fn planned(size: u64, count: u64) -> Option<Geometry> {
        (count == 1).then(|| Geometry::plan(size.max(1), 1, META)).flatten()
    }

    fn shape() -> u64 {
        (size_of::<T>() as u64) << 32 | align_of::<T>() as u64
    }

    /// Bytes a mutex of `T` occupies.
    pub fn footprint() -> Result<u64, PoolError> {
        Ok(Self::plan()?.bytes())
    }

    /// Formats a free mutex holding `value` at `at` (64-aligned) of `host`'s segment.
    pub fn create(host: impl Into<Host>, at: u64, value: T) -> Result<Self, PoolError> {
        let region = Region::format(host.into(), at, Kind::Mutex, Self::plan()?, |r| {
            for w in r.meta::<AtomicU64>(3) {
                w.store(0, Ordering::Relaxed);
            }
            r.meta_at::<AtomicU64>(SHAPE, 1)[0].store(Self::shape(), Ordering::Relaxed);
            // SAFETY: the data is `size_of::<T>()` bytes (the unit) at a 64-aligned
            // offset, mapped and not yet visible to anyone (the magic is written after).
            unsafe { r.data_ptr().cast::<T>().as_ptr().write(value) };
        })?;
        Ok(Self { region, _t: PhantomData })
    }

    /// Opens the mutex created at `at` (in any process) for a `T` of the same size and
    /// alignment.
    pub fn open(host: impl Into<Host>, at: u64) -> Result<Self, PoolError> {
        let region = Region::open(host.into(), at, Kind::Mutex, Self::planned)?;
        if region.meta_at::<AtomicU64>(SHAPE, 1)[0].load(Ordering::Relaxed) != Self::shape() {
            return Err(PoolError::Mismatch(format!("the mutex at offset {at}")));
        }
        Ok(Self { region, _t: PhantomData })
    }

    /// A mutex in a block of `heap`.
    pub fn create_in(heap: &Heap, value: T) -> Result<Self, PoolError> {
        crate::pools::in_heap(heap, Self::footprint()?, |at| Self::create(heap, at, value))
    }

    /// The mutex named `name` in `heap`: created holding `value` by the first caller in
    /// any process, opened by every other (whose `value` is dropped).
    pub fn named(heap: &Heap, name: &str, value: T) -> Result<Self, PoolError> {
        let bytes = Self::footprint()?;
        crate::pools::named(
            heap,
            name,
            bytes,
            |at| Self::create(heap, at, value),
            |at| Self::open(heap, at),
            |_| true,
        )
    }

    /// Where the mutex is in its segment: what [`Mutex::open`] takes.
    pub fn offset(&self) -> u64 {
        self.region.at()
    }

    fn word(&self) -> &LockWord {
        &self.region.meta::<LockWord>(1)[0]
    }

    fn meta(&self, at: u64) -> &AtomicU64 {
        &self.region.meta_at::<AtomicU64>(at, 1)[0]
    }

    /// Locks, waiting as long as it takes. `Err(OwnerDied)` carries the guard when the
    /// data may be inconsistent (a holder died holding it).
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        self.lock_until(None)
    }

    /// Locks, waiting up to `timeout`: `Err(Timeout)` if the mutex stayed held.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        self.lock_until(Instant::now().checked_add(timeout))
    }

    /// Locks if the mutex is free: `Err(WouldBlock)` if not.
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        let me = owner::me();
        match self.word().try_lock(me.tid) {
            Some(g) => self.held(g, me),
            None => Err(LockError::WouldBlock),
        }
    }

    fn lock_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        let me = owner::me();
        let holder = self.meta(HOLDER);
        let dead = |tid: u32| owner::holder_dead(tid, holder);
        match self.word().lock_until(me.tid, dead, deadline) {
            Some(g) => self.held(g, me),
            None => Err(LockError::Timeout),
        }
    }

    fn held<'a>(
        &'a self,
        lock: Guard<'a>,
        me: Me,
    ) -> Result<MutexGuard<'a, T>, LockError<MutexGuard<'a, T>>> {
        self.meta(HOLDER).store(me.info(), Ordering::Relaxed);
        if lock.took_over {
            // Under the lock: the next holders see it (the lock's Release/Acquire).
            self.meta(INCONSISTENT).store(1, Ordering::Relaxed);
        }
        let guard = MutexGuard { mutex: self, _lock: lock, _not_send: PhantomData };
        if self.meta(INCONSISTENT).load(Ordering::Relaxed) != 0 {
            return Err(LockError::OwnerDied(guard));
        }
        Ok(guard)
    }

    /// Whether a holder died and no one has marked the data consistent since (a snapshot).
    pub fn is_inconsistent(&self) -> bool {
        self.meta(INCONSISTENT).load(Ordering::Relaxed) != 0
    }
}

/// The held mutex: derefs to the `T`; unlocks when dropped. It stays on the thread that
/// locked (not `Send`): the lock names that thread, and a waiter would take it over if
/// the thread ended while another held the guard.
pub struct MutexGuard<'a, T: ShmSafe> {
    mutex: &'a Mutex<T>,
    _lock: Guard<'a>,
    _not_send: PhantomData<*const ()>,
}

impl<T: ShmSafe> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // Before the unlock (the field drops after this): a stale identity could make a
        // later holder with this tid look dead.
        self.mutex.meta(HOLDER).store(0, Ordering::Relaxed);
    }
}

impl<T: ShmSafe> MutexGuard<'_, T> {
    /// Declares the data repaired after a holder died: later locks succeed again.
    pub fn mark_consistent(&self) {
        self.mutex.meta(INCONSISTENT).store(0, Ordering::Relaxed);
    }
}

impl<T: ShmSafe> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the `T` lies at the region's data, mapped while the mutex lives, valid
        // for any bits (ShmSafe) and written only under the lock, which this guard holds.
        unsafe { self.mutex.region.data_ptr().cast::<T>().as_ref() }
    }
}

impl<T: ShmSafe> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; the lock makes this guard the only access.
        unsafe { self.mutex.region.data_ptr().cast::<T>().as_mut() }
    }
}

impl<T: ShmSafe + core::fmt::Debug> core::fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("MutexGuard").field(&**self).finish()
    }
}
