//! The free list's stack of free slot indices: a Treiber stack whose head carries a tag
//! against ABA (after Treiber, "Systems Programming: Coping with Parallelism", IBM 1986;
//! the tag as in IBM System/370's compare-double-and-swap use).
//!
//! Layer: pools. Shared words:
//! - `head = tag << 32 | top`: `top` is the index of the first free slot, or [`NIL`];
//!   `tag` grows with every change of the head, so a pop that read a head which then
//!   changed and changed back (ABA) fails its CAS. (It wraps after 2^32 changes, which
//!   would all have to fit between one pop's load and its CAS.)
//! - `links[i]`: for a free slot, the index below it (or `NIL`); for a slot handed out,
//!   [`TAKEN`]. A free claims `TAKEN` with a CAS first, so freeing a slot that is not
//!   allocated (a double free) is refused and changes nothing.
//! - `free`: free slots, kept beside the stack: a push adds one before its slot is on
//!   the stack, a pop takes one away after its slot is off, so the count is never below
//!   the slots on the stack (it is above while a push or pop is midway, and stays above
//!   by one for each process killed midway).
//!
//! Every change of the stack is one CAS of the head, so a process killed at any instant
//! leaves the stack whole; it loses at most the slot it was popping or pushing. A head
//! naming no slot (a corrupted segment) reads as an empty stack.
//!
//! Modelled in `tests/loom_stack.rs`.

use crate::loom::{AtomicU32, AtomicU64, Ordering};

/// The end of the stack.
pub(crate) const NIL: u32 = u32::MAX;
/// The link of a slot that is handed out.
pub(crate) const TAKEN: u32 = u32::MAX - 1;
/// The most slots a stack indexes.
pub(crate) const MAX: u64 = TAKEN as u64;

/// A stack over its words in shared memory (or, for the model, in ordinary memory).
pub(crate) struct Stack<'a> {
    pub(crate) head: &'a AtomicU64,
    pub(crate) links: &'a [AtomicU32],
    pub(crate) free: &'a AtomicU64,
}

fn top(head: u64) -> u32 {
    head as u32
}

fn next_head(head: u64, top: u32) -> u64 {
    ((head >> 32).wrapping_add(1) << 32) | u64::from(top)
}

impl Stack<'_> {
    /// Puts every slot on the stack, 0 on top (formatting or reset: no one else uses it).
    pub(crate) fn fill(&self) {
        let n = self.links.len() as u32;
        for (i, l) in self.links.iter().enumerate() {
            let below = i as u32 + 1;
            l.store(if below == n { NIL } else { below }, Ordering::Relaxed);
        }
        self.free.store(u64::from(n), Ordering::Relaxed);
        let h = self.head.load(Ordering::Relaxed);
        // SYNC: Release pairs with the Acquire in `pop`: the links are seen with the head.
        self.head.store(next_head(h, if n == 0 { NIL } else { 0 }), Ordering::Release);
    }

    /// Takes the top free slot, or `None` if the stack is empty.
    #[inline]
    pub(crate) fn pop(&self) -> Option<u32> {
        // SYNC: Acquire pairs with the Release CAS of `push` (and `fill`): the pushed
        // slot's link, and the bytes its last holder wrote, are seen.
        let mut h = self.head.load(Ordering::Acquire);
        loop {
            let t = top(h);
            // NIL, or (in a corrupted segment) no slot at all.
            let link = self.links.get(t as usize)?;
            // A stale read if `t` was popped meanwhile; the head's tag changed, so the
            // CAS below fails and the value is dropped.
            let below = link.load(Ordering::Relaxed);
            // SYNC: Acquire (success and failure), as the load above.
            match self.head.compare_exchange_weak(
                h,
                next_head(h, below),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    crate::crash::point("freelist.popped");
                    link.store(TAKEN, Ordering::Relaxed);
                    self.free.fetch_sub(1, Ordering::Relaxed);
                    return Some(t);
                }
                Err(now) => h = now,
            }
        }
    }

    /// Puts slot `i` back; `false` (and nothing changed) if it is not handed out.
    #[inline]
    pub(crate) fn push(&self, i: u32) -> bool {
        let mut h = self.head.load(Ordering::Relaxed);
        // The claim: only one free of a handed-out slot gets past it.
        if self.links[i as usize]
            .compare_exchange(TAKEN, top(h), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // Before the slot is on the stack, so no pop of it takes one away first: this
        // add happens before that pop (the head's Release/Acquire).
        self.free.fetch_add(1, Ordering::Relaxed);
        crate::crash::point("freelist.claimed");
        loop {
            // SYNC: Release pairs with the Acquire in `pop`: the link stored before it,
            // and the holder's writes to the slot, are seen by the next popper.
            match self.head.compare_exchange_weak(h, next_head(h, i), Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => {
                    h = now;
                    self.links[i as usize].store(top(h), Ordering::Relaxed);
                }
            }
        }
    }

    /// Whether slot `i` is handed out (a snapshot).
    pub(crate) fn is_taken(&self, i: u32) -> bool {
        self.links[i as usize].load(Ordering::Relaxed) == TAKEN
    }

    /// Free slots (a snapshot; see the module docs for when it runs above).
    pub(crate) fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed).min(self.links.len() as u64)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pops_every_slot_once_and_refuses_double_pushes() {
        let head = AtomicU64::new(0);
        let free = AtomicU64::new(0);
        let links: Vec<AtomicU32> = (0..5).map(|_| AtomicU32::new(0)).collect();
        let s = Stack { head: &head, links: &links, free: &free };
        s.fill();
        let got: Vec<u32> = core::iter::from_fn(|| s.pop()).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert_eq!(s.free(), 0);
        assert!(s.push(3));
        assert!(!s.push(3), "a double free is refused");
        assert!(s.push(1));
        assert_eq!(s.free(), 2);
        assert_eq!((s.pop(), s.pop(), s.pop()), (Some(1), Some(3), None));
    }
}
