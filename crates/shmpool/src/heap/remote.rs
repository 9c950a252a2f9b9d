//! The lock-free lists remote frees travel on. Both are MPSC stacks: any thread pushes
//! with a CAS; the owner takes the whole list with one atomic swap, so no pop can meet
//! an ABA (Treiber 1986; mimalloc's `thread_free`). Modelled in `tests/loom_remote.rs`.
//!
//! - A slab's remote list: a word holding the first block's index + 1 in its low 32 bits
//!   and the `FULL` flag at bit 32; links are block indices + 1 in the blocks' first
//!   4 bytes.
//! - A thread heap's delayed list: a word holding the first block's offset; links are
//!   offsets in the blocks' first 8 bytes. Pushers use it while the slab is `FULL`: the
//!   owner put the slab aside and looks at this one list instead of every full slab.

use crate::loom::{AtomicU32, AtomicU64, Ordering};

/// A remote free's claim on a block: `alloc` and `remote` are the words of the slab's
/// allocated and remote bitmaps holding the block's `bit`. Returns false for a double
/// free (the block is not allocated, or another free claimed it first); the heap is then
/// unchanged.
///
/// Two racing remote frees of one block: the second either sees the first's remote bit,
/// or — if the owner reclaimed the first in between — sees the allocated bit cleared once
/// its `fetch_or` synchronises with the owner's release in [`reclaim`]. A remote free
/// racing the owner's own free of the block ([`release_local`]): each side writes its
/// bit, then reads the other's, all SeqCst (Dekker), so at least one sees the other
/// and refuses. At most one free of a block wins.
#[inline]
pub(crate) fn claim(alloc: &AtomicU64, remote: &AtomicU64, bit: u64) -> bool {
    if alloc.load(Ordering::Relaxed) & bit == 0 {
        return false;
    }
    // SYNC: SeqCst (so also AcqRel: Acquire pairs with the Release `fetch_and` in
    // `reclaim`). With the SeqCst load below and the SeqCst pair in `release_local` this
    // is Dekker's handshake: of the two, at least one side sees the other's write.
    if remote.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
        return false;
    }
    loom_sc_order();
    if alloc.load(Ordering::SeqCst) & bit == 0 {
        // The owner reclaimed a racing free of this block meanwhile: we are the second.
        remote.fetch_and(!bit, Ordering::Relaxed);
        return false;
    }
    true
}

/// loom models SeqCst loads and read-modify-writes as AcqRel (its README: "false alarms"),
/// so in a model a SeqCst fence stands in for the single total order the SeqCst operations
/// of `claim` and `release_local` get on real hardware; elsewhere it compiles to nothing.
#[inline(always)]
fn loom_sc_order() {
    #[cfg(loom)]
    crate::loom::fence(Ordering::SeqCst);
}

/// The owner's own free of a block: clears its allocated bit unless the block is free
/// already or a remote free claims it at the same time (see [`claim`]); false is a double
/// free and leaves the bitmaps as they were.
#[inline]
pub(crate) fn release_local(alloc: &AtomicU64, remote: &AtomicU64, bit: u64) -> bool {
    // SYNC: SeqCst RMW then SeqCst load, paired with `claim`'s (Dekker). Only the owner
    // writes `alloc`; the RMW is what puts the write in the SeqCst order (a locked
    // instruction on x86, no fence).
    if alloc.fetch_and(!bit, Ordering::SeqCst) & bit == 0 {
        return false;
    }
    loom_sc_order();
    if remote.load(Ordering::SeqCst) & bit != 0 {
        alloc.fetch_or(bit, Ordering::Relaxed); // a remote free has (or is taking) it
        return false;
    }
    true
}

/// The owner's reclaim of a block taken from a remote or delayed list. Returns whether
/// the block goes back on the free list: a stale or duplicate entry (remote bit clear, or
/// block already free) is dropped, so no block can be freed twice.
#[inline]
pub(crate) fn reclaim(alloc: &AtomicU64, remote: &AtomicU64, bit: u64) -> bool {
    // Only the owner clears remote bits, so a bit seen set stays set until we clear it.
    if remote.load(Ordering::Relaxed) & bit == 0 {
        return false;
    }
    let a = alloc.load(Ordering::Relaxed);
    let live = a & bit != 0;
    if live {
        alloc.store(a & !bit, Ordering::Relaxed);
    }
    // SYNC: Release pairs with the Acquire `fetch_or` in `claim`: a later claim of the
    // block sees the allocated bit cleared above.
    remote.fetch_and(!bit, Ordering::Release);
    live
}

/// The slab is on its owner's full list: remote frees go to the owner's delayed list.
pub(crate) const FULL: u64 = 1 << 32;
const INDEX: u64 = 0xffff_ffff;

/// Where a remote free went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Onto the slab's remote list.
    Slab,
    /// Nowhere yet: the slab is `FULL`; push onto the owner's delayed list instead.
    SlabIsFull,
}

/// Pushes block `idx`, whose link word is `link`, onto the slab list `head`.
#[inline]
pub(crate) fn push_block(head: &AtomicU64, link: &AtomicU32, idx: u32) -> Pushed {
    let mut cur = head.load(Ordering::Relaxed);
    loop {
        if cur & FULL != 0 {
            return Pushed::SlabIsFull;
        }
        link.store(cur as u32, Ordering::Relaxed);
        let new = (cur & !INDEX) | u64::from(idx + 1);
        // SYNC: Release pairs with the Acquire in `take_blocks`: the link written above
        // (and the freer's bitmap update) are visible to the owner that takes the list.
        match head.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Pushed::Slab,
            Err(now) => cur = now,
        }
    }
}

/// Takes the whole slab list, keeping the `FULL` flag; returns the first index + 1.
#[inline]
pub(crate) fn take_blocks(head: &AtomicU64) -> u32 {
    // SYNC: Acquire pairs with the Release CAS in `push_block`.
    (head.fetch_and(FULL, Ordering::Acquire) & INDEX) as u32
}

/// Marks an empty slab list `FULL`; fails if a remote free slipped in.
#[inline]
pub(crate) fn mark_full(head: &AtomicU64) -> bool {
    // Relaxed: a failure only sends the owner round to take the list, whose Acquire
    // pairs with the pushers' Release.
    head.compare_exchange(0, FULL, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

/// Lets remote frees onto the slab list again.
#[inline]
pub(crate) fn clear_full(head: &AtomicU64) {
    head.fetch_and(!FULL, Ordering::Relaxed);
}

/// Pushes the block at `off`, whose 8-byte link word is `link`, onto a delayed list.
#[inline]
pub(crate) fn push_offset(head: &AtomicU64, link: &AtomicU64, off: u64) {
    let mut cur = head.load(Ordering::Relaxed);
    loop {
        link.store(cur, Ordering::Relaxed);
        // SYNC: Release pairs with the Acquire in `take_offsets`.
        match head.compare_exchange_weak(cur, off, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => cur = now,
        }
    }
}

/// Takes a whole delayed list; returns the first offset (0: empty).
#[inline]
pub(crate) fn take_offsets(head: &AtomicU64) -> u64 {
    // SYNC: Acquire pairs with the Release CAS in `push_offset`.
    head.swap(0, Ordering::Acquire)
}
