//! The four allocator classes: one shared core (`Mapped`) and a thin class each.

use crate::errors::{closed, not_a_block, Error, Result};
use crate::view::View;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyTuple, PyType};
use shmpool::heap;
use shmpool::pools::{BumpArena, FreeList, Host, Pool, SlotPool};
use shmpool::segment::Access;
use shmpool::{Segment, SegmentOptions};
use std::sync::Arc;

/// What a class holds open: its segment and the allocator in it.
pub(crate) enum Mapped {
    Bump(BumpArena),
    FreeList(FreeList),
    Slab(SlotPool),
    Heap(heap::Heap),
}

/// The kinds, for building one.
#[derive(Clone, Copy)]
enum Kind {
    Bump,
    FreeList,
    Slab,
    Heap,
}

/// The offset of the allocator in its segment: the first data offset.
fn pool_at(seg: &Segment) -> u64 {
    seg.data_start().next_multiple_of(64)
}

impl Mapped {
    fn create(kind: Kind, name: &str, capacity: u64, slot: u64) -> Result<Self> {
        let slots = |slot: u64| {
            if slot == 0 || capacity < slot {
                return Err(Error::from(pyo3::exceptions::PyValueError::new_err(
                    "slot_size must be at least 1 and at most the capacity",
                )));
            }
            Ok(capacity / slot)
        };
        let footprint = match kind {
            Kind::Bump => BumpArena::footprint(capacity)?,
            Kind::FreeList => FreeList::footprint(slot, slots(slot)?)?,
            Kind::Slab => SlotPool::footprint(slot, slots(slot)?)?,
            Kind::Heap => {
                let seg = SegmentOptions::new().max_size(capacity).create_shm(name)?;
                return Ok(Mapped::Heap(
                    heap::Heap::create(seg).inspect_err(|_| drop(Segment::unlink_shm(name)))?,
                ));
            }
        };
        let size = footprint.checked_add(4096).ok_or_else(|| {
            Error::from(pyo3::exceptions::PyValueError::new_err("the capacity is too large"))
        })?;
        let seg = Arc::new(SegmentOptions::new().size(size).max_size(size).create_shm(name)?);
        let at = pool_at(&seg);
        let host = Host::from(seg);
        let made = match kind {
            Kind::Bump => BumpArena::create(host, at, capacity).map(Mapped::Bump),
            Kind::FreeList => FreeList::create(host, at, slot, slots(slot)?).map(Mapped::FreeList),
            Kind::Slab => SlotPool::create(host, at, slot, slots(slot)?).map(Mapped::Slab),
            Kind::Heap => unreachable!("made above"),
        };
        made.map_err(|e| {
            let _ = Segment::unlink_shm(name);
            e.into()
        })
    }

    fn attach(kind: Kind, name: &str) -> Result<Self> {
        let seg = Segment::open_shm(name, Access::ReadWrite)?;
        if let Kind::Heap = kind {
            return Ok(Mapped::Heap(heap::Heap::attach(seg)?));
        }
        let at = pool_at(&seg);
        let host = Host::from(seg);
        Ok(match kind {
            Kind::Bump => Mapped::Bump(BumpArena::open(host, at)?),
            Kind::FreeList => Mapped::FreeList(FreeList::open(host, at)?),
            Kind::Slab => Mapped::Slab(SlotPool::open(host, at)?),
            Kind::Heap => unreachable!("attached above"),
        })
    }

    fn pool(&self) -> Option<&dyn Pool> {
        match self {
            Mapped::Bump(p) => Some(p),
            Mapped::FreeList(p) => Some(p),
            Mapped::Slab(p) => Some(p),
            Mapped::Heap(_) => None,
        }
    }

    fn segment(&self) -> &Segment {
        match self {
            Mapped::Bump(p) => p.host().segment(),
            Mapped::FreeList(p) => p.host().segment(),
            Mapped::Slab(p) => p.host().segment(),
            Mapped::Heap(h) => h.segment(),
        }
    }

    fn allocate(&self, n: u64) -> Result<u64> {
        match self {
            Mapped::Heap(h) => Ok(h.alloc(n)?),
            other => Ok(other.pool().expect("a pool").allocate(n)?),
        }
    }

    /// Checks that `off..off + len` lies in one allocated block (`BadOffsetError`).
    fn check(&self, off: u64, len: u64) -> Result<()> {
        let inside = match self {
            Mapped::Heap(h) => h
                .block_containing(off)
                .is_ok_and(|(start, size)| off.checked_add(len).is_some_and(|end| end <= start + size)),
            other => other.pool().expect("a pool").check_range(off, len).is_ok(),
        };
        if inside {
            Ok(())
        } else {
            Err(not_a_block(off))
        }
    }

    fn free(&self, off: u64) -> Result<()> {
        match self {
            Mapped::Heap(h) => Ok(h.free(off)?),
            other => Ok(other.pool().expect("a pool").free(off)?),
        }
    }

    fn available_bytes(&self) -> u64 {
        match self {
            Mapped::Heap(h) => {
                let s = h.stats();
                // Free units, and what the segment may still grow to.
                s.free_unit_bytes + (s.reserved - s.committed.min(s.reserved))
            }
            other => other.pool().expect("a pool").available_bytes(),
        }
    }
}

/// The state every class shares: the name, the shape to pickle, and the open mapping.
pub(crate) struct Core {
    name: String,
    capacity: u64,
    slot: u64,
    mapped: Option<Arc<Mapped>>,
}

impl Core {
    fn new(kind: Kind, name: String, capacity: u64, create: bool, slot: u64) -> Result<Self> {
        let mapped =
            if create { Mapped::create(kind, &name, capacity, slot)? } else { Mapped::attach(kind, &name)? };
        let (capacity, slot) = match &mapped {
            Mapped::Bump(b) => (b.capacity(), 0),
            Mapped::FreeList(f) => (f.capacity() * f.slot_size(), f.slot_size()),
            Mapped::Slab(s) => (s.capacity() * s.slot_size(), s.slot_size()),
            Mapped::Heap(h) => (h.segment().reserved(), 0),
        };
        Ok(Self { name, capacity, slot, mapped: Some(Arc::new(mapped)) })
    }

    fn open(&self) -> Result<&Arc<Mapped>> {
        self.mapped.as_ref().ok_or_else(closed)
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        let m = self.open()?;
        m.check(off, data.len() as u64)?;
        Ok(m.segment().write_bytes(off, data)?)
    }

    fn read<'py>(&self, py: Python<'py>, off: u64, n: u64) -> Result<Bound<'py, PyBytes>> {
        let m = self.open()?;
        m.check(off, n)?;
        let seg = m.segment();
        Ok(PyBytes::new_with(py, n as usize, |buf| {
            seg.read_bytes(off, buf).map_err(|e| PyErr::from(Error::from(e)))
        })?)
    }

    fn view<'py>(&self, py: Python<'py>, off: u64, n: u64) -> Result<Bound<'py, PyAny>> {
        let m = self.open()?;
        m.check(off, n)?;
        let ptr = m.segment().ptr_at(off, n)?.as_ptr();
        let keep: Arc<dyn Send + Sync> = m.clone();
        let exporter = Bound::new(py, View::new(keep, ptr, n as usize))?;
        let memoryview = py.import("builtins")?.getattr("memoryview")?;
        Ok(memoryview.call1((exporter,))?)
    }
}

macro_rules! allocator_class {
    ($name:ident, $kind:expr, $doc:literal) => {
        #[doc = $doc]
        #[pyclass(module = "shmpool")]
        pub(crate) struct $name(Core);

        #[pymethods]
        impl $name {
            #[new]
            #[pyo3(signature = (name, capacity = 0, create = true, slot_size = 64))]
            fn new(name: String, capacity: u64, create: bool, slot_size: u64) -> Result<Self> {
                Ok(Self(Core::new($kind, name, capacity, create, slot_size)?))
            }

            /// Allocates `n` bytes; returns the block's offset.
            fn allocate(&self, n: u64) -> Result<u64> {
                self.0.open()?.allocate(n)
            }

            /// Copies `data` into the block at `offset`.
            fn write(&self, offset: u64, data: PyBackedBytes) -> Result<()> {
                self.0.write(offset, &data)
            }

            /// Copies `n` bytes of the block at `offset` out as `bytes`.
            fn read<'py>(&self, py: Python<'py>, offset: u64, n: u64) -> Result<Bound<'py, PyBytes>> {
                self.0.read(py, offset, n)
            }

            /// A writable `memoryview` of `n` bytes at `offset`, without a copy.
            fn view<'py>(&self, py: Python<'py>, offset: u64, n: u64) -> Result<Bound<'py, PyAny>> {
                self.0.view(py, offset, n)
            }

            /// Frees the block at `offset` (from any process).
            fn free(&self, offset: u64) -> Result<()> {
                self.0.open()?.free(offset)
            }

            /// Frees every block at once (for an allocator no one is using). A `Heap`
            /// refuses: it frees block by block.
            fn reset(&self) -> Result<()> {
                match self.0.open()?.pool() {
                    Some(p) => Ok(p.reset()?),
                    None => Err(crate::errors::ShmpoolError::new_err(
                        "a Heap frees block by block; it has no reset",
                    )
                    .into()),
                }
            }

            /// Bytes that can still be allocated (a snapshot).
            fn available_bytes(&self) -> Result<u64> {
                Ok(self.0.open()?.available_bytes())
            }

            /// Unmaps the segment here (other processes keep theirs). Later calls raise
            /// `ClosedError`; views made before stay valid until released.
            fn close(&mut self) {
                self.0.mapped = None;
            }

            /// Removes the segment's name (it lives on while mapped).
            fn unlink(&self) -> Result<()> {
                Ok(Segment::unlink_shm(&self.0.name)?)
            }

            /// The segment's name.
            #[getter]
            fn name(&self) -> &str {
                &self.0.name
            }

            /// Bytes the allocator holds.
            #[getter]
            fn capacity(&self) -> u64 {
                self.0.capacity
            }

            /// Whether `close` was called.
            #[getter]
            fn closed(&self) -> bool {
                self.0.mapped.is_none()
            }

            fn __enter__(slf: Py<Self>) -> Py<Self> {
                slf
            }

            #[pyo3(signature = (*_args))]
            fn __exit__(&mut self, _args: &Bound<'_, PyTuple>) -> bool {
                self.close();
                false
            }

            /// Pickles as "attach by name".
            fn __reduce__<'py>(
                slf: &Bound<'py, Self>,
            ) -> PyResult<(Bound<'py, PyType>, (String, u64, bool, u64))> {
                let me = slf.borrow();
                Ok((slf.get_type(), (me.0.name.clone(), me.0.capacity, false, me.0.slot.max(1))))
            }

            fn __repr__(&self) -> String {
                format!(
                    "{}(name={:?}, capacity={}{})",
                    stringify!($name),
                    self.0.name,
                    self.0.capacity,
                    if self.0.mapped.is_none() { ", closed" } else { "" }
                )
            }
        }
    };
}

allocator_class!(
    BumpAllocator,
    Kind::Bump,
    "A bump allocator in named shared memory: `allocate` is one atomic step, `reset` frees everything at once; `free` is refused."
);
allocator_class!(
    FreeListAllocator,
    Kind::FreeList,
    "Fixed-size slots (`slot_size`) with individual frees, lock-free, in named shared memory."
);
allocator_class!(
    SlabAllocator,
    Kind::Slab,
    "Fixed-size slots (`slot_size`) tracked by an atomic bitmap, in named shared memory."
);
allocator_class!(
    Heap,
    Kind::Heap,
    "shmpool's general allocator (any size, per-thread heaps, frees from any process) in named shared memory of up to `capacity` bytes."
);
