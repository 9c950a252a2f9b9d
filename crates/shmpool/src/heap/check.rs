//! The invariant walk and the statistics of a heap.
//!
//! [`Heap::check`] verifies, on a quiescent heap (no allocation or free in flight in any
//! process), every invariant listed in `layout.rs`: the page-run allocator's, and for
//! each slab that its bitmaps, free list, remote state, the owners' delayed stacks, the
//! counters and the class/full lists agree. [`Heap::stats`] reads the same structures
//! without stopping anyone, so under load its numbers are a snapshot, not exact.

use super::class::{CLASSES, GEOMETRY};
use super::layout::{self, Slab, DESC_FREE, TAG_LARGE, USED_CURRENT, USED_FULL};
use super::remote::{FULL, QUEUED};
use super::{Heap, Inner};
use crate::loom::Ordering;
use crate::pages::{Broken, UnitState, UNIT};
use std::collections::{HashMap, HashSet};

/// Counts gathered by [`Heap::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Slabs in the arena.
    pub slabs: u64,
    /// Blocks allocated in slabs (including remote frees not yet collected).
    pub slab_blocks: u64,
    /// Blocks freed by other threads, waiting for their owner.
    pub pending_remote: u64,
    /// Large blocks.
    pub large_blocks: u64,
    /// Units free in the page-run allocator.
    pub free_units: u64,
    /// Units in the arena.
    pub units: u32,
    /// Bytes of the blocks allocated and not freed: slab blocks (not counting remote
    /// frees waiting for their owner) and large blocks.
    pub allocated_bytes: u64,
    /// Bytes that allocations can still take: free units, and the free blocks of slabs
    /// (remote frees waiting for their owner included).
    pub free_bytes: u64,
    /// `allocated_bytes + free_bytes`: the arena less slab headers and the tails of
    /// slabs too short for another block.
    pub capacity_bytes: u64,
}

/// Use of one size class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Block size.
    pub size: u64,
    /// Slabs of the class.
    pub slabs: u64,
    /// Blocks allocated.
    pub used_blocks: u64,
    /// Blocks free in those slabs.
    pub free_blocks: u64,
}

/// A snapshot of a heap's use.
#[derive(Debug, Clone, Default)]
pub struct HeapStats {
    /// Bytes of the segment committed.
    pub committed: u64,
    /// Bytes the segment can grow to.
    pub reserved: u64,
    /// Bytes of arena (units managed by the page-run allocator).
    pub arena_bytes: u64,
    /// Bytes of arena in no slab or large block.
    pub free_unit_bytes: u64,
    /// Large blocks and their bytes.
    pub large_blocks: u64,
    /// Bytes in large blocks.
    pub large_bytes: u64,
    /// Per size class, for classes with at least one slab.
    pub classes: Vec<ClassStats>,
    /// Thread heaps in use (active or abandoned).
    pub thread_heaps: u32,
}

impl HeapStats {
    /// Bytes in allocated blocks of size classes.
    pub fn slab_used_bytes(&self) -> u64 {
        self.classes.iter().map(|c| c.used_blocks * c.size).sum()
    }

    /// Share of slab memory not holding allocated blocks: free blocks, headers and
    /// tails. 0 is perfect.
    pub fn fragmentation(&self) -> f64 {
        let slab_bytes = self.arena_bytes - self.free_unit_bytes - self.large_bytes;
        if slab_bytes == 0 {
            return 0.0;
        }
        1.0 - self.slab_used_bytes() as f64 / slab_bytes as f64
    }
}

/// A thread heap in use, and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadHeapInfo {
    /// Its index in the segment.
    pub index: u32,
    /// Owner process.
    pub pid: u32,
    /// Owner process's start time (clock ticks since boot), to tell a reused pid apart.
    pub start_time: u64,
    /// Owner thread (Linux tid).
    pub tid: u32,
    /// The owner process's slot in the registry ([`Heap::processes`]).
    pub process_slot: u32,
    /// `false` once its thread ended (or its handle dropped): waiting to be adopted.
    pub active: bool,
    /// Whether the owner process still runs: its pid exists with the same start time (a
    /// new process that reused the pid does not count). An active heap of a dead process
    /// is orphaned: nobody will free into it locally again.
    pub owner_alive: bool,
}

/// Whether process `pid`, started at `start` (clock ticks since boot), still runs.
pub fn process_alive(pid: u32, start: u64) -> bool {
    match running_since(pid) {
        Some(s) => s == start || s == UNKNOWN,
        None => false,
    }
}

/// What `running_since` says when `/proc` cannot be read for a reason other than the
/// process being gone (not mounted, hidden by `hidepid`, out of descriptors): nothing is
/// known, so the process counts as running.
pub(super) const UNKNOWN: u64 = u64::MAX;

/// The start time of process `pid` (proc(5) `/proc/PID/stat` field 22), if it runs.
/// A zombie has exited and only waits for its parent to reap it; but the process's
/// state is its main thread's, which may have exited while other threads run on.
pub(super) fn running_since(pid: u32) -> Option<u64> {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(_) => return Some(UNKNOWN),
    };
    let fields = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start()).unwrap_or("");
    let start = fields.split_whitespace().nth(19).and_then(|f| f.parse::<u64>().ok())?;
    let zombie = fields.starts_with('Z') && !any_thread_runs(pid);
    (!zombie).then_some(start)
}

/// Whether any thread of process `pid` is not a zombie (proc(5) `/proc/PID/task`).
fn any_thread_runs(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
        })
    })
}

impl Heap {
    /// The thread heaps in use (active, or abandoned and waiting for adoption).
    pub fn thread_heaps(&self) -> Vec<ThreadHeapInfo> {
        (0..layout::MAX_DESCS)
            .filter_map(|d| {
                let desc = self.inner.desc(d);
                let state = layout::desc_state(desc.state.load(Ordering::Acquire));
                (state != DESC_FREE).then(|| {
                    let (pid, start_time) =
                        (desc.owner_pid.load(Ordering::Relaxed), desc.owner_start.load(Ordering::Relaxed));
                    ThreadHeapInfo {
                        index: d,
                        pid,
                        start_time,
                        tid: desc.owner_tid.load(Ordering::Relaxed),
                        process_slot: desc.proc_slot.load(Ordering::Relaxed),
                        active: state == layout::DESC_ACTIVE,
                        owner_alive: process_alive(pid, start_time),
                    }
                })
            })
            .collect()
    }

    /// Walks every invariant; run it on a quiescent heap.
    pub fn check(&self) -> Result<CheckReport, Broken> {
        self.inner.check()
    }

    /// Use per size class, committed and free memory.
    pub fn stats(&self) -> HeapStats {
        self.inner.stats()
    }
}

fn fail<T>(what: String) -> Result<T, Broken> {
    Err(Broken(what))
}

impl Inner {
    /// The runs in the unit table whose tag `want` accepts: `(head unit, length, tag)`.
    pub(super) fn runs(&self, want: impl Fn(u8) -> bool) -> Vec<(u32, u64, u8)> {
        let buddy = self.buddy();
        let mut out = Vec::new();
        let mut u = 0;
        while u < buddy.units() {
            match buddy.state(u) {
                UnitState::Run { len, tag } => {
                    if want(tag) {
                        out.push((u, u64::from(len), tag));
                    }
                    u += len.max(1);
                }
                UnitState::Free { order } => u += 1 << order,
                _ => u += 1,
            }
        }
        out
    }

    fn stats(&self) -> HeapStats {
        let buddy = self.buddy();
        let large = self.runs(|t| t == TAG_LARGE);
        let mut per: HashMap<usize, ClassStats> = HashMap::new();
        for (u, _, tag) in self.runs(|t| layout::tag_class(t).is_some()) {
            let Some(c) = layout::tag_class(tag) else { continue };
            let e = per.entry(c).or_insert(ClassStats { size: GEOMETRY[c].size, ..Default::default() });
            let used = u64::from(self.blocks_used(u, c));
            e.slabs += 1;
            e.used_blocks += used;
            e.free_blocks += u64::from(GEOMETRY[c].capacity).saturating_sub(used);
        }
        let mut classes: Vec<_> = per.into_values().collect();
        classes.sort_by_key(|c| c.size);
        HeapStats {
            committed: self.seg.committed(),
            reserved: self.seg.reserved(),
            arena_bytes: u64::from(buddy.units()) * UNIT,
            free_unit_bytes: buddy.free_units() * UNIT,
            large_blocks: large.len() as u64,
            large_bytes: large.iter().map(|&(_, units, _)| units * UNIT).sum(),
            classes,
            thread_heaps: (0..layout::MAX_DESCS)
                .filter(|&d| layout::desc_state(self.desc(d).state.load(Ordering::Relaxed)) != DESC_FREE)
                .count() as u32,
        }
    }

    fn check(&self) -> Result<CheckReport, Broken> {
        let buddy = self.buddy();
        buddy.check()?;
        self.check_registry()?;
        let delayed = self.check_delayed()?;
        let on_lists = self.check_lists()?;
        let mut report =
            CheckReport { units: buddy.units(), free_units: buddy.free_units(), ..Default::default() };
        let mut u = 0;
        while u < buddy.units() {
            match buddy.state(u) {
                UnitState::Run { len, tag: TAG_LARGE } => {
                    self.check_no_remote_state(u)?;
                    report.large_blocks += 1;
                    report.allocated_bytes += u64::from(len) * UNIT;
                    u += len;
                }
                UnitState::Run { len, tag } if layout::tag_class(tag).is_some() => {
                    let (used, pending) = self.check_slab(u, len, tag, &delayed, &on_lists)?;
                    let g = &GEOMETRY[layout::tag_class(tag).expect("a slab tag")];
                    report.slabs += 1;
                    report.slab_blocks += used;
                    report.pending_remote += pending;
                    report.allocated_bytes += (used - pending) * g.size;
                    report.free_bytes += (u64::from(g.capacity) - used + pending) * g.size;
                    u += len;
                }
                UnitState::Run { tag, .. } => return fail(format!("unit {u}: run with unknown tag {tag}")),
                UnitState::Free { order } => {
                    self.check_no_remote_state(u)?;
                    u += 1 << order;
                }
                other => return fail(format!("unit {u}: {other:?}")),
            }
        }
        report.free_bytes += report.free_units * UNIT;
        report.capacity_bytes = report.allocated_bytes + report.free_bytes;
        Ok(report)
    }

    /// The slabs on the owners' delayed stacks, each checked to be a queued slab of its
    /// stack's owner, on one stack once.
    fn check_delayed(&self) -> Result<HashSet<u32>, Broken> {
        let mut seen = HashSet::new();
        for d in 0..layout::MAX_DESCS {
            let mut next = self.desc(d).delayed.load(Ordering::Relaxed);
            while next != 0 {
                let unit = (next - 1) as u32;
                if self.owned_slab(d, unit).is_none() {
                    return fail(format!("heap {d}: delayed stack holds unit {unit}, not a slab it owns"));
                }
                if !seen.insert(unit) {
                    return fail(format!(
                        "heap {d}: slab at unit {unit} is on a delayed stack twice (or it cycles)"
                    ));
                }
                let ur = self.unit_remote(unit);
                if ur.state.load(Ordering::Relaxed) & QUEUED == 0 {
                    return fail(format!("heap {d}: delayed slab at unit {unit} is not flagged QUEUED"));
                }
                next = u64::from(ur.next.load(Ordering::Relaxed));
            }
        }
        Ok(seen)
    }

    /// For each slab on some owner list: (owner, class, on the full list).
    fn check_lists(&self) -> Result<HashMap<u32, (u32, usize, bool)>, Broken> {
        let mut seen = HashMap::new();
        for d in 0..layout::MAX_DESCS {
            for c in 0..CLASSES {
                let q = &self.desc(d).classes[c];
                for (full, head) in [(false, &q.head), (true, &q.full)] {
                    let mut prev = 0;
                    let mut at = head.load(Ordering::Relaxed);
                    while at != 0 {
                        let unit = at - 1;
                        if seen.insert(unit, (d, c, full)).is_some() {
                            return fail(format!("slab at unit {unit} is on two lists (or a list cycles)"));
                        }
                        let slab = self.slab(self.unit_off(unit));
                        if slab.prev.load(Ordering::Relaxed) != prev {
                            return fail(format!("slab at unit {unit}: back link is wrong"));
                        }
                        prev = at;
                        at = slab.next.load(Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(seen)
    }

    fn check_slab(
        &self,
        unit: u32,
        len: u32,
        tag: u8,
        delayed: &HashSet<u32>,
        lists: &HashMap<u32, (u32, usize, bool)>,
    ) -> Result<(u64, u64), Broken> {
        let off = self.unit_off(unit);
        let slab: &Slab = self.slab(off);
        let cls = slab.class.load(Ordering::Relaxed);
        let at = |what: String| fail(format!("slab at unit {unit}: {what}"));
        let c = layout::tag_class(tag).expect("called for slab tags");
        if layout::slab_class(cls) != Some(c) {
            return at(format!("class word {cls:#x}, but tagged class {c}"));
        }
        let g = &GEOMETRY[c];
        if g.units != len {
            return at(format!("{len} units, class {c} needs {}", g.units));
        }
        let owner = slab.owner.load(Ordering::Relaxed);
        let state = self.unit_remote(unit).state.load(Ordering::Relaxed);
        match lists.get(&unit) {
            Some(&(d, lc, full)) if d == owner && lc == c => {
                if (state & FULL != 0) != full {
                    return at(format!("remote state {state:#x} but on the full list: {full}"));
                }
            }
            other => return at(format!("owner {owner} class {c}, but listed as {other:?}")),
        }
        let queued = delayed.contains(&unit);
        if (state & QUEUED != 0) != queued {
            return at(format!("remote state {state:#x} but on a delayed stack: {queued}"));
        }
        let words = g.words;
        let (mut allocated, mut remote) = (0u64, 0u64);
        let bump = slab.bump.load(Ordering::Relaxed);
        for w in 0..words {
            let a = self.bitmap(off, c, false, w);
            let r = self.bitmap(off, c, true, w);
            if r & !a != 0 {
                return at(format!("word {w}: a block freed remotely is not allocated"));
            }
            allocated += u64::from(a.count_ones());
            remote += u64::from(r.count_ones());
        }
        for idx in bump..g.capacity {
            if self.bitmap(off, c, false, idx / 64) & 1 << (idx % 64) != 0 {
                return at(format!("block {idx} past bump {bump} is allocated"));
            }
        }
        // `used` counts the blocks, plus flags for the current slab and the full list.
        let word = slab.used.load(Ordering::Relaxed);
        let current = self.queue(owner, c).head.load(Ordering::Relaxed) == unit + 1;
        let flags = if current { USED_CURRENT } else { 0 } | if lists[&unit].2 { USED_FULL } else { 0 };
        let used = u64::from(word.wrapping_sub(flags));
        if allocated != used {
            return at(format!("{allocated} blocks allocated but used word {word:#x} (flags {flags:#x})"));
        }
        let free = self.walk(off, c, u64::from(slab.free.load(Ordering::Relaxed)), |idx| {
            idx < bump && self.bitmap(off, c, false, idx / 64) & 1 << (idx % 64) == 0
        });
        match free {
            Some(n) if n == u64::from(bump) - used => {}
            Some(n) => {
                return at(format!("free list has {n} blocks, bump - used = {}", u64::from(bump) - used))
            }
            None => return at("free list is cyclic or holds an allocated block".into()),
        }
        if remote > 0 && state & FULL != 0 && !queued {
            return at(format!("{remote} remote frees into the full slab, which is not queued"));
        }
        Ok((used, remote))
    }

    /// A unit that heads no slab has no remote state.
    fn check_no_remote_state(&self, unit: u32) -> Result<(), Broken> {
        match self.unit_remote(unit).state.load(Ordering::Relaxed) {
            0 => Ok(()),
            s => fail(format!("unit {unit} heads no slab but has remote state {s:#x}")),
        }
    }

    /// Blocks allocated in the slab of class `c` headed by `unit`, read from its `used`
    /// word without its flags (for the statistics; `check_slab` verifies the flags).
    fn blocks_used(&self, unit: u32, c: usize) -> u32 {
        let slab = self.slab(self.unit_off(unit));
        let word = slab.used.load(Ordering::Relaxed) & !USED_FULL;
        let owner = slab.owner.load(Ordering::Relaxed);
        let current =
            owner < layout::MAX_DESCS && self.queue(owner, c).head.load(Ordering::Relaxed) == unit + 1;
        word - u32::from(current && word > 0)
    }

    /// Length of the index list starting at `first` (index + 1), if it is acyclic and
    /// every entry satisfies `ok`.
    fn walk(&self, slab: u64, c: usize, first: u64, ok: impl Fn(u32) -> bool) -> Option<u64> {
        let cap = GEOMETRY[c].capacity;
        let mut seen = vec![false; cap as usize];
        let (mut n, mut next) = (0, first as u32);
        while next != 0 {
            let idx = next - 1;
            if idx >= cap || seen[idx as usize] || !ok(idx) {
                return None;
            }
            seen[idx as usize] = true;
            n += 1;
            next = self
                .link32_at(slab + u64::from(GEOMETRY[c].blocks_start) + u64::from(idx) * GEOMETRY[c].size);
        }
        Some(n)
    }
}
