//! `Oneshot<T>`: one value, published once by a producer and taken once by a consumer,
//! in any processes.
//!
//! Layer: channel. One futex word:
//!
//! | bits  | meaning                                                       |
//! |-------|---------------------------------------------------------------|
//! | 0..2  | `EMPTY`, `WRITING` (a sender fills the value), `READY`, `TAKEN` |
//! | 2..22 | the writing sender's tag (`peers::Tag`)                       |
//! | 31    | a receiver waits                                              |
//!
//! `send` claims `EMPTY` → `WRITING` with a CAS, writes the value and publishes `READY`
//! with a swap (Release), waking a waiting receiver; `recv` takes `READY` → `TAKEN` with
//! a CAS (Acquire) and reads the value. A sender killed while writing leaves `WRITING`
//! with a dead tag: the receiver is told [`RecvError::Disconnected`], and another sender
//! may claim the value anew.
#![allow(unsafe_code)]

use super::peers::{Peers, Role, WORDS};
use super::{shape, RecvError, TryRecvError};
use crate::heap::Heap;
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::offset::ShmSafe;
use crate::pools::region::{Geometry, Host, Kind, Region};
use crate::pools::{wait, PoolError};
use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use std::time::{Duration, Instant};

const EMPTY: u32 = 0;
const WRITING: u32 = 1;
const READY: u32 = 2;
const TAKEN: u32 = 3;
const WAITING: u32 = 1 << 31;

const STATE: u64 = 0;
const SHAPE: u64 = 8;
const PEERS: u64 = 64;
const META: u64 = PEERS + 8 * WORDS as u64;

/// Why a one-shot value was not sent; the value comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OneshotError<T> {
    /// A value was sent already (or is being sent).
    #[error("a value was sent already")]
    AlreadySent(T),
    /// Every entry of the process table is in use.
    #[error("all process entries of the channel are in use")]
    TooManyPeers(T),
}

/// One value handed from a producer to a consumer, in shared memory.
pub struct Oneshot<T: ShmSafe + Copy> {
    region: Region,
    _t: PhantomData<fn() -> T>,
}

impl<T: ShmSafe + Copy> core::fmt::Debug for Oneshot<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Oneshot").field("offset", &self.region.at()).finish()
    }
}

// SAFETY: the value is written only by the sender that claimed `WRITING` and read only
// by the receiver that took `READY`.
unsafe impl<T: ShmSafe + Copy> Sync for Oneshot<T> {}
// SAFETY: as above.
unsafe impl<T: ShmSafe + Copy> Send for Oneshot<T> {}

impl<T: ShmSafe + Copy> Oneshot<T> {
    fn planned(unit: u64, count: u64) -> Option<Geometry> {
        // Any value size: a one-shot of another `T` is told apart by its shape word.
        let ok = unit > 0 && count == 1 && align_of::<T>() <= 64;
        ok.then(|| Geometry::plan(unit, 1, META)).flatten()
    }

    fn plan() -> Result<Geometry, PoolError> {
        Self::planned(size_of::<T>().max(1) as u64, 1)
            .ok_or(PoolError::InvalidGeometry("a value at most 64-aligned"))
    }

    /// Bytes a one-shot of `T` occupies.
    pub fn footprint() -> Result<u64, PoolError> {
        Ok(Self::plan()?.bytes())
    }

    /// Formats an empty one-shot at `at` (64-aligned) of `host`'s segment.
    pub fn create(host: impl Into<Host>, at: u64) -> Result<Self, PoolError> {
        let region = Region::format(host.into(), at, Kind::Oneshot, Self::plan()?, |r| {
            for w in r.meta::<AtomicU64>((META / 8) as usize) {
                w.store(0, Ordering::Relaxed);
            }
            r.meta_at::<AtomicU64>(SHAPE, 1)[0].store(shape::<T>(), Ordering::Relaxed);
        })?;
        Ok(Self { region, _t: PhantomData })
    }

    /// Opens the one-shot created at `at` (in any process) for the same `T`.
    pub fn open(host: impl Into<Host>, at: u64) -> Result<Self, PoolError> {
        let region = Region::open(host.into(), at, Kind::Oneshot, Self::planned)?;
        if region.meta_at::<AtomicU64>(SHAPE, 1)[0].load(Ordering::Relaxed) != shape::<T>() {
            return Err(PoolError::Mismatch(format!("the one-shot at offset {at}")));
        }
        Ok(Self { region, _t: PhantomData })
    }

    /// A one-shot in a block of `heap`.
    pub fn create_in(heap: &Heap) -> Result<Self, PoolError> {
        crate::pools::in_heap(heap, Self::footprint()?, |at| Self::create(heap, at))
    }

    /// The one-shot named `name` in `heap`, created by the first caller in any process.
    pub fn named(heap: &Heap, name: &str) -> Result<Self, PoolError> {
        crate::pools::named(
            heap,
            name,
            Self::footprint()?,
            |at| Self::create(heap, at),
            |at| Self::open(heap, at),
            |_| true,
        )
    }

    /// Where the one-shot is in its segment: what [`Oneshot::open`] takes.
    pub fn offset(&self) -> u64 {
        self.region.at()
    }

    fn word(&self) -> &AtomicU32 {
        &self.region.meta_at::<AtomicU32>(STATE, 1)[0]
    }

    fn peers(&self) -> Peers<'_> {
        Peers(self.region.meta_at::<AtomicU64>(PEERS, WORDS))
    }

    fn value(&self) -> *mut T {
        self.region.data_ptr().cast::<T>().as_ptr()
    }

    /// Publishes `value`, once: a second send is refused (unless the first sender died
    /// while writing, which leaves the value to be sent anew).
    pub fn send(&self, value: T) -> Result<(), OneshotError<T>> {
        let Ok(tag) = self.peers().join(Role::Sender) else { return Err(OneshotError::TooManyPeers(value)) };
        let word = self.word();
        let mut cur = word.load(Ordering::Relaxed);
        loop {
            let free = match cur & 3 {
                EMPTY => true,
                WRITING => self.peers().dead(cur >> 2 & ((1 << 20) - 1)),
                _ => false,
            };
            if !free {
                self.peers().leave(tag, Role::Sender);
                return Err(OneshotError::AlreadySent(value));
            }
            let claimed = (cur & WAITING) | tag << 2 | WRITING;
            match word.compare_exchange(cur, claimed, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        // SAFETY: `WRITING` with this sender's tag: no one else touches the value.
        unsafe { self.value().write(value) };
        // SYNC: Release pairs with the Acquire CAS of `try_recv`: the value is written
        // before `READY` is seen.
        if word.swap(READY, Ordering::Release) & WAITING != 0 {
            wait::wake_sleepers(word);
        }
        self.peers().leave(tag, Role::Sender);
        Ok(())
    }

    /// Takes the value if it is there: `Empty` if not yet, `Disconnected` if it was
    /// taken already or its sender died writing it.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let word = self.word();
        let cur = word.load(Ordering::Relaxed);
        match cur & 3 {
            // SYNC: Acquire pairs with the Release swap of `send`.
            READY if word.compare_exchange(cur, TAKEN, Ordering::Acquire, Ordering::Relaxed).is_ok() => {
                // SAFETY: `READY` taken by this receiver alone; the value was published.
                Ok(unsafe { self.value().read() })
            }
            READY => self.try_recv(),
            TAKEN => Err(TryRecvError::Disconnected),
            WRITING if self.peers().dead(cur >> 2 & ((1 << 20) - 1)) => Err(TryRecvError::Disconnected),
            _ => Err(TryRecvError::Empty),
        }
    }

    /// Takes the value, waiting for it as long as it takes.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.recv_until(None)
    }

    /// Takes the value, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvError> {
        self.recv_until(Instant::now().checked_add(timeout))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvError> {
        let word = self.word();
        loop {
            match self.try_recv() {
                Ok(v) => return Ok(v),
                Err(TryRecvError::Disconnected) => return Err(RecvError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RecvError::Timeout);
            }
            let cur = word.load(Ordering::Relaxed);
            if matches!(cur & 3, EMPTY | WRITING)
                && word.compare_exchange(cur, cur | WAITING, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                wait::sleep(word, cur | WAITING, deadline);
            }
        }
    }
}
