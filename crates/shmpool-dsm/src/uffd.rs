//! A thin, checked wrapper over userfaultfd(2): the fault source of a mapped region.
//!
//! Layer: shmpool-dsm, under `region`. A [`Uffd`] is registered over one range for
//! *missing* faults (a page not present: the node holds no copy) and *write-protect*
//! faults (a page present read-only: a Shared copy written). Its owner resolves each
//! fault by installing bytes ([`Uffd::copy`]), lifting the protection
//! ([`Uffd::protect`]), or poisoning the page so the access ends in `SIGBUS`
//! ([`Uffd::poison`]); each of those wakes the threads waiting on the page.
//!
//! Only root (or `CAP_SYS_PTRACE`, or `vm.unprivileged_userfaultfd = 1`) gets faults
//! from kernel mode too (a `read(2)` or a futex on the region); others get a
//! user-mode-only descriptor, under which a system call touching an absent page fails
//! with `EFAULT`. [`Uffd::kernel_faults`] tells which this is.
#![allow(unsafe_code)]

use linux_raw_sys::general as sys;
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode, Updater};
use rustix::mm::UserfaultfdFlags;

const UFFDIO: u8 = sys::UFFDIO as u8;
const API: Opcode = opcode::read_write::<sys::uffdio_api>(UFFDIO, sys::_UFFDIO_API as u8);
const REGISTER: Opcode = opcode::read_write::<sys::uffdio_register>(UFFDIO, sys::_UFFDIO_REGISTER as u8);
const COPY: Opcode = opcode::read_write::<sys::uffdio_copy>(UFFDIO, sys::_UFFDIO_COPY as u8);
const WRITEPROTECT: Opcode =
    opcode::read_write::<sys::uffdio_writeprotect>(UFFDIO, sys::_UFFDIO_WRITEPROTECT as u8);
const WAKE: Opcode = opcode::read::<sys::uffdio_range>(UFFDIO, sys::_UFFDIO_WAKE as u8);
const POISON: Opcode = opcode::read_write::<sys::uffdio_poison>(UFFDIO, sys::_UFFDIO_POISON as u8);
const MOVE: Opcode = opcode::read_write::<sys::uffdio_move>(UFFDIO, sys::_UFFDIO_MOVE as u8);
const WP_MODE_WP: u64 = 1;
/// `UFFDIO_MOVE_MODE_DONTWAKE`: nobody waits on the destination.
const MOVE_MODE_DONTWAKE: u64 = 1;

/// One fault the kernel reports: a thread touched `address` and waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The faulting address (rounded down to its page by the kernel).
    pub address: usize,
    /// The access was a write.
    pub write: bool,
}

/// A userfaultfd descriptor, past its API handshake.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    kernel_faults: bool,
    poison: bool,
    moves: bool,
}

impl Uffd {
    /// Opens a non-blocking userfaultfd with write-protect faults (and page poisoning
    /// and moving where the kernel has them, 6.6 and 6.8 and later).
    pub fn open() -> Result<Uffd, Errno> {
        Self::open_with(0)
    }

    /// As [`open`](Self::open), but a fault is not reported here: the faulting thread
    /// gets `SIGBUS` instead (`UFFD_FEATURE_SIGBUS`), and resolves it itself. A system
    /// call that touches an absent page then fails with `EFAULT`.
    pub fn open_sigbus() -> Result<Uffd, Errno> {
        Self::open_with(u64::from(sys::UFFD_FEATURE_SIGBUS))
    }

    fn open_with(extra: u64) -> Result<Uffd, Errno> {
        let base = UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK;
        let want = u64::from(sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP) | extra;
        let poison = u64::from(sys::UFFD_FEATURE_POISON);
        let moves = u64::from(sys::UFFD_FEATURE_MOVE);
        let mut last = Errno::NOSYS;
        let optional = [poison | moves, poison, 0];
        let tries = [false, true].into_iter().flat_map(|u| optional.map(|o| (u, want | o)));
        for (user_only, features) in tries {
            let flags = if user_only {
                base | UserfaultfdFlags::from_bits_retain(sys::UFFD_USER_MODE_ONLY as _)
            } else {
                base
            };
            // SAFETY: the descriptor only ever covers the range this module registers,
            // which the caller owns (see `register`).
            let fd = match unsafe { rustix::mm::userfaultfd(flags) } {
                Ok(fd) => fd,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut api = sys::uffdio_api { api: u64::from(sys::UFFD_API), features, ioctls: 0 };
            // SAFETY: UFFDIO_API reads and writes a `uffdio_api`, which `api` is.
            match unsafe { rustix::ioctl::ioctl(&fd, Updater::<API, _>::new(&mut api)) } {
                Ok(()) => {
                    let kernel_faults = !user_only && extra == 0;
                    return Ok(Uffd {
                        fd,
                        kernel_faults,
                        poison: features & poison != 0,
                        moves: features & moves != 0,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whether faults taken inside system calls come here too (else they fail `EFAULT`).
    pub fn kernel_faults(&self) -> bool {
        self.kernel_faults
    }

    /// Registers `[start, start + len)` for missing and write-protect faults.
    ///
    /// # Safety
    /// The range is an anonymous private mapping the caller owns for as long as this
    /// descriptor lives, and whose faults the caller resolves (a thread faulting on it
    /// waits until this descriptor wakes it).
    pub unsafe fn register(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut reg = sys::uffdio_register {
            range: sys::uffdio_range { start: start as u64, len: len as u64 },
            mode: u64::from(sys::UFFDIO_REGISTER_MODE_MISSING | sys::UFFDIO_REGISTER_MODE_WP),
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `uffdio_register`; the range is
        // the caller's (this function's contract).
        unsafe { rustix::ioctl::ioctl(&self.fd, Updater::<REGISTER, _>::new(&mut reg)) }
    }

    /// Installs `data` as the absent page at `dst` (its length), read-only if
    /// `read_only`, and wakes the threads waiting on it. `EEXIST` if it is present.
    ///
    /// # Safety
    /// `dst` is a page of the registered range, and `data` is a page's length.
    pub unsafe fn copy(&self, dst: usize, data: &[u8], read_only: bool) -> Result<(), Errno> {
        let mut c = sys::uffdio_copy {
            dst: dst as u64,
            src: data.as_ptr() as u64,
            len: data.len() as u64,
            mode: if read_only { u64::from(sys::UFFDIO_COPY_MODE_WP) } else { 0 },
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads `data` (alive for the call) into the registered
        // page at `dst` (the contract) and writes back the bytes copied.
        unsafe { rustix::ioctl::ioctl(&self.fd, Updater::<COPY, _>::new(&mut c)) }
    }

    /// Write-protects the present pages of `[start, start + len)` (`on`), or lifts the
    /// protection and wakes the threads waiting to write them. Protecting waits for
    /// writes already under way: once it returns, no thread writes the range.
    ///
    /// # Safety
    /// The range is inside the registered one.
    pub unsafe fn protect(&self, start: usize, len: usize, on: bool) -> Result<(), Errno> {
        let mut wp = sys::uffdio_writeprotect {
            range: sys::uffdio_range { start: start as u64, len: len as u64 },
            mode: if on { WP_MODE_WP } else { 0 },
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads a `uffdio_writeprotect` over the registered
        // range (the contract).
        unsafe { rustix::ioctl::ioctl(&self.fd, Updater::<WRITEPROTECT, _>::new(&mut wp)) }
    }

    /// Wakes the threads waiting on `[start, start + len)`: they fault again if their
    /// access is still not allowed.
    pub fn wake(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut r = sys::uffdio_range { start: start as u64, len: len as u64 };
        // SAFETY: UFFDIO_WAKE reads a `uffdio_range`; waking changes no memory.
        unsafe { rustix::ioctl::ioctl(&self.fd, Updater::<WAKE, _>::new(&mut r)) }
    }

    /// Makes every later access to the absent pages of `[start, start + len)` end in
    /// `SIGBUS`, and wakes the threads waiting there (who get it). `ENOSYS` where the
    /// kernel cannot (before 6.6).
    ///
    /// # Safety
    /// The range is inside the registered one and its pages are absent.
    pub unsafe fn poison(&self, start: usize, len: usize) -> Result<(), Errno> {
        if !self.poison {
            return Err(Errno::NOSYS);
        }
        let mut p = sys::uffdio_poison {
            range: sys::uffdio_range { start: start as u64, len: len as u64 },
            mode: 0,
            updated: 0,
        };
        // SAFETY: UFFDIO_POISON reads and writes a `uffdio_poison` over the registered
        // range (the contract).
        unsafe { rustix::ioctl::ioctl(&self.fd, Updater::<POISON, _>::new(&mut p)) }
    }

    /// Whether [`move_page`](Self::move_page) can be had (Linux 6.8 and later).
    pub fn moves(&self) -> bool {
        self.moves
    }

    /// Moves the present page at `src` to the absent page at `dst`, both in this
    /// process's anonymous private memory, `dst` in a registered range: `src` is absent
    /// afterwards (its next touch faults), and a write under way on another thread
    /// lands before the move or faults after it (the page table entry is cleared and
    /// flushed at once). `ENOSYS` where the kernel cannot.
    ///
    /// # Safety
    /// `src` and `dst` are pages of memory the caller owns; `dst` is in the registered
    /// range and absent.
    pub unsafe fn move_page(&self, src: usize, dst: usize, len: usize) -> Result<(), Errno> {
        if !self.moves {
            return Err(Errno::NOSYS);
        }
        let mut m = sys::uffdio_move {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: MOVE_MODE_DONTWAKE,
            move_: 0,
        };
        // SAFETY: UFFDIO_MOVE reads and writes a `uffdio_move` over pages the caller
        // owns (the contract).
        unsafe { rustix::ioctl::ioctl(&self.fd, Updater::<MOVE, _>::new(&mut m)) }
    }

    /// The next fault reported, waiting up to `timeout_ms` for one (`None`: none came,
    /// or an event other than a page fault).
    pub fn next_fault(&self, timeout_ms: i32) -> Result<Option<Fault>, Errno> {
        let mut fds = [rustix::event::PollFd::new(&self.fd, rustix::event::PollFlags::IN)];
        let timeout = rustix::event::Timespec {
            tv_sec: i64::from(timeout_ms / 1000),
            tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(Errno::INTR) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        let mut buf = [0u8; size_of::<sys::uffd_msg>()];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(n) if n == buf.len() => {}
            Ok(_) | Err(Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e),
        }
        // SAFETY: the kernel wrote one whole `uffd_msg` (checked above); it is plain
        // data, read unaligned as the buffer is a byte array.
        let msg: sys::uffd_msg = unsafe { core::ptr::read_unaligned(buf.as_ptr().cast()) };
        if u32::from(msg.event) != sys::UFFD_EVENT_PAGEFAULT {
            return Ok(None);
        }
        // SAFETY: a page-fault event's argument is the `pagefault` member.
        let pf = unsafe { msg.arg.pagefault };
        Ok(Some(Fault {
            address: pf.address as usize,
            write: pf.flags & u64::from(sys::UFFD_PAGEFAULT_FLAG_WRITE) != 0,
        }))
    }

    /// The descriptor.
    pub fn fd(&self) -> impl AsFd + '_ {
        &self.fd
    }
}
