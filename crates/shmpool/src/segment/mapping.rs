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

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, shared (mmap(2)).
    pub(crate) fn shared(fd: impl AsFd, len: u64, writable: bool) -> Result<Self, Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::NOMEM)?;
        // SAFETY: a null hint lets the kernel choose a fresh range, so no existing memory
        // is replaced; the fd is valid for the call.
        let ptr = unsafe {
            rustix::mm::mmap(
                core::ptr::null_mut(),
                len,
                prot(writable),
                MapFlags::SHARED | MapFlags::NORESERVE,
                fd,
                0,
            )?
        };
        Ok(Self { base: NonNull::new(ptr.cast()).ok_or(Errno::NOMEM)?, len })
    }

    /// Maps `len` bytes of private anonymous memory, zero-filled.
    pub(crate) fn anonymous(len: u64) -> Result<Self, Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::NOMEM)?;
        // SAFETY: a null hint lets the kernel choose a fresh range; nothing is replaced.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                core::ptr::null_mut(),
                len,
                prot(true),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )?
        };
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
