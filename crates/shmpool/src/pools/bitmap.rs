//! The slot pool's occupancy bitmap: one bit a slot, set while the slot is loaned.
//!
//! Layer: pools. Lock-free: a loan is one CAS that sets the lowest clear bit of a word,
//! a return one RMW that clears its bit, so a process killed at any instant leaves every
//! word whole (it loses only the slots it held). Bits past the last slot are set at
//! format time and never cleared, so no search needs the slot count.
//!
//! Orderings: every access is SeqCst. A loan's Acquire and a return's Release carry the
//! slot's bytes from the returner to the next loaner; SeqCst on top is what the waiters
//! of `SlotPool::loan_timeout` need (`wait.rs`): a returner that sees no waiter announced
//! had its clear ordered before the announcement, so the waiter's next scan sees the
//! clear. On x86 a SeqCst CAS or load costs what an AcqRel one does.
//!
//! Modelled in `tests/loom_bitmap.rs`.

use crate::loom::{AtomicU64, Ordering};

/// Bits a word.
pub(crate) const BITS: u64 = 64;

/// Words for `slots` bits.
pub(crate) fn words(slots: u64) -> u64 {
    slots.div_ceil(BITS)
}

/// Sets the bits past `slots` in the last word (formatting; no one else sees the words).
pub(crate) fn init(words: &[AtomicU64], slots: u64) {
    for w in words {
        w.store(0, Ordering::Relaxed);
    }
    let tail = slots % BITS;
    if tail != 0 {
        words[words.len() - 1].store(!0 << tail, Ordering::Relaxed);
    }
}

/// Claims a clear bit, looking at every word once from `start`; its index, or `None` if
/// each word was full when it was looked at.
#[inline]
pub(crate) fn claim(words: &[AtomicU64], start: usize) -> Option<u64> {
    let n = words.len();
    for k in 0..n {
        let i = if start + k >= n { start + k - n } else { start + k };
        if let Some(bit) = claim_in(&words[i]) {
            return Some(i as u64 * BITS + bit);
        }
    }
    None
}

#[inline(always)]
fn claim_in(word: &AtomicU64) -> Option<u64> {
    // SYNC: SeqCst (Acquire part) pairs with the SeqCst (Release part) clear in `clear`;
    // SeqCst for the waiters (module docs).
    let mut cur = word.load(Ordering::SeqCst);
    while cur != !0 {
        let bit = (!cur).trailing_zeros();
        // SYNC: as the load above, on success and on failure.
        match word.compare_exchange_weak(cur, cur | 1 << bit, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Some(u64::from(bit)),
            Err(now) => cur = now,
        }
    }
    None
}

/// Sets bit `i` if it is clear (a loan of that slot); whether it was.
pub(crate) fn claim_at(words: &[AtomicU64], i: u64) -> bool {
    let bit = 1 << (i % BITS);
    // SYNC: as in `claim_in`.
    words[(i / BITS) as usize].fetch_or(bit, Ordering::SeqCst) & bit == 0
}

/// Clears bit `i`; whether it was set (false: the slot was not loaned, and nothing
/// changed).
#[inline]
pub(crate) fn clear(words: &[AtomicU64], i: u64) -> bool {
    let bit = 1 << (i % BITS);
    // SYNC: SeqCst (Release part) pairs with the Acquire part of the next claim of the
    // word: the slot's bytes written before the return are visible to the next loaner.
    words[(i / BITS) as usize].fetch_and(!bit, Ordering::SeqCst) & bit != 0
}

/// Whether bit `i` is set.
pub(crate) fn is_set(words: &[AtomicU64], i: u64) -> bool {
    // SYNC: SeqCst like every access of the words (module docs); a snapshot, for
    // validating an index handed over by another process.
    words[(i / BITS) as usize].load(Ordering::SeqCst) & 1 << (i % BITS) != 0
}

/// Set bits, the padding past `slots` excluded (a snapshot: words are read one by one).
pub(crate) fn count(words: &[AtomicU64], slots: u64) -> u64 {
    let set: u64 = words.iter().map(|w| u64::from(w.load(Ordering::Relaxed).count_ones())).sum();
    set - (words.len() as u64 * BITS - slots)
}

/// Clears every slot's bit at once (reset; the caller knows no loan is in use).
pub(crate) fn clear_all(words: &[AtomicU64], slots: u64) {
    let tail = slots % BITS;
    for (i, w) in words.iter().enumerate() {
        let keep = if i + 1 == words.len() && tail != 0 { !0 << tail } else { 0 };
        // SYNC: SeqCst, as in `clear`.
        w.store(keep, Ordering::SeqCst);
    }
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
        for slots in [1, 63, 64, 65, 130] {
            let w = map(slots);
            let mut got: Vec<u64> = (0..slots).map(|k| claim(&w, k as usize % w.len()).unwrap()).collect();
            assert_eq!(claim(&w, 0), None, "{slots} slots");
            got.sort_unstable();
            assert_eq!(got, (0..slots).collect::<Vec<_>>());
            assert_eq!(count(&w, slots), slots);
        }
    }

    #[test]
    fn clear_reports_whether_the_bit_was_set() {
        let w = map(70);
        let i = claim(&w, 1).unwrap();
        assert_eq!(i, 64);
        assert!(is_set(&w, i));
        assert!(clear(&w, i));
        assert!(!clear(&w, i), "a second return is refused");
        assert!(claim_at(&w, 69));
        assert!(!claim_at(&w, 69));
        clear_all(&w, 70);
        assert_eq!(count(&w, 70), 0);
    }
}
