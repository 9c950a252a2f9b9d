//! `View`: the buffer-protocol object behind `view()`'s zero-copy `memoryview`.
//!
//! It holds the mapping (an `Arc` of the allocator's segment) for as long as any
//! memoryview of it lives, so closing the allocator never leaves a view pointing at
//! unmapped memory.
//!
//! # Safety
//! The pointer is `len` bytes of the segment's mapping, checked against the committed
//! size when the view was made; the mapping lives while `_keep` does. Other processes
//! may write those bytes concurrently: Python sees them as plain bytes, as with
//! `multiprocessing.shared_memory`.

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::c_int;
use std::sync::Arc;

/// A window of shared memory exported through the buffer protocol.
#[pyclass(module = "shmpool", frozen)]
pub(crate) struct View {
    _keep: Arc<dyn Send + Sync>,
    ptr: usize,
    len: usize,
}

impl View {
    pub(crate) fn new(keep: Arc<dyn Send + Sync>, ptr: *mut u8, len: usize) -> Self {
        Self { _keep: keep, ptr: ptr as usize, len }
    }
}

#[pymethods]
impl View {
    /// The buffer protocol's export: `len` writable bytes at `ptr`.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no buffer to fill"));
        }
        let me = slf.get();
        // SAFETY: `view` is the interpreter's buffer to fill; the memory is mapped and
        // stays so while the exporter (`slf`, whose reference the buffer takes) lives.
        let r = unsafe {
            ffi::PyBuffer_FillInfo(view, slf.as_ptr(), me.ptr as *mut _, me.len as ffi::Py_ssize_t, 0, flags)
        };
        if r != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.len
    }
}
