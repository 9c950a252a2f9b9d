//! Named crash points: places inside multi-step updates of shared state where a test can
//! make the process die, as a SIGKILL at that instruction would, and check that the
//! survivors recover.
//!
//! With the `crash-points` feature, [`arm`] names the point at which this process dies
//! (by sending itself SIGKILL) the next time it passes it. Without the feature the
//! points compile to nothing and [`arm`] does not exist.
//!
//! The points:
//! - `page_lock.held`: just after taking the page lock (and repairing after a dead holder);
//! - `pages.run.head`: a run's head marked, its tails not yet;
//! - `pages.free.cleared`: a run being freed, its head cleared, its units not yet free;
//! - `slab.pop`: a block taken off its slab's free list, not yet counted or marked
//!   allocated;
//! - `slab.release`: a block's allocated bit cleared by its owner's free, the block not
//!   yet on the free list;
//! - `recover.rebuilding`: a dead process's thread heap claimed by a recoverer, not yet
//!   rebuilt;
//! - `root.init`: a named root's value allocated and written, the root not yet published.

#[cfg(feature = "crash-points")]
mod armed {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    static ARMED: Mutex<Option<String>> = Mutex::new(None);
    /// Whether `ARMED` holds a name: the points on fast paths test only this.
    static ANY: AtomicBool = AtomicBool::new(false);

    /// This process dies (SIGKILL) the next time it passes the crash point `name`.
    pub fn arm(name: &str) {
        *ARMED.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.to_owned());
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
        let armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        if armed.as_deref() == Some(name) {
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        }
    }
}

#[cfg(feature = "crash-points")]
pub use armed::arm;
#[cfg(feature = "crash-points")]
pub(crate) use armed::point;

/// A crash point (see the module docs); nothing without the `crash-points` feature.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}
