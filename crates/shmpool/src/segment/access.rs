//! Raw access to a segment's memory: the header, bounds-checked copies in and out, and
//! `AtomicU64` views of shared words.
//!
//! # Safety
//! Every access is checked against the committed size read from the header (Acquire),
//! capped by this process's own mapping length, and the whole mapping stays mapped while
//! the `Segment` lives: an accepted range is mapped, and backed by the file because the
//! file is grown before `committed` is raised and never shrinks — provided no process
//! with write access truncates the file behind the segment's back (memfds are sealed
//! against it; POSIX shm objects and files cannot be, so their peers are trusted not to).
//!
//! Copies in and out are made of relaxed atomic loads and stores (8 bytes at a time where
//! aligned), so two threads or processes touching the same bytes at once get torn data,
//! never undefined behaviour; agreeing on who writes when is still the users' business.
#![allow(unsafe_code)]

use super::backend::{Backend, BackendKind, Commit};
use super::error::{AccessError, AttachError, CreateError};
use super::header::{Header, HeaderFields, FLAG_HUGE_PAGES, FLAG_LAZY, HEADER_LEN, LAYOUT_VERSION};
use super::Segment;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

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
            flags: if backend.kind() == BackendKind::HugePages { FLAG_HUGE_PAGES } else { 0 }
                | if backend.commit() == Commit::Lazy { FLAG_LAZY } else { 0 },
        };
        let (reserved, page_size, segment_id) = (backend.reserved_len(), fields.page_size, fields.segment_id);
        let mut seg =
            Segment { base: backend.base(), backend, writable: true, reserved, page_size, segment_id };
        // SAFETY: no other mapping of this file exists: the fd was never handed out, and
        // for a name or path, attachers only `pread` the header (never a Rust reference)
        // and map only once they see the magic, which `init` writes last.
        unsafe { seg.header_mut() }.init(&fields, initial);
        seg
    }

    /// Makes a segment of memory another layer supplies (a distributed region, say),
    /// `initial` bytes committed: writes its header. The other processes that see the
    /// same memory attach with [`Segment::attach_on`].
    ///
    /// # Safety
    /// `backend` maps `reserved_len()` bytes at `base()`, all zero, for as long as it
    /// lives, and no other thread of this process touches them until this returns.
    pub unsafe fn create_on(backend: Box<dyn Backend>, initial: u64) -> Result<Segment, CreateError> {
        let (page, reserved) = (backend.page_size(), backend.reserved_len());
        let ok = page.is_power_of_two()
            && page >= HEADER_LEN
            && reserved.is_multiple_of(page)
            && (HEADER_LEN..=reserved).contains(&initial)
            && reserved <= super::header::MAX_RESERVED
            && backend.writable();
        if !ok {
            return Err(CreateError::InvalidSize(format!(
                "an external backend of {reserved} bytes in pages of {page}, {initial} committed"
            )));
        }
        Ok(Segment::init(backend, initial.next_multiple_of(page)))
    }

    /// Attaches to the segment a peer made with [`Segment::create_on`] in the memory
    /// `backend` shows: the header is copied out and checked field by field first.
    pub fn attach_on(backend: Box<dyn Backend>) -> Result<Segment, AttachError> {
        let mut bytes = vec![0u8; HEADER_LEN as usize];
        let len = backend.reserved_len().min(HEADER_LEN);
        for (i, chunk) in bytes[..len as usize].chunks_exact_mut(8).enumerate() {
            // SAFETY: the backend maps `reserved_len()` bytes at `base()` (the trait's
            // contract), page-aligned, and the word is within them; it is read with an
            // atomic load, as a peer may write it.
            let word = unsafe { &*backend.base().as_ptr().add(i * 8).cast::<AtomicU64>() };
            // SYNC: Acquire pairs with the Release store of the magic (word 0, read
            // first) in `Header::init`: a header seen with its magic is whole.
            chunk.copy_from_slice(&word.load(Ordering::Acquire).to_ne_bytes());
        }
        let info = super::header::validate(&bytes, backend.reserved_len(), super::host_page())?;
        if info.fields.reserved_len != backend.reserved_len() || info.fields.page_size != backend.page_size()
        {
            return Err(AttachError::Corrupted(format!(
                "the header says {} bytes in pages of {}, the memory is {} in pages of {}",
                info.fields.reserved_len,
                info.fields.page_size,
                backend.reserved_len(),
                backend.page_size()
            )));
        }
        Ok(Segment {
            base: backend.base(),
            reserved: backend.reserved_len(),
            writable: backend.writable(),
            backend,
            page_size: info.fields.page_size,
            segment_id: info.fields.segment_id,
        })
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
        // A peer could write anything into the shared header; never trust it past our
        // own mapping.
        self.header().committed.load().min(self.reserved)
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
        // SAFETY: `offset + len <= committed()`, which is capped at this mapping's length,
        // so the result stays inside the mapping (and `offset` fits in usize).
        Ok(unsafe { self.base.add(offset as usize) })
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        let src = self.ptr_at(offset, buf.len() as u64)?;
        // SAFETY: `src..src+len` is committed and mapped for the life of `&self` (checked
        // above).
        unsafe { copy_out(src.as_ptr(), buf) };
        Ok(())
    }

    /// Copies `data` into the segment at `offset`.
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        if !self.writable {
            return Err(AccessError::ReadOnly);
        }
        let dst = self.ptr_at(offset, data.len() as u64)?;
        // SAFETY: committed and mapped writable for the life of `&self` (checked above).
        unsafe { copy_in(dst.as_ptr(), data) };
        Ok(())
    }

    /// Copies `buf.len()` bytes at `offset` into `buf` with a plain `memcpy`, about four
    /// times faster than [`Segment::read_bytes`] for large copies.
    ///
    /// # Safety
    /// No thread or process writes these bytes during the call.
    pub unsafe fn read_bytes_nonatomic(&self, offset: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        let src = self.ptr_at(offset, buf.len() as u64)?;
        // SAFETY: committed and mapped (checked above); no concurrent writer (caller);
        // `buf` is private memory, so the ranges do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into the segment at `offset` with a plain `memcpy`.
    ///
    /// # Safety
    /// No thread or process reads or writes these bytes during the call.
    pub unsafe fn write_bytes_nonatomic(&self, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        if !self.writable {
            return Err(AccessError::ReadOnly);
        }
        let dst = self.ptr_at(offset, data.len() as u64)?;
        // SAFETY: committed and mapped writable (checked above); no concurrent access
        // (caller); `data` is private memory.
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

/// The head, 8-aligned body and tail of a shared range of `len` bytes at `p`.
fn split(p: *mut u8, len: usize) -> (usize, usize) {
    let head = p.align_offset(8).min(len);
    let body = (len - head) / 8;
    (head, body)
}

/// Copies `buf.len()` bytes from shared memory at `src` with relaxed atomic loads.
///
/// # Safety
/// `src..src + buf.len()` is mapped readable for the duration of the call.
unsafe fn copy_out(src: *mut u8, buf: &mut [u8]) {
    let (head, body) = split(src, buf.len());
    for (i, b) in buf.iter_mut().enumerate().take(head) {
        // SAFETY: in the mapped range (caller); AtomicU8 has no alignment requirement.
        *b = unsafe { AtomicU8::from_ptr(src.add(i)) }.load(Ordering::Relaxed);
    }
    for w in 0..body {
        let off = head + 8 * w;
        // SAFETY: in range and 8-aligned (`split`).
        let v = unsafe { AtomicU64::from_ptr(src.add(off).cast()) }.load(Ordering::Relaxed);
        buf[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in buf.iter_mut().enumerate().skip(head + 8 * body) {
        // SAFETY: in the mapped range (caller).
        *b = unsafe { AtomicU8::from_ptr(src.add(i)) }.load(Ordering::Relaxed);
    }
}

/// Copies `data` into shared memory at `dst` with relaxed atomic stores.
///
/// # Safety
/// `dst..dst + data.len()` is mapped writable for the duration of the call.
unsafe fn copy_in(dst: *mut u8, data: &[u8]) {
    let (head, body) = split(dst, data.len());
    for (i, &b) in data.iter().enumerate().take(head) {
        // SAFETY: in the mapped range (caller).
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(b, Ordering::Relaxed);
    }
    for w in 0..body {
        let off = head + 8 * w;
        let v = u64::from_ne_bytes(data[off..off + 8].try_into().expect("8 bytes"));
        // SAFETY: in range and 8-aligned (`split`).
        unsafe { AtomicU64::from_ptr(dst.add(off).cast()) }.store(v, Ordering::Relaxed);
    }
    for (i, &b) in data.iter().enumerate().skip(head + 8 * body) {
        // SAFETY: in the mapped range (caller).
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(b, Ordering::Relaxed);
    }
}
