//! The page lock (`heap::lock`) and the page-run free lists it protects (`pages::Buddy`):
//! threads take runs and give them back under the lock, with the futex modelled.
//!
//! loom checks every interleaving for: the buddy's lists and table never touched by two
//! threads at once (loom's `UnsafeCell` reports any unsynchronised access), each holder
//! seeing the last one's updates, no lost wake-up (a sleeper left asleep is a deadlock,
//! which loom reports), and the lists consistent and whole at the end.
#![allow(unsafe_code)]

use crate::heap::lock::LockWord;
use crate::loom::UnsafeCell;
use crate::pages::{Buddy, VecStore};
use loom::sync::Arc;
use loom::thread;

struct Pages {
    lock: LockWord,
    buddy: UnsafeCell<Buddy<VecStore>>,
}

// SAFETY: `buddy` is only reached through `with_buddy`, under the lock.
unsafe impl Sync for Pages {}
// SAFETY: as above.
unsafe impl Send for Pages {}

impl Pages {
    fn new(units: u32) -> Self {
        let mut buddy = Buddy::new(VecStore::new(units));
        buddy.extend(units);
        Self { lock: LockWord::new(), buddy: UnsafeCell::new(buddy) }
    }

    /// Runs `f` on the buddy under the page lock, as process `pid`.
    fn with_buddy<R>(&self, pid: u32, f: impl FnOnce(&mut Buddy<VecStore>) -> R) -> R {
        let _held = self.lock.lock(pid, |_| false);
        // SAFETY: the lock is held: no other thread reaches the buddy until it drops.
        self.buddy.with_mut(|b| f(unsafe { &mut *b }))
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// Three threads (as three processes) each take a run of two units and give it back.
#[test]
fn the_page_lock_serialises_the_run_lists() {
    model(|| {
        let pages = Arc::new(Pages::new(8));
        let others: Vec<_> = [2u32, 3]
            .into_iter()
            .map(|pid| {
                let p = pages.clone();
                thread::spawn(move || {
                    let run = p.with_buddy(pid, |b| b.alloc(2, 1).expect("room for three runs"));
                    p.with_buddy(pid, |b| b.free(run).expect("a run it holds"));
                })
            })
            .collect();
        let mine = pages.with_buddy(1, |b| b.alloc(2, 1).expect("room for three runs"));
        pages.with_buddy(1, |b| b.free(mine).expect("a run it holds"));
        for t in others {
            t.join().unwrap();
        }
        pages.with_buddy(1, |b| {
            b.check().expect("lists and table agree");
            assert_eq!(b.free_units(), 8, "every unit came back");
        });
    });
}
