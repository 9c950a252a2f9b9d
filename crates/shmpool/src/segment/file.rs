//! Regular files mapped shared: a segment that persists on disk. Created exclusively
//! with an exact mode; opened read-write or read-only (open(2)).

use super::backend::{BackendKind, Commit};
use super::error::{AttachError, CreateError};
use super::fd::{open_checked, Locator, NewFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::path::Path;

/// Creates `path`, failing if it exists.
pub(crate) fn create(path: &Path, mode: u32, commit: Commit) -> Result<NewFd, CreateError> {
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(mode)).map_err(|e| match e {
        Errno::EXIST => CreateError::AlreadyExists(path.display().to_string()),
        errno => CreateError::Os { op: "open", errno },
    })?;
    if let Err(errno) = rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)) {
        let _ = std::fs::remove_file(path);
        return Err(CreateError::Os { op: "fchmod", errno });
    }
    Ok(NewFd::new(BackendKind::MappedFile, fd, Locator::Path(path.to_path_buf()), commit))
}

/// Opens the existing file `path`.
pub(crate) fn open(path: &Path, writable: bool) -> Result<NewFd, AttachError> {
    let fd = open_checked(&path.display().to_string(), writable, |rw| {
        let access = if rw { OFlags::RDWR } else { OFlags::RDONLY };
        // O_NONBLOCK: a FIFO at the path must not block the open; read_header then
        // rejects anything but a regular file.
        rustix::fs::open(path, access | OFlags::CLOEXEC | OFlags::NONBLOCK, Mode::empty())
    })?;
    Ok(NewFd::new(BackendKind::MappedFile, fd, Locator::Path(path.to_path_buf()), Commit::Eager))
}

/// Removes the file at `path`.
pub(crate) fn unlink(path: &Path) -> Result<(), AttachError> {
    rustix::fs::unlink(path).map_err(|e| match e {
        Errno::NOENT => AttachError::NotFound(path.display().to_string()),
        errno => AttachError::Os { op: "unlink", errno },
    })
}
