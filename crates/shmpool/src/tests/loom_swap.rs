//! The swappable segment's reclamation (`sync::swap`): a reader pins the current
//! generation with the hazard-pointer protocol (`swap::pin`) while the writer publishes
//! the next one, retires the old (`swap::retire`) and frees it if no pin names it.
//!
//! loom checks every interleaving for: a version never freed (its bytes reused) while
//! a reader reads it (loom's `UnsafeCell` reports the overlap), and a reader always
//! ending with a version it could read.
#![allow(unsafe_code)]

use super::model;
use crate::loom::{AtomicU64, Ordering, UnsafeCell};
use crate::sync::swap;
use loom::sync::Arc;
use loom::thread;

struct Board {
    current: AtomicU64,
    oldest: AtomicU64,
    pin: AtomicU64,
    /// Each generation's bytes: 1 and 2 (slot `g - 1`); freeing one overwrites it.
    versions: [UnsafeCell<u64>; 2],
}

// SAFETY: a version's cell is written when published or freed, and read only while
// pinned (what the model checks).
unsafe impl Sync for Board {}
// SAFETY: as above.
unsafe impl Send for Board {}

#[test]
fn a_pinned_version_is_never_freed_under_its_reader() {
    model(|| {
        let b = Arc::new(Board {
            current: AtomicU64::new(1),
            oldest: AtomicU64::new(1),
            pin: AtomicU64::new(0),
            versions: [UnsafeCell::new(1), UnsafeCell::new(0)],
        });
        let w = b.clone();
        let writer = thread::spawn(move || {
            // SAFETY: generation 2 is not published yet: the writer's alone.
            w.versions[1].with_mut(|v| unsafe { *v = 2 });
            w.current.swap(2, Ordering::Release);
            swap::retire(&w.oldest, 2);
            // Acquire, as `Swappable::pinned`: pairs with the reader's Release unpin.
            if w.pin.load(Ordering::Acquire) != 1 {
                // SAFETY: retired, and no pin names it: no reader reads it.
                w.versions[0].with_mut(|v| unsafe { *v = 99 });
            }
        });
        let got = loop {
            let g = b.current.load(Ordering::Acquire);
            if swap::pin(&b.pin, &b.oldest, g) {
                // SAFETY: pinned.
                let v = b.versions[(g - 1) as usize].with(|v| unsafe { *v });
                b.pin.store(0, Ordering::Release);
                break (g, v);
            }
        };
        writer.join().unwrap();
        assert_eq!(got.0, got.1, "generation {} read as {}", got.0, got.1);
    });
}
