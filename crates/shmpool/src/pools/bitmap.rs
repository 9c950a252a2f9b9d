//! The slot pool's occupancy bitmap: one bit a slot, set while the slot is loaned, and
//! in each word a flag for the loaners waiting on it.
//!
//! Layer: pools. A word holds 63 slots (bits 0..63) and [`WAITING`] (bit 63). Lock-free:
//! a loan is one CAS that sets the lowest clear slot bit of a word, a return one RMW
//! that clears its bit, so a process killed at any instant leaves every word whole (it
//! loses only the slots it held). Slot bits past the last slot are set at format time
//! and never cleared, so no search needs the slot count.
//!
//! `WAITING` keeps waiters and returners on the same word, where every RMW is ordered
//! (its modification order) without any SeqCst: a waiter that finds a word full sets its
//! flag with a CAS, and a return clears its bit and the flag in one RMW. Either the
//! return comes first in the word's order, and the waiter's CAS sees the free bit (and
//! claims it instead), or the flag comes first, and the return sees it and wakes the
//! waiters (`wait.rs`). The flag is cleared only by a return that then wakes everyone.
//!
//! Modelled in `tests/loom_bitmap.rs`.

use crate::loom::{AtomicU64, Ordering};

/// Slots a word.
pub(crate) const PER_WORD: u64 = 63;
/// A loaner sleeps until a slot of this word is returned.
pub(crate) const WAITING: u64 = 1 << 63;
/// The slot bits of a word.
const SLOTS: u64 = !WAITING;

/// Words for `slots` slots.
pub(crate) fn words(slots: u64) -> u64 {
    slots.div_ceil(PER_WORD)
}

/// A word's padding: the slot bits past `slots` (set for good).
fn padding(words: usize, word: usize, slots: u64) -> u64 {
    let tail = slots % PER_WORD;
    if word + 1 == words && tail != 0 {
        SLOTS & !((1 << tail) - 1)
    } else {
        0
    }
}

/// Whether the padding bits are set (a bitmap read from a segment that may be corrupted:
/// clear ones would hand out slots past the last).
pub(crate) fn padding_intact(words: &[AtomicU64], slots: u64) -> bool {
    let last = words.len() - 1;
    let pad = padding(words.len(), last, slots);
    words[last].load(Ordering::Relaxed) & pad == pad
}

/// Clears every slot, sets the padding (formatting; no one else sees the words).
pub(crate) fn init(words: &[AtomicU64], slots: u64) {
    for (i, w) in words.iter().enumerate() {
        w.store(padding(words.len(), i, slots), Ordering::Relaxed);
    }
}

/// A slot's place: its word and bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) word: u32,
    pub(crate) bit: u32,
}

impl Place {
    pub(crate) fn of(i: u64) -> Place {
        Place { word: (i / PER_WORD) as u32, bit: (i % PER_WORD) as u32 }
    }

    pub(crate) fn index(self) -> u64 {
        u64::from(self.word) * PER_WORD + u64::from(self.bit)
    }
}

/// Claims a clear slot bit, looking at every word once from `start`; its place, or
/// `None` if each word was full when it was looked at.
#[inline]
pub(crate) fn claim(words: &[AtomicU64], start: usize) -> Option<Place> {
    let n = words.len();
    for k in 0..n {
        let i = if start + k >= n { start + k - n } else { start + k };
        if let Some(bit) = claim_in(&words[i], false) {
            return Some(Place { word: i as u32, bit: bit as u32 });
        }
    }
    None
}

/// Claims a clear slot bit of `word`; if there is none and `flag`, sets `WAITING`.
#[inline(always)]
fn claim_in(word: &AtomicU64, flag: bool) -> Option<u64> {
    let mut cur = word.load(Ordering::Relaxed);
    loop {
        let bit = (!cur & SLOTS).trailing_zeros();
        if bit == 64 {
            if !flag {
                return None;
            }
            // An RMW even if the flag looks set: it reads the word's latest value, where a
            // plain load could return a full word a return has already cleared.
            // SYNC: Release pairs with the Acquire part of the `clear` that reads the
            // flag: what the waiter did before (reading the wake sequence) happens
            // before the waker bumps it. Acquire, for a slot found free (as below).
            cur = word.fetch_or(WAITING, Ordering::AcqRel);
            if (!cur & SLOTS).trailing_zeros() == 64 {
                return None;
            }
            continue;
        }
        // SYNC: Acquire pairs with the Release part of `clear`: the last holder's writes
        // to the slot are seen.
        match word.compare_exchange_weak(cur, cur | 1 << bit, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return Some(u64::from(bit)),
            Err(now) => cur = now,
        }
    }
}

/// A waiter's pass: claims a clear slot bit, or flags every full word `WAITING`.
pub(crate) fn claim_or_flag(words: &[AtomicU64]) -> Option<u64> {
    words.iter().enumerate().find_map(|(i, w)| Some(i as u64 * PER_WORD + claim_in(w, true)?))
}

/// Sets slot `i`'s bit if it is clear (a loan of that slot); whether it was.
pub(crate) fn claim_at(words: &[AtomicU64], i: u64) -> bool {
    let p = Place::of(i);
    let bit = 1 << p.bit;
    // SYNC: Acquire, as in `claim_in`.
    words[p.word as usize].fetch_or(bit, Ordering::Acquire) & bit == 0
}

/// What a return found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cleared {
    /// The slot was loaned (false: nothing was returned).
    pub(crate) was_loaned: bool,
    /// Waiters had flagged the word: the caller must wake them.
    pub(crate) waiters: bool,
}

/// Clears the bit at `p` and its word's `WAITING` flag.
#[inline(always)]
pub(crate) fn clear_at(words: &[AtomicU64], p: Place) -> Cleared {
    let (w, bit) = (p.word as usize, 1u64 << p.bit);
    // SYNC: Release pairs with the Acquire of the next claim of the word: the slot's
    // bytes written before the return are seen by the next loaner. Acquire pairs with
    // the Release of a waiter's flag (see `claim_in`).
    let prev = words[w].fetch_and(!(bit | WAITING), Ordering::AcqRel);
    Cleared { was_loaned: prev & bit != 0, waiters: prev & WAITING != 0 }
}

/// Whether slot `i` is loaned (a snapshot, for validating a handed-over index).
pub(crate) fn is_set(words: &[AtomicU64], i: u64) -> bool {
    let p = Place::of(i);
    words[p.word as usize].load(Ordering::Relaxed) & 1 << p.bit != 0
}

/// Loaned slots (a snapshot: words are read one by one).
pub(crate) fn count(words: &[AtomicU64], slots: u64) -> u64 {
    let set: u64 = words.iter().map(|w| u64::from((w.load(Ordering::Relaxed) & SLOTS).count_ones())).sum();
    set.saturating_sub(words.len() as u64 * PER_WORD - slots).min(slots)
}

/// Clears every slot at once (reset; the caller knows no loan is in use). Whether
/// waiters had flagged a word.
pub(crate) fn clear_all(words: &[AtomicU64], slots: u64) -> bool {
    let mut waiters = false;
    for (i, w) in words.iter().enumerate() {
        // SYNC: AcqRel, as in `clear`.
        waiters |= w.swap(padding(words.len(), i, slots), Ordering::AcqRel) & WAITING != 0;
    }
    waiters
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn map(slots: u64) -> Vec<AtomicU64> {
        let w: Vec<AtomicU64> = (0..words(slots)).map(|_| AtomicU64::new(0)).collect();
        init(&w, slots);
        w
    }

    #[test]
    fn claims_every_slot_once_then_none() {
        for slots in [1, 62, 63, 64, 127, 130] {
            let w = map(slots);
            let mut got: Vec<u64> =
                (0..slots).map(|k| claim(&w, k as usize % w.len()).unwrap().index()).collect();
            assert_eq!(claim(&w, 0), None, "{slots} slots");
            got.sort_unstable();
            assert_eq!(got, (0..slots).collect::<Vec<_>>());
            assert_eq!(count(&w, slots), slots);
        }
    }

    #[test]
    fn a_return_reports_the_slot_and_the_waiters() {
        let w = map(70);
        let i = claim(&w, 1).unwrap().index();
        assert_eq!(i, 63);
        assert!(is_set(&w, i));
        let c = clear_at(&w, Place::of(i));
        assert!(c.was_loaned && !c.waiters);
        assert!(!clear_at(&w, Place::of(i)).was_loaned, "a second return is refused");
        assert!(claim_at(&w, 69));
        assert!(!claim_at(&w, 69));
        // Fill everything; a waiter's pass flags both words.
        while claim(&w, 0).is_some() {}
        assert_eq!(claim_or_flag(&w), None);
        assert!(w.iter().all(|x| x.load(Ordering::Relaxed) & WAITING != 0));
        assert_eq!(count(&w, 70), 70, "the flag is not a slot");
        let c = clear_at(&w, Place::of(5));
        assert!(c.was_loaned && c.waiters);
        assert_eq!(claim_or_flag(&w), Some(5), "the pass claims a returned slot");
        assert!(clear_all(&w, 70), "word 1 is still flagged");
        assert_eq!(count(&w, 70), 0);
    }
}
