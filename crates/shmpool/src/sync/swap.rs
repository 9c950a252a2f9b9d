//! Swappable segments: a producer writes a version privately, then publishes it with
//! one atomic swap of a versioned handle; readers pin a version, which stays valid and
//! unchanged while they hold it; an old version is freed only when no reader holds it —
//! a reader whose process died holds nothing.
//!
//! Layer: sync, above the heap (versions are heap blocks). The region, in a heap block:
//!
//! - `current`: the generation published last (0: none yet), swapped in with Release;
//!   readers load it with Acquire (the `SharedCells::swap_segment` pair);
//! - `oldest`: the oldest generation a reader may still pin: `current` in the default
//!   mode, `current - keep + 1` in ring mode (the last `keep` versions stay readable;
//!   a publish replaces the oldest);
//! - `VERSIONS` entries `[gen, block, len]`: `block` is recorded with
//!   `Heap::alloc_in`, so a writer killed halfway leaves the block recorded or free;
//! - `READERS` reader entries `[ident, start, pinned]`, one per reader handle.
//!
//! Pinning is a hazard pointer (Michael, "Hazard Pointers", 2004): the reader stores
//! the generation in its entry, issues a SeqCst fence, and checks the generation is
//! still `>= oldest`; the writer, after moving `oldest` on, issues a SeqCst fence and
//! frees a version only if no live reader's entry names it. Either the writer sees the
//! pin, or the reader sees the move and tries again. Publishing and freeing are done
//! under a robust lock (`heap::lock`), so one writer at a time, and a writer killed
//! holding it is taken over; entries it left half made are freed by the next.
//!
//! Modelled in `tests/loom_swap.rs`.
#![allow(unsafe_code)]

use super::owner;
use crate::channel::peers::{claim_with, runs};
use crate::heap::lock::LockWord;
use crate::heap::{tls, Heap};
use crate::loom::{fence, AtomicU64, Ordering};
use crate::pools::region::{Geometry, Kind, Region};
use crate::pools::PoolError;

/// Version entries: the readable ones (`keep`) plus those waiting for their readers.
pub const VERSIONS: usize = 32;
/// Reader entries: reader handles at once, over all processes.
pub const READERS: usize = 64;

const LOCK: u64 = 0;
const HOLDER: u64 = 8;
const CURRENT: u64 = 64;
const OLDEST: u64 = 128;
const KEEP: u64 = 136;
const ENTRIES: u64 = 192;
const READER_TABLE: u64 = ENTRIES + 24 * VERSIONS as u64;
const META: u64 = READER_TABLE + 24 * READERS as u64;

/// Why a swappable segment operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SwapError {
    /// Nothing has been published yet.
    #[error("no version has been published")]
    Empty,
    /// The generation is older than the oldest readable one (or not published yet).
    #[error("generation {0} is not readable")]
    Gone(u64),
    /// Every version entry holds a version readers still pin.
    #[error("every version entry is pinned by a reader")]
    Busy,
    /// Every reader entry is in use.
    #[error("all {READERS} reader entries are in use")]
    TooManyReaders,
    /// A read past the version's end.
    #[error("range {at}+{len} leaves a version of {size} bytes")]
    OutOfRange {
        /// First byte asked.
        at: u64,
        /// Bytes asked.
        len: u64,
        /// The version's length.
        size: u64,
    },
    /// The version could not be allocated.
    #[error(transparent)]
    Alloc(#[from] crate::heap::AllocError),
    /// The bytes could not be read or written.
    #[error(transparent)]
    Access(#[from] crate::segment::AccessError),
}

/// A versioned, immutable-once-published segment in a heap.
#[derive(Debug)]
pub struct Swappable {
    region: Region,
    heap: Heap,
}

/// The words a version entry or a reader entry is made of.
fn triple(r: &Region, base: u64, i: usize) -> &[AtomicU64] {
    r.meta_at::<AtomicU64>(base + 24 * i as u64, 3)
}

impl Swappable {
    fn planned(unit: u64, count: u64) -> Option<Geometry> {
        (unit == 0 && count == 0).then(|| Geometry::plan(0, 0, META)).flatten()
    }

    /// Creates a swappable segment in a block of `heap`. `keep` versions stay readable:
    /// 1 for the newest only, more for a ring of the last `keep` (at most `VERSIONS/2`).
    pub fn create_in(heap: &Heap, keep: u32) -> Result<Self, PoolError> {
        check_keep(keep)?;
        let bytes = Self::planned(0, 0).expect("a plan").bytes();
        crate::pools::in_heap(heap, bytes, |at| Self::format(heap, at, keep))
    }

    /// Formats the control block at `at` (a block of `heap`).
    fn format(heap: &Heap, at: u64, keep: u32) -> Result<Self, PoolError> {
        let region =
            Region::format(heap.into(), at, Kind::Swap, Self::planned(0, 0).expect("a plan"), |r| {
                for w in r.meta::<AtomicU64>((META / 8) as usize) {
                    w.store(0, Ordering::Relaxed);
                }
                r.meta_at::<AtomicU64>(KEEP, 1)[0].store(u64::from(keep), Ordering::Relaxed);
                r.meta_at::<AtomicU64>(OLDEST, 1)[0].store(1, Ordering::Relaxed);
            })?;
        Ok(Self { region, heap: heap.clone() })
    }

    /// Opens the swappable segment at `at` of `heap` (made in any process).
    pub fn open(heap: &Heap, at: u64) -> Result<Self, PoolError> {
        let s =
            Self { region: Region::open(heap.into(), at, Kind::Swap, Self::planned)?, heap: heap.clone() };
        if !(1..=VERSIONS as u64 / 2).contains(&s.keep()) {
            return Err(PoolError::Corrupted { at, why: "keeps no version, or more than half the entries" });
        }
        Ok(s)
    }

    /// The swappable segment named `name` in `heap`, created by the first caller.
    pub fn named(heap: &Heap, name: &str, keep: u32) -> Result<Self, PoolError> {
        let bytes = Self::planned(0, 0).expect("a plan").bytes();
        check_keep(keep)?;
        crate::pools::named(
            heap,
            name,
            bytes,
            |at| Self::format(heap, at, keep),
            |at| Self::open(heap, at),
            |s| s.keep() == u64::from(keep),
        )
    }

    /// Where the segment's control block is in the heap: what [`Swappable::open`] takes.
    pub fn offset(&self) -> u64 {
        self.region.at()
    }

    fn word(&self, at: u64) -> &AtomicU64 {
        &self.region.meta_at::<AtomicU64>(at, 1)[0]
    }

    fn keep(&self) -> u64 {
        self.word(KEEP).load(Ordering::Relaxed)
    }

    /// The generation published last (0 if none).
    pub fn current(&self) -> u64 {
        // SYNC: Acquire pairs with the Release swap of `publish`.
        self.word(CURRENT).load(Ordering::Acquire)
    }

    fn entry(&self, i: usize) -> &[AtomicU64] {
        triple(&self.region, ENTRIES, i)
    }

    fn reader_entry(&self, i: usize) -> &[AtomicU64] {
        triple(&self.region, READER_TABLE, i)
    }

    /// Publishes a new version holding `data`: copied into a fresh block, then swapped
    /// in. Returns its generation.
    pub fn publish(&self, data: &[u8]) -> Result<u64, SwapError> {
        self.publish_with(data.len() as u64, |seg, at| seg.write_bytes(at, data))
    }

    /// Publishes a new version of `len` bytes that `fill(segment, offset)` writes in
    /// place (the block is the writer's alone until the swap).
    pub fn publish_with(
        &self,
        len: u64,
        fill: impl FnOnce(&crate::Segment, u64) -> Result<(), crate::segment::AccessError>,
    ) -> Result<u64, SwapError> {
        let me = owner::me();
        let holder = self.word(HOLDER);
        let lock = &self.region.meta_at::<LockWord>(LOCK, 1)[0];
        let guard = lock.lock(me.tid, |t| owner::holder_dead(t, holder));
        holder.store(me.info(), Ordering::Relaxed);
        if guard.took_over {
            // The dead writer's `alloc_in` may be half done: recovery settles its journal
            // before anything here touches the entry it was recording into.
            self.heap.recover();
        }
        let current = self.word(CURRENT).load(Ordering::Relaxed);
        self.collect(current);
        let free = (0..VERSIONS).find(|&i| self.entry(i)[0].load(Ordering::Relaxed) == 0);
        let Some(i) = free else {
            holder.store(0, Ordering::Relaxed);
            return Err(SwapError::Busy);
        };
        let e = self.entry(i);
        let block = self.heap.alloc_in(self.entry_slot(i), len.max(1))?;
        fill(self.heap.segment(), block)?;
        e[2].store(len, Ordering::Relaxed);
        let gen = current + 1;
        // SYNC: Release pairs with the Acquire load of a reader's `find`: the entry's
        // block and length are seen with its generation.
        e[0].store(gen, Ordering::Release);
        // SYNC: Release pairs with the readers' Acquire load of `current`: the version's
        // bytes, written above, are seen by whoever sees the new generation.
        self.word(CURRENT).swap(gen, Ordering::Release);
        retire(self.word(OLDEST), (gen + 1).saturating_sub(self.keep()).max(1));
        self.collect(gen);
        // Not naming a holder that has let go (a later thread with the same tid).
        holder.store(0, Ordering::Relaxed);
        drop(guard);
        Ok(gen)
    }

    /// The segment offset of version entry `i`'s block word.
    fn entry_slot(&self, i: usize) -> u64 {
        self.region.at() + crate::pools::region::HEADER + ENTRIES + 24 * i as u64 + 8
    }

    /// Frees the versions no reader may pin any more and none pins (under the lock),
    /// and what a writer killed halfway left: an entry past `current`, or a block
    /// recorded in an entry with no generation.
    fn collect(&self, current: u64) {
        // SYNC: SeqCst fence, as in `retire` (for a collect without a retire before).
        fence(Ordering::SeqCst);
        let oldest = self.word(OLDEST).load(Ordering::Relaxed);
        for i in 0..VERSIONS {
            let e = self.entry(i);
            let gen = e[0].load(Ordering::Relaxed);
            let leftover = gen == 0 && e[1].load(Ordering::Relaxed) != 0;
            let unreadable = gen != 0 && (gen < oldest || gen > current);
            if leftover || (unreadable && !self.pinned(gen)) {
                e[0].store(0, Ordering::Relaxed);
                let block = e[1].swap(0, Ordering::Relaxed);
                if block != 0 {
                    let _ = self.heap.free(block);
                }
            }
        }
    }

    /// Whether a live reader pins generation `gen`.
    fn pinned(&self, gen: u64) -> bool {
        (0..READERS).any(|i| {
            let r = self.reader_entry(i);
            // SYNC: Acquire pairs with the Release of a reader's unpin (`Version::drop`):
            // its reads of the version happen before the version is freed.
            r[2].load(Ordering::Acquire) == gen && {
                let id = r[0].load(Ordering::Acquire);
                id as u32 != 0 && runs(id, r[1].load(Ordering::Relaxed))
            }
        })
    }

    /// A reader handle (one pinned version at a time).
    pub fn reader(&self) -> Result<SwapReader<'_>, SwapError> {
        tls::init();
        let (pid, start) = (tls::pid(), tls::start_time());
        for i in 0..READERS {
            let r = self.reader_entry(i);
            let id = r[0].load(Ordering::Acquire);
            let free = id as u32 == 0 || !runs(id, r[1].load(Ordering::Relaxed));
            if free && claim_with(&r[0], &r[1], id, pid, start, || r[2].store(0, Ordering::Relaxed)).is_some()
            {
                return Ok(SwapReader { sw: self, entry: i });
            }
        }
        Err(SwapError::TooManyReaders)
    }

    /// The entry holding generation `gen` (it is pinned, so it stays).
    fn find(&self, gen: u64) -> Option<(u64, u64)> {
        (0..VERSIONS).find_map(|i| {
            let e = self.entry(i);
            // SYNC: Acquire pairs with the Release store of the generation in `publish`.
            (e[0].load(Ordering::Acquire) == gen)
                .then(|| (e[1].load(Ordering::Relaxed), e[2].load(Ordering::Relaxed)))
        })
    }
}

/// `keep` versions fit: at least one, and at most half the entries (the rest wait for
/// their readers).
fn check_keep(keep: u32) -> Result<(), PoolError> {
    if keep == 0 || keep as usize > VERSIONS / 2 {
        return Err(PoolError::InvalidGeometry("keep 1..=16 versions"));
    }
    Ok(())
}

/// A reader's pin of `gen`: announced in `pin`, then checked against `oldest` after a
/// SeqCst fence (the hazard-pointer publication). Whether it holds; if not, it is undone.
pub(crate) fn pin(pin: &AtomicU64, oldest: &AtomicU64, gen: u64) -> bool {
    // SYNC: Release pairs with the writer's Acquire scan (`pinned`): the entry's claim
    // (its start time) is seen with the pin.
    pin.store(gen, Ordering::Release);
    // SYNC: SeqCst fence pairs with the writer's fence in `retire`: either the writer's
    // scan sees this pin, or this load sees the writer's new `oldest`.
    fence(Ordering::SeqCst);
    // SYNC: Acquire pairs with the Release store of `retire`.
    if gen >= oldest.load(Ordering::Acquire) {
        return true;
    }
    pin.store(0, Ordering::Relaxed);
    false
}

/// The writer's side: moves `oldest` on, then fences; after it, a version older than
/// `oldest` that no pin names (`pinned(gen)` false) may be freed.
pub(crate) fn retire(oldest: &AtomicU64, to: u64) {
    // SYNC: Release pairs with the Acquire load of `pin`.
    oldest.store(to, Ordering::Release);
    // SYNC: SeqCst fence pairs with the readers' fence in `pin`.
    fence(Ordering::SeqCst);
}

/// A reader of a [`Swappable`]: pins one version at a time.
#[derive(Debug)]
pub struct SwapReader<'a> {
    sw: &'a Swappable,
    entry: usize,
}

impl SwapReader<'_> {
    fn pin_word(&self) -> &AtomicU64 {
        &self.sw.reader_entry(self.entry)[2]
    }

    /// Pins generation `gen` if it is still readable: its block and length.
    fn try_pin(&self, gen: u64) -> Result<(u64, u64), SwapError> {
        let pin = self.pin_word();
        let held = gen != 0 && gen <= self.sw.current() && self::pin(pin, self.sw.word(OLDEST), gen);
        match held.then(|| self.sw.find(gen)).flatten() {
            Some(found) => Ok(found),
            None => {
                pin.store(0, Ordering::Relaxed);
                Err(SwapError::Gone(gen))
            }
        }
    }

    fn version(&mut self, gen: u64, (block, len): (u64, u64)) -> Version<'_> {
        Version { pin: self.pin_word(), heap: &self.sw.heap, gen, block, len }
    }

    /// Pins the newest version.
    pub fn latest(&mut self) -> Result<Version<'_>, SwapError> {
        loop {
            let gen = self.sw.current();
            if gen == 0 {
                return Err(SwapError::Empty);
            }
            match self.try_pin(gen) {
                Ok(found) => return Ok(self.version(gen, found)),
                // Replaced between the load and the pin: look again.
                Err(SwapError::Gone(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Pins generation `gen` (ring mode: one of the last `keep`).
    pub fn at(&mut self, gen: u64) -> Result<Version<'_>, SwapError> {
        let found = self.try_pin(gen)?;
        Ok(self.version(gen, found))
    }
}

impl Drop for SwapReader<'_> {
    fn drop(&mut self) {
        let r = self.sw.reader_entry(self.entry);
        r[2].store(0, Ordering::Relaxed);
        // SYNC: Release pairs with the Acquire CAS of the entry's next claim.
        r[0].fetch_and(!0xffff_ffff, Ordering::Release);
    }
}

/// A pinned version: valid and unchanged until dropped.
#[derive(Debug)]
pub struct Version<'r> {
    pin: &'r AtomicU64,
    heap: &'r Heap,
    gen: u64,
    block: u64,
    len: u64,
}

impl Version<'_> {
    /// Its generation.
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// Its bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes' segment offset.
    pub fn offset(&self) -> u64 {
        self.block
    }

    /// Copies bytes at `at` into `buf`.
    pub fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), SwapError> {
        let len = buf.len() as u64;
        if at.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(SwapError::OutOfRange { at, len, size: self.len });
        }
        Ok(self.heap.segment().read_bytes(self.block + at, buf)?)
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Result<Vec<u8>, SwapError> {
        let mut v = vec![0; self.len as usize];
        self.read(0, &mut v)?;
        Ok(v)
    }

    /// The bytes in place, without a copy.
    ///
    /// # Safety
    /// No process writes a published version's block (what every writer through this
    /// API keeps to); the slice must not outlive the version.
    pub unsafe fn as_slice(&self) -> &[u8] {
        let p = self.heap.segment().ptr_at(self.block, self.len).expect("a pinned version is mapped");
        // SAFETY: `len` mapped bytes, pinned (not freed) while `self` lives, and not
        // written (caller).
        unsafe { core::slice::from_raw_parts(p.as_ptr(), self.len as usize) }
    }
}

impl Drop for Version<'_> {
    fn drop(&mut self) {
        // SYNC: Release pairs with the writer's fence and scan in `collect`: the reads
        // of the version happen before the pin is seen gone.
        self.pin.store(0, Ordering::Release);
    }
}
