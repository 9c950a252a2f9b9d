//! Size classes and the geometry of the slab that holds each class.
//!
//! Classes are 16 bytes apart up to 128 bytes, then eight per doubling (mimalloc's
//! spacing), up to 512 KiB: a request above 128 bytes wastes less than 1/8 of its block.
//!
//! A slab is a run of 64 KiB units: an in-band header (fields and two bitmaps), then
//! `capacity` blocks starting at `blocks_start`, which is aligned to the block size's
//! largest power-of-two factor (up to 4 KiB) so that every block is naturally aligned.
//! The unit count is the smallest that holds enough blocks with little waste; the table
//! is computed at compile time and its waste bounded by a test.

use crate::pages::UNIT;

/// Smallest block and the alignment of every block.
pub const GRANULE: u64 = 16;
/// Largest size served by a size class; larger requests get their own run of units.
pub const MAX_CLASS_SIZE: u64 = 512 << 10;
/// Number of classes.
pub const CLASSES: usize = 8 + 12 * 8;
/// Bytes of a slab header before its bitmaps: the read-mostly, owner and remote lines.
pub const SLAB_FIELDS: u64 = 192;

/// The class serving `size` bytes (`size` ≤ [`MAX_CLASS_SIZE`]).
#[inline]
pub const fn class_of(size: u64) -> usize {
    if size <= 128 {
        return (size.saturating_sub(1) / 16) as usize;
    }
    let s1 = size - 1;
    let b = 63 - s1.leading_zeros() as u64; // 2^b <= s1 < 2^(b+1)
    let sub = (s1 >> (b - 3)) & 7;
    (8 + (b - 7) * 8 + sub) as usize
}

/// Block size of class `c`.
pub const fn class_size(c: usize) -> u64 {
    if c < 8 {
        return (c as u64 + 1) * 16;
    }
    let b = 7 + (c as u64 - 8) / 8;
    let sub = (c as u64 - 8) % 8;
    (1 << b) + (sub + 1) * (1 << (b - 3))
}

/// The layout of a slab of one class. 32 bytes, so the free path indexes the table with
/// a shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct Geometry {
    /// Block size.
    pub size: u64,
    /// `ceil(2^RECIP_SHIFT / size)`: `(d * recip) >> RECIP_SHIFT == d / size` for every
    /// in-slab distance `d`, so a free checks alignment without dividing.
    pub recip: u64,
    /// Offset of block 0 from the slab's start.
    pub blocks_start: u32,
    /// Blocks in the slab.
    pub capacity: u32,
    /// Units in the slab.
    pub units: u32,
    /// Words in each of the slab's two bitmaps.
    pub words: u32,
}

impl Geometry {
    /// The index of the block starting `at` bytes into a slab, if a block starts there
    /// (not in the header, not inside a block, not past the last one). No division.
    #[inline(always)]
    pub fn block_at(&self, at: u64) -> Option<u32> {
        // `at` below `blocks_start` wraps `d` to within 2^16 of 2^64, and no `idx * size`
        // comes near it (`idx < 2^12`, `size <= 2^19`): the exactness test refuses it too.
        let d = at.wrapping_sub(u64::from(self.blocks_start));
        let idx = d.wrapping_mul(self.recip) >> RECIP_SHIFT;
        (idx * self.size == d && idx < u64::from(self.capacity)).then_some(idx as u32)
    }
}

/// Shift of [`Geometry::recip`]; exact for distances below 2^26 (64 MiB slabs).
pub const RECIP_SHIFT: u32 = 52;

const fn natural_align(size: u64) -> u64 {
    let a = 1 << size.trailing_zeros();
    if a > 4096 {
        4096
    } else {
        a
    }
}

/// Words of one bitmap for `cap` blocks, padded to whole cache lines so the owner's and
/// the remote freers' bitmaps never share one.
pub const fn bitmap_words(cap: u64) -> u64 {
    cap.div_ceil(64).next_multiple_of(8)
}

const fn blocks_start(size: u64, cap: u64) -> u64 {
    let header = SLAB_FIELDS + 2 * 8 * bitmap_words(cap);
    header.next_multiple_of(natural_align(size))
}

/// Capacity of a slab of `units` units for blocks of `size`.
const fn capacity(size: u64, units: u64) -> u64 {
    let bytes = units * UNIT;
    let mut cap = bytes / size; // shrink until header + blocks fit
    while cap > 0 && blocks_start(size, cap) + cap * size > bytes {
        cap -= 1;
    }
    cap
}

const fn min_blocks(size: u64) -> u64 {
    if size <= 1024 {
        32
    } else if size <= 32 << 10 {
        8
    } else {
        4
    }
}

const fn geometry(c: usize) -> Geometry {
    let size = class_size(c);
    let mut best_units = 0;
    let mut best_waste = u64::MAX;
    let mut units = 1;
    while units <= 128 {
        let cap = capacity(size, units);
        if cap >= min_blocks(size) {
            let waste = units * UNIT - cap * size;
            // Waste per mille: the first unit count within the bound wins, else the least
            // waste. Small classes get tight slabs; above 8 KiB a slab may waste up to 1/8
            // (the class spacing) rather than grow to megabytes for a handful of blocks.
            let per_mille = waste * 1000 / (units * UNIT);
            let bound = if size <= 8 << 10 { 20 } else { 125 };
            if per_mille <= bound {
                best_units = units;
                break;
            }
            if per_mille < best_waste {
                best_waste = per_mille;
                best_units = units;
            }
        }
        units += 1;
    }
    let cap = capacity(size, best_units);
    Geometry {
        size,
        units: best_units as u32,
        capacity: cap as u32,
        blocks_start: blocks_start(size, cap) as u32,
        words: bitmap_words(cap) as u32,
        recip: (1u64 << RECIP_SHIFT).div_ceil(size),
    }
}

const fn table() -> [Geometry; CLASSES] {
    let mut t = [Geometry { size: 0, recip: 0, blocks_start: 0, capacity: 0, units: 0, words: 0 }; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        t[c] = geometry(c);
        c += 1;
    }
    t
}

/// Geometry of every class.
pub const GEOMETRY: [Geometry; CLASSES] = table();

/// [`GEOMETRY`] at one address, for `&'static` references to its entries (a constant
/// folds into the code that indexes it with a constant class).
pub(crate) static GEOMETRY_AT: [Geometry; CLASSES] = GEOMETRY;

/// Classes `0..ONE_UNIT_CLASSES` all have one-unit slabs, so a block's slab is the unit
/// it lies in: the free path's fast case.
pub const ONE_UNIT_CLASSES: usize = {
    let t = table();
    let mut c = 0;
    while c < CLASSES && t[c].units == 1 {
        c += 1;
    }
    c
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_size_with_bounded_waste() {
        assert_eq!(class_size(CLASSES - 1), MAX_CLASS_SIZE);
        let mut prev = 0;
        for size in 1..=MAX_CLASS_SIZE {
            let c = class_of(size);
            let block = class_size(c);
            assert!(block >= size, "{size} -> {block}");
            assert!(c == 0 || class_size(c - 1) < size, "{size}: a smaller class fits");
            if size > 128 {
                assert!((block - size) * 8 < block, "{size} wastes more than 1/8 of {block}");
            }
            assert!(c >= prev);
            prev = c;
        }
    }

    #[test]
    fn slabs_waste_little_and_align_blocks() {
        for (c, g) in GEOMETRY.iter().enumerate() {
            let bytes = u64::from(g.units) * UNIT;
            let used = u64::from(g.capacity) * g.size;
            assert!(u64::from(g.capacity) >= min_blocks(g.size), "class {c}: {g:?}");
            let start = u64::from(g.blocks_start);
            assert!(start + used <= bytes, "class {c} overflows: {g:?}");
            assert!(start >= SLAB_FIELDS + 16 * bitmap_words(u64::from(g.capacity)));
            assert_eq!(start % natural_align(g.size), 0);
            let waste = (bytes - used) as f64 / bytes as f64;
            let bound = if g.size <= 8 << 10 { 0.04 } else { 0.125 };
            assert!(
                waste <= bound,
                "class {c} ({} B) wastes {:.1}% of its slab: {g:?}",
                g.size,
                waste * 100.0
            );
            assert!(g.units <= 33, "class {c} ({} B) takes a {}-unit slab", g.size, g.units);
        }
    }

    #[test]
    fn small_classes_have_one_unit_slabs() {
        // The free fast path serves these; it should cover the common sizes.
        assert!(class_size(ONE_UNIT_CLASSES - 1) >= 1024, "{ONE_UNIT_CLASSES}");
        assert!(GEOMETRY[..ONE_UNIT_CLASSES].iter().all(|g| g.units == 1));
        assert!(ONE_UNIT_CLASSES == CLASSES || GEOMETRY[ONE_UNIT_CLASSES].units > 1);
    }

    #[test]
    fn block_at_names_exactly_the_block_starts() {
        for g in &GEOMETRY {
            let span = u64::from(g.units) * UNIT;
            // Every byte of one-unit slabs (the free fast path skips the granule test).
            let step = if g.units == 1 { 1 } else { GRANULE as usize };
            for at in (0..span).step_by(step) {
                let start = u64::from(g.blocks_start);
                let expect = (at >= start
                    && (at - start) % g.size == 0
                    && (at - start) / g.size < u64::from(g.capacity))
                .then(|| ((at - start) / g.size) as u32);
                assert_eq!(g.block_at(at), expect, "size {} at {at}", g.size);
            }
        }
    }

    #[test]
    fn reciprocal_division_is_exact() {
        for g in &GEOMETRY {
            let span = u64::from(g.units) * UNIT;
            let mut d = 0;
            while d < span {
                for x in [d, d + 1, d + g.size - 1] {
                    assert_eq!((x * g.recip) >> RECIP_SHIFT, x / g.size, "size {} d {x}", g.size);
                }
                d += g.size;
            }
        }
    }
}
