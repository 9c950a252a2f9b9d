//! Framed messages over a byte stream (TCP with `TCP_NODELAY` between hosts, a Unix
//! socket on one): each frame is a little-endian `u32` length, then the
//! [postcard](https://docs.rs/postcard) encoding of one [`Envelope`] of page bytes.
//!
//! Layer: shmpool-dsm, under the node driver. A frame longer than [`MAX_FRAME`] is
//! refused before anything is read into memory, so a corrupt or hostile peer cannot make
//! a node allocate without bound; a stream that ends inside a frame is `Closed`.

use crate::protocol::Envelope;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;

/// The largest frame: a page of up to 64 KiB and its envelope, with room to spare.
pub const MAX_FRAME: u32 = 1 << 20;

/// What carries messages between nodes: page bytes as a `Vec<u8>`.
pub type Frame = Envelope<Vec<u8>>;

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The stream ended (at a frame boundary, or inside a frame).
    #[error("the peer closed the connection")]
    Closed,
    /// The frame announces more bytes than a frame may hold.
    #[error("a frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(u32),
    /// The bytes are not an envelope.
    #[error("undecodable frame: {0}")]
    Decode(#[from] postcard::Error),
    /// The stream failed.
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for TransportError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                TransportError::Closed
            }
            _ => TransportError::Io(e),
        }
    }
}

/// Writes one frame (and flushes), with one write: a segment per message on TCP.
pub fn write_frame(w: &mut impl Write, env: &Frame) -> Result<(), TransportError> {
    let mut buf = postcard::to_extend(env, vec![0u8; 4])?;
    let len = u32::try_from(buf.len() - 4).unwrap_or(u32::MAX);
    if len > MAX_FRAME {
        return Err(TransportError::TooLarge(len));
    }
    buf[..4].copy_from_slice(&len.to_le_bytes());
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, TransportError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(TransportError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(postcard::from_bytes(&body)?)
}

/// Where a node is reached: a TCP address (`10.0.0.2:7000`), or the path of a Unix
/// socket (`unix:/run/dsm/0.sock`) for nodes on one host, which skips the TCP stack.
/// All the nodes of a region are reached the same way.
///
/// ```
/// use shmpool_dsm::transport::Peer;
/// let tcp: Peer = "127.0.0.1:7000".parse().unwrap();
/// let unix: Peer = "unix:/tmp/node-0.sock".parse().unwrap();
/// assert_eq!(unix.to_string(), "unix:/tmp/node-0.sock");
/// assert!(matches!(tcp, Peer::Tcp(_)));
/// assert!("unix:".parse::<Peer>().is_err() && "nowhere".parse::<Peer>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A TCP address: the node listens there (or on [`RegionOptions::listen`]).
    ///
    /// [`RegionOptions::listen`]: crate::region::RegionOptions::listen
    Tcp(SocketAddr),
    /// A Unix socket's path: the node binds it (replacing a stale socket nobody
    /// listens on) and removes it once every peer has connected.
    Unix(PathBuf),
}

/// The longest Unix socket path (`sun_path` holds 108 bytes, with its terminating NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// Why a peer's address cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither HOST_IP:PORT nor unix:PATH (a path of 1 to {MAX_UNIX_PATH} bytes)")]
pub struct BadPeer(pub String);

impl std::str::FromStr for Peer {
    type Err = BadPeer;
    fn from_str(s: &str) -> Result<Self, BadPeer> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() && path.len() <= MAX_UNIX_PATH => Ok(Peer::Unix(path.into())),
            Some(_) => Err(BadPeer(s.into())),
            None => s.parse().map(Peer::Tcp).map_err(|_| BadPeer(s.into())),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(a: SocketAddr) -> Self {
        Peer::Tcp(a)
    }
}

/// A TCP connection to a peer, with `TCP_NODELAY` (a fault waits on every message).
pub fn connect(addr: impl ToSocketAddrs) -> Result<TcpStream, TransportError> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Access, Msg};
    use std::os::unix::net::UnixStream;

    fn every_message() -> Vec<Frame> {
        let m = |msg| Envelope { from: 1, to: 2, epoch: 3, msg };
        vec![
            m(Msg::Request { page: 7, from: 1, write: true }),
            m(Msg::Recall { page: 7, invalidate: false }),
            m(Msg::Recalled { page: 7, from: 1, data: (0..=255).cycle().take(4096).collect(), kept: true }),
            m(Msg::Invalidate { page: 9 }),
            m(Msg::Invalidated { page: 9, from: 2 }),
            m(Msg::Grant { page: 7, access: Access::Modified, data: None }),
            m(Msg::Grant { page: 7, access: Access::Exclusive, data: Some(Vec::new()) }),
            m(Msg::Grant { page: 7, access: Access::Shared, data: Some(vec![5; 4096]) }),
            m(Msg::Lost { page: 7 }),
            m(Msg::Leave),
        ]
    }

    #[test]
    fn every_message_crosses_a_unix_socket_whole() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let sent = every_message();
        let to_send = sent.clone();
        let writer = std::thread::spawn(move || {
            for f in &to_send {
                write_frame(&mut a, f).unwrap();
            }
        });
        let got: Vec<Frame> = (0..sent.len()).map(|_| read_frame(&mut b).unwrap()).collect();
        writer.join().unwrap();
        assert_eq!(got, sent);
        assert!(matches!(read_frame(&mut b), Err(TransportError::Closed)), "the writer hung up");
    }

    #[test]
    fn frames_cross_loopback_tcp_with_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            for _ in 0..100 {
                let f = read_frame(&mut s).unwrap();
                write_frame(&mut s, &f).unwrap();
            }
        });
        let mut c = connect(addr).unwrap();
        assert!(c.nodelay().unwrap());
        for (i, f) in every_message().into_iter().cycle().take(100).enumerate() {
            write_frame(&mut c, &f).unwrap();
            assert_eq!(read_frame(&mut c).unwrap(), f, "echo {i}");
        }
        echo.join().unwrap();
    }

    #[test]
    fn oversized_truncated_and_garbled_frames_are_refused() {
        let mut huge = &(MAX_FRAME + 1).to_le_bytes()[..];
        assert!(matches!(read_frame(&mut huge), Err(TransportError::TooLarge(l)) if l == MAX_FRAME + 1));
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &every_message()[2]).unwrap();
        let mut cut = &bytes[..bytes.len() - 10];
        assert!(matches!(read_frame(&mut cut), Err(TransportError::Closed)));
        let garbled = [3, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut &garbled[..]), Err(TransportError::Decode(_))));
    }
}
