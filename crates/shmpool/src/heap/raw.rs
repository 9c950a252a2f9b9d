//! Typed views of the heap's structures inside the segment.
//!
//! # Safety
//! A [`Shared`] type is `#[repr(C)]`, at most 8-aligned, and made only of atomics: any
//! bit pattern is a valid value and concurrent access from any process is sound. A view
//! is created only for offsets the heap laid out itself inside committed memory (its
//! metadata, committed at creation; slabs and links inside managed units, which are
//! committed before the page-run allocator may hand them out) or for user offsets after
//! they passed validation against the unit table. The mapping outlives every view: views
//! borrow the `Heap`'s segment.
#![allow(unsafe_code)]

use super::class::CLASSES;
use super::layout::ClassQueue;
use crate::loom::{AtomicU32, AtomicU64};
use crate::segment::Segment;

/// Marker for types that may be viewed in shared memory.
///
/// # Safety
/// The implementor is `#[repr(C)]`, its alignment is at most 8, and every field is an
/// atomic (or an array or struct of them).
pub(crate) unsafe trait Shared: Sized {}

// SAFETY: atomics are valid for every bit pattern and meant for shared mutation.
unsafe impl Shared for AtomicU32 {}
// SAFETY: as above.
unsafe impl Shared for AtomicU64 {}

/// The base of the segment's mapping, with the heap's view functions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Base(*mut u8);

// SAFETY: a plain address of shared memory; views created from it are atomics only.
unsafe impl Send for Base {}
// SAFETY: as above.
unsafe impl Sync for Base {}

impl Base {
    pub(crate) fn of(seg: &Segment) -> Self {
        Self(seg.backend().base().as_ptr())
    }

    /// The `T` at `off`.
    ///
    /// # Safety
    /// `off..off + size_of::<T>()` lies in committed memory of the segment this base
    /// belongs to, `off` is aligned for `T`, and the segment outlives `'a`.
    #[inline(always)]
    pub(crate) unsafe fn at<'a, T: Shared>(self, off: u64) -> &'a T {
        debug_assert_eq!(off % core::mem::align_of::<T>() as u64, 0, "misaligned view at {off}");
        // SAFETY: in bounds and aligned (caller), `T` is valid for any bits (Shared).
        unsafe { &*self.0.add(off as usize).cast::<T>() }
    }
}

/// The address of a thread heap's class queues in this process: in the segment, or the
/// heap's process-private empty ones. Valid while the heap's `Inner` lives; the
/// thread-local cache that holds it is keyed by the heap's id, which is never reused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Queues(*const ClassQueue);

// SAFETY: a plain address of atomics (shared memory, or the heap's own allocation).
unsafe impl Send for Queues {}
// SAFETY: as above.
unsafe impl Sync for Queues {}

impl Queues {
    /// No queues; never dereferenced (the cache entry holding it has heap id 0).
    pub(crate) const DANGLING: Queues = Queues(core::ptr::NonNull::dangling().as_ptr());

    pub(crate) fn new(queues: &[ClassQueue; CLASSES]) -> Self {
        Self(queues.as_ptr())
    }

    /// The queue of `class`.
    ///
    /// # Safety
    /// `self` came from [`Queues::new`] for a heap that is still alive, and `class <
    /// CLASSES`.
    #[inline(always)]
    pub(crate) unsafe fn class<'a>(self, class: usize) -> &'a ClassQueue {
        debug_assert!(class < CLASSES);
        // SAFETY: in bounds of the array `new` was given, which lives (caller).
        unsafe { &*self.0.add(class) }
    }
}
