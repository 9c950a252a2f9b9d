//! Python bindings of shmpool: allocators in named shared memory for `multiprocessing`.
//!
//! Classes `BumpAllocator`, `FreeListAllocator`, `SlabAllocator` and `Heap` each own a
//! POSIX shm segment named by the caller, holding one allocator (a `pools` type at the
//! segment's first data offset, or a `heap::Heap`); `OffsetQueue` is an MPMC ring of
//! offsets. Objects pickle as "attach by name", so both the fork and the spawn start
//! methods hand them to workers. Errors are Python exceptions (`errors.rs`); a closed
//! object refuses every call, and a `memoryview` from `view` keeps its mapping alive on
//! its own, so nothing here can crash the interpreter.
#![allow(unsafe_code)]

mod alloc;
mod errors;
mod queue;
mod view;

use pyo3::prelude::*;

#[pymodule]
fn _shmpool(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<alloc::BumpAllocator>()?;
    m.add_class::<alloc::FreeListAllocator>()?;
    m.add_class::<alloc::SlabAllocator>()?;
    m.add_class::<alloc::Heap>()?;
    m.add_class::<queue::OffsetQueue>()?;
    m.add_class::<view::View>()?;
    errors::register(m)?;
    Ok(())
}
