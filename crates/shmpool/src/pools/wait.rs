//! Sleeping until a pool has room: an eventcount on one shared `u32`, waited on with a
//! futex (futex(2), not `FUTEX_PRIVATE`: sleepers and wakers are in any process).
//!
//! Layer: pools. The word is `seq << 1 | WAITING`:
//!
//! | bit 0 (`WAITING`) | bits 1..                                   |
//! |-------------------|--------------------------------------------|
//! | a sleeper may be  | bumped by every wake, so a sleeper whose   |
//! | asleep            | expected word changed does not go to sleep |
//!
//! A waiter announces itself (`prepare`, SeqCst RMW), looks for room again, and sleeps
//! only while the word is unchanged. A freer makes room first and then looks at the word
//! (`notify`, SeqCst load): if no waiter was announced, the SeqCst total order puts the
//! room made before the announcement, so the waiter's second look finds it; if one was,
//! the freer bumps the word and wakes every sleeper. Waking all is what keeps a wake from
//! being lost to a sleeper that took no room (two frees, two sleepers, one wake each
//! would otherwise leave one asleep); waits are the rare path.
//!
//! A process killed while waiting leaves `WAITING` set: the next free wakes no one, and
//! clears it. Nothing is held, so nothing wedges.

use crate::loom::{AtomicU32, Ordering};
use std::time::Instant;

const WAITING: u32 = 1;

/// Announces a waiter; returns the word to sleep on.
pub(crate) fn prepare(word: &AtomicU32) -> u32 {
    // SYNC: SeqCst pairs with the SeqCst load in `notify` (module docs).
    word.fetch_or(WAITING, Ordering::SeqCst) | WAITING
}

/// Sleeps while the word is `seen`, until woken or `deadline`. Spurious returns happen;
/// the caller looks for room again either way.
pub(crate) fn sleep(word: &AtomicU32, seen: u32, deadline: Option<Instant>) {
    let timeout = match deadline {
        None => None,
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(left),
            _ => return,
        },
    };
    futex_wait(word, seen, timeout);
}

/// Tells waiters that room was made (call after making it).
#[inline]
pub(crate) fn notify(word: &AtomicU32) {
    // SYNC: SeqCst pairs with the SeqCst RMW in `prepare` (module docs).
    let w = word.load(Ordering::SeqCst);
    if w & WAITING != 0 {
        wake_all(word, w);
    }
}

#[cold]
fn wake_all(word: &AtomicU32, w: u32) {
    // `w + 1` clears WAITING and carries into the sequence. A failed CAS means another
    // freer bumped it (and wakes) or a waiter re-announced; waking anyway is harmless.
    let _ = word.compare_exchange(w, w.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed);
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

#[cfg(loom)]
fn futex_wait(_: &AtomicU32, _: u32, _: Option<std::time::Duration>) {
    loom::thread::yield_now();
}

#[cfg(loom)]
fn futex_wake(_: &AtomicU32) {}
