//! One `mmap` of a segment's reserved capacity, unmapped on drop.
//!
//! Layer: segment. Shared mappings use `MAP_SHARED | MAP_NORESERVE`, so reserving tens
//! of GiB of address space costs no memory: only committed pages (the file's length)
//! can be touched, and the segment layer never hands out an offset past them.
//!
//! # Safety
//! The mapping's address range belongs to this value from `mmap` to `munmap`; no other
//! code maps over it or unmaps it. References into it never outlive the value (they
//! borrow the owning `Segment`).
#![allow(unsafe_code)]

use core::ffi::c_void;
use core::ptr::NonNull;
use rustix::fd::AsFd;
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

/// An owned mapping.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; sharing its address between
// threads is sound, and every access through it is synchronised by its users.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

fn prot(writable: bool) -> ProtFlags {
    if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    }
}

/// Every mapping starts on a multiple of this (2 MiB, the huge page size), or of its page
/// size if larger, so an offset aligned to a power of two up to it is as aligned in every
/// process's address space.
pub const MAP_ALIGN: u64 = 2 << 20;

/// Reserves `len` bytes of address space starting on a multiple of `align` (a power of
/// two): an inaccessible mapping the caller then replaces with `MAP_FIXED` (which only
/// this reservation's owner may do, so no other mapping is ever replaced).
fn reserve_aligned(len: usize, align: u64) -> Result<*mut c_void, Errno> {
    let align = usize::try_from(align).map_err(|_| Errno::NOMEM)?;
    let total = len.checked_add(align).ok_or(Errno::NOMEM)?;
    // SAFETY: a null hint lets the kernel choose a fresh range; nothing is replaced.
    let raw = unsafe {
        rustix::mm::mmap_anonymous(
            core::ptr::null_mut(),
            total,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )?
    };
    let start = (raw as usize).next_multiple_of(align);
    let (head, tail) = (start - raw as usize, total - (start - raw as usize) - len);
    // SAFETY: the head and tail lie inside the range just reserved, which nothing else
    // uses; what stays is `start..start + len`.
    unsafe {
        if head > 0 {
            rustix::mm::munmap(raw, head)?;
        }
        if tail > 0 {
            rustix::mm::munmap((start + len) as *mut c_void, tail)?;
        }
    }
    Ok(start as *mut c_void)
}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, shared (mmap(2)).
    /// The mapping starts on a multiple of [`MAP_ALIGN`] or of `page_size`, whichever is
    /// larger.
    pub(crate) fn shared(fd: impl AsFd, len: u64, writable: bool, page_size: u64) -> Result<Self, Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::NOMEM)?;
        let at = reserve_aligned(len, MAP_ALIGN.max(page_size))?;
        // SAFETY: `at..at + len` is this call's own reservation, which `MAP_FIXED`
        // replaces; the fd is valid for the call.
        let ptr = unsafe {
            rustix::mm::mmap(
                at,
                len,
                prot(writable),
                MapFlags::SHARED | MapFlags::NORESERVE | MapFlags::FIXED,
                fd,
                0,
            )
        };
        Self::own(at, len, ptr)
    }

    /// Maps `len` bytes of private anonymous memory, zero-filled, at a multiple of
    /// [`MAP_ALIGN`].
    pub(crate) fn anonymous(len: u64) -> Result<Self, Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::NOMEM)?;
        let at = reserve_aligned(len, MAP_ALIGN)?;
        // SAFETY: `at..at + len` is this call's own reservation, which `MAP_FIXED`
        // replaces.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                at,
                len,
                prot(true),
                MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED,
            )
        };
        Self::own(at, len, ptr)
    }

    /// Takes ownership of the mapping at `at` that `mapped` made there.
    ///
    /// If the `MAP_FIXED` mapping failed, the reservation is left as it is, address space
    /// without memory: kernels before 6.12 may remove the old mapping before the file's
    /// own checks fail (a hugetlbfs file without enough huge pages), and another thread
    /// may map into the hole at once, so unmapping the range could remove its mapping.
    fn own(at: *mut c_void, len: usize, mapped: Result<*mut c_void, Errno>) -> Result<Self, Errno> {
        let ptr = mapped?;
        debug_assert_eq!(ptr, at);
        Ok(Self { base: NonNull::new(ptr.cast()).ok_or(Errno::NOMEM)?, len })
    }

    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned and nothing else unmaps it;
        // borrows of the memory end before the owning segment is dropped.
        let r = unsafe { rustix::mm::munmap(self.base.as_ptr().cast::<c_void>(), self.len) };
        debug_assert!(r.is_ok(), "munmap: {r:?}");
    }
}
