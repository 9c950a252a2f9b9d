//! `shmpool bench`: the workloads of BENCH.md (W1–W5), printed one line each, with the
//! same W1 and W2 loops on mimalloc in the same run as the in-process reference; the
//! time to recover a killed process's heap; and the pools beside W1 (`pools`); channels beside a bare ring and
//! the mutex beside a pthread mutex (`channels`).
//!
//! Every figure is the median of `reps` timed repetitions after a warm-up; min and max
//! are printed beside it. Compare ratios taken within one run: the machine is shared.

mod channels;
mod dsm;

pub use dsm::bench_node as dsm_bench_node;
mod multi;
mod pools;
mod single;

use std::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// W1 pairs (and W3 pairs per process).
    pub n: u64,
    /// W4 blocks.
    pub handoffs: u64,
    /// Timed repetitions.
    pub reps: usize,
    /// Workloads to run, lower case (`w1` … `w5`).
    pub only: Vec<String>,
}

impl Plan {
    fn wants(&self, w: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o.eq_ignore_ascii_case(w))
    }
}

/// Median, min and max of samples.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        Spread { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1] }
    }
}

/// Runs `ours` and `theirs` once each untimed, then `reps` times alternately, so each
/// of our figures has one of theirs taken right beside it. Returns both spreads and the
/// median of the per-repetition ratios `ours / theirs`, which the machine's drifts in
/// speed (other tenants, frequency) disturb far less than a ratio of two medians taken
/// one after the other.
pub fn repeat_pair(
    reps: usize,
    mut ours: impl FnMut() -> f64,
    mut theirs: impl FnMut() -> f64,
) -> (Spread, Spread, f64) {
    ours();
    theirs();
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let (x, y) = (ours(), theirs());
        a.push(x);
        b.push(y);
        r.push(x / y);
    }
    (Spread::of(a), Spread::of(b), Spread::of(r).median)
}

/// Nanoseconds `f` took.
pub fn time_ns(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_nanos() as f64
}

/// Runs the plan and prints its lines.
pub fn run(plan: &Plan) -> Result<(), String> {
    let out = |line: String| crate::print_out(&format!("{line}\n"));
    out(format!(
        "# shmpool {} bench: reps={} n={} cpus={}",
        env!("CARGO_PKG_VERSION"),
        plan.reps,
        plan.n,
        cpus()
    ))?;
    if plan.wants("w1") {
        for line in single::w1(plan)? {
            out(line)?;
        }
    }
    if plan.wants("w2") {
        for line in single::w2(plan)? {
            out(line)?;
        }
    }
    if plan.wants("w3") {
        out(multi::w3(plan)?)?;
    }
    if plan.wants("w4") {
        for line in multi::w4(plan)? {
            out(line)?;
        }
    }
    if plan.wants("w5") {
        out(single::w5()?)?;
    }
    if plan.wants("recovery") {
        out(multi::recovery(plan)?)?;
    }
    if plan.wants("channels") {
        for line in channels::lines(plan)? {
            out(line)?;
        }
    }
    if plan.wants("dsm") {
        for line in dsm::lines(plan)? {
            out(line)?;
        }
    }
    if plan.wants("pools") {
        for line in pools::lines(plan)? {
            out(line)?;
        }
    }
    Ok(())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
