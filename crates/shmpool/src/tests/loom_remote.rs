//! The remote-free protocol of a slab, with the functions the heap uses (`heap::remote`):
//! freers claim a block in the remote bitmap (`fetch_or`) and push it onto the slab's
//! list, or onto the owner's delayed list once the owner marked the slab `FULL`; the owner
//! takes lists whole and reclaims each block whose remote bit it clears.
//!
//! loom checks every interleaving for: each freed block reclaimed exactly once (none
//! lost, none twice), a double free refused exactly once, and the links read by the
//! owner ordered after the pushers wrote them.

use crate::heap::remote::{self, Pushed};
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;

const BLOCKS: usize = 3;

struct Slab {
    list: AtomicU64,
    /// Owner-written allocated bitmap: every block starts allocated.
    alloc_bits: AtomicU64,
    remote_bits: AtomicU64,
    links: [AtomicU32; BLOCKS],
    /// The owner's delayed list; offsets are `1 + index` here (0 means empty).
    delayed: AtomicU64,
    delayed_links: [AtomicU64; BLOCKS],
}

impl Slab {
    fn new() -> Self {
        Self {
            list: AtomicU64::new(0),
            alloc_bits: AtomicU64::new((1 << BLOCKS) - 1),
            remote_bits: AtomicU64::new(0),
            links: [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)],
            delayed: AtomicU64::new(0),
            delayed_links: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// A remote free of block `idx`; false if refused as a double free.
    fn free(&self, idx: u32) -> bool {
        if !remote::claim(&self.alloc_bits, &self.remote_bits, 1 << idx) {
            return false;
        }
        if remote::push_block(&self.list, &self.links[idx as usize], idx) == Pushed::SlabIsFull {
            let off = u64::from(idx) + 1;
            remote::push_offset(&self.delayed, &self.delayed_links[idx as usize], off);
        }
        true
    }

    /// The owner takes both lists and reclaims; returns how often each block came back.
    fn collect(&self, got: &mut [u32; BLOCKS]) {
        let mut next = remote::take_blocks(&self.list);
        while next != 0 {
            let idx = next - 1;
            next = self.links[idx as usize].load(Ordering::Relaxed);
            self.reclaim(idx, got);
        }
        let mut off = remote::take_offsets(&self.delayed);
        while off != 0 {
            let idx = (off - 1) as u32;
            off = self.delayed_links[idx as usize].load(Ordering::Relaxed);
            self.reclaim(idx, got);
        }
    }

    fn reclaim(&self, idx: u32, got: &mut [u32; BLOCKS]) {
        if remote::reclaim(&self.alloc_bits, &self.remote_bits, 1 << idx) {
            got[idx as usize] += 1;
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
fn remote_frees_are_reclaimed_exactly_once() {
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
        // The owner collects, and marks the slab full when it finds nothing, while the
        // freers run.
        slab.collect(&mut got);
        if remote::mark_full(&slab.list) {
            slab.collect(&mut got);
            remote::clear_full(&slab.list);
        }
        for f in freers {
            f.join().unwrap();
        }
        slab.collect(&mut got);
        assert_eq!(got, [1, 1, 0], "each freed block exactly once");
    });
}

#[test]
fn a_racing_double_free_is_refused_once() {
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

/// The owner frees a block while another thread frees the same block: at most one of the
/// two frees wins, and the block is reclaimed at most once — never handed out twice.
#[test]
fn owner_and_remote_double_free_do_not_both_win() {
    model(|| {
        let slab = Arc::new(Slab::new());
        let remote = {
            let s = slab.clone();
            thread::spawn(move || s.free(2))
        };
        let owner = remote::release_local(&slab.alloc_bits, &slab.remote_bits, 1 << 2);
        let remote_won = remote.join().unwrap();
        let mut got = [0; BLOCKS];
        slab.collect(&mut got);
        assert!(!(owner && remote_won), "both frees of one block were accepted");
        assert_eq!(got[2], u32::from(remote_won), "reclaimed exactly when the remote free won");
        if owner {
            assert_eq!(slab.alloc_bits.load(Ordering::Relaxed) & 1 << 2, 0);
        }
    });
}
