//! Who is at either end of a channel: a table of the processes that hold senders and
//! receivers, so that a peer that died is told apart from one that is slow.
//!
//! Layer: channel. `PEERS` entries of three words each:
//!
//! | word     | meaning                                                        |
//! |----------|----------------------------------------------------------------|
//! | `ident`  | `generation << 32 | CLAIMING? | pid`; 0: never used           |
//! | `start`  | the process's start time (stale while `CLAIMING` is set)      |
//! | `counts` | `senders << 32 | receivers` the process holds                 |
//!
//! A handle inherited by a forked child names its parent: drop it only in the parent.
//! Generations are 16 bits: after 65,536 claims of one entry a dead claimer's tag may
//! look alive again, and its slot then waits for the next process table check.
//!
//! A process joins once per handle: it finds its own entry (pid and start time match)
//! or claims one that is unused or whose process is gone, with a CAS of `ident` that
//! bumps the generation. A [`Tag`] (entry index and generation) names the registration
//! in the channel's words; it is dead when the entry's generation moved on or its
//! process no longer runs.

use super::ChannelError;
use crate::heap::{process_alive, tls};
use crate::loom::{AtomicU64, Ordering};

/// Entries in a channel's table.
pub(crate) const PEERS: usize = 16;
/// Words of the table.
pub(crate) const WORDS: usize = 3 * PEERS;
/// Bits of a tag: 4 for the entry, 16 for its generation.
pub(crate) const TAG_BITS: u32 = 20;
const INDEX_BITS: u32 = 4;
const _: () = assert!(PEERS == 1 << INDEX_BITS);

/// A registration: `generation << 4 | entry`, below 2^20.
pub(crate) type Tag = u32;

/// Which end a handle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Sender,
    Receiver,
}

impl Role {
    fn unit(self) -> u64 {
        match self {
            Role::Sender => 1 << 32,
            Role::Receiver => 1,
        }
    }

    fn count(self, counts: u64) -> u64 {
        match self {
            Role::Sender => counts >> 32,
            Role::Receiver => counts & 0xffff_ffff,
        }
    }
}

/// The peer table of a channel.
#[derive(Clone, Copy)]
pub(crate) struct Peers<'a>(pub(crate) &'a [AtomicU64]);

fn tag_of(i: usize, ident: u64) -> Tag {
    (((ident >> 32) as u32) << INDEX_BITS | i as u32) & ((1 << TAG_BITS) - 1)
}

/// Set in `ident` while a claim is being made: `start` is still the previous holder's.
const CLAIMING: u64 = 1 << 31;

/// Whether the process of an entry (`ident`, `start`) runs; while its claim is being
/// made, whether its pid exists.
pub(crate) fn runs(ident: u64, start: u64) -> bool {
    let pid = (ident as u32) & !(CLAIMING as u32);
    if ident & CLAIMING != 0 || start == 0 {
        return std::path::Path::new(&format!("/proc/{pid}")).exists();
    }
    process_alive(pid, start)
}

/// Claims entry `ident` (whose current value is `id`) for this process: the CAS marks it
/// `CLAIMING`, the start time goes in and `reset` runs, then the mark comes off. The new
/// ident, or `None` if another claimer won.
pub(crate) fn claim_with(
    ident: &AtomicU64,
    start_word: &AtomicU64,
    id: u64,
    pid: u32,
    start: u64,
    reset: impl FnOnce(),
) -> Option<u64> {
    let new = ((id >> 32) + 1) << 32 | u64::from(pid);
    // SYNC: Acquire: the entry's previous owner is gone; nothing of it is read.
    ident.compare_exchange(id, new | CLAIMING, Ordering::Acquire, Ordering::Relaxed).ok()?;
    start_word.store(start, Ordering::Relaxed);
    reset();
    // SYNC: Release pairs with the Acquire loads of `ident`: a claim seen finished has
    // its start time in place.
    ident.store(new, Ordering::Release);
    Some(new)
}

impl Peers<'_> {
    fn ident(&self, i: usize) -> &AtomicU64 {
        &self.0[3 * i]
    }

    fn start(&self, i: usize) -> &AtomicU64 {
        &self.0[3 * i + 1]
    }

    fn counts(&self, i: usize) -> &AtomicU64 {
        &self.0[3 * i + 2]
    }

    /// Registers a handle of `role` for this process.
    pub(crate) fn join(&self, role: Role) -> Result<Tag, ChannelError> {
        tls::init();
        let (pid, start) = (tls::pid(), tls::start_time());
        for i in 0..PEERS {
            // SYNC: Acquire pairs with the Release store of `start` in a claim.
            let id = self.ident(i).load(Ordering::Acquire);
            if id as u32 == pid && self.start(i).load(Ordering::Relaxed) == start {
                self.counts(i).fetch_add(role.unit(), Ordering::Relaxed);
                return Ok(tag_of(i, id));
            }
        }
        for i in 0..PEERS {
            let id = self.ident(i).load(Ordering::Acquire);
            let free = id == 0 || !runs(id, self.start(i).load(Ordering::Relaxed));
            if !free {
                continue;
            }
            // The counts are reset before the claim shows finished.
            if let Some(new) = claim_with(self.ident(i), self.start(i), id, pid, start, || {
                self.counts(i).store(role.unit(), Ordering::Relaxed)
            }) {
                return Ok(tag_of(i, new));
            }
        }
        Err(ChannelError::TooManyPeers(PEERS))
    }

    /// Ends a handle's registration.
    pub(crate) fn leave(&self, tag: Tag, role: Role) {
        let i = (tag & (PEERS as u32 - 1)) as usize;
        // SYNC: Release pairs with the Acquire of `registered`: what this end published
        // before it left is seen by whoever finds it gone.
        self.counts(i).fetch_sub(role.unit(), Ordering::Release);
    }

    /// Whether any process holds a handle of `role` (it may have died since).
    pub(crate) fn registered(&self, role: Role) -> bool {
        // SYNC: Acquire pairs with the Release of `leave`.
        (0..PEERS).any(|i| role.count(self.counts(i).load(Ordering::Acquire)) > 0)
    }

    /// Whether a running process holds a handle of `role`.
    pub(crate) fn live(&self, role: Role) -> bool {
        (0..PEERS).any(|i| {
            let id = self.ident(i).load(Ordering::Acquire);
            role.count(self.counts(i).load(Ordering::Relaxed)) > 0
                && runs(id, self.start(i).load(Ordering::Relaxed))
        })
    }

    /// Whether the registration `tag` names has ended for good (its entry was claimed
    /// again, or its process no longer runs).
    pub(crate) fn dead(&self, tag: Tag) -> bool {
        let i = (tag & (PEERS as u32 - 1)) as usize;
        let id = self.ident(i).load(Ordering::Acquire);
        tag_of(i, id) != tag || !runs(id, self.start(i).load(Ordering::Relaxed))
    }
}
