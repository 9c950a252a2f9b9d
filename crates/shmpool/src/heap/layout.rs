//! Where the heap's structures lie in the segment, and what they hold.
//!
//! ```text
//!  0        segment header
//!  4096     Meta: magic, geometry, page lock, buddy list heads
//!  …        unit table: one u64 per unit of the reserved capacity (pages::UnitState)
//!  …        unit remote states: one remote::UnitRemote per unit of the reserved capacity
//!  …        thread-heap descriptors: MAX_DESCS × Desc
//!  …        named roots: MAX_ROOTS × Root
//!  …        process registry: MAX_PROCS × Proc
//!  arena    unit 0, aligned to 64 KiB; units are added as the segment grows
//! ```
//!
//! A *slab* is a run of units holding blocks of one size class. Its header is in band:
//!
//! ```text
//!  class, owner │ owner fields │ (reserved) │ allocated bitmap │ remote bitmap │ pad │ block 0 │ …
//!
//! Each part starts on its own cache line: `class` and `owner` are read by every free and
//! rarely written; the owner's fields and the allocated bitmap are written by the owner;
//! the remote bitmap by other processes. The slab's remote state (`FULL`, `QUEUED`) and
//! its delayed-stack link are in the unit's `UnitRemote`, in the metadata.
//! ```
//!
//! Slab invariants (walked by `Heap::check` on a quiescent heap):
//! - block `i` is *allocated* iff its bit is set in `allocated`; only the owner writes
//!   that bitmap;
//! - bit `i` of `remote` is set iff block `i` was freed by a non-owner and the owner has
//!   not collected it yet (so the block is still allocated);
//! - the blocks on `free` are exactly the unallocated blocks below `bump`; `used` is the
//!   number of allocated blocks;
//! - the slab is on its owner's class list, or on its full list iff `FULL` is set in its
//!   unit state;
//! - the slab is on its owner's delayed stack iff `QUEUED` is set in its unit state; a
//!   `FULL` slab with remote bits set is `QUEUED` (see `remote.rs`); a unit that heads no
//!   slab has state 0. (While a process runs, a slab is also `QUEUED` between a freer's
//!   flag and its push, and between the owner's pop and its unqueue.)
//!
//! # Safety
//! The `Shared` impls below hold because every struct here is `#[repr(C)]` and made only
//! of atomics (and arrays or structs of them); see `raw.rs`.
#![allow(unsafe_code)]

use super::class::CLASSES;
use super::raw::Shared;
use crate::pages::MAX_ORDER;
// The facade: under `cfg(loom)` these compile against loom (never run on a segment).
use crate::loom::{AtomicU32, AtomicU64};

/// "SHMHEAP1".
pub(crate) const HEAP_MAGIC: u64 = u64::from_ne_bytes(*b"SHMHEAP1");
/// The magic while `Heap::create` formats the heap.
pub(crate) const HEAP_FORMATTING: u64 = u64::from_ne_bytes(*b"SHMHEAP?");
/// Layout version of the heap structures.
pub(crate) const HEAP_VERSION: u64 = 5;
/// Offset of [`Meta`].
pub(crate) const META_OFF: u64 = crate::segment::HEADER_LEN;
/// Thread heaps a segment can hold (threads of all processes together).
pub const MAX_DESCS: u32 = 256;
/// Bytes of one [`Desc`] in the segment.
pub(crate) const DESC_BYTES: u64 = 8 * 8 + 8 * super::class::CLASSES as u64;

/// Offset of the first unit-table word, after [`Meta`].
pub(crate) const TABLE_OFF: u64 = META_OFF + 1024;

/// Named roots a heap can hold.
pub const MAX_ROOTS: u32 = 64;
/// Longest root name, in bytes.
pub const MAX_ROOT_NAME: usize = 96;

/// Where the unit table, the descriptors, the root table and the arena lie for a segment
/// reserving `reserved` bytes: `(max_units, descs_off, arena_start)`, or `None` if too
/// small. The root table follows the descriptors ([`roots_off`]), the process registry
/// the roots ([`procs_off`]).
pub(crate) fn plan(reserved: u64) -> Option<(u32, u64, u64)> {
    use crate::pages::UNIT;
    let units_bound = reserved / UNIT;
    let descs_off = (remote_off(reserved) + 8 * units_bound).next_multiple_of(64);
    let procs_end = procs_off(descs_off) + u64::from(MAX_PROCS) * PROC_BYTES;
    let arena = procs_end.next_multiple_of(UNIT);
    let units = reserved.checked_sub(arena)? / UNIT;
    (units > 0).then_some((u32::try_from(units).ok()?, descs_off, arena))
}

/// Offset of the unit remote states (`remote::UnitRemote`, 8 bytes each), after the
/// unit table, for a segment reserving `reserved` bytes.
pub(crate) fn remote_off(reserved: u64) -> u64 {
    TABLE_OFF + 8 * (reserved / crate::pages::UNIT)
}

/// Processes the registry holds at once.
pub const MAX_PROCS: u32 = 256;
/// Bytes of one [`Proc`].
pub(crate) const PROC_BYTES: u64 = 32;

/// Offset of the process registry, after the root table.
pub(crate) fn procs_off(descs_off: u64) -> u64 {
    (roots_off(descs_off) + u64::from(MAX_ROOTS) * ROOT_BYTES).next_multiple_of(64)
}

/// A process registry slot (`procs.rs`): `state` is `generation << 2 | PROC_*`.
#[repr(C)]
pub(crate) struct Proc {
    pub state: AtomicU32,
    pub pid: AtomicU32,
    /// Start time, clock ticks since boot (proc(5) `stat` field 22).
    pub start: AtomicU64,
    pub _reserved: [AtomicU64; 2],
}

// SAFETY: repr(C), atomics only.
unsafe impl Shared for Proc {}

/// Bytes of one [`Root`].
const ROOT_BYTES: u64 = 32 + MAX_ROOT_NAME as u64;

/// Offset of the root table for descriptors at `descs_off`.
pub(crate) fn roots_off(descs_off: u64) -> u64 {
    (descs_off + u64::from(MAX_DESCS) * DESC_BYTES).next_multiple_of(64)
}

/// A named root: `state` is `hash << 2 | ROOT_*`, the hash of the name with its low two
/// bits free; the name and the value's offset are valid once the state says READY.
#[repr(C)]
pub(crate) struct Root {
    pub state: AtomicU64,
    pub offset: AtomicU64,
    /// `size << 32 | align` of the value's type.
    pub shape: AtomicU64,
    pub name_len: AtomicU64,
    pub name: [AtomicU64; MAX_ROOT_NAME / 8],
}

// SAFETY: repr(C), atomics only.
unsafe impl Shared for Root {}

pub(crate) const ROOT_INIT: u64 = 1;
pub(crate) const ROOT_READY: u64 = 2;

/// Unit-table tag of a large block's run.
pub(crate) const TAG_LARGE: u8 = 2;
/// Unit-table tag of a slab run of class 0; class `c` is tagged `TAG_SLAB0 + c`, so the
/// table, which only the heap writes, names a slab's class.
pub(crate) const TAG_SLAB0: u8 = 16;
const _: () = assert!(TAG_SLAB0 as usize + super::class::CLASSES <= 256);

/// The unit-table tag of a slab of `class`.
pub(crate) const fn slab_tag(class: usize) -> u8 {
    TAG_SLAB0 + class as u8
}

/// The class of a slab run with unit-table tag `tag`, if it is a slab's.
#[inline(always)]
pub(crate) fn tag_class(tag: u8) -> Option<usize> {
    let c = tag.wrapping_sub(TAG_SLAB0) as usize;
    (c < super::class::CLASSES).then_some(c)
}

/// The heap's root record.
#[repr(C)]
pub(crate) struct Meta {
    pub magic: AtomicU64,
    pub version: AtomicU64,
    pub arena_start: AtomicU64,
    pub table_off: AtomicU64,
    pub descs_off: AtomicU64,
    pub max_units: AtomicU32,
    /// Units managed by the page-run allocator (the arena's committed units).
    pub units: AtomicU32,
    pub page_lock: super::lock::LockWord,
    pub heads: [AtomicU32; MAX_ORDER],
}

// SAFETY: repr(C), atomics only.
unsafe impl Shared for Meta {}

/// Desc states, in the low two bits of `Desc::state`; the bits above count claims (a
/// generation), so a stale abandon can never hit a later owner.
pub(crate) const DESC_FREE: u32 = 0;
pub(crate) const DESC_ACTIVE: u32 = 1;
pub(crate) const DESC_ABANDONED: u32 = 2;
/// Claimed, identity being written; not yet usable by anyone else.
pub(crate) const DESC_CLAIMING: u32 = 3;

/// The state part of a `Desc::state` word.
pub(crate) const fn desc_state(word: u32) -> u32 {
    word & 3
}

/// A state word (`generation << 2 | state`, for descriptors and registry slots) with its
/// state set to `state`, in the same generation.
pub(crate) const fn same_gen(word: u32, state: u32) -> u32 {
    (word & !3) | state
}

/// A state word with its state set to `state`, in the next generation: whoever still holds
/// the old word (a stale token) can no longer match it.
pub(crate) const fn next_gen(word: u32, state: u32) -> u32 {
    (word & !3).wrapping_add(4) | state
}

/// One class's slabs in a thread heap.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct ClassQueue {
    /// First slab with free blocks (unit + 1; 0 = none): where allocation happens.
    pub head: AtomicU32,
    /// First slab on the full list (unit + 1).
    pub full: AtomicU32,
}

/// A thread heap: owned by one thread of one process at a time.
#[repr(C)]
pub(crate) struct Desc {
    pub state: AtomicU32,
    pub owner_pid: AtomicU32,
    pub owner_tid: AtomicU32,
    /// The owner process's registry slot (`procs.rs`).
    pub proc_slot: AtomicU32,
    /// Which `Heap` handle of the owner process claimed it (abandoned when it drops).
    pub instance: AtomicU64,
    /// The owner process's start time (clock ticks since boot, proc(5) `stat` field 22):
    /// with `owner_pid`, it tells a dead owner from a new process that reused its pid.
    pub owner_start: AtomicU64,
    /// Full slabs of this heap that remote frees went into: a stack of unit + 1 (0 =
    /// empty), linked through `UnitRemote::next`; the owner pops it a slab at a time.
    pub delayed: AtomicU64,
    /// A [`Heap::alloc_in`](super::Heap::alloc_in) in progress (`journal.rs`): the
    /// offset of the slot it records into (0: none), and the block it is taking (0: none
    /// yet; a large run's head offset with [`JOURNAL_LARGE`] set: the run it is about to
    /// take under the page lock).
    pub journal_slot: AtomicU64,
    pub journal_block: AtomicU64,
    /// Set by a recovery that found processes dead: one of them may have flagged a slab
    /// of this heap `QUEUED` and died before pushing it; the owner looks (`rescue`).
    pub rescue: AtomicU64,
    pub classes: [ClassQueue; CLASSES],
}

// SAFETY: repr(C), atomics only.
unsafe impl Shared for Desc {}

/// In `Desc::journal_block`: the block is a large run, named before it was taken.
pub(crate) const JOURNAL_LARGE: u64 = 1;

/// `Slab::class` carries this in its upper half, so a stray unit is not taken for a slab.
pub(crate) const SLAB_MAGIC: u32 = 0x5AB0_0000;

/// The class a slab's `class` word names, if it is one (`SLAB_MAGIC | class`).
#[inline(always)]
pub(crate) fn slab_class(word: u32) -> Option<usize> {
    let c = word.wrapping_sub(SLAB_MAGIC) as usize;
    (c < CLASSES).then_some(c)
}

/// In [`Slab::used`]: the slab is the head of its class list (where allocation happens).
pub(crate) const USED_CURRENT: u32 = 1;
/// In [`Slab::used`]: the slab is on its owner's full list.
pub(crate) const USED_FULL: u32 = 1 << 31;

/// The in-band header of a slab: three cache lines, by who writes them.
#[repr(C)]
pub(crate) struct Slab {
    /// `SLAB_MAGIC | class`; written once. The unit table's tag is what frees trust;
    /// `check` verifies that the two agree.
    pub class: AtomicU32,
    /// Index of the owning [`Desc`]; changes only when the owner changes.
    pub owner: AtomicU32,
    pub _read_mostly: [AtomicU64; 7],
    /// First free block, as index + 1 (0 = none); owner only.
    pub free: AtomicU32,
    /// Blocks from here to capacity have never been handed out; owner only.
    pub bump: AtomicU32,
    /// Allocated blocks, plus [`USED_CURRENT`] while the slab is its class's current slab
    /// and [`USED_FULL`] while it is on the full list; owner only. An owner's free that
    /// leaves 0 here emptied a slab that may go back, and one that leaves `USED_FULL` set
    /// gave a full slab room: one test on the free path catches both.
    pub used: AtomicU32,
    pub _reserved: AtomicU32,
    /// Neighbours on the owner's class or full list (unit + 1); owner only.
    pub next: AtomicU32,
    pub prev: AtomicU32,
    pub _owner_line: [AtomicU64; 5],
    pub _reserved_line: [AtomicU64; 8],
}

// SAFETY: repr(C), atomics only.
unsafe impl Shared for Slab {}

// SAFETY: repr(C), atomics only.
unsafe impl Shared for super::remote::UnitRemote {}

#[cfg(not(loom))]
const _: () = {
    assert!(core::mem::size_of::<Slab>() as u64 == super::class::SLAB_FIELDS);
    assert!(core::mem::size_of::<Meta>() as u64 <= TABLE_OFF - META_OFF);
    assert!(core::mem::size_of::<Desc>() as u64 == DESC_BYTES);
    assert!(core::mem::size_of::<Proc>() as u64 == PROC_BYTES);
};
