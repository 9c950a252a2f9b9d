//! The page-run allocator's state in the segment: the unit table, the list heads in
//! [`Meta`], and links in the first 8 bytes of each free block (committed memory).
//!
//! # Safety
//! Views are taken at unit-table words below `max_units` and at the first 8 bytes of free
//! units inside the managed arena, all committed. See `raw.rs`.
#![allow(unsafe_code)]

use super::layout::Meta;
use super::raw::Base;
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::pages::{Buddy, UnitStore, UNIT_SHIFT};

/// A [`UnitStore`] over the segment. Mutations happen under the page lock; the unit
/// table is also read without it (`Buddy::run_of`), hence atomics.
pub(crate) struct ShmStore<'a> {
    pub base: Base,
    pub meta: &'a Meta,
    pub table_off: u64,
    pub arena: u64,
}

impl ShmStore<'_> {
    fn word(&self, u: u32) -> &AtomicU64 {
        debug_assert!(u < self.meta.max_units.load(Ordering::Relaxed));
        // SAFETY: the table has one committed, 8-aligned word per unit of the reserved
        // capacity, and callers stay below it (`u < managed <= max_units`).
        unsafe { self.base.at(self.table_off + 8 * u64::from(u)) }
    }

    fn links(&self, u: u32) -> (&AtomicU32, &AtomicU32) {
        let off = self.arena + (u64::from(u) << UNIT_SHIFT);
        // SAFETY: unit `u` is managed, hence committed, and 64 KiB-aligned; links are
        // only kept in free units, which nothing else uses.
        unsafe { (self.base.at(off), self.base.at(off + 4)) }
    }
}

impl UnitStore for ShmStore<'_> {
    fn managed(&self) -> u32 {
        self.meta.units.load(Ordering::Relaxed)
    }
    fn set_managed(&mut self, units: u32) {
        // SYNC: Release pairs with the Acquire in `Heap::arena_end`: a validator that
        // sees a unit as managed sees its table word.
        self.meta.units.store(units, Ordering::Release);
    }
    fn entry(&self, u: u32) -> u64 {
        self.word(u).load(Ordering::Relaxed)
    }
    fn set_entry(&mut self, u: u32, word: u64) {
        // SYNC: Release pairs with the Acquire in `Inner::table_word` readers (the free
        // path): whoever sees a unit as the head of a run sees it committed.
        self.word(u).store(word, Ordering::Release);
    }
    fn head(&self, order: usize) -> u32 {
        self.meta.heads[order].load(Ordering::Relaxed)
    }
    fn set_head(&mut self, order: usize, u: u32) {
        self.meta.heads[order].store(u, Ordering::Relaxed);
    }
    fn link(&self, u: u32) -> (u32, u32) {
        let (n, p) = self.links(u);
        (n.load(Ordering::Relaxed), p.load(Ordering::Relaxed))
    }
    fn set_link(&mut self, u: u32, next: u32, prev: u32) {
        let (n, p) = self.links(u);
        n.store(next, Ordering::Relaxed);
        p.store(prev, Ordering::Relaxed);
    }
}

/// The buddy allocator over the segment.
pub(crate) type ShmBuddy<'a> = Buddy<ShmStore<'a>>;
