//! Named POSIX shared-memory segments (shm_open(3), shm_unlink(3)): unrelated processes
//! attach by name. Created exclusively (`O_EXCL`) with an exact mode (0600 by default,
//! `fchmod` after the umask), removed only by an explicit [`unlink`].

use super::backend::{BackendKind, Commit};
use super::error::{AttachError, CreateError};
use super::fd::{open_checked, Locator, NewFd};
use super::name::ShmName;
use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::shm;

/// Creates the object `name`, failing if it exists.
pub(crate) fn create(name: &ShmName, mode: u32, commit: Commit) -> Result<NewFd, CreateError> {
    let flags = shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR;
    let fd = shm::open(name.as_str(), flags, Mode::from_raw_mode(mode)).map_err(|e| match e {
        Errno::EXIST => CreateError::AlreadyExists(name.to_string()),
        errno => CreateError::Os { op: "shm_open", errno },
    })?;
    if let Err(errno) = rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)) {
        let _ = shm::unlink(name.as_str());
        return Err(CreateError::Os { op: "fchmod", errno });
    }
    Ok(NewFd::new(BackendKind::PosixShm, fd, Locator::Name(name.clone()), commit))
}

/// Opens the existing object `name`.
pub(crate) fn open(name: &ShmName, writable: bool) -> Result<NewFd, AttachError> {
    let fd = open_checked(name.as_str(), writable, |rw| {
        let access = if rw { shm::OFlags::RDWR } else { shm::OFlags::RDONLY };
        // O_NONBLOCK: a FIFO planted under the name must not block the open.
        let nonblock = shm::OFlags::from_bits_retain(rustix::fs::OFlags::NONBLOCK.bits());
        shm::open(name.as_str(), access | nonblock, Mode::empty())
    })?;
    Ok(NewFd::new(BackendKind::PosixShm, fd, Locator::Name(name.clone()), Commit::Eager))
}

/// Removes the name `name`; processes that have it mapped keep their mapping.
pub fn unlink(name: &str) -> Result<(), AttachError> {
    let name = ShmName::new(name)?;
    shm::unlink(name.as_str()).map_err(|e| match e {
        Errno::NOENT => AttachError::NotFound(name.to_string()),
        errno => AttachError::Os { op: "shm_unlink", errno },
    })
}
