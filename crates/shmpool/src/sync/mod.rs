//! Coordination between processes: shared cells, robust mutexes, semaphores and events.
//!
//! Layer: sync, above the heap and pools (DESIGN.md). Each object lives in a region of
//! a segment, like a pool (`pools::region`): at an offset, in a heap block, or under a
//! name in a heap, and every process that maps the segment can use it. Waits sleep on a
//! futex (not `FUTEX_PRIVATE`: the sleepers are in any process), at most 10–20 ms at a
//! time, so that a process killed at any instant leaves no one asleep for good:
//!
//! | type             | word(s)                           | a holder killed          |
//! |------------------|-----------------------------------|--------------------------|
//! | [`Mutex<T>`]     | lock word = holder's tid          | next locker takes over, told [`LockError::OwnerDied`] |
//! | [`Semaphore`]    | count + waiting flag              | its units stay taken     |
//! | [`Event`]        | set + waiting flag                | nothing held             |
//! | [`SharedCells`]  | `u64` cells, fixed operations     | nothing held             |
//! | [`Swappable`]    | current generation, reader pins   | its pins are ignored     |

mod cells;
pub(crate) mod event;
mod mutex;
pub(crate) mod owner;
pub(crate) mod semaphore;
pub(crate) mod swap;

pub use cells::{CellError, SharedCells, MAX_CELLS};
pub use event::Event;
pub use mutex::{Mutex, MutexGuard};
pub use semaphore::{Semaphore, MAX_COUNT};
pub use swap::{SwapError, SwapReader, Swappable, Version, READERS, VERSIONS};

/// Why a lock was not taken cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError<G> {
    /// A holder died holding the lock: here is the guard; the data may be half updated.
    /// Repair it, then [`MutexGuard::mark_consistent`]; until then every lock says this.
    #[error("the previous holder died holding the lock")]
    OwnerDied(G),
    /// The timeout passed with the lock still held.
    #[error("timed out waiting for the lock")]
    Timeout,
    /// The lock is held (`try_lock`).
    #[error("the lock is held")]
    WouldBlock,
}

/// Why a synchronisation operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The semaphore's count would pass [`MAX_COUNT`].
    #[error("the semaphore's count would pass {MAX_COUNT}")]
    Overflow,
}
