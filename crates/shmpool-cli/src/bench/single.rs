//! The single-process workloads: W1 (64-byte alloc+free pairs), W2 (mixed sizes, freed
//! in a shuffled order) and W5 (memory consumed by a million live 64-byte blocks).
#![allow(unsafe_code)]

use super::{repeat_pair, time_ns, Plan, Spread};
use mimalloc::MiMalloc;
use shmpool::heap::Heap;
use shmpool::SegmentOptions;
use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

pub(super) fn fresh_heap(max: u64) -> Result<Heap, String> {
    let seg = SegmentOptions::new().max_size(max).create_memfd("bench").map_err(|e| e.to_string())?;
    Heap::create(seg).map_err(|e| e.to_string())
}

/// Writes `v` into the block at `off` through the mapping, as a zero-copy user would.
#[inline(always)]
pub(super) fn poke(base: *mut u8, off: u64, v: u64) {
    // SAFETY: `off` is a live block of at least 8 bytes, 16-aligned, inside the mapping.
    unsafe { base.add(off as usize).cast::<u64>().write_volatile(v) }
}

/// How a workload's figure is named: time per unit of work, and the rate (millions/s).
pub(super) struct Metric {
    pub(super) unit: &'static str,
    pub(super) rate: &'static str,
}

pub(super) const PAIRS: Metric = Metric { unit: "ns_per_pair", rate: "mpairs_s" };
const OPS: Metric = Metric { unit: "ns_per_op", rate: "mops_s" };

pub(super) fn line(who: &str, w: &str, m: &Metric, s: Spread, reps: usize, extra: &str) -> String {
    format!(
        "{who} {w} {}={:.1} {}={:.1} min={:.1} max={:.1} reps={reps}{extra}",
        m.unit,
        s.median,
        m.rate,
        1000.0 / s.median,
        s.min,
        s.max
    )
}

pub fn w1(plan: &Plan) -> Result<Vec<String>, String> {
    let heap = fresh_heap(1 << 30)?;
    let n = plan.n;
    let pairs = |k: u64| w1_pairs(&heap, k);
    let layout = Layout::from_size_align(64, 16).expect("layout");
    let mi = |k: u64| {
        for i in 0..k {
            // SAFETY: a valid layout; the block is written inside its 64 bytes and freed
            // with the same layout.
            unsafe {
                let p = black_box(MiMalloc.alloc(layout));
                p.cast::<u64>().write_volatile(i);
                MiMalloc.dealloc(p, layout);
            }
        }
    };
    pairs(n / 4);
    mi(n / 4);
    let (ours, theirs, ratio) =
        repeat_pair(plan.reps, || time_ns(|| pairs(n)) / n as f64, || time_ns(|| mi(n)) / n as f64);
    let ratio = format!(" vs_mimalloc={ratio:.2}");
    Ok(vec![
        line("shmpool", "W1", &PAIRS, ours, plan.reps, &ratio),
        line("mimalloc", "W1", &PAIRS, theirs, plan.reps, ""),
    ])
}

/// W1's loop: `k` pairs of `alloc(64)`, a write of one u64, `free`.
pub(super) fn w1_pairs(heap: &Heap, k: u64) {
    let base = heap.segment().backend().base().as_ptr();
    for i in 0..k {
        let o = heap.alloc(64).expect("alloc");
        poke(base, o, i);
        heap.free(o).expect("free");
    }
}

/// SplitMix64, as BENCH.md specifies it.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

const K: usize = 10_000;
const R: usize = 20;

/// W2's rounds: sizes, then the free order, from SplitMix64 seeded with 0x5EED.
fn w2_rounds() -> Vec<(Vec<u64>, Vec<usize>)> {
    let mut rng = SplitMix(0x5EED);
    (0..R)
        .map(|_| {
            let sizes: Vec<u64> = (0..K).map(|_| 16 + rng.next() % 4081).collect();
            let mut perm: Vec<usize> = (0..K).collect();
            for i in (1..K).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                perm.swap(i, j);
            }
            (sizes, perm)
        })
        .collect()
}

pub fn w2(plan: &Plan) -> Result<Vec<String>, String> {
    let rounds = w2_rounds();
    let ops = (2 * K * R) as f64;
    let heap = fresh_heap(1 << 30)?;
    let base = heap.segment().backend().base().as_ptr();
    let mut offs = vec![0u64; K];
    let ours = || {
        time_ns(|| {
            for (sizes, perm) in &rounds {
                for (o, &s) in offs.iter_mut().zip(sizes) {
                    *o = heap.alloc(s).expect("alloc");
                    // SAFETY: a fresh block of at least 16 bytes.
                    unsafe { base.add(*o as usize).write_volatile(1) };
                }
                for &i in perm {
                    heap.free(offs[i]).expect("free");
                }
            }
        }) / ops
    };
    let mut ptrs = vec![std::ptr::null_mut::<u8>(); K];
    let theirs = || {
        time_ns(|| {
            for (sizes, perm) in &rounds {
                for (p, &s) in ptrs.iter_mut().zip(sizes) {
                    let layout = Layout::from_size_align(s as usize, 16).expect("layout");
                    // SAFETY: valid layout; the first byte is inside the block.
                    unsafe {
                        *p = MiMalloc.alloc(layout);
                        p.write_volatile(1);
                    }
                }
                for &i in perm {
                    let layout = Layout::from_size_align(sizes[i] as usize, 16).expect("layout");
                    // SAFETY: allocated above with this layout, freed once.
                    unsafe { MiMalloc.dealloc(ptrs[i], layout) };
                }
            }
        }) / ops
    };
    let (ours, theirs, ratio) = repeat_pair(plan.reps, ours, theirs);
    let extra = |me: bool| {
        let r = if me { format!(" vs_mimalloc={ratio:.2}") } else { String::new() };
        format!(" K={K} R={R}{r}")
    };
    Ok(vec![
        line("shmpool", "W2", &OPS, ours, plan.reps, &extra(true)),
        line("mimalloc", "W2", &OPS, theirs, plan.reps, &extra(false)),
    ])
}

pub fn w5() -> Result<String, String> {
    const N: u64 = 1_000_000;
    let heap = fresh_heap(1 << 30)?;
    let used = |h: &Heap| {
        let s = h.stats();
        // units holding slabs or large blocks, plus their unit-table words
        let bytes = s.arena_bytes - s.free_unit_bytes;
        bytes + bytes / shmpool::pages::UNIT * 8
    };
    let before = used(&heap);
    let blocks: Vec<u64> = (0..N).map(|_| heap.alloc(64).expect("alloc")).collect();
    let consumed = used(&heap) - before;
    drop(blocks);
    Ok(format!(
        "shmpool W5 bytes_per_alloc={:.1} overhead_ratio={:.3} consumed_bytes={consumed}",
        consumed as f64 / N as f64,
        consumed as f64 / (64 * N) as f64
    ))
}
