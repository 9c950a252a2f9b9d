//! Errors of the pools: one enum for setting a pool up, one for using its blocks.

use crate::heap::{AllocError, RootError};
use crate::segment::{AccessError, GrowError};

/// Why a pool could not be created or opened. Nothing was changed in the segment,
/// except by `create`, which formats its region.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The geometry asked for cannot be laid out (zero slots, a slot too large...).
    #[error("invalid pool geometry: {0}")]
    InvalidGeometry(&'static str),
    /// The pool's offset is not 64-aligned.
    #[error("pool offset {0} is not 64-aligned")]
    Misaligned(u64),
    /// The region holds no pool (or one that is still being formatted).
    #[error("no pool at offset {0}")]
    NotAPool(u64),
    /// The region holds a pool of another kind.
    #[error("the pool at offset {at} is a {found}, not a {expected}")]
    WrongKind {
        /// The pool's offset.
        at: u64,
        /// The kind found.
        found: &'static str,
        /// The kind asked for.
        expected: &'static str,
    },
    /// The pool's header contradicts itself or the segment.
    #[error("corrupted pool at offset {at}: {why}")]
    Corrupted {
        /// The pool's offset.
        at: u64,
        /// What does not hold.
        why: &'static str,
    },
    /// A named pool exists with another geometry.
    #[error("pool {0:?} exists with another geometry")]
    Mismatch(String),
    /// The segment is mapped read-only.
    #[error("the segment is mapped read-only")]
    ReadOnly,
    /// The region lies outside the segment's committed or reserved bytes.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The segment could not grow to hold the region.
    #[error(transparent)]
    Grow(#[from] GrowError),
    /// The heap could not provide the region.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The name could not be looked up or published.
    #[error(transparent)]
    Root(#[from] RootError),
}

/// Why a block operation of a pool was refused. The pool is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    /// Every slot is taken, or the arena has too few bytes left.
    #[error("the pool is exhausted")]
    Exhausted,
    /// The request is larger than a slot (or than the whole arena).
    #[error("request of {size} bytes is larger than {max}")]
    TooLarge {
        /// Bytes asked for.
        size: u64,
        /// The most one block can hold.
        max: u64,
    },
    /// The alignment is not a power of two, or is larger than the pool can give.
    #[error("unsupported alignment {0}")]
    BadAlign(u64),
    /// The offset is not in the pool, not at a block's start where one is needed, or the
    /// range runs past its block.
    #[error("offset {0} is not a block of the pool (or the range leaves its block)")]
    BadOffset(u64),
    /// The slot index is past the pool's last slot.
    #[error("slot index {0} is out of range")]
    BadIndex(u32),
    /// The block at the offset is not allocated: a double free, or a free (or access) of
    /// a block never handed out.
    #[error("offset {0} is not an allocated block (double free?)")]
    NotAllocated(u64),
    /// The pool has no such operation.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The bytes could not be read or written.
    #[error(transparent)]
    Access(#[from] AccessError),
}
