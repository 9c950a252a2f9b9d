//! Channels between processes: rings in a segment carrying small `ShmSafe` values —
//! `u64`s, `Offset<T>`s, buffer handles (`buffer::MemoryHandle`) — and one-shot
//! messages.
//!
//! Layer: channel, above sync, buffer and the heap (DESIGN.md). Like a pool, a channel
//! lives in a region of a segment (at an offset, in a heap block, or under a name in a
//! heap) and every process that maps the segment can take an end of it:
//!
//! | type          | ends                          | an operation            |
//! |---------------|-------------------------------|-------------------------|
//! | [`Spsc<T>`]   | one sender, one receiver      | a slot write and one swap |
//! | [`Mpmc<T>`]   | any senders and receivers     | two CASes and a swap    |
//! | [`Oneshot<T>`]| one value, taken once         | one swap                |
//!
//! Blocking sends and receives spin briefly, then sleep on a futex (at most 20 ms at a
//! time) with an optional timeout. Each channel keeps a table of the processes holding
//! its ends (`peers.rs`): when every sender is gone — dropped, or its process killed —
//! a receiver gets [`RecvError::Disconnected`] once the ring is empty, instead of
//! waiting forever; likewise a sender when every receiver is gone.

pub(crate) mod mpmc;
mod oneshot;
pub(crate) mod peers;
pub(crate) mod spsc;

pub use mpmc::{Mpmc, MpmcReceiver, MpmcSender};
pub use oneshot::{Oneshot, OneshotError};
pub use spsc::{Receiver, Sender, Spsc};

/// Why a channel end could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The end is held by a live process (an SPSC end, or a one-shot's sender).
    #[error("the channel's {0} end is taken")]
    Taken(&'static str),
    /// Every entry of the channel's process table is in use.
    #[error("all {0} process entries of the channel are in use")]
    TooManyPeers(usize),
}

/// Why `try_send` did not send; the value comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<T> {
    /// The ring is full.
    #[error("the channel is full")]
    Full(T),
    /// No receiver is left.
    #[error("every receiver is gone")]
    Disconnected(T),
}

/// Why a blocking send did not send; the value comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError<T> {
    /// The ring stayed full until the timeout.
    #[error("timed out on a full channel")]
    Timeout(T),
    /// No receiver is left (dropped, or its process died).
    #[error("every receiver is gone")]
    Disconnected(T),
}

/// Why `try_recv` returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing is there yet.
    #[error("the channel is empty")]
    Empty,
    /// Nothing is there, and no sender is left.
    #[error("the channel is empty and every sender is gone")]
    Disconnected,
}

/// Why a blocking receive returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// Nothing came before the timeout.
    #[error("timed out on an empty channel")]
    Timeout,
    /// Nothing is there, and no sender is left (dropped, or its process died).
    #[error("the channel is empty and every sender is gone")]
    Disconnected,
}

/// How long a blocking operation spins before it sleeps: longer than a round trip
/// between cores (a few hundred ns) by far, shorter than a futex wake-up (tens of µs),
/// so a peer that answers promptly is met spinning, and two peers do not fall into
/// waking each other from sleep on every message.
const SPIN_FOR: std::time::Duration = std::time::Duration::from_micros(if cfg!(loom) { 0 } else { 50 });

/// A blocking operation's spin before it sleeps ([`SPIN_FOR`]).
#[derive(Default)]
struct Spin {
    tries: u32,
    since: Option<std::time::Instant>,
    over: bool,
}

impl Spin {
    /// Spins once more, or `false` once the spin is over.
    fn again(&mut self) -> bool {
        if self.over {
            return false;
        }
        self.tries += 1;
        // The clock is read every 32 tries: about every microsecond.
        if self.tries.is_multiple_of(32) {
            let since = *self.since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= SPIN_FOR {
                self.over = true;
                return false;
            }
        }
        if cfg!(loom) {
            return false;
        }
        core::hint::spin_loop();
        true
    }
}

/// What an end knew of the other side when it was made: whether one was attached, and
/// how many had joined. Disconnection is reported only for another side this end has
/// seen (attached then, or joined since): an end made before its peer waits for it.
#[derive(Debug, Clone, Copy)]
struct Since {
    attached: bool,
    joins: u32,
}

/// The joins counter word of a channel: senders in the low half, receivers in the high.
fn joins(word: &crate::loom::AtomicU64, role: peers::Role) -> u32 {
    let w = word.load(crate::loom::Ordering::Relaxed);
    match role {
        peers::Role::Sender => w as u32,
        peers::Role::Receiver => (w >> 32) as u32,
    }
}

/// Counts a join of `role`.
fn joined(word: &crate::loom::AtomicU64, role: peers::Role) {
    let unit = match role {
        peers::Role::Sender => 1,
        peers::Role::Receiver => 1 << 32,
    };
    word.fetch_add(unit, crate::loom::Ordering::Relaxed);
}

/// Whether the other side (`other`) is gone for an end made at `since`: it was seen,
/// and no handle of it is registered now, or (when `look`) none registered still runs.
fn gone(
    peers: peers::Peers<'_>,
    joins_word: &crate::loom::AtomicU64,
    other: peers::Role,
    since: Since,
    look: bool,
) -> bool {
    let seen = since.attached || joins(joins_word, other) != since.joins;
    seen && (!peers.registered(other) || (look && !peers.live(other)))
}

/// `value`'s size and alignment, checked when a channel is opened for a `T`.
fn shape<T>() -> u64 {
    (core::mem::size_of::<T>() as u64) << 32 | core::mem::align_of::<T>() as u64
}
