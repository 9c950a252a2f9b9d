//! Channels and the mutex beside their references, in the same run: one-way latency
//! (half a round trip; p50 and p99) and throughput of SPSC and MPMC channels between
//! two processes, with 8 B (one integer, as the ring), 64 B and 4 KiB messages, next to
//! a bare ring of integers (plain stores and spinning, no futex); and `sync::Mutex` lock+unlock, uncontended and with
//! two processes contending, next to a process-shared pthread mutex.
#![allow(unsafe_code)]

use super::multi::{mono_ns, spin_until, Shared, DEADLINE};
use super::{Plan, Spread};
use crate::child::{fork, wait_all};
use shmpool::channel::{Mpmc, Spsc};
use shmpool::heap::Heap;
use shmpool::sync::Mutex;
use shmpool::ShmSafe;
use std::sync::atomic::Ordering;

// Control words (indices into `Shared::word`), away from the other workloads'.
const READY: u64 = 1024;
const GO: u64 = 1032;
const P50: u64 = 1040;
const P99: u64 = 1048;
const START: u64 = 1056;
const END: u64 = 1064;
// The bare ring: tail and head on their own lines, then its slots.
const RING_TAIL: u64 = 1088;
const RING_HEAD: u64 = 1096;
const RING_SLOTS: u64 = 1104;
const RING: u64 = 64;
const CAP: u32 = 64;

/// A message of `W` words whose first word is its sequence number.
#[derive(ShmSafe, Clone, Copy, Debug)]
#[repr(C)]
struct Msg<const W: usize>([u64; W]);

impl<const W: usize> Msg<W> {
    fn new(i: u64) -> Self {
        let mut m = Msg([0; W]);
        m.0[0] = i;
        m.0[W - 1] = i;
        m
    }

    fn seq(&self) -> u64 {
        self.0[0]
    }
}

/// One end of a channel kind, as the harness drives it.
trait Link {
    fn send(&mut self, i: u64);
    fn recv(&mut self) -> u64;
}

/// Which channel carries the messages: the two directions (`a` → `b`, and back).
#[derive(Clone, Copy)]
enum Kind {
    Spsc,
    Mpmc,
    Ring,
}

struct SpscLink<'a, const W: usize>(
    shmpool::channel::Sender<'a, Msg<W>>,
    shmpool::channel::Receiver<'a, Msg<W>>,
);

impl<const W: usize> Link for SpscLink<'_, W> {
    fn send(&mut self, i: u64) {
        self.0.send(Msg::new(i)).expect("send");
    }
    fn recv(&mut self) -> u64 {
        self.1.recv().unwrap_or_else(|e| panic!("recv: {e:?}")).seq()
    }
}

struct MpmcLink<'a, const W: usize>(
    shmpool::channel::MpmcSender<'a, Msg<W>>,
    shmpool::channel::MpmcReceiver<'a, Msg<W>>,
);

impl<const W: usize> Link for MpmcLink<'_, W> {
    fn send(&mut self, i: u64) {
        self.0.send(Msg::new(i)).expect("send");
    }
    fn recv(&mut self) -> u64 {
        self.1.recv().unwrap_or_else(|e| panic!("recv: {e:?}")).seq()
    }
}

/// A bare ring of integers in the control block, one direction.
struct RingEnd<'a> {
    sh: &'a Shared,
    base: u64,
    next: u64,
}

impl RingEnd<'_> {
    fn send(&mut self, v: u64) {
        let (tail, head) = (self.sh.word(self.base + RING_TAIL), self.sh.word(self.base + RING_HEAD));
        // SYNC: Acquire pairs with the reader's Release store of the head.
        spin_until_fast(|| self.next - head.load(Ordering::Acquire) < RING);
        self.sh.word(self.base + RING_SLOTS + self.next % RING).store(v, Ordering::Relaxed);
        self.next += 1;
        // SYNC: Release pairs with the reader's Acquire load of the tail.
        tail.store(self.next, Ordering::Release);
    }

    fn recv(&mut self) -> u64 {
        let (tail, head) = (self.sh.word(self.base + RING_TAIL), self.sh.word(self.base + RING_HEAD));
        // SYNC: Acquire pairs with the writer's Release store of the tail.
        spin_until_fast(|| tail.load(Ordering::Acquire) > self.next);
        let v = self.sh.word(self.base + RING_SLOTS + self.next % RING).load(Ordering::Relaxed);
        self.next += 1;
        // SYNC: Release pairs with the writer's Acquire load of the head.
        head.store(self.next, Ordering::Release);
        v
    }
}

fn spin_until_fast(cond: impl Fn() -> bool) {
    while !cond() {
        core::hint::spin_loop();
    }
}

struct RingLink<'a>(RingEnd<'a>, RingEnd<'a>);

impl Link for RingLink<'_> {
    fn send(&mut self, i: u64) {
        self.0.send(i);
    }
    fn recv(&mut self) -> u64 {
        self.1.recv()
    }
}

/// The ring directions' word bases: `a` → `b` at 0, back at 128.
const BACK: u64 = 128;

/// Runs `body` with side `a` (true) or `b` of a link of `kind` and `W` words.
fn with_link<const W: usize>(
    sh: &Shared,
    heap: &Heap,
    kind: Kind,
    a: bool,
    body: impl FnOnce(&mut dyn Link),
) {
    let names = if a { ["bench-ab", "bench-ba"] } else { ["bench-ba", "bench-ab"] };
    match kind {
        Kind::Spsc => {
            let out = Spsc::<Msg<W>>::named(heap, &format!("{}-{W}", names[0]), CAP).expect("ring");
            let inn = Spsc::<Msg<W>>::named(heap, &format!("{}-{W}", names[1]), CAP).expect("ring");
            body(&mut SpscLink(out.sender().expect("end"), inn.receiver().expect("end")));
        }
        Kind::Mpmc => {
            let out = Mpmc::<Msg<W>>::named(heap, &format!("m{}-{W}", names[0]), CAP).expect("ring");
            let inn = Mpmc::<Msg<W>>::named(heap, &format!("m{}-{W}", names[1]), CAP).expect("ring");
            body(&mut MpmcLink(out.sender().expect("end"), inn.receiver().expect("end")));
        }
        Kind::Ring => {
            let (o, i) = if a { (0, BACK) } else { (BACK, 0) };
            let next = |base: u64, tail: bool| {
                sh.word(base + if tail { RING_TAIL } else { RING_HEAD }).load(Ordering::Acquire)
            };
            let out = RingEnd { sh, base: o, next: next(o, true) };
            let inn = RingEnd { sh, base: i, next: next(i, false) };
            body(&mut RingLink(out, inn));
        }
    }
}

/// One measurement: `n` round trips (latency percentiles of half of each) then `n`
/// messages streamed from `a` to `b`. Returns (p50 ns, p99 ns, million messages/s).
fn once<const W: usize>(sh: &Shared, kind: Kind, n: u64) -> Result<(f64, f64, f64), String> {
    for w in [READY, GO, P50, P99, START, END] {
        sh.word(w).store(0, Ordering::Relaxed);
    }
    let a = fork(|| {
        let heap = sh.attach();
        with_link::<W>(sh, &heap, kind, true, |link| {
            sh.word(READY).fetch_add(1, Ordering::AcqRel);
            spin_until(|| sh.word(GO).load(Ordering::Acquire) != 0);
            for i in 0..n / 10 {
                link.send(i);
                link.recv();
            }
            let mut rtt: Vec<u64> = (0..n)
                .map(|i| {
                    let t = mono_ns();
                    link.send(i);
                    assert_eq!(link.recv(), i, "the echo");
                    mono_ns() - t
                })
                .collect();
            rtt.sort_unstable();
            sh.word(P50).store(rtt[rtt.len() / 2], Ordering::Relaxed);
            sh.word(P99).store(rtt[rtt.len() * 99 / 100], Ordering::Relaxed);
            sh.word(START).store(mono_ns(), Ordering::Release);
            for i in 0..n {
                link.send(i);
            }
            link.recv(); // the reader's "done"
        });
        0
    })?;
    let b = fork(|| {
        let heap = sh.attach();
        with_link::<W>(sh, &heap, kind, false, |link| {
            sh.word(READY).fetch_add(1, Ordering::AcqRel);
            for _ in 0..n / 10 + n {
                let v = link.recv();
                link.send(v);
            }
            for i in 0..n {
                assert_eq!(link.recv(), i, "in order");
            }
            sh.word(END).store(mono_ns(), Ordering::Release);
            link.send(0);
        });
        0
    })?;
    spin_until(|| sh.word(READY).load(Ordering::Acquire) == 2);
    sh.word(GO).store(1, Ordering::Release);
    wait_all(&[a, b], DEADLINE)?;
    let span = sh.word(END).load(Ordering::Acquire).saturating_sub(sh.word(START).load(Ordering::Acquire));
    let half = |w| sh.word(w).load(Ordering::Acquire) as f64 / 2.0;
    Ok((half(P50), half(P99), n as f64 / span.max(1) as f64 * 1000.0))
}

fn latency_lines(plan: &Plan, sh: &Shared) -> Result<Vec<String>, String> {
    let n = (plan.handoffs / 10).max(1000);
    type Run = fn(&Shared, Kind, u64) -> Result<(f64, f64, f64), String>;
    let cases: [(&str, Kind, Run); 7] = [
        ("chan-ring", Kind::Ring, once::<1>),
        ("chan-spsc-8B", Kind::Spsc, once::<1>),
        ("chan-mpmc-8B", Kind::Mpmc, once::<1>),
        ("chan-spsc-64B", Kind::Spsc, once::<8>),
        ("chan-spsc-4KiB", Kind::Spsc, once::<512>),
        ("chan-mpmc-64B", Kind::Mpmc, once::<8>),
        ("chan-mpmc-4KiB", Kind::Mpmc, once::<512>),
    ];
    let mut got: Vec<[Vec<f64>; 3]> = (0..cases.len()).map(|_| Default::default()).collect();
    let mut vs: Vec<[Vec<f64>; 2]> = (0..cases.len()).map(|_| Default::default()).collect();
    for _ in 0..plan.reps {
        let ring = once::<1>(sh, Kind::Ring, n)?;
        for (k, (_, kind, run)) in cases.iter().enumerate() {
            let (p50, p99, rate) = if k == 0 { ring } else { run(sh, *kind, n)? };
            got[k][0].push(p50);
            got[k][1].push(p99);
            got[k][2].push(rate);
            vs[k][0].push(p50 / ring.0);
            vs[k][1].push(rate / ring.2);
        }
    }
    Ok(cases
        .iter()
        .zip(got)
        .zip(vs)
        .map(|(((name, _, _), [p50, p99, rate]), [v50, vrate])| {
            let (p50, p99, rate) = (Spread::of(p50), Spread::of(p99), Spread::of(rate));
            let ratio = if *name == "chan-ring" {
                String::new()
            } else {
                format!(" vs_ring_p50={:.2} vs_ring_rate={:.2}", Spread::of(v50).median, Spread::of(vrate).median)
            };
            format!(
                "shmpool {name} p50_ns={:.0} p99_ns={:.0} mmsgs_s={:.2} min_p50={:.0} max_p50={:.0} reps={} n={n}{ratio}",
                p50.median, p99.median, rate.median, p50.min, p50.max, plan.reps
            )
        })
        .collect())
}

/// A process-shared pthread mutex at `off` of the heap's segment.
struct Pthread(*mut libc::pthread_mutex_t);

impl Pthread {
    fn init(heap: &Heap) -> Result<u64, String> {
        let off = heap
            .alloc_zeroed(core::mem::size_of::<libc::pthread_mutex_t>() as u64)
            .map_err(|e| e.to_string())?;
        let m = Self::at(heap, off);
        // SAFETY: a zeroed, private-until-now block of the mutex's size in the shared
        // mapping, initialised once with the process-shared attribute.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = core::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutex_init(m.0, &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
        }
        Ok(off)
    }

    fn at(heap: &Heap, off: u64) -> Self {
        Self(heap.resolve(off).expect("the mutex's block").0.as_ptr().cast())
    }

    fn pair(&self) {
        // SAFETY: an initialised process-shared mutex, locked and unlocked by this thread.
        unsafe {
            libc::pthread_mutex_lock(self.0);
            libc::pthread_mutex_unlock(self.0);
        }
    }
}

/// ns per lock+unlock pair (wall time over all pairs): `procs` processes each doing `n`
/// pairs at once.
fn mutex_once(sh: &Shared, procs: u64, n: u64, pthread_at: Option<u64>) -> Result<f64, String> {
    for w in [READY, GO, START, END] {
        sh.word(w).store(0, Ordering::Relaxed);
    }
    let children: Vec<_> = (0..procs)
        .map(|_| {
            fork(|| {
                let heap = sh.attach();
                let ours = Mutex::named(&heap, "bench-mutex", 0u64).expect("mutex");
                let theirs = pthread_at.map(|off| Pthread::at(&heap, off));
                let pair = |k: u64| {
                    for _ in 0..k {
                        match &theirs {
                            Some(p) => p.pair(),
                            None => *ours.lock().expect("lock") += 1,
                        }
                    }
                };
                pair(n / 10);
                sh.word(READY).fetch_add(1, Ordering::AcqRel);
                spin_until(|| sh.word(GO).load(Ordering::Acquire) != 0);
                let t = mono_ns();
                pair(n);
                sh.word(END).fetch_add(mono_ns() - t, Ordering::AcqRel);
                0
            })
        })
        .collect::<Result<_, _>>()?;
    spin_until(|| sh.word(READY).load(Ordering::Acquire) == procs);
    let t = mono_ns();
    sh.word(GO).store(1, Ordering::Release);
    wait_all(&children, DEADLINE)?;
    // Wall time over every process's pairs: contended pairs take turns.
    Ok((mono_ns() - t) as f64 / (procs * n) as f64)
}

fn mutex_lines(plan: &Plan, sh: &Shared) -> Result<Vec<String>, String> {
    let n = plan.n / 4;
    let pthread = Pthread::init(&sh.heap)?;
    let mut out = Vec::new();
    for procs in [1u64, 2] {
        let (mut ours, mut theirs, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..plan.reps {
            let a = mutex_once(sh, procs, n, None)?;
            let b = mutex_once(sh, procs, n, Some(pthread))?;
            ours.push(a);
            theirs.push(b);
            ratio.push(a / b);
        }
        let name = if procs == 1 { "uncontended" } else { "2p" };
        let (o, t) = (Spread::of(ours), Spread::of(theirs));
        out.push(format!(
            "shmpool mutex-{name} ns_per_pair={:.1} min={:.1} max={:.1} reps={} vs_pthread={:.2}",
            o.median,
            o.min,
            o.max,
            plan.reps,
            Spread::of(ratio).median
        ));
        out.push(format!(
            "pthread mutex-{name} ns_per_pair={:.1} min={:.1} max={:.1} reps={}",
            t.median, t.min, t.max, plan.reps
        ));
    }
    Ok(out)
}

pub fn lines(plan: &Plan) -> Result<Vec<String>, String> {
    let sh = Shared::new("chan")?;
    let mut out = latency_lines(plan, &sh)?;
    out.extend(mutex_lines(plan, &sh)?);
    Ok(out)
}
