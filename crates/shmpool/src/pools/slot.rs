//! `SlotPool`: fixed-size slots over a segment region, tracked by a lock-free bitmap,
//! loaned as RAII [`Loan`]s.
//!
//! Layer: pools. The region is a [`Header`](super::region::Header), one bitmap word per
//! 63 slots (`bitmap.rs`), then the slots. A loan sets its slot's bit, a return clears
//! it; a return wakes the waiters of [`SlotPool::loan_timeout`] (`wait.rs`). The bitmap is
//! the only state, so a process killed at any instant leaves the pool whole; the slots it
//! held stay loaned (its index handover can name them to a survivor, which returns them
//! with [`SlotPool::release`]).
//!
//! ```
//! use shmpool::pools::SlotPool;
//! use shmpool::SegmentOptions;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let seg = SegmentOptions::new().create_memfd("doc")?;
//! let at = seg.data_start();
//! let pool = SlotPool::create(seg, at, 256, 8)?; // 8 slots of 256 bytes
//! let loan = pool.try_loan().expect("a free slot");
//! loan.write(0, b"hello")?;
//! assert_eq!(pool.available(), 7);
//! let index = loan.into_index(); // hand the index to another process ...
//! let back = pool.adopt(index)?; // ... which takes the loan over
//! drop(back); // and returns the slot
//! assert_eq!(pool.available(), 8);
//! # Ok(()) }
//! ```

use super::bitmap::{self, Place};
use super::region::{Geometry, Host, Kind, Region};
use super::{wait, BlockError, Pool, PoolError};
use crate::heap::Heap;
use crate::loom::AtomicU64;
use crate::loom::Ordering;
use core::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

/// Fixed-size slots in shared memory, loaned and returned from any process.
#[derive(Debug)]
pub struct SlotPool {
    region: Region,
    slot: u64,
    slots: u64,
    /// Bitmap words.
    words: usize,
    /// The word this handle's next search starts at: where its last loan was found.
    hint: AtomicUsize,
}

/// The slot bytes are a multiple of this, so every slot is 8-aligned.
const SLOT_ALIGN: u64 = 8;

/// Bitmap words in a cache line.
const WORDS_A_LINE: u64 = 8;

/// The most slots a pool holds (indices are `u32`).
pub const MAX_SLOTS: u64 = u32::MAX as u64;

impl SlotPool {
    fn plan(slot_size: u64, slots: u64) -> Result<Geometry, PoolError> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(PoolError::InvalidGeometry("a slot pool holds 1..=u32::MAX slots"));
        }
        if slot_size == 0 {
            return Err(PoolError::InvalidGeometry("slots must be at least one byte"));
        }
        let unit = slot_size.checked_next_multiple_of(SLOT_ALIGN);
        unit.and_then(|u| Geometry::plan(u, slots, bitmap::words(slots) * 8))
            .ok_or(PoolError::InvalidGeometry("the pool overflows"))
    }

    /// Bytes a pool of `slots` slots of `slot_size` bytes occupies.
    pub fn footprint(slot_size: u64, slots: u64) -> Result<u64, PoolError> {
        Ok(Self::plan(slot_size, slots)?.bytes())
    }

    /// Formats a pool at `at` (64-aligned) of `host`'s segment, growing the segment if
    /// the region is not committed yet. Whatever the region held is overwritten.
    pub fn create(host: impl Into<Host>, at: u64, slot_size: u64, slots: u64) -> Result<Self, PoolError> {
        let geo = Self::plan(slot_size, slots)?;
        let region = Region::format(host.into(), at, Kind::Slots, geo, |r| {
            bitmap::init(r.meta::<AtomicU64>(bitmap::words(slots) as usize), slots);
        })?;
        Ok(Self::over(region))
    }

    /// Opens the pool another handle (in any process) created at `at`.
    pub fn open(host: impl Into<Host>, at: u64) -> Result<Self, PoolError> {
        let region = Region::open(host.into(), at, Kind::Slots, |unit, count| Self::plan(unit, count).ok())?;
        let geo = region.geometry();
        let words = region.meta::<AtomicU64>(bitmap::words(geo.count) as usize);
        if !bitmap::padding_intact(words, geo.count) {
            return Err(PoolError::Corrupted { at, why: "the bitmap's padding bits are clear" });
        }
        Ok(Self::over(region))
    }

    /// Creates a pool in a block of `heap`.
    pub fn create_in(heap: &Heap, slot_size: u64, slots: u64) -> Result<Self, PoolError> {
        super::in_heap(heap, Self::footprint(slot_size, slots)?, |at| {
            Self::create(heap, at, slot_size, slots)
        })
    }

    /// The pool named `name` in `heap`: created by the first caller in any process (with
    /// this geometry), opened by every other.
    pub fn named(heap: &Heap, name: &str, slot_size: u64, slots: u64) -> Result<Self, PoolError> {
        let unit = Self::plan(slot_size, slots)?.unit;
        super::named(
            heap,
            name,
            Self::footprint(slot_size, slots)?,
            |at| Self::create(heap, at, slot_size, slots),
            |at| Self::open(heap, at),
            |pool| pool.slot_size() == unit && pool.capacity() == slots,
        )
    }

    fn over(region: Region) -> Self {
        let geo = region.geometry();
        // Handles (processes) start their searches on different cache lines of the
        // bitmap where it has several, so that loaners in different processes do not
        // take turns with one line.
        // The header's `state` counts the handles ever opened, to deal the lines out.
        let lines = bitmap::words(geo.count).div_ceil(WORDS_A_LINE);
        let nth = region.header().state.fetch_add(1, Ordering::Relaxed);
        let start = (nth % lines * WORDS_A_LINE) as usize;
        let words = bitmap::words(geo.count) as usize;
        Self { region, slot: geo.unit, slots: geo.count, words, hint: AtomicUsize::new(start) }
    }

    /// Where the pool is in its segment: what [`SlotPool::open`] takes.
    pub fn offset(&self) -> u64 {
        self.region.at()
    }

    /// What keeps the pool mapped.
    pub fn host(&self) -> &Host {
        self.region.host()
    }

    /// Bytes of a slot (the size asked for, rounded up to a multiple of 8).
    pub fn slot_size(&self) -> u64 {
        self.slot
    }

    /// Slots in the pool.
    pub fn capacity(&self) -> u64 {
        self.slots
    }

    /// Slots free now (a snapshot: others loan and return concurrently).
    pub fn available(&self) -> u64 {
        self.slots - bitmap::count(self.words(), self.slots)
    }

    #[inline(always)]
    fn words(&self) -> &[AtomicU64] {
        self.region.meta(self.words)
    }

    /// Loans a free slot, or `None` if every slot was loaned when looked at.
    #[inline]
    pub fn try_loan(&self) -> Option<Loan<'_>> {
        let start = self.hint.load(core::sync::atomic::Ordering::Relaxed);
        let place = bitmap::claim(self.words(), start)?;
        if place.word as usize != start {
            self.hint.store(place.word as usize, core::sync::atomic::Ordering::Relaxed);
        }
        Some(Loan { pool: self, place })
    }

    /// Loans a slot, sleeping until one is returned if none is free.
    pub fn loan(&self) -> Loan<'_> {
        self.wait_for(None).expect("waits without a deadline")
    }

    /// Loans a slot, sleeping up to `timeout` for one to be returned; `None` if none came.
    /// (A timeout too long to represent waits without a deadline.)
    pub fn loan_timeout(&self, timeout: Duration) -> Option<Loan<'_>> {
        self.wait_for(Instant::now().checked_add(timeout))
    }

    fn wait_for(&self, deadline: Option<Instant>) -> Option<Loan<'_>> {
        if let Some(l) = self.try_loan() {
            return Some(l);
        }
        self.wait_slow(deadline)
    }

    #[cold]
    fn wait_slow(&self, deadline: Option<Instant>) -> Option<Loan<'_>> {
        let word = &self.region.header().wake;
        loop {
            let seen = wait::seq(word);
            if let Some(i) = bitmap::claim_or_flag(self.words()) {
                return Some(Loan { pool: self, place: Place::of(i) });
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            wait::sleep(word, seen, deadline);
        }
    }

    /// Takes over the loan of slot `index`, handed over by its holder (in any process)
    /// with [`Loan::into_index`]. Refused if the slot is not loaned; that it is the
    /// caller's to take is the handover's promise.
    pub fn adopt(&self, index: u32) -> Result<Loan<'_>, BlockError> {
        let i = self.check_index(index)?;
        if !bitmap::is_set(self.words(), i) {
            return Err(BlockError::NotAllocated(self.slot_offset(index)?));
        }
        Ok(Loan { pool: self, place: Place::of(i) })
    }

    /// Returns slot `index` (a loan given up with [`Loan::into_index`], here or in
    /// another process). A slot not loaned is refused and nothing changes.
    pub fn release(&self, index: u32) -> Result<(), BlockError> {
        let i = self.check_index(index)?;
        if !self.give_back(Place::of(i)) {
            return Err(BlockError::NotAllocated(self.slot_offset(index)?));
        }
        Ok(())
    }

    /// Clears the slot's bit, waking the waiters that flagged its word; whether the slot
    /// was loaned.
    #[inline(always)]
    fn give_back(&self, p: Place) -> bool {
        let c = bitmap::clear_at(self.words(), p);
        if c.waiters {
            crate::crash::point("slots.returned");
            wait::wake(&self.region.header().wake);
        }
        c.was_loaned
    }

    /// Loans slot `index` if it is free (a loan by index, for callers that place data).
    pub fn try_loan_at(&self, index: u32) -> Result<Loan<'_>, BlockError> {
        let i = self.check_index(index)?;
        if !bitmap::claim_at(self.words(), i) {
            return Err(BlockError::Exhausted);
        }
        Ok(Loan { pool: self, place: Place::of(i) })
    }

    fn check_index(&self, index: u32) -> Result<u64, BlockError> {
        let i = u64::from(index);
        if i >= self.slots {
            return Err(BlockError::BadIndex(index));
        }
        Ok(i)
    }

    /// The segment offset of slot `index`.
    pub fn slot_offset(&self, index: u32) -> Result<u64, BlockError> {
        Ok(self.region.data() + self.check_index(index)? * self.slot)
    }

    /// The slot an offset falls in, and the offset's distance from the slot's start.
    pub fn index_of(&self, off: u64) -> Result<(u32, u64), BlockError> {
        let rel = off.checked_sub(self.region.data()).ok_or(BlockError::BadOffset(off))?;
        let i = rel / self.slot;
        if i >= self.slots {
            return Err(BlockError::BadOffset(off));
        }
        Ok((i as u32, rel % self.slot))
    }

    /// Returns every slot at once: only for a pool no one is using. A loan still held
    /// must not be dropped after it (it would return a slot that may be loaned anew;
    /// debug builds panic if it is not loaned): give it up with [`Loan::into_index`].
    pub fn reset(&self) {
        if bitmap::clear_all(self.words(), self.slots) {
            wait::wake(&self.region.header().wake);
        }
    }

    /// The loaned slot holding `off..off + len`.
    fn loaned_range(&self, off: u64, len: u64) -> Result<u32, BlockError> {
        let (i, within) = self.index_of(off)?;
        if within.checked_add(len).is_none_or(|end| end > self.slot) {
            return Err(BlockError::BadOffset(off));
        }
        if !bitmap::is_set(self.words(), u64::from(i)) {
            return Err(BlockError::NotAllocated(off - within));
        }
        Ok(i)
    }
}

/// A loaned slot; returned to the pool when dropped.
#[derive(Debug)]
#[must_use = "a loan dropped at once returns its slot"]
pub struct Loan<'a> {
    pool: &'a SlotPool,
    place: Place,
}

impl Loan<'_> {
    /// The slot's index in the pool.
    pub fn index(&self) -> u32 {
        self.place.index() as u32
    }

    /// The slot's offset in the segment.
    #[inline]
    pub fn offset(&self) -> u64 {
        self.pool.region.data() + self.place.index() * self.pool.slot
    }

    /// Bytes of the slot.
    pub fn len(&self) -> u64 {
        self.pool.slot
    }

    /// Always false: a slot holds at least 8 bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// A pointer to the slot in this process, for zero-copy use; it is the holder's alone
    /// while the loan lives.
    pub fn as_ptr(&self) -> core::ptr::NonNull<u8> {
        self.pool
            .region
            .segment()
            .ptr_at(self.offset(), self.len())
            .expect("a slot lies in its committed region")
    }

    /// Copies `data` into the slot at `at`.
    pub fn write(&self, at: u64, data: &[u8]) -> Result<(), BlockError> {
        self.check(at, data.len())?;
        Ok(self.pool.region.segment().write_bytes(self.offset() + at, data)?)
    }

    /// Copies slot bytes at `at` into `buf`.
    pub fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check(at, buf.len())?;
        Ok(self.pool.region.segment().read_bytes(self.offset() + at, buf)?)
    }

    fn check(&self, at: u64, len: usize) -> Result<(), BlockError> {
        match at.checked_add(len as u64) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(BlockError::BadOffset(self.offset().saturating_add(at))),
        }
    }

    /// Gives the loan up without returning the slot: the index is what another process
    /// (or thread) passes to [`SlotPool::adopt`] or [`SlotPool::release`].
    pub fn into_index(self) -> u32 {
        let i = self.index();
        core::mem::forget(self);
        i
    }
}

impl Drop for Loan<'_> {
    #[inline]
    fn drop(&mut self) {
        let returned = self.pool.give_back(self.place);
        debug_assert!(returned, "a loan's slot is loaned until the loan ends (reset while loaned?)");
    }
}

impl Pool for SlotPool {
    fn allocate(&self, size: u64) -> Result<u64, BlockError> {
        if size > self.slot {
            return Err(BlockError::TooLarge { size, max: self.slot });
        }
        let loan = self.try_loan().ok_or(BlockError::Exhausted)?;
        let off = loan.offset();
        loan.into_index();
        Ok(off)
    }

    fn free(&self, off: u64) -> Result<(), BlockError> {
        match self.index_of(off)? {
            (i, 0) => self.release(i),
            _ => Err(BlockError::BadOffset(off)),
        }
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<(), BlockError> {
        self.loaned_range(off, data.len() as u64)?;
        Ok(self.region.segment().write_bytes(off, data)?)
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.loaned_range(off, buf.len() as u64)?;
        Ok(self.region.segment().read_bytes(off, buf)?)
    }

    fn reset(&self) -> Result<(), BlockError> {
        SlotPool::reset(self);
        Ok(())
    }

    fn available_bytes(&self) -> u64 {
        self.available() * self.slot
    }

    fn check_range(&self, off: u64, len: u64) -> Result<(), BlockError> {
        self.loaned_range(off, len).map(|_| ())
    }
}
