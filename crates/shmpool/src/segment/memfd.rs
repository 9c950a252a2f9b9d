//! Anonymous `memfd` segments (memfd_create(2)): shared with forked children, or with
//! unrelated processes by passing the descriptor over a Unix socket. The file is sealed
//! against shrinking (`F_SEAL_SHRINK`, fcntl(2)), so no holder of the descriptor can
//! cut pages out from under another process's mapping.

use super::backend::{BackendKind, Commit};
use super::error::{os, CreateError, NameError};
use super::fd::{Locator, NewFd};
use rustix::fd::AsFd;
use rustix::fs::{MemfdFlags, SealFlags};

/// Longest memfd label the kernel keeps (249 bytes; memfd_create(2)).
pub const MAX_LABEL_LEN: usize = 249;

/// Checks a memfd label: it only names the file in `/proc/PID/fd`, but the kernel
/// rejects NULs and long labels.
pub(crate) fn check_label(label: &str) -> Result<(), NameError> {
    if label.contains('\0') {
        return Err(NameError::ContainsNul);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::TooLong { len: label.len(), max: MAX_LABEL_LEN });
    }
    Ok(())
}

/// Creates an empty memfd labelled `label`, open for sealing.
pub(crate) fn create(label: &str, commit: Commit) -> Result<NewFd, CreateError> {
    check_label(label)?;
    let fd = rustix::fs::memfd_create(label, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(os("memfd_create"))?;
    Ok(NewFd::new(BackendKind::Memfd, fd, Locator::Fd, commit))
}

/// Forbids shrinking the file from now on.
pub(crate) fn seal(fd: impl AsFd) -> Result<(), CreateError> {
    rustix::fs::fcntl_add_seals(fd, SealFlags::SHRINK).map_err(os("fcntl(F_ADD_SEALS)"))?;
    Ok(())
}
