//! `OffsetQueue`: a bounded MPMC ring of integers (offsets) between processes.

use crate::errors::{closed, Error, Result, ShmpoolError};
use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;
use pyo3::types::PyType;
use shmpool::channel::{Mpmc, RecvError, SendError};
use shmpool::segment::Access;
use shmpool::{Segment, SegmentOptions};
use std::sync::Arc;
use std::time::Duration;

/// A queue of integers (block offsets, usually) shared by any processes.
#[pyclass(module = "shmpool")]
pub(crate) struct OffsetQueue {
    name: String,
    capacity: u32,
    ring: Option<Arc<Mpmc<u64>>>,
}

fn timeout(t: Option<f64>) -> Option<Duration> {
    t.map(|s| Duration::from_secs_f64(s.max(0.0)))
}

#[pymethods]
impl OffsetQueue {
    #[new]
    #[pyo3(signature = (name, capacity = 1024, create = true))]
    fn new(name: String, capacity: u32, create: bool) -> Result<Self> {
        let ring = if create {
            let size = 4096 + Mpmc::<u64>::footprint(capacity)?;
            let seg = SegmentOptions::new().size(size).max_size(size).create_shm(&name)?;
            let at = seg.data_start();
            Mpmc::create(seg, at, capacity).inspect_err(|_| drop(Segment::unlink_shm(&name)))?
        } else {
            let seg = Segment::open_shm(&name, Access::ReadWrite)?;
            let at = seg.data_start();
            Mpmc::open(seg, at)?
        };
        let capacity = ring.capacity();
        Ok(Self { name, capacity, ring: Some(Arc::new(ring)) })
    }

    /// Puts `offset`, waiting up to `timeout` seconds for room (`None`: as long as it
    /// takes); `TimeoutError` if none came.
    #[pyo3(signature = (offset, timeout = None))]
    fn put(&self, py: Python<'_>, offset: u64, timeout: Option<f64>) -> Result<()> {
        let ring = self.ring.clone().ok_or_else(closed)?;
        let t = self::timeout(timeout);
        let sent = py.allow_threads(move || {
            let tx = ring.sender().map_err(|e| e.to_string())?;
            let r = match t {
                Some(t) => tx.send_timeout(offset, t),
                None => tx.send(offset),
            };
            drop(tx);
            Ok::<_, String>(r)
        });
        match sent.map_err(|e| Error::from(ShmpoolError::new_err(e)))? {
            Ok(()) => Ok(()),
            Err(SendError::Timeout(_)) => Err(PyTimeoutError::new_err("the queue stayed full").into()),
            Err(SendError::Disconnected(_)) => Err(ShmpoolError::new_err("the queue has no receiver").into()),
        }
    }

    /// Takes the next offset, waiting up to `timeout` seconds (`None`: as long as it
    /// takes); `TimeoutError` if none came.
    #[pyo3(signature = (timeout = None))]
    fn get(&self, py: Python<'_>, timeout: Option<f64>) -> Result<u64> {
        let ring = self.ring.clone().ok_or_else(closed)?;
        let t = self::timeout(timeout);
        let got = py.allow_threads(move || {
            let rx = ring.receiver().map_err(|e| e.to_string())?;
            let r = match t {
                Some(t) => rx.recv_timeout(t),
                None => rx.recv(),
            };
            drop(rx);
            Ok::<_, String>(r)
        });
        match got.map_err(|e| Error::from(ShmpoolError::new_err(e)))? {
            Ok(v) => Ok(v),
            Err(RecvError::Timeout | RecvError::Disconnected) => {
                Err(PyTimeoutError::new_err("nothing came before the timeout").into())
            }
        }
    }

    /// Unmaps the queue here.
    fn close(&mut self) {
        self.ring = None;
    }

    /// Removes the queue's name.
    fn unlink(&self) -> Result<()> {
        Ok(Segment::unlink_shm(&self.name)?)
    }

    /// The queue's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Offsets it holds at most.
    #[getter]
    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    /// Pickles as "attach by name".
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyType>, (String, u32, bool))> {
        let me = slf.borrow();
        Ok((slf.get_type(), (me.name.clone(), me.capacity, false)))
    }
}
