//! How frees by other threads and processes reach a slab's owner: through the slab's
//! *remote bitmap*, never through links in the blocks. Modelled in `tests/loom_remote.rs`.
//!
//! - A remote free sets the block's bit in the remote bitmap with one `fetch_or`; the
//!   owner collects a bitmap word at a time, so a burst of remote frees costs it one
//!   load and one `fetch_and` per 64 blocks.
//! - The owner collects the slab it allocates from when its free list runs dry. A slab it
//!   filled and put aside is flagged `FULL` in its `remote_state`; the first remote free
//!   into a `FULL` slab flags it `QUEUED` and pushes the slab (not the block) onto the
//!   owner's *delayed* stack, which the owner takes whole with one swap (no ABA).
//! - A remote free pins the slab (a count in `remote_state`) from before it sets the bit
//!   until it is done with the slab, so the owner never gives back a slab that a freer is
//!   still updating.
//!
//! Because no remote free writes into the block, a block is never on two lists at once,
//! whatever the interleaving. Frees of one block that are ordered (one happens before the
//! other, in any processes) always refuse the second as a double free. Two frees of one
//! block that *race* — a data race in the program — cannot corrupt the heap either: at
//! most one takes effect on this allocation of the block; an owner's free and a remote free
//! racing may both return `Ok`, and then the remote one frees the block's next
//! allocation, if the owner makes one before collecting, or nothing. (One case stays
//! open: such a racing free whose slab the owner empties and gives back in between may
//! set a bit in the memory reused there.)

use crate::loom::{AtomicU32, AtomicU64, Ordering};

/// A remote free's claim on a block: `alloc` and `remote` are the words of the slab's
/// allocated and remote bitmaps holding the block's `bit`. Returns false for a double
/// free (the block is not allocated, a free of it waits to be collected, or another free
/// claims it at the same time); the bitmaps are then as they were.
///
/// The checks come before the `fetch_or`: once the bit is set the owner may collect the
/// block at once, and its allocated bit then says nothing about this free.
#[inline]
pub(crate) fn claim(alloc: &AtomicU64, remote: &AtomicU64, bit: u64) -> bool {
    // SYNC: Acquire pairs with the Release `fetch_and` in `collect`: a free ordered after
    // an earlier free of this block finds its remote bit still set, or cleared by a collect
    // whose clearing of the allocated bit it then sees.
    if remote.load(Ordering::Acquire) & bit != 0 || alloc.load(Ordering::Relaxed) & bit == 0 {
        return false;
    }
    // SYNC: Release pairs with the Acquire load in `collect`: the freer's writes to the
    // block (and its `pin`) happen before the owner reuses it.
    remote.fetch_or(bit, Ordering::Release) & bit == 0
}

/// The owner's own free of a block: clears its allocated bit unless the block is free
/// already or a remote free of it waits to be collected; false is a double free and
/// leaves the bitmaps as they were. Plain loads and a store: only the owner writes
/// `alloc`.
#[inline(always)]
pub(crate) fn release_local(alloc: &AtomicU64, remote: &AtomicU64, bit: u64) -> bool {
    let a = alloc.load(Ordering::Relaxed);
    // A remote free that happened before this one left its bit set (only the owner clears
    // it, after clearing the allocated bit).
    if a & bit == 0 || remote.load(Ordering::Relaxed) & bit != 0 {
        return false;
    }
    alloc.store(a & !bit, Ordering::Relaxed);
    true
}

/// The owner collects one word of a slab's remote bitmap: returns the bits of the blocks
/// that go back on the free list, whose allocated bits it has cleared. A bit whose block
/// is not allocated (left by a racing double free) is dropped.
#[inline]
pub(crate) fn collect(alloc: &AtomicU64, remote: &AtomicU64) -> u64 {
    // SYNC: Acquire pairs with the Release `fetch_or` in `claim`.
    let pending = remote.load(Ordering::Acquire);
    if pending == 0 {
        return 0;
    }
    let a = alloc.load(Ordering::Relaxed);
    alloc.store(a & !pending, Ordering::Relaxed);
    // SYNC: Release pairs with the Acquire half of `claim`'s `fetch_or`: a later free that
    // finds these bits clear sees the allocated bits cleared above and refuses.
    remote.fetch_and(!pending, Ordering::Release);
    pending & a
}

/// In a slab's `remote_state`: the owner put the slab aside as full; remote frees must
/// tell it.
pub(crate) const FULL: u32 = 1;
/// In a slab's `remote_state`: the slab is on its owner's delayed stack.
pub(crate) const QUEUED: u32 = 2;
/// In a slab's `remote_state`, counted from bit 8: remote frees between [`pin`] and
/// [`unpin`]. The owner does not give a slab back while any is in flight.
pub(crate) const IN_FLIGHT: u32 = 1 << 8;

/// A remote free pins the slab before it claims the block: once the block's remote bit is
/// set, the owner may collect it and find the slab empty, and the freer still has the
/// slab's state to update.
#[inline]
pub(crate) fn pin(state: &AtomicU32) {
    // Relaxed: the `fetch_or` in `claim` (Release) is sequenced after this, so the owner's
    // Acquire load in `collect` that sees the block's bit also sees this count.
    state.fetch_add(IN_FLIGHT, Ordering::Relaxed);
}

/// Ends a remote free: unpins the slab and, if the free was accepted (`claimed`) into a
/// slab flagged `FULL` that nobody queued yet, flags it `QUEUED` in the same CAS. Returns
/// whether the caller must push the slab onto its owner's delayed stack (a `QUEUED` slab
/// stays until the owner takes it off the stack, so the push touches a live slab).
///
/// No free into a full slab is missed: this CAS and the owner's `mark_full`/`unqueue`
/// are read-modify-writes of one word, so one comes first. If the owner's does, this one
/// sees `FULL` (and queues the slab) or `QUEUED` (and the owner's later `unqueue` is what
/// collects). If this one does, the owner's RMW reads a value after this Release, so its
/// `collect` sees the block's bit.
#[inline]
pub(crate) fn unpin(state: &AtomicU32, claimed: bool) -> bool {
    let mut s = state.load(Ordering::Relaxed);
    loop {
        let queue = claimed && s & (FULL | QUEUED) == FULL;
        let new = s.wrapping_sub(IN_FLIGHT) | if queue { QUEUED } else { 0 };
        // SYNC: Release pairs with the Acquire RMWs in `mark_full`/`unqueue` and the
        // Acquire load in `may_retire`: the claim above happens before them.
        match state.compare_exchange_weak(s, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return queue,
            Err(now) => s = now,
        }
    }
}

/// The owner flags a slab `FULL`. The caller then collects the whole remote bitmap, and
/// un-flags the slab if that gave it room.
#[inline]
pub(crate) fn mark_full(state: &AtomicU32) {
    // SYNC: AcqRel; Acquire pairs with the Release CAS in `unpin` (see there).
    state.fetch_or(FULL, Ordering::AcqRel);
}

/// The owner takes the slab back onto its class list.
#[inline]
pub(crate) fn clear_full(state: &AtomicU32) {
    state.fetch_and(!FULL, Ordering::Relaxed);
}

/// The owner takes a slab off its delayed stack: remote frees may queue it again. The
/// caller then collects its whole bitmap.
#[inline]
pub(crate) fn unqueue(state: &AtomicU32) {
    // SYNC: AcqRel; Acquire pairs with the Release CAS in `unpin` (see there).
    state.fetch_and(!QUEUED, Ordering::AcqRel);
}

/// Whether the owner may give an empty slab back: no remote free in flight, not queued.
#[inline]
pub(crate) fn may_retire(state: &AtomicU32) -> bool {
    // SYNC: Acquire pairs with the Release CAS in `unpin`: a free that unpinned is done
    // with the slab.
    state.load(Ordering::Acquire) & !FULL == 0
}

/// Pushes a slab, named by `unit + 1` and whose stack link is `link`, onto an owner's
/// delayed stack `head`. Only the freer that [`unpin`] told to does this.
#[inline]
pub(crate) fn push_slab(head: &AtomicU64, link: &AtomicU32, unit1: u32) {
    let mut cur = head.load(Ordering::Relaxed);
    loop {
        link.store(cur as u32, Ordering::Relaxed);
        // SYNC: Release pairs with the Acquire in `take_slabs`: the link written above is
        // visible to the owner that takes the stack.
        match head.compare_exchange_weak(cur, u64::from(unit1), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => cur = now,
        }
    }
}

/// Takes a whole delayed stack; returns the first slab's unit + 1 (0: empty).
#[inline]
pub(crate) fn take_slabs(head: &AtomicU64) -> u32 {
    // SYNC: Acquire pairs with the Release CAS in `push_slab`.
    head.swap(0, Ordering::Acquire) as u32
}
