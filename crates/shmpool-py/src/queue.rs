//! `OffsetQueue`: a bounded MPMC ring of integers (offsets) between processes.

use crate::errors::{closed, Error, Result, ShmpoolError};
use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;
use pyo3::types::PyType;
use shmpool::channel::{Mpmc, RecvError, SendError};
use shmpool::segment::Access;
use shmpool::{Segment, SegmentOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        let deadline = t.and_then(|t| Instant::now().checked_add(t));
        let sent = py.allow_threads(move || {
            let tx = ring.sender().map_err(|e| e.to_string())?;
            // Each call is a sender of its own, so "no receiver" only means none is in a
            // `get` right now: wait on, as a queue does, until the deadline.
            loop {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let r = match left {
                    Some(t) => tx.send_timeout(offset, t),
                    None => tx.send(offset),
                };
                match r {
                    Err(SendError::Disconnected(_)) if left.is_none_or(|l| !l.is_zero()) => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    other => return Ok::<_, String>(other.is_ok()),
                }
            }
        });
        if sent.map_err(|e| Error::from(ShmpoolError::new_err(e)))? {
            Ok(())
        } else {
            Err(PyTimeoutError::new_err("the queue stayed full").into())
        }
    }

    /// Takes the next offset, waiting up to `timeout` seconds (`None`: as long as it
    /// takes); `TimeoutError` if none came.
    #[pyo3(signature = (timeout = None))]
    fn get(&self, py: Python<'_>, timeout: Option<f64>) -> Result<u64> {
        let ring = self.ring.clone().ok_or_else(closed)?;
        let t = self::timeout(timeout);
        let deadline = t.and_then(|t| Instant::now().checked_add(t));
        let got = py.allow_threads(move || {
            let rx = ring.receiver().map_err(|e| e.to_string())?;
            // As in `put`: no sender in a `put` right now is no reason to stop waiting.
            loop {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let r = match left {
                    Some(t) => rx.recv_timeout(t),
                    None => rx.recv(),
                };
                match r {
                    Err(RecvError::Disconnected) if left.is_none_or(|l| !l.is_zero()) => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    other => return Ok::<_, String>(other.ok()),
                }
            }
        });
        got.map_err(|e| Error::from(ShmpoolError::new_err(e)))?
            .ok_or_else(|| PyTimeoutError::new_err("nothing came before the timeout").into())
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
