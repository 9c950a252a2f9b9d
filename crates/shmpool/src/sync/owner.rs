//! Who holds a lock: the calling thread's identity, and whether a holder still runs.
//!
//! Layer: sync. A lock word names its holder by Linux thread id (tid, below 2^31), the
//! futex word's natural tag; beside it the holder writes `tid << 40 | start`, its
//! thread's start time (proc(5) `/proc/TID/stat` field 22, in clock ticks since boot,
//! 40 bits: centuries), so that a tid reused by a later thread is not taken for the dead
//! holder. Until the holder has written it (a few instructions after taking the word),
//! the tid alone is checked.

use crate::heap::tls;
use crate::loom::{AtomicU64, Ordering};
use core::cell::Cell;

const START_BITS: u32 = 40;
const START_MASK: u64 = (1 << START_BITS) - 1;

/// A thread's identity: its tid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Me {
    pub(crate) tid: u32,
    start: u64,
}

impl Me {
    /// The word a holder writes beside the lock word.
    pub(crate) fn info(self) -> u64 {
        u64::from(self.tid) << START_BITS | self.start & START_MASK
    }
}

thread_local! {
    /// The calling thread's identity and the fork generation it was read in (a forked
    /// child's one thread inherits its parent thread's copy).
    static ME: Cell<(u64, Me)> = const { Cell::new((u64::MAX, Me { tid: 0, start: 0 })) };
}

/// The calling thread.
pub(crate) fn me() -> Me {
    tls::init();
    let (gen, me) = ME.with(Cell::get);
    if gen == tls::fork_gen() {
        return me;
    }
    read_me()
}

#[cold]
fn read_me() -> Me {
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    let me = Me { tid, start: stat_start(tid).map_or(0, |(start, _)| start) };
    ME.with(|c| c.set((tls::fork_gen(), me)));
    me
}

/// The start time of thread `tid` and whether it has exited (zombie or dead), from
/// proc(5) `/proc/TID/stat`; `None` if there is no such thread. A `/proc` that cannot be
/// read for another reason (not mounted, hidden, out of descriptors) says nothing, and
/// the thread counts as running (start `u64::MAX`, matched by any holder's).
fn stat_start(tid: u32) -> Option<(u64, bool)> {
    let stat = match std::fs::read_to_string(format!("/proc/{tid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(_) => return Some((u64::MAX, false)),
    };
    let fields = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start())?;
    let start = fields.split_whitespace().nth(19)?.parse().ok()?;
    Some((start, matches!(fields.chars().next(), Some('Z' | 'X'))))
}

/// Whether the holder named `tid` in a lock word, with `info` written beside it, is gone
/// for good.
pub(crate) fn holder_dead(tid: u32, info: &AtomicU64) -> bool {
    let info = info.load(Ordering::Relaxed);
    match stat_start(tid) {
        None => true,
        Some((_, true)) => true,
        // Written by this holder: its start time must match.
        Some((u64::MAX, false)) => false,
        Some((start, false)) if (info >> START_BITS) as u32 == tid => start & START_MASK != info & START_MASK,
        // Not written yet (or a previous holder's): the tid runs, so assume it is ours.
        Some(_) => false,
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn this_thread_runs_and_a_made_up_holder_does_not() {
        let me = me();
        let info = AtomicU64::new(me.info());
        assert!(!holder_dead(me.tid, &info));
        // The same tid with another start time is a dead holder whose tid was reused.
        let stale = AtomicU64::new(me.info() ^ 1);
        assert!(holder_dead(me.tid, &stale));
        // A tid past pid_max's hard limit (2^22) runs nowhere.
        assert!(holder_dead((1 << 22) + 7, &AtomicU64::new(0)));
        let t = std::thread::spawn(super::me).join().unwrap();
        assert_ne!(t.tid, me.tid);
        assert!(holder_dead(t.tid, &AtomicU64::new(t.info())), "an exited thread is dead");
    }
}
