//! Who is at either end of a channel: a table of the processes that hold senders and
//! receivers, so that a peer that died is told apart from one that is slow.
//!
//! Layer: channel. `PEERS` entries of three words each:
//!
//! | word     | meaning                                                        |
//! |----------|----------------------------------------------------------------|
//! | `ident`  | `generation << 32 | pid`; 0: never used                       |
//! | `start`  | the process's start time (0 while the claim is being made)     |
//! | `counts` | `senders << 32 | receivers` the process holds                 |
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

/// Whether the process of an entry (`pid`, `start`) runs; while its claim is being made
/// (`start` 0), whether the pid exists.
fn runs(pid: u32, start: u64) -> bool {
    if start == 0 {
        return std::path::Path::new(&format!("/proc/{pid}")).exists();
    }
    process_alive(pid, start)
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
            if id as u32 == pid && self.start(i).load(Ordering::Acquire) == start {
                self.counts(i).fetch_add(role.unit(), Ordering::Relaxed);
                return Ok(tag_of(i, id));
            }
        }
        for i in 0..PEERS {
            let id = self.ident(i).load(Ordering::Acquire);
            let free = id == 0 || !runs(id as u32, self.start(i).load(Ordering::Acquire));
            let new = ((id >> 32) + 1) << 32 | u64::from(pid);
            // SYNC: Acquire: the entry's previous owner is gone; nothing of it is read.
            if free && self.ident(i).compare_exchange(id, new, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                self.counts(i).store(role.unit(), Ordering::Relaxed);
                // SYNC: Release pairs with the Acquire loads above: a start seen means the
                // counts were reset before.
                self.start(i).store(start, Ordering::Release);
                return Ok(tag_of(i, new));
            }
        }
        Err(ChannelError::TooManyPeers(PEERS))
    }

    /// Ends a handle's registration.
    pub(crate) fn leave(&self, tag: Tag, role: Role) {
        let i = (tag & (PEERS as u32 - 1)) as usize;
        self.counts(i).fetch_sub(role.unit(), Ordering::Relaxed);
    }

    /// Whether any process holds a handle of `role` (it may have died since).
    pub(crate) fn registered(&self, role: Role) -> bool {
        (0..PEERS).any(|i| role.count(self.counts(i).load(Ordering::Relaxed)) > 0)
    }

    /// Whether a running process holds a handle of `role`.
    pub(crate) fn live(&self, role: Role) -> bool {
        (0..PEERS).any(|i| {
            let id = self.ident(i).load(Ordering::Acquire);
            role.count(self.counts(i).load(Ordering::Relaxed)) > 0
                && runs(id as u32, self.start(i).load(Ordering::Acquire))
        })
    }

    /// Whether the registration `tag` names has ended for good (its entry was claimed
    /// again, or its process no longer runs).
    pub(crate) fn dead(&self, tag: Tag) -> bool {
        let i = (tag & (PEERS as u32 - 1)) as usize;
        let id = self.ident(i).load(Ordering::Acquire);
        tag_of(i, id) != tag || !runs(id as u32, self.start(i).load(Ordering::Acquire))
    }
}
