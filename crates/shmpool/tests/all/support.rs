//! Test support: unique names, forked children and spawned peers under a watchdog.
#![allow(unsafe_code, dead_code)]

use libtest_mimic::Trial;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long any child process may run before the test kills it and fails.
pub const WATCHDOG: Duration = Duration::from_secs(30);

/// A trial from a plain function; a panic fails it.
pub fn trial(name: &str, f: fn()) -> Trial {
    Trial::test(name, move || {
        f();
        Ok(())
    })
}

/// A segment name no other test (or test run) uses.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("shmpool-test-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Unlinks a POSIX shm name when dropped, so a failed test leaves nothing behind.
pub struct ShmGuard(pub String);

impl Drop for ShmGuard {
    fn drop(&mut self) {
        let _ = shmpool::Segment::unlink_shm(&self.0);
    }
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A forked child process.
pub struct Forked(libc::pid_t);

/// Forks; the child runs `f` and exits with its return value (101 if it panics).
pub fn fork(f: impl FnOnce() -> i32) -> Forked {
    // SAFETY: `main` runs trials one at a time and tests fork before starting threads, so
    // the child inherits no lock held by another thread; it leaves through `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    Forked(pid)
}

impl Forked {
    pub fn pid(&self) -> libc::pid_t {
        self.0
    }

    /// The exit code (or 128 + signal) if the child has ended.
    pub fn try_wait(&self) -> Option<i32> {
        let mut status = 0;
        // SAFETY: plain waitpid on our own child.
        let r = unsafe { libc::waitpid(self.0, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed");
        (r == self.0).then(|| {
            if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            }
        })
    }

    /// Waits for the child's end: its exit code, or 128 + the signal that killed it;
    /// kills it and panics after the watchdog.
    pub fn wait_status(self) -> i32 {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                // SAFETY: killing our own child.
                unsafe { libc::kill(self.0, libc::SIGKILL) };
                panic!("watchdog: child {} ran longer than {WATCHDOG:?}", self.0);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the child's exit code; kills it and panics after the watchdog.
    pub fn wait(self) -> i32 {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            let mut status = 0;
            // SAFETY: plain waitpid on our own child.
            let r = unsafe { libc::waitpid(self.0, &mut status, libc::WNOHANG) };
            assert!(r >= 0, "waitpid failed");
            if r == self.0 {
                if libc::WIFEXITED(status) {
                    return libc::WEXITSTATUS(status);
                }
                panic!("child {} died by signal {}", self.0, libc::WTERMSIG(status));
            }
            if Instant::now() > deadline {
                // SAFETY: killing our own child.
                unsafe { libc::kill(self.0, libc::SIGKILL) };
                panic!("watchdog: child {} ran longer than {WATCHDOG:?}", self.0);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Starts this test binary again as an unrelated process running peer `role`.
pub fn spawn_peer(role: &str, args: &[&str]) -> std::process::Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .env("SHMPOOL_TEST_PEER", role)
        .env("SHMPOOL_TEST_PEER_ARGS", args.join("\u{1f}"))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn peer")
}

/// Waits for a spawned peer's exit code under the watchdog.
pub fn wait_peer(mut child: std::process::Child) -> i32 {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code().unwrap_or_else(|| panic!("peer died by a signal: {status:?}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("watchdog: peer ran longer than {WATCHDOG:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Spins (with short sleeps) until `cond` holds; panics after the watchdog.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !cond() {
        assert!(Instant::now() < deadline, "watchdog: waited too long for {what}");
        std::thread::yield_now();
    }
}

/// The byte pattern tests write at `offset` with `seed`: easy to check, hard to fake.
pub fn pattern(offset: u64, len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64).map(|i| ((offset + i).wrapping_mul(31) ^ seed) as u8).collect()
}

pub mod peer {
    //! Peer roles: what an unrelated process started by `spawn_peer` does.
    pub fn dispatch() -> Option<i32> {
        let role = std::env::var("SHMPOOL_TEST_PEER").ok()?;
        let args = std::env::var("SHMPOOL_TEST_PEER_ARGS").unwrap_or_default();
        let args: Vec<&str> = args.split('\u{1f}').collect();
        let run = match role.as_str() {
            "attach-name" => super::super::multiproc::peer_attach_name,
            "recv-fd" => super::super::multiproc::peer_recv_fd,
            "grow-reader" => super::super::multiproc::peer_grow_reader,
            "buffer-peer" => super::super::buffer::peer_buffer,
            other => {
                eprintln!("unknown peer role {other}");
                return Some(2);
            }
        };
        Some(std::panic::catch_unwind(|| run(&args)).unwrap_or(101))
    }
}

/// Makes sure the 2 MiB huge-page pool has `pages` free pages for the life of the guard,
/// raising `/proc/sys/vm/nr_hugepages` if needed (root only) and restoring it on drop,
/// also when a test fails. `provisioned()` says whether the pages are there.
pub struct HugePool {
    restore: Option<u64>,
    provisioned: bool,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePool {
    pub fn reserve(pages: u64) -> Self {
        let free = || shmpool::segment::HugePageSize::Size2M.free_pages().unwrap_or(0);
        let nr = || -> Option<u64> { std::fs::read_to_string(NR_HUGEPAGES).ok()?.trim().parse().ok() };
        if free() >= pages {
            return Self { restore: None, provisioned: true };
        }
        let Some(before) = nr() else { return Self { restore: None, provisioned: false } };
        let raised = std::fs::write(NR_HUGEPAGES, (before + pages - free()).to_string()).is_ok();
        Self { restore: raised.then_some(before), provisioned: free() >= pages }
    }

    pub fn provisioned(&self) -> bool {
        self.provisioned
    }
}

impl Drop for HugePool {
    fn drop(&mut self) {
        if let Some(n) = self.restore {
            let _ = std::fs::write(NR_HUGEPAGES, n.to_string());
        }
    }
}

/// Waits for every child under the watchdog; as soon as one ends with a non-zero code
/// (or a signal: 128 + signo), calls `on_failure` once so the others can stop waiting
/// for it. Returns the codes in order.
pub fn wait_all(children: Vec<Forked>, on_failure: impl Fn()) -> Vec<i32> {
    let deadline = Instant::now() + WATCHDOG;
    let mut codes: Vec<Option<i32>> = vec![None; children.len()];
    let mut told = false;
    while codes.iter().any(Option::is_none) {
        for (c, code) in children.iter().zip(codes.iter_mut()) {
            if code.is_none() {
                *code = c.try_wait();
            }
        }
        if !told && codes.iter().any(|c| c.is_some_and(|c| c != 0)) {
            on_failure();
            told = true;
        }
        if Instant::now() > deadline {
            for c in &children {
                // SAFETY: killing our own child.
                unsafe { libc::kill(c.0, libc::SIGKILL) };
            }
            panic!("watchdog: children ran longer than {WATCHDOG:?}: {codes:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    codes.into_iter().map(|c| c.expect("ended")).collect()
}

/// A heap in a named POSIX shm segment, unlinked when dropped; children attach it by
/// name with [`SharedHeap::attach`], as an unrelated process would.
pub struct SharedHeap {
    pub name: String,
    pub heap: shmpool::heap::Heap,
    _g: ShmGuard,
}

impl SharedHeap {
    /// A fresh heap of up to 256 MiB.
    pub fn new(tag: &str) -> Self {
        let name = unique_name(tag);
        let g = ShmGuard(name.clone());
        let seg = shmpool::SegmentOptions::new().max_size(256 << 20).create_shm(&name).unwrap();
        Self { heap: shmpool::heap::Heap::create(seg).unwrap(), name, _g: g }
    }

    /// The heap, attached again by name.
    pub fn attach(&self) -> shmpool::heap::Heap {
        let seg = shmpool::Segment::open_shm(&self.name, shmpool::segment::Access::ReadWrite).unwrap();
        shmpool::heap::Heap::attach(seg).unwrap()
    }

    /// The offset of a `u64` named `name` in `heap` (this heap, in any process).
    pub fn word(&self, heap: &shmpool::heap::Heap, name: &str) -> u64 {
        heap.find_or_init::<u64>(name, || 0).unwrap().get()
    }

    /// Waits until `n` processes reached it, so their loops overlap.
    pub fn barrier(&self, heap: &shmpool::heap::Heap, n: u64) {
        let w = heap.segment().atomic_u64(self.word(heap, "barrier")).unwrap();
        w.fetch_add(1, Ordering::AcqRel);
        wait_until("every process at the barrier", || w.load(Ordering::Acquire) >= n);
    }
}
