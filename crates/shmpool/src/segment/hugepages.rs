//! Huge-page segments: a memfd on hugetlbfs (`MFD_HUGETLB`, memfd_create(2)) with 2 MiB
//! or 1 GiB pages. Huge pages come from a pool the administrator sizes
//! (`/proc/sys/vm/nr_hugepages`, `/sys/kernel/mm/hugepages/`); a page that is not in the
//! pool at first touch is a `SIGBUS`, so growth is always eager (`fallocate`), and when
//! the kernel refuses the page size or the pool cannot hold the initial size the segment
//! falls back to normal pages and says why ([`HugeFallback`]).

use super::backend::{BackendKind, Commit, HugeFallback};
use super::error::CreateError;
use super::fd::{FdBackend, Locator, NewFd};
use super::memfd;
use rustix::fs::MemfdFlags;

/// The huge page sizes x86-64 offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HugePageSize {
    /// 2 MiB pages.
    Size2M,
    /// 1 GiB pages.
    Size1G,
}

impl HugePageSize {
    /// The page size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            Self::Size2M => 2 << 20,
            Self::Size1G => 1 << 30,
        }
    }

    fn flag(self) -> MemfdFlags {
        match self {
            Self::Size2M => MemfdFlags::HUGE_2MB,
            Self::Size1G => MemfdFlags::HUGE_1GB,
        }
    }

    /// Free pages of this size in the pool now, from sysfs; `None` if unreadable.
    pub fn free_pages(self) -> Option<u64> {
        let path = format!("/sys/kernel/mm/hugepages/hugepages-{}kB/free_hugepages", self.bytes() >> 10);
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

/// Creates a huge-page segment of `initial` committed and `reserved` mapped bytes, each
/// rounded up to the page size; falls back to a normal memfd when huge pages cannot be had.
pub(crate) fn create(
    label: &str,
    size: HugePageSize,
    initial: u64,
    reserved: u64,
) -> Result<FdBackend, CreateError> {
    memfd::check_label(label)?;
    let page = size.bytes();
    let (initial_huge, reserved_huge) = (initial.next_multiple_of(page), reserved.next_multiple_of(page));
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB | size.flag();
    let fallback = match rustix::fs::memfd_create(label, flags) {
        Err(errno) => HugeFallback::Unsupported { page_size: page, errno },
        Ok(fd) => {
            let mut new = NewFd::new(BackendKind::HugePages, fd, Locator::Fd, Commit::Eager);
            new.page_size = page;
            match FdBackend::create(new, initial_huge, reserved_huge) {
                Ok(backend) => {
                    memfd::seal(backend.fd())?;
                    return Ok(backend);
                }
                Err(CreateError::NoSpace { .. }) => HugeFallback::NoFreePages {
                    page_size: page,
                    needed: initial_huge / page,
                    free: size.free_pages(),
                },
                Err(e) => return Err(e),
            }
        }
    };
    let mut new = memfd::create(label, Commit::Eager)?;
    new.fallback = Some(fallback);
    let backend = FdBackend::create(new, initial, reserved)?;
    memfd::seal(backend.fd())?;
    Ok(backend)
}
