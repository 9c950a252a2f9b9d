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
        let gen = tls::fork_gen() as u32;
        let cached = self.proc_slot.load(Ordering::Relaxed);
        if cached != 0 && (cached >> 32) as u32 == gen {
            return Ok(cached as u32 - 1);
        }
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

    fn register(&self) -> Result<u32, AllocError> {
        for slot in 0..MAX_PROCS {
            let p = self.proc(slot);
            let word = p.state.load(Ordering::Relaxed);
            if word & 3 != PROC_FREE {
                continue;
            }
            let claimed = layout::next_gen(word, PROC_CLAIMING);
            // Relaxed: the Release store below publishes the identity.
            if p.state.compare_exchange(word, claimed, Ordering::Relaxed, Ordering::Relaxed).is_err() {
                continue;
            }
            p.pid.store(tls::pid(), Ordering::Relaxed);
            p.start.store(tls::start_time(), Ordering::Relaxed);
            // SYNC: Release pairs with the Acquire load in `processes` (and in `unregister`):
            // whoever sees LIVE sees this identity.
            p.state.store(layout::same_gen(claimed, PROC_LIVE), Ordering::Release);
            return Ok(slot);
        }
        Err(AllocError::NoProcessSlot(MAX_PROCS))
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

    /// On the last drop of this process's handle: give the slot back (not a parent's,
    /// inherited through fork).
    pub(super) fn leave_registry(&self) {
        let cached = self.proc_slot.load(Ordering::Relaxed);
        if cached != 0 && (cached >> 32) as u32 == tls::fork_gen() as u32 {
            self.unregister(cached as u32 - 1);
        }
    }
}

/// Bits of a lock-holder tag that name the registry slot (slot + 1; all ones: a process
/// without a slot); the bits above hold the registration's generation.
const TAG_SLOT_BITS: u32 = 9;
const TAG_NO_SLOT: u32 = (1 << TAG_SLOT_BITS) - 1;
const TAG_GEN_MASK: u32 = (1 << (31 - TAG_SLOT_BITS)) - 1;
const _: () = assert!(MAX_PROCS < TAG_NO_SLOT);

impl Inner {
    /// This process's tag as a holder of the heap's locks: its registration (slot and
    /// generation), so that a waiter can tell when the holder has died, even if its pid
    /// was reused. A process the registry has no room for gets a tag no waiter will ever
    /// call dead.
    pub(super) fn lock_holder(&self) -> u32 {
        match self.process_slot() {
            Ok(slot) => {
                let gen = self.proc(slot).state.load(Ordering::Relaxed) >> 2;
                (gen & TAG_GEN_MASK) << TAG_SLOT_BITS | (slot + 1)
            }
            Err(_) => TAG_NO_SLOT,
        }
    }

    /// Whether the lock holder `tag` names is gone: its registration ended, or its
    /// process is no longer running (see [`holder_alive`]).
    pub(super) fn holder_dead(&self, tag: u32) -> bool {
        let slot = (tag & TAG_NO_SLOT).wrapping_sub(1);
        if slot >= MAX_PROCS {
            return false; // no registration to judge by
        }
        let p = self.proc(slot);
        // SYNC: Acquire pairs with the Release store in `register`: the identity read
        // next is the one of the registration in this word.
        let state = p.state.load(Ordering::Acquire);
        if state & 3 != PROC_LIVE || (state >> 2) & TAG_GEN_MASK != tag >> TAG_SLOT_BITS {
            return true; // the registration ended (a holder does not unregister)
        }
        !holder_alive(p.pid.load(Ordering::Relaxed), p.start.load(Ordering::Relaxed))
    }
}

/// Whether lock holder `pid`, started at `start`, still runs: more careful than
/// [`process_alive`], because calling a live holder dead would let two processes hold
/// a lock. Without the start time, or without procfs, a pid that exists is alive.
fn holder_alive(pid: u32, start: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(_) if start == 0 => true,
        Ok(_) => process_alive(pid, start),
        Err(_) => match rustix::process::Pid::from_raw(pid as i32) {
            Some(p) => rustix::process::test_kill_process(p) != Err(rustix::io::Errno::SRCH),
            None => false,
        },
    }
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
        let mut report = RecoveryReport::default();
        let mut seen = std::collections::HashMap::new();
        let mut alive =
            |pid: u32, start: u64| *seen.entry((pid, start)).or_insert_with(|| holder_alive(pid, start));
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
        report
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
    /// Every active thread heap names a registered slot of its own process (part of
    /// `Heap::check`).
    pub(super) fn check_registry(&self) -> Result<(), crate::pages::Broken> {
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
