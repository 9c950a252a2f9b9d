//! `Spsc<T>`: a ring with one sender and one receiver, in shared memory.
//!
//! Layer: channel. Lamport's ring with cached indices (after Lamport 1977 and the
//! "FastForward" / rigtorp `SPSCQueue` cache of the other end's index). Each end's
//! count is a 31-bit wrapping counter in its own futex word on its own cache line; bit
//! 31 of a word is set by the *other* end while it waits on that word:
//!
//! | word   | written by (plain stores)  | bit 31 (`WAITING`)                 |
//! |--------|----------------------------|------------------------------------|
//! | `tail` | the sender                 | the sender waits for room          |
//! | `head` | the receiver               | the receiver waits for a value     |
//!
//! An end publishes its count with a Release store, then looks at the other end's
//! flag and wakes it if set; a waiter sets its own flag, then looks at the other end's
//! count and sleeps on it. Both are a store then a load of the other word (Dekker),
//! which needs a full fence on both sides: the hot side (every send and receive) has a
//! compiler fence only, and the waiter, about to sleep, runs membarrier(2) for both
//! (`asym.rs`), so either the waiter sees the new count or the publisher sees the flag. A process killed at any instant leaves both words whole: an
//! unpublished slot is simply not there. Each end is claimed by one handle at a time
//! (a dead holder's end can be claimed again).
//!
//! Modelled in `tests/loom_channel.rs`.
#![allow(unsafe_code)]

use super::peers::{Peers, Role, Tag, TAG_BITS, WORDS};
use super::{shape, ChannelError, RecvError, SendError, Since, Spin, TryRecvError, TrySendError};
use crate::asym;
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
/// Joins of each side (`super::joins`).
const JOINS: u64 = 152;
/// Non-zero once a process holding an end could not register for membarrier: every
/// end then fences fully on its hot path (`asym.rs`).
const SYMMETRIC: u64 = 160;
const PEERS: u64 = 192;
const META: u64 = PEERS + 8 * WORDS as u64;

/// The two count words of a ring: what both ends and the model share.
#[derive(Clone, Copy)]
pub(crate) struct Ends<'a> {
    pub(crate) tail: &'a AtomicU32,
    pub(crate) head: &'a AtomicU32,
    pub(crate) cap: u32,
    /// The hot side may use a compiler fence (`asym`).
    pub(crate) asym: bool,
}

impl Ends<'_> {
    /// Whether the slot at count `tail` is free, refreshing the sender's copy of `head`.
    #[inline(always)]
    pub(crate) fn has_room(&self, tail: u32, head: &mut u32) -> bool {
        if tail.wrapping_sub(*head) & COUNT < self.cap {
            return true;
        }
        // SYNC: Acquire pairs with the receiver's Release store in `consumed`: it read
        // the slot before freeing it.
        *head = self.head.load(Ordering::Acquire) & COUNT;
        tail.wrapping_sub(*head) & COUNT < self.cap
    }

    /// Publishes the slot at count `tail`; whether a receiver waits to be woken.
    #[inline(always)]
    pub(crate) fn published(&self, tail: u32) -> bool {
        // SYNC: Release pairs with the receiver's Acquire in `has_item`: the slot's
        // bytes are written before the count says so. (It also clears the sender's own
        // waiting flag.)
        self.tail.store(tail.wrapping_add(1) & COUNT, Ordering::Release);
        asym::light(self.asym);
        self.head.load(Ordering::Relaxed) & WAITING != 0
    }

    /// Whether the slot at count `head` holds a value, refreshing the receiver's copy of
    /// `tail`.
    #[inline(always)]
    pub(crate) fn has_item(&self, head: u32, tail: &mut u32) -> bool {
        if *tail != head {
            return true;
        }
        // SYNC: Acquire pairs with the sender's Release store in `published`.
        *tail = self.tail.load(Ordering::Acquire) & COUNT;
        *tail != head
    }

    /// Frees the slot at count `head`; whether a sender waits to be woken.
    #[inline(always)]
    pub(crate) fn consumed(&self, head: u32) -> bool {
        // SYNC: Release pairs with the sender's Acquire in `has_room`.
        self.head.store(head.wrapping_add(1) & COUNT, Ordering::Release);
        asym::light(self.asym);
        self.tail.load(Ordering::Relaxed) & WAITING != 0
    }

    /// The receiver's wait for the slot at count `head`: flags its own word, fences
    /// (the rare side of `asym`), and sleeps on the sender's word while it still says
    /// empty. The flag is cleared again before returning.
    pub(crate) fn wait_for_item(&self, head: u32, deadline: Option<Instant>) {
        wait_on(self.head, head, self.tail, |t| t == head, self.asym, deadline);
    }

    /// The sender's wait for room at count `tail`, likewise.
    pub(crate) fn wait_for_room(&self, tail: u32, deadline: Option<Instant>) {
        let cap = self.cap;
        wait_on(self.tail, tail, self.head, |h| tail.wrapping_sub(h) & COUNT >= cap, self.asym, deadline);
    }
}

/// Flags `mine` (holding count `at`) as waiting, then sleeps on `theirs` while
/// `blocked(their count)`; clears the flag after.
fn wait_on(
    mine: &AtomicU32,
    at: u32,
    theirs: &AtomicU32,
    blocked: impl Fn(u32) -> bool,
    asymmetric: bool,
    deadline: Option<Instant>,
) {
    // Relaxed: the word is this end's own; the fence below orders it before the load.
    mine.store(at | WAITING, Ordering::Relaxed);
    asym::heavy(asymmetric);
    // SYNC: Acquire pairs with the other end's Release store of its count.
    let seen = theirs.load(Ordering::Acquire);
    if blocked(seen & COUNT) {
        wait::sleep(theirs, seen, deadline);
    }
    mine.store(at, Ordering::Relaxed);
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
    }

    /// The ring named `name` in `heap`, created by the first caller in any process.
    pub fn named(heap: &Heap, name: &str, capacity: u32) -> Result<Self, PoolError> {
        crate::pools::named(
            heap,
            name,
            Self::footprint(capacity)?,
            |at| Self::create(heap, at, capacity),
            |at| Self::open(heap, at),
            |ch| ch.cap == capacity,
        )
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
        let e = self.ends(false);
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

    /// The count words; `registered`: this process may use the asymmetric barrier.
    fn ends(&self, registered: bool) -> Ends<'_> {
        let asym = registered && self.word64(SYMMETRIC).load(Ordering::Relaxed) == 0;
        Ends { tail: self.word32(TAIL), head: self.word32(HEAD), cap: self.cap, asym }
    }

    /// Registers this process for the asymmetric barrier, or switches the ring to full
    /// fences for every end if it cannot.
    fn register(&self) -> bool {
        let ok = asym::register();
        if !ok {
            self.word64(SYMMETRIC).store(1, Ordering::Relaxed);
        }
        ok
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
        super::joined(self.word64(JOINS), role);
        Ok(tag)
    }

    /// What a new end of `role` knows of the other side.
    fn since(&self, role: Role) -> Since {
        let other = if role == Role::Sender { Role::Receiver } else { Role::Sender };
        Since { attached: self.peers().registered(other), joins: super::joins(self.word64(JOINS), other) }
    }

    /// The sending end: one at a time (a dead holder's end can be taken again).
    pub fn sender(&self) -> Result<Sender<'_, T>, ChannelError> {
        let tag = self.claim(Role::Sender, ROLE_TX, "sending")?;
        let since = self.since(Role::Sender);
        let registered = self.register();
        let e = self.ends(false);
        let tail = e.tail.load(Ordering::Acquire) & COUNT;
        let head = e.head.load(Ordering::Acquire) & COUNT;
        Ok(Sender { ch: self, tag, tail, head, registered, since })
    }

    /// The receiving end: one at a time (a dead holder's end can be taken again).
    pub fn receiver(&self) -> Result<Receiver<'_, T>, ChannelError> {
        let tag = self.claim(Role::Receiver, ROLE_RX, "receiving")?;
        let since = self.since(Role::Receiver);
        let registered = self.register();
        let e = self.ends(false);
        let head = e.head.load(Ordering::Acquire) & COUNT;
        let tail = e.tail.load(Ordering::Acquire) & COUNT;
        Ok(Receiver { ch: self, tag, head, tail, registered, since })
    }

    /// Whether the other end (`other`) is gone for an end made at `since`.
    fn gone(&self, other: Role, since: Since, look: bool) -> bool {
        super::gone(self.peers(), self.word64(JOINS), other, since, look)
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

/// The sending end of an [`Spsc`].
pub struct Sender<'a, T: ShmSafe + Copy> {
    ch: &'a Spsc<T>,
    tag: Tag,
    /// The next count to send at.
    tail: u32,
    /// The receiver's count, as last read.
    head: u32,
    /// This process registered for the asymmetric barrier.
    registered: bool,
    /// What this end knew of the other when it was made.
    since: Since,
}

impl<T: ShmSafe + Copy> Sender<'_, T> {
    /// Sends `value` if there is room.
    #[inline]
    pub fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        let e = self.ch.ends(self.registered);
        if !e.has_room(self.tail, &mut self.head) {
            if self.ch.gone(Role::Receiver, self.since, false) {
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
            if self.ch.gone(Role::Receiver, self.since, true) {
                return Err(SendError::Disconnected(value));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(SendError::Timeout(value));
            }
            self.ch.ends(self.registered).wait_for_room(self.tail, deadline);
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
    /// This process registered for the asymmetric barrier.
    registered: bool,
    /// What this end knew of the other when it was made.
    since: Since,
}

impl<T: ShmSafe + Copy> Receiver<'_, T> {
    /// Takes the next value if there is one.
    #[inline]
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let e = self.ch.ends(self.registered);
        if !e.has_item(self.head, &mut self.tail) {
            if self.ch.gone(Role::Sender, self.since, false) && !e.has_item(self.head, &mut self.tail) {
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
            if self.ch.gone(Role::Sender, self.since, true) && self.try_recv_empty() {
                return Err(RecvError::Disconnected);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RecvError::Timeout);
            }
            self.ch.ends(self.registered).wait_for_item(self.head, deadline);
        }
    }

    fn try_recv_empty(&mut self) -> bool {
        !self.ch.ends(self.registered).has_item(self.head, &mut self.tail)
    }
}

impl<T: ShmSafe + Copy> Drop for Receiver<'_, T> {
    fn drop(&mut self) {
        self.ch.release_end(self.tag, Role::Receiver, ROLE_RX, HEAD);
    }
}
