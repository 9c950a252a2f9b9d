//! `Spsc<T>`: a ring with one sender and one receiver, in shared memory.
//!
//! Layer: channel. Lamport's ring with cached indices (after Lamport 1977 and the
//! "FastForward" / rigtorp `SPSCQueue` cache of the other end's index). Each end's
//! count is a 31-bit wrapping counter in its own futex word on its own cache line; bit
//! 31 of a word is set by the *other* end while it waits on that word:
//!
//! | word   | written by                 | bit 31 (`WAITING`)                |
//! |--------|----------------------------|-----------------------------------|
//! | `tail` | the sender (swap, Release) | set by a receiver waiting for data |
//! | `head` | the receiver (swap, Release) | set by a sender waiting for room |
//!
//! An end publishes with one swap that also clears the other end's flag, and wakes it if
//! the flag was set; the waiter sets the flag with a CAS of the very value it then
//! sleeps on, so a publication either fails that CAS (and the waiter looks again) or
//! sees the flag. A process killed at any instant leaves both words whole: an
//! unpublished slot is simply not there. Each end is claimed by one handle at a time
//! (a dead holder's end can be claimed again).
//!
//! Modelled in `tests/loom_channel.rs`.
#![allow(unsafe_code)]

use super::peers::{Peers, Role, Tag, TAG_BITS, WORDS};
use super::{shape, ChannelError, RecvError, SendError, Spin, TryRecvError, TrySendError};
use crate::heap::Heap;
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::offset::ShmSafe;
use crate::pools::region::{Geometry, Host, Kind, Region};
use crate::pools::{wait, PoolError};
use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use std::time::{Duration, Instant};

pub(crate) const COUNT: u32 = (1 << 31) - 1;
pub(crate) const WAITING: u32 = 1 << 31;
/// The largest capacity.
pub const MAX_CAPACITY: u32 = 1 << 30;

// Meta layout (bytes): each word on its own cache line, then the peer table.
const TAIL: u64 = 0;
const HEAD: u64 = 64;
const SHAPE: u64 = 128;
const ROLE_TX: u64 = 136;
const ROLE_RX: u64 = 144;
/// Bit 0: a sender has been attached; bit 1: a receiver.
const EVER: u64 = 152;
const PEERS: u64 = 192;
const META: u64 = PEERS + 8 * WORDS as u64;

/// The two count words of a ring: what both ends and the model share.
#[derive(Clone, Copy)]
pub(crate) struct Ends<'a> {
    pub(crate) tail: &'a AtomicU32,
    pub(crate) head: &'a AtomicU32,
    pub(crate) cap: u32,
}

impl Ends<'_> {
    /// Whether the slot at count `tail` is free, refreshing the sender's copy of `head`.
    #[inline(always)]
    pub(crate) fn has_room(&self, tail: u32, head: &mut u32) -> bool {
        if tail.wrapping_sub(*head) & COUNT < self.cap {
            return true;
        }
        // SYNC: Acquire pairs with the receiver's Release swap in `consumed`: it read
        // the slot before freeing it.
        *head = self.head.load(Ordering::Acquire) & COUNT;
        tail.wrapping_sub(*head) & COUNT < self.cap
    }

    /// Publishes the slot at count `tail`; whether a receiver waits to be woken.
    #[inline(always)]
    pub(crate) fn published(&self, tail: u32) -> bool {
        // SYNC: Release pairs with the receiver's Acquire in `has_item`: the slot's
        // bytes are written before the count says so.
        self.tail.swap(tail.wrapping_add(1) & COUNT, Ordering::Release) & WAITING != 0
    }

    /// Whether the slot at count `head` holds a value, refreshing the receiver's copy of
    /// `tail`.
    #[inline(always)]
    pub(crate) fn has_item(&self, head: u32, tail: &mut u32) -> bool {
        if *tail != head {
            return true;
        }
        // SYNC: Acquire pairs with the sender's Release swap in `published`.
        *tail = self.tail.load(Ordering::Acquire) & COUNT;
        *tail != head
    }

    /// Frees the slot at count `head`; whether a sender waits to be woken.
    #[inline(always)]
    pub(crate) fn consumed(&self, head: u32) -> bool {
        // SYNC: Release pairs with the sender's Acquire in `has_room`.
        self.head.swap(head.wrapping_add(1) & COUNT, Ordering::Release) & WAITING != 0
    }
}

/// Flags `word` as waited on while its count is still `seen`; the value to sleep on,
/// or `None` if the count moved (look again).
pub(crate) fn announce(word: &AtomicU32, seen: u32) -> Option<u32> {
    let cur = word.load(Ordering::Relaxed);
    if cur & COUNT != seen {
        return None;
    }
    let flagged = cur | WAITING;
    // Relaxed: the flag carries no data; the other end's swap reads it (an RMW on this
    // word, ordered after this CAS or making it fail).
    word.compare_exchange(cur, flagged, Ordering::Relaxed, Ordering::Relaxed).ok().map(|_| flagged)
}

/// A ring of `T` with one sender and one receiver, in shared memory.
pub struct Spsc<T: ShmSafe + Copy> {
    region: Region,
    cap: u32,
    _t: PhantomData<fn() -> T>,
}

impl<T: ShmSafe + Copy> core::fmt::Debug for Spsc<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Spsc").field("offset", &self.region.at()).field("capacity", &self.cap).finish()
    }
}

// SAFETY: the slots are reached only through the ends, which the protocol keeps apart;
// `T: ShmSafe` holds no pointers.
unsafe impl<T: ShmSafe + Copy> Sync for Spsc<T> {}
// SAFETY: as above.
unsafe impl<T: ShmSafe + Copy> Send for Spsc<T> {}

impl<T: ShmSafe + Copy> Spsc<T> {
    fn planned(unit: u64, count: u64) -> Option<Geometry> {
        // Any value size: a ring of another `T` is told apart by its shape word.
        let ok =
            unit > 0 && count.is_power_of_two() && count <= u64::from(MAX_CAPACITY) && align_of::<T>() <= 64;
        ok.then(|| Geometry::plan(unit, count, META)).flatten()
    }

    fn plan(capacity: u32) -> Result<Geometry, PoolError> {
        Self::planned(size_of::<T>().max(1) as u64, u64::from(capacity))
            .ok_or(PoolError::InvalidGeometry("capacity must be a power of two up to 2^30"))
    }

    /// Bytes a ring of `capacity` values occupies.
    pub fn footprint(capacity: u32) -> Result<u64, PoolError> {
        Ok(Self::plan(capacity)?.bytes())
    }

    /// Formats an empty ring of `capacity` (a power of two) values at `at` (64-aligned)
    /// of `host`'s segment.
    pub fn create(host: impl Into<Host>, at: u64, capacity: u32) -> Result<Self, PoolError> {
        let region = Region::format(host.into(), at, Kind::Spsc, Self::plan(capacity)?, |r| {
            for w in r.meta::<AtomicU64>((META / 8) as usize) {
                w.store(0, Ordering::Relaxed);
            }
            r.meta_at::<AtomicU64>(SHAPE, 1)[0].store(shape::<T>(), Ordering::Relaxed);
        })?;
        Ok(Self { region, cap: capacity, _t: PhantomData })
    }

    /// Opens the ring created at `at` (in any process) for the same `T`.
    pub fn open(host: impl Into<Host>, at: u64) -> Result<Self, PoolError> {
        let region = Region::open(host.into(), at, Kind::Spsc, Self::planned)?;
        if region.meta_at::<AtomicU64>(SHAPE, 1)[0].load(Ordering::Relaxed) != shape::<T>() {
            return Err(PoolError::Mismatch(format!("the channel at offset {at}")));
        }
        let cap = region.geometry().count as u32;
        Ok(Self { region, cap, _t: PhantomData })
    }

    /// A ring in a block of `heap`.
    pub fn create_in(heap: &Heap, capacity: u32) -> Result<Self, PoolError> {
        crate::pools::in_heap(heap, Self::footprint(capacity)?, |at| Self::create(heap, at, capacity))
            .map(|(c, _)| c)
    }

    /// The ring named `name` in `heap`, created by the first caller in any process.
    pub fn named(heap: &Heap, name: &str, capacity: u32) -> Result<Self, PoolError> {
        let ch = crate::pools::named(
            heap,
            name,
            Self::footprint(capacity)?,
            |at| Self::create(heap, at, capacity),
            |at| Self::open(heap, at),
        )?;
        if ch.cap != capacity {
            return Err(PoolError::Mismatch(name.into()));
        }
        Ok(ch)
    }

    /// Where the ring is in its segment: what [`Spsc::open`] takes.
    pub fn offset(&self) -> u64 {
        self.region.at()
    }

    /// Values the ring holds at most.
    pub fn capacity(&self) -> u32 {
        self.cap
    }

    /// Values in the ring now (a snapshot).
    pub fn len(&self) -> u32 {
        let e = self.ends();
        let (t, h) = (e.tail.load(Ordering::Acquire) & COUNT, e.head.load(Ordering::Acquire) & COUNT);
        t.wrapping_sub(h) & COUNT
    }

    /// Whether the ring is empty now (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn word32(&self, at: u64) -> &AtomicU32 {
        &self.region.meta_at::<AtomicU32>(at, 1)[0]
    }

    fn word64(&self, at: u64) -> &AtomicU64 {
        &self.region.meta_at::<AtomicU64>(at, 1)[0]
    }

    fn ends(&self) -> Ends<'_> {
        Ends { tail: self.word32(TAIL), head: self.word32(HEAD), cap: self.cap }
    }

    fn peers(&self) -> Peers<'_> {
        Peers(self.region.meta_at::<AtomicU64>(PEERS, WORDS))
    }

    fn slot(&self, count: u32) -> *mut T {
        let i = (count & (self.cap - 1)) as usize;
        // SAFETY: `i < cap`, and the data holds `cap` values of `T` (the plan).
        unsafe { self.region.data_ptr().cast::<T>().as_ptr().add(i) }
    }

    /// Claims an end (`role_at`) for a new handle.
    fn claim(&self, role: Role, role_at: u64, name: &'static str) -> Result<Tag, ChannelError> {
        let tag = self.peers().join(role)?;
        let word = self.word64(role_at);
        let cur = word.load(Ordering::Acquire);
        let free = cur == 0 || self.peers().dead((cur - 1) as u32);
        // SYNC: Acquire pairs with the Release store of the end's last holder (its drop):
        // its last count is seen.
        if !free
            || word.compare_exchange(cur, u64::from(tag) + 1, Ordering::Acquire, Ordering::Relaxed).is_err()
        {
            self.peers().leave(tag, role);
            return Err(ChannelError::Taken(name));
        }
        let bit = if role == Role::Sender { 1 } else { 2 };
        self.word64(EVER).fetch_or(bit, Ordering::Relaxed);
        Ok(tag)
    }

    /// The sending end: one at a time (a dead holder's end can be taken again).
    pub fn sender(&self) -> Result<Sender<'_, T>, ChannelError> {
        let tag = self.claim(Role::Sender, ROLE_TX, "sending")?;
        let e = self.ends();
        let tail = e.tail.load(Ordering::Acquire) & COUNT;
        let head = e.head.load(Ordering::Acquire) & COUNT;
        Ok(Sender { ch: self, tag, tail, head })
    }

    /// The receiving end: one at a time (a dead holder's end can be taken again).
    pub fn receiver(&self) -> Result<Receiver<'_, T>, ChannelError> {
        let tag = self.claim(Role::Receiver, ROLE_RX, "receiving")?;
        let e = self.ends();
        let head = e.head.load(Ordering::Acquire) & COUNT;
        let tail = e.tail.load(Ordering::Acquire) & COUNT;
        Ok(Receiver { ch: self, tag, head, tail })
    }

    /// Whether the other end of `role` is gone: it was attached once and no handle of
    /// it is registered now, or (when `look`) none that is registered still runs.
    fn gone(&self, other: Role, look: bool) -> bool {
        let bit = if other == Role::Sender { 1 } else { 2 };
        if self.word64(EVER).load(Ordering::Relaxed) & bit == 0 {
            return false;
        }
        !self.peers().registered(other) || (look && !self.peers().live(other))
    }

    fn release_end(&self, tag: Tag, role: Role, role_at: u64, wake_at: u64) {
        // SYNC: Release pairs with the Acquire of the next `claim`.
        self.word64(role_at).store(0, Ordering::Release);
        self.peers().leave(tag, role);
        // The other end may sleep: wake it to look at the table.
        wait::wake_sleepers(self.word32(wake_at));
    }
}

const _: () = assert!(TAG_BITS < 32);

/// Sleeps on `word` (flagged while its count is `seen`) until woken, `deadline`, or the
/// bounded sleep ends; false once `deadline` has passed.
fn sleep_on(word: &AtomicU32, seen: u32, deadline: Option<Instant>) -> bool {
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return false;
    }
    if let Some(flagged) = announce(word, seen) {
        wait::sleep(word, flagged, deadline);
    }
    true
}

/// The sending end of an [`Spsc`].
pub struct Sender<'a, T: ShmSafe + Copy> {
    ch: &'a Spsc<T>,
    tag: Tag,
    /// The next count to send at.
    tail: u32,
    /// The receiver's count, as last read.
    head: u32,
}

impl<T: ShmSafe + Copy> Sender<'_, T> {
    /// Sends `value` if there is room.
    #[inline]
    pub fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        let e = self.ch.ends();
        if !e.has_room(self.tail, &mut self.head) {
            if self.ch.gone(Role::Receiver, false) {
                return Err(TrySendError::Disconnected(value));
            }
            return Err(TrySendError::Full(value));
        }
        // SAFETY: the slot is free (the receiver is past it) and only this sender writes
        // it until the publication below.
        unsafe { self.ch.slot(self.tail).write(value) };
        if e.published(self.tail) {
            wait::wake_sleepers(e.tail);
        }
        self.tail = self.tail.wrapping_add(1) & COUNT;
        Ok(())
    }

    /// Sends `value`, waiting for room as long as it takes.
    pub fn send(&mut self, value: T) -> Result<(), SendError<T>> {
        self.send_until(value, None)
    }

    /// Sends `value`, waiting up to `timeout` for room.
    pub fn send_timeout(&mut self, value: T, timeout: Duration) -> Result<(), SendError<T>> {
        self.send_until(value, Instant::now().checked_add(timeout))
    }

    fn send_until(&mut self, mut value: T, deadline: Option<Instant>) -> Result<(), SendError<T>> {
        let mut spin = Spin::default();
        loop {
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(v)) => return Err(SendError::Disconnected(v)),
                Err(TrySendError::Full(v)) => value = v,
            }
            if spin.again() {
                continue;
            }
            if self.ch.gone(Role::Receiver, true) {
                return Err(SendError::Disconnected(value));
            }
            if !sleep_on(self.ch.ends().head, self.head, deadline) {
                return Err(SendError::Timeout(value));
            }
        }
    }
}

impl<T: ShmSafe + Copy> Drop for Sender<'_, T> {
    fn drop(&mut self) {
        self.ch.release_end(self.tag, Role::Sender, ROLE_TX, TAIL);
    }
}

/// The receiving end of an [`Spsc`].
pub struct Receiver<'a, T: ShmSafe + Copy> {
    ch: &'a Spsc<T>,
    tag: Tag,
    /// The next count to receive at.
    head: u32,
    /// The sender's count, as last read.
    tail: u32,
}

impl<T: ShmSafe + Copy> Receiver<'_, T> {
    /// Takes the next value if there is one.
    #[inline]
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let e = self.ch.ends();
        if !e.has_item(self.head, &mut self.tail) {
            if self.ch.gone(Role::Sender, false) && !e.has_item(self.head, &mut self.tail) {
                return Err(TryRecvError::Disconnected);
            }
            return Err(TryRecvError::Empty);
        }
        // SAFETY: the slot was published (the sender's Release, our Acquire) and the
        // sender writes it again only after the count below frees it.
        let value = unsafe { self.ch.slot(self.head).read() };
        if e.consumed(self.head) {
            wait::wake_sleepers(e.head);
        }
        self.head = self.head.wrapping_add(1) & COUNT;
        Ok(value)
    }

    /// Takes the next value, waiting as long as it takes.
    pub fn recv(&mut self) -> Result<T, RecvError> {
        self.recv_until(None)
    }

    /// Takes the next value, waiting up to `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvError> {
        self.recv_until(Instant::now().checked_add(timeout))
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<T, RecvError> {
        let mut spin = Spin::default();
        loop {
            match self.try_recv() {
                Ok(v) => return Ok(v),
                Err(TryRecvError::Disconnected) => return Err(RecvError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            if spin.again() {
                continue;
            }
            if self.ch.gone(Role::Sender, true) && self.try_recv_empty() {
                return Err(RecvError::Disconnected);
            }
            if !sleep_on(self.ch.ends().tail, self.head, deadline) {
                return Err(RecvError::Timeout);
            }
        }
    }

    fn try_recv_empty(&mut self) -> bool {
        !self.ch.ends().has_item(self.head, &mut self.tail)
    }
}

impl<T: ShmSafe + Copy> Drop for Receiver<'_, T> {
    fn drop(&mut self) {
        self.ch.release_end(self.tag, Role::Receiver, ROLE_RX, HEAD);
    }
}
