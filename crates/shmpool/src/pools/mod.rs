//! Pools: the simple strategies, for users who want fixed slots or bulk reset.
//!
//! Layer: pools, above the heap (DESIGN.md). Each pool lives in one region of a
//! segment — at an offset the caller chooses, or in a block of a [`Heap`] — and every
//! process that maps the segment can use it:
//!
//! | type          | blocks                 | allocate            | free                 |
//! |---------------|------------------------|---------------------|----------------------|
//! | [`SlotPool`]  | fixed slots, bitmap    | [`Loan`] (RAII), or wait with a timeout | drop the loan; by index anywhere |
//! | [`FreeList`]  | fixed slots, index stack | one pop           | one push; double frees refused |
//! | [`BumpArena`] | any size and alignment | one CAS             | all at once, `reset` |
//!
//! All three are lock-free, so a process killed at any instant leaves them whole; the
//! blocks it held stay taken (see each type). The [`Pool`] trait gives them one
//! interface of offsets: allocate, write, read, free, reset, available bytes.
//!
//! A pool is found by other processes at its offset (`open`), or by a name in a heap
//! (`named`):
//!
//! ```
//! use shmpool::heap::Heap;
//! use shmpool::pools::{FreeList, Pool};
//! use shmpool::SegmentOptions;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("doc")?)?;
//! let list = FreeList::named(&heap, "frames", 4096, 64)?;
//! let same = FreeList::named(&heap, "frames", 4096, 64)?; // in any process
//! assert_eq!(list.offset(), same.offset());
//! let f = list.allocate(4096)?;
//! same.free(f)?;
//! # Ok(()) }
//! ```

pub(crate) mod bitmap;
mod bump;
mod error;
mod freelist;
pub(crate) mod region;
mod slot;
pub(crate) mod stack;
pub(crate) mod wait;

pub use bump::{BumpArena, BUMP_ALIGN};
pub use error::{BlockError, PoolError};
pub use freelist::FreeList;
pub use region::Host;
pub use slot::{Loan, SlotPool, MAX_SLOTS};

use crate::heap::Heap;

/// One interface of offsets over the pool kinds (what the Python bindings expose).
///
/// Offsets are segment offsets. Bad offsets, ranges that leave their block and frees of
/// blocks not allocated are refused with a [`BlockError`] and change nothing.
pub trait Pool {
    /// Allocates a block of at least `size` bytes; its offset.
    fn allocate(&self, size: u64) -> Result<u64, BlockError>;
    /// Frees the block at `off`.
    fn free(&self, off: u64) -> Result<(), BlockError>;
    /// Copies `data` to `off`, inside one allocated block.
    fn write(&self, off: u64, data: &[u8]) -> Result<(), BlockError>;
    /// Copies the bytes at `off`, inside one allocated block, into `buf`.
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Frees every block at once (for a pool no one is using).
    fn reset(&self) -> Result<(), BlockError>;
    /// Bytes that can still be allocated (a snapshot).
    fn available_bytes(&self) -> u64;
    /// Checks that `off..off + len` lies inside one allocated block (what `write` and
    /// `read` check), without touching the bytes: for callers that access them in place.
    fn check_range(&self, off: u64, len: u64) -> Result<(), BlockError>;
}

/// The pool named `name` in `heap`: this caller formats a region of `bytes` with
/// `create` and publishes its offset under the name; if another caller published first,
/// the region is freed and that pool opened with `open`. A pool found whose shape is not
/// what `same` asks for is `PoolError::Mismatch`.
pub(crate) fn named<P>(
    heap: &Heap,
    name: &str,
    bytes: u64,
    create: impl FnOnce(u64) -> Result<P, PoolError>,
    open: impl FnOnce(u64) -> Result<P, PoolError>,
    same: impl FnOnce(&P) -> bool,
) -> Result<P, PoolError> {
    let found = found_or_made(heap, name, bytes, create, open)?;
    if !same(&found) {
        return Err(PoolError::Mismatch(name.into()));
    }
    Ok(found)
}

fn found_or_made<P>(
    heap: &Heap,
    name: &str,
    bytes: u64,
    create: impl FnOnce(u64) -> Result<P, PoolError>,
    open: impl FnOnce(u64) -> Result<P, PoolError>,
) -> Result<P, PoolError> {
    let (mine, at) = made_at(heap, bytes, create)?;
    let published = heap.find_or_init::<u64>(name, || at).map(|root| root.read(heap.segment()));
    match published {
        Ok(Ok(found)) if found == at => Ok(mine),
        other => {
            drop(mine);
            let _ = heap.free(at);
            open(other??)
        }
    }
}

/// A pool formatted by `create` in a fresh 64-aligned block of `bytes` of `heap`; the
/// block is freed again if `create` fails.
pub(crate) fn in_heap<P>(
    heap: &Heap,
    bytes: u64,
    create: impl FnOnce(u64) -> Result<P, PoolError>,
) -> Result<P, PoolError> {
    made_at(heap, bytes, create).map(|(p, _)| p)
}

/// `in_heap`, with the block's offset.
fn made_at<P>(
    heap: &Heap,
    bytes: u64,
    create: impl FnOnce(u64) -> Result<P, PoolError>,
) -> Result<(P, u64), PoolError> {
    let at = heap.alloc_aligned(bytes, 64)?;
    create(at).map(|p| (p, at)).inspect_err(|_| {
        let _ = heap.free(at);
    })
}
