//! Slab operations: the allocation fast path, frees by the owner and by others, and the
//! owner's slow path that collects remote frees and finds or makes a slab with room.
//!
//! Who writes what (see `layout.rs` for the invariants):
//!
//! | field            | owner                       | any other thread/process        |
//! |------------------|-----------------------------|---------------------------------|
//! | `free`, `bump`, `used`, links | plain (Relaxed) stores | never                   |
//! | `allocated` bits | plain load + store          | load only                       |
//! | `remote` bits    | `fetch_and` when collecting | `fetch_or` when freeing         |
//! | `remote_state`   | sets and clears `FULL`, clears `QUEUED` | pins and unpins; sets `QUEUED` (slab is `FULL`) |
//! | desc `delayed`   | `swap` (take all)           | CAS push of a `QUEUED` slab     |
//!
//! The owner needs no read-modify-write on its fast path; a remote free costs a pin, one
//! `fetch_or` and an unpin (and, into a full slab, one push per collection).
//!
//! # Safety
//! Views are taken at slab offsets from the owner's lists or from `locate`, which checked
//! them against the unit table; bitmaps and block links lie inside those slabs. See
//! `raw.rs` for the contract.
#![allow(unsafe_code)]

use super::class::{GEOMETRY, GRANULE, ONE_UNIT_CLASSES, SLAB_FIELDS};
use super::error::{AllocError, FreeError};
use super::layout::{slab_class, ClassQueue, Slab, SLAB_MAGIC, TAG_SLAB};
use super::remote::{self, FULL, QUEUED};
use super::Inner;
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::pages::{UnitState, UNIT, UNIT_SHIFT};

/// The unit-table word of a one-unit slab's unit.
const ONE_UNIT_SLAB: u64 = UnitState::Run { len: 1, tag: TAG_SLAB }.encode();

/// How many never-used blocks one slow-path call threads onto the free list.
const EXTEND_BYTES: u64 = 4096;

impl Inner {
    #[inline(always)]
    pub(super) fn slab(&self, slab: u64) -> &Slab {
        // SAFETY: `slab` is the offset of a slab run inside the managed arena (from a
        // class list, or found by `locate`), 64 KiB-aligned.
        unsafe { self.base.at(slab) }
    }

    /// Word `w` of the allocated (`remote == false`) or remote bitmap of a slab of `class`.
    #[inline(always)]
    fn bits(&self, slab: u64, class: usize, remote: bool, w: u32) -> &AtomicU64 {
        let words = if remote { GEOMETRY[class].words } else { 0 };
        let off = slab + SLAB_FIELDS + 8 * (words + u64::from(w));
        // SAFETY: the bitmaps follow the slab fields inside the slab's first unit.
        unsafe { self.base.at(off) }
    }

    /// Block `idx`'s words of the allocated and remote bitmaps, and its bit in them.
    #[inline(always)]
    fn block_bits(&self, slab: u64, class: usize, idx: u32) -> (&AtomicU64, &AtomicU64, u64) {
        (self.bits(slab, class, false, idx / 64), self.bits(slab, class, true, idx / 64), 1 << (idx % 64))
    }

    #[inline(always)]
    fn block(&self, slab: u64, class: usize, idx: u32) -> u64 {
        let g = &GEOMETRY[class];
        slab + g.blocks_start + u64::from(idx) * g.size
    }

    /// The link word at the start of a free block.
    #[inline(always)]
    fn link32(&self, block: u64) -> &AtomicU32 {
        // SAFETY: blocks are 16-aligned, at least 16 bytes, inside a committed slab.
        unsafe { self.base.at(block) }
    }

    #[inline(always)]
    fn queue(&self, d: u32, class: usize) -> &ClassQueue {
        &self.desc(d).classes[class]
    }

    /// The fast path: pops a block from the current slab of `class` in thread heap `d`.
    #[inline(always)]
    pub(super) fn pop(&self, d: u32, class: usize) -> Option<u64> {
        let head = self.queue(d, class).head.load(Ordering::Relaxed);
        if head == 0 {
            return None;
        }
        let slab_off = self.unit_off(head - 1);
        let slab = self.slab(slab_off);
        let f = slab.free.load(Ordering::Relaxed);
        // `f` comes from shared memory: never index past the slab with it.
        if f == 0 || f > GEOMETRY[class].capacity {
            return None;
        }
        let idx = f - 1;
        let block = self.block(slab_off, class, idx);
        slab.free.store(self.link32(block).load(Ordering::Relaxed), Ordering::Relaxed);
        slab.used.store(slab.used.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let word = self.bits(slab_off, class, false, idx / 64);
        word.store(word.load(Ordering::Relaxed) | 1 << (idx % 64), Ordering::Relaxed);
        Some(block)
    }

    /// Whether block `idx` is allocated and not waiting in a remote-free list.
    #[inline(always)]
    pub(super) fn check_allocated(
        &self,
        slab: u64,
        class: usize,
        idx: u32,
        off: u64,
    ) -> Result<(), FreeError> {
        let bit = 1 << (idx % 64);
        if self.bits(slab, class, false, idx / 64).load(Ordering::Relaxed) & bit == 0
            || self.bits(slab, class, true, idx / 64).load(Ordering::Relaxed) & bit != 0
        {
            return Err(FreeError::DoubleFree(off));
        }
        Ok(())
    }

    /// The common free, inlined: by the thread that owns the block's slab, a one-unit
    /// slab. It checks what `locate` checks; `None` hands the free to `free_any`, which
    /// takes every other case (remote frees, large blocks, bigger slabs, and offsets that
    /// name no block, which it reports).
    #[inline(always)]
    pub(super) fn free_own_small(&self, off: u64) -> Option<Result<(), FreeError>> {
        // An offset below the arena wraps to a unit far beyond `max_units`.
        let u = off.wrapping_sub(self.arena) >> UNIT_SHIFT;
        if u >= u64::from(self.max_units) || !off.is_multiple_of(GRANULE) {
            return None;
        }
        // SYNC: Acquire, see `table_word`: the unit is committed.
        if self.table_word(u as u32).load(Ordering::Acquire) != ONE_UNIT_SLAB {
            return None;
        }
        let slab_off = off & !(UNIT - 1); // the arena starts on a unit boundary
        let slab = self.slab(slab_off);
        let class = slab_class(slab.class.load(Ordering::Relaxed)).filter(|&c| c < ONE_UNIT_CLASSES)?;
        let d = super::tls::lookup(self.id)?;
        if slab.owner.load(Ordering::Relaxed) != d {
            return None;
        }
        let idx = GEOMETRY[class].block_at(off - slab_off)?;
        Some(self.free_local(d, slab_off, class, idx, off))
    }

    /// A free by the owning thread of the block at `block`, index `idx` of its slab.
    #[inline]
    pub(super) fn free_local(
        &self,
        d: u32,
        slab_off: u64,
        class: usize,
        idx: u32,
        block: u64,
    ) -> Result<(), FreeError> {
        let (alloc, remote_bits, bit) = self.block_bits(slab_off, class, idx);
        // Refuses a double free (also one after a remote free not yet collected).
        if !remote::release_local(alloc, remote_bits, bit) {
            return Err(FreeError::DoubleFree(block));
        }
        let slab = self.slab(slab_off);
        if slab.remote_state.load(Ordering::Relaxed) & FULL != 0 {
            self.unfull(d, slab_off, class); // it has room again
        }
        let used = self.push_free(slab, block, idx);
        // The current slab (the head of its class list: no `prev`) stays even when empty,
        // so alloc/free/alloc/free does not churn slabs; `slab_emptied` checks precisely.
        if used == 0 && slab.prev.load(Ordering::Relaxed) != 0 {
            self.slab_emptied(d, slab_off, class);
        }
        Ok(())
    }

    /// A free by any other thread or process: one `fetch_or` claims the block (a second
    /// free of it sees the bit and fails) and hands it to the owner.
    pub(super) fn free_remote(
        &self,
        slab_off: u64,
        class: usize,
        idx: u32,
        block: u64,
    ) -> Result<(), FreeError> {
        let (alloc, remote_bits, bit) = self.block_bits(slab_off, class, idx);
        let slab = self.slab(slab_off);
        remote::pin(&slab.remote_state);
        let claimed = remote::claim(alloc, remote_bits, bit);
        if remote::unpin(&slab.remote_state, claimed) {
            let owner = slab.owner.load(Ordering::Relaxed);
            if owner >= super::layout::MAX_DESCS {
                return Ok(()); // a damaged header: the block stays claimed, not lost to a wild write
            }
            let unit1 = self.unit_of(slab_off) + 1;
            remote::push_slab(&self.desc(owner).delayed, &slab.delayed_next, unit1);
        }
        if claimed {
            Ok(())
        } else {
            Err(FreeError::DoubleFree(block))
        }
    }

    /// Puts block `idx` (at `block`) on its slab's free list; returns the slab's `used`
    /// count after (owner only).
    #[inline(always)]
    fn push_free(&self, slab: &Slab, block: u64, idx: u32) -> u32 {
        self.link32(block).store(slab.free.load(Ordering::Relaxed), Ordering::Relaxed);
        slab.free.store(idx + 1, Ordering::Relaxed);
        let used = slab.used.load(Ordering::Relaxed) - 1;
        slab.used.store(used, Ordering::Relaxed);
        used
    }

    /// A slab that remote frees emptied goes back to the pages, as one emptied by its
    /// owner does (unless it is the current slab).
    fn retire_if_empty(&self, d: u32, slab_off: u64, class: usize) {
        let slab = self.slab(slab_off);
        if slab.used.load(Ordering::Relaxed) == 0 && slab.prev.load(Ordering::Relaxed) != 0 {
            self.slab_emptied(d, slab_off, class);
        }
    }

    /// Takes a slab's remote frees onto its free list (owner only); returns how many.
    fn collect(&self, slab_off: u64, class: usize) -> u32 {
        let g = &GEOMETRY[class];
        let slab = self.slab(slab_off);
        let mut got = 0;
        for w in 0..g.capacity.div_ceil(64) {
            let mut bits =
                remote::collect(self.bits(slab_off, class, false, w), self.bits(slab_off, class, true, w));
            while bits != 0 {
                let idx = w * 64 + bits.trailing_zeros();
                bits &= bits - 1;
                if idx < g.capacity {
                    self.push_free(slab, self.block(slab_off, class, idx), idx);
                    got += 1;
                }
            }
        }
        got
    }

    /// Takes the full slabs that remote frees went into (this heap's delayed stack),
    /// collects them and puts them back on their class lists (or gives them back, empty).
    pub(super) fn drain_delayed(&self, d: u32) {
        let mut next = remote::take_slabs(&self.desc(d).delayed);
        let mut budget = self.max_units;
        while next != 0 && budget > 0 {
            budget -= 1;
            // Validate before following the link: only a queued slab head this heap owns.
            let unit = next - 1;
            let Some(class) = self.owned_slab(d, unit) else { break };
            let slab_off = self.unit_off(unit);
            let slab = self.slab(slab_off);
            if slab.remote_state.load(Ordering::Relaxed) & QUEUED == 0 {
                break;
            }
            next = slab.delayed_next.load(Ordering::Relaxed);
            remote::unqueue(&slab.remote_state);
            self.collect(slab_off, class);
            if slab.remote_state.load(Ordering::Relaxed) & FULL != 0 && slab.free.load(Ordering::Relaxed) != 0
            {
                self.unfull(d, slab_off, class);
            }
            self.retire_if_empty(d, slab_off, class);
        }
    }

    /// The class of the slab headed by `unit`, if it is one and `d` owns it.
    pub(super) fn owned_slab(&self, d: u32, unit: u32) -> Option<usize> {
        if unit >= self.max_units {
            return None;
        }
        let (head, len, tag) = self.run_head(unit)?;
        let slab = self.slab(self.unit_off(unit));
        let class = slab_class(slab.class.load(Ordering::Relaxed))?;
        let ok = head == unit
            && tag == TAG_SLAB
            && GEOMETRY[class].units == len
            && slab.owner.load(Ordering::Relaxed) == d;
        ok.then_some(class)
    }

    /// Threads up to `EXTEND_BYTES` of never-used blocks onto the free list.
    fn extend(&self, slab_off: u64, class: usize) {
        let g = &GEOMETRY[class];
        let slab = self.slab(slab_off);
        let bump = slab.bump.load(Ordering::Relaxed);
        let n = (g.capacity - bump).min((EXTEND_BYTES / g.size).max(1) as u32);
        let mut next = slab.free.load(Ordering::Relaxed);
        for idx in (bump..bump + n).rev() {
            self.link32(self.block(slab_off, class, idx)).store(next, Ordering::Relaxed);
            next = idx + 1;
        }
        slab.free.store(next, Ordering::Relaxed);
        slab.bump.store(bump + n, Ordering::Relaxed);
    }

    /// The owner's slow path: find room in a slab of `class`, or make a new slab.
    #[cold]
    pub(super) fn alloc_slow(&self, d: u32, class: usize) -> Result<u64, AllocError> {
        self.drain_delayed(d);
        let q = self.queue(d, class);
        loop {
            let head = q.head.load(Ordering::Relaxed);
            if head == 0 {
                break;
            }
            let slab_off = self.unit_off(head - 1);
            let slab = self.slab(slab_off);
            if slab.free.load(Ordering::Relaxed) == 0 {
                self.collect(slab_off, class);
            }
            if slab.free.load(Ordering::Relaxed) == 0
                && slab.bump.load(Ordering::Relaxed) < GEOMETRY[class].capacity
            {
                self.extend(slab_off, class);
            }
            if let Some(off) = self.pop(d, class) {
                return Ok(off);
            }
            // Exhausted: from now on remote frees queue the slab on the delayed stack.
            // Those that came before the flag are collected now (see `remote::unpin`).
            remote::mark_full(&slab.remote_state);
            if self.collect(slab_off, class) > 0 {
                remote::clear_full(&slab.remote_state);
                continue;
            }
            self.unlink(&q.head, slab_off);
            self.link_front(&q.full, slab_off);
        }
        let slab_off = self.new_slab(d, class)?;
        self.link_front(&q.head, slab_off);
        self.extend(slab_off, class);
        Ok(self.pop(d, class).expect("a fresh slab has room"))
    }

    /// A full slab got a block back: back onto its class list, remote frees direct again.
    fn unfull(&self, d: u32, slab_off: u64, class: usize) {
        let q = self.queue(d, class);
        remote::clear_full(&self.slab(slab_off).remote_state);
        self.unlink(&q.full, slab_off);
        self.link_back(q, slab_off);
    }

    /// A slab with no allocated block: give its units back, unless it is the class's
    /// current slab (a thread allocating and freeing one block must not churn slabs).
    #[cold]
    fn slab_emptied(&self, d: u32, slab_off: u64, class: usize) {
        let q = self.queue(d, class);
        let unit = self.unit_of(slab_off);
        let slab = self.slab(slab_off);
        // A queued slab stays until the owner takes it off its delayed stack, and a pinned
        // one until its remote frees are done with it; the owner meets it again later.
        if q.head.load(Ordering::Relaxed) == unit + 1 || !remote::may_retire(&slab.remote_state) {
            return;
        }
        self.unlink(&q.head, slab_off);
        slab.class.store(0, Ordering::Relaxed);
        self.free_units(unit);
    }

    /// Word `w` of a slab's allocated or remote bitmap, read (for the walk in `check`).
    pub(super) fn bitmap(&self, slab: u64, class: usize, remote: bool, w: u32) -> u64 {
        self.bits(slab, class, remote, w).load(Ordering::Relaxed)
    }

    /// The 4-byte link at `block`.
    pub(super) fn link32_at(&self, block: u64) -> u32 {
        self.link32(block).load(Ordering::Relaxed)
    }

    #[inline(always)]
    pub(super) fn unit_of(&self, slab_off: u64) -> u32 {
        ((slab_off - self.arena) >> crate::pages::UNIT_SHIFT) as u32
    }

    fn link_front(&self, list: &AtomicU32, slab_off: u64) {
        let unit = self.unit_of(slab_off) + 1;
        let slab = self.slab(slab_off);
        let old = list.load(Ordering::Relaxed);
        slab.next.store(old, Ordering::Relaxed);
        slab.prev.store(0, Ordering::Relaxed);
        if old != 0 {
            self.slab(self.unit_off(old - 1)).prev.store(unit, Ordering::Relaxed);
        }
        list.store(unit, Ordering::Relaxed);
    }

    /// Appends to the class list, behind the current slab.
    fn link_back(&self, q: &ClassQueue, slab_off: u64) {
        let head = q.head.load(Ordering::Relaxed);
        if head == 0 {
            return self.link_front(&q.head, slab_off);
        }
        let unit = self.unit_of(slab_off) + 1;
        let first = self.slab(self.unit_off(head - 1));
        let after = first.next.load(Ordering::Relaxed);
        let slab = self.slab(slab_off);
        slab.prev.store(head, Ordering::Relaxed);
        slab.next.store(after, Ordering::Relaxed);
        if after != 0 {
            self.slab(self.unit_off(after - 1)).prev.store(unit, Ordering::Relaxed);
        }
        first.next.store(unit, Ordering::Relaxed);
    }

    fn unlink(&self, list: &AtomicU32, slab_off: u64) {
        let slab = self.slab(slab_off);
        let (next, prev) = (slab.next.load(Ordering::Relaxed), slab.prev.load(Ordering::Relaxed));
        if prev == 0 {
            list.store(next, Ordering::Relaxed);
        } else {
            self.slab(self.unit_off(prev - 1)).next.store(next, Ordering::Relaxed);
        }
        if next != 0 {
            self.slab(self.unit_off(next - 1)).prev.store(prev, Ordering::Relaxed);
        }
        slab.next.store(0, Ordering::Relaxed);
        slab.prev.store(0, Ordering::Relaxed);
    }

    /// Takes units for a new slab of `class` owned by `d` and writes its header.
    fn new_slab(&self, d: u32, class: usize) -> Result<u64, AllocError> {
        let g = &GEOMETRY[class];
        let unit = self.alloc_units(g.units, TAG_SLAB)?;
        let slab_off = self.unit_off(unit);
        let slab = self.slab(slab_off);
        for f in [&slab.free, &slab.bump, &slab.used, &slab.next, &slab.prev] {
            f.store(0, Ordering::Relaxed);
        }
        slab.owner.store(d, Ordering::Relaxed);
        slab.remote_state.store(0, Ordering::Relaxed);
        slab.delayed_next.store(0, Ordering::Relaxed);
        for w in 0..g.words as u32 {
            self.bits(slab_off, class, false, w).store(0, Ordering::Relaxed);
            self.bits(slab_off, class, true, w).store(0, Ordering::Relaxed);
        }
        slab.class.store(SLAB_MAGIC | class as u32, Ordering::Relaxed);
        Ok(slab_off)
    }
}
