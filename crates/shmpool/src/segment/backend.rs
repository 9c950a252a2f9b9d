//! The backend trait: what the segment layer needs from the memory behind a segment.
//!
//! A backend owns one mapping of the segment's whole *reserved* capacity and knows how
//! to grow the *committed* part. Two mechanisms implement it: [`PrivateHeap`] (anonymous
//! memory of one process) and [`FdBackend`] (a shared file: memfd, POSIX shm, hugetlbfs
//! memfd, or a regular file). Each kind has its own constructor module.
//!
//! [`PrivateHeap`]: super::PrivateHeap
//! [`FdBackend`]: super::FdBackend

use super::error::GrowError;
use core::fmt;
use core::ptr::NonNull;
use rustix::fd::BorrowedFd;
use std::path::Path;

/// Which kind of memory is behind a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Anonymous private memory: one process (and threads) only.
    Heap,
    /// An anonymous `memfd`, shared by fork or by passing its descriptor.
    Memfd,
    /// A named POSIX shared-memory object (`/dev/shm/NAME`).
    PosixShm,
    /// A `memfd` on hugetlbfs (2 MiB or 1 GiB pages).
    HugePages,
    /// A regular file mapped shared; persists across reboots.
    MappedFile,
    /// Memory supplied by another layer through [`Segment::create_on`]: a distributed
    /// region (shmpool-dsm), whose pages move between processes on several hosts.
    ///
    /// [`Segment::create_on`]: super::Segment::create_on
    External,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Heap => "heap",
            Self::Memfd => "memfd",
            Self::PosixShm => "posix-shm",
            Self::HugePages => "huge-pages",
            Self::MappedFile => "mapped-file",
            Self::External => "external",
        })
    }
}

/// How another process can reach the same segment.
#[derive(Debug, Clone, Copy)]
pub enum IpcHandle<'a> {
    /// No way: private memory.
    None,
    /// Only through this descriptor (fork inheritance or `SCM_RIGHTS`).
    Fd(BorrowedFd<'a>),
    /// By this POSIX shm name (with its leading `/`), or through the descriptor.
    Name(&'a str, BorrowedFd<'a>),
    /// By this file path, or through the descriptor.
    Path(&'a Path, BorrowedFd<'a>),
}

impl<'a> IpcHandle<'a> {
    /// The descriptor behind the segment, if it has one.
    pub fn fd(&self) -> Option<BorrowedFd<'a>> {
        match *self {
            Self::None => None,
            Self::Fd(fd) | Self::Name(_, fd) | Self::Path(_, fd) => Some(fd),
        }
    }
}

/// When the pages of a growing segment are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Commit {
    /// `ftruncate`, then `fallocate` the new range: memory is taken at growth, so a full
    /// tmpfs or an empty huge-page pool is a [`GrowError::NoSpace`] now instead of a
    /// `SIGBUS` at first touch. The default.
    #[default]
    Eager,
    /// `ftruncate` only: the file is sparse and pages arrive on first touch. Cheaper to
    /// grow, but a first touch can `SIGBUS` when the backing filesystem is full.
    Lazy,
}

/// Why a huge-page segment fell back to normal pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HugeFallback {
    /// The kernel refused a hugetlbfs memfd of that page size.
    Unsupported {
        /// Page size asked for.
        page_size: u64,
        /// What `memfd_create` said.
        errno: rustix::io::Errno,
    },
    /// The huge-page pool has fewer free pages than the initial size needs.
    NoFreePages {
        /// Page size asked for.
        page_size: u64,
        /// Pages needed.
        needed: u64,
        /// Free pages in the pool when checked (from sysfs), if readable.
        free: Option<u64>,
    },
}

impl fmt::Display for HugeFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported { page_size, errno } => {
                write!(f, "{} KiB huge pages unsupported ({errno})", page_size >> 10)
            }
            Self::NoFreePages { page_size, needed, free } => {
                let free = free.map_or("unknown".to_string(), |n| n.to_string());
                write!(
                    f,
                    "{needed} free {} KiB huge pages needed, pool has {free} \
                     (raise /proc/sys/vm/nr_hugepages)",
                    page_size >> 10
                )
            }
        }
    }
}

/// The memory behind a segment.
///
/// Implementations map `reserved_len()` bytes once, at a fixed `base()`, for the life of
/// the value; `grow` makes more of that range usable and never shrinks it.
pub trait Backend: Send + Sync + fmt::Debug {
    /// The kind of memory.
    fn kind(&self) -> BackendKind;
    /// First byte of the mapping.
    fn base(&self) -> NonNull<u8>;
    /// Bytes mapped: the most the segment can ever commit.
    fn reserved_len(&self) -> u64;
    /// Page size of the mapping.
    fn page_size(&self) -> u64;
    /// Whether this process mapped it writable.
    fn writable(&self) -> bool;
    /// How another process reaches the segment.
    fn handle(&self) -> IpcHandle<'_>;
    /// Bytes the backing store holds now (the file size).
    fn backing_len(&self) -> Result<u64, rustix::io::Errno>;
    /// Makes at least `len` bytes usable. Concurrent calls from any processes end with
    /// the largest length asked for; no call shrinks the store.
    fn grow(&self, len: u64) -> Result<(), GrowError>;
    /// When pages are allocated as the segment grows.
    fn commit(&self) -> Commit {
        Commit::Eager
    }
    /// Why huge pages were not used, if they were asked for and are not.
    fn huge_fallback(&self) -> Option<&HugeFallback> {
        None
    }
    /// Whether this host's `/proc` tells whether the processes sharing the memory still
    /// run. `false` for memory shared with other hosts, where another host's pid would
    /// look dead here: then nothing is ever taken over from a process judged dead (no
    /// recovery of others, no lock takeover), as nothing can be judged.
    fn local_liveness(&self) -> bool {
        true
    }
}
