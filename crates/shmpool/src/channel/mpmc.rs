//! `Mpmc<T>`: a bounded ring with any number of senders and receivers, in shared
//! memory, that survives any of them being killed mid-operation.
//!
//! Layer: channel. After Vyukov's bounded MPMC queue (per-slot sequence numbers), with
//! one change for survival: an operation claims its *slot* by a CAS of the slot's word,
//! naming itself in it, before the head or tail moves (the counters are only hints that
//! anyone advances). A slot's word:
//!
//! | bits   | field    | meaning                                              |
//! |--------|----------|------------------------------------------------------|
//! | 24..64 | `pos`    | the position the slot serves next (or now)          |
//! | 22..24 | `state`  | `EMPTY`, `WRITING`, `FULL`, `READING`               |
//! | 21     | `RX`     | a receiver waits for this slot to fill               |
//! | 20     | `TX`     | a sender waits for this slot to empty                |
//! | 0..20  | `tag`    | the claimer (`peers::Tag`), while writing or reading |
//!
//! Slot `i` starts as `(pos i, EMPTY)`. A sender at tail `t` claims `(t, EMPTY)` →
//! `(t, WRITING, tag)`, moves the tail on, writes the value and publishes `(t, FULL)`
//! with a swap; a receiver at head `h` claims `(h, FULL)` → `(h, READING, tag)`, moves
//! the head on, reads the value and frees the slot as `(h + cap, EMPTY)` with a swap.
//! The swaps clear the wait flags and wake the other side if one was set (the pattern
//! of the slot pool's bitmap: the waiter and the publisher meet in the slot's word).
//!
//! A claimer killed while writing or reading leaves its slot `WRITING`/`READING` with a
//! dead tag: a waiter that finds it so (it looks at every bounded sleep) frees it as
//! `(pos + cap, EMPTY)` — the message being sent or received then is lost, nothing else.
//!
//! Modelled in `tests/loom_channel.rs`.
#![allow(unsafe_code)]

use super::peers::{Peers, Role, Tag, WORDS};
use super::{shape, ChannelError, RecvError, SendError, Since, Spin, TryRecvError, TrySendError};
use crate::heap::Heap;
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::offset::ShmSafe;
use crate::pools::region::{Geometry, Host, Kind, Region};
use crate::pools::{wait, PoolError};
use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use std::time::{Duration, Instant};

const POS_SHIFT: u32 = 24;
const STATE_SHIFT: u32 = 22;
pub(crate) const EMPTY: u64 = 0;
pub(crate) const WRITING: u64 = 1;
pub(crate) const FULL: u64 = 2;
pub(crate) const READING: u64 = 3;
pub(crate) const RX: u64 = 1 << 21;
pub(crate) const TX: u64 = 1 << 20;
const TAG: u64 = (1 << 20) - 1;

/// Positions are kept modulo 2^40 in a slot's word; compared as laps apart.
const POS_MASK: u64 = (1 << 40) - 1;

pub(crate) fn pos(w: u64) -> u64 {
    w >> POS_SHIFT
}

/// How slot position `p` (40 bits) stands to the counter `t`: 0 at it, positive ahead
/// of it, negative behind (positions never drift apart by 2^39).
fn lead(p: u64, t: u64) -> i64 {
    let d = p.wrapping_sub(t) & POS_MASK;
    if d < 1 << 39 {
        d as i64
    } else {
        d as i64 - (1 << 40)
    }
}

pub(crate) fn state(w: u64) -> u64 {
    (w >> STATE_SHIFT) & 3
}

pub(crate) fn word(pos: u64, state: u64, tag: Tag) -> u64 {
    (pos & POS_MASK) << POS_SHIFT | state << STATE_SHIFT | u64::from(tag)
}

fn tag(w: u64) -> Tag {
    (w & TAG) as Tag
}

/// The ring's shared words: head and tail hints and the slots' words (`slot(i)`).
pub(crate) struct Core<'a, S: Fn(u64) -> &'a AtomicU64> {
    pub(crate) head: &'a AtomicU64,
    pub(crate) tail: &'a AtomicU64,
    pub(crate) cap: u64,
    pub(crate) slot: S,
}

/// What an attempt found instead of a slot to use: the position and word it looked at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Busy {
    pub(crate) pos: u64,
    pub(crate) word: u64,
}

impl<'a, S: Fn(u64) -> &'a AtomicU64> Core<'a, S> {
    fn at(&self, pos: u64) -> &'a AtomicU64 {
        (self.slot)(pos % self.cap)
    }

    /// Moves a hint from `from` on by one (whoever sees it behind helps).
    fn advance(hint: &AtomicU64, from: u64) {
        let _ = hint.compare_exchange(from, from + 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Claims the slot for the next send as `tag`; its position, or what filled it.
    #[inline]
    pub(crate) fn claim_send(&self, tag: Tag) -> Result<u64, Busy> {
        loop {
            let t = self.tail.load(Ordering::Relaxed);
            let slot = self.at(t);
            // SYNC: Acquire pairs with the Release swap of `freed`: the last receiver of
            // this slot read its value before.
            let w = slot.load(Ordering::Acquire);
            match lead(pos(w), t) {
                0 if state(w) == EMPTY => {
                    let claimed = word(t, WRITING, tag) | (w & (RX | TX));
                    // SYNC: Acquire, as the load; Release pairs with a repairer's Acquire
                    // load of the word: this claimer's registration is seen with its tag.
                    if slot.compare_exchange(w, claimed, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                        Self::advance(self.tail, t);
                        return Ok(t);
                    }
                }
                // Claimed at this lap by another sender, or used already: the hint lags.
                d if d >= 0 => Self::advance(self.tail, t),
                // Still holds the previous lap's value: full.
                _ => return Err(Busy { pos: t, word: w }),
            }
        }
    }

    /// Publishes the value written at `pos`; the wait flags it cleared.
    #[inline]
    pub(crate) fn published(&self, pos: u64) -> u64 {
        // SYNC: Release pairs with the Acquire of `claim_recv`: the value is written
        // before the slot says FULL. Acquire pairs with a waiter's Release flag.
        self.at(pos).swap(word(pos, FULL, 0), Ordering::AcqRel) & (RX | TX)
    }

    /// Claims the slot of the next value as `tag`; its position, or what it found.
    #[inline]
    pub(crate) fn claim_recv(&self, tag: Tag) -> Result<u64, Busy> {
        loop {
            let h = self.head.load(Ordering::Relaxed);
            let slot = self.at(h);
            // SYNC: Acquire pairs with the Release swap of `published`.
            let w = slot.load(Ordering::Acquire);
            match (lead(pos(w), h), state(w)) {
                (0, FULL) => {
                    let claimed = word(h, READING, tag) | (w & (RX | TX));
                    // SYNC: AcqRel, as in `claim_send`.
                    if slot.compare_exchange(w, claimed, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                        Self::advance(self.head, h);
                        return Ok(h);
                    }
                }
                (0, READING) => Self::advance(self.head, h),
                (d, _) if d > 0 => Self::advance(self.head, h),
                // Empty, or a sender is still writing: nothing yet.
                _ => return Err(Busy { pos: h, word: w }),
            }
        }
    }

    /// Frees the slot read at `pos` for the next lap; the wait flags it cleared.
    #[inline]
    pub(crate) fn freed(&self, pos: u64) -> u64 {
        // SYNC: Release pairs with the Acquire of `claim_send`: the value was read before
        // the slot is free. Acquire pairs with a waiter's Release flag.
        self.at(pos).swap(word(pos + self.cap, EMPTY, 0), Ordering::AcqRel) & (RX | TX)
    }

    /// Flags the slot a waiter found `busy` (with `flag`: `RX` or `TX`) if its word is
    /// unchanged; false if it changed (look again).
    pub(crate) fn flag(&self, busy: Busy, flag: u64) -> bool {
        // SYNC: Release pairs with the Acquire of the swap that reads the flag: the
        // waiter's read of the wake sequence happens before the waker bumps it.
        self.at(busy.pos)
            .compare_exchange(busy.word, busy.word | flag, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Frees a slot whose claimer died writing or reading it (`dead(tag)`): the message
    /// it was moving is lost. Whether it did.
    pub(crate) fn repair(&self, busy: Busy, dead: impl Fn(Tag) -> bool) -> bool {
        let w = busy.word;
        let stuck = matches!(state(w), WRITING | READING) && dead(tag(w));
        // A READING slot of the previous lap (pos = busy.pos - cap) or a WRITING slot of
        // this one: either way the slot's next position is pos(w) + cap.
        let freed = word(pos(w) + self.cap, EMPTY, 0);
        // Relaxed: the dead claimer published nothing to order.
        stuck && self.at(busy.pos).compare_exchange(w, freed, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

// Meta layout (bytes).
const HEAD: u64 = 0;
const TAIL: u64 = 64;
const RX_WAKE: u64 = 128;
const TX_WAKE: u64 = 192;
const SHAPE: u64 = 200;
/// Joins of each side (`super::joins`).
const JOINS: u64 = 208;
const PEERS: u64 = 256;
const META: u64 = PEERS + 8 * WORDS as u64;

/// A bounded ring of `T` with any number of senders and receivers, in shared memory.
pub struct Mpmc<T: ShmSafe + Copy> {
    region: Region,
    cap: u32,
    stride: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T: ShmSafe + Copy> core::fmt::Debug for Mpmc<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mpmc").field("offset", &self.region.at()).field("capacity", &self.cap).finish()
    }
}

// SAFETY: a slot's value is reached only by the claimer the slot's word names.
unsafe impl<T: ShmSafe + Copy> Sync for Mpmc<T> {}
// SAFETY: as above.
unsafe impl<T: ShmSafe + Copy> Send for Mpmc<T> {}

/// The largest capacity.
pub const MAX_CAPACITY: u32 = 1 << 30;

impl<T: ShmSafe + Copy> Mpmc<T> {
    /// A slot: its word, then the value, 8-aligned.
    fn stride() -> u64 {
        (8 + size_of::<T>() as u64).next_multiple_of(8)
    }

    fn planned(unit: u64, count: u64) -> Option<Geometry> {
        // Any slot size: a ring of another `T` is told apart by its shape word.
        let ok = unit >= 8
            && unit.is_multiple_of(8)
            && count > 0
            && count <= u64::from(MAX_CAPACITY)
            && align_of::<T>() <= 8;
        ok.then(|| Geometry::plan(unit, count, META)).flatten()
    }

    fn plan(capacity: u32) -> Result<Geometry, PoolError> {
        Self::planned(Self::stride(), u64::from(capacity))
            .ok_or(PoolError::InvalidGeometry("1..=2^30 slots of a value at most 8-aligned"))
    }

    /// Bytes a ring of `capacity` values occupies.
    pub fn footprint(capacity: u32) -> Result<u64, PoolError> {
        Ok(Self::plan(capacity)?.bytes())
    }

    /// Formats an empty ring of `capacity` values at `at` (64-aligned) of `host`'s
    /// segment.
    pub fn create(host: impl Into<Host>, at: u64, capacity: u32) -> Result<Self, PoolError> {
        let region = Region::format(host.into(), at, Kind::Mpmc, Self::plan(capacity)?, |r| {
            for w in r.meta::<AtomicU64>((META / 8) as usize) {
                w.store(0, Ordering::Relaxed);
            }
            r.meta_at::<AtomicU64>(SHAPE, 1)[0].store(shape::<T>(), Ordering::Relaxed);
            let stride = Self::stride() / 8;
            let words = r.data_atoms::<AtomicU64>((u64::from(capacity) * stride) as usize);
            for i in 0..u64::from(capacity) {
                words[(i * stride) as usize].store(word(i, EMPTY, 0), Ordering::Relaxed);
            }
        })?;
        Ok(Self::over(region))
    }

    /// Opens the ring created at `at` (in any process) for the same `T`.
    pub fn open(host: impl Into<Host>, at: u64) -> Result<Self, PoolError> {
        let region = Region::open(host.into(), at, Kind::Mpmc, Self::planned)?;
        if region.meta_at::<AtomicU64>(SHAPE, 1)[0].load(Ordering::Relaxed) != shape::<T>() {
            return Err(PoolError::Mismatch(format!("the channel at offset {at}")));
        }
        Ok(Self::over(region))
    }

    fn over(region: Region) -> Self {
        let cap = region.geometry().count as u32;
        Self { region, cap, stride: Self::stride(), _t: PhantomData }
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

    /// Where the ring is in its segment: what [`Mpmc::open`] takes.
    pub fn offset(&self) -> u64 {
        self.region.at()
    }

    /// Values the ring holds at most.
    pub fn capacity(&self) -> u32 {
        self.cap
    }

    fn slot_word(&self, i: u64) -> &AtomicU64 {
        &self.region.data_atoms::<AtomicU64>((u64::from(self.cap) * self.stride / 8) as usize)
            [(i * self.stride / 8) as usize]
    }

    fn value(&self, pos: u64) -> *mut T {
        let i = pos % u64::from(self.cap);
        // SAFETY: slot `i` lies in the data (`cap` slots of `stride` bytes); its value
        // follows its 8-byte word.
        unsafe { self.region.data_ptr().as_ptr().add((i * self.stride + 8) as usize).cast::<T>() }
    }

    fn core<'a>(&'a self) -> Core<'a, impl Fn(u64) -> &'a AtomicU64 + 'a> {
        Core {
            head: &self.region.meta_at::<AtomicU64>(HEAD, 1)[0],
            tail: &self.region.meta_at::<AtomicU64>(TAIL, 1)[0],
            cap: u64::from(self.cap),
            slot: move |i| self.slot_word(i),
        }
    }

    fn wake_word(&self, at: u64) -> &AtomicU32 {
        &self.region.meta_at::<AtomicU32>(at, 1)[0]
    }

    /// Wakes the sides whose flags a publication or a free cleared.
    #[inline]
    fn wake_flagged(&self, flags: u64) {
        if flags & RX != 0 {
            wait::wake(self.wake_word(RX_WAKE));
        }
        if flags & TX != 0 {
            wait::wake(self.wake_word(TX_WAKE));
        }
    }

    fn peers(&self) -> Peers<'_> {
        Peers(self.region.meta_at::<AtomicU64>(PEERS, WORDS))
    }

    fn joins(&self) -> &AtomicU64 {
        &self.region.meta_at::<AtomicU64>(JOINS, 1)[0]
    }

    /// Registers a new end of `role`, and what it knows of the other side.
    fn join(&self, role: Role) -> Result<(Tag, Since), ChannelError> {
        let other = if role == Role::Sender { Role::Receiver } else { Role::Sender };
        let tag = self.peers().join(role)?;
        super::joined(self.joins(), role);
        Ok((
            tag,
            Since { attached: self.peers().registered(other), joins: super::joins(self.joins(), other) },
        ))
    }

    /// A sending end (any number, in any processes).
    pub fn sender(&self) -> Result<MpmcSender<'_, T>, ChannelError> {
        let (tag, since) = self.join(Role::Sender)?;
        Ok(MpmcSender { ch: self, tag, since })
    }

    /// A receiving end (any number, in any processes).
    pub fn receiver(&self) -> Result<MpmcReceiver<'_, T>, ChannelError> {
        let (tag, since) = self.join(Role::Receiver)?;
        Ok(MpmcReceiver { ch: self, tag, since })
    }

    /// Whether every end of `other` is gone for an end made at `since` (see `Spsc`).
    fn gone(&self, other: Role, since: Since, look: bool) -> bool {
        super::gone(self.peers(), self.joins(), other, since, look)
    }

    /// One bounded sleep of a waiter that found `busy`: repairs a slot whose claimer
    /// died, else flags the slot and sleeps on the side's wake word. False once the
    /// deadline passed.
    fn wait(&self, busy: Busy, flag: u64, wake_at: u64, deadline: Option<Instant>) -> bool {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        if self.repair(busy) {
            return true;
        }
        let core = self.core();
        let word = self.wake_word(wake_at);
        let seen = wait::seq(word);
        if core.flag(busy, flag) {
            wait::sleep(word, seen, deadline);
        }
        true
    }

    /// Frees the slot `busy` names if its claimer died midway (waking whoever waits on
    /// it); whether it did. Only a claimed slot costs a look at the process table.
    #[cold]
    fn repair(&self, busy: Busy) -> bool {
        if !matches!(state(busy.word), WRITING | READING) {
            return false;
        }
        let repaired = self.core().repair(busy, |t| self.peers().dead(t));
        if repaired {
            self.wake_flagged(RX | TX);
        }
        repaired
    }

    fn leave(&self, tag: Tag, role: Role) {
        self.peers().leave(tag, role);
        wait::wake(self.wake_word(if role == Role::Sender { RX_WAKE } else { TX_WAKE }));
    }
}

/// A sending end of an [`Mpmc`].
pub struct MpmcSender<'a, T: ShmSafe + Copy> {
    ch: &'a Mpmc<T>,
    tag: Tag,
    since: Since,
}

impl<T: ShmSafe + Copy> MpmcSender<'_, T> {
    fn try_once(&self, value: T) -> Result<(), (T, Busy)> {
        let core = self.ch.core();
        match core.claim_send(self.tag) {
            Ok(pos) => {
                crate::crash::point("mpmc.writing");
                // SAFETY: the slot is claimed WRITING by this sender alone.
                unsafe { self.ch.value(pos).write(value) };
                let flags = core.published(pos);
                if flags != 0 {
                    self.ch.wake_flagged(flags);
                }
                Ok(())
            }
            Err(busy) => Err((value, busy)),
        }
    }

    /// Sends `value` if there is room. (A slot a dead receiver was reading is freed
    /// first.)
    #[inline]
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        match self.try_once(value) {
            Ok(()) => Ok(()),
            Err((v, busy)) if self.ch.repair(busy) => self.try_send(v),
            Err((v, _)) if self.ch.gone(Role::Receiver, self.since, false) => {
                Err(TrySendError::Disconnected(v))
            }
            Err((v, _)) => Err(TrySendError::Full(v)),
        }
    }

    /// Sends `value`, waiting for room as long as it takes.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.send_until(value, None)
    }

    /// Sends `value`, waiting up to `timeout` for room.
    pub fn send_timeout(&self, value: T, timeout: Duration) -> Result<(), SendError<T>> {
        self.send_until(value, Instant::now().checked_add(timeout))
    }

    fn send_until(&self, mut value: T, deadline: Option<Instant>) -> Result<(), SendError<T>> {
        let mut spin = Spin::default();
        loop {
            let busy = match self.try_once(value) {
                Ok(()) => return Ok(()),
                Err((v, busy)) => {
                    value = v;
                    busy
                }
            };
            if spin.again() {
                continue;
            }
            if self.ch.gone(Role::Receiver, self.since, true) {
                return Err(SendError::Disconnected(value));
            }
            if !self.ch.wait(busy, TX, TX_WAKE, deadline) {
                return Err(SendError::Timeout(value));
            }
        }
    }
}

impl<T: ShmSafe + Copy> Drop for MpmcSender<'_, T> {
    fn drop(&mut self) {
        self.ch.leave(self.tag, Role::Sender);
    }
}

/// A receiving end of an [`Mpmc`].
pub struct MpmcReceiver<'a, T: ShmSafe + Copy> {
    ch: &'a Mpmc<T>,
    tag: Tag,
    since: Since,
}

impl<T: ShmSafe + Copy> MpmcReceiver<'_, T> {
    fn try_once(&self) -> Result<T, Busy> {
        let core = self.ch.core();
        let pos = core.claim_recv(self.tag)?;
        crate::crash::point("mpmc.reading");
        // SAFETY: the slot is claimed READING by this receiver alone; its value was
        // published (the sender's Release swap, our Acquire load).
        let value = unsafe { self.ch.value(pos).read() };
        let flags = core.freed(pos);
        if flags != 0 {
            self.ch.wake_flagged(flags);
        }
        Ok(value)
    }

    /// Takes the next value if there is one. (A slot a dead sender was writing is freed
    /// first.)
    #[inline]
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        match self.try_once() {
            Ok(v) => Ok(v),
            Err(busy) if self.ch.repair(busy) => self.try_recv(),
            Err(_) if self.ch.gone(Role::Sender, self.since, false) => {
                self.try_once().map_err(|_| TryRecvError::Disconnected)
            }
            Err(_) => Err(TryRecvError::Empty),
        }
    }

    /// Takes the next value, waiting as long as it takes.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.recv_until(None)
    }

    /// Takes the next value, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvError> {
        self.recv_until(Instant::now().checked_add(timeout))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvError> {
        let mut spin = Spin::default();
        loop {
            let busy = match self.try_once() {
                Ok(v) => return Ok(v),
                Err(busy) => busy,
            };
            if spin.again() {
                continue;
            }
            if self.ch.gone(Role::Sender, self.since, true) && state(busy.word) != WRITING {
                return self.try_once().map_err(|_| RecvError::Disconnected);
            }
            if !self.ch.wait(busy, RX, RX_WAKE, deadline) {
                return Err(RecvError::Timeout);
            }
        }
    }
}

impl<T: ShmSafe + Copy> Drop for MpmcReceiver<'_, T> {
    fn drop(&mut self) {
        self.ch.leave(self.tag, Role::Receiver);
    }
}
