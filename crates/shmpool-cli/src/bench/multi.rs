//! The multi-process workloads: W3 (two processes, attached by name, running W1 at once)
//! and W4 (process A allocates and hands blocks to process B through a ring in the
//! segment; B checks and frees them — remote frees), with the bare ring as its ceiling
//! and the same handoff of blocks from a pool allocated in advance (`W4-pool`: no
//! allocation or free at all, only the blocks' cache lines moving between the cores).

use super::{Plan, Spread};
use crate::child::{fork, wait_all, Forked};
use shmpool::heap::Heap;
use shmpool::segment::Access;
use shmpool::{Segment, SegmentOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(super) const DEADLINE: Duration = Duration::from_secs(120);

/// A named heap for the run, unlinked when dropped.
pub(super) struct Shared {
    name: String,
    pub(super) heap: Heap,
    ctl: u64,
}

impl Shared {
    pub(super) fn new(tag: &str) -> Result<Self, String> {
        let name = format!("shmpool-bench-{tag}-{}", std::process::id());
        let seg = SegmentOptions::new().max_size(4 << 30).create_shm(&name).map_err(|e| e.to_string())?;
        let heap = Heap::create(seg).map_err(|e| e.to_string())?;
        let ctl = heap.alloc_zeroed(64 * 1024).map_err(|e| e.to_string())?;
        Ok(Self { name, heap, ctl })
    }

    /// Control word `i` (each on its own cache line for i < 64... callers space them).
    pub(super) fn word(&self, i: u64) -> &AtomicU64 {
        self.heap.segment().atomic_u64(self.ctl + 8 * i).expect("control block")
    }

    /// A fresh attach by name, as an unrelated process would do.
    pub(super) fn attach(&self) -> Heap {
        let seg = Segment::open_shm(&self.name, Access::ReadWrite).expect("attach by name");
        Heap::attach(seg).expect("a heap")
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = Segment::unlink_shm(&self.name);
    }
}

pub(super) fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

pub(super) fn spin_until(cond: impl Fn() -> bool) {
    while !cond() {
        std::hint::spin_loop();
        std::thread::yield_now();
    }
}

const GO: u64 = 0;
const READY: u64 = 8;
const TIMES: u64 = 16; // start, end pairs of each process, 8 words apart

/// W1 in `procs` processes at once; returns aggregate pairs per microsecond (Mpairs/s).
fn w3_once(sh: &Shared, procs: u64, n: u64) -> Result<f64, String> {
    at_once(sh, procs, n, &super::single::w1_pairs)
}

/// `body(heap, k)` (k operations on the heap or a pool in it) in `procs` processes at
/// once, each attached by name: an untimed warm-up of n/4, then n timed. Returns the
/// aggregate operations per microsecond (millions per second): all of them over the
/// span from the first start to the last end.
pub(super) fn at_once(
    sh: &Shared,
    procs: u64,
    n: u64,
    body: &(dyn Fn(&Heap, u64) + Sync),
) -> Result<f64, String> {
    for i in 0..TIMES + 16 * procs {
        sh.word(i).store(0, Ordering::Relaxed);
    }
    let children: Vec<Forked> = (0..procs)
        .map(|p| {
            fork(|| {
                let heap = sh.attach();
                body(&heap, n / 4);
                sh.word(READY).fetch_add(1, Ordering::AcqRel);
                spin_until(|| sh.word(GO).load(Ordering::Acquire) != 0);
                let start = mono_ns();
                body(&heap, n);
                sh.word(TIMES + 16 * p).store(start, Ordering::Relaxed);
                sh.word(TIMES + 16 * p + 8).store(mono_ns(), Ordering::Release);
                0
            })
        })
        .collect::<Result<_, _>>()?;
    spin_until(|| sh.word(READY).load(Ordering::Acquire) == procs);
    sh.word(GO).store(1, Ordering::Release);
    wait_all(&children, DEADLINE)?;
    let first = (0..procs).map(|p| sh.word(TIMES + 16 * p).load(Ordering::Acquire)).min().unwrap_or(0);
    let last = (0..procs).map(|p| sh.word(TIMES + 16 * p + 8).load(Ordering::Acquire)).max().unwrap_or(0);
    Ok((procs * n) as f64 / (last - first).max(1) as f64 * 1000.0)
}

pub fn w3(plan: &Plan) -> Result<String, String> {
    let sh = Shared::new("w3")?;
    let (mut agg, mut one, mut scaling) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.reps {
        let o = w3_once(&sh, 1, plan.n)?;
        let a = w3_once(&sh, 2, plan.n)?;
        one.push(o);
        agg.push(a);
        scaling.push(a / o);
    }
    let (agg, one, scaling) = (Spread::of(agg), Spread::of(one), Spread::of(scaling));
    Ok(format!(
        "shmpool W3 agg_mpairs_s={:.1} scaling={:.2} one_proc_mpairs_s={:.1} min={:.1} max={:.1} reps={}",
        agg.median, scaling.median, one.median, agg.min, agg.max, plan.reps
    ))
}

const RING: u64 = 1024;
// Ring layout in the control block (word indices): tail and head on their own lines.
const TAIL: u64 = 512;
const HEAD: u64 = 520;
const SLOTS: u64 = 528;

/// One W4 run; `with_heap` false passes bare integers. Returns Mblocks/s.
/// What W4's producer hands over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handoff {
    /// Plain integers (`W4-ring`).
    Integers,
    /// Blocks it allocates; the consumer frees them (`W4`).
    Allocated,
    /// Blocks of a pool allocated before the clock starts, reused round-robin and never
    /// freed (`W4-pool`). The pool is larger than the ring, so a block comes round again
    /// only after the consumer is done with it.
    Pooled,
}

/// Blocks in `Handoff::Pooled`'s pool.
const POOL: u64 = 4 * RING;

fn w4_once(sh: &Shared, n: u64, mode: Handoff) -> Result<f64, String> {
    let with_heap = mode != Handoff::Integers;
    for i in [GO, READY, TAIL, HEAD, TIMES, TIMES + 8] {
        sh.word(i).store(0, Ordering::Relaxed);
    }
    let producer = fork(|| {
        let heap = sh.attach();
        let base = heap.segment().backend().base().as_ptr();
        let pool: Vec<u64> = match mode {
            Handoff::Pooled => (0..POOL).map(|_| heap.alloc(64).expect("alloc")).collect(),
            _ => Vec::new(),
        };
        sh.word(READY).fetch_add(1, Ordering::AcqRel);
        spin_until(|| sh.word(GO).load(Ordering::Acquire) != 0);
        sh.word(TIMES).store(mono_ns(), Ordering::Relaxed);
        for i in 0..n {
            let v = if with_heap {
                let o = match mode {
                    Handoff::Pooled => pool[(i % POOL) as usize],
                    _ => heap.alloc(64).expect("alloc"),
                };
                // SAFETY: a live 64-byte block inside the mapping.
                unsafe { base.add(o as usize).cast::<u64>().write_volatile(i) };
                o
            } else {
                i
            };
            // SYNC: Acquire pairs with the consumer's Release store of HEAD (slot free).
            spin_until(|| i - sh.word(HEAD).load(Ordering::Acquire) < RING);
            sh.word(SLOTS + i % RING).store(v, Ordering::Relaxed);
            // SYNC: Release pairs with the consumer's Acquire load of TAIL.
            sh.word(TAIL).store(i + 1, Ordering::Release);
        }
        0
    })?;
    let consumer = fork(|| {
        let heap = sh.attach();
        let base = heap.segment().backend().base().as_ptr();
        sh.word(READY).fetch_add(1, Ordering::AcqRel);
        for i in 0..n {
            spin_until(|| sh.word(TAIL).load(Ordering::Acquire) > i);
            let v = sh.word(SLOTS + i % RING).load(Ordering::Relaxed);
            sh.word(HEAD).store(i + 1, Ordering::Release);
            if with_heap {
                // SAFETY: the block was published through the ring (Release/Acquire).
                let got = unsafe { base.add(v as usize).cast::<u64>().read_volatile() };
                if got != i {
                    return 3;
                }
                if mode == Handoff::Allocated {
                    heap.free(v).expect("free");
                }
            } else if v != i {
                return 3;
            }
        }
        sh.word(TIMES + 8).store(mono_ns(), Ordering::Release);
        0
    })?;
    let children = [producer, consumer];
    spin_until(|| sh.word(READY).load(Ordering::Acquire) == 2);
    sh.word(GO).store(1, Ordering::Release);
    wait_all(&children, DEADLINE)?;
    let (start, end) = (sh.word(TIMES).load(Ordering::Acquire), sh.word(TIMES + 8).load(Ordering::Acquire));
    Ok(n as f64 / (end - start).max(1) as f64 * 1000.0)
}

pub fn w4(plan: &Plan) -> Result<Vec<String>, String> {
    let sh = Shared::new("w4")?;
    let n = plan.handoffs;
    w4_once(&sh, n / 4, Handoff::Allocated)?;
    let modes = [Handoff::Integers, Handoff::Allocated, Handoff::Pooled];
    let mut rates: [Vec<f64>; 3] = Default::default();
    let (mut vs_ring, mut vs_pool) = (Vec::new(), Vec::new());
    for _ in 0..plan.reps {
        // Side by side, so each ratio is taken at one moment of this noisy machine.
        let mut got = [0.0; 3];
        for (k, &mode) in modes.iter().enumerate() {
            got[k] = w4_once(&sh, n, mode)?;
            rates[k].push(got[k]);
        }
        vs_ring.push(got[1] / got[0]);
        vs_pool.push(got[1] / got[2]);
    }
    let [ring, blocks, pool] = rates.map(Spread::of);
    let (vs_ring, vs_pool) = (Spread::of(vs_ring).median, Spread::of(vs_pool).median);
    let line = |name: &str, s: &Spread, extra: &str| {
        format!(
            "shmpool {name} mblocks_s={:.2} min={:.2} max={:.2} reps={} ring={RING}{extra}",
            s.median, s.min, s.max, plan.reps
        )
    };
    Ok(vec![
        line("W4", &blocks, &format!(" vs_ring={vs_ring:.2} vs_pool={vs_pool:.2}")),
        line("W4-ring", &ring, ""),
        line("W4-pool", &pool, &format!(" pool={POOL}")),
    ])
}

/// Recovery: a child fills a heap with blocks of 16 B to 4 KiB (about 256 MiB asked for,
/// every other block freed) and is killed; `Heap::recover` rebuilds its thread heap. The
/// figure is milliseconds per GiB of arena the dead process's slabs held.
pub fn recovery(plan: &Plan) -> Result<String, String> {
    const ASK: u64 = 256 << 20;
    let mut per_gib = Vec::new();
    let mut held = 0;
    for _ in 0..plan.reps {
        let seg =
            SegmentOptions::new().max_size(2 << 30).create_memfd("recovery").map_err(|e| e.to_string())?;
        let heap = Heap::create(seg).map_err(|e| e.to_string())?;
        let h = &heap;
        let child = fork(move || {
            let mut rng = super::single::SplitMix(0x5EED);
            let mut asked = 0;
            let mut blocks = Vec::new();
            while asked < ASK {
                let size = 16 + rng.next() % 4081;
                blocks.push(h.alloc(size).expect("alloc"));
                asked += size;
            }
            for off in blocks.iter().step_by(2) {
                h.free(*off).expect("free");
            }
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
            0
        })?;
        let deadline = Instant::now() + DEADLINE;
        while child.poll()?.is_none() {
            if Instant::now() > deadline {
                child.kill();
                return Err("the recovery bench's child did not die".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let stats = heap.stats();
        held = stats.arena_bytes - stats.free_unit_bytes;
        let mut report = None;
        let ns = super::time_ns(|| report = Some(heap.recover()));
        if report.as_ref().is_none_or(|r| r.thread_heaps != 1) {
            return Err(format!("recovery found {report:?}, not the dead child's thread heap"));
        }
        per_gib.push(ns / 1e6 / (held as f64 / f64::from(1u32 << 30)));
    }
    let s = Spread::of(per_gib);
    Ok(format!(
        "shmpool recovery ms_per_gib={:.1} min={:.1} max={:.1} reps={} heap_mib={}",
        s.median,
        s.min,
        s.max,
        plan.reps,
        held >> 20
    ))
}
