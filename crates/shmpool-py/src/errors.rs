//! The Python exceptions, and the conversions from shmpool's typed errors.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use shmpool::heap::{AllocError, FreeError, HeapError};
use shmpool::pools::{BlockError, PoolError};
use shmpool::segment::{AccessError, AttachError, CreateError};

create_exception!(shmpool, ShmpoolError, PyException, "Base class of every shmpool error.");
create_exception!(
    shmpool,
    DoubleFreeError,
    ShmpoolError,
    "The block was freed already (or never allocated)."
);
create_exception!(shmpool, OutOfMemoryError, ShmpoolError, "The allocator has no room for the request.");
create_exception!(
    shmpool,
    BadOffsetError,
    ShmpoolError,
    "The offset (or range) is not a block of this allocator."
);
create_exception!(shmpool, ClosedError, ShmpoolError, "The object was closed.");
create_exception!(
    shmpool,
    NotFoundError,
    ShmpoolError,
    "No shared memory of that name (or not of this kind)."
);
create_exception!(shmpool, ExistsError, ShmpoolError, "Shared memory of that name exists already.");

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ShmpoolError", py.get_type::<ShmpoolError>())?;
    m.add("DoubleFreeError", py.get_type::<DoubleFreeError>())?;
    m.add("OutOfMemoryError", py.get_type::<OutOfMemoryError>())?;
    m.add("BadOffsetError", py.get_type::<BadOffsetError>())?;
    m.add("ClosedError", py.get_type::<ClosedError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("ExistsError", py.get_type::<ExistsError>())?;
    Ok(())
}

/// A shmpool error as the Python exception that names it.
pub(crate) struct Error(PyErr);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        e.0
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Error {
        Error(e)
    }
}

pub(crate) type Result<T> = core::result::Result<T, Error>;

impl From<BlockError> for Error {
    fn from(e: BlockError) -> Error {
        let msg = e.to_string();
        Error(match e {
            BlockError::NotAllocated(_) => DoubleFreeError::new_err(msg),
            BlockError::Exhausted | BlockError::TooLarge { .. } => OutOfMemoryError::new_err(msg),
            BlockError::BadOffset(_)
            | BlockError::BadIndex(_)
            | BlockError::BadAlign(_)
            | BlockError::Access(_) => BadOffsetError::new_err(msg),
            _ => ShmpoolError::new_err(msg),
        })
    }
}

impl From<AllocError> for Error {
    fn from(e: AllocError) -> Error {
        let msg = e.to_string();
        Error(match e {
            AllocError::OutOfMemory(_)
            | AllocError::TooLarge(_)
            | AllocError::NoThreadHeap(_)
            | AllocError::NoProcessSlot(_) => OutOfMemoryError::new_err(msg),
            _ => ShmpoolError::new_err(msg),
        })
    }
}

impl From<FreeError> for Error {
    fn from(e: FreeError) -> Error {
        let msg = e.to_string();
        Error(match e {
            FreeError::DoubleFree(_) | FreeError::NotAllocated(_) => DoubleFreeError::new_err(msg),
            _ => BadOffsetError::new_err(msg),
        })
    }
}

impl From<AccessError> for Error {
    fn from(e: AccessError) -> Error {
        Error(BadOffsetError::new_err(e.to_string()))
    }
}

impl From<PoolError> for Error {
    fn from(e: PoolError) -> Error {
        let msg = e.to_string();
        Error(match e {
            PoolError::NotAPool(_)
            | PoolError::WrongKind { .. }
            | PoolError::Mismatch(_)
            | PoolError::Corrupted { .. } => NotFoundError::new_err(msg),
            PoolError::Grow(_) | PoolError::Alloc(_) => OutOfMemoryError::new_err(msg),
            PoolError::InvalidGeometry(_) => pyo3::exceptions::PyValueError::new_err(msg),
            _ => ShmpoolError::new_err(msg),
        })
    }
}

impl From<CreateError> for Error {
    fn from(e: CreateError) -> Error {
        let msg = e.to_string();
        Error(match e {
            CreateError::AlreadyExists(_) => ExistsError::new_err(msg),
            CreateError::Name(_) | CreateError::InvalidSize(_) => {
                pyo3::exceptions::PyValueError::new_err(msg)
            }
            CreateError::NoSpace { .. } => OutOfMemoryError::new_err(msg),
            _ => ShmpoolError::new_err(msg),
        })
    }
}

impl From<AttachError> for Error {
    fn from(e: AttachError) -> Error {
        let msg = e.to_string();
        Error(match e {
            AttachError::NotFound(_)
            | AttachError::NotShmpool { .. }
            | AttachError::BadMagic { .. }
            | AttachError::Empty
            | AttachError::Truncated { .. }
            | AttachError::Uninitialized => NotFoundError::new_err(msg),
            AttachError::Name(_) => pyo3::exceptions::PyValueError::new_err(msg),
            _ => ShmpoolError::new_err(msg),
        })
    }
}

impl From<HeapError> for Error {
    fn from(e: HeapError) -> Error {
        let msg = e.to_string();
        Error(match e {
            HeapError::NotAHeap => NotFoundError::new_err(msg),
            HeapError::TooSmall => pyo3::exceptions::PyValueError::new_err(msg),
            HeapError::Grow(_) => OutOfMemoryError::new_err(msg),
            _ => ShmpoolError::new_err(msg),
        })
    }
}

/// An offset that names no allocated block, for a read, write or view (a free of one is a
/// double free).
pub(crate) fn not_a_block(off: u64) -> Error {
    Error(BadOffsetError::new_err(format!("offset {off} is not in an allocated block")))
}

pub(crate) fn closed() -> Error {
    Error(ClosedError::new_err("the object was closed"))
}
