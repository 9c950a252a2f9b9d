//! `SharedCells`: untyped `u64` cells in shared memory that nothing can touch but a
//! fixed set of atomic operations, each with one fixed ordering.
//!
//! Layer: sync. Isolation by type: a cell is an index into a `SharedCells`, and the
//! only access paths are its methods, so no plain load or store, and no other ordering,
//! can reach a cell:
//!
//! | operation         | ordering                          |
//! |-------------------|-----------------------------------|
//! | `load`            | Acquire                           |
//! | `store`           | Release                           |
//! | `cas`             | AcqRel (Acquire when it fails)    |
//! | `cas_seqcst`      | SeqCst                            |
//! | `fetch_add`       | AcqRel                            |
//! | `swap_segment`    | Release (readers `load`: Acquire) |
//! | `barrier`         | a SeqCst fence                    |
//!
//! Cells are allocated statically (the first `reserved` cells of a `SharedCells`, known
//! by index to every user) or through [`SharedCells::alloc`] and [`SharedCells::free`],
//! which hand out the others and track them in a bitmap (the slot pool's, `pools::bitmap`).
//! Out-of-range indices, and frees of cells not allocated, are typed errors.
//!
//! ```
//! use shmpool::sync::SharedCells;
//! use shmpool::SegmentOptions;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let seg = SegmentOptions::new().create_memfd("doc")?;
//! let at = seg.data_start();
//! let cells = SharedCells::create(seg, at, 64, 2)?; // cells 0 and 1 are static
//! cells.store(0, 41)?;
//! assert_eq!(cells.fetch_add(0, 1)?, 41);
//! assert_eq!(cells.cas(0, 42, 7)?, Ok(42));
//! let c = cells.alloc()?; // a dynamic cell, zeroed
//! assert!(c >= 2);
//! assert!(cells.load(64).is_err()); // out of range
//! cells.free(c)?;
//! # Ok(()) }
//! ```

use crate::heap::Heap;
use crate::loom::{fence, AtomicU64, Ordering};
use crate::pools::bitmap::{self, Place};
use crate::pools::region::{Geometry, Host, Kind, Region};
use crate::pools::PoolError;

/// Why a cell operation was refused. No cell changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CellError {
    /// The index is past the last cell.
    #[error("cell {index} is out of range (there are {count})")]
    OutOfRange {
        /// The index asked for.
        index: u32,
        /// Cells in the set.
        count: u32,
    },
    /// Every cell that can be allocated is.
    #[error("every cell is allocated")]
    Exhausted,
    /// The cell is static or not allocated (a double free).
    #[error("cell {0} is not an allocated cell")]
    NotAllocated(u32),
}

/// A fixed set of shared `u64` cells reachable only through atomic operations.
#[derive(Debug)]
pub struct SharedCells {
    region: Region,
    count: u32,
    words: usize,
}

/// The most cells a set holds.
pub const MAX_CELLS: u32 = 1 << 30;

impl SharedCells {
    fn planned(unit: u64, count: u64) -> Option<Geometry> {
        (unit == 8 && count > 0 && count <= u64::from(MAX_CELLS))
            .then(|| Geometry::plan(8, count, bitmap::words(count) * 8 + 8))
            .flatten()
    }

    /// Bytes a set of `count` cells occupies.
    pub fn footprint(count: u32) -> Result<u64, PoolError> {
        Self::planned(8, u64::from(count))
            .map(|g| g.bytes())
            .ok_or(PoolError::InvalidGeometry("1..=2^30 cells"))
    }

    /// Formats `count` zeroed cells at `at` (64-aligned) of `host`'s segment; the first
    /// `reserved` are static (never handed out by [`SharedCells::alloc`]).
    pub fn create(host: impl Into<Host>, at: u64, count: u32, reserved: u32) -> Result<Self, PoolError> {
        let geo = Self::planned(8, u64::from(count)).ok_or(PoolError::InvalidGeometry("1..=2^30 cells"))?;
        if reserved > count {
            return Err(PoolError::InvalidGeometry("more static cells than cells"));
        }
        let n = u64::from(count);
        let region = Region::format(host.into(), at, Kind::Cells, geo, |r| {
            let words = r.meta::<AtomicU64>(bitmap::words(n) as usize);
            bitmap::init(words, n);
            for i in 0..u64::from(reserved) {
                bitmap::claim_at(words, i);
            }
            r.meta_at::<AtomicU64>(bitmap::words(n) * 8, 1)[0].store(u64::from(reserved), Ordering::Relaxed);
            for c in r.data_atoms::<AtomicU64>(count as usize) {
                c.store(0, Ordering::Relaxed);
            }
        })?;
        Ok(Self::over(region))
    }

    /// Opens the cells created at `at` (in any process).
    pub fn open(host: impl Into<Host>, at: u64) -> Result<Self, PoolError> {
        Ok(Self::over(Region::open(host.into(), at, Kind::Cells, Self::planned)?))
    }

    /// Cells in a block of `heap`.
    pub fn create_in(heap: &Heap, count: u32, reserved: u32) -> Result<Self, PoolError> {
        crate::pools::in_heap(heap, Self::footprint(count)?, |at| Self::create(heap, at, count, reserved))
    }

    /// The cells named `name` in `heap`, created by the first caller in any process.
    pub fn named(heap: &Heap, name: &str, count: u32, reserved: u32) -> Result<Self, PoolError> {
        crate::pools::named(
            heap,
            name,
            Self::footprint(count)?,
            |at| Self::create(heap, at, count, reserved),
            |at| Self::open(heap, at),
            |cells| cells.count == count,
        )
    }

    fn over(region: Region) -> Self {
        let count = region.geometry().count as u32;
        Self { region, count, words: bitmap::words(u64::from(count)) as usize }
    }

    /// Where the cells are in their segment: what [`SharedCells::open`] takes.
    pub fn offset(&self) -> u64 {
        self.region.at()
    }

    /// Cells in the set.
    pub fn count(&self) -> u32 {
        self.count
    }

    #[inline(always)]
    fn cell(&self, index: u32) -> Result<&AtomicU64, CellError> {
        self.region
            .data_atoms::<AtomicU64>(self.count as usize)
            .get(index as usize)
            .ok_or(CellError::OutOfRange { index, count: self.count })
    }

    /// The cell's value. SYNC: Acquire, pairing with the Release of `store`,
    /// `swap_segment`, and the AcqRel RMWs.
    #[inline]
    pub fn load(&self, index: u32) -> Result<u64, CellError> {
        // SYNC: Acquire (the doc above).
        Ok(self.cell(index)?.load(Ordering::Acquire))
    }

    /// Stores `value`. SYNC: Release, pairing with the Acquire of `load` and the RMWs.
    #[inline]
    pub fn store(&self, index: u32, value: u64) -> Result<(), CellError> {
        // SYNC: Release (the doc above).
        self.cell(index)?.store(value, Ordering::Release);
        Ok(())
    }

    /// Replaces `expected` with `new`: `Ok(Ok(expected))` if it did, `Ok(Err(actual))`
    /// if the cell held something else. SYNC: AcqRel (Acquire on failure), pairing with
    /// the other operations' Release and Acquire.
    #[inline]
    pub fn cas(&self, index: u32, expected: u64, new: u64) -> Result<Result<u64, u64>, CellError> {
        // SYNC: AcqRel / Acquire (the doc above).
        Ok(self.cell(index)?.compare_exchange(expected, new, Ordering::AcqRel, Ordering::Acquire))
    }

    /// [`SharedCells::cas`] with SeqCst: also in the single total order of SeqCst
    /// operations and barriers.
    #[inline]
    pub fn cas_seqcst(&self, index: u32, expected: u64, new: u64) -> Result<Result<u64, u64>, CellError> {
        // SYNC: SeqCst: pairs as `cas` does, and joins the total order of `barrier`.
        Ok(self.cell(index)?.compare_exchange(expected, new, Ordering::SeqCst, Ordering::SeqCst))
    }

    /// Adds `delta` (wrapping); the value before. SYNC: AcqRel, as `cas`.
    #[inline]
    pub fn fetch_add(&self, index: u32, delta: u64) -> Result<u64, CellError> {
        // SYNC: AcqRel (the doc above).
        Ok(self.cell(index)?.fetch_add(delta, Ordering::AcqRel))
    }

    /// Publishes a segment handle (or any version word) in the cell: the value before.
    /// Everything the writer did before is seen by a reader whose `load` returns the new
    /// handle. SYNC: Release, pairing with the readers' Acquire `load`.
    #[inline]
    pub fn swap_segment(&self, index: u32, handle: u64) -> Result<u64, CellError> {
        // SYNC: Release (the doc above).
        Ok(self.cell(index)?.swap(handle, Ordering::Release))
    }

    /// A SeqCst fence: orders this thread's cell operations before and after it in the
    /// single total order (for Dekker-style protocols between cells).
    #[inline]
    pub fn barrier(&self) {
        // SYNC: SeqCst fence, pairing with other threads' barriers and SeqCst CASes.
        fence(Ordering::SeqCst);
    }

    /// Allocates a cell that is not static and not allocated, zeroed; its index.
    pub fn alloc(&self) -> Result<u32, CellError> {
        let words = self.region.meta::<AtomicU64>(self.words);
        let place = bitmap::claim(words, 0).ok_or(CellError::Exhausted)?;
        let index = place.index() as u32;
        // SYNC: Release, as `store`: the zero is what the new user's first load sees.
        self.cell(index)?.store(0, Ordering::Release);
        Ok(index)
    }

    /// Frees an allocated cell. A static cell, or one not allocated, is refused.
    pub fn free(&self, index: u32) -> Result<(), CellError> {
        self.cell(index)?;
        if index < self.reserved() {
            return Err(CellError::NotAllocated(index));
        }
        let words = self.region.meta::<AtomicU64>(self.words);
        if !bitmap::clear_at(words, Place::of(u64::from(index))).was_loaned {
            return Err(CellError::NotAllocated(index));
        }
        Ok(())
    }

    /// Static cells (the first ones), as created.
    pub fn reserved(&self) -> u32 {
        self.region.meta_at::<AtomicU64>(self.words as u64 * 8, 1)[0].load(Ordering::Relaxed) as u32
    }
}
