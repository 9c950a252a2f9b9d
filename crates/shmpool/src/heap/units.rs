//! Units for slabs and large blocks: the page-run allocator under the page lock, and
//! growth of the arena (and so of the segment) when it runs dry.

use super::error::{AllocError, FreeError};
use super::layout::{tag_class, SLAB_MAGIC, TAG_LARGE};
use super::lock::Guard;
use super::store::ShmBuddy;
use super::Inner;
use crate::crash;
use crate::loom::Ordering;
use crate::pages::{PagesError, UnitState, UNIT, UNIT_SHIFT};

/// The arena grows by at least this many units (1 MiB) at a time.
const MIN_GROWTH_UNITS: u32 = 16;

impl Inner {
    /// Takes the page lock. If its holder died holding it, what it protects may be half
    /// updated: the page-run allocator is repaired (`Buddy::repair`), half-made slabs go
    /// back, and claims left half made are undone.
    pub(super) fn page_lock(&self) -> Guard<'_> {
        let guard = self.meta().page_lock.lock(self.lock_holder(), |tag| self.holder_dead(tag));
        if guard.took_over {
            self.buddy().repair();
            self.drop_unmade_slabs();
            self.repair_claims();
            self.repair_journals();
        }
        crash::point("page_lock.held");
        guard
    }

    /// Takes a run of `units` units tagged `tag`; when none is free, first recovers what
    /// dead processes hold (their empty slabs come back), then grows the arena.
    ///
    /// `init` runs on the new run's head unit before the page lock is released, so that a
    /// run is never seen without what `init` writes unless its taker died holding the
    /// lock (whoever takes the lock over then repairs: `page_lock`).
    pub(super) fn alloc_units(&self, units: u32, tag: u8, init: impl Fn(u32)) -> Result<u32, AllocError> {
        self.alloc_run(units, tag, &|_| {}, &init)
    }

    /// [`Inner::alloc_units`], with `before` told the run's head under the page lock
    /// before the run is taken (a recorded allocation names it there: `journal.rs`).
    pub(super) fn alloc_run(
        &self,
        units: u32,
        tag: u8,
        before: &dyn Fn(u32),
        init: &dyn Fn(u32),
    ) -> Result<u32, AllocError> {
        if let Some(head) = self.take_units(units, tag, false, before, init)? {
            return Ok(head);
        }
        self.recover(); // it takes the page lock itself, to give slabs back
        Ok(self.take_units(units, tag, true, before, init)?.expect("a run, after growth, or an error"))
    }

    /// A run from the pages, under the page lock; `None` if there is none and `grow` is
    /// false.
    fn take_units(
        &self,
        units: u32,
        tag: u8,
        grow: bool,
        before: &dyn Fn(u32),
        init: &dyn Fn(u32),
    ) -> Result<Option<u32>, AllocError> {
        let _lock = self.page_lock();
        let mut buddy = self.buddy();
        let head = match buddy.next_run(units) {
            Ok(head) => head,
            Err(PagesError::Exhausted { .. }) if !grow => return Ok(None),
            Err(PagesError::Exhausted { .. }) => {
                self.grow_arena(&mut buddy, units)?;
                buddy.next_run(units).map_err(|e| AllocError::OutOfMemory(e.to_string()))?
            }
            Err(_) => return Err(AllocError::TooLarge(u64::from(units) << UNIT_SHIFT)),
        };
        before(head);
        let taken = buddy.alloc(units, tag);
        debug_assert_eq!(taken, Ok(head), "the run next_run named");
        init(head);
        Ok(Some(head))
    }

    /// Gives the run at `unit` back; `before` runs first, under the page lock (a slab's
    /// header is unmade there, so that a slab run with a bad header means only a holder
    /// that died: see `page_lock`).
    pub(super) fn free_units(&self, unit: u32, before: impl FnOnce()) {
        let _lock = self.page_lock();
        before();
        let freed = self.buddy().free(unit);
        debug_assert!(freed.is_ok(), "freeing a run the heap owns: {freed:?}");
    }

    /// After a takeover from a dead holder: the slab runs whose header was not made yet,
    /// or was being unmade (their class word does not match their tag), go back to the
    /// pages. Only a holder of the page lock makes or unmakes a header, and that one died.
    fn drop_unmade_slabs(&self) {
        let mut buddy = self.buddy();
        for (unit, _, tag) in self.runs(|t| tag_class(t).is_some()) {
            let class = tag_class(tag).expect("a slab tag");
            if self.slab(self.unit_off(unit)).class.load(Ordering::Relaxed) != SLAB_MAGIC | class as u32 {
                let ur = self.unit_remote(unit);
                ur.state.store(0, Ordering::Relaxed);
                ur.next.store(0, Ordering::Relaxed);
                let _ = buddy.free(unit);
            }
        }
    }

    /// Adds committed units so that a run of `units` fits: enough for an aligned block
    /// of `2^ceil(log2 units)` past the current end, and at least 1/8 more arena.
    fn grow_arena(&self, buddy: &mut ShmBuddy<'_>, units: u32) -> Result<(), AllocError> {
        let have = buddy.units();
        let block = units.next_power_of_two();
        let need = have.next_multiple_of(block).saturating_add(block);
        let want = need.max(have.saturating_add((have / 8).max(MIN_GROWTH_UNITS)));
        let target = want.min(self.max_units);
        if target < need && target <= have {
            return Err(self.out_of_memory(units));
        }
        let end = self.arena + (u64::from(target) << UNIT_SHIFT);
        self.seg.grow_to(end)?;
        // Units another grower (or the user) committed meanwhile come along too.
        let committed = ((self.seg.committed() - self.arena) >> UNIT_SHIFT) as u32;
        buddy.extend(committed.min(self.max_units).max(target));
        Ok(())
    }

    fn out_of_memory(&self, units: u32) -> AllocError {
        AllocError::OutOfMemory(format!(
            "no run of {units} units left and the segment is at its reserved maximum of {} bytes",
            self.seg.reserved()
        ))
    }

    /// A run of whole units for `size` bytes: a block above the largest size class, or
    /// one aligned to more than 4 KiB.
    #[cold]
    pub(super) fn alloc_large(&self, size: u64) -> Result<u64, AllocError> {
        let units = u32::try_from(size.div_ceil(UNIT)).map_err(|_| AllocError::TooLarge(size))?;
        if units > self.max_units {
            return Err(AllocError::TooLarge(size));
        }
        let head = self.alloc_units(units, TAG_LARGE, |_| {})?;
        Ok(self.unit_off(head))
    }

    /// Usable bytes of the large block at `off` headed by `head`.
    pub(super) fn large_len(&self, head: u32, off: u64) -> Result<u64, FreeError> {
        if off != self.unit_off(head) {
            return Err(FreeError::Interior(off));
        }
        match self.buddy().state(head) {
            UnitState::Run { len, tag: TAG_LARGE } => Ok(u64::from(len) << UNIT_SHIFT),
            _ => Err(FreeError::NotAllocated(off)),
        }
    }

    /// Frees a large block; re-checked under the lock, so two racing frees of the same
    /// block cannot both succeed.
    #[cold]
    pub(super) fn free_large(&self, head: u32, off: u64) -> Result<(), FreeError> {
        if off != self.unit_off(head) {
            return Err(FreeError::Interior(off));
        }
        let _lock = self.page_lock();
        let mut buddy = self.buddy();
        let UnitState::Run { tag: TAG_LARGE, .. } = buddy.state(head) else {
            return Err(FreeError::DoubleFree(off));
        };
        buddy.free(head).map_err(|_| FreeError::NotAllocated(off))?;
        Ok(())
    }
}
