//! A slot that a signal handler reads without locks: an address range and the value
//! that serves it, published by one thread, used by handlers on any thread, and taken
//! back only once no handler uses it.
//!
//! Layer: shmpool-dsm, under `signals`. Lock-free (a handler may run on a thread that
//! holds any lock), and modelled with loom (`RUSTFLAGS="--cfg loom" cargo test -p
//! shmpool-dsm --lib --release loom`): a handler that entered never sees its value
//! freed, and `retire` returns once every handler that could see it has left.
#![allow(unsafe_code)]
// Under loom only the model uses it (the signal handler is not built).
#![cfg_attr(loom, allow(dead_code))]

#[cfg(loom)]
use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;

/// A range `[base, base + len)` and the value serving it.
pub(crate) struct Slot<T> {
    base: AtomicUsize,
    len: AtomicUsize,
    value: AtomicPtr<T>,
    /// `2 × handlers in flight | EMPTY`: one word, so that a handler entering and a
    /// retirement are ordered by their read-modify-writes on it alone.
    state: AtomicUsize,
}

/// `state`'s flag: the slot serves nothing (never claimed, or retired).
const EMPTY: usize = 1;
/// `state`'s unit: one handler in flight.
const HANDLER: usize = 2;

/// A handler's use of a slot's value; the slot is not retired while it lives.
pub(crate) struct Entered<'a, T> {
    value: &'a T,
    base: usize,
    state: &'a AtomicUsize,
}

impl<T> Entered<'_, T> {
    /// The start of the range the value serves.
    pub(crate) fn base(&self) -> usize {
        self.base
    }
}

impl<T> core::ops::Deref for Entered<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T> Drop for Entered<'_, T> {
    fn drop(&mut self) {
        // SYNC: Release pairs with `retire`'s Acquire load: this handler's uses of the
        // value happen before it is freed.
        self.state.fetch_sub(HANDLER, Ordering::Release);
    }
}

impl<T> Slot<T> {
    /// An empty slot.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Slot {
            base: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            value: AtomicPtr::new(core::ptr::null_mut()),
            state: AtomicUsize::new(EMPTY),
        }
    }

    /// An empty slot.
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Slot {
            base: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            value: AtomicPtr::new(core::ptr::null_mut()),
            state: AtomicUsize::new(EMPTY),
        }
    }

    /// Takes the slot for `[base, base + len)` served by `value`; `value` back if the
    /// slot is taken.
    pub(crate) fn claim(&self, base: usize, len: usize, value: Arc<T>) -> Result<(), Arc<T>> {
        let raw = Arc::into_raw(value).cast_mut();
        // SYNC: AcqRel makes one claim win, after the `retire` that emptied the slot
        // (its Release swap).
        if self
            .value
            .compare_exchange(core::ptr::null_mut(), raw, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // SAFETY: `raw` came from `into_raw` just above and was stored nowhere.
            return Err(unsafe { Arc::from_raw(raw) });
        }
        self.len.store(len, Ordering::Relaxed);
        self.base.store(base, Ordering::Relaxed);
        // SYNC: Release publishes the value, base and length to `enter`'s Acquire RMW.
        self.state.fetch_and(!EMPTY, Ordering::Release);
        Ok(())
    }

    /// The slot's value if it serves `addr`, held until the guard drops.
    pub(crate) fn enter(&self, addr: usize) -> Option<Entered<'_, T>> {
        // SYNC: Acquire pairs with the claim's Release (the fields read next are its);
        // an RMW on the one word, so it is ordered with `retire`'s `fetch_or`.
        let state = self.state.fetch_add(HANDLER, Ordering::Acquire);
        let guard = Entered { value: &(), base: 0, state: &self.state };
        if state & EMPTY != 0 {
            return None; // the guard undoes the count
        }
        let (base, len) = (self.base.load(Ordering::Relaxed), self.len.load(Ordering::Relaxed));
        if addr < base || addr - base >= len {
            return None;
        }
        let raw = self.value.load(Ordering::Relaxed);
        core::mem::forget(guard);
        // SAFETY: the slot is claimed (not EMPTY when counted), so `value` holds the
        // strong reference `claim` made, which `retire` releases only after every
        // handler counted in `state` has left; this one is counted until the guard drops.
        Some(Entered { value: unsafe { &*raw }, base, state: &self.state })
    }

    /// Empties the slot once no handler uses its value: the value, if it had one.
    pub(crate) fn retire(&self) -> Option<Arc<T>> {
        // SYNC: AcqRel: handlers counted before this see the value; those after see
        // EMPTY and touch nothing.
        self.state.fetch_or(EMPTY, Ordering::AcqRel);
        // SYNC: Acquire pairs with the handlers' Release decrements.
        while self.state.load(Ordering::Acquire) != EMPTY {
            yield_now(); // a handler finishing
        }
        self.base.store(0, Ordering::Relaxed);
        // SYNC: Release pairs with the next claim's CAS.
        let raw = self.value.swap(core::ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: the slot held the reference `claim` made with `into_raw`, and no
        // handler uses it: none is counted, and new ones see EMPTY.
        (!raw.is_null()).then(|| unsafe { Arc::from_raw(raw) })
    }
}

#[cfg(not(loom))]
fn yield_now() {
    std::thread::yield_now();
}

#[cfg(loom)]
fn yield_now() {
    loom::thread::yield_now();
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;

    /// A value that records its own end in a flag outside it.
    struct Value(loom::sync::Arc<AtomicBool>);

    impl Drop for Value {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    /// A handler that entered never sees the value freed under it; `retire` returns
    /// the value after every such handler left.
    #[test]
    fn loom_a_handler_never_sees_its_value_freed() {
        model(|| {
            let freed = loom::sync::Arc::new(AtomicBool::new(false));
            let slot = Arc::new(Slot::new());
            assert!(slot.claim(4096, 4096, Arc::new(Value(freed.clone()))).is_ok());
            let handler = {
                let (slot, freed) = (slot.clone(), freed.clone());
                loom::thread::spawn(move || {
                    if let Some(v) = slot.enter(5000) {
                        assert_eq!(v.base(), 4096);
                        assert!(!freed.load(Ordering::SeqCst), "entered a freed value");
                        assert!(!v.0.load(Ordering::SeqCst));
                    }
                })
            };
            let value = slot.retire().expect("the claimed value");
            drop(value);
            assert!(freed.load(Ordering::SeqCst));
            handler.join().unwrap();
            assert!(slot.enter(5000).is_none(), "a retired slot serves nothing");
        });
    }

    /// Two claims of one empty slot: exactly one wins.
    #[test]
    fn loom_one_claim_of_a_slot_wins() {
        model(|| {
            let slot = Arc::new(Slot::new());
            let other = {
                let slot = slot.clone();
                loom::thread::spawn(move || {
                    slot.claim(8192, 4096, Arc::new(Value(loom::sync::Arc::new(AtomicBool::new(false)))))
                        .is_ok()
                })
            };
            let mine =
                slot.claim(4096, 4096, Arc::new(Value(loom::sync::Arc::new(AtomicBool::new(false))))).is_ok();
            let theirs = other.join().unwrap();
            assert!(mine ^ theirs, "exactly one claim wins");
            assert!(slot.retire().is_some());
        });
    }
}
