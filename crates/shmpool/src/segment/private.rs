//! [`PrivateHeap`]: anonymous private memory of one process — for tests, benchmarks and
//! single-process use of the allocators. Growth only raises a counter: the whole
//! reservation is already mapped `MAP_NORESERVE` and pages arrive on first touch.

use super::backend::{Backend, BackendKind, IpcHandle};
use super::error::GrowError;
use super::mapping::Mapping;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

/// A segment in private anonymous memory.
#[derive(Debug)]
pub struct PrivateHeap {
    map: Mapping,
    committed: AtomicU64,
}

impl PrivateHeap {
    pub(crate) fn new(map: Mapping, initial: u64) -> Self {
        Self { map, committed: AtomicU64::new(initial) }
    }
}

impl Backend for PrivateHeap {
    fn kind(&self) -> BackendKind {
        BackendKind::Heap
    }

    fn base(&self) -> NonNull<u8> {
        self.map.base()
    }

    fn reserved_len(&self) -> u64 {
        self.map.len()
    }

    fn page_size(&self) -> u64 {
        rustix::param::page_size() as u64
    }

    fn writable(&self) -> bool {
        true
    }

    fn handle(&self) -> IpcHandle<'_> {
        IpcHandle::None
    }

    fn backing_len(&self) -> Result<u64, rustix::io::Errno> {
        Ok(self.committed.load(Ordering::Relaxed))
    }

    fn grow(&self, len: u64) -> Result<(), GrowError> {
        if len > self.map.len() {
            return Err(GrowError::BeyondReserved { requested: len, reserved: self.map.len() });
        }
        // Relaxed: only a bookkeeping maximum; the segment layer publishes the new size
        // with its own Release store in the header.
        self.committed.fetch_max(len, Ordering::Relaxed);
        Ok(())
    }
}
