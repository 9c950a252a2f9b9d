//! [`FdBackend`]: a segment backed by a shared file descriptor — a memfd, a POSIX shm
//! object, a hugetlbfs memfd or a regular file. The kind-specific modules (`memfd`,
//! `shm`, `hugepages`, `file`) only obtain the descriptor; sizing, attaching and growth
//! are here, once.
//!
//! # Growth
//! Every process maps the whole reserved capacity; the file's length is the committed
//! size. Growth takes an exclusive `flock(2)` on a *private* open file description (a
//! fresh `open("/proc/self/fd/N")`), so it excludes every other grower — threads, forked
//! children sharing our descriptor, unrelated processes — and the kernel drops it if the
//! holder dies. Under the lock the length is re-read and only ever raised, so two
//! processes growing at once end at the larger size and no grown page is cut off.
//! With [`Commit::Eager`] the new range is allocated with `fallocate(2)`; with
//! [`Commit::Lazy`] the file is extended with `ftruncate(2)` and stays sparse.
//!
//! hugetlbfs is the exception to "file length = committed bytes": mapping a hugetlbfs
//! file raises its length to the mapping's, so for huge pages the backed size is the
//! allocated block count and growth always allocates the whole prefix.

use super::backend::{Backend, BackendKind, Commit, HugeFallback, IpcHandle};
use super::error::{os, AttachError, CreateError, GrowError};
use super::header::{self, HeaderInfo, HEADER_LEN};
use super::mapping::Mapping;
use super::name::ShmName;
use core::ptr::NonNull;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FallocateFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How a process other than the creator can find the segment.
#[derive(Debug, Clone)]
pub(crate) enum Locator {
    /// Only by its descriptor.
    Fd,
    /// By POSIX shm name.
    Name(ShmName),
    /// By file path.
    Path(PathBuf),
}

/// A segment backed by a shared file descriptor.
#[derive(Debug)]
pub struct FdBackend {
    kind: BackendKind,
    fd: OwnedFd,
    map: Mapping,
    writable: bool,
    commit: Commit,
    page_size: u64,
    locator: Locator,
    fallback: Option<HugeFallback>,
}

/// The parts of a new fd-backed segment, before it is sized and mapped.
pub(crate) struct NewFd {
    pub kind: BackendKind,
    pub fd: OwnedFd,
    pub locator: Locator,
    pub page_size: u64,
    pub commit: Commit,
    pub fallback: Option<HugeFallback>,
}

impl NewFd {
    /// A descriptor on normal pages.
    pub(crate) fn new(kind: BackendKind, fd: OwnedFd, locator: Locator, commit: Commit) -> Self {
        let page_size = rustix::param::page_size() as u64;
        Self { kind, fd, locator, page_size, commit, fallback: None }
    }
}

impl FdBackend {
    /// Sizes a freshly created (empty) file to `initial` bytes and maps `reserved`.
    pub(crate) fn create(new: NewFd, initial: u64, reserved: u64) -> Result<Self, CreateError> {
        extend(&new.fd, 0, initial, new.commit).map_err(|e| match e {
            GrowError::NoSpace { bytes } => CreateError::NoSpace { bytes },
            GrowError::Os { op, errno } => CreateError::Os { op, errno },
            other => CreateError::InvalidSize(other.to_string()),
        })?;
        let map = Mapping::shared(&new.fd, reserved, true, new.page_size).map_err(os("mmap"))?;
        Ok(Self::assemble(new, map, true))
    }

    /// Validates the header of an existing file and maps it. Nothing is mapped before
    /// the header has passed every check, so a bad file cannot cause a `SIGBUS`.
    pub(crate) fn attach(mut new: NewFd, writable: bool) -> Result<(Self, HeaderInfo), AttachError> {
        let info = read_header(&new.fd)?;
        new.page_size = info.fields.page_size;
        new.commit = if info.fields.flags & header::FLAG_LAZY != 0 { Commit::Lazy } else { Commit::Eager };
        let map = Mapping::shared(&new.fd, info.fields.reserved_len, writable, new.page_size)
            .map_err(os("mmap"))?;
        Ok((Self::assemble(new, map, writable), info))
    }

    fn assemble(new: NewFd, map: Mapping, writable: bool) -> Self {
        Self {
            kind: new.kind,
            fd: new.fd,
            map,
            writable,
            commit: new.commit,
            page_size: new.page_size,
            locator: new.locator,
            fallback: new.fallback,
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A descriptor received from elsewhere: its kind is read off the file it names.
pub(crate) fn adopt(fd: OwnedFd) -> Result<NewFd, AttachError> {
    let huge = on_hugetlbfs(&fd)?;
    let link = {
        use rustix::fd::AsRawFd;
        rustix::fs::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(), Vec::new())
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let kind = if huge {
        BackendKind::HugePages
    } else if link.starts_with("/memfd:") {
        BackendKind::Memfd
    } else if link.starts_with("/dev/shm/") {
        BackendKind::PosixShm
    } else {
        BackendKind::MappedFile
    };
    Ok(NewFd::new(kind, fd, Locator::Fd, Commit::Eager))
}

const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

fn on_hugetlbfs(fd: impl AsFd) -> Result<bool, AttachError> {
    Ok(rustix::fs::fstatfs(fd).map_err(os("fstatfs"))?.f_type as u64 == HUGETLBFS_MAGIC)
}

/// Reads and validates the header of `fd` without mapping anything.
pub(crate) fn read_header(fd: impl AsFd) -> Result<HeaderInfo, AttachError> {
    let st = rustix::fs::fstat(&fd).map_err(os("fstat"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(AttachError::NotShmpool { found: [0; 8] });
    }
    let len = st.st_size as u64;
    // hugetlbfs raises a file's length to cover its mappings: only allocated blocks say
    // what is backed.
    let backed = if on_hugetlbfs(&fd)? { st.st_blocks as u64 * 512 } else { len };
    let mut buf = [0u8; HEADER_LEN as usize];
    let want = len.min(HEADER_LEN) as usize;
    let mut got = 0;
    while got < want {
        match rustix::io::pread(&fd, &mut buf[got..want], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(AttachError::Os { op: "pread", errno: e }),
        }
    }
    let info = header::validate(&buf[..got], len, rustix::param::page_size() as u64)?;
    if info.committed > backed {
        return Err(AttachError::CommittedBeyondFile { committed: info.committed, file_len: backed });
    }
    Ok(info)
}

/// Opens with `open(writable)`, read-write or read-only (close-on-exec), and maps a refusal of write access
/// to [`AttachError::ReadOnly`] — also for a file whose mode grants nobody write access,
/// which root could otherwise open read-write.
pub(crate) fn open_checked(
    what: &str,
    writable: bool,
    open: impl Fn(bool) -> Result<OwnedFd, Errno>,
) -> Result<OwnedFd, AttachError> {
    let fd = match open(writable) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Err(AttachError::NotFound(what.to_string())),
        Err(e @ (Errno::ACCESS | Errno::ROFS | Errno::PERM)) if writable => {
            return match open(false) {
                Ok(_) => Err(AttachError::ReadOnly(what.to_string())),
                Err(_) => Err(AttachError::Os { op: "open", errno: e }),
            };
        }
        Err(e) => return Err(AttachError::Os { op: "open", errno: e }),
    };
    if writable {
        let mode = rustix::fs::fstat(&fd).map_err(os("fstat"))?.st_mode;
        if Mode::from_raw_mode(mode) & (Mode::WUSR | Mode::WGRP | Mode::WOTH) == Mode::empty() {
            return Err(AttachError::ReadOnly(what.to_string()));
        }
    }
    Ok(fd)
}

/// Raises the file from `cur` to `len` bytes (never lowers it).
fn extend(fd: impl AsFd, cur: u64, len: u64, commit: Commit) -> Result<(), GrowError> {
    if len <= cur {
        return Ok(());
    }
    if commit == Commit::Eager {
        loop {
            match rustix::fs::fallocate(&fd, FallocateFlags::empty(), cur, len - cur) {
                Ok(()) => return Ok(()),
                // tmpfs undoes a fallocate interrupted by a signal: safe to repeat.
                Err(Errno::INTR) => continue,
                Err(Errno::NOSPC | Errno::NOMEM) => return Err(GrowError::NoSpace { bytes: len - cur }),
                // The filesystem cannot preallocate: fall through to a sparse extension.
                Err(Errno::OPNOTSUPP | Errno::NOSYS) => break,
                Err(errno) => return Err(GrowError::Os { op: "fallocate", errno }),
            }
        }
    }
    loop {
        match rustix::fs::ftruncate(&fd, len) {
            Err(Errno::INTR) => continue,
            r => return Ok(r.map_err(os("ftruncate"))?),
        }
    }
}

/// How long a grower waits for the growth lock. A dead holder releases it at once (the
/// kernel drops its locks), so only a live process holding it this long — stuck, or
/// hostile — makes growth fail with [`GrowError::LockTimeout`].
pub const GROW_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// An exclusive `flock` on a private open file description of the segment's file; the
/// kernel releases it when this is dropped or when the process dies. Reopening through
/// `/proc/self/fd` needs procfs and read permission on the file.
struct GrowLock(#[allow(dead_code)] OwnedFd);

impl GrowLock {
    fn acquire(fd: BorrowedFd<'_>) -> Result<Self, GrowError> {
        use rustix::fd::AsRawFd;
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let own = rustix::fs::open(path.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(os("open /proc/self/fd"))?;
        let deadline = Instant::now() + GROW_LOCK_TIMEOUT;
        let mut pause = Duration::from_micros(20);
        loop {
            match rustix::fs::flock(&own, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Self(own)),
                Err(Errno::INTR) => continue,
                Err(Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
                Err(Errno::WOULDBLOCK) => return Err(GrowError::LockTimeout(GROW_LOCK_TIMEOUT)),
                Err(errno) => return Err(GrowError::Os { op: "flock", errno }),
            }
        }
    }
}

impl Backend for FdBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn base(&self) -> NonNull<u8> {
        self.map.base()
    }

    fn reserved_len(&self) -> u64 {
        self.map.len()
    }

    fn page_size(&self) -> u64 {
        self.page_size
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn handle(&self) -> IpcHandle<'_> {
        let fd = self.fd.as_fd();
        match &self.locator {
            Locator::Fd => IpcHandle::Fd(fd),
            Locator::Name(name) => IpcHandle::Name(name.as_str(), fd),
            Locator::Path(path) => IpcHandle::Path(path, fd),
        }
    }

    fn backing_len(&self) -> Result<u64, Errno> {
        let st = rustix::fs::fstat(&self.fd)?;
        Ok(if self.kind == BackendKind::HugePages {
            // hugetlbfs raises the file length to cover every mapping, so only the
            // allocated blocks say how much is backed.
            st.st_blocks as u64 * 512
        } else {
            st.st_size as u64
        })
    }

    fn grow(&self, len: u64) -> Result<(), GrowError> {
        if !self.writable {
            return Err(GrowError::ReadOnly);
        }
        if len > self.map.len() {
            return Err(GrowError::BeyondReserved { requested: len, reserved: self.map.len() });
        }
        let _lock = GrowLock::acquire(self.fd.as_fd())?;
        let cur = match self.kind {
            // Allocate the whole prefix again: `fallocate` skips pages already there,
            // and a huge-page range is only a few hundred pages.
            BackendKind::HugePages => 0,
            _ => self.backing_len().map_err(os("fstat"))?,
        };
        extend(&self.fd, cur, len, self.commit)
    }

    fn commit(&self) -> Commit {
        self.commit
    }

    fn huge_fallback(&self) -> Option<&HugeFallback> {
        self.fallback.as_ref()
    }
}
