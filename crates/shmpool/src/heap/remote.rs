//! How frees by other threads and processes reach a slab's owner: through the slab's
//! *remote bitmap*, never through links in the blocks. Modelled in `tests/loom_remote.rs`.
//!
//! - A remote free sets the block's bit in the remote bitmap with one `fetch_or`; the
//!   owner collects a bitmap word at a time, so a burst of remote frees costs it one
//!   load and one `fetch_and` per 64 blocks.
//! - The owner collects the slab it allocates from when its free list runs dry. A slab it
//!   filled and put aside is flagged `FULL` in its *unit state*; a remote free that then
//!   finds `FULL` without `QUEUED` flags it `QUEUED` and pushes the slab (not the block)
//!   onto the owner's *delayed* stack. The owner pops it a slab at a time with a CAS; it
//!   is the only one that pops, so a slab can only be on top again by a new push after
//!   the owner's unqueue, and the CAS has no ABA.
//!
//! Deaths. The unit state names who is responsible for a `QUEUED` slab: the flag carries
//! the pusher's holder tag (its registration, `procs.rs`), and the owner replaces that tag
//! by [`POPPING`] before it pops the slab. A slab `QUEUED` but on no stack is then
//! accounted for: with a live pusher's tag, the push is on its way; with a dead pusher's
//! tag, it never came (once the pusher is known dead, a walk of the stack tells); marked
//! `POPPING`, the owner popped it and had not unqueued it. Recovery unqueues the last two
//! and leaves the first (`rebuild_thread_heap`).
//! - The unit state and the stack links are heap metadata, one [`UnitRemote`] per unit
//!   (never user memory): after its `fetch_or` a freer touches nothing but them, so a
//!   slab the owner empties and gives back at that moment is no hazard, and a free needs
//!   no pin. Reading the state of a unit given back and reused is harmless: its state is
//!   reset, and a new slab there that is `FULL` only gets queued once more than needed.
//!
//! No free into a full slab is missed. The freer's `fetch_or` and state load, and the
//! owner's two writes of the state that let freers queue the slab (`mark_full`, and
//! `unqueue` when it takes the slab off the stack) followed by its collecting loads, are
//! all SeqCst, so they come in one total order: if the freer's `fetch_or` comes before
//! the owner's write, the collection after that write sees the bit; if after, the
//! freer's load sees `FULL` without `QUEUED` and queues the slab. On x86 this costs
//! nothing over Release/Acquire (the read-modify-writes are locked either way). loom
//! models SeqCst accesses as AcqRel, so under loom SeqCst fences stand in (the same
//! store-buffering pattern, fence-ordered).
//!
//! Because no remote free writes into the block, a block is never on two lists at once,
//! whatever the interleaving. Frees of one block that are ordered (one happens before the
//! other, in any processes) always refuse the second as a double free. Two frees of one
//! block that *race* — a data race in the program — cannot corrupt the heap either: at
//! most one takes effect on this allocation of the block; an owner's free and a remote free
//! racing may both return `Ok`, and then the remote one frees the block's next
//! allocation, if the owner makes one before collecting, or nothing. (One case stays
//! open: a racing or stale free whose slab the owner empties and gives back between the
//! free's checks and its `fetch_or` sets a bit in the memory reused there.)

use crate::loom::{AtomicU32, AtomicU64, Ordering};

/// Under loom, the SeqCst fence that makes the store-buffering handshake hold (see the
/// module docs); a no-op otherwise, where the accesses themselves are SeqCst.
#[inline(always)]
fn handshake_fence() {
    #[cfg(loom)]
    crate::loom::fence(Ordering::SeqCst);
}

/// A unit's remote-free state, in the heap's metadata (see the module docs).
#[repr(C)]
pub(crate) struct UnitRemote {
    /// [`FULL`] and [`QUEUED`].
    pub state: AtomicU32,
    /// The next slab on its owner's delayed stack (unit + 1), while `QUEUED`.
    pub next: AtomicU32,
}

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
    // SYNC: SeqCst: its Release half pairs with the Acquire load in `collect` (the
    // freer's writes to the block happen before the owner reuses it); SeqCst for the
    // `FULL` handshake with `mark_full` (module docs).
    let claimed = remote.fetch_or(bit, Ordering::SeqCst) & bit == 0;
    handshake_fence();
    claimed
}

/// After a successful [`claim`]: if the slab is `FULL` and nobody queued it yet, flags it
/// `QUEUED` under the tag `pusher()` gives (the caller's holder tag, below 2^30) and
/// returns true: the caller then pushes it onto its owner's delayed stack (a `QUEUED`
/// slab stays until the owner takes it off the stack, so reading its owner and pushing it
/// is safe).
#[inline]
pub(crate) fn queue_if_full(state: &AtomicU32, pusher: impl FnOnce() -> u32) -> bool {
    // SYNC: SeqCst, the freer's half of the `FULL` handshake (module docs).
    let mut s = state.load(Ordering::SeqCst);
    if s & (FULL | QUEUED) != FULL {
        return false;
    }
    let tag = pusher();
    debug_assert!(tag != 0 && tag < 1 << (32 - TAG_SHIFT));
    while s & (FULL | QUEUED) == FULL {
        // SYNC: Acquire pairs with the owner's Release in `unqueue` and `mark_full`: the
        // slab queued here is the one the owner last put aside.
        let queued = (s & FULL) | QUEUED | tag << TAG_SHIFT;
        match state.compare_exchange_weak(s, queued, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => s = now,
        }
    }
    false
}

/// Who answers for a `QUEUED` slab, from its unit state (`None` if not queued).
#[inline]
pub(crate) fn queued_by(state: u32) -> Option<Pusher> {
    match (state & QUEUED != 0, state >> TAG_SHIFT) {
        (false, _) => None,
        (true, POPPING) => Some(Pusher::Owner),
        (true, tag) => Some(Pusher::Freer(tag)),
    }
}

/// Who answers for a `QUEUED` slab (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pusher {
    /// The owner is taking it off its stack ([`POPPING`]).
    Owner,
    /// The freer with this holder tag flagged it, and pushes it.
    Freer(u32),
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
    alloc.store(a ^ bit, Ordering::Relaxed);
    true
}

/// The owner collects one word of a slab's remote bitmap: returns the bits of the blocks
/// that go back on the free list, whose allocated bits it has cleared. A bit whose block
/// is not allocated (left by a racing double free) is dropped.
#[inline]
pub(crate) fn collect(alloc: &AtomicU64, remote: &AtomicU64) -> u64 {
    // SYNC: SeqCst: Acquire pairs with the Release half of `claim`'s `fetch_or`; SeqCst
    // for the owner's half of the `FULL` handshake (module docs).
    let pending = remote.load(Ordering::SeqCst);
    if pending == 0 {
        return 0;
    }
    let a = alloc.load(Ordering::Relaxed);
    alloc.store(a & !pending, Ordering::Relaxed);
    // SYNC: Release pairs with the Acquire load in `claim`: a later free that finds these
    // bits clear sees the allocated bits cleared above and refuses.
    remote.fetch_and(!pending, Ordering::Release);
    pending & a
}

/// In a unit's state: the owner put the slab aside as full; remote frees must tell it.
pub(crate) const FULL: u32 = 1;
/// In a unit's state: the slab is on its owner's delayed stack.
pub(crate) const QUEUED: u32 = 2;
/// In a unit's state, above the flags: the holder tag of the freer that queued the slab.
const TAG_SHIFT: u32 = 2;
/// The tag of a `QUEUED` slab that its owner is taking off its stack.
pub(crate) const POPPING: u32 = 0;

/// The owner flags a slab `FULL`. The caller then collects the whole remote bitmap, and
/// un-flags the slab if that gave it room.
#[inline]
pub(crate) fn mark_full(state: &AtomicU32) {
    // SYNC: SeqCst, the owner's half of the `FULL` handshake (module docs); its Release
    // half pairs with the Acquire CAS in `queue_if_full`.
    state.fetch_or(FULL, Ordering::SeqCst);
    handshake_fence();
}

/// The owner takes the slab back onto its class list.
#[inline]
pub(crate) fn clear_full(state: &AtomicU32) {
    state.fetch_and(!FULL, Ordering::Relaxed);
}

/// The owner is done taking a slab off its delayed stack: remote frees may queue it
/// again. The caller then collects its whole bitmap.
#[inline]
pub(crate) fn unqueue(state: &AtomicU32) {
    // SYNC: SeqCst, the owner's half of the handshake again (module docs): a freer whose
    // state load still saw `QUEUED`, and so did not queue, comes before this in the
    // total order, and the collection after it sees the freer's bit. Its Release half
    // pairs with the Acquire CAS in `queue_if_full`. Clears the pusher's tag too.
    state.fetch_and(FULL, Ordering::SeqCst);
    handshake_fence();
}

/// Whether the owner may give an empty slab back: it is not on a delayed stack.
#[inline]
pub(crate) fn may_retire(state: &AtomicU32) -> bool {
    // Relaxed: `QUEUED` is set only by a CAS that read `FULL`, and the owner that reads
    // it clear here is the only one that sets `FULL`.
    state.load(Ordering::Relaxed) & QUEUED == 0
}

/// Pushes a slab, named by `unit + 1` and whose stack link is `link`, onto an owner's
/// delayed stack `head`. Only the freer that [`queue_if_full`] told to does this.
#[inline]
pub(crate) fn push_slab(head: &AtomicU64, link: &AtomicU32, unit1: u32) {
    let mut cur = head.load(Ordering::Relaxed);
    loop {
        link.store(cur as u32, Ordering::Relaxed);
        // SYNC: Release pairs with the Acquire in `top` and `pop_slab`: the link written above,
        // and the claim before it, are visible to the owner that takes the stack.
        match head.compare_exchange_weak(cur, u64::from(unit1), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => cur = now,
        }
    }
}

/// The owner pops the top of its delayed stack `head`: the slab `unit + 1 == top`, which
/// it found on top, whose unit state is `state` and whose stack link is `link`. It marks
/// the slab [`POPPING`] first, so that if it dies before `unqueue`, recovery finds the
/// slab owned by no pusher. Returns false if a push came first (the caller looks again).
#[inline]
pub(crate) fn pop_slab(head: &AtomicU64, top: u32, state: &AtomicU32, link: &AtomicU32) -> bool {
    // Only the owner writes the state of a QUEUED slab (freers skip it).
    state.fetch_and(FULL | QUEUED, Ordering::Relaxed);
    let next = link.load(Ordering::Relaxed);
    // SYNC: Acquire pairs with the Release CAS in `push_slab`: the link read above was
    // written before the push that put `top` on top (it cannot change: a QUEUED slab is
    // not pushed again). Release orders the POPPING mark before the pop, for recovery.
    head.compare_exchange(u64::from(top), u64::from(next), Ordering::AcqRel, Ordering::Relaxed).is_ok()
}

/// The top of a delayed stack (unit + 1; 0: empty).
#[inline]
pub(crate) fn top(head: &AtomicU64) -> u32 {
    // SYNC: Acquire pairs with the Release CAS in `push_slab`: the top slab's link and
    // state are visible.
    head.load(Ordering::Acquire) as u32
}
