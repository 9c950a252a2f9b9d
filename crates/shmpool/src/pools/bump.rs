//! `BumpArena`: allocation by bumping one shared offset, freed all at once by `reset`.
//!
//! Layer: pools. The region is a [`Header`](super::region::Header), whose `state` word
//! is the bytes used, then the arena. An allocation is one CAS of that word from any
//! process or thread; nothing else is kept, so there is no per-block free, and a process
//! killed at any instant leaves the arena whole.
//!
//! ```
//! use shmpool::pools::BumpArena;
//! use shmpool::SegmentOptions;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let seg = SegmentOptions::new().create_memfd("doc")?;
//! let at = seg.data_start();
//! let arena = BumpArena::create(seg, at, 4096)?;
//! let a = arena.alloc(100, 8)?;
//! let b = arena.alloc(64, 64)?;
//! assert!(b >= a + 100 && b % 64 == 0);
//! arena.reset(); // every block is gone at once
//! assert_eq!(arena.available_bytes(), 4096);
//! # Ok(()) }
//! ```

use super::region::{Geometry, Host, Kind, Region};
use super::{BlockError, Pool, PoolError};
use crate::heap::Heap;
use crate::loom::Ordering;
use crate::segment::MAP_ALIGN;

/// The default alignment of [`Pool::allocate`] on an arena.
pub const BUMP_ALIGN: u64 = 16;

/// An arena that many processes allocate from concurrently and reset at once.
#[derive(Debug)]
pub struct BumpArena {
    region: Region,
    capacity: u64,
}

impl BumpArena {
    fn plan(capacity: u64) -> Result<Geometry, PoolError> {
        if capacity == 0 {
            return Err(PoolError::InvalidGeometry("an arena holds at least one byte"));
        }
        Geometry::plan(1, capacity, 0).ok_or(PoolError::InvalidGeometry("the arena overflows"))
    }

    /// Bytes an arena of `capacity` bytes occupies.
    pub fn footprint(capacity: u64) -> Result<u64, PoolError> {
        Ok(Self::plan(capacity)?.bytes())
    }

    /// Formats an empty arena of `capacity` bytes at `at` (64-aligned) of `host`'s
    /// segment, growing the segment if needed. Whatever the region held is overwritten.
    pub fn create(host: impl Into<Host>, at: u64, capacity: u64) -> Result<Self, PoolError> {
        let region = Region::format(host.into(), at, Kind::Bump, Self::plan(capacity)?, |_| {})?;
        Ok(Self { region, capacity })
    }

    /// Opens the arena another handle (in any process) created at `at`.
    pub fn open(host: impl Into<Host>, at: u64) -> Result<Self, PoolError> {
        let region = Region::open(host.into(), at, Kind::Bump, |unit, count| {
            Self::plan(count).ok().filter(|g| g.unit == unit)
        })?;
        let capacity = region.geometry().count;
        Ok(Self { region, capacity })
    }

    /// Creates an arena in a block of `heap`.
    pub fn create_in(heap: &Heap, capacity: u64) -> Result<Self, PoolError> {
        super::in_heap(heap, Self::footprint(capacity)?, |at| Self::create(heap, at, capacity))
    }

    /// The arena named `name` in `heap`: created by the first caller in any process,
    /// opened by every other.
    pub fn named(heap: &Heap, name: &str, capacity: u64) -> Result<Self, PoolError> {
        super::named(
            heap,
            name,
            Self::footprint(capacity)?,
            |at| Self::create(heap, at, capacity),
            |at| Self::open(heap, at),
            |arena| arena.capacity == capacity,
        )
    }

    /// What keeps the region mapped.
    pub fn host(&self) -> &Host {
        self.region.host()
    }

    /// Where the arena is in its segment: what [`BumpArena::open`] takes.
    pub fn offset(&self) -> u64 {
        self.region.at()
    }

    /// Bytes the arena holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes used (alignment padding included). A count past the capacity (a corrupted
    /// segment) reads as a full arena.
    pub fn used_bytes(&self) -> u64 {
        self.region.header().state.load(Ordering::Relaxed).min(self.capacity)
    }

    /// Bytes not used yet: the most one allocation of alignment 1 can take now.
    pub fn available_bytes(&self) -> u64 {
        self.capacity - self.used_bytes()
    }

    /// Allocates `size` bytes aligned to `align` (a power of two up to the segment's
    /// mapping alignment); the block's segment offset.
    #[inline]
    pub fn alloc(&self, size: u64, align: u64) -> Result<u64, BlockError> {
        if !align.is_power_of_two() || align > MAP_ALIGN {
            return Err(BlockError::BadAlign(align));
        }
        if size > self.capacity {
            return Err(BlockError::TooLarge { size, max: self.capacity });
        }
        let data = self.region.data();
        let used = &self.region.header().state;
        let mut cur = used.load(Ordering::Relaxed);
        loop {
            // Aligned as a segment offset: every mapping's base is MAP_ALIGN-aligned.
            let start = (data + cur.min(self.capacity)).next_multiple_of(align);
            let end = start + size - data;
            if end > self.capacity {
                return Err(BlockError::Exhausted);
            }
            // SYNC: Acquire pairs with the Release store of `reset` (carried by the
            // release sequence of the CASes after it): the old blocks' last uses, which
            // the users ordered before the reset, happen before the new block's.
            match used.compare_exchange_weak(cur, end, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(start),
                Err(now) => cur = now,
            }
        }
    }

    /// Frees every block at once. Offsets handed out before become dangling: only for
    /// an arena whose blocks are no longer used.
    pub fn reset(&self) {
        // SYNC: Release pairs with the Acquire of every later `alloc`: what happened
        // before the reset (the old blocks' last uses, ordered before it by the users)
        // happens before the reused bytes are handed out.
        self.region.header().state.store(0, Ordering::Release);
    }

    /// `off..off + len` lies in the used part of the arena.
    fn used_range(&self, off: u64, len: u64) -> Result<(), BlockError> {
        let data = self.region.data();
        let inside = off >= data && off.checked_add(len).is_some_and(|end| end <= data + self.used_bytes());
        if !inside {
            return Err(BlockError::BadOffset(off));
        }
        Ok(())
    }

    /// Copies `data` to `off`, which with its length must lie in the used part.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<(), BlockError> {
        self.used_range(off, data.len() as u64)?;
        Ok(self.region.segment().write_bytes(off, data)?)
    }

    /// Copies the bytes at `off` (in the used part) into `buf`.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.used_range(off, buf.len() as u64)?;
        Ok(self.region.segment().read_bytes(off, buf)?)
    }
}

impl Pool for BumpArena {
    fn allocate(&self, size: u64) -> Result<u64, BlockError> {
        self.alloc(size, BUMP_ALIGN)
    }

    /// Refused: an arena frees only all at once, by [`BumpArena::reset`].
    fn free(&self, _off: u64) -> Result<(), BlockError> {
        Err(BlockError::Unsupported("a bump arena frees only all at once, by reset"))
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<(), BlockError> {
        BumpArena::write(self, off, data)
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        BumpArena::read(self, off, buf)
    }

    fn reset(&self) -> Result<(), BlockError> {
        BumpArena::reset(self);
        Ok(())
    }

    fn available_bytes(&self) -> u64 {
        BumpArena::available_bytes(self)
    }

    fn check_range(&self, off: u64, len: u64) -> Result<(), BlockError> {
        self.used_range(off, len)
    }
}
