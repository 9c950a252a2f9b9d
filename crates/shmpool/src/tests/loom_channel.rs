//! The channels' rings: the SPSC ends (`channel::spsc::Ends`, its waits included) and the
//! MPMC slot protocol (`channel::mpmc::Core`), with the functions the channels use and
//! the futex modelled (`pools::wait`).
//!
//! loom checks every interleaving for: values arriving once each and in order (SPSC),
//! or once each (MPMC), with the sender's writes seen by the receiver (loom's
//! `UnsafeCell` reports a slot touched by both ends at once); no lost wake-up for a
//! sender waiting for room or a receiver waiting for a value (a sleeper left asleep is
//! a deadlock, which loom reports); and a slot whose sender died after claiming it
//! freed by the waiting receiver, which then gets the next value.
#![allow(unsafe_code)]

use super::model;
use crate::channel::mpmc::{self, Busy, Core};
use crate::channel::spsc::{Ends, COUNT};
use crate::loom::{AtomicU32, AtomicU64, Ordering, UnsafeCell};
use crate::pools::wait;
use loom::sync::atomic::AtomicBool;
use loom::sync::Arc;
use loom::thread;

struct Spsc {
    tail: AtomicU32,
    head: AtomicU32,
    slots: [UnsafeCell<u64>; 2],
}

// SAFETY: a slot is touched by one end at a time (what the model checks).
unsafe impl Sync for Spsc {}
// SAFETY: as above.
unsafe impl Send for Spsc {}

impl Spsc {
    /// Under loom the asymmetric barrier is a SeqCst fence on both sides.
    fn ends(&self) -> Ends<'_> {
        Ends { tail: &self.tail, head: &self.head, cap: 2, asym: true }
    }

    /// `Sender::send_until`, without spins or deadline.
    fn send(&self, tail: &mut u32, head: &mut u32, v: u64) {
        let e = self.ends();
        while !e.has_room(*tail, head) {
            e.wait_for_room(*tail, None);
        }
        // SAFETY: the slot is free for the sender.
        self.slots[(*tail & 1) as usize].with_mut(|s| unsafe { *s = v });
        if e.published(*tail) {
            wait::wake_sleepers(e.tail);
        }
        *tail = tail.wrapping_add(1) & COUNT;
    }

    /// `Receiver::recv_until`, without spins or deadline.
    fn recv(&self, head: &mut u32, tail: &mut u32) -> u64 {
        let e = self.ends();
        while !e.has_item(*head, tail) {
            e.wait_for_item(*head, None);
        }
        // SAFETY: the slot was published for the receiver.
        let v = self.slots[(*head & 1) as usize].with(|s| unsafe { *s });
        if e.consumed(*head) {
            wait::wake_sleepers(e.head);
        }
        *head = head.wrapping_add(1) & COUNT;
        v
    }
}

/// Three values through a ring of two: the sender waits for room once, the receiver
/// for values; all arrive, in order.
#[test]
fn spsc_values_arrive_in_order_and_no_wake_up_is_lost() {
    model(|| {
        let ch = Arc::new(Spsc {
            tail: AtomicU32::new(0),
            head: AtomicU32::new(0),
            slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
        });
        let c = ch.clone();
        let sender = thread::spawn(move || {
            let (mut tail, mut head) = (0, 0);
            for v in 1..=3 {
                c.send(&mut tail, &mut head, v);
            }
        });
        let (mut head, mut tail) = (0, 0);
        let got: Vec<u64> = (0..3).map(|_| ch.recv(&mut head, &mut tail)).collect();
        sender.join().unwrap();
        assert_eq!(got, [1, 2, 3]);
    });
}

struct Mpmc {
    head: AtomicU64,
    tail: AtomicU64,
    words: [AtomicU64; 2],
    values: [UnsafeCell<u64>; 2],
    rx_wake: AtomicU32,
    tx_wake: AtomicU32,
    /// Tag 9 is a sender that "died" (its process exited) once this is set.
    dead: AtomicBool,
    /// Sleeps end at once (the real ones are bounded): for the model where a waiter's
    /// slot is held by a dead claimer, whom no one will wake it for.
    times_out: bool,
}

// SAFETY: a slot's value is touched only by the claimer its word names (what the model
// checks).
unsafe impl Sync for Mpmc {}
// SAFETY: as above.
unsafe impl Send for Mpmc {}

impl Mpmc {
    fn new() -> Self {
        Self {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            words: [
                AtomicU64::new(mpmc::word(0, mpmc::EMPTY, 0)),
                AtomicU64::new(mpmc::word(1, mpmc::EMPTY, 0)),
            ],
            values: [UnsafeCell::new(0), UnsafeCell::new(0)],
            rx_wake: AtomicU32::new(0),
            tx_wake: AtomicU32::new(0),
            dead: AtomicBool::new(false),
            times_out: false,
        }
    }

    fn core<'a>(&'a self) -> Core<'a, impl Fn(u64) -> &'a AtomicU64 + 'a> {
        Core { head: &self.head, tail: &self.tail, cap: 2, slot: move |i| &self.words[i as usize] }
    }

    fn wake_flagged(&self, flags: u64) {
        if flags & mpmc::RX != 0 {
            wait::wake(&self.rx_wake);
        }
        if flags & mpmc::TX != 0 {
            wait::wake(&self.tx_wake);
        }
    }

    /// `Mpmc::wait`, without a deadline.
    fn wait(&self, busy: Busy, flag: u64) {
        let core = self.core();
        if core.repair(busy, |t| t == 9 && self.dead.load(Ordering::Acquire)) {
            self.wake_flagged(mpmc::RX | mpmc::TX);
            return;
        }
        let word = if flag == mpmc::RX { &self.rx_wake } else { &self.tx_wake };
        let seen = wait::seq(word);
        if core.flag(busy, flag) {
            if self.times_out {
                thread::yield_now();
            } else {
                wait::sleep(word, seen, None);
            }
        }
    }

    fn send(&self, tag: u32, v: u64) {
        let core = self.core();
        loop {
            match core.claim_send(tag) {
                Ok(pos) => {
                    // SAFETY: claimed WRITING by this sender.
                    self.values[(pos % 2) as usize].with_mut(|s| unsafe { *s = v });
                    self.wake_flagged(core.published(pos));
                    return;
                }
                Err(busy) => self.wait(busy, mpmc::TX),
            }
        }
    }

    fn recv(&self, tag: u32) -> u64 {
        let core = self.core();
        loop {
            match core.claim_recv(tag) {
                Ok(pos) => {
                    // SAFETY: claimed READING by this receiver; published before.
                    let v = self.values[(pos % 2) as usize].with(|s| unsafe { *s });
                    self.wake_flagged(core.freed(pos));
                    return v;
                }
                Err(busy) => self.wait(busy, mpmc::RX),
            }
        }
    }
}

/// A sender and a receiver on a ring of two, three values: the sender waits for room,
/// the receiver for values; each value arrives once, in order.
#[test]
fn mpmc_values_arrive_once_and_no_wake_up_is_lost() {
    model(|| {
        let ch = Arc::new(Mpmc::new());
        let c = ch.clone();
        let sender = thread::spawn(move || (1..=3).for_each(|v| c.send(1, v)));
        let got: Vec<u64> = (0..3).map(|_| ch.recv(4)).collect();
        sender.join().unwrap();
        assert_eq!(got, [1, 2, 3]);
    });
}

/// Two senders race for the slots of a ring of two; the receiver gets both values once.
#[test]
fn mpmc_racing_senders_each_deliver_once() {
    model(|| {
        let ch = Arc::new(Mpmc::new());
        let c = ch.clone();
        let sender = thread::spawn(move || c.send(1, 10));
        ch.send(2, 20);
        let mut got = [ch.recv(4), ch.recv(4)];
        sender.join().unwrap();
        got.sort_unstable();
        assert_eq!(got, [10, 20]);
    });
}

/// A sender claims the first slot and dies; the receiver waiting on it (its sleeps
/// bounded) frees it and gets the value another sender sends next.
#[test]
fn mpmc_a_dead_senders_slot_is_freed_by_the_receiver() {
    model(|| {
        let ch = Arc::new(Mpmc { times_out: true, ..Mpmc::new() });
        assert_eq!(ch.core().claim_send(9).unwrap(), 0);
        let c = ch.clone();
        let sender = thread::spawn(move || {
            c.dead.store(true, Ordering::Release);
            c.send(1, 42);
        });
        assert_eq!(ch.recv(4), 42);
        sender.join().unwrap();
    });
}
