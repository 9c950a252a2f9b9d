//! A distributed region: memory mapped at the same address in every node, whose pages
//! move between the nodes as threads touch them.
//!
//! Layer: shmpool-dsm, above `driver`, `protocol` and `uffd`. A [`Region`] maps
//! anonymous private memory at a fixed address ([`DEFAULT_BASE`] unless told otherwise;
//! `MAP_FIXED_NOREPLACE`, so nothing of the process is ever replaced) and registers it
//! with userfaultfd. Touching a page this node holds no copy of is a *missing* fault;
//! writing a Shared copy is a *write-protect* fault. A handler thread turns each fault
//! into the protocol's request; the page arrives in a grant and is installed with
//! `UFFDIO_COPY` (read-only for a Shared copy), an upgrade lifts the write protection,
//! and a recall first write-protects the page (waiting out writes under way), then
//! copies it out. The faulting thread just resumes: plain loads, stores and atomics on
//! the region are sequentially consistent across the nodes.
//!
//! A page that can no longer be served (its only copy, or its home, was on a node that
//! died) is poisoned: touching it raises `SIGBUS`, never stale bytes. [`Region::acquire`]
//! asks for a page through the protocol instead and reports that as [`Fault::Lost`].
//!
//! A region is also a [`shmpool::segment::Backend`]: [`Region::create_segment`] and
//! [`Region::attach_segment`] put a segment on it, and the shmpool heap runs there
//! unchanged, each node allocating from the pages its threads own.
//!
//! ```no_run
//! use shmpool_dsm::region::{Region, RegionOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let addrs = ["127.0.0.1:7000".parse()?, "127.0.0.1:7001".parse()?];
//! // On node 0 (node 1 runs the same with id 1):
//! let region = Region::join_tcp(0, &addrs, &RegionOptions::new(1 << 20))?;
//! region.atomic_u64(8)?.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//! # Ok(()) }
//! ```
#![allow(unsafe_code)]

use crate::driver::NodeDriver;
use crate::protocol::{Access, Fault, Memory, NodeId, Page};
use crate::transport::Peer;
use crate::uffd::Uffd;
use core::ptr::NonNull;
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use shmpool::segment::{Backend, BackendKind, GrowError, IpcHandle, Segment};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where regions are mapped unless told otherwise: 32 TiB, far from where Linux puts
/// a program, its heap, its libraries and its other mappings.
pub const DEFAULT_BASE: usize = 0x2000_0000_0000;

/// How a node learns that a thread touched a page it may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultCapture {
    /// userfaultfd where the kernel gives it, else page protection. The default.
    #[default]
    Auto,
    /// userfaultfd (missing and write-protect faults), served by a handler thread.
    /// Faults taken in system calls are served too (with root or `CAP_SYS_PTRACE`).
    Userfaultfd,
    /// userfaultfd's page-by-page mapping, with each fault delivered to the faulting
    /// thread as `SIGBUS` (`UFFD_FEATURE_SIGBUS`): the thread runs the protocol itself,
    /// with no handler-thread hop. A system call that touches an absent page fails
    /// with `EFAULT`.
    UserfaultfdSigbus,
    /// Page protection (`mprotect`) and a `SIGSEGV` handler on the faulting thread:
    /// for kernels or sandboxes without userfaultfd; at most
    /// [`signals::MAX_PAGES`](crate::signals::MAX_PAGES) pages.
    Signals,
}

/// How to map a region and join its nodes.
#[derive(Debug, Clone)]
pub struct RegionOptions {
    /// The address every node maps the region at (a multiple of 2 MiB).
    pub base: usize,
    /// Bytes (a multiple of the page size).
    pub len: usize,
    /// How long to wait for the other nodes to come up.
    pub wait: Duration,
    /// How faults are caught (each node chooses for itself).
    pub faults: FaultCapture,
    /// Where this node listens for its peers, for a node reached over TCP (default: its
    /// own entry of the peers).
    pub listen: Option<SocketAddr>,
    /// Pages a read fault asks for ahead, once this node's read faults go through the
    /// region in order (three in a row): a reader then waits one round trip per this
    /// many pages instead of one per page. They are taken from their owners as reads
    /// would take them. 0 turns it off; at most
    /// [`MAX_READ_AHEAD`](crate::driver::MAX_READ_AHEAD).
    pub read_ahead: u32,
    /// How long each link's reader polls for the next message before it sleeps (zero,
    /// the default: it sleeps at once); see
    /// [`NodeDriver::set_link_poll`](crate::driver::NodeDriver::set_link_poll). Polling
    /// spares the wake-up of a sleeping reader on every message, for up to this much of
    /// a CPU after each: worth it where each node has a CPU to spare.
    pub link_poll: Duration,
}

impl RegionOptions {
    /// `len` bytes at [`DEFAULT_BASE`], waiting up to 30 s for the peers, faults caught
    /// with userfaultfd where it can be had, reading 32 pages ahead.
    pub fn new(len: usize) -> Self {
        RegionOptions {
            base: DEFAULT_BASE,
            len,
            wait: Duration::from_secs(30),
            faults: FaultCapture::Auto,
            listen: None,
            read_ahead: 32,
            link_poll: Duration::ZERO,
        }
    }
}

/// Why a region could not be mapped or joined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// The base or the length is not usable.
    #[error("bad region geometry: {0}")]
    Geometry(String),
    /// Something is already mapped in the range in this process.
    #[error("the range {base:#x}..{end:#x} is already mapped in this process", end = base + len)]
    AddressTaken {
        /// The base asked for.
        base: usize,
        /// Bytes asked for.
        len: usize,
    },
    /// userfaultfd cannot be had here.
    #[error("userfaultfd is unavailable ({0}): it needs Linux 5.7 or later, and root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1 for faults in system calls")]
    NoUserfaultfd(Errno),
    /// A system call failed.
    #[error("{op}: {errno}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// What it said.
        errno: Errno,
    },
    /// Joining the other nodes failed.
    #[error("joining the nodes: {0}")]
    Join(#[from] std::io::Error),
}

/// A node's pages in the mapping, as the protocol changes them.
pub struct Mapped {
    base: usize,
    page: usize,
    uffd: Arc<Uffd>,
    access: Vec<Access>,
    /// Bytes granted, installed by the `protect` that follows.
    staged: Option<(Page, Vec<u8>)>,
    /// Pages poisoned (or sealed off).
    failed: Vec<bool>,
    zero: Vec<u8>,
    /// Where recalled pages are moved out to (`UFFDIO_MOVE`), where the kernel can.
    scratch: Option<Scratch>,
    /// The page `take` just moved out: already absent, nothing to drop.
    moved: Option<Page>,
    /// Pages moved out so far.
    moves: u64,
}

/// Pages of this process that recalled pages are moved into (`UFFDIO_MOVE`, one page
/// table change and one TLB flush, where a copy needs two: write-protecting, then
/// dropping), and read from. Registered with the region's userfaultfd (a move's
/// destination must be), touched only by `take` after a move made the page present.
/// Used round; emptied all at once when every page has been used.
struct Scratch {
    base: usize,
    pages: usize,
    next: usize,
    page: usize,
}

impl Scratch {
    /// Pages a scratch area holds: 1 MiB of 4 KiB pages.
    const PAGES: usize = 256;

    /// Maps and registers a scratch area with `uffd`, if it can move pages (and
    /// `SHMPOOL_DSM_NO_MOVE` is not set: the copying path, as on kernels before 6.8, for
    /// tests and comparisons).
    fn new(uffd: &Uffd, page: usize) -> Option<Scratch> {
        if !uffd.moves() || std::env::var_os("SHMPOOL_DSM_NO_MOVE").is_some() {
            return None;
        }
        let len = Self::PAGES * page;
        // SAFETY: a new private anonymous mapping, at an address the kernel chooses.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .ok()? as usize;
        let s = Scratch { base, pages: Self::PAGES, next: 0, page };
        // SAFETY: the mapping just made, owned by this scratch area (unmapping it when
        // the area is dropped also ends its registration); its only accesses are
        // `take`'s reads of pages a move made present, which never fault.
        unsafe { uffd.register(base, len) }.ok()?;
        Some(s)
    }

    /// The next absent page, emptying the area when every page has been used.
    fn next(&mut self) -> Result<usize, Errno> {
        if self.next == self.pages {
            // SAFETY: the area is this scratch's own private anonymous memory; nothing
            // refers to the moved pages once their bytes were copied out.
            unsafe {
                rustix::mm::madvise(
                    self.base as *mut _,
                    self.pages * self.page,
                    rustix::mm::Advice::LinuxDontNeed,
                )
            }?;
            self.next = 0;
        }
        self.next += 1;
        Ok(self.base + (self.next - 1) * self.page)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: the area is this scratch's own mapping, used by nothing else.
        unsafe { rustix::mm::munmap(self.base as *mut _, self.pages * self.page).ok() };
    }
}

impl Mapped {
    fn addr(&self, page: Page) -> usize {
        self.base + page as usize * self.page
    }

    /// Wakes the threads waiting on `page` (their access is allowed now, or they fault
    /// again).
    fn wake(&self, page: Page) -> Result<(), Errno> {
        self.uffd.wake(self.addr(page), self.page)
    }

    /// Drops this node's copy of `page`.
    fn drop_copy(&self, page: Page) -> Result<(), Errno> {
        // SAFETY: the page is inside the region this node maps; MADV_DONTNEED on private
        // anonymous memory only discards its contents (the next touch faults, and is
        // served by the protocol).
        unsafe {
            rustix::mm::madvise(self.addr(page) as *mut _, self.page, rustix::mm::Advice::LinuxDontNeed)
        }
    }
}

impl Memory<Vec<u8>> for Mapped {
    /// The page's bytes, for a recall: a Modified page is write-protected first, which
    /// waits out writes under way, so the copy is the last value written.
    fn read(&self, page: Page) -> Vec<u8> {
        let at = self.addr(page);
        if self.access[page as usize] == Access::Modified {
            // SAFETY: the page is in the registered range.
            let r = unsafe { self.uffd.protect(at, self.page, true) };
            fatal(r, page, "write-protecting it for a recall");
        }
        let mut out = vec![0u8; self.page];
        // SAFETY: this node holds the page (a recall goes to its holder), so it is
        // present and no handler touch faults; it is write-protected, so no thread writes
        // it while it is copied; `out` is a page long.
        unsafe { core::ptr::copy_nonoverlapping(at as *const u8, out.as_mut_ptr(), self.page) };
        out
    }

    /// Moves the page out (`UFFDIO_MOVE`) where the kernel can: the copy leaves the
    /// mapping in one step, which waits out writes under way as write-protecting does.
    /// Else, or if the move fails, the bytes are read as for a recall that keeps them.
    fn take(&mut self, page: Page) -> Vec<u8> {
        let src = self.addr(page);
        let moved = self.scratch.as_mut().map(|s| {
            let dst = s.next()?;
            // SAFETY: `src` is a page of the region, present (this node holds it: a
            // recall goes to its holder); `dst` is an absent page of the scratch area,
            // registered with the same descriptor.
            unsafe { self.uffd.move_page(src, dst, self.page) }.map(|()| dst)
        });
        match moved {
            Some(Ok(dst)) => {
                let mut out = vec![0u8; self.page];
                // SAFETY: the move made `dst` present, with the page's last bytes; only
                // this reads it; `out` is a page long.
                unsafe { core::ptr::copy_nonoverlapping(dst as *const u8, out.as_mut_ptr(), self.page) };
                self.moved = Some(page);
                self.moves += 1;
                out
            }
            // The page is not where the protocol says: nothing can be trusted (and
            // copying an absent page would deadlock).
            Some(Err(e @ Errno::NOENT)) => die(e, page, "moving it out for a recall"),
            // Not moved, still there: copied instead. `EBUSY` (a page the kernel
            // shares or pins), `EAGAIN` (raced with a change) and `EEXIST` (the scratch
            // slot, or its huge page, looked present) are this page's; anything else is
            // the mapping's, which is copied from from now on.
            Some(Err(e)) => {
                if ![Errno::BUSY, Errno::AGAIN, Errno::EXIST].contains(&e) {
                    self.scratch = None;
                }
                self.read(page)
            }
            None => self.read(page),
        }
    }

    fn write(&mut self, page: Page, data: Vec<u8>) {
        self.staged = Some((page, data));
    }

    fn protect(&mut self, page: Page, access: Access) {
        let at = self.addr(page);
        let old = std::mem::replace(&mut self.access[page as usize], access);
        let staged = self.staged.take();
        let moved = self.moved.take() == Some(page);
        if self.failed[page as usize] {
            return;
        }
        let r = match (staged, access) {
            (Some((p, data)), a) if a != Access::Invalid => {
                debug_assert_eq!(p, page);
                let bytes = if data.is_empty() { &self.zero } else { &data };
                // SAFETY: the page is in the registered range, absent (this node held
                // no copy: a grant carries bytes only then), and `bytes` is a page (the
                // driver refuses frames with any other length).
                unsafe { self.uffd.copy(at, bytes, a != Access::Modified) }
            }
            // SAFETY: the page is in the registered range: lifting the protection of a
            // Shared copy now held Modified (which wakes the writers waiting).
            (None, Access::Modified) if old != Access::Modified => unsafe {
                self.uffd.protect(at, self.page, false)
            },
            // SAFETY: as above; a Modified copy downgraded (already protected by `read`).
            (None, Access::Shared | Access::Exclusive) if old == Access::Modified => unsafe {
                self.uffd.protect(at, self.page, true)
            },
            (_, Access::Invalid) if moved => Ok(()), // already gone
            (_, Access::Invalid) => self.drop_copy(page),
            _ => Ok(()),
        };
        fatal(r, page, "changing its mapping");
    }

    fn moves(&self) -> u64 {
        self.moves
    }

    fn lost(&mut self, page: Page) {
        // A copy held here stays valid (no write can be granted any more): only an
        // absent page fails. A writer waiting on a Shared copy faults again, and fails.
        match self.access[page as usize] {
            Access::Invalid => self.fail(page),
            _ => drop(self.wake(page)),
        }
    }
}

/// The mapping and the protocol disagree once a page operation fails: nothing can be
/// trusted after that, so the node stops here, saying why, rather than serve wrong
/// bytes or hang.
pub(crate) fn fatal(r: Result<(), Errno>, page: Page, what: &str) {
    if let Err(e) = r {
        die(e, page, what);
    }
}

/// Ends the node: `what` failed on `page` with `e` (see [`fatal`]).
fn die(e: Errno, page: Page, what: &str) -> ! {
    eprintln!("shmpool-dsm: page {page}: {what} failed ({e}); the node cannot go on");
    std::process::abort();
}

/// A node's pages that can be made to fail (poisoned, or sealed off) for good.
pub(crate) trait Failing: Memory<Vec<u8>> + Send + 'static {
    /// Every later access to `page` fails, and the threads waiting on it are told.
    fn fail(&mut self, page: Page);
}

impl Failing for Mapped {
    fn fail(&mut self, page: Page) {
        if self.failed[page as usize] {
            let _ = self.wake(page);
            return;
        }
        self.failed[page as usize] = true;
        let _ = self.drop_copy(page);
        self.access[page as usize] = Access::Invalid;
        // SAFETY: the page is in the registered range and absent (just dropped).
        if unsafe { self.uffd.poison(self.addr(page), self.page) }.is_err() {
            // No poisoning in this kernel: an inaccessible page (`SIGSEGV` instead).
            // SAFETY: the page is inside this node's mapping; nothing else is there.
            let _ = unsafe {
                rustix::mm::mprotect(self.addr(page) as *mut _, self.page, rustix::mm::MprotectFlags::empty())
            };
            let _ = self.wake(page);
        }
    }
}

/// A node's driver, whatever its memory.
trait Engine: Send + Sync {
    fn id(&self) -> NodeId;
    fn dead(&self) -> u32;
    fn stats(&self) -> crate::driver::Stats;
    fn acquire(&self, page: Page, write: bool) -> Result<(), Fault>;
    fn leave(&self, wait: Duration) -> bool;
    fn close(&self);
}

impl<M: Failing> Engine for NodeDriver<M> {
    fn id(&self) -> NodeId {
        NodeDriver::id(self)
    }
    fn dead(&self) -> u32 {
        NodeDriver::dead(self)
    }
    fn stats(&self) -> crate::driver::Stats {
        NodeDriver::stats(self)
    }
    fn acquire(&self, page: Page, write: bool) -> Result<(), Fault> {
        NodeDriver::acquire(self, page, write).map(drop)
    }
    fn leave(&self, wait: Duration) -> bool {
        let ok = NodeDriver::leave(self, wait);
        let mut s = self.lock();
        let crate::driver::State { asked, pages, .. } = &mut *s;
        for (p, _) in asked.iter().enumerate().filter(|(_, a)| **a != crate::driver::Asked::No) {
            pages.fail(p as Page); // a grant that will never come
        }
        ok
    }
    fn close(&self) {
        NodeDriver::close(self);
    }
}

/// What the handler thread does with a fault on `page`.
fn on_fault(driver: &NodeDriver<Mapped>, page: Page, write: bool) {
    let mut s = driver.lock();
    if s.closed {
        return s.pages.fail(page); // left: nothing serves the page any more
    }
    if s.awaited(page) {
        return; // the grant on its way wakes this thread too; it faults again if need be
    }
    let crate::driver::State { node, pages, .. } = &mut *s;
    match node.fault(page, write, pages) {
        Ok(None) => {
            // A grant came first, or a local upgrade.
            if write {
                driver.upgraded(page);
            }
            let _ = pages.wake(page);
        }
        Ok(Some(req)) => driver.ask(s, page, write, req),
        Err(_) => {
            node.forget(page); // a write to a Shared copy of a lost page: the copy goes
            pages.fail(page);
        }
    }
}

struct Inner {
    driver: Arc<dyn Engine>,
    base: usize,
    len: usize,
    page: usize,
    nodes: u16,
    capture: FaultCapture,
    kernel_faults: bool,
    /// The userfaultfd handler thread, and its stop flag.
    stop: Arc<AtomicBool>,
    handler: Mutex<Option<JoinHandle<()>>>,
    /// Page protection: the signal handler's slot, and the driver's alias mapping.
    slot: Option<usize>,
    /// userfaultfd with SIGBUS: the signal handler's slot.
    uffd_slot: Option<usize>,
    /// Page protection: this region's share of the process's pages (given back after
    /// the slot, as the fields drop).
    budget: Option<crate::signals::PageBudget>,
    alias: Option<usize>,
}

impl Inner {
    /// A region's state with no handler thread, slot or alias yet.
    fn new(driver: Arc<dyn Engine>, opts: &RegionOptions, nodes: usize, capture: FaultCapture) -> Inner {
        Inner {
            driver,
            base: opts.base,
            len: opts.len,
            page: rustix::param::page_size(),
            nodes: nodes as u16,
            capture,
            kernel_faults: false,
            stop: Arc::new(AtomicBool::new(false)),
            handler: Mutex::new(None),
            slot: None,
            uffd_slot: None,
            budget: None,
            alias: None,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closed first: a fault from now on fails (the handler poisons the page) rather
        // than wait; after `close` no message touches the mapping either.
        self.driver.close();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handler.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        if let Some(slot) = self.slot {
            crate::signals::unregister(slot);
        }
        if let Some(slot) = self.uffd_slot {
            crate::signals::unregister_uffd(slot);
        }
        // SAFETY: the mappings are this region's own (mapped in `join_tcp`), and neither
        // a handler nor the driver touches them any more; no segment on the region
        // lives (a segment's backend holds this value).
        unsafe {
            let _ = rustix::mm::munmap(self.base as *mut _, self.len);
            if let Some(alias) = self.alias {
                let _ = rustix::mm::munmap(alias as *mut _, self.len);
            }
        }
    }
}

/// A node's view of a distributed region. Dropping the last handle (and the segments
/// on it) leaves the region: the other nodes count this one dead.
#[derive(Clone)]
pub struct Region {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("node", &self.id())
            .field("nodes", &self.inner.nodes)
            .field("base", &format_args!("{:#x}", self.inner.base))
            .field("len", &self.inner.len)
            .finish()
    }
}

impl Region {
    /// Maps the region and joins the nodes at `addrs` over TCP as node `id` (this node
    /// listens on `addrs[id]`). Every node must give the same base and length.
    pub fn join_tcp(id: NodeId, addrs: &[SocketAddr], opts: &RegionOptions) -> Result<Region, RegionError> {
        let peers: Vec<Peer> = addrs.iter().map(|&a| a.into()).collect();
        Self::join(id, &peers, opts)
    }

    /// Maps the region and joins the nodes at `peers` as node `id` (this node listens
    /// at `peers[id]`): all of them TCP addresses, or all Unix socket paths for nodes on
    /// one host. Every node must give the same base and length.
    pub fn join(id: NodeId, addrs: &[Peer], opts: &RegionOptions) -> Result<Region, RegionError> {
        let page = rustix::param::page_size();
        let (base, len) = (opts.base, opts.len);
        if len == 0
            || !len.is_multiple_of(page)
            || !base.is_multiple_of(2 << 20)
            || base.checked_add(len).is_none()
        {
            return Err(RegionError::Geometry(format!(
                "{len} bytes at {base:#x}: the length must be a non-zero multiple of {page} and the base of 2 MiB"
            )));
        }
        let pages = u32::try_from(len / page)
            .map_err(|_| RegionError::Geometry(format!("{len} bytes is too many pages")))?;
        match opts.faults {
            FaultCapture::Userfaultfd => Self::join_uffd(id, addrs, opts, pages, false),
            FaultCapture::UserfaultfdSigbus => Self::join_uffd(id, addrs, opts, pages, true),
            FaultCapture::Signals => Self::join_signals(id, addrs, opts, pages),
            FaultCapture::Auto => match Self::join_uffd(id, addrs, opts, pages, false) {
                Err(RegionError::NoUserfaultfd(_)) => Self::join_signals(id, addrs, opts, pages),
                other => other,
            },
        }
    }

    /// Maps `len` bytes at `base` (`fd`: shared, of that file; else private anonymous),
    /// never over anything of this process.
    fn map_fixed(base: usize, len: usize, prot: ProtFlags, fd: Option<&OwnedFd>) -> Result<(), RegionError> {
        // SAFETY: MAP_FIXED_NOREPLACE maps at `base` only if nothing of this process is
        // there (else EEXIST): no mapping is replaced.
        let got = unsafe {
            match fd {
                None => rustix::mm::mmap_anonymous(
                    base as *mut _,
                    len,
                    prot,
                    MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED_NOREPLACE,
                ),
                Some(fd) => rustix::mm::mmap(
                    base as *mut _,
                    len,
                    prot,
                    MapFlags::SHARED | MapFlags::FIXED_NOREPLACE,
                    fd,
                    0,
                ),
            }
        };
        match got {
            Ok(p) if p as usize == base => Ok(()),
            Ok(p) => {
                // An old kernel that ignores the flag placed it elsewhere.
                // SAFETY: `p` is the mapping just made, used by nothing.
                unsafe { rustix::mm::munmap(p, len).ok() };
                Err(RegionError::AddressTaken { base, len })
            }
            Err(Errno::EXIST) => Err(RegionError::AddressTaken { base, len }),
            Err(errno) => Err(RegionError::Os { op: "mmap", errno }),
        }
    }

    fn join_uffd(
        id: NodeId,
        addrs: &[Peer],
        opts: &RegionOptions,
        pages: u32,
        sigbus: bool,
    ) -> Result<Region, RegionError> {
        let (base, len, page) = (opts.base, opts.len, rustix::param::page_size());
        let uffd = if sigbus { Uffd::open_sigbus() } else { Uffd::open() };
        let uffd = Arc::new(uffd.map_err(RegionError::NoUserfaultfd)?);
        Self::map_fixed(base, len, ProtFlags::READ | ProtFlags::WRITE, None)?;
        let unmap = || {
            // SAFETY: the mapping just made, used by nothing yet.
            unsafe { rustix::mm::munmap(base as *mut _, len).ok() };
        };
        // Pages move one by one (4 KiB is the unit of coherence): no huge pages, whose
        // split would cost every recall in their range. Advice only: failing it
        // changes no behaviour.
        // SAFETY: the mapping just made, which only this region uses.
        let _ = unsafe { rustix::mm::madvise(base as *mut _, len, rustix::mm::Advice::LinuxNoHugepage) };
        // SAFETY: the range is the private anonymous mapping just made, owned by the
        // region for the descriptor's life; the handler thread resolves its faults.
        if let Err(errno) = unsafe { uffd.register(base, len) } {
            unmap();
            return Err(RegionError::Os { op: "UFFDIO_REGISTER", errno });
        }
        let mem = Mapped {
            base,
            page,
            uffd: uffd.clone(),
            access: vec![Access::Invalid; pages as usize],
            staged: None,
            failed: vec![false; pages as usize],
            zero: vec![0; page],
            scratch: Scratch::new(&uffd, page),
            moved: None,
            moves: 0,
        };
        let driver = NodeDriver::join_with(id, addrs, opts.listen, pages, page, mem, opts.wait)
            .inspect_err(|_| unmap())?;
        driver.set_read_ahead(opts.read_ahead);
        driver.set_link_poll(opts.link_poll);
        let stop = Arc::new(AtomicBool::new(false));
        if sigbus {
            // The faulting threads serve their own faults, in the SIGBUS handler.
            let Some(slot) = crate::signals::register_uffd(base, len, driver.clone()) else {
                driver.close();
                unmap();
                return Err(RegionError::Geometry(
                    "16 regions of this process take faults as SIGBUS already".into(),
                ));
            };
            let mut inner = Inner::new(driver, opts, addrs.len(), FaultCapture::UserfaultfdSigbus);
            inner.uffd_slot = Some(slot);
            return Ok(Region { inner: Arc::new(inner) });
        }
        let handler = {
            let (node, stop, uffd) = (driver.clone(), stop.clone(), uffd.clone());
            std::thread::Builder::new()
                .name(format!("dsm-faults-{id}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match uffd.next_fault(100) {
                            Ok(Some(f)) => on_fault(&node, ((f.address - base) / page) as Page, f.write),
                            Ok(None) => {}
                            Err(e) => {
                                eprintln!(
                                    "shmpool-dsm: reading userfaultfd failed ({e}); the node cannot go on"
                                );
                                std::process::abort();
                            }
                        }
                    }
                })
                .map_err(|e| {
                    driver.close();
                    unmap();
                    RegionError::Join(e)
                })?
        };
        let mut inner = Inner::new(driver, opts, addrs.len(), FaultCapture::Userfaultfd);
        inner.kernel_faults = uffd.kernel_faults();
        inner.stop = stop;
        inner.handler = Mutex::new(Some(handler));
        Ok(Region { inner: Arc::new(inner) })
    }

    fn join_signals(
        id: NodeId,
        addrs: &[Peer],
        opts: &RegionOptions,
        pages: u32,
    ) -> Result<Region, RegionError> {
        let (base, len, page) = (opts.base, opts.len, rustix::param::page_size());
        // The process's page budget first, before anything is mapped or joined.
        let budget = crate::signals::PageBudget::reserve(pages as usize).map_err(|used| {
            RegionError::Geometry(format!(
                "{pages} pages, with the {used} this process's regions already have: faults caught by page \
                 protection allow at most {} in all",
                crate::signals::MAX_PAGES
            ))
        })?;
        let os = |op| move |errno| RegionError::Os { op, errno };
        let fd = rustix::fs::memfd_create("shmpool-dsm", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(os("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(os("ftruncate"))?;
        Self::map_fixed(base, len, ProtFlags::empty(), Some(&fd))?;
        // SAFETY: a fresh shared mapping of the memfd wherever the kernel puts it:
        // nothing is replaced.
        let alias = unsafe {
            rustix::mm::mmap(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        };
        let unmap = |alias: Option<usize>| {
            // SAFETY: the mappings just made, used by nothing yet.
            unsafe {
                rustix::mm::munmap(base as *mut _, len).ok();
                alias.map(|a| rustix::mm::munmap(a as *mut _, len).ok());
            }
        };
        let alias = match alias {
            Ok(a) => a as usize,
            Err(errno) => {
                unmap(None);
                return Err(RegionError::Os { op: "mmap", errno });
            }
        };
        let mem = crate::signals::Protected::new(base, alias, page, pages as usize);
        let driver = NodeDriver::join_with(id, addrs, opts.listen, pages, page, mem, opts.wait)
            .inspect_err(|_| unmap(Some(alias)))?;
        driver.set_read_ahead(opts.read_ahead);
        driver.set_link_poll(opts.link_poll);
        let Some(slot) = crate::signals::register(base, len, driver.clone()) else {
            driver.close();
            unmap(Some(alias));
            return Err(RegionError::Geometry(
                "16 regions of this process catch faults by page protection already".into(),
            ));
        };
        let mut inner = Inner::new(driver, opts, addrs.len(), FaultCapture::Signals);
        inner.slot = Some(slot);
        inner.alias = Some(alias);
        inner.budget = Some(budget);
        Ok(Region { inner: Arc::new(inner) })
    }

    /// How this node catches faults.
    pub fn fault_capture(&self) -> FaultCapture {
        self.inner.capture
    }

    /// The region's first byte (the same address in every node).
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.base as *mut u8
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Never: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes per page: the unit that moves between nodes.
    pub fn page_size(&self) -> usize {
        self.inner.page
    }

    /// This node's index.
    pub fn id(&self) -> NodeId {
        self.inner.driver.id()
    }

    /// How many nodes share the region.
    pub fn nodes(&self) -> u16 {
        self.inner.nodes
    }

    /// Nodes this one knows dead.
    pub fn dead(&self) -> u32 {
        self.inner.driver.dead()
    }

    /// What this node's driver has done so far: messages, page bytes, requests.
    pub fn stats(&self) -> crate::driver::Stats {
        self.inner.driver.stats()
    }

    /// Leaves the region once every node is done with it (see
    /// [`NodeDriver::leave`]): until then this node still serves its pages, so no node
    /// loses a page to this one leaving. Whether every node was done within `wait`.
    /// The mapping stays until the last handle (and segment) on it is dropped, but it
    /// is no longer kept coherent: touching a page this node does not hold then raises
    /// `SIGBUS`.
    pub fn leave(&self, wait: Duration) -> bool {
        self.inner.driver.leave(wait)
    }

    /// Whether faults taken inside system calls (a `read(2)` into the region, a futex
    /// on it) are served too; without, such a call fails with `EFAULT` on an absent page.
    pub fn kernel_faults(&self) -> bool {
        self.inner.kernel_faults
    }

    /// The shared `u64` at `offset` (8-aligned), as an atomic: loads, stores and
    /// read-modify-writes on it are sequentially consistent across the nodes (with
    /// `SeqCst`, or any ordering for a single word). `Fault::OutOfRange` past the end or
    /// off alignment.
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, Fault> {
        if !offset.is_multiple_of(8) || offset.checked_add(8).is_none_or(|end| end > self.inner.len) {
            return Err(Fault::OutOfRange(offset));
        }
        // SAFETY: the region maps `len` bytes at its base for as long as `self` lives
        // (the borrow), and the word is inside and 8-aligned (the base is page-aligned);
        // every access to it goes through atomics.
        Ok(unsafe { &*(self.inner.base as *const u8).add(offset).cast::<AtomicU64>() })
    }

    /// Makes this node's copy of every page of `offset..offset + len` readable (or
    /// writable), through the protocol rather than a fault: [`Fault::Lost`] where a page
    /// can no longer be served, where touching it would raise `SIGBUS`;
    /// [`Fault::OutOfRange`] for a range past the region's end. The access can be taken
    /// away again as soon as this returns.
    pub fn acquire(&self, offset: usize, len: usize, write: bool) -> Result<(), Fault> {
        let end = offset.checked_add(len.max(1)).filter(|&e| e <= self.inner.len);
        let Some(end) = end else { return Err(Fault::OutOfRange(offset.saturating_add(len))) };
        for page in (offset / self.inner.page)..end.div_ceil(self.inner.page) {
            self.inner.driver.acquire(page as Page, write)?;
        }
        Ok(())
    }

    /// Puts a new segment on the region (one node does, before the others attach):
    /// `initial` bytes committed; it can grow to the whole region.
    pub fn create_segment(&self, initial: u64) -> Result<Segment, shmpool::segment::CreateError> {
        // SAFETY: the backend maps the whole region at its base for as long as it lives
        // (it holds the region), and the region is all zero until a segment is put on
        // it: no node's thread touches it before (the caller's choice of one creator).
        unsafe { Segment::create_on(Box::new(self.backend()), initial) }
    }

    /// Attaches to the segment another node put on the region, once it is there.
    pub fn attach_segment(&self) -> Result<Segment, shmpool::segment::AttachError> {
        Segment::attach_on(Box::new(self.backend()))
    }

    fn backend(&self) -> RegionBackend {
        RegionBackend { region: self.clone() }
    }
}

/// A region as a segment's memory.
struct RegionBackend {
    region: Region,
}

impl std::fmt::Debug for RegionBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.region.fmt(f)
    }
}

impl Backend for RegionBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::External
    }
    fn base(&self) -> NonNull<u8> {
        NonNull::new(self.region.as_ptr()).expect("a region is never at address 0")
    }
    fn reserved_len(&self) -> u64 {
        self.region.len() as u64
    }
    fn page_size(&self) -> u64 {
        self.region.page_size() as u64
    }
    fn writable(&self) -> bool {
        true
    }
    fn handle(&self) -> IpcHandle<'_> {
        IpcHandle::None
    }
    fn backing_len(&self) -> Result<u64, Errno> {
        Ok(self.region.len() as u64)
    }
    fn local_liveness(&self) -> bool {
        false // nodes on other hosts: their pids mean nothing here
    }
    fn grow(&self, len: u64) -> Result<(), GrowError> {
        // The whole region is usable from the start.
        if len > self.region.len() as u64 {
            return Err(GrowError::BeyondReserved { requested: len, reserved: self.region.len() as u64 });
        }
        Ok(())
    }
}
