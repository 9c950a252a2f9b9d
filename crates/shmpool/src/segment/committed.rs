//! The committed size: one word that only rises, published after the backing has grown.
//!
//! Protocol (see `fd.rs` for the growth lock):
//! 1. a grower extends the backing file under the growth lock;
//! 2. it raises `committed` with `fetch_max` (Release);
//! 3. any process loads `committed` (Acquire) and may touch every byte below it.
//!
//! Step 3 happens-after step 1 of whichever grower published the value read, so no
//! process touches a page before it is backed. `fetch_max` keeps the word monotonic when
//! growers publish out of order. Modelled in `tests/loom_committed.rs`.

use crate::loom::{AtomicU64, Ordering};

/// The committed size of a segment, in its header.
#[repr(transparent)]
#[derive(Debug)]
pub(crate) struct Committed(AtomicU64);

impl Committed {
    #[cfg(all(loom, test))]
    pub(crate) fn new(len: u64) -> Self {
        Self(AtomicU64::new(len))
    }

    /// Sets the size of a segment nobody else sees yet.
    pub(crate) fn init(&self, len: u64) {
        self.0.store(len, Ordering::Relaxed);
    }

    /// Bytes usable now.
    #[inline]
    pub(crate) fn load(&self) -> u64 {
        // SYNC: Acquire pairs with the Release `fetch_max` in `publish`: once a size is
        // seen, the backing has grown to it.
        self.0.load(Ordering::Acquire)
    }

    /// Publishes `len` after the backing has grown to it; returns the size now.
    pub(crate) fn publish(&self, len: u64) -> u64 {
        // SYNC: Release pairs with the Acquire in `load`.
        self.0.fetch_max(len, Ordering::Release).max(len)
    }
}
