//! Where a pool lives, and its header: the typed views every pool kind shares.
//!
//! Layer: pools, above the heap. A pool occupies one *region* of a segment, 64-aligned:
//!
//! ```text
//!   at        at + 64                      at + data
//!   ┌────────┬────────────────────────────┬──────────────────────────────┐
//!   │ Header │ meta: bitmap words (slots) │ data: slots, or arena bytes  │
//!   │        │ or u32 links (free list)   │ (64-aligned)                 │
//!   └────────┴────────────────────────────┴──────────────────────────────┘
//! ```
//!
//! The region is given by the caller (an offset of a segment) or allocated from a
//! heap; it holds offsets and indices only, so every process reads it at whatever
//! address it mapped the segment.
//!
//! # Safety
//! A region's views are made only after [`Region::new`] checked that the whole region
//! lies in committed memory (which never shrinks) and is 64-aligned; the [`Host`] held
//! beside them keeps the mapping alive as long as the views. Everything viewed is an
//! atomic, valid for any bit pattern and for concurrent access from any process.
#![allow(unsafe_code)]

use super::PoolError;
use crate::heap::Heap;
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::segment::Segment;
use core::ptr::NonNull;
use std::sync::Arc;

/// What keeps a pool's memory mapped: a segment of its own or a heap's.
#[derive(Debug, Clone)]
pub enum Host {
    /// A segment shared by reference count.
    Segment(Arc<Segment>),
    /// The segment of a heap (the pool's region may be one of its blocks).
    Heap(Heap),
}

impl Host {
    /// The segment.
    pub fn segment(&self) -> &Segment {
        match self {
            Host::Segment(s) => s,
            Host::Heap(h) => h.segment(),
        }
    }
}

impl From<Arc<Segment>> for Host {
    fn from(s: Arc<Segment>) -> Self {
        Host::Segment(s)
    }
}

impl From<Segment> for Host {
    fn from(s: Segment) -> Self {
        Host::Segment(Arc::new(s))
    }
}

impl From<Heap> for Host {
    fn from(h: Heap) -> Self {
        Host::Heap(h)
    }
}

impl From<&Heap> for Host {
    fn from(h: &Heap) -> Self {
        Host::Heap(h.clone())
    }
}

/// Bytes of the header; the meta array starts right after it.
pub(crate) const HEADER: u64 = 64;

/// `magic` is `MAGIC | kind` once formatted, 0 while being formatted.
const MAGIC: u64 = 0x5348_4d50_4f4f_4c00; // "SHMPOOL\0"
/// Bumped when the layout of any pool kind changes.
pub(crate) const VERSION: u64 = 1;

/// The pool kinds, as stored in the low byte of `magic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Slots = 1,
    Bump = 2,
    FreeList = 3,
    Mutex = 4,
    Semaphore = 5,
    Event = 6,
    Cells = 7,
    Spsc = 8,
    Mpmc = 9,
    Oneshot = 10,
    Swap = 11,
}

impl Kind {
    fn name(raw: u64) -> &'static str {
        match raw {
            1 => "SlotPool",
            2 => "BumpArena",
            3 => "FreeList",
            4 => "Mutex",
            5 => "Semaphore",
            6 => "Event",
            7 => "SharedCells",
            8 => "SPSC channel",
            9 => "MPMC channel",
            10 => "one-shot message",
            11 => "swappable segment",
            _ => "pool of an unknown kind",
        }
    }
}

/// The header of a pool's region.
///
/// | field      | SlotPool           | BumpArena        | FreeList            |
/// |------------|--------------------|------------------|---------------------|
/// | `unit`     | slot bytes         | 1                | slot bytes          |
/// | `count`    | slots              | capacity bytes   | slots               |
/// | `data`     | data offset − at   | data offset − at | data offset − at    |
/// | `state`    | handles opened     | bytes used       | stack head          |
/// | `free`     | —                  | —                | free slots          |
/// | `wake`     | waiters eventcount | —                | —                   |
///
/// Invariants: `data` is a multiple of 64, at least `HEADER` + the meta bytes, and
/// `at + data + unit · count` lies in the region's committed memory.
#[repr(C)]
pub(crate) struct Header {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU64,
    pub(crate) unit: AtomicU64,
    pub(crate) count: AtomicU64,
    pub(crate) data: AtomicU64,
    pub(crate) state: AtomicU64,
    pub(crate) free: AtomicU64,
    pub(crate) wake: AtomicU32,
    _pad: AtomicU32,
}

#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Header>() == HEADER as usize);

/// The fixed numbers of a pool, read once from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) unit: u64,
    pub(crate) count: u64,
    /// Data offset from the region's start.
    pub(crate) data: u64,
}

impl Geometry {
    /// The layout of a pool of `count` units of `unit` bytes with `meta` bytes of meta
    /// array: the data offset, or `None` if it overflows.
    pub(crate) fn plan(unit: u64, count: u64, meta: u64) -> Option<Geometry> {
        let data = HEADER.checked_add(meta)?.checked_next_multiple_of(64)?;
        data.checked_add(unit.checked_mul(count)?)?;
        Some(Geometry { unit, count, data })
    }

    /// Bytes of the whole region.
    pub(crate) fn bytes(&self) -> u64 {
        self.data + self.unit * self.count
    }
}

/// A pool's region, mapped: the host and views of the header and meta array.
#[derive(Debug)]
pub(crate) struct Region {
    host: Host,
    at: u64,
    geo: Geometry,
    base: NonNull<u8>,
}

// SAFETY: the views are atomics in shared memory (see the module's Safety section);
// the host is Send and Sync.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Checks that `at..at + bytes` is committed and 64-aligned, growing the segment to
    /// cover it if `grow`.
    fn map(host: &Host, at: u64, bytes: u64, grow: bool) -> Result<NonNull<u8>, PoolError> {
        if !at.is_multiple_of(64) {
            return Err(PoolError::Misaligned(at));
        }
        let seg = host.segment();
        let end = at.checked_add(bytes).ok_or(PoolError::InvalidGeometry("the region overflows"))?;
        if grow && end > seg.committed() {
            seg.grow_to(end)?;
        }
        Ok(seg.ptr_at(at, bytes)?)
    }

    /// Formats a fresh region of `kind` at `at`: the header (magic last) and meta words
    /// set by `init_meta`. Whatever was there is overwritten.
    pub(crate) fn format(
        host: Host,
        at: u64,
        kind: Kind,
        geo: Geometry,
        init: impl FnOnce(&Region),
    ) -> Result<Region, PoolError> {
        if !host.segment().is_writable() {
            return Err(PoolError::ReadOnly);
        }
        let base = Self::map(&host, at, geo.bytes(), true)?;
        let r = Region { host, at, geo, base };
        let h = r.header();
        h.magic.store(0, Ordering::Relaxed);
        h.version.store(VERSION, Ordering::Relaxed);
        h.unit.store(geo.unit, Ordering::Relaxed);
        h.count.store(geo.count, Ordering::Relaxed);
        h.data.store(geo.data, Ordering::Relaxed);
        h.state.store(0, Ordering::Relaxed);
        h.free.store(0, Ordering::Relaxed);
        h.wake.store(0, Ordering::Relaxed);
        init(&r);
        // SYNC: Release pairs with the Acquire in `open`: a pool seen is fully formed.
        h.magic.store(MAGIC | kind as u64, Ordering::Release);
        Ok(r)
    }

    /// Opens the pool of `kind` at `at`, checking its header against the segment and
    /// its geometry with `planned` (what the kind would lay out for its unit and count).
    pub(crate) fn open(
        host: Host,
        at: u64,
        kind: Kind,
        planned: impl FnOnce(u64, u64) -> Option<Geometry>,
    ) -> Result<Region, PoolError> {
        // Every pool operation but a count writes the pool's words.
        if !host.segment().is_writable() {
            return Err(PoolError::ReadOnly);
        }
        let head = Self::map(&host, at, HEADER, false)?;
        // SAFETY: 64 committed bytes at a 64-aligned offset (checked by `map`), viewed as
        // atomics only; `host` keeps them mapped while the reference is used.
        let h: &Header = unsafe { head.cast().as_ref() };
        // SYNC: Acquire pairs with the Release in `format`.
        let magic = h.magic.load(Ordering::Acquire);
        if magic & !0xff != MAGIC {
            return Err(PoolError::NotAPool(at));
        }
        if magic & 0xff != kind as u64 {
            let expected = Kind::name(kind as u64);
            return Err(PoolError::WrongKind { at, found: Kind::name(magic & 0xff), expected });
        }
        if h.version.load(Ordering::Relaxed) != VERSION {
            return Err(PoolError::Corrupted { at, why: "written by another layout version" });
        }
        let geo = Geometry {
            unit: h.unit.load(Ordering::Relaxed),
            count: h.count.load(Ordering::Relaxed),
            data: h.data.load(Ordering::Relaxed),
        };
        if planned(geo.unit, geo.count) != Some(geo) {
            return Err(PoolError::Corrupted { at, why: "the geometry does not match its layout" });
        }
        let base = Self::map(&host, at, geo.bytes(), false)?;
        Ok(Region { host, at, geo, base })
    }

    pub(crate) fn host(&self) -> &Host {
        &self.host
    }

    pub(crate) fn segment(&self) -> &Segment {
        self.host.segment()
    }

    /// The region's offset in the segment.
    pub(crate) fn at(&self) -> u64 {
        self.at
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Segment offset of the data.
    pub(crate) fn data(&self) -> u64 {
        self.at + self.geo.data
    }

    #[inline(always)]
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the header is the region's first 64 bytes, committed and 64-aligned
        // (`map`); atomics only; `self.host` keeps them mapped.
        unsafe { self.base.cast().as_ref() }
    }

    /// The meta array as `n` atomics of type `A` (which the kind's `plan` sized).
    #[inline(always)]
    pub(crate) fn meta<A: Atom>(&self, n: usize) -> &[A] {
        self.meta_at(0, n)
    }

    /// `n` atomics of type `A` at byte `at` of the meta array (8-aligned, inside the
    /// meta bytes the kind's `plan` sized).
    #[inline(always)]
    pub(crate) fn meta_at<A: Atom>(&self, at: u64, n: usize) -> &[A] {
        debug_assert!(at.is_multiple_of(8));
        debug_assert!(HEADER + at + (n * core::mem::size_of::<A>()) as u64 <= self.geo.data);
        // SAFETY: the range lies between the header and the data, inside the committed
        // region (`map` checked `geo.bytes()`; `open` checked the geometry is the one the
        // kind plans, whose meta bytes cover it); 8-aligned (a 64-aligned region + 64 +
        // a multiple of 8), and `A` is at most 8-aligned; atomics only (`Atom`).
        unsafe {
            let p = self.base.as_ptr().add((HEADER + at) as usize).cast::<A>();
            core::slice::from_raw_parts(p, n)
        }
    }

    /// The data as `n` atomics of type `A` (the kind's unit is `A`'s size).
    pub(crate) fn data_atoms<A: Atom>(&self, n: usize) -> &[A] {
        debug_assert!((n * core::mem::size_of::<A>()) as u64 <= self.geo.unit * self.geo.count);
        // SAFETY: the data lies inside the committed region (`map`), 64-aligned, and
        // `n` atoms fit in its `unit · count` bytes; atomics only (`Atom`).
        unsafe { core::slice::from_raw_parts(self.data_ptr().as_ptr().cast::<A>(), n) }
    }

    /// The data's first byte in this process.
    pub(crate) fn data_ptr(&self) -> NonNull<u8> {
        // SAFETY: `data` lies inside the region, which `map` checked is mapped.
        unsafe { self.base.add(self.geo.data as usize) }
    }
}

/// Types a meta array may hold: made of atomics only, at most 8-aligned, any bit pattern
/// valid (`heap::raw::Shared`).
pub(crate) trait Atom {}
impl Atom for AtomicU64 {}
impl Atom for AtomicU32 {}
impl Atom for crate::heap::lock::LockWord {}
