//! Errors of the heap: one enum per operation family.

use crate::segment::GrowError;

/// Why an allocation failed. The heap is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// The segment reached its reserved maximum, or the backing store is full.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The size is larger than any segment can hold.
    #[error("request of {0} bytes is too large")]
    TooLarge(u64),
    /// The alignment is not a power of two, or is larger than a unit (64 KiB).
    #[error("unsupported alignment {0}")]
    BadAlign(u64),
    /// The calling thread is exiting (a thread-local destructor after its thread heap was
    /// given up): it may free, but not allocate.
    #[error("allocation from a thread that is exiting")]
    ThreadExiting,
    /// Every thread-heap descriptor of the segment is in use.
    #[error("all {0} thread heaps of the segment are in use")]
    NoThreadHeap(u32),
    /// Every slot of the segment's process registry is in use.
    #[error("all {0} process slots of the segment are in use")]
    NoProcessSlot(u32),
    /// The slot given to [`Heap::alloc_in`](super::Heap::alloc_in) already holds a block.
    #[error("slot at offset {0} is not empty")]
    SlotTaken(u64),
    /// The slot given to [`Heap::alloc_in`](super::Heap::alloc_in) is not an 8-aligned
    /// word inside an allocated block.
    #[error("offset {0} is not an 8-aligned word inside an allocated block")]
    BadSlot(u64),
}

impl From<GrowError> for AllocError {
    fn from(e: GrowError) -> Self {
        AllocError::OutOfMemory(e.to_string())
    }
}

/// Why a free (or a lookup of a block) was refused. The heap is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FreeError {
    /// The offset is outside the heap's arena.
    #[error("offset {0} is outside the heap")]
    OutOfRange(u64),
    /// The offset is not a multiple of 16, so it cannot start a block.
    #[error("offset {0} is misaligned")]
    Misaligned(u64),
    /// The offset points inside a block (or a slab header), not at its start.
    #[error("offset {0} points inside a block, not at its start")]
    Interior(u64),
    /// The block at the offset is already free.
    #[error("double free of offset {0}")]
    DoubleFree(u64),
    /// Nothing was ever allocated at the offset (or its memory went back to the pages).
    #[error("offset {0} is not an allocated block")]
    NotAllocated(u64),
}
