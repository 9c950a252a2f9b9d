//! `shmpool stress`: a worker that runs mixed allocation traffic on a segment's heap
//! until its time is up, built to be SIGKILLed at any instant by an outside supervisor
//! and replaced; and `--audit`, which says afterwards whether anything was lost.
//!
//! Every block a worker holds is named in the segment, so that nothing it holds is lost
//! with it. The *board* (a named root) holds an exchange of slots through which workers
//! hand blocks to each other, and a table of *hands*: each worker thread claims a hand of
//! its own, a block of slots recorded in the table with `Heap::alloc_in`.
//!
//! ```text
//!   board (root "shmpool/stress")          hand (a block, one per worker thread)
//!   ┌ next_hand ┬ exchange[64] ┬ hands[] ┐  ┌ ops ┬ pid ┬ slot 0 … slot 29 ┐
//!   └───────────┴──────────────┴────┼────┘  └─────┴─────┴─ block offsets ──┘
//!                                   └───────► (recorded by alloc_in)
//! ```
//!
//! - alloc: `alloc_in` into an empty slot of the hand (crash-atomic: the block is in the
//!   slot, or freed by recovery), then its contents: a pattern, then a stamp.
//! - free: the contents are verified, the block freed, its slot cleared.
//! - give: the block goes into an empty exchange slot (CAS), then its hand slot is cleared.
//! - take: an exchange slot's block is copied into an empty hand slot, then the exchange
//!   slot is cleared (CAS); a taker that lost the race clears its copy.
//!
//! A worker killed between two of those steps leaves a block named twice, or a slot
//! naming a block already freed, never a block named nowhere. The hand of a dead worker
//! is never used again, so a block named twice has one live holder at most; `--audit`
//! counts each allocated block that some slot names once, and checks that free bytes and
//! held bytes add up to the heap's capacity. Blocks are checked before every free: a
//! block the heap handed out twice shows as a wrong pattern, and the worker fails.

use crate::units::human;
use shmpool::heap::Heap;
use shmpool::{Offset, Segment, ShmSafe};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The board's root name.
const BOARD: &str = "shmpool/stress";
const EXCHANGE: usize = 64;
/// Hands over the board's life: workers never reuse a dead one's.
const MAX_HANDS: usize = 16384;
/// Slots in a hand, after its two header words (ops done, pid).
const HAND_SLOTS: u64 = 30;
const HAND_BYTES: u64 = 8 * (2 + HAND_SLOTS);
/// The stamp's first word: the block's offset, xored with this.
const STAMP: u64 = 0x5354_5245_5353_0001;

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Board {
    next_hand: u64,
    exchange: [u64; EXCHANGE],
    hands: [u64; MAX_HANDS],
}

/// What a worker does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seconds: f64,
    pub seed: u64,
    pub threads: u32,
}

/// Opens the heap in the segment `open` maps, making it one if it holds none yet.
fn open_heap(open: impl Fn() -> Result<Segment, String>) -> Result<Heap, String> {
    use shmpool::heap::HeapError;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Heap::attach(open()?) {
            Ok(heap) => return Ok(heap),
            Err(HeapError::NotAHeap) => match Heap::create(open()?) {
                Ok(heap) => return Ok(heap),
                // Another worker is making it: wait for it to be ready.
                Err(HeapError::AlreadyFormatted) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(e.to_string()),
            },
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The board, made by the first worker.
fn board(heap: &Heap) -> Result<Offset<Board>, String> {
    heap.find_or_init(BOARD, || Board { next_hand: 0, exchange: [0; EXCHANGE], hands: [0; MAX_HANDS] })
        .map_err(|e| format!("the stress board: {e}"))
}

/// The word at `off` in the segment.
fn word(heap: &Heap, off: u64) -> &AtomicU64 {
    heap.segment().atomic_u64(off).expect("a word of the board or of a hand")
}

/// Offsets of the board's fields.
fn next_hand_off(b: Offset<Board>) -> u64 {
    b.get()
}
fn exchange_off(b: Offset<Board>, e: usize) -> u64 {
    b.get() + 8 * (1 + e as u64)
}
fn hand_ptr_off(b: Offset<Board>, h: usize) -> u64 {
    b.get() + 8 * (1 + EXCHANGE + h) as u64
}
fn slot_off(hand: u64, k: u64) -> u64 {
    hand + 8 * (2 + k)
}

/// Runs a worker: `plan.threads` threads, each with a hand of its own, until
/// `plan.seconds` have passed; then each frees what it holds.
pub fn run(open: impl Fn() -> Result<Segment, String>, plan: &Plan) -> Result<String, String> {
    let heap = open_heap(open)?;
    let b = board(&heap)?;
    let deadline = Instant::now() + Duration::from_secs_f64(plan.seconds);
    let results: Vec<Result<Tally, String>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..plan.threads)
            .map(|t| {
                let heap = heap.clone();
                let seed = plan.seed ^ (u64::from(t) << 48);
                s.spawn(move || Worker::start(&heap, b, seed)?.run(deadline))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err("a worker panicked".into()))).collect()
    });
    let mut total = Tally::default();
    for r in results {
        total.add(&r?);
    }
    Ok(format!(
        "stress: pid {} ran {} threads for {:.1} s: {} ops ({} allocs, {} frees, {} blocks given and {} taken through the exchange, {} of those freed at once), contents verified before every free",
        std::process::id(),
        plan.threads,
        plan.seconds,
        total.ops,
        total.allocs,
        total.frees,
        total.given,
        total.taken,
        total.taken_freed
    ))
}

#[derive(Debug, Default, Clone)]
struct Tally {
    ops: u64,
    allocs: u64,
    frees: u64,
    taken_freed: u64,
    given: u64,
    taken: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.ops += o.ops;
        self.allocs += o.allocs;
        self.frees += o.frees;
        self.taken_freed += o.taken_freed;
        self.given += o.given;
        self.taken += o.taken;
    }
}

/// SplitMix64 (BENCH.md).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One worker thread and its hand.
struct Worker<'h> {
    heap: &'h Heap,
    board: Offset<Board>,
    hand: u64,
    /// What each slot of the hand holds (a copy of the hand, which only this thread writes).
    held: [u64; HAND_SLOTS as usize],
    rng: Rng,
    tally: Tally,
}

impl<'h> Worker<'h> {
    /// Claims a new hand: its index by `fetch_add`, its block recorded in the board.
    fn start(heap: &'h Heap, board: Offset<Board>, seed: u64) -> Result<Self, String> {
        let h = word(heap, next_hand_off(board)).fetch_add(1, Ordering::Relaxed) as usize;
        if h >= MAX_HANDS {
            return Err(format!("the stress board's {MAX_HANDS} hands are used up"));
        }
        let hand = heap.alloc_in(hand_ptr_off(board, h), HAND_BYTES).map_err(|e| format!("a hand: {e}"))?;
        for k in 0..2 + HAND_SLOTS {
            word(heap, hand + 8 * k).store(0, Ordering::Relaxed);
        }
        word(heap, hand + 8).store(u64::from(std::process::id()), Ordering::Relaxed);
        let rng = Rng(seed ^ (h as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Ok(Self { heap, board, hand, held: [0; HAND_SLOTS as usize], rng, tally: Tally::default() })
    }

    fn run(mut self, deadline: Instant) -> Result<Tally, String> {
        while Instant::now() < deadline {
            for _ in 0..64 {
                self.step()?;
                self.tally.ops += 1;
            }
            word(self.heap, self.hand).store(self.tally.ops, Ordering::Relaxed);
        }
        for k in 0..HAND_SLOTS {
            if self.held[k as usize] != 0 {
                self.free(k)?;
            }
        }
        Ok(self.tally)
    }

    fn step(&mut self) -> Result<(), String> {
        let k = self.rng.below(HAND_SLOTS);
        let e = self.rng.below(EXCHANGE as u64) as usize;
        match (self.held[k as usize], self.rng.below(4)) {
            (0, 0 | 1) => self.alloc(k),
            (0, _) => self.take(k, e),
            (_, 0 | 1) => self.free(k),
            (_, _) => self.give(k, e),
        }
    }

    /// A size: mostly small, some up to 64 KiB, a few above the largest size class.
    fn size(&mut self) -> u64 {
        match self.rng.below(100) {
            0 => 520 << 10,
            1..=9 => 16 + self.rng.below(64 << 10),
            _ => 16 + self.rng.below(4080),
        }
    }

    fn alloc(&mut self, k: u64) -> Result<(), String> {
        let len = self.size();
        let off =
            self.heap.alloc_in(slot_off(self.hand, k), len).map_err(|e| format!("alloc_in {len}: {e}"))?;
        fill(self.heap, off, len)?;
        self.held[k as usize] = off;
        self.tally.allocs += 1;
        Ok(())
    }

    fn free(&mut self, k: u64) -> Result<(), String> {
        let off = self.held[k as usize];
        if verify(self.heap, off)? != Verdict::Good {
            return Err(format!("block {off} in hand slot {k} does not hold what was written"));
        }
        self.heap.free(off).map_err(|e| format!("free {off}: {e}"))?;
        word(self.heap, slot_off(self.hand, k)).store(0, Ordering::Relaxed);
        self.held[k as usize] = 0;
        self.tally.frees += 1;
        Ok(())
    }

    fn give(&mut self, k: u64, e: usize) -> Result<(), String> {
        let off = self.held[k as usize];
        // SYNC: Release pairs with the Acquire load in `take`: the taker sees the contents.
        let x = word(self.heap, exchange_off(self.board, e));
        if x.compare_exchange(0, off, Ordering::Release, Ordering::Relaxed).is_ok() {
            word(self.heap, slot_off(self.hand, k)).store(0, Ordering::Relaxed);
            self.held[k as usize] = 0;
            self.tally.given += 1;
        }
        Ok(())
    }

    fn take(&mut self, k: u64, e: usize) -> Result<(), String> {
        let x = word(self.heap, exchange_off(self.board, e));
        // SYNC: Acquire pairs with the Release CAS in `give`.
        let off = x.load(Ordering::Acquire);
        if off == 0 {
            return Ok(());
        }
        let slot = word(self.heap, slot_off(self.hand, k));
        slot.store(off, Ordering::Relaxed); // named here before it leaves the exchange
                                            // SYNC: Acquire, as the load: the slot may have been emptied and filled again with
                                            // this offset since, by another giver, whose contents must be seen.
        if x.compare_exchange(off, 0, Ordering::Acquire, Ordering::Relaxed).is_err() {
            slot.store(0, Ordering::Relaxed); // another taker won
            return Ok(());
        }
        self.held[k as usize] = off;
        self.tally.taken += 1;
        if self.rng.below(2) == 0 {
            self.tally.taken_freed += 1; // most taken blocks are another thread heap's
            return self.free(k);
        }
        Ok(())
    }
}

/// Writes a block's contents: a pattern after the stamp, then the stamp (offset, length),
/// so that a block whose stamp is whole has its whole pattern.
fn fill(heap: &Heap, off: u64, len: u64) -> Result<(), String> {
    let len = len.max(16);
    let body: Vec<u8> = (16..len).map(|i| byte(off, i)).collect();
    // Inside the block (`Heap::write` takes a block's start): within its usable size.
    heap.segment().write_bytes(off + 16, &body).map_err(|e| format!("write {off}: {e}"))?;
    let mut stamp = [0u8; 16];
    stamp[..8].copy_from_slice(&(off ^ STAMP).to_le_bytes());
    stamp[8..].copy_from_slice(&len.to_le_bytes());
    heap.write(off, &stamp).map_err(|e| format!("write {off}: {e}"))
}

fn byte(off: u64, i: u64) -> u8 {
    ((off + i).wrapping_mul(0x9E37_79B9) >> 13) as u8
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Stamp and pattern as written.
    Good,
    /// No stamp: allocated by a worker that died before writing it.
    Unwritten,
    /// A stamp and a wrong pattern, or a stamp that does not fit the block.
    Bad,
}

fn verify(heap: &Heap, off: u64) -> Result<Verdict, String> {
    let usable = heap.usable_size(off).map_err(|e| format!("block {off}: {e}"))?;
    let mut stamp = [0u8; 16];
    heap.read(off, &mut stamp).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(stamp[8..].try_into().expect("8 bytes"));
    if u64::from_le_bytes(stamp[..8].try_into().expect("8 bytes")) != off ^ STAMP {
        return Ok(Verdict::Unwritten);
    }
    if !(16..=usable).contains(&len) {
        return Ok(Verdict::Bad);
    }
    let mut body = vec![0u8; (len - 16) as usize];
    heap.segment().read_bytes(off + 16, &mut body).map_err(|e| e.to_string())?;
    let good = body.iter().zip(16..).all(|(&b, i)| b == byte(off, i));
    Ok(if good { Verdict::Good } else { Verdict::Bad })
}

/// What the audit found.
struct Held {
    /// Allocated blocks some slot names, the board's own blocks included.
    blocks: BTreeSet<u64>,
    /// The data blocks among them (not the board, not hands).
    data: BTreeSet<u64>,
    bytes: u64,
}

/// Every allocated block the board names: the board, the hands, and what the hands and
/// the exchange name (each once, whatever names it twice).
fn held(heap: &Heap, b: Offset<Board>) -> Held {
    let alloc = |off: u64| (off != 0).then(|| heap.usable_size(off).ok()).flatten();
    let mut out = Held { blocks: BTreeSet::new(), data: BTreeSet::new(), bytes: 0 };
    let hands = (word(heap, next_hand_off(b)).load(Ordering::Acquire) as usize).min(MAX_HANDS);
    let mut named: Vec<u64> =
        (0..EXCHANGE).map(|e| word(heap, exchange_off(b, e)).load(Ordering::Acquire)).collect();
    out.blocks.insert(b.get());
    for h in 0..hands {
        let hand = word(heap, hand_ptr_off(b, h)).load(Ordering::Acquire);
        if alloc(hand).is_some_and(|n| n >= HAND_BYTES) {
            out.blocks.insert(hand);
            named.extend((0..HAND_SLOTS).map(|k| word(heap, slot_off(hand, k)).load(Ordering::Acquire)));
        }
    }
    for off in named {
        if alloc(off).is_some() && out.blocks.insert(off) {
            out.data.insert(off);
        }
    }
    out.bytes = out.blocks.iter().filter_map(|&off| alloc(off)).sum();
    out
}

/// `--audit`: recovers, then compares what the board holds with what the heap says is
/// allocated; with `release`, frees every data block the board holds (checking its
/// contents) and audits again. Returns the report and whether nothing was lost.
pub fn audit(seg: Segment, release: bool) -> Result<(String, bool), String> {
    if !seg.is_writable() {
        return Err("the audit recovers the heap: it needs the segment read-write".into());
    }
    let heap = Heap::attach(seg).map_err(|e| e.to_string())?;
    heap.recover();
    let b = board(&heap)?;
    let (mut out, mut whole) = audit_line(&heap, b)?;
    if release {
        let held = held(&heap, b);
        let mut bad = 0;
        for &off in &held.data {
            if verify(&heap, off)? == Verdict::Bad {
                bad += 1;
            }
            heap.free(off).map_err(|e| format!("free {off}: {e}"))?;
        }
        for e in 0..EXCHANGE {
            word(&heap, exchange_off(b, e)).store(0, Ordering::Relaxed);
        }
        let (after, whole_after) = audit_line(&heap, b)?;
        let left = held.blocks.len() - held.data.len();
        out.push_str(&format!(
            "\nreleased {} blocks ({bad} with wrong contents); {left} board and hand blocks stay\n{after}",
            held.data.len()
        ));
        whole &= whole_after && bad == 0;
    }
    Ok((out, whole))
}

fn audit_line(heap: &Heap, b: Offset<Board>) -> Result<(String, bool), String> {
    let walk = heap.check().map_err(|e| format!("the heap is broken: {e}"))?;
    let held = held(heap, b);
    let lost = walk.capacity_bytes as i64 - (walk.free_bytes + held.bytes) as i64;
    let line = format!(
        "audit: held_blocks={} held_bytes={} allocated_bytes={} free_bytes={} capacity_bytes={} lost_bytes={lost} ({} held, {} free of {})",
        held.blocks.len(),
        held.bytes,
        walk.allocated_bytes,
        walk.free_bytes,
        walk.capacity_bytes,
        human(held.bytes),
        human(walk.free_bytes),
        human(walk.capacity_bytes)
    );
    Ok((line, lost == 0))
}
