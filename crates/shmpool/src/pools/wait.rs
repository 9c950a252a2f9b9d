//! Sleeping until a pool has room: a wake sequence on one shared `u32`, waited on with a
//! futex (futex(2), not `FUTEX_PRIVATE`: sleepers and wakers are in any process).
//!
//! Layer: pools. The protocol (the pool's own words carry the waiters' announcement;
//! for the slot pool, `bitmap::WAITING`):
//! 1. the waiter reads the sequence ([`seq`]);
//! 2. it looks for room, announcing itself (with Release) where there is none;
//! 3. it sleeps while the sequence is unchanged ([`sleep`]).
//!
//! A freer that finds the announcement (with Acquire, in the same RMW that makes room)
//! bumps the sequence and wakes every sleeper ([`wake`]). The waiter's read (1) happens
//! before the bump, so either its futex wait sees the bumped word and returns at once, or
//! it is asleep and woken. Waking all keeps a wake from being lost to a sleeper that took
//! no room (two frees and two sleepers would otherwise leave one asleep); waits are the
//! rare path. A waiter killed at any step holds nothing: its announcement costs the next
//! freer one wake. A freer killed after making room but before waking leaves the
//! sleepers unwoken; each sleep lasts at most [`POLL`], so they find the room then.

use crate::loom::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The longest one sleep lasts before the waiter looks again: a freer killed between
/// making room (which clears the announcement) and waking leaves its sleepers to find
/// the room by themselves, this much later at most.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// The sequence to sleep on, read before looking for room.
pub(crate) fn seq(word: &AtomicU32) -> u32 {
    word.load(Ordering::Relaxed)
}

/// Sleeps while the word is `seen`, until woken, [`POLL`] has passed, or `deadline`.
/// Spurious returns happen; the caller looks for room again either way.
pub(crate) fn sleep(word: &AtomicU32, seen: u32, deadline: Option<Instant>) {
    let timeout = match deadline {
        None => POLL,
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => left.min(POLL),
            _ => return,
        },
    };
    futex_wait(word, seen, Some(timeout));
}

/// Bumps the sequence and wakes every sleeper (after room was made where a waiter had
/// announced itself).
#[cold]
pub(crate) fn wake(word: &AtomicU32) {
    // Relaxed: ordered after the waiter's read of the sequence by the Release/Acquire
    // pair on the announcement (module docs).
    word.fetch_add(1, Ordering::Relaxed);
    futex_wake(word);
}

/// Wakes every sleeper on `word` (whose own change the caller has made).
#[cold]
pub(crate) fn wake_sleepers(word: &AtomicU32) {
    futex_wake(word);
}

#[cfg(not(loom))]
fn futex_wait(word: &AtomicU32, seen: u32, timeout: Option<std::time::Duration>) {
    use rustix::thread::futex;
    let ts = timeout.map(|t| rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    // EAGAIN (the word changed), EINTR and ETIMEDOUT all send the caller to look again.
    let _ = futex::wait(word, futex::Flags::empty(), seen, ts.as_ref());
}

#[cfg(not(loom))]
fn futex_wake(word: &AtomicU32) {
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), i32::MAX as u32);
}

/// The futex for loom: the kernel checks the word and queues the sleeper atomically
/// with respect to wakes, which a mutex around the check and a condition variable
/// reproduce (one word a model: the model's pool). A lost wake-up is then a deadlock
/// that loom reports. Deadlines are not modelled.
#[cfg(loom)]
mod futex_model {
    use loom::sync::{Condvar, Mutex};
    loom::lazy_static! {
        pub(super) static ref QUEUE: Mutex<()> = Mutex::new(());
        pub(super) static ref SLEEPERS: Condvar = Condvar::new();
    }
}

#[cfg(loom)]
fn futex_wait(word: &AtomicU32, seen: u32, _: Option<std::time::Duration>) {
    let queued = futex_model::QUEUE.lock().unwrap();
    if word.load(Ordering::Relaxed) == seen {
        drop(futex_model::SLEEPERS.wait(queued).unwrap());
    }
}

#[cfg(loom)]
fn futex_wake(_: &AtomicU32) {
    let _queued = futex_model::QUEUE.lock().unwrap();
    futex_model::SLEEPERS.notify_all();
}
