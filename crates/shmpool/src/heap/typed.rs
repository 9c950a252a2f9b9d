//! Typed blocks: [`ShmBox<T>`], an owning handle that frees its block on drop and can be
//! handed to another process by offset; and `allocator_api2::Allocator` for processes
//! that map the segment at the same address (a parent and its forked children), so
//! standard collections can keep their buffers in the segment.
//!
//! # Safety
//! A `ShmBox` owns its block: `from_offset` is `unsafe` and its caller vouches that no
//! one else uses the block, which makes the `&T`/`&mut T` it lends exclusive like a
//! `Box`'s. The allocator hands out pointers into this process's mapping of the segment.
#![allow(unsafe_code)]

use super::{AllocError, FreeError, Heap};
use crate::offset::{Offset, ShmSafe};
use core::mem::{align_of, size_of};
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

/// An owned `T` in a heap block; frees the block when dropped.
pub struct ShmBox<T: ShmSafe> {
    heap: Heap,
    ptr: NonNull<T>,
    off: Offset<T>,
}

// SAFETY: the box owns its block exclusively, like a Box<T>.
unsafe impl<T: ShmSafe + Send> Send for ShmBox<T> {}
// SAFETY: shared access only lends &T.
unsafe impl<T: ShmSafe + Sync> Sync for ShmBox<T> {}

impl<T: ShmSafe> ShmBox<T> {
    /// Moves `value` into a new block of `heap`.
    pub fn new_in(heap: &Heap, value: T) -> Result<Self, AllocError> {
        let align = align_of::<T>().max(16) as u64;
        let off = heap.alloc_aligned(size_of::<T>().max(1) as u64, align)?;
        let (ptr, _) = heap.resolve(off).expect("a block just allocated");
        let ptr = ptr.cast::<T>();
        // SAFETY: a fresh block, aligned and large enough for T, owned by nobody else.
        unsafe { ptr.as_ptr().write(value) };
        Ok(Self { heap: heap.clone(), ptr, off: Offset::from_raw(off) })
    }

    /// The block's offset, to hand the box to another process with
    /// [`ShmBox::into_offset`] / [`ShmBox::from_offset`].
    pub fn offset(&self) -> Offset<T> {
        self.off
    }

    /// Gives up ownership without freeing: the receiver takes it with `from_offset`.
    pub fn into_offset(self) -> Offset<T> {
        let off = self.off;
        core::mem::forget(self);
        off
    }

    /// Takes ownership of the block at `off` (allocated for a `T` by any process).
    ///
    /// # Safety
    /// The caller owns the block: it was handed over with [`ShmBox::into_offset`] (or
    /// allocated for a `T` and never handed to anyone else), and no other process or
    /// `ShmBox` uses it from now on.
    pub unsafe fn from_offset(heap: &Heap, off: Offset<T>) -> Result<Self, FreeError> {
        let (ptr, len) = heap.resolve(off.get())?;
        if len < size_of::<T>() as u64 || !ptr.as_ptr().cast::<T>().is_aligned() {
            return Err(FreeError::Interior(off.get()));
        }
        Ok(Self { heap: heap.clone(), ptr: ptr.cast(), off })
    }
}

impl<T: ShmSafe> Deref for ShmBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the block is valid, aligned, initialised (any bits are a valid T) and
        // owned by this box for its lifetime.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ShmSafe> DerefMut for ShmBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: ShmSafe> Drop for ShmBox<T> {
    fn drop(&mut self) {
        let freed = self.heap.free(self.off.get());
        debug_assert!(freed.is_ok(), "a ShmBox's block was freed behind its back: {freed:?}");
    }
}

impl<T: ShmSafe + core::fmt::Debug> core::fmt::Debug for ShmBox<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ShmBox").field("offset", &self.off.get()).field("value", &**self).finish()
    }
}

impl Heap {
    fn base_addr(&self) -> usize {
        self.segment().backend().base().as_ptr() as usize
    }
}

// SAFETY: blocks are valid for `layout` until deallocated, distinct blocks never overlap,
// and a block is only freed through `deallocate` of this heap (clones share it).
unsafe impl allocator_api2::alloc::Allocator for Heap {
    fn allocate(
        &self,
        layout: core::alloc::Layout,
    ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        let align = (layout.align() as u64).max(16);
        let off = self
            .alloc_aligned(layout.size().max(1) as u64, align)
            .map_err(|_| allocator_api2::alloc::AllocError)?;
        let (ptr, _) = self.resolve(off).map_err(|_| allocator_api2::alloc::AllocError)?;
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, _layout: core::alloc::Layout) {
        let off = (ptr.as_ptr() as usize - self.base_addr()) as u64;
        let freed = self.free(off);
        debug_assert!(freed.is_ok(), "deallocate of a pointer this heap did not hand out: {freed:?}");
    }
}
