//! `FreeList`: fixed-size slots allocated and freed one by one, from any process,
//! lock-free.
//!
//! Layer: pools. The region is a [`Header`](super::region::Header) (its `state` word is
//! the stack head, `free` the free count), one `u32` link a slot (`stack.rs`), then the
//! slots. Unlike [`SlotPool`](super::SlotPool), which searches a bitmap, an allocation
//! here is one pop, whatever the pool's size; both refuse double frees.
//!
//! ```
//! use shmpool::pools::{FreeList, Pool};
//! use shmpool::SegmentOptions;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let seg = SegmentOptions::new().create_memfd("doc")?;
//! let at = seg.data_start();
//! let list = FreeList::create(seg, at, 64, 1000)?;
//! let a = list.alloc()?;
//! list.write(a, b"payload")?;
//! list.free(a)?;
//! assert!(list.free(a).is_err(), "a double free is refused");
//! # Ok(()) }
//! ```

use super::region::{Geometry, Host, Kind, Region};
use super::stack::{self, Stack};
use super::{BlockError, Pool, PoolError};
use crate::heap::Heap;
use crate::loom::AtomicU32;

/// Fixed-size slots with individual frees, shared by any number of processes.
#[derive(Debug)]
pub struct FreeList {
    region: Region,
    slot: u64,
    slots: u64,
}

impl FreeList {
    fn plan(slot_size: u64, slots: u64) -> Result<Geometry, PoolError> {
        if slots == 0 || slots > stack::MAX {
            return Err(PoolError::InvalidGeometry("a free list holds 1..2^32-2 slots"));
        }
        if slot_size == 0 {
            return Err(PoolError::InvalidGeometry("slots must be at least one byte"));
        }
        let links = (slots * 4).next_multiple_of(8);
        slot_size
            .checked_next_multiple_of(8)
            .and_then(|u| Geometry::plan(u, slots, links))
            .ok_or(PoolError::InvalidGeometry("the pool overflows"))
    }

    /// Bytes a free list of `slots` slots of `slot_size` bytes occupies.
    pub fn footprint(slot_size: u64, slots: u64) -> Result<u64, PoolError> {
        Ok(Self::plan(slot_size, slots)?.bytes())
    }

    /// Formats a free list at `at` (64-aligned) of `host`'s segment, every slot free,
    /// growing the segment if needed. Whatever the region held is overwritten.
    pub fn create(host: impl Into<Host>, at: u64, slot_size: u64, slots: u64) -> Result<Self, PoolError> {
        let geo = Self::plan(slot_size, slots)?;
        let region =
            Region::format(host.into(), at, Kind::FreeList, geo, |r| Self::stack_of(r, slots).fill())?;
        Ok(Self { region, slot: geo.unit, slots })
    }

    /// Opens the free list another handle (in any process) created at `at`.
    pub fn open(host: impl Into<Host>, at: u64) -> Result<Self, PoolError> {
        let region =
            Region::open(host.into(), at, Kind::FreeList, |unit, count| Self::plan(unit, count).ok())?;
        let geo = region.geometry();
        Ok(Self { region, slot: geo.unit, slots: geo.count })
    }

    /// Creates a free list in a block of `heap`.
    pub fn create_in(heap: &Heap, slot_size: u64, slots: u64) -> Result<Self, PoolError> {
        super::in_heap(heap, Self::footprint(slot_size, slots)?, |at| {
            Self::create(heap, at, slot_size, slots)
        })
    }

    /// The free list named `name` in `heap`: created by the first caller in any process,
    /// opened by every other.
    pub fn named(heap: &Heap, name: &str, slot_size: u64, slots: u64) -> Result<Self, PoolError> {
        let unit = Self::plan(slot_size, slots)?.unit;
        super::named(
            heap,
            name,
            Self::footprint(slot_size, slots)?,
            |at| Self::create(heap, at, slot_size, slots),
            |at| Self::open(heap, at),
            |list| list.slot == unit && list.slots == slots,
        )
    }

    fn stack_of(r: &Region, slots: u64) -> Stack<'_> {
        let h = r.header();
        Stack { head: &h.state, links: r.meta::<AtomicU32>(slots as usize), free: &h.free }
    }

    #[inline(always)]
    fn stack(&self) -> Stack<'_> {
        Self::stack_of(&self.region, self.slots)
    }

    /// What keeps the region mapped.
    pub fn host(&self) -> &Host {
        self.region.host()
    }

    /// Where the free list is in its segment: what [`FreeList::open`] takes.
    pub fn offset(&self) -> u64 {
        self.region.at()
    }

    /// Bytes of a slot (the size asked for, rounded up to a multiple of 8).
    pub fn slot_size(&self) -> u64 {
        self.slot
    }

    /// Slots in the list.
    pub fn capacity(&self) -> u64 {
        self.slots
    }

    /// Free slots now (a snapshot).
    pub fn available(&self) -> u64 {
        self.stack().free()
    }

    /// Allocates a slot; its segment offset.
    #[inline]
    pub fn alloc(&self) -> Result<u64, BlockError> {
        let i = self.stack().pop().ok_or(BlockError::Exhausted)?;
        Ok(self.region.data() + u64::from(i) * self.slot)
    }

    /// The index of the slot starting at `off`.
    fn index(&self, off: u64) -> Result<u32, BlockError> {
        let rel = off.checked_sub(self.region.data()).ok_or(BlockError::BadOffset(off))?;
        if !rel.is_multiple_of(self.slot) || rel / self.slot >= self.slots {
            return Err(BlockError::BadOffset(off));
        }
        Ok((rel / self.slot) as u32)
    }

    /// The allocated slot that holds `off..off + len`.
    fn allocated_range(&self, off: u64, len: u64) -> Result<(), BlockError> {
        let rel = off.checked_sub(self.region.data()).ok_or(BlockError::BadOffset(off))?;
        let i = rel / self.slot;
        let fits = (rel % self.slot).checked_add(len).is_some_and(|end| end <= self.slot);
        if i >= self.slots || !fits {
            return Err(BlockError::BadOffset(off));
        }
        if !self.stack().is_taken(i as u32) {
            return Err(BlockError::NotAllocated(off - rel % self.slot));
        }
        Ok(())
    }

    /// Frees the slot at `off`. An offset that is not a slot's start, or a slot not
    /// allocated (a double free), is refused and nothing changes.
    #[inline]
    pub fn free(&self, off: u64) -> Result<(), BlockError> {
        let i = self.index(off)?;
        if !self.stack().push(i) {
            return Err(BlockError::NotAllocated(off));
        }
        Ok(())
    }

    /// Copies `data` to `off`, which with its length must lie in one allocated slot.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<(), BlockError> {
        self.allocated_range(off, data.len() as u64)?;
        Ok(self.region.segment().write_bytes(off, data)?)
    }

    /// Copies the bytes at `off` (in one allocated slot) into `buf`.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.allocated_range(off, buf.len() as u64)?;
        Ok(self.region.segment().read_bytes(off, buf)?)
    }

    /// Frees every slot at once: only for a list no one is using (a concurrent
    /// allocation or free could be lost or doubled).
    pub fn reset(&self) {
        self.stack().fill();
    }
}

impl Pool for FreeList {
    fn allocate(&self, size: u64) -> Result<u64, BlockError> {
        if size > self.slot {
            return Err(BlockError::TooLarge { size, max: self.slot });
        }
        self.alloc()
    }

    fn free(&self, off: u64) -> Result<(), BlockError> {
        FreeList::free(self, off)
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<(), BlockError> {
        FreeList::write(self, off, data)
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        FreeList::read(self, off, buf)
    }

    fn reset(&self) -> Result<(), BlockError> {
        FreeList::reset(self);
        Ok(())
    }

    fn available_bytes(&self) -> u64 {
        self.available() * self.slot
    }

    fn check_range(&self, off: u64, len: u64) -> Result<(), BlockError> {
        self.allocated_range(off, len)
    }
}
