//! The remote-free protocol of a slab, with the functions the heap uses (`heap::remote`):
//! freers claim a block in the remote bitmap (`fetch_or`) and, when the owner flagged the
//! slab `FULL`, queue the slab on the owner's delayed stack; the owner collects bitmap
//! words and pops the delayed stack.
//!
//! loom checks every interleaving for: each freed block collected exactly once (none
//! lost, none twice), a remote free into a full slab always noticed, a double free of
//! ordered frees refused, a block never in two places after racing frees, and a slab
//! given back under a freer's feet never queued unless its unit holds a full slab again.

use crate::heap::remote::{self, FULL};
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;

const BLOCKS: usize = 3;

struct Slab {
    /// Owner-written allocated bitmap: every block starts allocated.
    alloc_bits: AtomicU64,
    remote_bits: AtomicU64,
    state: AtomicU32,
    /// The owner's delayed stack (this one slab is unit 0, pushed as 1).
    delayed: AtomicU64,
    delayed_next: AtomicU32,
    /// Each block's contents: a freer writes 1 before freeing it.
    data: [AtomicU32; BLOCKS],
}

impl Slab {
    fn new() -> Self {
        Self {
            alloc_bits: AtomicU64::new((1 << BLOCKS) - 1),
            remote_bits: AtomicU64::new(0),
            state: AtomicU32::new(0),
            delayed: AtomicU64::new(0),
            // Not a valid link: the owner must see the one the pusher wrote.
            delayed_next: AtomicU32::new(99),
            data: [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)],
        }
    }

    /// A remote free of block `idx`, as `free_remote` makes it; false if refused as a
    /// double free.
    fn free(&self, idx: u32) -> bool {
        self.data[idx as usize].store(1, Ordering::Relaxed);
        let claimed = remote::claim(&self.alloc_bits, &self.remote_bits, 1 << idx);
        if claimed && remote::queue_if_full(&self.state, || 7) {
            remote::push_slab(&self.delayed, &self.delayed_next, 1);
        }
        claimed
    }

    /// The owner collects the bitmap; counts each block that comes back.
    fn collect(&self, got: &mut [u32; BLOCKS]) -> u32 {
        let bits = remote::collect(&self.alloc_bits, &self.remote_bits);
        for (i, g) in got.iter_mut().enumerate() {
            if bits >> i & 1 != 0 {
                assert_eq!(self.data[i].load(Ordering::Relaxed), 1, "the freer's writes are visible");
                *g += 1;
            }
        }
        bits.count_ones()
    }

    /// The owner drains its delayed stack: the slab comes off it and is collected.
    fn drain(&self, got: &mut [u32; BLOCKS]) {
        let top = remote::top(&self.delayed);
        if top != 0 {
            assert!(
                remote::pop_slab(&self.delayed, top, &self.state, &self.delayed_next),
                "only pushes race"
            );
            assert_eq!(remote::top(&self.delayed), 0, "one slab, pushed once");
            remote::unqueue(&self.state);
            self.collect(got);
        }
    }
}

/// Interleavings with up to this many preemptions are explored exhaustively (tokio's
/// models use 2–3); unbounded, two freers and an owner take hours.
const PREEMPTIONS: usize = 3;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(PREEMPTIONS);
    b.check(f);
}

#[test]
fn remote_frees_are_collected_exactly_once_and_never_missed() {
    model(|| {
        let slab = Arc::new(Slab::new());
        let freers: Vec<_> = [0u32, 1]
            .into_iter()
            .map(|idx| {
                let s = slab.clone();
                thread::spawn(move || assert!(s.free(idx)))
            })
            .collect();
        let mut got = [0; BLOCKS];
        // The owner finds its slab exhausted: collects, flags it full, collects what came
        // before the flag, and keeps it in use only if that gave it room.
        slab.collect(&mut got);
        remote::mark_full(&slab.state);
        if slab.collect(&mut got) > 0 {
            remote::clear_full(&slab.state);
        }
        for f in freers {
            f.join().unwrap();
        }
        // A full slab is only looked at again through the delayed stack: whatever was
        // freed into it must have been queued.
        slab.drain(&mut got);
        if slab.state.load(Ordering::Relaxed) & FULL == 0 {
            slab.collect(&mut got);
        }
        assert_eq!(got, [1, 1, 0], "each freed block exactly once");
        assert_eq!(slab.remote_bits.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn a_racing_double_remote_free_is_refused_once() {
    model(|| {
        let slab = Arc::new(Slab::new());
        let twice: Vec<_> = (0..2)
            .map(|_| {
                let s = slab.clone();
                thread::spawn(move || s.free(2))
            })
            .collect();
        let mut got = [0; BLOCKS];
        slab.collect(&mut got);
        let accepted = twice.into_iter().map(|t| t.join().unwrap()).filter(|&ok| ok).count();
        slab.collect(&mut got);
        assert_eq!(accepted, 1, "exactly one of two frees of the same block succeeds");
        assert_eq!(got, [0, 0, 1]);
    });
}

/// A remote free that happens after an earlier free of the block is refused, also when
/// the owner collected the earlier one in between: ordered frees are always checked.
#[test]
fn a_free_ordered_after_a_collected_free_is_refused() {
    model(|| {
        let slab = Arc::new(Slab::new());
        let done = Arc::new(AtomicU32::new(0));
        let first = {
            let (s, done) = (slab.clone(), done.clone());
            thread::spawn(move || {
                assert!(s.free(2));
                done.store(1, Ordering::Release);
            })
        };
        let second = {
            let (s, done) = (slab.clone(), done.clone());
            thread::spawn(move || {
                if done.load(Ordering::Acquire) == 1 {
                    assert!(!s.free(2), "a second free ordered after the first was accepted");
                }
            })
        };
        let mut got = [0; BLOCKS];
        while slab.collect(&mut got) == 0 {
            thread::yield_now();
        }
        first.join().unwrap();
        second.join().unwrap();
        slab.collect(&mut got);
        assert_eq!(got, [0, 0, 1]);
    });
}

/// The owner frees a block, maybe allocates it again, while another thread frees it too
/// (a racing double free): whatever wins, the block ends up in exactly one place —
/// allocated, or free once — never handed out twice.
#[test]
fn racing_owner_and_remote_frees_keep_the_block_in_one_place() {
    for realloc in [false, true] {
        model(move || {
            let slab = Arc::new(Slab::new());
            let remote = {
                let s = slab.clone();
                thread::spawn(move || s.free(2))
            };
            let mut on_free_list = 0;
            let owner = remote::release_local(&slab.alloc_bits, &slab.remote_bits, 1 << 2);
            if owner {
                on_free_list += 1;
                if realloc {
                    // The owner pops the block again (the plain store `pop` makes).
                    let a = slab.alloc_bits.load(Ordering::Relaxed);
                    slab.alloc_bits.store(a | 1 << 2, Ordering::Relaxed);
                    on_free_list -= 1;
                }
            }
            let remote_won = remote.join().unwrap();
            let mut got = [0; BLOCKS];
            slab.collect(&mut got);
            on_free_list += got[2];
            let allocated = slab.alloc_bits.load(Ordering::Relaxed) >> 2 & 1;
            assert!(owner || remote_won, "both frees refused");
            assert_eq!(on_free_list + allocated as u32, 1, "the block is in two places, or none");
            assert_eq!(slab.remote_bits.load(Ordering::Relaxed), 0);
        });
    }
}

/// The owner collects the last block of a full slab, takes it off the full list and gives
/// it back (resetting its unit state, as `slab_emptied` does) when `may_retire` says
/// so, while the freer of
/// that block may still be running; the unit then holds something else, or a new slab
/// that its owner has filled and flagged full. The freer touches nothing but the unit
/// state and the stack after its claim: a unit reset to 0 is never queued, and a queued
/// unit is always flagged `QUEUED` (for the new full slab, a harmless extra look).
#[test]
fn a_slab_given_back_under_a_freer_is_not_queued_wrongly() {
    for reused_as_full_slab in [false, true] {
        model(move || {
            let slab = Arc::new(Slab::new());
            slab.alloc_bits.store(1 << 2, Ordering::Relaxed); // only block 2 is allocated
            remote::mark_full(&slab.state); // and the slab is full, so the free queues it
            let freer = {
                let s = slab.clone();
                thread::spawn(move || assert!(s.free(2)))
            };
            let mut got = [0; BLOCKS];
            while slab.collect(&mut got) == 0 {
                thread::yield_now();
            }
            // The slab has room (it is empty): the owner takes it off the full list, as
            // `unfull` does, and gives it back unless a freer queued it first.
            remote::clear_full(&slab.state);
            let retired = remote::may_retire(&slab.state);
            if retired {
                slab.state.store(0, Ordering::Relaxed);
                if reused_as_full_slab {
                    remote::mark_full(&slab.state);
                }
            }
            freer.join().unwrap();
            let (state, queued) =
                (slab.state.load(Ordering::Relaxed), slab.delayed.load(Ordering::Relaxed) != 0);
            assert_eq!(queued, state & remote::QUEUED != 0, "queued iff flagged QUEUED");
            if retired && !reused_as_full_slab {
                assert_eq!(state, 0, "a unit that holds no slab was queued");
            }
        });
    }
}

/// The owner drains its delayed stack while another free goes into the same full slab:
/// the slab was queued with nothing to collect (a free of the unit's previous slab, or
/// one that queued it just after the owner collected), and the freer's state load may
/// still see it queued. Then the owner's collection after `unqueue` sees the free, or
/// the freer queues the slab again: the free is never stranded in a full slab nobody
/// will look at. If the collection gave the slab room, the owner takes it off the full
/// list and, empty, gives it back as `drain_delayed` does.
#[test]
fn a_free_racing_the_drain_is_not_stranded() {
    model(|| {
        let slab = Arc::new(Slab::new());
        slab.alloc_bits.store(1 << 1, Ordering::Relaxed); // only block 1 is allocated
        remote::mark_full(&slab.state);
        assert!(remote::queue_if_full(&slab.state, || 7));
        remote::push_slab(&slab.delayed, &slab.delayed_next, 1);
        let freer = {
            let s = slab.clone();
            thread::spawn(move || assert!(s.free(1)))
        };
        let mut got = [0; BLOCKS];
        slab.drain(&mut got);
        let mut retired = false;
        if got[1] == 1 {
            remote::clear_full(&slab.state); // `unfull`
            if remote::may_retire(&slab.state) {
                slab.state.store(0, Ordering::Relaxed); // `slab_emptied`
                retired = true;
            }
        }
        freer.join().unwrap();
        let state = slab.state.load(Ordering::Relaxed);
        if got[1] == 0 {
            assert_eq!(state & (FULL | remote::QUEUED), FULL | remote::QUEUED, "the free is stranded");
            slab.drain(&mut got);
        }
        assert_eq!(got, [0, 1, 0], "the free was collected once");
        assert!(!retired || state == 0, "a given-back slab was queued again");
    });
}

/// Two freers queue two full slabs on one owner's delayed stack while the owner pops it a
/// slab at a time (`pop_slab`, as `drain_delayed` does): each slab comes off exactly once,
/// with the link its pusher wrote, whatever the interleaving of pushes and pops; a pop
/// that loses to a push looks again.
#[test]
fn pops_racing_pushes_take_each_slab_once() {
    model(|| {
        let delayed = Arc::new(AtomicU64::new(0));
        // Unit u's state and link; both slabs full, neither queued.
        let units: Arc<[(AtomicU32, AtomicU32); 2]> = Arc::new([
            (AtomicU32::new(FULL), AtomicU32::new(99)),
            (AtomicU32::new(FULL), AtomicU32::new(99)),
        ]);
        let pushers: Vec<_> = (0..2u32)
            .map(|u| {
                let (delayed, units) = (delayed.clone(), units.clone());
                thread::spawn(move || {
                    let (state, link) = &units[u as usize];
                    assert!(remote::queue_if_full(state, || u + 1));
                    remote::push_slab(&delayed, link, u + 1);
                })
            })
            .collect();
        let mut popped = [0u32; 2];
        let pop_all = |popped: &mut [u32; 2]| loop {
            let top = remote::top(&delayed);
            if top == 0 {
                break;
            }
            let (state, link) = &units[(top - 1) as usize];
            if remote::pop_slab(&delayed, top, state, link) {
                assert_eq!(remote::queued_by(state.load(Ordering::Relaxed)), Some(remote::Pusher::Owner));
                remote::unqueue(state);
                popped[(top - 1) as usize] += 1;
            }
        };
        pop_all(&mut popped);
        for p in pushers {
            p.join().unwrap();
        }
        pop_all(&mut popped);
        assert_eq!(popped, [1, 1], "each queued slab popped once");
        for (state, _) in units.iter() {
            assert_eq!(state.load(Ordering::Relaxed), FULL, "unqueued, tag cleared");
        }
    });
}
