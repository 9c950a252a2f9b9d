//! Error types of the segment layer, one enum per operation family. OS failures carry
//! the operation that failed and its `errno`.

use rustix::io::Errno;

/// A shared-memory or file name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty (or only `/`).
    #[error("segment name is empty")]
    Empty,
    /// The name is longer than the filesystem allows.
    #[error("segment name is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the name in bytes, without the leading `/`.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// A `/` after the optional leading one.
    #[error("segment name {0:?} contains '/' (only one leading '/' is allowed)")]
    ContainsSlash(String),
    /// A NUL byte.
    #[error("segment name contains a NUL byte")]
    ContainsNul,
    /// `.` or `..`.
    #[error("segment name {0:?} is reserved")]
    Reserved(String),
}

/// Why a segment could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A segment or file of that name already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The sizes asked for cannot be honoured.
    #[error("invalid size: {0}")]
    InvalidSize(String),
    /// Not enough memory or space to commit the initial size.
    #[error("no space to commit {bytes} bytes")]
    NoSpace {
        /// Bytes that were asked for.
        bytes: u64,
    },
    /// An OS call failed.
    #[error("{op} failed: {errno}")]
    Os {
        /// The call that failed, e.g. `shm_open`.
        op: &'static str,
        /// What the kernel said.
        errno: Errno,
    },
}

/// Why attaching to an existing segment failed. Every check runs on a copy of the
/// header read with `pread` after `fstat`, before anything is mapped, so a bad file is
/// an error and never a `SIGBUS`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Nothing of that name exists.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The file is empty.
    #[error("segment file is empty")]
    Empty,
    /// The file is shorter than a header.
    #[error("segment file is truncated: {len} bytes, a header needs {need}")]
    Truncated {
        /// Size of the file.
        len: u64,
        /// The size a header needs.
        need: u64,
    },
    /// The header is all zeroes: its creator has not finished (or died while) writing it.
    #[error("segment is not initialised (its creator has not finished writing the header)")]
    Uninitialized,
    /// The file does not hold a shmpool segment.
    #[error("not a shmpool segment (found {found:02x?} where the magic belongs)")]
    NotShmpool {
        /// The first eight bytes of the file.
        found: [u8; 8],
    },
    /// The header is a valid shmpool header (its checksum matches) but the magic has been
    /// overwritten.
    #[error("wrong magic {found:#018x}: the header checksum is valid, the magic was damaged")]
    BadMagic {
        /// The value found instead of the magic.
        found: u64,
    },
    /// The segment was written by another layout version of shmpool.
    #[error("segment layout version {found}, this build reads version {expected}")]
    VersionMismatch {
        /// Version in the header.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// The segment's page size is not a multiple of this machine's.
    #[error("segment page size {found} is not a multiple of this machine's page size {host}")]
    PageSizeMismatch {
        /// Page size in the header.
        found: u64,
        /// This machine's page size.
        host: u64,
    },
    /// The header says more bytes are committed than the file holds.
    #[error("header says {committed} bytes are committed but the file holds only {file_len}")]
    CommittedBeyondFile {
        /// Committed size in the header.
        committed: u64,
        /// Size of the file.
        file_len: u64,
    },
    /// A header field is out of its range (checksum mismatch, sizes that contradict).
    #[error("corrupted header: {0}")]
    Corrupted(String),
    /// No descriptor could be received to attach.
    #[error("receiving the segment's descriptor failed: {0}")]
    Receive(FdPassError),
    /// Read-write access was asked for a file that is read-only.
    #[error("{0} is read-only; open it with Access::ReadOnly")]
    ReadOnly(String),
    /// An OS call failed.
    #[error("{op} failed: {errno}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// What the kernel said.
        errno: Errno,
    },
}

/// Why the committed size could not grow.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrowError {
    /// The request is beyond the reserved capacity of the segment.
    #[error("cannot grow to {requested} bytes: the segment reserves {reserved}")]
    BeyondReserved {
        /// Size asked for.
        requested: u64,
        /// Reserved capacity.
        reserved: u64,
    },
    /// The segment is mapped read-only in this process.
    #[error("segment is mapped read-only")]
    ReadOnly,
    /// Another process held the growth lock for longer than the growth timeout.
    #[error("the growth lock was held by another process for over {0:?}")]
    LockTimeout(std::time::Duration),
    /// The backing store (tmpfs, hugetlbfs pool, disk) has no room for the new pages.
    #[error("no space to commit {bytes} more bytes")]
    NoSpace {
        /// Bytes the growth needed.
        bytes: u64,
    },
    /// An OS call failed.
    #[error("{op} failed: {errno}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// What the kernel said.
        errno: Errno,
    },
}

/// An access outside the committed part of the segment, or a write to a read-only one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// `offset + len` passes the committed size (or overflows).
    #[error("range {offset}..{offset}+{len} is outside the committed {committed} bytes")]
    OutOfBounds {
        /// Start of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Committed size when checked.
        committed: u64,
    },
    /// The offset is not aligned for the type accessed.
    #[error("offset {offset} is not aligned to {align}")]
    Misaligned {
        /// The offset.
        offset: u64,
        /// The alignment needed.
        align: u64,
    },
    /// The range covers the header, which only shmpool itself writes.
    #[error("offset {offset} lies in the segment header (data starts at {data_start})")]
    InHeader {
        /// The offset.
        offset: u64,
        /// First offset past the header.
        data_start: u64,
    },
    /// Writing to a segment mapped read-only.
    #[error("segment is mapped read-only")]
    ReadOnly,
}

/// Why a file descriptor could not be passed or received over a Unix socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FdPassError {
    /// The segment has no file descriptor (a private heap segment).
    #[error("this segment has no file descriptor to pass")]
    NoFd,
    /// A descriptor must travel with at least one byte of message body.
    #[error("a descriptor needs a message body of at least one byte")]
    EmptyBody,
    /// The peer closed the socket before a descriptor arrived.
    #[error("the peer closed the socket")]
    Closed,
    /// A message arrived without a descriptor, or with more than one.
    #[error("expected one file descriptor, received {0}")]
    WrongCount(usize),
    /// The message was truncated.
    #[error("message truncated")]
    Truncated,
    /// An OS call failed.
    #[error("{op} failed: {errno}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// What the kernel said.
        errno: Errno,
    },
}

/// An OS call that failed, before `?` turns it into the caller's error type.
#[derive(Debug)]
pub(crate) struct OsFailure {
    op: &'static str,
    errno: Errno,
}

/// Tags an `Errno` with the call that produced it: `.map_err(os("mmap"))?`.
pub(crate) fn os(op: &'static str) -> impl FnOnce(Errno) -> OsFailure {
    move |errno| OsFailure { op, errno }
}

macro_rules! impl_os_from {
    ($($ty:ty),*) => {$(
        impl From<OsFailure> for $ty {
            fn from(OsFailure { op, errno }: OsFailure) -> Self {
                Self::Os { op, errno }
            }
        }
    )*};
}
impl_os_from!(CreateError, AttachError, GrowError, FdPassError);
