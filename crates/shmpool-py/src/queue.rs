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

/// A Python timeout in seconds: `None`, infinite or too long to represent is no deadline;
/// negative is none at all; NaN is refused.
fn timeout(t: Option<f64>) -> Result<Option<Instant>> {
    match t {
        None => Ok(None),
        Some(s) if s.is_nan() => Err(pyo3::exceptions::PyValueError::new_err("timeout is NaN").into()),
        Some(s) => {
            Ok(Duration::try_from_secs_f64(s.max(0.0)).ok().and_then(|d| Instant::now().checked_add(d)))
        }
    }
}

/// How long one wait lasts before the interpreter is asked for signals (Ctrl-C).
const SLICE: Duration = Duration::from_millis(50);

/// The next slice of a wait until `deadline`, or `None` once it passed.
fn slice(deadline: Option<Instant>) -> Option<Duration> {
    match deadline {
        None => Some(SLICE),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            (!left.is_zero()).then(|| left.min(SLICE))
        }
    }
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
        let deadline = self::timeout(timeout)?;
        loop {
            let Some(wait) = slice(deadline) else {
                return Err(PyTimeoutError::new_err("the queue stayed full").into());
            };
            let r = py.allow_threads(|| ring.sender().map(|tx| tx.send_timeout(offset, wait)));
            match r.map_err(|e| Error::from(ShmpoolError::new_err(e.to_string())))? {
                Ok(()) => return Ok(()),
                // Each call is a sender of its own: "no receiver" only means none is in a
                // `get` right now, so wait on, as a queue does.
                Err(SendError::Disconnected(_)) => {
                    py.allow_threads(|| std::thread::sleep(Duration::from_millis(1)))
                }
                Err(SendError::Timeout(_)) => {}
            }
            py.check_signals()?;
        }
    }

    /// Takes the next offset, waiting up to `timeout` seconds (`None`: as long as it
    /// takes); `TimeoutError` if none came.
    #[pyo3(signature = (timeout = None))]
    fn get(&self, py: Python<'_>, timeout: Option<f64>) -> Result<u64> {
        let ring = self.ring.clone().ok_or_else(closed)?;
        let deadline = self::timeout(timeout)?;
        loop {
            let Some(wait) = slice(deadline) else {
                return Err(PyTimeoutError::new_err("nothing came before the timeout").into());
            };
            let r = py.allow_threads(|| ring.receiver().map(|rx| rx.recv_timeout(wait)));
            match r.map_err(|e| Error::from(ShmpoolError::new_err(e.to_string())))? {
                Ok(v) => return Ok(v),
                // As in `put`: no sender in a `put` right now is no reason to stop waiting.
                Err(RecvError::Disconnected) => {
                    py.allow_threads(|| std::thread::sleep(Duration::from_millis(1)))
                }
                Err(RecvError::Timeout) => {}
            }
            py.check_signals()?;
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
