//! The free list's tagged index stack (`pools::stack`), with the functions the free list
//! uses.
//!
//! loom checks every interleaving for: a slot never handed to two threads at once
//! (loom's `UnsafeCell` reports it), the last holder's writes seen by the next, no slot
//! lost or duplicated on the stack — including the ABA case, where a popper's top is
//! popped, its successor taken and the top pushed back before the popper's CAS — and a
//! double free of one slot by two threads accepted once.
#![allow(unsafe_code)]

use super::model;
use crate::loom::{AtomicU32, AtomicU64, UnsafeCell};
use crate::pools::stack::Stack;
use loom::sync::Arc;
use loom::thread;

const SLOTS: usize = 3;

struct List {
    head: AtomicU64,
    free: AtomicU64,
    links: [AtomicU32; SLOTS],
    slots: [UnsafeCell<u32>; SLOTS],
}

// SAFETY: a slot's cell is touched only by the thread that popped it (what the model
// checks).
unsafe impl Sync for List {}
// SAFETY: as above.
unsafe impl Send for List {}

impl List {
    fn new() -> Self {
        let l = Self {
            head: AtomicU64::new(0),
            free: AtomicU64::new(0),
            links: [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)],
            slots: [UnsafeCell::new(0), UnsafeCell::new(0), UnsafeCell::new(0)],
        };
        l.stack().fill();
        l
    }

    fn stack(&self) -> Stack<'_> {
        Stack { head: &self.head, links: &self.links, free: &self.free }
    }

    fn touch(&self, i: u32) {
        // SAFETY: the caller popped slot `i` and has not pushed it back.
        self.slots[i as usize].with_mut(|v| unsafe { *v += 1 });
    }

    /// Pops everything left; each slot must come exactly once.
    fn drain(&self) -> Vec<u32> {
        let mut all: Vec<u32> = core::iter::from_fn(|| self.stack().pop()).collect();
        all.sort_unstable();
        all
    }
}

/// One thread pops and pushes back one slot. Another pops two and pushes the first back
/// while it still holds the second: the first thread's pop may have read the first slot
/// on top with the second below it, and without the head's tag its CAS would then put
/// the held second slot on top (ABA).
#[test]
fn pops_and_pushes_never_share_or_lose_a_slot() {
    model(|| {
        let list = Arc::new(List::new());
        let l = list.clone();
        let other = thread::spawn(move || {
            let a = l.stack().pop().expect("three slots");
            l.touch(a);
            let b = l.stack().pop();
            assert!(l.stack().push(a));
            if let Some(b) = b {
                l.touch(b);
                assert!(l.stack().push(b));
            }
        });
        if let Some(i) = list.stack().pop() {
            list.touch(i);
            assert!(list.stack().push(i));
        }
        other.join().unwrap();
        assert_eq!(list.stack().free(), SLOTS as u64);
        assert_eq!(list.drain(), [0, 1, 2], "every slot on the stack once");
    });
}

/// Two threads free the same allocated slot: one free is accepted, the other refused,
/// and the slot is on the stack once.
#[test]
fn a_racing_double_free_is_accepted_once() {
    model(|| {
        let list = Arc::new(List::new());
        let i = list.stack().pop().unwrap();
        let l = list.clone();
        let other = thread::spawn(move || l.stack().push(i));
        let mine = list.stack().push(i);
        let theirs = other.join().unwrap();
        assert!(mine ^ theirs, "exactly one of two frees of one slot is accepted");
        assert_eq!(list.drain(), [0, 1, 2]);
    });
}
