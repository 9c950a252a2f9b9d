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
//! | unit state       | sets and clears `FULL`, clears `QUEUED` | sets `QUEUED` (slab is `FULL`) |
//! | desc `delayed`   | CAS pop of the top slab     | CAS push of a `QUEUED` slab     |
//!
//! The owner needs no read-modify-write on its fast path; a remote free costs one
//! `fetch_or` and a load of the unit state (and, into a full slab, a CAS and a push per
//! collection).
//!
//! # Safety
//! Views are taken at slab offsets from the owner's lists or from `locate`, which checked
//! them against the unit table; bitmaps and block links lie inside those slabs. See
//! `raw.rs` for the contract.
#![allow(unsafe_code)]

use super::class::{Geometry, GEOMETRY, GEOMETRY_AT, ONE_UNIT_CLASSES, SLAB_FIELDS};
use super::error::{AllocError, FreeError};
use super::layout::{slab_tag, tag_class, ClassQueue, Slab, SLAB_MAGIC, USED_CURRENT, USED_FULL};
use super::remote::{self, FULL};
use super::{tls, Hot, Inner};
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::pages::{UnitState, UNIT, UNIT_SHIFT};

/// The unit-table word of a one-unit slab of class 0. That of class `c` is
/// `ONE_UNIT_SLAB0 + (c << ONE_UNIT_CLASS_SHIFT)`.
const ONE_UNIT_SLAB0: u64 = UnitState::Run { len: 1, tag: slab_tag(0) }.encode();
const ONE_UNIT_CLASS_SHIFT: u32 = 8;
const _: () = assert!(
    UnitState::Run { len: 1, tag: slab_tag(1) }.encode() - ONE_UNIT_SLAB0 == 1 << ONE_UNIT_CLASS_SHIFT
);

/// How many never-used blocks one slow-path call threads onto the free list.
const EXTEND_BYTES: u64 = 4096;

/// What `Inner::free_small` did with a free.
pub(super) enum SmallFree {
    /// Freed: the calling thread owns the block's slab.
    Done,
    /// The block lies in a one-unit slab of `class` that another thread owns.
    Foreign { class: usize },
    /// Anything else, for `free_any` (which also reports refused frees).
    Other,
}

impl Hot {
    #[inline(always)]
    pub(super) fn slab(&self, slab: u64) -> &Slab {
        // SAFETY: `slab` is the offset of a slab run inside the managed arena (from a
        // class list, or found by `locate`), 64 KiB-aligned.
        unsafe { self.base.at(slab) }
    }

    /// Word `w` of the allocated (`remote == false`) or remote bitmap of a slab of `class`.
    #[inline(always)]
    pub(super) fn bits(&self, slab: u64, class: usize, remote: bool, w: u32) -> &AtomicU64 {
        self.bits_of(slab, &GEOMETRY[class], remote, w)
    }

    /// [`Hot::bits`] for a slab of geometry `g`.
    #[inline(always)]
    fn bits_of(&self, slab: u64, g: &Geometry, remote: bool, w: u32) -> &AtomicU64 {
        let words = if remote { u64::from(g.words) } else { 0 };
        let off = slab + SLAB_FIELDS + 8 * (words + u64::from(w));
        // SAFETY: the bitmaps follow the slab fields inside the slab's first unit.
        unsafe { self.base.at(off) }
    }

    /// Block `idx`'s words of the allocated and remote bitmaps, and its bit in them.
    #[inline(always)]
    pub(super) fn block_bits(&self, slab: u64, class: usize, idx: u32) -> (&AtomicU64, &AtomicU64, u64) {
        self.geometry_bits(slab, &GEOMETRY[class], idx)
    }

    /// [`Hot::block_bits`] for a slab of geometry `g`.
    #[inline(always)]
    fn geometry_bits(&self, slab: u64, g: &Geometry, idx: u32) -> (&AtomicU64, &AtomicU64, u64) {
        (self.bits_of(slab, g, false, idx / 64), self.bits_of(slab, g, true, idx / 64), 1 << (idx % 64))
    }

    #[inline(always)]
    pub(super) fn block(&self, slab: u64, class: usize, idx: u32) -> u64 {
        let g = &GEOMETRY[class];
        slab + u64::from(g.blocks_start) + u64::from(idx) * g.size
    }

    /// The link word at the start of a free block.
    #[inline(always)]
    pub(super) fn link32(&self, block: u64) -> &AtomicU32 {
        // SAFETY: blocks are 16-aligned, at least 16 bytes, inside a committed slab.
        unsafe { self.base.at(block) }
    }

    #[inline(always)]
    pub(super) fn queue(&self, d: u32, class: usize) -> &ClassQueue {
        &self.desc(d).classes[class]
    }

    /// Puts block `idx` (at `block`) on its slab's free list; returns the slab's `used`
    /// word after (owner only).
    #[inline(always)]
    pub(super) fn push_free(&self, slab: &Slab, block: u64, idx: u32) -> u32 {
        self.link32(block).store(slab.free.load(Ordering::Relaxed), Ordering::Relaxed);
        slab.free.store(idx + 1, Ordering::Relaxed);
        let used = slab.used.load(Ordering::Relaxed) - 1;
        slab.used.store(used, Ordering::Relaxed);
        used
    }

    #[inline(always)]
    pub(super) fn unit_of(&self, slab_off: u64) -> u32 {
        ((slab_off - self.arena) >> UNIT_SHIFT) as u32
    }

    /// The current slab of `q`, a queue of `class`, and the index of its first free
    /// block, if it has one.
    #[inline(always)]
    fn first_free(self, q: &ClassQueue, class: usize) -> Option<(u64, u32)> {
        let head = q.head.load(Ordering::Relaxed);
        if head == 0 {
            return None;
        }
        let slab_off = self.unit_off(head - 1);
        let f = self.slab(slab_off).free.load(Ordering::Relaxed);
        // `f` comes from shared memory: never index past the slab with it.
        if f == 0 || f > GEOMETRY[class].capacity {
            return None;
        }
        Some((slab_off, f - 1))
    }

    /// The block [`Hot::pop`] would take from `q`, a queue of `class`.
    #[inline]
    pub(super) fn peek(self, q: &ClassQueue, class: usize) -> Option<u64> {
        self.first_free(q, class).map(|(slab_off, idx)| self.block(slab_off, class, idx))
    }

    /// The fast path: pops a block from the current slab of `q`, a queue of `class`.
    #[inline(always)]
    pub(super) fn pop(self, q: &ClassQueue, class: usize) -> Option<u64> {
        let h = self;
        let (slab_off, idx) = h.first_free(q, class)?;
        let slab = h.slab(slab_off);
        let block = h.block(slab_off, class, idx);
        slab.free.store(h.link32(block).load(Ordering::Relaxed), Ordering::Relaxed);
        crate::crash::point("slab.pop");
        slab.used.store(slab.used.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let word = h.bits(slab_off, class, false, idx / 64);
        word.store(word.load(Ordering::Relaxed) | 1 << (idx % 64), Ordering::Relaxed);
        Some(block)
    }
}

impl Inner {
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

    /// The common frees, inlined: of a block in a one-unit slab, by the thread that owns
    /// the slab (done here) or by another (`Foreign`, for `free_foreign`). It checks what
    /// `locate` and `free_local` check; `Other` hands the free to `free_any`, which takes
    /// every other case (large blocks, bigger slabs) and reports the frees it refuses.
    #[inline(always)]
    pub(super) fn free_small(&self, h: Hot, off: u64) -> SmallFree {
        let slab_off = off & !(UNIT - 1); // the arena starts on a unit boundary
        let own = match tls::cached_slab(h.id, slab_off) {
            Some(hit) => hit, // validated by an earlier free, and still this thread's
            None => match self.small_slab(h, off, slab_off) {
                Ok(found) => found,
                Err(other) => return other,
            },
        };
        let g = own.geometry;
        // Also refuses offsets off the granule: a block starts at a multiple of its size.
        let Some(idx) = g.block_at(off - slab_off) else { return SmallFree::Other };
        let (alloc, remote_bits, bit) = h.geometry_bits(slab_off, g, idx);
        if !remote::release_local(alloc, remote_bits, bit) {
            return SmallFree::Other;
        }
        self.released_local(h, own.desc, slab_off, own.class, idx, off);
        SmallFree::Done
    }

    /// The one-unit slab at `slab_off`, holding `off`, if the calling thread owns it (then
    /// cached for the next frees); else whether it is a one-unit slab of another thread.
    #[inline(always)]
    fn small_slab(&self, h: Hot, off: u64, slab_off: u64) -> Result<tls::OwnSlab, SmallFree> {
        // An offset below the arena wraps to a unit far beyond `max_units`.
        let u = off.wrapping_sub(h.arena) >> UNIT_SHIFT;
        if u >= u64::from(h.max_units) {
            return Err(SmallFree::Other);
        }
        // The unit heads a one-unit slab, and its class: one subtraction and one test.
        // SYNC: Acquire, see `table_word`: the unit is committed.
        let word = h.table_word(u).load(Ordering::Acquire).wrapping_sub(ONE_UNIT_SLAB0);
        if word >= (ONE_UNIT_CLASSES as u64) << ONE_UNIT_CLASS_SHIFT {
            return Err(SmallFree::Other);
        }
        let class = (word >> ONE_UNIT_CLASS_SHIFT) as usize;
        let (d, _) = tls::current(h.id, h.empty);
        if h.slab(slab_off).owner.load(Ordering::Relaxed) != d {
            return Err(SmallFree::Foreign { class });
        }
        let own = tls::OwnSlab { class, geometry: &GEOMETRY_AT[class], desc: d };
        tls::cache_slab(h.id, slab_off, own);
        Ok(own)
    }

    /// A free that `free_small` found in a one-unit slab of `class` that another thread
    /// owns: checks the offset as `locate` would, then frees remotely.
    #[inline(never)]
    pub(super) fn free_foreign(&self, off: u64, class: usize) -> Result<(), FreeError> {
        if !off.is_multiple_of(super::class::GRANULE) {
            return Err(FreeError::Misaligned(off));
        }
        let slab_off = off & !(UNIT - 1);
        let idx = GEOMETRY[class].block_at(off - slab_off).ok_or(FreeError::Interior(off))?;
        self.free_remote(slab_off, class, idx, off)
    }

    /// A free by the owning thread of the block at `block`, index `idx` of its slab.
    pub(super) fn free_local(
        &self,
        d: u32,
        slab_off: u64,
        class: usize,
        idx: u32,
        block: u64,
    ) -> Result<(), FreeError> {
        let h = self.hot;
        let (alloc, remote_bits, bit) = h.block_bits(slab_off, class, idx);
        // Refuses a double free (also one after a remote free not yet collected).
        if !remote::release_local(alloc, remote_bits, bit) {
            return Err(FreeError::DoubleFree(block));
        }
        self.released_local(h, d, slab_off, class, idx, block);
        Ok(())
    }

    /// The owner freed block `idx` (at `block`): onto the slab's free list.
    #[inline(always)]
    fn released_local(&self, h: Hot, d: u32, slab_off: u64, class: usize, idx: u32, block: u64) {
        crate::crash::point("slab.release");
        let used = h.push_free(h.slab(slab_off), block, idx);
        // 0: an empty slab that is not the current one (which stays even when empty, so
        // alloc/free/alloc/free does not churn slabs); `USED_FULL`: a full slab has room.
        if used.wrapping_sub(1) >= USED_FULL - 1 {
            self.after_local_free(d, slab_off, class);
        }
    }

    /// The rare cases of an owner's free: the slab was full (it has room again) or is
    /// empty now.
    #[cold]
    #[inline(never)]
    fn after_local_free(&self, d: u32, slab_off: u64, class: usize) {
        if self.slab(slab_off).used.load(Ordering::Relaxed) & USED_FULL != 0 {
            self.unfull(d, slab_off, class);
        }
        self.retire_if_empty(d, slab_off, class);
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
        if !remote::claim(alloc, remote_bits, bit) {
            return Err(FreeError::DoubleFree(block));
        }
        // From here on the owner may collect the block and give the slab back: only the
        // unit's metadata is touched, and the slab's header only once it is `QUEUED`.
        let unit = self.unit_of(slab_off);
        let ur = self.unit_remote(unit);
        // The tag names a registration (registering if need be), whose death a recovery
        // finds and tells the owner of (`rescue`).
        let pusher = || {
            let _ = self.process_slot();
            self.lock_holder()
        };
        if remote::queue_if_full(&ur.state, pusher) {
            crate::crash::point("free.queued");
            let owner = self.slab(slab_off).owner.load(Ordering::Relaxed);
            if owner >= super::layout::MAX_DESCS {
                return Ok(()); // a damaged header: the slab stays queued, not lost to a wild write
            }
            remote::push_slab(&self.desc(owner).delayed, &ur.next, unit + 1);
        }
        Ok(())
    }

    /// A slab that remote frees emptied goes back to the pages, as one emptied by its
    /// owner does (unless it is the current slab).
    fn retire_if_empty(&self, d: u32, slab_off: u64, class: usize) {
        // Neither current nor full (see `Slab::used`).
        if self.slab(slab_off).used.load(Ordering::Relaxed) == 0 {
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
        let delayed = &self.desc(d).delayed;
        // A load first: a pop would take the line from the freers even when empty.
        if delayed.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut budget = self.max_units;
        while budget > 0 {
            budget -= 1;
            let top = remote::top(delayed);
            // Validate before following the link: only a slab head this heap owns.
            let Some(class) = top.checked_sub(1).and_then(|unit| self.owned_slab(d, unit)) else { break };
            let unit = top - 1;
            let ur = self.unit_remote(unit);
            if !remote::pop_slab(delayed, top, &ur.state, &ur.next) {
                continue; // a push came first
            }
            crate::crash::point("drain.popped");
            self.drained(d, unit, class);
        }
    }

    /// The owner took the slab at `unit` off its delayed stack: collects it, and puts it
    /// back on its class list or gives it back.
    fn drained(&self, d: u32, unit: u32, class: usize) {
        let slab_off = self.unit_off(unit);
        let ur = self.unit_remote(unit);
        remote::unqueue(&ur.state);
        self.collect(slab_off, class);
        if ur.state.load(Ordering::Relaxed) & FULL != 0
            && self.slab(slab_off).free.load(Ordering::Relaxed) != 0
        {
            self.unfull(d, slab_off, class);
        }
        self.retire_if_empty(d, slab_off, class);
    }

    /// Rebuilds thread heap `d`, whose owner died, from the ground truth: the unit table
    /// names its slabs, and each slab's allocated bitmap names its live blocks. Free lists,
    /// counts, class and full lists and the delayed stack, which the owner may have left
    /// half updated, are made again; remote frees waiting in the bitmaps are collected;
    /// empty slabs go back to the pages. The caller holds `d` (claimed from the dead
    /// owner), so this runs as its owner would. Returns (slabs kept, slabs given back).
    pub(super) fn rebuild_thread_heap(&self, d: u32) -> (u32, u32) {
        self.settle_journal(d);
        for c in 0..super::class::CLASSES {
            let q = self.queue(d, c);
            q.head.store(0, Ordering::Relaxed);
            q.full.store(0, Ordering::Relaxed);
        }
        let slabs = self.slabs_of(d);
        self.settle_queued(d, &slabs);
        let (mut kept, mut given_back) = (0, 0);
        for &(unit, class) in &slabs {
            let slab_off = self.unit_off(unit);
            let ur = self.unit_remote(unit);
            remote::clear_full(&ur.state); // it goes on a class list, or is flagged again
            let g = &GEOMETRY[class];
            for w in 0..g.words {
                // The blocks freed remotely are free; a bit of a block not allocated is dropped.
                remote::collect(self.bits(slab_off, class, false, w), self.bits(slab_off, class, true, w));
            }
            let used = self.rethread(slab_off, class);
            let slab = self.slab(slab_off);
            slab.next.store(0, Ordering::Relaxed);
            slab.prev.store(0, Ordering::Relaxed);
            let q = self.queue(d, class);
            // A slab still QUEUED is on its way onto the stack: it stays until drained.
            if used == 0 && remote::may_retire(&ur.state) {
                self.give_back(unit);
                given_back += 1;
                continue;
            }
            kept += 1;
            let room =
                slab.free.load(Ordering::Relaxed) != 0 || slab.bump.load(Ordering::Relaxed) < g.capacity;
            if room {
                self.classes(q, || self.link_back(q, slab_off));
                continue;
            }
            // Full: flagged as the owner flags it, and whatever came before the flag collected.
            remote::mark_full(&ur.state);
            if self.collect(slab_off, class) > 0 {
                remote::clear_full(&ur.state);
                self.classes(q, || self.link_back(q, slab_off));
            } else {
                self.link_full(q, slab_off);
            }
        }
        (kept, given_back)
    }

    /// The delayed stack of `d`, whose owner died, and its slabs' `QUEUED` flags, made to
    /// agree again (see `remote.rs`): every slab on the stack is taken off and unqueued;
    /// then a slab still `QUEUED` off the stack is unqueued if the owner was popping it
    /// or its pusher is dead (the push never came), and left if its pusher lives (the
    /// push is on its way, for the next owner's drain).
    fn settle_queued(&self, d: u32, slabs: &[(u32, usize)]) {
        let delayed = &self.desc(d).delayed;
        let mut budget = self.max_units;
        loop {
            let top = remote::top(delayed);
            if top == 0 || budget == 0 || self.owned_slab(d, top - 1).is_none() {
                break;
            }
            budget -= 1;
            let ur = self.unit_remote(top - 1);
            if remote::pop_slab(delayed, top, &ur.state, &ur.next) {
                remote::unqueue(&ur.state);
            }
        }
        // The owner died: a slab it was popping is a stray too.
        let strays: Vec<u32> = self.strays(slabs, true).into_iter().map(|(unit, _)| unit).collect();
        // Pushed since the pops above, by a pusher that has died since? The stack tells:
        // dead pushers push no more.
        let on_stack = self.stack_units(d);
        for unit in strays.into_iter().filter(|u| !on_stack.contains(u)) {
            remote::unqueue(&self.unit_remote(unit).state);
        }
    }

    /// The owner of `d`, told that processes died, takes back the slabs whose pusher died
    /// between flagging them `QUEUED` and pushing them: off the stack, they would wait
    /// for a drain forever. Once a pusher is known dead, a walk of the stack (which only
    /// the owner pops) tells whether its push came.
    pub(super) fn rescue(&self, d: u32) {
        self.desc(d).rescue.store(0, Ordering::Relaxed);
        let strays = self.strays(&self.slabs_of(d), false);
        if strays.is_empty() {
            return;
        }
        let on_stack = self.stack_units(d);
        for (unit, class) in strays.into_iter().filter(|(u, _)| !on_stack.contains(u)) {
            self.drained(d, unit, class);
        }
    }

    /// The slabs among `slabs` that are `QUEUED` by a pusher that is dead (and, with
    /// `popping`, those an owner was popping), whether on the stack or not.
    fn strays(&self, slabs: &[(u32, usize)], popping: bool) -> Vec<(u32, usize)> {
        let mut dead = std::collections::HashMap::new();
        let mut stray =
            |unit: u32| match remote::queued_by(self.unit_remote(unit).state.load(Ordering::Relaxed)) {
                None => false,
                Some(remote::Pusher::Owner) => popping,
                Some(remote::Pusher::Freer(tag)) => *dead.entry(tag).or_insert_with(|| self.holder_dead(tag)),
            };
        slabs.iter().copied().filter(|&(unit, _)| stray(unit)).collect()
    }

    /// The slabs on `d`'s delayed stack. Only the owner pops, so for the owner (or its
    /// recoverer) the part below the top it reads stays put.
    fn stack_units(&self, d: u32) -> std::collections::HashSet<u32> {
        let mut seen = std::collections::HashSet::new();
        let mut next = remote::top(&self.desc(d).delayed);
        while next != 0 && self.owned_slab(d, next - 1).is_some() && seen.insert(next - 1) {
            next = self.unit_remote(next - 1).next.load(Ordering::Relaxed);
        }
        seen
    }

    /// The slabs the unit table holds whose header names `d` as owner: `(unit, class)`.
    fn slabs_of(&self, d: u32) -> Vec<(u32, usize)> {
        self.runs(|tag| tag_class(tag).is_some())
            .into_iter()
            .filter_map(|(u, len, tag)| {
                let slab = self.slab(self.unit_off(u));
                tag_class(tag)
                    .filter(|&c| {
                        slab.class.load(Ordering::Relaxed) == SLAB_MAGIC | c as u32
                            && slab.owner.load(Ordering::Relaxed) == d
                            && u64::from(GEOMETRY[c].units) == len
                    })
                    .map(|c| (u, c))
            })
            .collect()
    }

    /// Threads a slab's free list again from its allocated bitmap (owner only): every
    /// block below `bump` whose bit is clear; `bump` is raised past the last allocated
    /// block. Returns the blocks allocated, which is what `used` counts now (no flags).
    fn rethread(&self, slab_off: u64, class: usize) -> u32 {
        let g = &GEOMETRY[class];
        let slab = self.slab(slab_off);
        let allocated = |idx: u32| {
            self.bits(slab_off, class, false, idx / 64).load(Ordering::Relaxed) >> (idx % 64) & 1 != 0
        };
        let last = (0..g.capacity).rev().find(|&idx| allocated(idx)).map_or(0, |idx| idx + 1);
        let bump = slab.bump.load(Ordering::Relaxed).min(g.capacity).max(last);
        let (mut free, mut used) = (0, 0);
        for idx in (0..bump).rev() {
            if allocated(idx) {
                used += 1;
            } else {
                self.link32(self.block(slab_off, class, idx)).store(free, Ordering::Relaxed);
                free = idx + 1;
            }
        }
        slab.free.store(free, Ordering::Relaxed);
        slab.bump.store(bump, Ordering::Relaxed);
        slab.used.store(used, Ordering::Relaxed);
        used
    }

    /// The class of the slab headed by `unit`, if it is one and `d` owns it.
    pub(super) fn owned_slab(&self, d: u32, unit: u32) -> Option<usize> {
        if unit >= self.max_units {
            return None;
        }
        let (head, len, tag) = self.run_head(unit)?;
        let class = tag_class(tag)?;
        let slab = self.slab(self.unit_off(unit));
        let ok = head == unit && GEOMETRY[class].units == len && slab.owner.load(Ordering::Relaxed) == d;
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
    ///
    /// A slab whose remote frees come back a few at a time (another thread frees what
    /// this one allocates, at the same pace) would send every few allocations here, to
    /// scan its bitmaps again. So a collection that brings back fewer than a quarter of
    /// the slab's blocks moves the slab behind the others of its class, or, if it is the
    /// only one, puts a new slab in front of it, so that it gathers frees for a whole
    /// turn; each call moves at most one slab aside, so the memory this costs is one slab
    /// per class.
    #[cold]
    pub(super) fn alloc_slow(&self, d: u32, class: usize) -> Result<u64, AllocError> {
        self.refill(d, class)?;
        Ok(self.pop(self.queue(d, class), class).expect("refill leaves the current slab a free block"))
    }

    /// Makes sure the current slab of `class` has a free block (see [`Inner::alloc_slow`]).
    pub(super) fn refill(&self, d: u32, class: usize) -> Result<(), AllocError> {
        if self.desc(d).rescue.load(Ordering::Relaxed) != 0 {
            self.rescue(d);
        }
        self.drain_delayed(d);
        let q = self.queue(d, class);
        let g = &GEOMETRY[class];
        let mut moved_aside = false;
        loop {
            let head = q.head.load(Ordering::Relaxed);
            if head == 0 {
                break;
            }
            let slab_off = self.unit_off(head - 1);
            let slab = self.slab(slab_off);
            if slab.free.load(Ordering::Relaxed) == 0 && slab.bump.load(Ordering::Relaxed) < g.capacity {
                self.extend(slab_off, class);
            }
            if slab.free.load(Ordering::Relaxed) == 0 {
                let got = self.collect(slab_off, class);
                if got > 0 && got < g.capacity / 4 && !moved_aside {
                    moved_aside = true;
                    if slab.next.load(Ordering::Relaxed) != 0 {
                        self.classes(q, || {
                            self.unlink(&q.head, slab_off);
                            self.link_back(q, slab_off);
                        });
                        continue;
                    }
                    break; // the only one: a new slab goes in front of it
                }
            }
            if self.peek(q, class).is_some() {
                return Ok(());
            }
            // Exhausted: from now on remote frees queue the slab on the delayed stack.
            // Those that came before the flag are collected now (see `remote.rs`).
            let state = &self.unit_remote(head - 1).state;
            remote::mark_full(state);
            if self.collect(slab_off, class) > 0 {
                remote::clear_full(state);
                continue;
            }
            self.classes(q, || self.unlink(&q.head, slab_off));
            self.link_full(q, slab_off);
        }
        let slab_off = match self.new_slab(d, class) {
            Ok(slab_off) => slab_off,
            // No room for a new slab: the blocks a slab moved aside got back serve.
            Err(e) => return if self.peek(q, class).is_some() { Ok(()) } else { Err(e) },
        };
        self.classes(q, || self.link_front(&q.head, slab_off));
        self.extend(slab_off, class);
        Ok(())
    }

    /// Puts a slab, flagged `FULL` and on no list, on its class's full list.
    fn link_full(&self, q: &ClassQueue, slab_off: u64) {
        self.link_front(&q.full, slab_off);
        let used = &self.slab(slab_off).used;
        used.store(used.load(Ordering::Relaxed) | USED_FULL, Ordering::Relaxed);
    }

    /// A full slab got a block back: back onto its class list, remote frees direct again.
    fn unfull(&self, d: u32, slab_off: u64, class: usize) {
        let q = self.queue(d, class);
        let slab = self.slab(slab_off);
        remote::clear_full(&self.unit_remote(self.unit_of(slab_off)).state);
        slab.used.store(slab.used.load(Ordering::Relaxed) & !USED_FULL, Ordering::Relaxed);
        self.unlink(&q.full, slab_off);
        self.classes(q, || self.link_back(q, slab_off));
    }

    /// Runs `change` on class queue `q`'s class list, then moves [`USED_CURRENT`] to the
    /// list's new head.
    fn classes(&self, q: &ClassQueue, change: impl FnOnce()) {
        let before = q.head.load(Ordering::Relaxed);
        change();
        let after = q.head.load(Ordering::Relaxed);
        if before != after {
            for (unit1, add) in [(before, false), (after, true)] {
                if unit1 != 0 {
                    let used = &self.slab(self.unit_off(unit1 - 1)).used;
                    let w = used.load(Ordering::Relaxed);
                    used.store(if add { w + USED_CURRENT } else { w - USED_CURRENT }, Ordering::Relaxed);
                }
            }
        }
    }

    /// A slab with no allocated block: give its units back, unless it is the class's
    /// current slab (a thread allocating and freeing one block must not churn slabs).
    #[cold]
    fn slab_emptied(&self, d: u32, slab_off: u64, class: usize) {
        let q = self.queue(d, class);
        let unit = self.unit_of(slab_off);
        // A queued slab stays until the owner takes it off its delayed stack (its unit's
        // link is in use); the owner meets it again there.
        let state = &self.unit_remote(unit).state;
        if q.head.load(Ordering::Relaxed) == unit + 1 || !remote::may_retire(state) {
            return;
        }
        self.classes(q, || self.unlink(&q.head, slab_off));
        tls::forget_slab(slab_off);
        self.give_back(unit);
    }

    /// Gives the slab headed by `unit`, empty, on no list and not queued, back to the
    /// pages: its unit state reset, its header unmade under the page lock.
    fn give_back(&self, unit: u32) {
        // Neither FULL (it is on no full list) nor QUEUED.
        self.unit_remote(unit).state.store(0, Ordering::Relaxed);
        let slab = self.slab(self.unit_off(unit));
        self.free_units(unit, || slab.class.store(0, Ordering::Relaxed));
    }

    /// Word `w` of a slab's allocated or remote bitmap, read (for the walk in `check`).
    pub(super) fn bitmap(&self, slab: u64, class: usize, remote: bool, w: u32) -> u64 {
        self.bits(slab, class, remote, w).load(Ordering::Relaxed)
    }

    /// The 4-byte link at `block`.
    pub(super) fn link32_at(&self, block: u64) -> u32 {
        self.link32(block).load(Ordering::Relaxed)
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
        // The header is made under the page lock (see `alloc_units`).
        let unit = self.alloc_units(g.units, slab_tag(class), |unit| {
            let slab_off = self.unit_off(unit);
            let slab = self.slab(slab_off);
            for f in [&slab.free, &slab.bump, &slab.used, &slab.next, &slab.prev] {
                f.store(0, Ordering::Relaxed);
            }
            slab.owner.store(d, Ordering::Relaxed);
            let ur = self.unit_remote(unit);
            ur.state.store(0, Ordering::Relaxed);
            ur.next.store(0, Ordering::Relaxed);
            for w in 0..g.words {
                self.bits(slab_off, class, false, w).store(0, Ordering::Relaxed);
                self.bits(slab_off, class, true, w).store(0, Ordering::Relaxed);
            }
            crate::crash::point("slab.new");
            slab.class.store(SLAB_MAGIC | class as u32, Ordering::Relaxed);
        })?;
        Ok(self.unit_off(unit))
    }
}
