//! Which thread heap (descriptor) the calling thread owns, per `Heap`, in thread-local
//! storage; and fork detection, so a forked child never keeps using its parent's
//! descriptors.
//!
//! A fork copies the parent's thread-locals into the child. The `pthread_atfork` child
//! handler clears the fast-path cache of the forking thread (the only thread the child
//! has) and bumps a process-wide generation; entries of the owned list from another
//! generation are ignored, so the child claims descriptors of its own.
#![allow(unsafe_code)]

use super::class::{Geometry, GEOMETRY_AT};
use super::raw::Queues;
use super::Inner;
use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Once, Weak};

static FORK_GEN: AtomicU64 = AtomicU64::new(0);
/// This process's start time, read from procfs on first use (0: not read yet).
static START: AtomicU64 = AtomicU64::new(0);
static PID: AtomicU32 = AtomicU32::new(0);
static TRACKING: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GEN.fetch_add(1, Ordering::Relaxed);
    PID.store(rustix::process::getpid().as_raw_nonzero().get() as u32, Ordering::Relaxed);
    // The child's own start time is read lazily: no I/O in here.
    START.store(0, Ordering::Relaxed);
    // The forking thread is the child's only thread: forget its parent's descriptor (and
    // cached slab) here, so the fast path need not compare generations.
    LAST.with(|c| c.set(Last::EMPTY));
}

/// Starts fork tracking (once per process).
pub(crate) fn init() {
    TRACKING.call_once(|| {
        PID.store(rustix::process::getpid().as_raw_nonzero().get() as u32, Ordering::Relaxed);
        // SAFETY: registers a handler that only touches atomics and calls getpid, both
        // async-signal-safe, as a child handler must be.
        let r = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        assert_eq!(r, 0, "pthread_atfork failed");
    });
}

/// This process's start time in clock ticks since boot (proc(5) `/proc/self/stat` field
/// 22), read once per process; 0 if procfs cannot be read.
pub(crate) fn start_time() -> u64 {
    let cached = START.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let t = std::fs::read_to_string("/proc/self/stat")
        .ok()
        // the command name (field 2) may hold spaces: count fields after its ')'
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok()))
        .unwrap_or(0);
    START.store(t, Ordering::Relaxed);
    t
}

/// How many forks this process's image has been through: a cached per-process value is
/// stale when its generation differs.
#[inline]
pub(crate) fn fork_gen() -> u64 {
    FORK_GEN.load(Ordering::Relaxed)
}

/// This process's pid, without a system call.
#[inline]
pub(crate) fn pid() -> u32 {
    PID.load(Ordering::Relaxed)
}

struct Owned {
    heap: Weak<Inner>,
    id: u64,
    desc: u32,
    /// The descriptor's class queues in this process's mapping of the heap.
    queues: Queues,
    /// The descriptor's state word when claimed (its generation): abandons only that claim.
    token: u32,
    gen: u64,
}

/// The descriptors this thread owns; on thread exit they are abandoned, so another
/// thread can adopt them with their slabs.
struct OwnedList(Vec<Owned>);

impl Drop for OwnedList {
    fn drop(&mut self) {
        // Later thread-local destructors of this thread must not keep using a heap given
        // up here: forget it (they free as a foreign thread; `remember` refuses to claim).
        LAST.with(|c| c.set(Last::EMPTY));
        let gen = FORK_GEN.load(Ordering::Relaxed);
        for o in self.0.drain(..).filter(|o| o.gen == gen) {
            if let Some(heap) = o.heap.upgrade() {
                heap.abandon(o.desc, o.token);
            }
        }
    }
}

/// The thread's descriptor in the heap it used last, cached for the fast paths.
#[derive(Clone, Copy)]
struct Last {
    /// The heap (0: none).
    id: u64,
    /// The descriptor, or [`NONE`]: this thread has none in that heap (it only frees there).
    desc: u32,
    /// The descriptor's class queues; for `NONE`, the heap's empty ones.
    queues: Queues,
    /// A one-unit slab of `desc` the thread freed into, validated then (0: none), and its
    /// class. Only the owner gives a slab back (`forget_slab`), and a descriptor changes
    /// hands only after its owner abandoned it (which clears this), so while the entry
    /// stands the slab is still this thread's: its frees skip the unit table.
    slab: u64,
    class: u32,
    /// `&GEOMETRY_AT[class]`, as a pointer: a reference's niche would make every access
    /// to the thread-local test it.
    geometry: *const Geometry,
}

impl Last {
    const EMPTY: Last =
        Last { id: 0, desc: NONE, queues: Queues::DANGLING, slab: 0, class: 0, geometry: &GEOMETRY_AT[0] };
}

thread_local! {
    static LAST: Cell<Last> = const { Cell::new(Last::EMPTY) };
    static OWNED: RefCell<OwnedList> = const { RefCell::new(OwnedList(Vec::new())) };
}

/// The descriptor the calling thread owns in heap `id` and its class queues; without
/// one, [`NONE`] and `empty` (the heap's queues that hold no slab). `NONE` names no
/// descriptor, so it equals no slab's owner.
#[inline(always)]
pub(crate) fn current(id: u64, empty: Queues) -> (u32, Queues) {
    let last = LAST.with(Cell::get);
    if last.id == id {
        (last.desc, last.queues)
    } else {
        lookup_slow(id, empty)
    }
}

/// A one-unit slab the calling thread owns, as the free fast path needs it.
#[derive(Clone, Copy)]
pub(crate) struct OwnSlab {
    pub(crate) class: usize,
    pub(crate) geometry: &'static Geometry,
    pub(crate) desc: u32,
}

/// If the calling thread's cached slab in heap `id` is `slab`, that slab (see
/// `Last::slab`).
#[inline(always)]
pub(crate) fn cached_slab(id: u64, slab: u64) -> Option<OwnSlab> {
    let last = LAST.with(Cell::get);
    (last.id == id && last.slab == slab).then(|| OwnSlab {
        class: last.class as usize,
        // SAFETY: `geometry` is always a reference into the static `GEOMETRY_AT` (see
        // `Last::EMPTY` and `cache_slab`).
        geometry: unsafe { &*last.geometry },
        desc: last.desc,
    })
}

/// Caches `slab`, a one-unit slab the calling thread owns in heap `id`, whose descriptor
/// `current` just returned.
#[inline(always)]
pub(crate) fn cache_slab(id: u64, slab: u64, own: OwnSlab) {
    LAST.with(|c| {
        let last = c.get();
        if last.id == id {
            c.set(Last { slab, class: own.class as u32, geometry: own.geometry, ..last });
        }
    });
}

/// The calling thread (the owner) gives `slab` back: it must not stay cached.
#[inline]
pub(crate) fn forget_slab(slab: u64) {
    LAST.with(|c| {
        let last = c.get();
        if last.slab == slab {
            c.set(Last { slab: 0, ..last });
        }
    });
}

/// "No descriptor in this heap".
pub(crate) const NONE: u32 = u32::MAX;

#[cold]
fn lookup_slow(id: u64, empty: Queues) -> (u32, Queues) {
    let gen = FORK_GEN.load(Ordering::Relaxed);
    let (desc, queues) = OWNED
        .try_with(|o| o.borrow().0.iter().find(|o| o.id == id && o.gen == gen).map(|o| (o.desc, o.queues)))
        .ok()
        .flatten()
        .unwrap_or((NONE, empty));
    LAST.with(|c| c.set(Last { id, desc, queues, ..Last::EMPTY }));
    (desc, queues)
}

/// Records that the calling thread now owns `desc` in `heap`, whose class queues are at
/// `queues`. Returns false when the thread is exiting (its owned list is already gone):
/// the caller gives `desc` back.
pub(crate) fn remember(heap: Weak<Inner>, id: u64, desc: u32, queues: Queues, token: u32) -> bool {
    let gen = FORK_GEN.load(Ordering::Relaxed);
    let kept =
        OWNED.try_with(|o| o.borrow_mut().0.push(Owned { heap, id, desc, queues, token, gen })).is_ok();
    if kept {
        LAST.with(|c| c.set(Last { id, desc, queues, ..Last::EMPTY }));
    }
    kept
}
