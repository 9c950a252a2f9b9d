//! Segments: shared memory that processes map, grow and attach to.
//!
//! Layer: the bottom of shmpool. A [`Segment`] is one mapping of a [`Backend`]'s whole
//! reserved capacity plus the [header] at offset 0. It owns three promises:
//!
//! 1. **Growth without remapping.** The committed size grows ([`Segment::grow_to`]) with
//!    `ftruncate`/`fallocate` on the shared file; every process already maps the whole
//!    reservation, so all of them see the new pages at once. The header's `committed`
//!    only rises, and only after the file has grown.
//! 2. **Nothing past the committed size is touched.** Every accessor checks its range
//!    against `committed` (capped by the local mapping) first, so no access can fault on
//!    an unbacked page — unless a process with write access truncates the file: memfds
//!    are sealed against that, POSIX shm objects and files rely on their peers.
//! 3. **Attach validates before it maps.** A header is read with `pread` after `fstat`
//!    and checked field by field ([`AttachError`] names each failure); only then is the
//!    file mapped.
//!
//! | backend      | reach it by                 | create with                        |
//! |--------------|-----------------------------|------------------------------------|
//! | heap         | nobody (private)            | [`SegmentOptions::create_heap`]     |
//! | memfd        | fork, or `SCM_RIGHTS`       | [`SegmentOptions::create_memfd`]    |
//! | POSIX shm    | name, fork, `SCM_RIGHTS`    | [`SegmentOptions::create_shm`]      |
//! | huge pages   | fork, or `SCM_RIGHTS`       | [`SegmentOptions::create_huge`]     |
//! | mapped file  | path, fork, `SCM_RIGHTS`    | [`SegmentOptions::create_file`]     |
//!
//! ```no_run
//! use shmpool::segment::{Access, Segment, SegmentOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // process A
//! let seg = SegmentOptions::new().size(1 << 20).max_size(1 << 30).create_shm("jobs")?;
//! seg.atomic_u64(seg.data_start())?.store(42, std::sync::atomic::Ordering::Release);
//!
//! // process B, unrelated
//! let seg = Segment::open_shm("jobs", Access::ReadWrite)?;
//! assert_eq!(seg.load_u64(seg.data_start())?, 42);
//! Segment::unlink_shm("jobs")?;
//! # Ok(()) }
//! ```

mod access;
mod backend;
pub(crate) mod committed;
mod error;
mod fd;
mod fdpass;
mod file;
pub mod header;
mod hugepages;
mod mapping;
mod memfd;
mod name;
mod private;
mod shm;

pub use backend::{Backend, BackendKind, Commit, HugeFallback, IpcHandle};
pub use error::{AccessError, AttachError, CreateError, FdPassError, GrowError, NameError};
pub use fd::{FdBackend, GROW_LOCK_TIMEOUT};
pub use fdpass::{recv_fd, send_fd};
pub use header::{HeaderFields, HeaderInfo, HEADER_LEN};
pub use hugepages::HugePageSize;
pub use mapping::MAP_ALIGN;
pub use name::{ShmName, MAX_NAME_LEN};
pub use private::PrivateHeap;

use core::ptr::NonNull;
use error::os;
use fd::NewFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether this process maps a segment read-write or read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Read and write (the default).
    #[default]
    ReadWrite,
    /// Read only: writes and growth fail with typed errors.
    ReadOnly,
}

impl Access {
    fn writable(self) -> bool {
        self == Access::ReadWrite
    }
}

/// How to create a segment: sizes, mode and commit policy, then one `create_*` call per
/// backend.
///
/// Defaults: 1 MiB committed (or `max_size` if smaller), 1 GiB reserved, mode `0600`,
/// [`Commit::Eager`].
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// `None`: the default, 1 MiB or `max_size` if that is smaller.
    size: Option<u64>,
    max_size: u64,
    mode: u32,
    commit: Commit,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self { size: None, max_size: 1 << 30, mode: 0o600, commit: Commit::Eager }
    }
}

impl SegmentOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes committed at creation, header included (rounded up to the page size).
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }

    /// Bytes reserved: the most the segment can grow to (rounded up to the page size).
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// Permission bits of a named segment or file, applied exactly (not masked by the
    /// umask).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o7777;
        self
    }

    /// When pages are allocated as the segment grows.
    pub fn commit(mut self, commit: Commit) -> Self {
        self.commit = commit;
        self
    }

    /// `(initial, reserved)` rounded up to `page`, checked.
    fn sizes(&self, page: u64) -> Result<(u64, u64), CreateError> {
        let size = self.size.unwrap_or(self.max_size.min(1 << 20));
        let initial = size.max(HEADER_LEN).checked_next_multiple_of(page);
        let reserved = self.max_size.checked_next_multiple_of(page);
        match (initial, reserved) {
            (Some(i), Some(r)) if i <= r && r <= header::MAX_RESERVED => Ok((i, r)),
            (Some(i), Some(r)) if i > r => {
                Err(CreateError::InvalidSize(format!("size {i} is larger than max_size {r}")))
            }
            _ => Err(CreateError::InvalidSize(format!(
                "max_size {} is above the limit of {} bytes",
                self.max_size,
                header::MAX_RESERVED
            ))),
        }
    }

    /// A segment in this process's private memory.
    pub fn create_heap(&self) -> Result<Segment, CreateError> {
        let (initial, reserved) = self.sizes(host_page())?;
        let map = mapping::Mapping::anonymous(reserved).map_err(os("mmap"))?;
        Ok(Segment::init(Box::new(PrivateHeap::new(map, initial)), initial))
    }

    /// An anonymous memfd segment; `label` only names it in `/proc/PID/fd`.
    pub fn create_memfd(&self, label: &str) -> Result<Segment, CreateError> {
        let (initial, reserved) = self.sizes(host_page())?;
        let backend = FdBackend::create(memfd::create(label, self.commit)?, initial, reserved)?;
        memfd::seal(backend.fd())?;
        Ok(Segment::init(Box::new(backend), initial))
    }

    /// A named POSIX shm segment; fails with [`CreateError::AlreadyExists`] if the name is
    /// taken. The name stays until [`Segment::unlink`].
    pub fn create_shm(&self, name: &str) -> Result<Segment, CreateError> {
        let name = ShmName::new(name)?;
        let (initial, reserved) = self.sizes(host_page())?;
        let new = shm::create(&name, self.mode, self.commit)?;
        FdBackend::create(new, initial, reserved)
            .map(|b| Segment::init(Box::new(b), initial))
            .inspect_err(|_| drop(shm::unlink(name.as_str())))
    }

    /// A huge-page memfd segment. Sizes are rounded up to the huge page size. When huge
    /// pages cannot be had, this still succeeds on normal pages and
    /// [`Segment::huge_fallback`] says why.
    pub fn create_huge(&self, label: &str, page: HugePageSize) -> Result<Segment, CreateError> {
        let (initial, reserved) = self.sizes(host_page())?;
        let backend = hugepages::create(label, page, initial, reserved)?;
        let initial = backend.backing_len().map_err(os("fstat"))?;
        Ok(Segment::init(Box::new(backend), initial))
    }

    /// A segment in a new file at `path`; fails if the file exists.
    pub fn create_file(&self, path: impl AsRef<Path>) -> Result<Segment, CreateError> {
        let path = path.as_ref();
        let (initial, reserved) = self.sizes(host_page())?;
        let new = file::create(path, self.mode, self.commit)?;
        FdBackend::create(new, initial, reserved)
            .map(|b| Segment::init(Box::new(b), initial))
            .inspect_err(|_| drop(std::fs::remove_file(path)))
    }
}

fn host_page() -> u64 {
    rustix::param::page_size() as u64
}

/// A mapped shared-memory segment. Dropping it unmaps it (named segments stay until
/// unlinked). See the [module docs](self).
#[derive(Debug)]
pub struct Segment {
    backend: Box<dyn Backend>,
    base: NonNull<u8>,
    writable: bool,
    // Immutable header fields, copied at create/attach: never re-read from shared memory.
    reserved: u64,
    page_size: u64,
    segment_id: u64,
}

/// A snapshot of a segment's header and backing.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// The backend kind.
    pub kind: BackendKind,
    /// The immutable header fields.
    pub fields: HeaderFields,
    /// Committed bytes.
    pub committed: u64,
    /// Bytes in the backing file.
    pub backing_len: u64,
    /// Why huge pages are not used, if they were asked for.
    pub huge_fallback: Option<HugeFallback>,
}

impl Segment {
    fn attach(new: NewFd, access: Access) -> Result<Segment, AttachError> {
        let (backend, info) = FdBackend::attach(new, access.writable())?;
        Ok(Segment {
            base: backend.base(),
            reserved: backend.reserved_len(),
            backend: Box::new(backend),
            writable: access.writable(),
            page_size: info.fields.page_size,
            segment_id: info.fields.segment_id,
        })
    }

    /// Attaches to the POSIX shm segment `name`.
    pub fn open_shm(name: &str, access: Access) -> Result<Segment, AttachError> {
        let name = ShmName::new(name)?;
        Self::attach(shm::open(&name, access.writable())?, access)
    }

    /// Attaches to the POSIX shm segment `name`, waiting up to `timeout` for it to be
    /// created and initialised: for a process that may start before the creator has
    /// finished. Other errors return at once.
    pub fn open_shm_wait(name: &str, access: Access, timeout: Duration) -> Result<Segment, AttachError> {
        let deadline = Instant::now().checked_add(timeout);
        let expired = || deadline.is_some_and(|d| Instant::now() >= d);
        let mut pause = Duration::from_micros(50);
        loop {
            match Self::open_shm(name, access) {
                Err(AttachError::NotFound(_) | AttachError::Empty | AttachError::Uninitialized)
                    if !expired() =>
                {
                    let left = deadline.map_or(pause, |d| d.saturating_duration_since(Instant::now()));
                    std::thread::sleep(pause.min(left));
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                result => return result,
            }
        }
    }

    /// Attaches to the segment in the file at `path`.
    pub fn open_file(path: impl AsRef<Path>, access: Access) -> Result<Segment, AttachError> {
        Self::attach(file::open(path.as_ref(), access.writable())?, access)
    }

    /// Attaches to the segment behind `fd` (received over a socket, or inherited).
    pub fn from_fd(fd: rustix::fd::OwnedFd, access: Access) -> Result<Segment, AttachError> {
        let mode = rustix::fs::fcntl_getfl(&fd).map_err(os("fcntl(F_GETFL)"))? & rustix::fs::OFlags::RDWR;
        if access.writable() && mode != rustix::fs::OFlags::RDWR {
            return Err(AttachError::ReadOnly("the descriptor (opened read-only)".into()));
        }
        Self::attach(fd::adopt(fd)?, access)
    }

    /// Removes the POSIX shm name `name`; mappings stay valid.
    pub fn unlink_shm(name: &str) -> Result<(), AttachError> {
        shm::unlink(name)
    }

    /// Reads and validates the header of the segment file at `path` (a `/dev/shm` entry
    /// or a mapped file) without mapping it.
    pub fn inspect_file(path: impl AsRef<Path>) -> Result<HeaderInfo, AttachError> {
        let path = path.as_ref();
        let file = file::open(path, false)?;
        fd::read_header(&file.fd)
    }

    /// Removes this segment's name or file, if it has one; mappings stay valid. Returns
    /// whether there was anything to remove.
    pub fn unlink(&self) -> Result<bool, AttachError> {
        match self.handle() {
            IpcHandle::Name(name, _) => shm::unlink(name).map(|()| true),
            IpcHandle::Path(path, _) => file::unlink(path).map(|()| true),
            IpcHandle::None | IpcHandle::Fd(_) => Ok(false),
        }
    }

    /// Makes at least `len` bytes usable (rounded up to the page size) and returns the
    /// committed size afterwards. Concurrent calls from any processes end at the largest
    /// size asked for; growing to a smaller size is a no-op.
    pub fn grow_to(&self, len: u64) -> Result<u64, GrowError> {
        let committed = self.committed();
        if len <= committed {
            return Ok(committed);
        }
        self.grow_slow(len)
    }

    #[cold]
    fn grow_slow(&self, len: u64) -> Result<u64, GrowError> {
        if !self.writable {
            return Err(GrowError::ReadOnly);
        }
        let reserved = self.reserved();
        let len = len.checked_next_multiple_of(self.page_size()).filter(|&l| l <= reserved);
        let len = len.ok_or(GrowError::BeyondReserved { requested: len.unwrap_or(u64::MAX), reserved })?;
        self.backend.grow(len)?;
        // The file has grown: now every process may see the new size.
        Ok(self.header().committed.publish(len))
    }

    /// First data offset (the header's length).
    pub fn data_start(&self) -> u64 {
        HEADER_LEN
    }

    /// Bytes mapped: the most the segment can grow to.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// The mapping's page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The random id written at creation; equal in every process attached.
    pub fn segment_id(&self) -> u64 {
        self.segment_id
    }

    /// The kind of backing memory.
    pub fn kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// Whether this host can tell if the segment's other processes run (see
    /// [`Backend::local_liveness`]).
    pub fn local_liveness(&self) -> bool {
        self.backend.local_liveness()
    }

    /// Whether this process may write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// How other processes reach this segment.
    pub fn handle(&self) -> IpcHandle<'_> {
        self.backend.handle()
    }

    /// The backend itself.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Why huge pages were not used, for a segment made by
    /// [`SegmentOptions::create_huge`] that fell back to normal pages.
    pub fn huge_fallback(&self) -> Option<&HugeFallback> {
        self.backend.huge_fallback()
    }

    /// Header fields, committed size and backing size now.
    pub fn info(&self) -> SegmentInfo {
        SegmentInfo {
            kind: self.kind(),
            fields: self.header().fields(),
            committed: self.committed(),
            backing_len: self.backend.backing_len().unwrap_or(0),
            huge_fallback: self.huge_fallback().cloned(),
        }
    }
}

pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    (t.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(t.tv_nsec as u64)
}

pub(crate) fn random_id() -> u64 {
    let mut b = [0u8; 8];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_ne_bytes(b),
        // No entropy source: time and pid still make collisions unlikely on one host.
        _ => now_ns() ^ (u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32) << 40),
    }
}
