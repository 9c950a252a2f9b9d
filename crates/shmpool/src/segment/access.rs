//! Raw access to a segment's memory: the header, bounds-checked copies in and out, and
//! `AtomicU64` views of shared words.
//!
//! # Safety
//! Every access is checked against the committed size read from the header (Acquire), and
//! the whole reserved range stays mapped while the `Segment` lives, so an accepted range
//! is mapped and backed by the file (the file is grown before `committed` is raised and
//! never shrinks). Copies between processes are not atomic: concurrent writers of the same
//! bytes must agree through an atomic (as with any shared memory); atomics are sound to
//! share as they are.
#![allow(unsafe_code)]

use super::backend::{Backend, BackendKind};
use super::error::AccessError;
use super::header::{Header, HeaderFields, FLAG_HUGE_PAGES, HEADER_LEN, LAYOUT_VERSION};
use super::Segment;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

// SAFETY: the segment's memory is shared memory meant for concurrent use; its raw base
// pointer is only dereferenced through the checked accessors below or atomics, and the
// backend is itself Send + Sync.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

impl Segment {
    /// Writes the header of a freshly created backend of `initial` committed bytes.
    pub(super) fn init(backend: Box<dyn Backend>, initial: u64) -> Segment {
        let fields = HeaderFields {
            version: LAYOUT_VERSION,
            page_size: backend.page_size(),
            reserved_len: backend.reserved_len(),
            created_ns: super::now_ns(),
            segment_id: super::random_id(),
            creator_uid: rustix::process::getuid().as_raw(),
            creator_pid: rustix::process::getpid().as_raw_nonzero().get() as u32,
            flags: if backend.kind() == BackendKind::HugePages { FLAG_HUGE_PAGES } else { 0 },
        };
        let mut seg = Segment { base: backend.base(), backend, writable: true };
        // SAFETY: the backend was created exclusively by this call chain and its fd or name
        // has not been handed to anyone, so nobody else can see the header yet.
        unsafe { seg.header_mut() }.init(&fields, initial);
        seg
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: offset 0 holds a `Header` (4096 bytes, 8-aligned as the mapping is
        // page-aligned), validated at attach or written at create, and mapped for the
        // life of `self`. Its mutable fields are atomics; the others are immutable once
        // published.
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    /// # Safety
    /// The caller has exclusive access to the header of a segment nobody else can see yet.
    pub(crate) unsafe fn header_mut(&mut self) -> &mut Header {
        // SAFETY: as `header`, and exclusivity is the caller's obligation.
        unsafe { self.base.cast::<Header>().as_mut() }
    }

    /// Bytes usable now: every offset below this is mapped and backed.
    #[inline]
    pub fn committed(&self) -> u64 {
        self.header().committed.load()
    }

    /// Checks that `offset..offset + len` lies in the committed data area.
    #[inline]
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), AccessError> {
        if offset < HEADER_LEN {
            return Err(AccessError::InHeader { offset, data_start: HEADER_LEN });
        }
        let committed = self.committed();
        match offset.checked_add(len) {
            Some(end) if end <= committed => Ok(()),
            _ => Err(AccessError::OutOfBounds { offset, len, committed }),
        }
    }

    /// A pointer to `len` committed bytes at `offset`, for zero-copy use. Dereferencing it
    /// is the caller's business: the bytes are shared with other processes.
    pub fn ptr_at(&self, offset: u64, len: u64) -> Result<NonNull<u8>, AccessError> {
        self.check_range(offset, len)?;
        // SAFETY: `offset + len <= committed <= reserved`, so the result stays inside the
        // mapping (and `offset` fits in usize because the mapping does).
        Ok(unsafe { self.base.add(offset as usize) })
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        let src = self.ptr_at(offset, buf.len() as u64)?;
        // SAFETY: `src..src+len` is committed and mapped (checked above); `buf` is a
        // distinct private buffer, so the ranges do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into the segment at `offset`.
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        if !self.writable {
            return Err(AccessError::ReadOnly);
        }
        let dst = self.ptr_at(offset, data.len() as u64)?;
        // SAFETY: committed and mapped writable (checked above); `data` is private
        // memory, so the ranges do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst.as_ptr(), data.len()) };
        Ok(())
    }

    /// The shared `u64` at `offset` (8-aligned) as an atomic.
    ///
    /// A read-only mapping only permits loads: a store or read-modify-write on it faults,
    /// so on read-only segments use [`Segment::load_u64`].
    pub fn atomic_u64(&self, offset: u64) -> Result<&AtomicU64, AccessError> {
        if !self.writable {
            return Err(AccessError::ReadOnly);
        }
        self.shared_word(offset)
    }

    /// Loads the shared `u64` at `offset` (8-aligned) with Acquire ordering; works on
    /// read-only mappings too.
    pub fn load_u64(&self, offset: u64) -> Result<u64, AccessError> {
        // SYNC: Acquire pairs with the writer's Release store or RMW on the same word.
        Ok(self.shared_word(offset)?.load(Ordering::Acquire))
    }

    fn shared_word(&self, offset: u64) -> Result<&AtomicU64, AccessError> {
        if !offset.is_multiple_of(8) {
            return Err(AccessError::Misaligned { offset, align: 8 });
        }
        let ptr = self.ptr_at(offset, 8)?;
        // SAFETY: 8 committed bytes, 8-aligned (the base is page-aligned), mapped for the
        // life of `&self`; AtomicU64 has the layout of u64 and any bits are valid.
        Ok(unsafe { ptr.cast::<AtomicU64>().as_ref() })
    }
}
