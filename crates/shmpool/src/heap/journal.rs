//! Recorded allocations: [`Heap::alloc_in`] allocates a block and records its offset in a
//! *slot*, an 8-byte word in the segment, so that a process killed at any instant loses
//! nothing: after recovery the slot holds the block, allocated, or it is still empty and
//! the block is free again. A plain [`Heap::alloc`] killed between its return and the
//! caller's first store of the offset leaves a block that nothing names; this closes that
//! window for the blocks that matter.
//!
//! ```text
//!   owner (alloc_in)                         recovery of a dead owner (settle_journal)
//!   journal.block = 0, journal.slot = slot   slot == 0 in journal: nothing in progress
//!   journal.block = the block it will take   block named, allocated, not in the slot:
//!   take it (allocated bit, or run head)       never handed out: freed
//!   slot = block                             block in the slot: the allocation stands
//!   journal.slot = 0
//! ```
//!
//! Why this is sound:
//! - A small block is named before its allocated bit is set. Only the owner allocates
//!   from its slabs, and a dead owner's thread heap is touched by nobody until recovery
//!   claims it, so a named block found allocated is the one being handed out.
//! - A large run is named under the page lock before it is taken (`Buddy::next_run`). A
//!   holder that died before taking it left the name of a free run, and whoever takes the
//!   lock over forgets that name (`repair_journals`) before anyone else can take the run;
//!   recovery looks at a large name again under the lock.
//! - The stores of a process that died are seen in program order up to the last one it
//!   made (they retire in order): a journal that names a block was written before the
//!   block was taken, and a slot that holds it was written after.
//!
//! The slot belongs to the caller until `alloc_in` returns: nobody else may write it
//! meanwhile, and if the caller dies, nobody may until recovery has run (which every
//! attach, and [`Heap::recover`], does).
//!
//! # Safety
//! The slot is viewed in the segment (`raw::Base::at`) once `holds_word` has checked it
//! is an 8-aligned word inside an allocated block, hence committed.
#![allow(unsafe_code)]

use super::class::{class_of, GEOMETRY, MAX_CLASS_SIZE};
use super::error::AllocError;
use super::layout::{self, tag_class, JOURNAL_LARGE, TAG_LARGE};
use super::{Heap, Inner, Located};
use crate::loom::{AtomicU64, Ordering};
use crate::pages::{UnitState, UNIT, UNIT_SHIFT};

impl Heap {
    /// Allocates `size` bytes (16-aligned) and records the block's offset in the slot at
    /// offset `slot`, an 8-aligned word inside a block the caller holds, which must be 0.
    /// Returns the offset.
    ///
    /// If the calling process dies at any instant of this call, recovery (on the next
    /// attach, or [`Heap::recover`]) leaves the slot holding the block, or leaves it 0 and
    /// frees the block: no block is lost. Until this returns, and after the caller's
    /// death until recovery ran, nobody else may write the slot.
    ///
    /// ```
    /// use shmpool::heap::Heap;
    /// use shmpool::SegmentOptions;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("doc")?)?;
    /// let table = heap.alloc_zeroed(8 * 16)?; // 16 slots, all empty
    /// let block = heap.alloc_in(table + 8, 1000)?;
    /// assert_eq!(heap.segment().load_u64(table + 8)?, block);
    /// assert!(heap.alloc_in(table + 8, 10).is_err()); // the slot is taken
    /// # Ok(()) }
    /// ```
    pub fn alloc_in(&self, slot: u64, size: u64) -> Result<u64, AllocError> {
        let word = self.inner.slot_word(slot)?;
        self.alloc_recorded(slot, word, size, 16)
    }

    /// [`Heap::alloc_in`] into the word `word` at offset `slot` (not checked to lie in a
    /// block: the heap's own slots), aligned to `align` (a power of two up to 64 KiB).
    pub(super) fn alloc_recorded(
        &self,
        slot: u64,
        word: &AtomicU64,
        size: u64,
        align: u64,
    ) -> Result<u64, AllocError> {
        // SYNC: Acquire pairs with the Release store below, of an earlier allocation.
        if word.load(Ordering::Acquire) != 0 {
            return Err(AllocError::SlotTaken(slot));
        }
        let inner = &*self.inner;
        let d = match inner.my_desc() {
            Some(d) => d,
            None => self.claim()?,
        };
        let desc = inner.desc(d);
        desc.journal_block.store(0, Ordering::Relaxed);
        desc.journal_slot.store(slot, Ordering::Relaxed);
        let size =
            if align <= 4096 { size.max(1).next_multiple_of(align) } else { size.max(MAX_CLASS_SIZE + 1) };
        let taken = if size > MAX_CLASS_SIZE {
            inner.drain_delayed(d);
            inner.alloc_large_named(d, size)
        } else {
            inner.alloc_small_named(d, class_of(size))
        };
        if let Ok(block) = taken {
            crate::crash::point("journal.taken");
            // SYNC: Release pairs with the Acquire of whoever reads the slot (the load
            // above, or the caller's readers): they see the block's allocation.
            word.store(block, Ordering::Release);
            crate::crash::point("journal.recorded");
        }
        desc.journal_slot.store(0, Ordering::Relaxed);
        taken
    }
}

impl Inner {
    /// The slot at `slot`: an 8-aligned word inside an allocated block.
    fn slot_word(&self, slot: u64) -> Result<&AtomicU64, AllocError> {
        if !self.holds_word(slot) {
            return Err(AllocError::BadSlot(slot));
        }
        // SAFETY: an 8-aligned word inside an allocated block (checked above), committed.
        Ok(unsafe { self.base.at(slot) })
    }

    /// Whether the 8 bytes at `off` (8-aligned) lie inside an allocated block.
    fn holds_word(&self, off: u64) -> bool {
        let Some(u) = off.checked_sub(self.arena).map(|rel| rel >> UNIT_SHIFT) else { return false };
        if !off.is_multiple_of(8) || u >= u64::from(self.max_units) {
            return false;
        }
        let Some((head, _, tag)) = self.run_head(u as u32) else { return false };
        if tag == TAG_LARGE {
            return true;
        }
        let Some(class) = tag_class(tag) else { return false };
        let g = &GEOMETRY[class];
        let slab = self.unit_off(head);
        let Some(inside) = off.checked_sub(slab + u64::from(g.blocks_start)) else { return false };
        let idx = inside / g.size;
        let bit = 1 << (idx % 64);
        idx < u64::from(g.capacity)
            && inside % g.size + 8 <= g.size
            && self.bitmap(slab, class, false, (idx / 64) as u32) & bit != 0
    }

    /// A block of `class` for `alloc_in`, named in `d`'s journal before it is taken.
    fn alloc_small_named(&self, d: u32, class: usize) -> Result<u64, AllocError> {
        let q = self.queue(d, class);
        if self.peek(q, class).is_none() {
            self.refill(d, class)?;
        }
        let block = self.peek(q, class).expect("refill leaves the current slab a free block");
        self.desc(d).journal_block.store(block, Ordering::Relaxed);
        let popped = self.pop(q, class);
        debug_assert_eq!(popped, Some(block));
        Ok(block)
    }

    /// A large run for `alloc_in`, named in `d`'s journal under the page lock before it
    /// is taken.
    fn alloc_large_named(&self, d: u32, size: u64) -> Result<u64, AllocError> {
        let units = u32::try_from(size.div_ceil(UNIT)).map_err(|_| AllocError::TooLarge(size))?;
        if units > self.max_units {
            return Err(AllocError::TooLarge(size));
        }
        let journal = &self.desc(d).journal_block;
        let name = |head: u32| journal.store(self.unit_off(head) | JOURNAL_LARGE, Ordering::Relaxed);
        let head = self.alloc_run(units, TAG_LARGE, &name, &|_| {})?;
        Ok(self.unit_off(head))
    }

    /// Settles the journal of thread heap `d`, whose owner died (the caller holds `d`):
    /// a block it named and took but did not record in its slot is freed.
    pub(super) fn settle_journal(&self, d: u32) {
        let desc = self.desc(d);
        let slot = desc.journal_slot.load(Ordering::Relaxed);
        if slot == 0 {
            return;
        }
        let named = desc.journal_block.load(Ordering::Relaxed);
        let block = named & !JOURNAL_LARGE;
        let recorded = self.seg.load_u64(slot).is_ok_and(|v| v == block);
        if block != 0 && !recorded {
            if named & JOURNAL_LARGE != 0 {
                self.unname_large(d, named);
            } else {
                self.unname_small(d, block);
            }
        }
        desc.journal_block.store(0, Ordering::Relaxed);
        desc.journal_slot.store(0, Ordering::Relaxed);
    }

    /// The dead owner of `d` named (and may have taken) the small block at `block`: if it
    /// took it, its allocated bit is cleared (the rebuild then threads it back).
    fn unname_small(&self, d: u32, block: u64) {
        let Ok(Located::Slab { slab, class, idx }) = self.locate(block) else { return };
        if self.slab(slab).owner.load(Ordering::Relaxed) != d {
            return;
        }
        let (alloc, _, bit) = self.block_bits(slab, class, idx);
        alloc.store(alloc.load(Ordering::Relaxed) & !bit, Ordering::Relaxed);
    }

    /// The dead owner of `d` named the large run `named`: if it took it, it goes back.
    /// Under the page lock, and only if the journal still names it: a takeover of the
    /// lock forgets the name of a run never taken, which someone else may take since.
    fn unname_large(&self, d: u32, named: u64) {
        let _lock = self.page_lock();
        if self.desc(d).journal_block.load(Ordering::Relaxed) != named {
            return;
        }
        let mut buddy = self.buddy();
        let head = self.unit_of(named & !JOURNAL_LARGE);
        if matches!(buddy.state(head), UnitState::Run { tag: TAG_LARGE, .. }) {
            let _ = buddy.free(head);
        }
    }

    /// After the page lock was taken over from a dead holder: a large run a journal names
    /// but that is not taken was named by that holder, which died before taking it. The
    /// name is forgotten, before anyone else can take the run. (A live process names a
    /// run only under the lock, and has taken it by the time it lets the lock go.)
    pub(super) fn repair_journals(&self) {
        let buddy = self.buddy();
        for d in 0..layout::MAX_DESCS {
            let desc = self.desc(d);
            let named = desc.journal_block.load(Ordering::Relaxed);
            if desc.journal_slot.load(Ordering::Relaxed) == 0 || named & JOURNAL_LARGE == 0 {
                continue;
            }
            let off = named & !JOURNAL_LARGE;
            let taken = off >= self.arena && off < self.unit_off(buddy.units()) && {
                let head = self.unit_of(off);
                matches!(buddy.state(head), UnitState::Run { tag: TAG_LARGE, .. })
            };
            if !taken {
                desc.journal_block.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Whether some thread heap's journal records into the slot at `slot` (an
    /// `alloc_in` in flight, or one a dead process left for recovery to settle).
    pub(super) fn journal_names(&self, slot: u64) -> bool {
        (0..layout::MAX_DESCS).any(|d| self.desc(d).journal_slot.load(Ordering::Relaxed) == slot)
    }
}
