//! Passing a segment's descriptor to an unrelated process over a Unix socket
//! (`SCM_RIGHTS`, unix(7), sendmsg(2), recvmsg(2)).
//!
//! The sender attaches the segment's 8-byte id as the message body; the receiver checks
//! that the header of the segment it maps carries the same id.

use super::error::{os, AttachError, FdPassError};
use super::{Access, Segment};
use core::mem::MaybeUninit;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::{Errno, IoSlice, IoSliceMut};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};

/// Sends `fd` and `body` (at least one byte) as one message on the Unix socket `sock`.
pub fn send_fd(sock: impl AsFd, fd: BorrowedFd<'_>, body: &[u8]) -> Result<(), FdPassError> {
    if body.is_empty() {
        return Err(FdPassError::EmptyBody);
    }
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let pushed = control.push(SendAncillaryMessage::ScmRights(&fds));
    debug_assert!(pushed, "cmsg space fits one descriptor");
    loop {
        match rustix::net::sendmsg(&sock, &[IoSlice::new(body)], &mut control, SendFlags::NOSIGNAL) {
            Ok(n) if n == body.len() => return Ok(()),
            Ok(_) => return Err(FdPassError::Truncated),
            Err(Errno::INTR) => continue,
            Err(errno) => return Err(FdPassError::Os { op: "sendmsg", errno }),
        }
    }
}

/// Receives one descriptor and up to `body.len()` bytes from the Unix socket `sock`.
/// Returns the descriptor and how many body bytes arrived.
pub fn recv_fd(sock: impl AsFd, body: &mut [u8]) -> Result<(OwnedFd, usize), FdPassError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        let mut iov = [IoSliceMut::new(body)];
        match rustix::net::recvmsg(&sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(Errno::INTR) => continue,
            r => break r.map_err(os("recvmsg"))?,
        }
    };
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Err(FdPassError::Closed);
    }
    if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(FdPassError::Truncated);
    }
    match fds.len() {
        1 => Ok((fds.pop().expect("one descriptor"), msg.bytes)),
        n => Err(FdPassError::WrongCount(n)),
    }
}

impl Segment {
    /// Sends this segment's descriptor over the Unix socket `sock`; the peer calls
    /// [`Segment::receive`].
    pub fn send_to(&self, sock: impl AsFd) -> Result<(), FdPassError> {
        let fd = self.handle().fd().ok_or(FdPassError::NoFd)?;
        send_fd(sock, fd, &self.segment_id().to_ne_bytes())
    }

    /// Receives a segment's descriptor sent with [`Segment::send_to`] and attaches it.
    pub fn receive(sock: impl AsFd, access: Access) -> Result<Segment, AttachError> {
        let mut id = [0u8; 8];
        let (fd, n) = recv_fd(sock, &mut id).map_err(AttachError::Receive)?;
        let seg = Segment::from_fd(fd, access)?;
        if n != 8 || u64::from_ne_bytes(id) != seg.segment_id() {
            return Err(AttachError::Corrupted(
                "the received descriptor is not the segment the sender announced".into(),
            ));
        }
        Ok(seg)
    }
}
