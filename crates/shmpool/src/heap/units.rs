//! Units for slabs and large blocks: the page-run allocator under the page lock, and
//! growth of the arena (and so of the segment) when it runs dry.

use super::error::{AllocError, FreeError};
use super::layout::TAG_LARGE;
use super::lock::Guard;
use super::store::ShmBuddy;
use super::Inner;
use crate::crash;
use crate::pages::{PagesError, UnitState, UNIT, UNIT_SHIFT};

/// The arena grows by at least this many units (1 MiB) at a time.
const MIN_GROWTH_UNITS: u32 = 16;

impl Inner {
    /// Takes the page lock. If its holder died holding it, the page-run allocator may be
    /// half updated: repaired first (`Buddy::repair`).
    fn page_lock(&self) -> Guard<'_> {
        let guard = self.meta().page_lock.lock(self.lock_holder(), |tag| self.holder_dead(tag));
        if guard.took_over {
            self.buddy().repair();
        }
        crash::point("page_lock.held");
        guard
    }

    /// Takes a run of `units` units tagged `tag`; when none is free, first recovers what
    /// dead processes hold (their empty slabs come back), then grows the arena.
    pub(super) fn alloc_units(&self, units: u32, tag: u8) -> Result<u32, AllocError> {
        if let Some(head) = self.take_units(units, tag, false)? {
            return Ok(head);
        }
        self.recover(); // it takes the page lock itself, to give slabs back
        Ok(self.take_units(units, tag, true)?.expect("a run, after growth, or an error"))
    }

    /// A run from the pages, under the page lock; `None` if there is none and `grow` is
    /// false.
    fn take_units(&self, units: u32, tag: u8, grow: bool) -> Result<Option<u32>, AllocError> {
        let _lock = self.page_lock();
        let mut buddy = self.buddy();
        match buddy.alloc(units, tag) {
            Ok(head) => Ok(Some(head)),
            Err(PagesError::Exhausted { .. }) if !grow => Ok(None),
            Err(PagesError::Exhausted { .. }) => {
                self.grow_arena(&mut buddy, units)?;
                buddy.alloc(units, tag).map(Some).map_err(|e| AllocError::OutOfMemory(e.to_string()))
            }
            Err(_) => Err(AllocError::TooLarge(u64::from(units) << UNIT_SHIFT)),
        }
    }

    /// Gives the run at `unit` back.
    pub(super) fn free_units(&self, unit: u32) {
        let _lock = self.page_lock();
        let freed = self.buddy().free(unit);
        debug_assert!(freed.is_ok(), "freeing a run the heap owns: {freed:?}");
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
        let head = self.alloc_units(units, TAG_LARGE)?;
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
