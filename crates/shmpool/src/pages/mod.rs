//! The page-run allocator: runs of 64 KiB *units* for slabs and large blocks.
//!
//! Layer: pages, above segment. A binary buddy system (Knowlton 1965; Knuth TAOCP 2.5)
//! over unit indices, extended to *runs*: a request for `n` units takes a block of
//! `2^ceil(log2 n)` units and gives its unused tail straight back as smaller aligned
//! blocks, so a run wastes nothing beyond unit rounding. Freeing a run splits it into its
//! maximal aligned power-of-two pieces and frees each with buddy merging.
//!
//! ```text
//!  unit table (one u64 per unit, the ground truth)      free lists (one per order)
//!  ┌──────────────┬─────────────┬────────────┬──────┐     order 0: u7 → u12
//!  │ FREE order 2 │ RUN head 4  │ TAIL of 4  │ ...  │     order 2: u0
//!  └──────────────┴─────────────┴────────────┴──────┘     links live in the free units
//! ```
//!
//! Invariants (checked by [`Buddy::check`]):
//! - every free block of order `k` starts at a multiple of `2^k`, is marked `FREE(k)` at its
//!   head, is on list `k` exactly once, and its buddy is not a free block of order `k`
//!   (it would have been merged);
//! - a run of `n` units at `h` is marked `RUN(n)` at `h` and `TAIL(h)` at `h+1..h+n`;
//! - free blocks and runs tile `0..len` without overlap.
//!
//! The run heads in the unit table are the ground truth; free-block markers and the free
//! lists are derived. [`Buddy::repair`] recomputes them after a crash in the middle of an
//! update (tested at every store of every kind of update).
//! Callers serialise mutations (the heap holds its page lock); lookups that validate a
//! block (`run_of`) need no lock.

mod store;

pub use store::{UnitStore, VecStore};

/// log2 of the unit size.
pub const UNIT_SHIFT: u32 = 16;
/// Bytes per unit.
pub const UNIT: u64 = 1 << UNIT_SHIFT;
/// Orders 0..MAX_ORDER: blocks of up to 2^(MAX_ORDER-1) units (2^31 units, 128 TiB).
pub const MAX_ORDER: usize = 32;
/// "No unit" in links and list heads.
pub const NIL: u32 = u32::MAX;

/// What the unit table says about one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitState {
    /// Not managed: beyond the grown arena, or inside a free block.
    Unknown,
    /// Head of a free block.
    Free {
        /// The block has `2^order` units.
        order: u32,
    },
    /// Head of an allocated run.
    Run {
        /// Units in the run.
        len: u32,
        /// What the run is used for, set by its user.
        tag: u8,
    },
    /// A unit of an allocated run other than its first.
    Tail {
        /// First unit of the run.
        head: u32,
    },
}

const K_FREE: u64 = 1;
const K_RUN: u64 = 2;
const K_TAIL: u64 = 3;

impl UnitState {
    /// Packs into a table word: kind in bits 0..8, tag in 8..16, value in 32..64.
    pub const fn encode(self) -> u64 {
        match self {
            Self::Unknown => 0,
            Self::Free { order } => K_FREE | (order as u64) << 32,
            Self::Run { len, tag } => K_RUN | (tag as u64) << 8 | (len as u64) << 32,
            Self::Tail { head } => K_TAIL | (head as u64) << 32,
        }
    }

    /// Unpacks a table word; anything unrecognised is `Unknown`.
    #[inline(always)]
    pub fn decode(w: u64) -> Self {
        let v = (w >> 32) as u32;
        match w & 0xff {
            K_FREE => Self::Free { order: v },
            K_RUN => Self::Run { len: v, tag: (w >> 8) as u8 },
            K_TAIL => Self::Tail { head: v },
            _ => Self::Unknown,
        }
    }
}

/// Why a run could not be allocated or freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PagesError {
    /// No free block is large enough; the arena must grow first.
    #[error("no free run of {units} units")]
    Exhausted {
        /// Units asked for.
        units: u32,
    },
    /// A run of zero units, or one larger than the allocator can ever hold.
    #[error("invalid run length {0}")]
    BadLength(u32),
    /// The unit is not the head of an allocated run.
    #[error("unit {0} is not the head of an allocated run")]
    NotARun(u32),
}

/// A broken invariant found by [`Buddy::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("page-run allocator: {0}")]
pub struct Broken(pub String);

/// Buddy allocator over a [`UnitStore`]: the table, the list heads and the links.
#[derive(Debug)]
pub struct Buddy<S> {
    store: S,
}

fn order_for(units: u32) -> usize {
    units.next_power_of_two().trailing_zeros() as usize
}

impl<S: UnitStore> Buddy<S> {
    /// An allocator over `store`, whose table and lists must already be consistent
    /// (all `Unknown` and empty for a new one).
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// The storage.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Units under management: `0..units()`.
    pub fn units(&self) -> u32 {
        self.store.managed()
    }

    /// The state of unit `u`.
    pub fn state(&self, u: u32) -> UnitState {
        UnitState::decode(self.store.entry(u))
    }

    /// The run containing unit `u`: `(head, len, tag)`, or `None` if `u` lies in no
    /// allocated run. Lock-free; exact for units of runs that stay allocated meanwhile.
    pub fn run_of(&self, u: u32) -> Option<(u32, u32, u8)> {
        if u >= self.units() {
            return None;
        }
        let head = match self.state(u) {
            UnitState::Run { .. } => u,
            UnitState::Tail { head } => head,
            _ => return None,
        };
        match self.state(head) {
            UnitState::Run { len, tag } if u - head < len => Some((head, len, tag)),
            _ => None,
        }
    }

    /// Adds units `units()..new_len` (already committed) as free memory.
    pub fn extend(&mut self, new_len: u32) {
        let old = self.units();
        assert!(new_len >= old, "the arena never shrinks");
        self.store.set_managed(new_len);
        self.free_range(old, new_len - old);
    }

    /// The first unit of the run that [`Buddy::alloc`] would take for `units` units now:
    /// a caller can record it before the allocation that a crash may cut short.
    pub fn next_run(&self, units: u32) -> Result<u32, PagesError> {
        self.next_block(units).map(|(block, _)| block)
    }

    /// The free block `alloc(units)` splits, and its order.
    fn next_block(&self, units: u32) -> Result<(u32, usize), PagesError> {
        if units == 0 || units > 1 << (MAX_ORDER - 1) {
            return Err(PagesError::BadLength(units));
        }
        let want = order_for(units);
        let have = (want..MAX_ORDER).find(|&k| self.store.head(k) != NIL);
        let Some(k) = have else { return Err(PagesError::Exhausted { units }) };
        Ok((self.store.head(k), k))
    }

    /// Allocates a run of `units` units tagged `tag`; returns its first unit (the one
    /// [`Buddy::next_run`] named).
    pub fn alloc(&mut self, units: u32, tag: u8) -> Result<u32, PagesError> {
        let (block, mut k) = self.next_block(units)?;
        let want = order_for(units);
        self.unlink(block, k);
        while k > want {
            k -= 1;
            self.push_free(block + (1 << k), k);
        }
        self.mark_run(block, units, tag);
        if units < 1 << want {
            self.free_range(block + units, (1 << want) - units);
        }
        Ok(block)
    }

    /// Frees the run headed at `head`; returns its length.
    pub fn free(&mut self, head: u32) -> Result<u32, PagesError> {
        let UnitState::Run { len, .. } = self.state(head) else { return Err(PagesError::NotARun(head)) };
        self.free_range(head, len);
        Ok(len)
    }

    /// Frees `head..head+len`, piece by maximal aligned piece, merging with buddies.
    fn free_range(&mut self, mut head: u32, mut len: u32) {
        while len > 0 {
            let align = if head == 0 { 31 } else { head.trailing_zeros() };
            let k = align.min(31 - len.leading_zeros()) as usize;
            self.free_block(head, k);
            head += 1 << k;
            len -= 1 << k;
        }
    }

    fn free_block(&mut self, mut block: u32, mut k: usize) {
        // The head may merge into a lower buddy: its old marker must not outlive it.
        self.store.set_entry(block, UnitState::Unknown.encode());
        crate::crash::point("pages.free.cleared");
        while k + 1 < MAX_ORDER {
            let buddy = block ^ (1 << k);
            let mergeable = buddy.checked_add(1 << k).is_some_and(|end| end <= self.units())
                && self.state(buddy) == (UnitState::Free { order: k as u32 });
            if !mergeable {
                break;
            }
            self.unlink(buddy, k);
            self.store.set_entry(buddy, UnitState::Unknown.encode());
            block = block.min(buddy);
            k += 1;
        }
        self.push_free(block, k);
    }

    fn mark_run(&mut self, head: u32, len: u32, tag: u8) {
        self.store.set_entry(head, UnitState::Run { len, tag }.encode());
        crate::crash::point("pages.run.head");
        for u in head + 1..head + len {
            self.store.set_entry(u, UnitState::Tail { head }.encode());
        }
    }

    fn push_free(&mut self, block: u32, k: usize) {
        let old = self.store.head(k);
        self.store.set_link(block, old, NIL);
        if old != NIL {
            let (next, _) = self.store.link(old);
            self.store.set_link(old, next, block);
        }
        self.store.set_head(k, block);
        self.store.set_entry(block, UnitState::Free { order: k as u32 }.encode());
    }

    fn unlink(&mut self, block: u32, k: usize) {
        let (next, prev) = self.store.link(block);
        if prev == NIL {
            self.store.set_head(k, next);
        } else {
            let (_, pp) = self.store.link(prev);
            self.store.set_link(prev, next, pp);
        }
        if next != NIL {
            let (nn, _) = self.store.link(next);
            self.store.set_link(next, nn, prev);
        }
    }

    /// Restores every invariant after an update that stopped part way (its process was
    /// killed holding the lock), keeping exactly the runs whose heads the table marks.
    ///
    /// A run's head word is written in one store, first when a run is made and first
    /// again (to `Unknown`) when one is freed, so the heads are the ground truth: a run
    /// being made whose head was written is kept (its tails are completed), one being
    /// freed whose head was cleared is freed. Everything else, free-block markers and
    /// lists included, is derived: the units outside the runs are freed again from
    /// scratch, into maximal buddy blocks. Returns the runs kept.
    pub fn repair(&mut self) -> u32 {
        let n = self.units();
        let mut runs = Vec::new();
        let mut u = 0;
        while u < n {
            match self.state(u) {
                UnitState::Run { len, tag } if len > 0 && len <= n - u => {
                    runs.push((u, len, tag));
                    u += len;
                }
                _ => u += 1,
            }
        }
        for k in 0..MAX_ORDER {
            self.store.set_head(k, NIL);
        }
        let mut free_from = 0;
        for &(head, len, tag) in runs.iter().chain([(n, 0, 0)].iter()) {
            for f in free_from..head {
                self.store.set_entry(f, UnitState::Unknown.encode());
            }
            self.free_range(free_from, head - free_from);
            if len > 0 {
                self.mark_run(head, len, tag);
            }
            free_from = head + len;
        }
        runs.len() as u32
    }

    /// Recomputes every free list from the unit table (after a crash mid-update).
    pub fn rebuild_lists(&mut self) {
        for k in 0..MAX_ORDER {
            self.store.set_head(k, NIL);
        }
        let mut u = 0;
        while u < self.units() {
            match self.state(u) {
                UnitState::Free { order } => {
                    self.push_free(u, order as usize);
                    u += 1 << order;
                }
                UnitState::Run { len, .. } => u += len.max(1),
                _ => u += 1,
            }
        }
    }

    /// Free units, counted from the lists.
    pub fn free_units(&self) -> u64 {
        (0..MAX_ORDER).map(|k| self.list(k).len() as u64 * (1 << k)).sum()
    }

    fn list(&self, k: usize) -> Vec<u32> {
        let mut v = Vec::new();
        let mut u = self.store.head(k);
        while u != NIL && v.len() <= self.units() as usize {
            v.push(u);
            u = self.store.link(u).0;
        }
        v
    }

    /// Walks every invariant of the module docs.
    pub fn check(&self) -> Result<(), Broken> {
        let broken = |s: String| Err(Broken(s));
        let mut on_list = std::collections::HashMap::new();
        for k in 0..MAX_ORDER {
            let list = self.list(k);
            if list.len() > self.units() as usize {
                return broken(format!("free list {k} has a cycle"));
            }
            let mut prev = NIL;
            for &u in &list {
                if self.store.link(u).1 != prev {
                    return broken(format!("unit {u} on list {k}: back link is wrong"));
                }
                if on_list.insert(u, k).is_some() {
                    return broken(format!("unit {u} is on a free list twice"));
                }
                prev = u;
            }
        }
        let mut u = 0;
        while u < self.units() {
            match self.state(u) {
                UnitState::Free { order } => {
                    let k = order as usize;
                    if on_list.remove(&u) != Some(k) {
                        return broken(format!("free block {u} of order {k} is not on list {k}"));
                    }
                    if u % (1 << k) != 0 || u + (1 << k) > self.units() {
                        return broken(format!("free block {u} of order {k} is misplaced"));
                    }
                    let buddy = u ^ (1 << k);
                    let in_arena = buddy.checked_add(1 << k).is_some_and(|end| end <= self.units());
                    if in_arena && self.state(buddy) == (UnitState::Free { order }) {
                        return broken(format!("free buddies {u} and {buddy} were not merged"));
                    }
                    u += 1 << k;
                }
                UnitState::Run { len, .. } => {
                    if len == 0 || u + len > self.units() {
                        return broken(format!("run {u} of {len} units is out of range"));
                    }
                    if let Some(t) = (u + 1..u + len).find(|&t| self.state(t) != UnitState::Tail { head: u })
                    {
                        return broken(format!("unit {t} of run {u} is not marked as its tail"));
                    }
                    u += len;
                }
                other => return broken(format!("unit {u} belongs to nothing ({other:?})")),
            }
        }
        match on_list.into_iter().next() {
            Some((u, k)) => broken(format!("unit {u} is on list {k} but not a free block head")),
            None => Ok(()),
        }
    }
}
