//! The shared heap: a general allocator inside a segment, shared by every process that
//! maps it (after mimalloc, Leijen et al., "Mimalloc: Free List Sharding in Action", 2019).
//!
//! ```text
//!   thread heap (Desc)          slabs of one size class            page-run allocator
//!   ┌────────────────┐      ┌──────────────┐   ┌──────────────┐     (pages::Buddy over
//!   │ class 3 ──────────────► slab  64 B   │──►│ slab  64 B   │      64 KiB units,
//!   │ class 9 ──┐    │      │ free ─► ─► ─►│   │ FULL, QUEUED │      under the page
//!   │ delayed ◄─┼──┐ │      │ remote bits ◄──── remote frees  │      lock)
//!   └───────────┼──┼─┘      └──────────────┘   └──────┬───────┘
//!               ▼  └──────────────────────────────────┘ first remote free into a FULL slab
//! ```
//!
//! - Each thread of each process owns a *thread heap* (a `Desc` in the segment); only the
//!   owner allocates from its slabs, with plain loads and stores: no lock, no atomic
//!   read-modify-write, no system call.
//! - A free by the owner clears the block's allocated bit and pushes it on its slab's
//!   `free` list. A free by anyone else sets the block's bit in the slab's remote bitmap
//!   with one `fetch_or`; the owner collects those bits a word at a time. A slab the owner
//!   put aside as full is queued on the owner's `delayed` stack by the first remote free
//!   into it (`remote.rs`).
//! - Each process that allocates holds a slot in the segment's process registry, and its
//!   thread heaps name it ([`Heap::processes`], `procs.rs`).
//! - Every free is checked against the unit table and the slab's bitmaps: offsets out of
//!   range, misaligned, interior, never allocated or already freed are a [`FreeError`]
//!   and change nothing.
//! - Blocks above 512 KiB are runs of units straight from the page-run allocator.
//! - The segment grows when the page-run allocator runs dry, up to its reservation; then
//!   allocation fails with [`AllocError::OutOfMemory`].
//!
//! Offsets, not pointers: a block is named by its offset in the segment, valid in every
//! process; [`Heap::resolve`] turns it into a pointer in this one.
//!
//! ```
//! use shmpool::heap::Heap;
//! use shmpool::SegmentOptions;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("doc")?)?;
//! let off = heap.alloc(100)?;
//! heap.write(off, b"hello")?;
//! assert!(heap.usable_size(off)? >= 100);
//! heap.free(off)?;
//! assert!(heap.free(off).is_err()); // double free: refused, heap unchanged
//! # Ok(()) }
//! ```
//!
//! # Safety
//! This module and `slab`, `store`, `layout`, `lock`, `raw`, `roots`, `typed`, `procs` and `tls` use `unsafe` only
//! to view the heap's own structures in the segment (`raw::Base::at`, whose contract is
//! in `raw.rs`) and to register the fork handler (`tls.rs`).
#![allow(unsafe_code)]

mod check;
pub mod class;
mod error;
mod journal;
mod layout;
pub(crate) mod lock;
mod procs;
mod raw;
pub(crate) mod remote;
mod roots;
mod slab;
mod store;
pub(crate) mod tls;
mod typed;
mod units;

pub use check::{process_alive, CheckReport, ClassStats, HeapStats, ThreadHeapInfo};
pub use error::{AllocError, FreeError};
pub use layout::{MAX_DESCS, MAX_PROCS, MAX_ROOTS, MAX_ROOT_NAME};
pub use procs::{ProcessInfo, RecoveryReport};
pub use roots::{RootError, ROOT_INIT_TIMEOUT};
pub use typed::ShmBox;

use crate::pages::UNIT_SHIFT;
use crate::segment::{AccessError, Segment};
use class::{class_of, GEOMETRY, MAX_CLASS_SIZE};
use core::sync::atomic::{AtomicU64, Ordering};
use layout::{
    Desc, Meta, DESC_ABANDONED, DESC_ACTIVE, DESC_FREE, HEAP_FORMATTING, HEAP_MAGIC, HEAP_VERSION, META_OFF,
};
use raw::Base;
use std::sync::Arc;

/// Why a segment could not be made into, or opened as, a heap.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeapError {
    /// The segment already holds a heap (use [`Heap::attach`]).
    #[error("the segment already holds a heap")]
    AlreadyFormatted,
    /// The segment holds no heap (use [`Heap::create`]).
    #[error("the segment holds no heap")]
    NotAHeap,
    /// The heap was written by another layout version.
    #[error("heap layout version {found}, this build reads {expected}")]
    VersionMismatch {
        /// Version found.
        found: u64,
        /// Version this build reads.
        expected: u64,
    },
    /// The heap's root record contradicts the segment.
    #[error("corrupted heap: {0}")]
    Corrupted(String),
    /// The segment reserves too little room for the heap's metadata and one unit.
    #[error("the segment is too small for a heap")]
    TooSmall,
    /// The segment is mapped read-only.
    #[error("the segment is mapped read-only")]
    ReadOnly,
    /// Committing the heap's metadata failed.
    #[error(transparent)]
    Grow(#[from] crate::segment::GrowError),
}

/// A heap inside a shared segment. Cheap to clone; usable from any thread.
#[derive(Clone, Debug)]
pub struct Heap {
    /// A copy of `inner.hot`, one load closer to the fast paths.
    hot: Hot,
    inner: Arc<Inner>,
}

/// What every handle of one heap shares in this process.
#[derive(Debug)]
pub(crate) struct Inner {
    seg: Segment,
    hot: Hot,
    /// Random; marks the descriptors this handle claimed, to abandon them on drop.
    instance: u64,
    /// This process's registry slot as `fork generation << 32 | slot + 1` (0: none yet).
    proc_slot: AtomicU64,
    /// Class queues that hold no slab: the fast path's view of a thread without a thread
    /// heap here (`Hot::empty` points at them).
    _empty: Box<[layout::ClassQueue; class::CLASSES]>,
}

/// The constants of a heap in this process that the fast paths use. They copy it into a
/// local first, so that their stores into the segment do not make the compiler reload it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hot {
    base: Base,
    /// Unique among the heaps of this process; keys the thread-local descriptor cache.
    id: u64,
    arena: u64,
    descs_off: u64,
    /// Offset of the unit remote states (`layout::remote_off`).
    remote_off: u64,
    max_units: u32,
    /// `Inner::_empty`.
    empty: raw::Queues,
}

impl core::ops::Deref for Inner {
    type Target = Hot;

    #[inline(always)]
    fn deref(&self) -> &Hot {
        &self.hot
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The largest alignment [`Heap::alloc_aligned`] serves: one 64 KiB unit.
pub const MAX_ALIGN: u64 = crate::pages::UNIT;
const _: () = assert!(MAX_ALIGN <= crate::segment::MAP_ALIGN);

impl Heap {
    /// Makes a fresh segment into a heap.
    pub fn create(seg: Segment) -> Result<Heap, HeapError> {
        if !seg.is_writable() {
            return Err(HeapError::ReadOnly);
        }
        let (max_units, descs_off, arena) = layout::plan(seg.reserved()).ok_or(HeapError::TooSmall)?;
        seg.grow_to(arena)?;
        let heap = Self::assemble(seg, arena, descs_off, max_units);
        let meta = heap.inner.meta();
        // Claim the formatting: of two processes creating a heap in one segment at once,
        // one formats and the other gets `AlreadyFormatted`.
        if meta.magic.compare_exchange(0, HEAP_FORMATTING, Ordering::Acquire, Ordering::Acquire).is_err() {
            return Err(HeapError::AlreadyFormatted);
        }
        meta.version.store(HEAP_VERSION, Ordering::Relaxed);
        meta.arena_start.store(arena, Ordering::Relaxed);
        meta.table_off.store(layout::TABLE_OFF, Ordering::Relaxed);
        meta.descs_off.store(descs_off, Ordering::Relaxed);
        meta.max_units.store(max_units, Ordering::Relaxed);
        for head in &meta.heads {
            head.store(crate::pages::NIL, Ordering::Relaxed);
        }
        // SYNC: Release pairs with the Acquire in `attach`: a heap seen is fully formed.
        meta.magic.store(HEAP_MAGIC, Ordering::Release);
        Ok(heap)
    }

    /// Opens the heap in `seg` (created by [`Heap::create`] in any process).
    pub fn attach(seg: Segment) -> Result<Heap, HeapError> {
        let (max_units, descs_off, arena) = layout::plan(seg.reserved()).ok_or(HeapError::NotAHeap)?;
        // A heap commits all its metadata at creation: with less committed, this is no
        // heap, and nothing past the committed end may be touched (not even by a drop).
        if seg.committed() < arena {
            return Err(HeapError::NotAHeap);
        }
        let heap = Self::assemble(seg, arena, descs_off, max_units);
        let meta = heap.inner.meta();
        // SYNC: Acquire pairs with the Release in `create`.
        if meta.magic.load(Ordering::Acquire) != HEAP_MAGIC {
            return Err(HeapError::NotAHeap);
        }
        let version = meta.version.load(Ordering::Relaxed);
        if version != HEAP_VERSION {
            return Err(HeapError::VersionMismatch { found: version, expected: HEAP_VERSION });
        }
        let ok = meta.arena_start.load(Ordering::Relaxed) == arena
            && meta.descs_off.load(Ordering::Relaxed) == descs_off
            && meta.max_units.load(Ordering::Relaxed) == max_units
            && meta.units.load(Ordering::Relaxed) <= max_units;
        if !ok {
            return Err(HeapError::Corrupted("the heap's layout does not match the segment".into()));
        }
        if heap.inner.seg.is_writable() {
            heap.inner.recover(); // what processes that died left behind
        }
        Ok(heap)
    }

    fn assemble(seg: Segment, arena: u64, descs_off: u64, max_units: u32) -> Heap {
        tls::init();
        let empty = Box::new(core::array::from_fn(|_| layout::ClassQueue::default()));
        let hot = Hot {
            base: Base::of(&seg),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            arena,
            descs_off,
            remote_off: layout::remote_off(seg.reserved()),
            max_units,
            empty: raw::Queues::new(&empty),
        };
        let inner = Inner {
            seg,
            hot,
            instance: crate::segment::random_id(),
            proc_slot: AtomicU64::new(0),
            _empty: empty,
        };
        Heap { hot, inner: Arc::new(inner) }
    }

    /// The segment the heap lives in.
    pub fn segment(&self) -> &Segment {
        &self.inner.seg
    }

    /// Allocates `size` bytes (16-aligned); returns the block's offset.
    #[inline]
    pub fn alloc(&self, size: u64) -> Result<u64, AllocError> {
        let inner = &*self.inner;
        if size > MAX_CLASS_SIZE {
            // Remote frees waiting for this thread may empty slabs whose units a large
            // block can use: take them before asking the pages (or growing).
            if let Some(d) = inner.my_desc() {
                inner.drain_delayed(d);
            }
            return inner.alloc_large(size);
        }
        let c = class_of(size);
        let h = self.hot;
        let (d, queues) = tls::current(h.id, h.empty);
        // SAFETY: the queues the cache holds for this heap, which is alive; `c < CLASSES`.
        match h.pop(unsafe { queues.class(c) }, c) {
            Some(off) => Ok(off),
            None => self.alloc_miss(d, c),
        }
    }

    /// The current slab of class `c` has no free block, or the thread has no thread heap
    /// here yet (`d` is `NONE`).
    #[cold]
    fn alloc_miss(&self, d: u32, c: usize) -> Result<u64, AllocError> {
        let d = if d == tls::NONE { self.claim()? } else { d };
        self.inner.alloc_slow(d, c)
    }

    /// Allocates `size` zeroed bytes.
    pub fn alloc_zeroed(&self, size: u64) -> Result<u64, AllocError> {
        let off = self.alloc(size)?;
        self.inner.zero(off, size);
        Ok(off)
    }

    /// Allocates `size` bytes at an offset (and address) aligned to `align`, a power of
    /// two up to [`MAX_ALIGN`] (64 KiB). Free it with [`Heap::free`] like any block.
    ///
    /// Up to 4 KiB the block comes from a size class whose blocks are aligned to `align`;
    /// above, it is a run of whole 64 KiB units. Every process maps the segment at a
    /// multiple of [`MAP_ALIGN`](crate::segment::MAP_ALIGN), so the address is as aligned
    /// as the offset.
    ///
    /// ```
    /// # use shmpool::{heap::Heap, SegmentOptions};
    /// # let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("doc").unwrap()).unwrap();
    /// let off = heap.alloc_aligned(100, 16 << 10).unwrap();
    /// assert_eq!(off % (16 << 10), 0);
    /// assert_eq!(heap.resolve(off).unwrap().0.as_ptr() as usize % (16 << 10), 0);
    /// heap.free(off).unwrap();
    /// ```
    pub fn alloc_aligned(&self, size: u64, align: u64) -> Result<u64, AllocError> {
        let inner = &*self.inner;
        if !align.is_power_of_two() || align > MAX_ALIGN {
            return Err(AllocError::BadAlign(align));
        }
        debug_assert_eq!(inner.seg.backend().base().as_ptr() as u64 % MAX_ALIGN, 0);
        if align <= 4096 {
            // Blocks of a class whose size is a multiple of `align` are aligned to it: the
            // slab places its blocks at their size's natural alignment (up to 4 KiB).
            let size = size.max(1).checked_next_multiple_of(align).ok_or(AllocError::TooLarge(size))?;
            return self.alloc(size);
        }
        // Units start at multiples of 64 KiB from the segment's start.
        if let Some(d) = inner.my_desc() {
            inner.drain_delayed(d);
        }
        inner.alloc_large(size.max(1))
    }

    /// Frees the block at `off`, from any thread of any process.
    ///
    /// A free that names no allocated block is refused with a [`FreeError`] and changes
    /// nothing: out of range, misaligned, interior, never allocated, or freed already by a
    /// free that happened before this one (in any thread or process). Two frees of one
    /// block that race (a data race in the program) cannot corrupt the heap either: at
    /// most one frees this allocation of the block, though an owner's free and another
    /// thread's may both return `Ok` (the second then frees the block's next allocation,
    /// or nothing).
    #[inline]
    pub fn free(&self, off: u64) -> Result<(), FreeError> {
        let inner = &*self.inner;
        match inner.free_small(self.hot, off) {
            slab::SmallFree::Done => Ok(()),
            slab::SmallFree::Foreign { class } => inner.free_foreign(off, class),
            slab::SmallFree::Other => inner.free_any(off),
        }
    }

    /// The allocated block that holds `off` (its start, or any byte inside it): the
    /// block's offset and usable size. For callers that address bytes within blocks.
    ///
    /// ```
    /// use shmpool::heap::Heap;
    /// use shmpool::SegmentOptions;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("doc")?)?;
    /// let b = heap.alloc(100)?;
    /// assert_eq!(heap.block_containing(b + 37)?, (b, heap.usable_size(b)?));
    /// # Ok(()) }
    /// ```
    pub fn block_containing(&self, off: u64) -> Result<(u64, u64), FreeError> {
        let inner = &*self.inner;
        let rel = off.checked_sub(inner.arena).ok_or(FreeError::OutOfRange(off))?;
        let u = rel >> UNIT_SHIFT;
        if u >= u64::from(inner.max_units) {
            return Err(FreeError::OutOfRange(off));
        }
        let (head, len, tag) = inner.run_head(u as u32).ok_or(FreeError::NotAllocated(off))?;
        let start = inner.unit_off(head);
        if tag == layout::TAG_LARGE {
            return Ok((start, inner.large_len(head, start)?));
        }
        let class = layout::tag_class(tag)
            .filter(|&c| GEOMETRY[c].units == len)
            .ok_or(FreeError::NotAllocated(off))?;
        let g = &GEOMETRY[class];
        let into = (off - start).checked_sub(u64::from(g.blocks_start)).ok_or(FreeError::Interior(off))?;
        let idx = into / g.size;
        if idx >= u64::from(g.capacity) {
            return Err(FreeError::Interior(off));
        }
        let block = start + u64::from(g.blocks_start) + idx * g.size;
        inner.check_allocated(start, class, idx as u32, block)?;
        Ok((block, g.size))
    }

    /// Bytes usable in the allocated block at `off` (at least what was asked for).
    pub fn usable_size(&self, off: u64) -> Result<u64, FreeError> {
        let inner = &*self.inner;
        match inner.locate(off)? {
            Located::Large { head } => inner.large_len(head, off),
            Located::Slab { slab, class, idx } => {
                inner.check_allocated(slab, class, idx, off)?;
                Ok(GEOMETRY[class].size)
            }
        }
    }

    /// Resizes the block at `off` to `size` bytes, moving it if needed; returns the new
    /// offset. The old block is freed only once the new one holds its bytes. A moved
    /// block is 16-aligned, whatever alignment [`Heap::alloc_aligned`] gave the old one.
    pub fn realloc(&self, off: u64, size: u64) -> Result<u64, ReallocError> {
        let old = self.usable_size(off).map_err(ReallocError::Free)?;
        if size <= old && (size > MAX_CLASS_SIZE || size >= old / 2) {
            return Ok(off);
        }
        let new = self.alloc(size).map_err(ReallocError::Alloc)?;
        self.inner.copy_within(off, new, old.min(size));
        self.free(off).map_err(ReallocError::Free)?;
        Ok(new)
    }

    /// A pointer to the allocated block at `off` and its usable length. Dereferencing it
    /// is the caller's business: the block is shared memory.
    pub fn resolve(&self, off: u64) -> Result<(core::ptr::NonNull<u8>, u64), FreeError> {
        let len = self.usable_size(off)?;
        let ptr = self.inner.seg.ptr_at(off, len).map_err(|_| FreeError::OutOfRange(off))?;
        Ok((ptr, len))
    }

    /// Copies `data` into the block at `off` (bounds-checked against the block).
    pub fn write(&self, off: u64, data: &[u8]) -> Result<(), AccessError> {
        self.check_span(off, data.len() as u64)?;
        self.inner.seg.write_bytes(off, data)
    }

    /// Copies from the block at `off` into `buf` (bounds-checked against the block).
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        self.check_span(off, buf.len() as u64)?;
        self.inner.seg.read_bytes(off, buf)
    }

    fn check_span(&self, off: u64, len: u64) -> Result<(), AccessError> {
        let committed = self.inner.seg.committed();
        match self.usable_size(off) {
            Ok(block) if len <= block => Ok(()),
            _ => Err(AccessError::OutOfBounds { offset: off, len, committed }),
        }
    }

    /// Claims a thread heap for the calling thread.
    #[cold]
    fn claim(&self) -> Result<u32, AllocError> {
        let inner = &*self.inner;
        let slot = match inner.process_slot() {
            Ok(slot) => slot,
            // The registry is full: the slots of dead processes come free by recovery.
            Err(_) if inner.recover().dead_processes > 0 => inner.process_slot()?,
            Err(e) => return Err(e),
        };
        // Adopt an abandoned heap first (its slabs come along), else take a free one.
        for from in [DESC_ABANDONED, DESC_FREE] {
            for d in 0..layout::MAX_DESCS {
                let desc = inner.desc(d);
                let word = desc.state.load(Ordering::Relaxed);
                if layout::desc_state(word) != from {
                    continue;
                }
                let Some(token) = inner.take_desc(d, word, slot) else { continue };
                let queues = raw::Queues::new(&desc.classes);
                if !tls::remember(Arc::downgrade(&self.inner), inner.id, d, queues, token) {
                    inner.abandon(d, token);
                    return Err(AllocError::ThreadExiting);
                }
                return Ok(d);
            }
        }
        // Every thread heap is taken: those of dead processes come free by recovery.
        if inner.recover().thread_heaps > 0 {
            return self.claim();
        }
        Err(AllocError::NoThreadHeap(layout::MAX_DESCS))
    }
}

impl Hot {
    #[inline(always)]
    pub(super) fn desc(&self, d: u32) -> &Desc {
        debug_assert!(d < layout::MAX_DESCS);
        // SAFETY: descriptors lie in the committed metadata; `d` came from `claim` or a
        // slab header the heap wrote.
        unsafe { self.base.at(self.descs_off + u64::from(d) * layout::DESC_BYTES) }
    }

    #[inline(always)]
    pub(super) fn unit_off(&self, u: u32) -> u64 {
        self.arena + (u64::from(u) << UNIT_SHIFT)
    }

    /// Unit `u`'s remote state and delayed-stack link (`u < max_units`).
    #[inline(always)]
    pub(super) fn unit_remote(&self, u: u32) -> &remote::UnitRemote {
        debug_assert!(u < self.max_units);
        // SAFETY: the array (one 8-aligned `UnitRemote` per unit of the reservation) is in
        // the metadata committed at creation, and `u < max_units`.
        unsafe { self.base.at(self.remote_off + 8 * u64::from(u)) }
    }

    /// Unit `u`'s word in the unit table (`u < max_units`).
    ///
    /// Load it with Acquire (which pairs with the Release in `ShmStore::set_entry`) before
    /// viewing the unit as the head of a run: the run's units are then committed.
    #[inline(always)]
    pub(super) fn table_word(&self, u: u64) -> &crate::loom::AtomicU64 {
        debug_assert!(u < u64::from(self.max_units));
        // SAFETY: the whole table (one 8-aligned word per unit of the reservation) is in
        // the metadata committed at creation, and `u < max_units`.
        unsafe { self.base.at(layout::TABLE_OFF + 8 * u) }
    }
}

/// Why a `realloc` failed; the original block is untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReallocError {
    /// The offset is not an allocated block.
    #[error(transparent)]
    Free(FreeError),
    /// No room for the new size.
    #[error(transparent)]
    Alloc(AllocError),
}

/// What `locate` found at an offset.
#[derive(Debug, Clone, Copy)]
enum Located {
    Large { head: u32 },
    Slab { slab: u64, class: usize, idx: u32 },
}

impl Inner {
    fn meta(&self) -> &Meta {
        // SAFETY: the metadata lies in the committed prefix (grown at create, checked at
        // attach) and META_OFF is 8-aligned.
        unsafe { self.base.at(META_OFF) }
    }

    /// Claims thread heap `d`, found in state `word`, for the calling thread (of this
    /// handle, in registry slot `slot`): returns its ACTIVE state word, the token that
    /// abandons exactly this claim, or `None` if another claim came first.
    ///
    /// Under the page lock: a claimer that dies before ACTIVE leaves the thread heap
    /// `CLAIMING` only until the lock is taken over from it (`repair_claims`).
    pub(super) fn take_desc(&self, d: u32, word: u32, slot: u32) -> Option<u32> {
        let _lock = self.page_lock();
        let desc = self.desc(d);
        let claimed = layout::next_gen(word, layout::DESC_CLAIMING);
        // SYNC: Acquire pairs with the Release in `abandon` (or, from a dead owner's ACTIVE
        // word, with its claim's Release store: its later updates are visible because its
        // process has exited): the previous owner's updates of the descriptor and its slabs
        // are visible to the new one.
        desc.state.compare_exchange(word, claimed, Ordering::Acquire, Ordering::Relaxed).ok()?;
        crate::crash::point("claim.taken");
        desc.owner_pid.store(tls::pid(), Ordering::Relaxed);
        desc.owner_start.store(tls::start_time(), Ordering::Relaxed);
        desc.owner_tid.store(rustix::thread::gettid().as_raw_nonzero().get() as u32, Ordering::Relaxed);
        desc.proc_slot.store(slot, Ordering::Relaxed);
        desc.instance.store(self.instance, Ordering::Relaxed);
        let token = layout::same_gen(claimed, DESC_ACTIVE);
        // SYNC: Release pairs with the Acquire loads of the state in `Inner::drop`,
        // `recover` and `thread_heaps`: whoever sees ACTIVE sees this owner's identity.
        desc.state.store(token, Ordering::Release);
        Some(token)
    }

    /// The thread heap the calling thread owns here, if any.
    #[inline]
    fn my_desc(&self) -> Option<u32> {
        let (d, _) = tls::current(self.id, self.empty);
        (d != tls::NONE).then_some(d)
    }

    /// Any free: by the owner or anyone else, of a slab block or a large block, or of an
    /// offset that names no block (which it reports).
    #[inline(never)]
    fn free_any(&self, off: u64) -> Result<(), FreeError> {
        match self.locate(off)? {
            Located::Large { head } => self.free_large(head, off),
            Located::Slab { slab, class, idx } => {
                let owner = self.slab(slab).owner.load(Ordering::Relaxed);
                match self.my_desc() {
                    Some(d) if d == owner => self.free_local(d, slab, class, idx, off),
                    _ => self.free_remote(slab, class, idx, off),
                }
            }
        }
    }

    /// Finds the block an offset names, checking everything a free must check except
    /// the block's allocated state.
    #[inline]
    fn locate(&self, off: u64) -> Result<Located, FreeError> {
        let rel = off.checked_sub(self.arena).ok_or(FreeError::OutOfRange(off))?;
        let u = rel >> UNIT_SHIFT;
        if u >= u64::from(self.max_units) {
            return Err(FreeError::OutOfRange(off));
        }
        if !off.is_multiple_of(class::GRANULE) {
            return Err(FreeError::Misaligned(off));
        }
        let (head, len, tag) = self.run_head(u as u32).ok_or(FreeError::NotAllocated(off))?;
        if tag == layout::TAG_LARGE {
            return Ok(Located::Large { head });
        }
        let slab = self.unit_off(head);
        let class = layout::tag_class(tag)
            .filter(|&c| GEOMETRY[c].units == len)
            .ok_or(FreeError::NotAllocated(off))?;
        let idx = GEOMETRY[class].block_at(off - slab).ok_or(FreeError::Interior(off))?;
        Ok(Located::Slab { slab, class, idx })
    }

    /// The head, length and tag of the allocated run containing unit `u` (what
    /// `Buddy::run_of` answers, inlined for the free path: a slab's head unit needs one
    /// table read).
    #[inline(always)]
    fn run_head(&self, u: u32) -> Option<(u32, u32, u8)> {
        // SYNC: Acquire, see `table_word`.
        let word =
            |u: u32| crate::pages::UnitState::decode(self.table_word(u64::from(u)).load(Ordering::Acquire));
        use crate::pages::UnitState::{Run, Tail};
        match word(u) {
            Run { len, tag } if len > 0 => Some((u, len, tag)),
            Tail { head } if head < u => match word(head) {
                Run { len, tag } if u - head < len => Some((head, len, tag)),
                _ => None,
            },
            _ => None,
        }
    }

    pub(super) fn buddy(&self) -> store::ShmBuddy<'_> {
        crate::pages::Buddy::new(store::ShmStore {
            base: self.base,
            meta: self.meta(),
            table_off: layout::TABLE_OFF,
            arena: self.arena,
        })
    }

    /// Marks thread heap `d` abandoned if it is still in the claim `token` (its ACTIVE
    /// state word): its slabs wait for another thread to adopt it. A stale token (the
    /// heap was abandoned and claimed again since) changes nothing.
    pub(crate) fn abandon(&self, d: u32, token: u32) {
        let abandoned = layout::same_gen(token, DESC_ABANDONED);
        // SYNC: Release pairs with the Acquire CAS in `Heap::claim`.
        let _ = self.desc(d).state.compare_exchange(token, abandoned, Ordering::Release, Ordering::Relaxed);
    }

    fn zero(&self, off: u64, len: u64) {
        let zeros = [0u8; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(4096);
            self.seg.write_bytes(off + done, &zeros[..n as usize]).expect("a block just allocated");
            done += n;
        }
    }

    fn copy_within(&self, from: u64, to: u64, len: u64) {
        let mut buf = [0u8; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(4096) as usize;
            self.seg.read_bytes(from + done, &mut buf[..n]).expect("an allocated block");
            self.seg.write_bytes(to + done, &buf[..n]).expect("an allocated block");
            done += n as u64;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Abandon the thread heaps this handle's threads claimed (in this process), so
        // other threads or processes adopt their slabs.
        let pid = tls::pid();
        for d in 0..layout::MAX_DESCS {
            let desc = self.desc(d);
            // SYNC: Acquire pairs with the Release store of ACTIVE in `claim`: the identity
            // read next is the one of the claim in this word, and the CAS in `abandon`
            // fails if that claim has ended since.
            let word = desc.state.load(Ordering::Acquire);
            if layout::desc_state(word) == DESC_ACTIVE
                && desc.owner_pid.load(Ordering::Relaxed) == pid
                && desc.instance.load(Ordering::Relaxed) == self.instance
            {
                self.abandon(d, word);
            }
        }
        self.leave_registry();
    }
}
