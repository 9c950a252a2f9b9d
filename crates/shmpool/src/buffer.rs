//! `Buffer` and `MemoryHandle`: bytes in a heap block that processes share without
//! copying. A buffer is segment + offset + len over a reference-counted block; what
//! crosses a channel or socket is its handle, never the bytes.
//!
//! Layer: buffer, above the heap (DESIGN.md). A buffer's block starts with a header:
//!
//! ```text
//!   block            block + 32
//!   ┌───────┬──────┬─────┬───┬──────────────────────────────┐
//!   │ stamp │ refs │ cap │ 0 │ data (cap bytes, 16-aligned) │
//!   └───────┴──────┴─────┴───┴──────────────────────────────┘
//! ```
//!
//! - `refs` counts the [`Buffer`]s and unconverted [`MemoryHandle`]s of the block in every
//!   process. `clone` and [`Buffer::share`] add one (O(1): one atomic add), a drop takes
//!   one away, and the drop that takes the last frees the block, in whichever process it
//!   happens (after `Arc`: Release decrement, Acquire fence before the free).
//! - `stamp` is random per block, set before the buffer is handed out and cleared before
//!   the block is freed; a handle carries it, so a handle whose block was freed (and maybe
//!   reused) is refused instead of aliasing someone else's bytes.
//!
//! Invariants: `refs ≥ 1` while any buffer or handle of the block lives; the data lies
//! in `block + 32 .. block + 32 + cap`, and every buffer's `offset .. offset + len` in it.
//!
//! A process killed while holding a buffer (or with a handle in flight) never takes its
//! reference away: the block stays allocated. Send handles to processes that live.
//!
//! ```
//! use shmpool::buffer::{Buffer, MemoryHandle};
//! use shmpool::heap::Heap;
//! use shmpool::SegmentOptions;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("doc")?)?;
//! let frame = Buffer::from_slice(&heap, b"a frame of video")?.with_meta(7);
//! let wire: [u8; MemoryHandle::LEN] = frame.slice(2..7)?.into_handle().to_bytes();
//! // ... the bytes go through a channel or socket to another process, which does:
//! let got = Buffer::from_handle(&heap, MemoryHandle::from_bytes(&wire)?)?;
//! assert_eq!(got.to_vec()?, b"frame");
//! assert_eq!((got.meta(), got.refs()), (7, 2));
//! # Ok(()) }
//! ```

use crate::heap::{AllocError, Heap};
use crate::offset::ShmSafe;
use crate::segment::{random_id, AccessError};
use core::ops::{Bound, RangeBounds};
use core::sync::atomic::{fence, AtomicU64, Ordering};

/// Bytes of a buffer block's header.
const HEAD: u64 = 32;
const STAMP: u64 = 0;
const REFS: u64 = 8;
const CAP: u64 = 16;

/// Why a buffer could not be made or a handle turned back into one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BufferError {
    /// The heap could not allocate the block.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The handle names another segment.
    #[error("the handle is for segment {found:#x}, this heap is segment {expected:#x}")]
    WrongSegment {
        /// The handle's segment id.
        found: u64,
        /// This heap's.
        expected: u64,
    },
    /// The handle names no live buffer block: its block was freed, or it was never one.
    #[error("the handle names no live buffer (block {0})")]
    Stale(u64),
    /// The handle's range does not lie in its block.
    #[error("the handle's range {offset}+{len} leaves its block")]
    BadRange {
        /// Data offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// The range asked of [`Buffer::slice`] (or of a read or write) leaves the buffer.
    #[error("range {start}..{end} leaves a buffer of {len} bytes")]
    OutOfRange {
        /// First byte asked.
        start: u64,
        /// One past the last.
        end: u64,
        /// The buffer's length.
        len: u64,
    },
    /// The bytes given are not a handle.
    #[error("a handle is 48 bytes, got {0}")]
    BadLength(usize),
    /// The bytes could not be read or written.
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// A buffer's compact, plain-data form: what crosses a channel, a socket or a slot in the
/// segment, and turns back into a [`Buffer`] with [`Buffer::from_handle`] in any process
/// that has the heap. A handle made by [`Buffer::share`] or [`Buffer::into_handle`] owns
/// one reference: turn it back exactly once. (It is plain data, so nothing stops a copy
/// being turned back twice; the second buffer would free the block early. A handle of a
/// block already freed is refused by its stamp.)
#[derive(ShmSafe, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct MemoryHandle {
    /// The segment's id (`Segment::segment_id`).
    pub segment_id: u64,
    /// The block's offset.
    pub block: u64,
    /// The data's segment offset.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// The user's metadata word (a type tag, a sequence number...).
    pub meta: u64,
    /// The block's stamp, to refuse a handle that outlived its block.
    pub stamp: u64,
}

impl MemoryHandle {
    /// Bytes of a handle on the wire.
    pub const LEN: usize = 48;

    /// The handle as bytes (native endianness: for processes on this host).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        let words = [self.segment_id, self.block, self.offset, self.len, self.meta, self.stamp];
        for (chunk, w) in b.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        b
    }

    /// A handle from the bytes [`MemoryHandle::to_bytes`] made.
    pub fn from_bytes(b: &[u8]) -> Result<Self, BufferError> {
        if b.len() != Self::LEN {
            return Err(BufferError::BadLength(b.len()));
        }
        let w = |i: usize| u64::from_ne_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        Ok(Self { segment_id: w(0), block: w(1), offset: w(2), len: w(3), meta: w(4), stamp: w(5) })
    }
}

/// Bytes in a heap block shared by reference count across processes. Clone is O(1).
#[derive(Debug)]
pub struct Buffer {
    heap: Heap,
    block: u64,
    offset: u64,
    len: u64,
    meta: u64,
}

impl Buffer {
    /// A buffer of `len` zeroed bytes.
    pub fn new(heap: &Heap, len: u64) -> Result<Self, BufferError> {
        let size = len.checked_add(HEAD).ok_or(AllocError::TooLarge(len))?;
        let block = heap.alloc_zeroed(size)?;
        let word = |at: u64| heap.segment().atomic_u64(block + at).expect("a fresh block is mapped");
        word(CAP).store(len, Ordering::Relaxed);
        word(REFS).store(1, Ordering::Relaxed);
        word(STAMP).store(random_id() | 1, Ordering::Relaxed);
        Ok(Self { heap: heap.clone(), block, offset: block + HEAD, len, meta: 0 })
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(heap: &Heap, data: &[u8]) -> Result<Self, BufferError> {
        let b = Self::new(heap, data.len() as u64)?;
        b.write(0, data)?;
        Ok(b)
    }

    /// The same buffer with the metadata word `meta` (carried by its handles).
    pub fn with_meta(mut self, meta: u64) -> Self {
        self.meta = meta;
        self
    }

    fn word(&self, at: u64) -> &AtomicU64 {
        self.heap.segment().atomic_u64(self.block + at).expect("a live buffer's block is mapped")
    }

    /// Bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The data's segment offset.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The metadata word.
    pub fn meta(&self) -> u64 {
        self.meta
    }

    /// The heap the buffer lives in.
    pub fn heap(&self) -> &Heap {
        &self.heap
    }

    /// References to the block in every process now (a snapshot).
    pub fn refs(&self) -> u64 {
        self.word(REFS).load(Ordering::Relaxed)
    }

    /// A pointer to the bytes in this process, for zero-copy use. Other processes may
    /// write them concurrently: how access is shared is the users' protocol.
    pub fn as_ptr(&self) -> core::ptr::NonNull<u8> {
        self.heap.segment().ptr_at(self.offset, self.len).expect("a live buffer's block is mapped")
    }

    /// A buffer of the bytes `range` of this one, sharing its block (O(1)).
    pub fn slice(&self, range: impl RangeBounds<u64>) -> Result<Self, BufferError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => self.len,
        };
        self.check(start, end)?;
        let mut part = self.clone();
        part.offset += start;
        part.len = end - start;
        Ok(part)
    }

    fn check(&self, start: u64, end: u64) -> Result<(), BufferError> {
        if start > end || end > self.len {
            return Err(BufferError::OutOfRange { start, end, len: self.len });
        }
        Ok(())
    }

    /// Copies `data` into the buffer at `at`.
    pub fn write(&self, at: u64, data: &[u8]) -> Result<(), BufferError> {
        self.check(at, at.saturating_add(data.len() as u64))?;
        Ok(self.heap.segment().write_bytes(self.offset + at, data)?)
    }

    /// Copies buffer bytes at `at` into `buf`.
    pub fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), BufferError> {
        self.check(at, at.saturating_add(buf.len() as u64))?;
        Ok(self.heap.segment().read_bytes(self.offset + at, buf)?)
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Result<Vec<u8>, BufferError> {
        let mut v = vec![0u8; self.len as usize];
        self.read(0, &mut v)?;
        Ok(v)
    }

    fn handle(&self) -> MemoryHandle {
        MemoryHandle {
            segment_id: self.heap.segment().segment_id(),
            block: self.block,
            offset: self.offset,
            len: self.len,
            meta: self.meta,
            stamp: self.word(STAMP).load(Ordering::Relaxed),
        }
    }

    /// A handle that owns a new reference to the block, for another process; this
    /// buffer stays usable.
    pub fn share(&self) -> MemoryHandle {
        self.add_ref();
        self.handle()
    }

    /// This buffer as a handle, its reference moving into the handle.
    pub fn into_handle(self) -> MemoryHandle {
        let h = self.handle();
        core::mem::forget(self);
        h
    }

    /// Turns a handle made by [`Buffer::share`] or [`Buffer::into_handle`] (in any
    /// process) back into a buffer, taking over its reference. A handle of another
    /// segment, of a freed block, or with a range outside its block is refused.
    pub fn from_handle(heap: &Heap, h: MemoryHandle) -> Result<Self, BufferError> {
        let expected = heap.segment().segment_id();
        if h.segment_id != expected {
            return Err(BufferError::WrongSegment { found: h.segment_id, expected });
        }
        let usable = heap.usable_size(h.block).map_err(|_| BufferError::Stale(h.block))?;
        let word = |at: u64| heap.segment().atomic_u64(h.block + at);
        let live = h.stamp != 0
            && usable >= HEAD
            && word(STAMP)?.load(Ordering::Relaxed) == h.stamp
            && word(REFS)?.load(Ordering::Relaxed) != 0;
        if !live {
            return Err(BufferError::Stale(h.block));
        }
        let cap = word(CAP)?.load(Ordering::Relaxed);
        let data = h.block + HEAD;
        let inside = cap <= usable - HEAD
            && h.offset >= data
            && h.offset.checked_add(h.len).is_some_and(|end| end <= data + cap);
        if !inside {
            return Err(BufferError::BadRange { offset: h.offset, len: h.len });
        }
        Ok(Self { heap: heap.clone(), block: h.block, offset: h.offset, len: h.len, meta: h.meta })
    }

    fn add_ref(&self) {
        // Relaxed, as `Arc::clone`: a new reference is made from one held, so the count
        // cannot reach zero meanwhile.
        self.word(REFS).fetch_add(1, Ordering::Relaxed);
    }
}

impl Clone for Buffer {
    fn clone(&self) -> Self {
        self.add_ref();
        Self {
            heap: self.heap.clone(),
            block: self.block,
            offset: self.offset,
            len: self.len,
            meta: self.meta,
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SYNC: Release pairs with the Acquire fence below, in whichever process drops
        // the last reference: every use of the bytes happens before the block is freed.
        let prev = self.word(REFS).fetch_sub(1, Ordering::Release);
        debug_assert!(prev != 0, "buffer reference count underflow");
        if prev != 1 {
            return;
        }
        // SYNC: Acquire pairs with the Release decrements of every other reference.
        fence(Ordering::Acquire);
        self.word(STAMP).store(0, Ordering::Relaxed);
        let freed = self.heap.free(self.block);
        debug_assert!(freed.is_ok(), "a buffer's block is allocated until its last drop: {freed:?}");
    }
}
