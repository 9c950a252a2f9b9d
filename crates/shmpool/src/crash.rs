//! Named crash points: places inside multi-step updates of shared state where a test can
//! make the process die, as a SIGKILL at that instruction would, and check that the
//! survivors recover.
//!
//! With the `crash-points` feature, `arm` names the point at which this process dies
//! (by sending itself SIGKILL) the next time it passes it, and `arm_pause` one where it
//! stops a while, as a slow process would. Without the feature the points compile to
//! nothing and those functions do not exist.
//!
//! The points ([`POINTS`]):
//! - `page_lock.held`: just after taking the page lock (and repairing after a dead holder);
//! - `pages.run.head`: a run's head marked, its tails not yet;
//! - `pages.free.cleared`: a run being freed, its head cleared, its units not yet free;
//! - `register.claimed`: a registry slot claimed (under the page lock), its identity not
//!   yet written;
//! - `claim.taken`: a thread heap claimed (under the page lock), its owner not yet named;
//! - `slab.new`: a slab's header half made (under the page lock);
//! - `slab.pop`: a block taken off its slab's free list, not yet counted or marked
//!   allocated;
//! - `slab.release`: a block's allocated bit cleared by its owner's free, the block not
//!   yet on the free list;
//! - `free.queued`: a remote free flagged a full slab `QUEUED`, not yet pushed it onto
//!   its owner's delayed stack;
//! - `drain.popped`: an owner popped a slab off its delayed stack, not yet unqueued it;
//! - `journal.taken`: an `alloc_in` took its block, not yet recorded it in the slot;
//! - `journal.recorded`: an `alloc_in` recorded its block, its journal not yet cleared;
//! - `recover.rebuilding`: a dead process's thread heap claimed by a recoverer, not yet
//!   rebuilt;
//! - `root.init`: a named root's value allocated and written, the root not yet published.
//!
//! And in the pools ([`POOL_POINTS`]):
//! - `slots.returned`: a slot-pool return cleared its slot's bit and its word's waiters'
//!   flag, the waiters not yet woken;
//! - `freelist.popped`: a free-list allocation moved the head past its slot, the slot's
//!   link not yet marked taken;
//! - `freelist.claimed`: a free-list free claimed its slot's link, the slot not yet on
//!   the stack.
//!
//! And in the channels ([`CHANNEL_POINTS`]):
//! - `mpmc.writing`: an MPMC sender claimed its slot, the value not yet published;
//! - `mpmc.reading`: an MPMC receiver claimed its slot, the value not yet read and freed.

/// Every crash point, for tests that go through them all.
pub const POINTS: &[&str] = &[
    "page_lock.held",
    "pages.run.head",
    "pages.free.cleared",
    "register.claimed",
    "claim.taken",
    "slab.new",
    "slab.pop",
    "slab.release",
    "free.queued",
    "drain.popped",
    "journal.taken",
    "journal.recorded",
    "recover.rebuilding",
    "root.init",
];

/// The crash points of the pools (`pools`), each with a test of its own.
pub const POOL_POINTS: &[&str] = &["slots.returned", "freelist.popped", "freelist.claimed"];

/// The crash points of the channels (`channel`), each with a test of its own.
pub const CHANNEL_POINTS: &[&str] = &["mpmc.writing", "mpmc.reading"];

#[cfg(feature = "crash-points")]
fn known(name: &str) -> bool {
    POINTS.contains(&name) || POOL_POINTS.contains(&name) || CHANNEL_POINTS.contains(&name)
}

#[cfg(feature = "crash-points")]
mod armed {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// The armed point, and how long to stop there instead of dying (`None`: die).
    static ARMED: Mutex<Option<(String, Option<Duration>)>> = Mutex::new(None);
    /// Whether `ARMED` holds a name: the points on fast paths test only this.
    static ANY: AtomicBool = AtomicBool::new(false);

    /// This process dies (SIGKILL) the next time it passes the crash point `name`.
    pub fn arm(name: &str) {
        set(name, None);
    }

    /// The next time this process passes the crash point `name`, it stops there for
    /// `pause` and goes on: a slow process, not a dead one.
    pub fn arm_pause(name: &str, pause: Duration) {
        set(name, Some(pause));
    }

    fn set(name: &str, pause: Option<Duration>) {
        assert!(super::known(name), "no crash point is named {name:?}");
        *ARMED.lock().unwrap_or_else(|e| e.into_inner()) = Some((name.to_owned(), pause));
        ANY.store(true, Ordering::SeqCst);
    }

    #[inline]
    pub(crate) fn point(name: &str) {
        if ANY.load(Ordering::Relaxed) {
            hit(name);
        }
    }

    #[cold]
    fn hit(name: &str) {
        debug_assert!(super::known(name), "crash point {name} is in no list of points");
        let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        match armed.as_ref() {
            Some((n, None)) if n == name => {
                let _ =
                    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
            }
            Some((n, Some(pause))) if n == name => {
                let pause = *pause;
                *armed = None; // once
                drop(armed);
                std::thread::sleep(pause);
            }
            _ => {}
        }
    }
}

#[cfg(feature = "crash-points")]
pub(crate) use armed::point;
#[cfg(feature = "crash-points")]
pub use armed::{arm, arm_pause};

/// A crash point (see the module docs); nothing without the `crash-points` feature.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}
