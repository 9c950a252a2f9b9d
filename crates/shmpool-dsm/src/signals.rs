//! Fault capture by page protection, where userfaultfd cannot be had: `mprotect` and a
//! `SIGSEGV` handler.
//!
//! Layer: shmpool-dsm, under `region`. The region is a memfd mapped twice: the
//! application's view at the region's address, whose pages are `PROT_NONE` (Invalid),
//! `PROT_READ` (Shared) or read-write (Modified), and a private read-write alias
//! through which the driver installs and copies out pages (so a page being installed
//! is never visible half-written). A thread touching a page its protection forbids
//! gets `SIGSEGV`; the handler, on that thread, asks the protocol for the page (the
//! same [`NodeDriver::acquire`] the explicit API uses) and returns once it is granted,
//! and the access is retried. A page that can no longer be served raises `SIGBUS`.
//!
//! Costs and limits, against userfaultfd:
//! - every protection change of a page splits the mapping, and a process may hold at
//!   most `vm.max_map_count` (65,530 by default) mappings: regions here have at most
//!   [`MAX_PAGES`] pages, so that even alternating protections stay below it;
//! - a system call touching a protected page fails with `EFAULT` (no signal is sent);
//! - the handler runs the protocol on the faulting thread (no handler-thread hop), so a
//!   fault costs one wake-up less.
#![allow(unsafe_code)]

use crate::driver::NodeDriver;
use crate::protocol::{Access, Memory, Page};
use crate::region::Failing as _;
use crate::slot::Slot;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use rustix::io::Errno;
use rustix::mm::MprotectFlags;

/// The most pages, over all the regions of a process, whose faults are caught by
/// protection (64 MiB of 4 KiB pages).
pub const MAX_PAGES: usize = 16 << 10;

/// A node's pages, in a memfd mapped twice.
pub struct Protected {
    app: usize,
    alias: usize,
    page: usize,
    access: Vec<Access>,
    staged: Option<(Page, Vec<u8>)>,
    failed: Vec<bool>,
    /// The page `take` just made inaccessible: its drop needs no `mprotect` more.
    taken: Option<Page>,
}

impl Protected {
    /// Pages at `app` (the application's view) and `alias` (the driver's), both
    /// mappings of one memfd of `pages` pages of `page` bytes, the first `PROT_NONE`.
    pub(crate) fn new(app: usize, alias: usize, page: usize, pages: usize) -> Self {
        Protected {
            app,
            alias,
            page,
            access: vec![Access::Invalid; pages],
            staged: None,
            failed: vec![false; pages],
            taken: None,
        }
    }

    fn set_prot(&self, page: Page, access: Access) -> Result<(), Errno> {
        let prot = match access {
            Access::Invalid => MprotectFlags::empty(),
            Access::Shared | Access::Exclusive => MprotectFlags::READ,
            Access::Modified => MprotectFlags::READ | MprotectFlags::WRITE,
        };
        // SAFETY: the page is inside the application's view of the region, which the
        // region owns; changing its protection touches no memory.
        unsafe { rustix::mm::mprotect((self.app + page as usize * self.page) as *mut _, self.page, prot) }
    }

    fn alias(&self, page: Page) -> *mut u8 {
        (self.alias + page as usize * self.page) as *mut u8
    }
}

impl crate::region::Failing for Protected {
    /// Every later access to `page` fails (`SIGBUS`, from the handler).
    fn fail(&mut self, page: Page) {
        self.failed[page as usize] = true;
        self.access[page as usize] = Access::Invalid;
        let _ = self.set_prot(page, Access::Invalid);
    }
}

impl Memory<Vec<u8>> for Protected {
    /// The page's bytes, for a recall: a Modified page is made read-only first (which
    /// waits out writes under way: `mprotect` shoots down every TLB entry of it).
    fn read(&self, page: Page) -> Vec<u8> {
        if self.access[page as usize] == Access::Modified {
            crate::region::fatal(self.set_prot(page, Access::Shared), page, "mprotect for a recall");
        }
        let mut out = vec![0u8; self.page];
        // SAFETY: the alias maps the page read-write for the region's life; no thread
        // writes it (its application view is read-only now), and `out` is a page.
        unsafe { core::ptr::copy_nonoverlapping(self.alias(page), out.as_mut_ptr(), self.page) };
        out
    }

    /// The page's bytes, for a recall that drops this node's copy: the page is made
    /// inaccessible first (waiting out writes under way, as `read` does), in the one
    /// `mprotect` its drop needs anyway.
    fn take(&mut self, page: Page) -> Vec<u8> {
        crate::region::fatal(self.set_prot(page, Access::Invalid), page, "mprotect for a recall");
        self.taken = Some(page);
        let mut out = vec![0u8; self.page];
        // SAFETY: as in `read`: the alias maps the page, and its application view is
        // `PROT_NONE` now.
        unsafe { core::ptr::copy_nonoverlapping(self.alias(page), out.as_mut_ptr(), self.page) };
        out
    }

    fn write(&mut self, page: Page, data: Vec<u8>) {
        self.staged = Some((page, data));
    }

    fn protect(&mut self, page: Page, access: Access) {
        self.access[page as usize] = access;
        let staged = self.staged.take();
        if self.taken.take() == Some(page) && access == Access::Invalid {
            return; // `take` made it inaccessible already
        }
        if self.failed[page as usize] {
            return;
        }
        if let Some((p, data)) = staged {
            debug_assert_eq!(p, page);
            let dst = self.alias(page);
            // SAFETY: the alias maps the page read-write; the application's view of it
            // is `PROT_NONE` (a grant carries bytes only to a node without a copy), so
            // no thread sees it until the protection below; `data` is empty or a page
            // (the driver refuses frames with any other length).
            unsafe {
                if data.is_empty() {
                    core::ptr::write_bytes(dst, 0, self.page);
                } else {
                    core::ptr::copy_nonoverlapping(data.as_ptr(), dst, self.page);
                }
            }
        }
        crate::region::fatal(self.set_prot(page, access), page, "mprotect");
    }

    fn lost(&mut self, page: Page) {
        // A copy held here stays valid (no write can be granted any more): only an
        // absent page fails; a writer waiting on a Shared copy is woken by the driver
        // and fails.
        if self.access[page as usize] == Access::Invalid {
            self.fail(page);
        }
    }
}

const SLOTS: usize = 16;
#[allow(clippy::declare_interior_mutable_const)] // a template for the array below
const EMPTY: Slot<NodeDriver<Protected>> = Slot::new();
/// The regions whose faults this handler serves.
static REGIONS: [Slot<NodeDriver<Protected>>; SLOTS] = [EMPTY; SLOTS];
/// Pages of all the regions of this process whose faults are caught here: at most
/// [`MAX_PAGES`], as they share the process's mapping count.
static PAGES_IN_USE: AtomicUsize = AtomicUsize::new(0);
/// Regions whose userfaultfd delivers faults as `SIGBUS` to the faulting thread.
#[allow(clippy::declare_interior_mutable_const)] // a template for the array below
const EMPTY_UFFD: Slot<NodeDriver<crate::region::Mapped>> = Slot::new();
static UFFD_REGIONS: [Slot<NodeDriver<crate::region::Mapped>>; SLOTS] = [EMPTY_UFFD; SLOTS];
/// The handler that was there before ours (for faults outside every region).
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(core::ptr::null_mut());
static PREVIOUS_BUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(core::ptr::null_mut());
/// Held while a handler is installed (so two regions joining at once install it once).
static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A region's share of [`MAX_PAGES`], taken before it joins its peers and given back
/// when it is dropped.
pub(crate) struct PageBudget(usize);

impl PageBudget {
    /// `pages` more pages for this process's regions; the pages already in use if
    /// that would pass [`MAX_PAGES`].
    pub(crate) fn reserve(pages: usize) -> Result<PageBudget, usize> {
        // Relaxed: a budget, not a publication.
        let before = PAGES_IN_USE.fetch_add(pages, Ordering::Relaxed);
        if before + pages > MAX_PAGES {
            PAGES_IN_USE.fetch_sub(pages, Ordering::Relaxed);
            return Err(before);
        }
        Ok(PageBudget(pages))
    }
}

impl Drop for PageBudget {
    fn drop(&mut self) {
        PAGES_IN_USE.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Serves the faults of `[base, base + len)` with `driver` from now on: the slot to
/// give back with [`unregister`], or `None` if every slot is taken.
pub(crate) fn register(
    base: usize,
    len: usize,
    driver: std::sync::Arc<NodeDriver<Protected>>,
) -> Option<usize> {
    ensure_installed(libc::SIGSEGV, on_fault as *const () as usize, &PREVIOUS);
    claim_any(&REGIONS, base, len, driver)
}

/// Claims the first free slot of `slots` for the region, if any.
fn claim_any<T>(slots: &[Slot<T>], base: usize, len: usize, value: std::sync::Arc<T>) -> Option<usize> {
    let mut value = value;
    for (i, s) in slots.iter().enumerate() {
        match s.claim(base, len, value) {
            Ok(()) => return Some(i),
            Err(back) => value = back,
        }
    }
    None
}

/// Stops serving slot `i`'s faults, once no handler uses its driver any more.
pub(crate) fn unregister(i: usize) {
    drop(REGIONS[i].retire());
}

/// Serves the `SIGBUS` faults of a userfaultfd region `[base, base + len)` with
/// `driver` from now on: the slot to give back with [`unregister_uffd`], or `None`.
pub(crate) fn register_uffd(
    base: usize,
    len: usize,
    driver: std::sync::Arc<NodeDriver<crate::region::Mapped>>,
) -> Option<usize> {
    ensure_installed(libc::SIGBUS, on_bus as *const () as usize, &PREVIOUS_BUS);
    claim_any(&UFFD_REGIONS, base, len, driver)
}

/// Stops serving userfaultfd slot `i`'s faults, once no handler uses its driver.
pub(crate) fn unregister_uffd(i: usize) {
    drop(UFFD_REGIONS[i].retire());
}

/// Installs `handler` for `sig` unless it is the action already: at the first region,
/// and again if other code installed its own handler since (ours then chains to it).
fn ensure_installed(sig: libc::c_int, handler: usize, previous: &AtomicPtr<libc::sigaction>) {
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: reading the current action into a zeroed `sigaction`, changing nothing.
    let current = unsafe {
        let mut cur: libc::sigaction = core::mem::zeroed();
        libc::sigaction(sig, core::ptr::null(), &mut cur);
        cur.sa_sigaction
    };
    if current != handler {
        install_on(sig, handler, previous);
    }
}

/// Installs `handler` (an SA_SIGINFO handler) for `sig`, keeping the previous action in
/// `previous` for chaining.
fn install_on(sig: libc::c_int, handler: usize, previous: &AtomicPtr<libc::sigaction>) {
    // SAFETY: a zeroed `sigaction` is a valid empty one; `handler` has the SA_SIGINFO
    // handler's signature; the previous action is kept (never freed) for chaining.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        let old: *mut libc::sigaction = Box::into_raw(Box::new(core::mem::zeroed()));
        libc::sigaction(sig, &sa, old);
        // SYNC: Release pairs with the handlers' Acquire load of the previous action.
        previous.store(old, Ordering::Release);
    }
}

/// Asks for the page holding `addr` (whose region `driver` serves, from `base()`) as
/// the faulting access needs it: whether it was granted (else it is lost).
fn resolve<M: Memory<Vec<u8>> + Send + 'static>(
    driver: &crate::slot::Entered<'_, NodeDriver<M>>,
    addr: usize,
    ctx: *mut libc::c_void,
) -> bool {
    let page = ((addr - driver.base()) / rustix::param::page_size()) as Page;
    // A fault on a readable page is a write, whatever the CPU says.
    let readable = driver.lock().node.access(page) != Access::Invalid;
    let write = readable || was_write(ctx).unwrap_or(false);
    driver.acquire(page, write).is_ok()
}

extern "C" fn on_bus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: this thread's errno location, read and written back by this thread.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid `siginfo_t` for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some(driver) = UFFD_REGIONS.iter().find_map(|s| s.enter(addr)) {
        if !resolve(&driver, addr, ctx) {
            // Lost (the page is poisoned): the access, retried with SIGBUS blocked in
            // this handler, ends the process with SIGBUS, never stale bytes.
            // SAFETY: restoring the default action for this signal.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        }
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
        return; // granted (installed by UFFDIO_COPY): the access is retried
    }
    chain(sig, info, ctx, &PREVIOUS_BUS);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Whether the faulting access was a write, where the CPU says (x86-64's page-fault
/// error code); elsewhere, `None`.
#[cfg(target_arch = "x86_64")]
fn was_write(ctx: *mut libc::c_void) -> Option<bool> {
    // SAFETY: the kernel passes the interrupted context as a `ucontext_t`.
    let uc = unsafe { &*ctx.cast::<libc::ucontext_t>() };
    Some(uc.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0)
}

#[cfg(not(target_arch = "x86_64"))]
fn was_write(_ctx: *mut libc::c_void) -> Option<bool> {
    None
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // The interrupted code's errno survives the handler.
    // SAFETY: this thread's errno location, read and written back by this thread.
    let errno = unsafe { *libc::__errno_location() };
    serve(sig, info, ctx);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn serve(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some(driver) = REGIONS.iter().find_map(|s| s.enter(addr)) {
        if resolve(&driver, addr, ctx) {
            return; // granted: the access is retried
        }
        // Lost: the access ends in SIGBUS, never stale bytes.
        // SAFETY: restoring the default action and raising a signal on this thread.
        unsafe {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
            libc::raise(libc::SIGBUS);
        }
        return;
    }
    // Not ours: whoever handled it before (Rust's stack-overflow report, say), or the
    // default action once the access is retried.
    chain(sig, info, ctx, &PREVIOUS);
}

/// Hands a signal that is not ours to the action that was there before ours (or the
/// default action, once the access is retried).
fn chain(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
    previous: &AtomicPtr<libc::sigaction>,
) {
    // SYNC: Acquire pairs with the Release store in `install_on`.
    let prev = previous.load(Ordering::Acquire);
    // SAFETY: `prev` is the action saved when ours was installed (never freed); calling
    // it as it was registered, or restoring the default.
    unsafe {
        let h = if prev.is_null() { libc::SIG_DFL } else { (*prev).sa_sigaction };
        if h == libc::SIG_DFL || h == libc::SIG_IGN {
            libc::signal(sig, libc::SIG_DFL);
        } else if (*prev).sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                core::mem::transmute(h);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = core::mem::transmute(h);
            f(sig);
        }
    }
}
