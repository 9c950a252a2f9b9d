//! The pools beside the heap: a `SlotPool` loan+return, a `FreeList` alloc+free and a
//! `BumpArena` alloc, each with the same write of one u64 as W1, in one process (each
//! repetition alternated with one of the heap's W1, so `vs_w1` is taken at one moment of
//! the machine) and in two processes at once on one shared pool (beside W3, the heap's
//! W1 in two processes, likewise alternated).

use super::multi::{at_once, Shared};
use super::single::{fresh_heap, line, poke, w1_pairs, Metric, PAIRS};
use super::{repeat_pair, time_ns, Plan, Spread};
use shmpool::heap::Heap;
use shmpool::pools::{BlockError, BumpArena, FreeList, SlotPool};

const SLOTS: u64 = 1024;
const SLOT: u64 = 64;
/// The arena is reset when full: every 256 Ki allocations of 64 bytes.
const ARENA: u64 = 16 << 20;

const ALLOCS: Metric = Metric { unit: "ns_per_alloc", rate: "mallocs_s" };

/// One pool workload: its name, unit, and its loop of `k` operations on `heap`.
struct Workload {
    name: &'static str,
    metric: &'static Metric,
    run: fn(&Heap, u64),
}

const WORKLOADS: [Workload; 3] = [
    Workload { name: "pool-slots", metric: &PAIRS, run: slot_pairs },
    Workload { name: "pool-freelist", metric: &PAIRS, run: freelist_pairs },
    Workload { name: "pool-bump", metric: &ALLOCS, run: bump_allocs },
];

fn slot_pairs(heap: &Heap, k: u64) {
    let pool = SlotPool::named(heap, "bench-slots", SLOT, SLOTS).expect("slot pool");
    let base = heap.segment().backend().base().as_ptr();
    for i in 0..k {
        let l = pool.try_loan().expect("a free slot");
        poke(base, l.offset(), i);
        drop(l);
    }
}

fn freelist_pairs(heap: &Heap, k: u64) {
    let list = FreeList::named(heap, "bench-list", SLOT, SLOTS).expect("free list");
    let base = heap.segment().backend().base().as_ptr();
    for i in 0..k {
        let o = list.alloc().expect("a free slot");
        poke(base, o, i);
        list.free(o).expect("free");
    }
}

fn bump_allocs(heap: &Heap, k: u64) {
    let arena = BumpArena::named(heap, "bench-arena", ARENA).expect("arena");
    let base = heap.segment().backend().base().as_ptr();
    for i in 0..k {
        let o = match arena.alloc(SLOT, 16) {
            Ok(o) => o,
            Err(BlockError::Exhausted) => {
                arena.reset(); // a racing process's blocks go too: the bench never reads them
                arena.alloc(SLOT, 16).expect("an empty arena")
            }
            Err(e) => panic!("bump: {e}"),
        };
        poke(base, o, i);
    }
}

/// One process: each pool workload alternated with W1 on the same heap.
fn single(plan: &Plan) -> Result<Vec<String>, String> {
    let heap = fresh_heap(1 << 30)?;
    let n = plan.n;
    let mut out = Vec::new();
    let mut w1 = Vec::new();
    for w in &WORKLOADS {
        let per_op = |f: fn(&Heap, u64)| time_ns(|| f(&heap, n)) / n as f64;
        (w.run)(&heap, n / 4);
        let (ours, theirs, ratio) = repeat_pair(plan.reps, || per_op(w.run), || per_op(w1_pairs));
        out.push(line("shmpool", w.name, w.metric, ours, plan.reps, &format!(" vs_w1={ratio:.2}")));
        w1.push(theirs.median);
    }
    let w1 = Spread::of(w1);
    out.push(line("shmpool", "pools-W1", &PAIRS, w1, plan.reps, " (W1 measured beside the pool lines)"));
    Ok(out)
}

/// Two processes at once on one pool (and W3 on the heap beside each), plus one process
/// in the same harness for the scaling.
fn two(plan: &Plan) -> Result<Vec<String>, String> {
    let sh = Shared::new("pools")?;
    let mut out = Vec::new();
    for w in &WORKLOADS {
        let (mut agg, mut one, mut vs_w3) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..plan.reps {
            one.push(at_once(&sh, 1, plan.n, &w.run)?);
            let a = at_once(&sh, 2, plan.n, &w.run)?;
            let w3 = at_once(&sh, 2, plan.n, &w1_pairs)?;
            agg.push(a);
            vs_w3.push(a / w3);
        }
        let scaling: Vec<f64> = agg.iter().zip(&one).map(|(a, o)| a / o).collect();
        let (agg, one) = (Spread::of(agg), Spread::of(one));
        out.push(format!(
            "shmpool {}-2p agg_{}={:.1} scaling={:.2} one_proc={:.1} min={:.1} max={:.1} reps={} agg_vs_w3={:.2}",
            w.name,
            w.metric.rate,
            agg.median,
            Spread::of(scaling).median,
            one.median,
            agg.min,
            agg.max,
            plan.reps,
            Spread::of(vs_w3).median
        ));
    }
    Ok(out)
}

pub fn lines(plan: &Plan) -> Result<Vec<String>, String> {
    let mut out = single(plan)?;
    out.extend(two(plan)?);
    Ok(out)
}
