//! The process registry: a slot in the segment for every process that owns thread heaps,
//! holding its pid and start time. Each thread heap names its process's slot, so that
//! whoever finds a process dead (its pid gone, or reused by a process started later) finds
//! every thread heap it owned; the slabs hang off those, and their allocated bitmaps say
//! which blocks were live.
//!
//! A process registers on its first allocation and gives the slot back when its last
//! handle on the heap drops. A process that dies without dropping keeps its slot `LIVE`
//! under a dead pid; [`Heap::processes`] reports it.
//!
//! # Safety
//! Views are taken at slot offsets below `MAX_PROCS` in the committed metadata; see
//! `raw.rs`.
#![allow(unsafe_code)]

use super::check::process_alive;
use super::error::AllocError;
use super::layout::{self, Proc, MAX_PROCS};
use super::{tls, Heap, Inner};
use crate::loom::Ordering;

/// Slot states, in the low two bits of `Proc::state`; the bits above count registrations.
const PROC_FREE: u32 = 0;
const PROC_LIVE: u32 = 1;
/// Taken, identity being written.
const PROC_CLAIMING: u32 = 3;

/// A registered process, as [`Heap::processes`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its slot in the registry.
    pub slot: u32,
    /// Its pid.
    pub pid: u32,
    /// Its start time (clock ticks since boot), which tells a reused pid apart.
    pub start_time: u64,
    /// Whether it still runs (see [`process_alive`]).
    pub alive: bool,
    /// Thread heaps that name this slot (active or abandoned).
    pub thread_heaps: u32,
}

impl Inner {
    fn proc(&self, slot: u32) -> &Proc {
        assert!(slot < MAX_PROCS);
        // SAFETY: the registry lies in the committed metadata, 8-aligned; `slot` is in it.
        unsafe { self.base.at(layout::procs_off(self.descs_off) + u64::from(slot) * layout::PROC_BYTES) }
    }

    /// This process's registry slot, registering it on first use (and again in a forked
    /// child, which is another process).
    pub(super) fn process_slot(&self) -> Result<u32, AllocError> {
        if let Some(slot) = self.cached_slot() {
            return Ok(slot);
        }
        let gen = tls::fork_gen() as u32;
        let cached = self.proc_slot.load(Ordering::Relaxed);
        let slot = self.register()?;
        let mine = u64::from(gen) << 32 | u64::from(slot + 1);
        // Two threads of this process may register at once: the first to publish wins,
        // the other gives its slot back.
        match self.proc_slot.compare_exchange(cached, mine, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => Ok(slot),
            Err(now) => {
                self.unregister(slot);
                Ok(now as u32 - 1)
            }
        }
    }

    /// Claims a free slot for this process. Under the page lock, held under this
    /// process's pid (it has no slot yet): a process that dies between the claim and
    /// `LIVE` leaves the slot `CLAIMING` only until the lock is taken over from it
    /// (`repair_claims`).
    fn register(&self) -> Result<u32, AllocError> {
        let _lock = self.page_lock();
        for slot in 0..MAX_PROCS {
            let p = self.proc(slot);
            let word = p.state.load(Ordering::Relaxed);
            if word & 3 != PROC_FREE {
                continue;
            }
            let claimed = layout::next_gen(word, PROC_CLAIMING);
            // Relaxed: the Release store below publishes the identity. A CAS, not a store:
            // `recover` frees slots without the lock.
            if p.state.compare_exchange(word, claimed, Ordering::Relaxed, Ordering::Relaxed).is_err() {
                continue;
            }
            crate::crash::point("register.claimed");
            p.pid.store(tls::pid(), Ordering::Relaxed);
            p.start.store(tls::start_time(), Ordering::Relaxed);
            // SYNC: Release pairs with the Acquire load in `processes` (and in `unregister`):
            // whoever sees LIVE sees this identity.
            p.state.store(layout::same_gen(claimed, PROC_LIVE), Ordering::Release);
            return Ok(slot);
        }
        Err(AllocError::NoProcessSlot(MAX_PROCS))
    }

    /// After the page lock was taken over from a dead holder: a registry slot or thread
    /// heap left `CLAIMING` was that holder's (claims are made under the lock), and is
    /// given back: the slot free, the thread heap abandoned (with whatever slabs it has,
    /// for adoption).
    pub(super) fn repair_claims(&self) {
        for slot in 0..MAX_PROCS {
            let state = &self.proc(slot).state;
            let word = state.load(Ordering::Relaxed);
            if word & 3 == PROC_CLAIMING {
                let free = layout::next_gen(word, PROC_FREE);
                let _ = state.compare_exchange(word, free, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
        for d in 0..layout::MAX_DESCS {
            let state = &self.desc(d).state;
            let word = state.load(Ordering::Relaxed);
            if layout::desc_state(word) == layout::DESC_CLAIMING {
                let abandoned = layout::next_gen(word, layout::DESC_ABANDONED);
                // SYNC: Release pairs with the Acquire CAS in `take_desc`, as `abandon`'s.
                let _ = state.compare_exchange(word, abandoned, Ordering::Release, Ordering::Relaxed);
            }
        }
    }

    /// Gives `slot` back if this process still holds it.
    fn unregister(&self, slot: u32) {
        let p = self.proc(slot);
        // SYNC: Acquire pairs with the Release store in `register`.
        let word = p.state.load(Ordering::Acquire);
        let ours = word & 3 == PROC_LIVE
            && p.pid.load(Ordering::Relaxed) == tls::pid()
            && p.start.load(Ordering::Relaxed) == tls::start_time();
        if ours {
            let free = layout::next_gen(word, PROC_FREE);
            let _ = p.state.compare_exchange(word, free, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// This process's registry slot, if it has registered (in this process, not in a
    /// parent it was forked from).
    fn cached_slot(&self) -> Option<u32> {
        let cached = self.proc_slot.load(Ordering::Relaxed);
        (cached != 0 && (cached >> 32) as u32 == tls::fork_gen() as u32).then(|| cached as u32 - 1)
    }

    /// On the last drop of this process's handle: give the slot back (not a parent's,
    /// inherited through fork).
    pub(super) fn leave_registry(&self) {
        if let Some(slot) = self.cached_slot() {
            self.unregister(slot);
        }
    }
}

/// A lock-holder tag (31 bits at most; 30 here, so that it also fits a unit's remote
/// state) names its holder's registration: `generation << TAG_SLOT_BITS | slot + 1`; or,
/// for a process that holds no registry slot (yet), `TAG_PID | pid`.
const TAG_SLOT_BITS: u32 = 9;
const TAG_SLOT_MASK: u32 = (1 << TAG_SLOT_BITS) - 1;
const TAG_GEN_MASK: u32 = (1 << 20) - 1;
const TAG_PID: u32 = 1 << 29;
const _: () = assert!(MAX_PROCS < TAG_SLOT_MASK);
const _: () = assert!(TAG_GEN_MASK << TAG_SLOT_BITS < TAG_PID);
/// Linux pids are below `pid_max`, at most 2^22 (proc(5) `/proc/sys/kernel/pid_max`).
const _: () = assert!(1 << 22 < TAG_PID);

impl Inner {
    /// This process's tag as a holder of the heap's locks and as the pusher of a queued
    /// slab (`remote.rs`), so that whoever waits on it can tell when it has died, even if
    /// its pid was reused: its registration, or its pid while it has none. Never
    /// registers (registering takes the page lock).
    pub(crate) fn lock_holder(&self) -> u32 {
        match self.cached_slot() {
            Some(slot) => {
                let gen = self.proc(slot).state.load(Ordering::Relaxed) >> 2;
                (gen & TAG_GEN_MASK) << TAG_SLOT_BITS | (slot + 1)
            }
            None => TAG_PID | tls::pid(),
        }
    }

    /// Whether the holder `tag` names is gone: its registration ended, or its process is
    /// no longer running (see [`holder_alive`]).
    pub(crate) fn holder_dead(&self, tag: u32) -> bool {
        let local = self.seg.local_liveness();
        if tag & TAG_PID != 0 {
            return local && !holder_alive(tag & !TAG_PID, 0);
        }
        let slot = (tag & TAG_SLOT_MASK).wrapping_sub(1);
        if slot >= MAX_PROCS {
            return false; // names nobody: judge it alive, never take from the living
        }
        let p = self.proc(slot);
        // SYNC: Acquire pairs with the Release store in `register`: the identity read
        // next is the one of the registration in this word.
        let state = p.state.load(Ordering::Acquire);
        if state & 3 != PROC_LIVE || (state >> 2) & TAG_GEN_MASK != tag >> TAG_SLOT_BITS {
            return true; // the registration ended (a holder does not unregister)
        }
        // Memory shared with other hosts: a pid says nothing here (judged alive).
        local && !holder_alive(p.pid.load(Ordering::Relaxed), p.start.load(Ordering::Relaxed))
    }
}

/// Whether lock holder `pid`, started at `start` (0: unknown), still runs: more careful
/// than [`process_alive`], because calling a live holder dead would let two processes
/// hold a lock. Without procfs, a pid that exists is alive.
fn holder_alive(pid: u32, start: u64) -> bool {
    if std::fs::metadata("/proc/self/stat").is_err() {
        return match rustix::process::Pid::from_raw(pid as i32) {
            Some(p) => rustix::process::test_kill_process(p) != Err(rustix::io::Errno::SRCH),
            None => false,
        };
    }
    super::check::running_since(pid)
        .is_some_and(|now| start == 0 || now == start || now == super::check::UNKNOWN)
}

/// What [`Heap::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Registered processes found dead; their registry slots are free again.
    pub dead_processes: u32,
    /// Their thread heaps, rebuilt and left for adoption.
    pub thread_heaps: u32,
    /// Slabs of those thread heaps that still hold live blocks.
    pub slabs_kept: u32,
    /// Slabs of those thread heaps that were empty, given back to the pages.
    pub slabs_given_back: u32,
}

impl Inner {
    /// Recovers every registered process that died: see [`Heap::recover`].
    pub(super) fn recover(&self) -> RecoveryReport {
        // A claim half made is only ever the page lock's holder's: if that holder died,
        // taking the lock over undoes it (`repair_claims`).
        if self.claims_in_flight() {
            drop(self.page_lock());
        }
        let mut report = RecoveryReport::default();
        let mut seen = std::collections::HashMap::new();
        // Memory shared with other hosts: nobody can be judged dead from here.
        let local = self.seg.local_liveness();
        let mut alive = |pid: u32, start: u64| {
            !local || *seen.entry((pid, start)).or_insert_with(|| holder_alive(pid, start))
        };
        // Registry slots of dead processes first, so that a recoverer short of a slot
        // gets one (and a tag that waiters can judge). Their thread heaps are found by
        // their owners' identity below, not through the slots.
        for slot in 0..MAX_PROCS {
            let p = self.proc(slot);
            // SYNC: Acquire pairs with the Release store in `register`.
            let word = p.state.load(Ordering::Acquire);
            if word & 3 != PROC_LIVE || alive(p.pid.load(Ordering::Relaxed), p.start.load(Ordering::Relaxed))
            {
                continue;
            }
            let free = layout::next_gen(word, PROC_FREE);
            if p.state.compare_exchange(word, free, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                report.dead_processes += 1;
            }
        }
        if report.dead_processes > 0 {
            self.tell_owners_to_rescue();
        }
        // Thread heaps whose owner died. Each is claimed as a thread would claim it, so a
        // recoverer that dies while rebuilding leaves it active under its own (dead)
        // name, for the next recovery to take up.
        for d in 0..layout::MAX_DESCS {
            let desc = self.desc(d);
            // SYNC: Acquire pairs with the Release store of ACTIVE in `claim`: the
            // identity read next is that claim's.
            let state = desc.state.load(Ordering::Acquire);
            if layout::desc_state(state) != layout::DESC_ACTIVE
                || alive(desc.owner_pid.load(Ordering::Relaxed), desc.owner_start.load(Ordering::Relaxed))
            {
                continue;
            }
            let slot = self.process_slot().unwrap_or(MAX_PROCS);
            let Some(token) = self.take_desc(d, state, slot) else { continue }; // another recoverer's
            crate::crash::point("recover.rebuilding");
            let (kept, given_back) = self.rebuild_thread_heap(d);
            self.abandon(d, token);
            report.thread_heaps += 1;
            report.slabs_kept += kept;
            report.slabs_given_back += given_back;
        }
        // The caller's own thread heap, if this or an earlier recovery told it to look.
        if let Some(d) = self.my_desc().filter(|&d| self.desc(d).rescue.load(Ordering::Relaxed) != 0) {
            self.rescue(d);
        }
        report
    }
}

impl Inner {
    /// Processes died: each live thread heap's owner looks for slabs they may have left
    /// flagged and unpushed (`rescue`), at its next slow path or recovery.
    fn tell_owners_to_rescue(&self) {
        for d in 0..layout::MAX_DESCS {
            if layout::desc_state(self.desc(d).state.load(Ordering::Relaxed)) != layout::DESC_FREE {
                self.desc(d).rescue.store(1, Ordering::Relaxed);
            }
        }
    }
}

impl Heap {
    /// Recovers what processes that died (killed at any instant) left in the heap, and
    /// reports what it did. It runs by itself when a heap is attached and when an
    /// allocation would otherwise grow the segment or find no thread heap; this runs it
    /// now.
    ///
    /// For each registered process that no longer runs, each of its thread heaps is
    /// rebuilt from the ground truth (the unit table and the slabs' allocated bitmaps):
    /// free lists, counts and lists it may have left half updated are made again (an
    /// allocation or free it had not finished counts as not made), remote frees waiting
    /// for it are collected, its empty slabs go back to the pages, and the thread heap is
    /// left for the next thread that needs one to adopt. Its registry slot is freed. A
    /// lock it held is taken over by the next process that waits for it.
    ///
    /// Blocks the dead process had allocated and not freed stay allocated: whoever holds
    /// their offsets (a block handed over before the death) may use and free them as
    /// usual. A block only the dead process knew of stays allocated: nothing in the
    /// segment says who else may hold an offset.
    pub fn recover(&self) -> RecoveryReport {
        self.inner.recover()
    }
}

impl Inner {
    /// Whether a registry slot or a thread heap is being claimed.
    fn claims_in_flight(&self) -> bool {
        (0..MAX_PROCS).any(|slot| self.proc(slot).state.load(Ordering::Relaxed) & 3 == PROC_CLAIMING)
            || (0..layout::MAX_DESCS).any(|d| {
                layout::desc_state(self.desc(d).state.load(Ordering::Relaxed)) == layout::DESC_CLAIMING
            })
    }

    /// Every active thread heap names a registered slot of its own process, and no claim
    /// is half made (part of `Heap::check`).
    pub(super) fn check_registry(&self) -> Result<(), crate::pages::Broken> {
        if self.claims_in_flight() {
            return Err(crate::pages::Broken(
                "a registry slot or thread heap is half claimed (its claimer died holding the page lock?)"
                    .into(),
            ));
        }
        for d in 0..layout::MAX_DESCS {
            let desc = self.desc(d);
            if layout::desc_state(desc.state.load(Ordering::Acquire)) != layout::DESC_ACTIVE {
                continue;
            }
            let slot = desc.proc_slot.load(Ordering::Relaxed);
            let pid = desc.owner_pid.load(Ordering::Relaxed);
            let ok = slot < MAX_PROCS && {
                let p = self.proc(slot);
                p.state.load(Ordering::Acquire) & 3 == PROC_LIVE && p.pid.load(Ordering::Relaxed) == pid
            };
            if !ok {
                return Err(crate::pages::Broken(format!(
                    "thread heap {d} (pid {pid}) names registry slot {slot}, not its live process"
                )));
            }
        }
        Ok(())
    }
}

impl Heap {
    /// The processes registered in the heap: those that allocated and have not dropped
    /// their handle. One that is not `alive` died holding its thread heaps.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        let inner = &*self.inner;
        let mut out: Vec<ProcessInfo> = (0..MAX_PROCS)
            .filter_map(|slot| {
                let p = inner.proc(slot);
                // SYNC: Acquire pairs with the Release store in `register`.
                (p.state.load(Ordering::Acquire) & 3 == PROC_LIVE).then(|| {
                    let (pid, start_time) = (p.pid.load(Ordering::Relaxed), p.start.load(Ordering::Relaxed));
                    ProcessInfo {
                        slot,
                        pid,
                        start_time,
                        alive: process_alive(pid, start_time),
                        thread_heaps: 0,
                    }
                })
            })
            .collect();
        for d in 0..layout::MAX_DESCS {
            let desc = inner.desc(d);
            if layout::desc_state(desc.state.load(Ordering::Relaxed)) == layout::DESC_FREE {
                continue;
            }
            let slot = desc.proc_slot.load(Ordering::Relaxed);
            if let Some(p) = out.iter_mut().find(|p| p.slot == slot) {
                p.thread_heaps += 1;
            }
        }
        out
    }
}
