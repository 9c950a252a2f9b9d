//! A node: the protocol, its links and its memory ([`Memory`]: a mapped region's, or
//! [`Pages`] of ordinary memory with explicit accesses `read`, `write` and `cas_u64`).
//! An access this node's copy does not allow sends the request and waits for the grant
//! ([`NodeDriver::acquire`], which the fault handlers use too).
//!
//! Layer: shmpool-dsm, above `protocol` and `transport`. One thread per incoming link
//! reads frames and hands them to the protocol under the node's lock. What the protocol
//! answers is queued under that lock and sent after it is released (a node never
//! blocks on a socket while holding it), in the order made, by whichever thread gets
//! to the link first: the protocol relies on FIFO links, and several threads handle
//! messages. A node's messages to itself are handled on the spot. [`Cluster::local`]
//! wires several nodes of one process together over Unix socket pairs, for tests.

use crate::protocol::{Access, Fault, Memory, Msg, Node, NodeId, Page};
use crate::transport::{read_frame, write_frame, Frame, Peer};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long an access waiting for a page spins before it sleeps. It spins yielding the
/// CPU: the thread it waits for (a link's reader) may need that CPU to run.
const ACQUIRE_SPIN: Duration = Duration::from_micros(150);

/// How long a page granted (or upgraded) here is kept before a recall or invalidation
/// takes it (Mirage's window): long enough for the faulting access to be retried. The
/// hold ends early once a thread that runs the protocol itself goes on to write the
/// page ([`NodeDriver::written`]). Measured with the ping-pong bench: 40 µs gave
/// 1.5–2× the transfers of none, and more than 20 or 100 µs did. The wait yields the
/// CPU, which the thread that is to use the page may need.
const HOLD: Duration = Duration::from_micros(40);

/// How long the hold lasts once the faulting thread goes on to write the page: it
/// returns from the fault handler and retries the access, which a recall must not
/// overtake (the lock it waits for may be handed to the recall first).
const RETRY: Duration = Duration::from_micros(5);

/// How long a page granted Modified to a read (a migratory page, [`Stats::migratory`])
/// is held once the faulting thread goes on with that read, before a recall may take
/// it: the thread retries its access and then writes the page, without a fault that
/// would tell. A page taken before that write goes back unwritten, and the home stops
/// granting it so. Measured with the ping-pong bench (4 runs each): 3 µs gave as many
/// transfers as 5 µs over TCP and 15% more over Unix sockets; 10 and 20 µs fewer.
const MIGRANT_WRITE: Duration = Duration::from_micros(3);

/// How long a page granted Modified to a read (migratory) is held at most, rather than
/// [`HOLD`]: the thread that asked is woken and goes on to read and write it, and no
/// fault tells when (with userfaultfd's handler thread; a thread that runs the
/// protocol itself ends the hold sooner, [`MIGRANT_WRITE`]). Measured with the
/// ping-pong bench with the handler thread (3 runs each): 10 µs gave 1.3–1.6× the
/// transfers of the whole hold, and more than 5, 15, 20 or 30 µs did.
const MIGRANT_HOLD: Duration = Duration::from_micros(10);

/// A link's writing end (Unix socket or TCP), which can also be shut down.
pub trait Link: Write + Send {
    /// Ends the link both ways: the peer's reader sees it closed.
    fn shut(&self);
}

impl Link for TcpStream {
    fn shut(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Link for UnixStream {
    fn shut(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

type Writer = Box<dyn Link>;

/// The first bytes on a link: `SPD` and the wire format's version, then the sender's
/// id, the number of nodes, pages and the page size, which every node must agree on.
const HELLO: usize = 16;

/// The frames' format: a node of another version is refused when it joins (1: the
/// first format with a version in its hello).
const WIRE_VERSION: u8 = 1;

/// How long a connection has to say hello before it is dropped.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// A link's TCP options: no Nagle delay (a fault waits on every message), and a peer
/// host that vanishes (crashed, or cut off) is counted dead within about 10 s: probes
/// after 4 s of silence, and unacknowledged data given up after 10 s.
fn tune(s: &TcpStream) -> std::io::Result<()> {
    use rustix::net::sockopt;
    s.set_nodelay(true)?;
    sockopt::set_socket_keepalive(s, true)?;
    sockopt::set_tcp_keepidle(s, Duration::from_secs(4))?;
    sockopt::set_tcp_keepintvl(s, Duration::from_secs(1))?;
    sockopt::set_tcp_keepcnt(s, 4)?;
    sockopt::set_tcp_user_timeout(s, 10_000)?;
    Ok(())
}

/// Where a node waits for its peers' links.
enum Listener {
    Tcp(TcpListener),
    /// The socket, and its path, removed when the listener goes (once every peer has
    /// connected, or joining failed) if it is still this socket (its device and inode).
    Unix(UnixListener, PathBuf, (u64, u64)),
}

impl Listener {
    /// Listens (non-blocking) at `at`, or on `listen` for a TCP node. A Unix socket left
    /// behind by a node that ended is replaced; one that a live node listens on, or a
    /// file that is not a socket, is `AddrInUse` (and left alone).
    fn bind(at: &Peer, listen: Option<SocketAddr>) -> std::io::Result<Listener> {
        let l = match at {
            Peer::Tcp(a) => Listener::Tcp(TcpListener::bind(listen.unwrap_or(*a))?),
            Peer::Unix(path) => {
                let l = match UnixListener::bind(path) {
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        use std::os::unix::fs::FileTypeExt;
                        let socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
                        let stale = socket
                            && UnixStream::connect(path)
                                .is_err_and(|c| c.kind() == std::io::ErrorKind::ConnectionRefused);
                        if !stale {
                            return Err(e); // not a socket, or a live node's (which drops the probe)
                        }
                        std::fs::remove_file(path)?;
                        UnixListener::bind(path)?
                    }
                    other => other?,
                };
                let id = std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))?;
                Listener::Unix(l, path.clone(), id)
            }
        };
        match &l {
            Listener::Tcp(t) => t.set_nonblocking(true)?,
            Listener::Unix(u, ..) => u.set_nonblocking(true)?,
        }
        Ok(l)
    }

    /// The next peer's link (`WouldBlock`: none yet), blocking, and who it is from.
    fn accept(&self) -> std::io::Result<(Stream, String)> {
        let (s, from) = match self {
            Listener::Tcp(t) => t.accept().map(|(s, from)| (Stream::Tcp(s), from.to_string()))?,
            Listener::Unix(u, path, _) => {
                u.accept().map(|(s, _)| (Stream::Unix(s), format!("a peer on unix:{}", path.display())))?
            }
        };
        s.set_nonblocking(false)?;
        if let Stream::Tcp(t) = &s {
            tune(t)?;
        }
        Ok((s, from))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path, bound) = self {
            // Not a socket another process put there since.
            if std::fs::symlink_metadata(&*path).is_ok_and(|m| (m.dev(), m.ino()) == *bound) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// One link, either way.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(to: &Peer) -> std::io::Result<Stream> {
        Ok(match to {
            Peer::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                tune(&s)?;
                Stream::Tcp(s)
            }
            Peer::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
        })
    }
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(b),
            Stream::Unix(s) => s.write_all(b),
        }
    }
    fn read_exact(&mut self, b: &mut [u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.read_exact(b),
            Stream::Unix(s) => s.read_exact(b),
        }
    }
    fn into_link(self) -> Writer {
        match self {
            Stream::Tcp(s) => Box::new(s),
            Stream::Unix(s) => Box::new(s),
        }
    }
    fn into_reader(self) -> Reader {
        match self {
            Stream::Tcp(s) => Box::new(s),
            Stream::Unix(s) => Box::new(s),
        }
    }
}

fn hello(id: NodeId, nodes: u16, pages: u32, page_size: usize) -> [u8; HELLO] {
    let mut h = [0u8; HELLO];
    h[0..4].copy_from_slice(&[b'S', b'P', b'D', WIRE_VERSION]);
    h[4..6].copy_from_slice(&id.to_le_bytes());
    h[6..8].copy_from_slice(&nodes.to_le_bytes());
    h[8..12].copy_from_slice(&pages.to_le_bytes());
    h[12..16].copy_from_slice(&(page_size as u32).to_le_bytes());
    h
}
/// A link's reading end: a socket, which [`await_input`] can poll.
pub(crate) trait Incoming: Read + std::os::fd::AsFd + Send {}
impl<T: Read + std::os::fd::AsFd + Send> Incoming for T {}
type Reader = Box<dyn Incoming>;

/// Polls `fd` for input, yielding between polls, for up to `d`: whether bytes came
/// meanwhile. The end of the stream or an error ends the poll too, for the read that
/// follows to report.
fn await_input(fd: std::os::fd::BorrowedFd<'_>, d: Duration) -> bool {
    use rustix::net::{recv, RecvFlags};
    let until = Instant::now() + d;
    let mut one = [0u8; 1];
    while Instant::now() < until {
        match recv(fd, &mut one, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((n, _)) => return n > 0,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => std::thread::yield_now(),
            Err(_) => return false,
        }
    }
    false
}

/// A node's pages in ordinary memory, with their protection (the explicit-access
/// driver). An empty page received stands for a page of zeros.
#[derive(Debug)]
pub struct Pages {
    bytes: Vec<Vec<u8>>,
    access: Vec<Access>,
}

impl Pages {
    /// `pages` zeroed pages of `page_size` bytes.
    pub fn new(pages: u32, page_size: usize) -> Self {
        Pages {
            bytes: vec![vec![0; page_size]; pages as usize],
            access: vec![Access::Invalid; pages as usize],
        }
    }
}

impl Memory<Vec<u8>> for Pages {
    fn read(&self, page: Page) -> Vec<u8> {
        self.bytes[page as usize].clone()
    }
    fn write(&mut self, page: Page, data: Vec<u8>) {
        let b = &mut self.bytes[page as usize];
        if data.is_empty() {
            b.fill(0);
        } else {
            *b = data;
        }
    }
    fn protect(&mut self, page: Page, access: Access) {
        self.access[page as usize] = access;
    }
}

/// A node's protocol state and its memory, under the node's lock.
pub(crate) struct State<M> {
    pub(crate) node: Node<Vec<u8>>,
    pub(crate) pages: M,
    /// Where this node's request for each page stands.
    pub(crate) asked: Vec<Asked>,
    /// The node left: no message touches its memory any more.
    pub(crate) closed: bool,
    /// Nodes that said they leave (a bit each).
    leaving: u64,
    /// Accesses asleep on `changed`, waiting for a page: a message handled wakes them
    /// only if there are any (a notification is a system call even when nobody waits).
    sleepers: u32,
    /// Read faults going through the region in order: the last one's page, the last
    /// page asked for ahead of it, and how many faults in a row were in order.
    stream: Option<(Page, Page, u32)>,
}

/// Where a node's request for a page stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    /// None on its way.
    No,
    /// On its way, for a read.
    Read,
    /// On its way, for a write.
    Write,
    /// Asked for ahead of reads going through the region, and no thread has faulted on
    /// it yet (it is not held when it comes).
    Ahead,
}

/// Read faults on pages in order that start reading ahead.
const READ_AHEAD_AFTER: u32 = 3;

/// The deepest read-ahead: requests a fault may queue at once, under the node's lock.
pub const MAX_READ_AHEAD: u32 = 1024;

impl<M: Memory<Vec<u8>>> State<M> {
    /// Whether a request for `page` is on its way; if so, a thread now waits for it, so
    /// a page read ahead is held when it comes like any other.
    pub(crate) fn awaited(&mut self, page: Page) -> bool {
        let asked = &mut self.asked[page as usize];
        if *asked == Asked::Ahead {
            *asked = Asked::Read;
        }
        *asked != Asked::No
    }

    /// Requests for the pages after `page`, a read fault of this node's, once the read
    /// faults go through the region in order: up to `depth` pages ahead that this node
    /// holds no copy of and has not asked for, asked for at once, so that the reader
    /// waits one round trip per `depth` pages rather than per page. A read fault in
    /// order is one on the next page, or on a page asked for ahead, or the one after
    /// them (the pages asked for ahead do not fault once they are here).
    pub(crate) fn read_ahead(&mut self, page: Page, depth: u32) -> Vec<Frame> {
        let (run, end) = match self.stream {
            Some((last, end, run)) if page > last && page <= end.saturating_add(1) => {
                (run.saturating_add(1), end)
            }
            _ => (1, page),
        };
        let end = end.max(page);
        if depth == 0 || run < READ_AHEAD_AFTER {
            self.stream = Some((page, end, run));
            return Vec::new();
        }
        let last = page.saturating_add(depth).min(self.asked.len() as Page - 1);
        let mut out = Vec::new();
        for p in end + 1..=last {
            if self.asked[p as usize] != Asked::No {
                continue;
            }
            if let Ok(Some(req)) = self.node.fault(p, false, &mut self.pages) {
                self.asked[p as usize] = Asked::Ahead;
                out.push(req);
            }
        }
        self.stream = Some((page, end.max(last), run));
        out
    }
}

/// What a node's driver has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages sent to other nodes.
    pub sent: u64,
    /// Messages received from other nodes.
    pub received: u64,
    /// Page bytes received (in grants and recalls).
    pub page_bytes_in: u64,
    /// Requests this node made for a page it could not access (to any home, itself
    /// included), read-ahead included.
    pub requests: u64,
    /// Pages asked for ahead of reads going through the region in order.
    pub read_ahead: u64,
    /// Pages given up to a recall by moving them out of the mapping (`UFFDIO_MOVE`:
    /// one page table change), rather than by copying them and dropping the copy.
    pub moved: u64,
    /// Reads granted Modified: the page is migratory (read, then written, by one node
    /// after another), so the write that follows here needs no fault.
    pub migratory: u64,
    /// Messages a link's reader found while it polled before sleeping
    /// ([`NodeDriver::set_link_poll`]), so that no wake-up was needed.
    pub polled: u64,
}

/// One node: its protocol state and memory, and its links to every node (itself too).
pub struct NodeDriver<M = Pages> {
    id: NodeId,
    nodes: u16,
    pages: u32,
    page_size: usize,
    state: Mutex<State<M>>,
    changed: Condvar,
    /// The link to each other node (none to itself).
    links: Vec<Option<Mutex<Writer>>>,
    /// Messages made and not yet sent, per destination.
    outbox: Vec<Mutex<std::collections::VecDeque<Frame>>>,
    /// Held while this node's messages to itself are handled.
    self_turn: Mutex<()>,
    /// Messages handled (and deaths learnt): moves, under the lock, whenever a waiting
    /// access may have become allowed.
    handled: AtomicU64,
    /// When each page's hold ends (ns since `started`): a recall or invalidation
    /// waits until then.
    hold_ends: Vec<AtomicU64>,
    /// Pages a read fault asks for ahead, once reads go in order (0: none).
    read_ahead: std::sync::atomic::AtomicU32,
    /// How long a link's reader polls before it sleeps, ns (0: it does not).
    link_poll: AtomicU64,
    started: Instant,
    counters: Counters,
}

/// [`Stats`] as they are counted (Relaxed: figures for a report, ordering nothing).
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    page_bytes_in: AtomicU64,
    requests: AtomicU64,
    read_ahead: AtomicU64,
    migratory: AtomicU64,
    polled: AtomicU64,
}

impl<M: Memory<Vec<u8>> + Send + 'static> NodeDriver<M> {
    /// Queues `out` for sending. Called with the node's lock held, so that messages
    /// leave in the order the protocol made them (the protocol relies on FIFO links:
    /// a grant must reach its requester before the page's next recall), even when
    /// several threads handle messages; [`pump`](Self::pump) sends them after the lock
    /// is released.
    pub(crate) fn enqueue(&self, out: Vec<Frame>) {
        for env in out {
            if matches!(env.msg, Msg::Request { .. }) {
                // Every request is this node's own (to its home, which may be itself).
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
            }
            self.outbox[env.to as usize].lock().unwrap_or_else(|e| e.into_inner()).push_back(env);
        }
    }

    /// Sends what is queued, in order, link by link; a message to this node itself is
    /// handled here and now (no socket, no thread hop), and what it answers is sent the
    /// same way. Called without the node's lock.
    pub(crate) fn pump(&self) {
        let pop = |j: usize| self.outbox[j].lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        loop {
            let mut moved = false;
            for j in 0..self.outbox.len() {
                if self.outbox[j].lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                    continue;
                }
                moved = true;
                match &self.links[j] {
                    None => {
                        // One thread at a time hands this node its own messages, in order.
                        let _turn = self.self_turn.lock().unwrap_or_else(|e| e.into_inner());
                        while let Some(env) = pop(j) {
                            self.handle(env);
                        }
                    }
                    Some(link) => {
                        let mut link = link.lock().unwrap_or_else(|e| e.into_inner());
                        while let Some(env) = pop(j) {
                            self.counters.sent.fetch_add(1, Ordering::Relaxed);
                            // A closed link is a dead peer: its death reaches the
                            // protocol through the membership, not here.
                            let _ = write_frame(&mut *link, &env);
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Hands one message to the protocol, and queues what it answers.
    fn handle(&self, env: Frame) {
        // A page granted a moment ago is kept that moment before it is given up, so the
        // thread that asked for it gets to use it (a page two nodes want would otherwise
        // leave before its writer writes).
        if let Msg::Recall { page, .. } | Msg::Invalidate { page } = env.msg {
            // Re-read: a write allowed meanwhile ends the hold (`written`).
            while self.epoch_ns() < self.hold_ends[page as usize].load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
        }
        let wake = {
            let mut s = self.lock();
            if s.closed {
                return;
            }
            let (page, modified) = match env.msg {
                Msg::Grant { page, access, .. } => (Some(page), access == Access::Modified),
                Msg::Lost { page } => (Some(page), false),
                _ => (None, false),
            };
            let State { node, pages, asked, .. } = &mut *s;
            let out = node.on_message(env, pages);
            if let Some(p) = page {
                let was = std::mem::replace(&mut asked[p as usize], Asked::No);
                let migrant = modified && matches!(was, Asked::Read | Asked::Ahead);
                if migrant {
                    self.counters.migratory.fetch_add(1, Ordering::Relaxed);
                }
                // A page read ahead, which no thread waits for yet, is not held; a
                // migratory page, for less time.
                let ends = match (was, migrant) {
                    (Asked::Ahead, _) => 0,
                    (_, false) => self.epoch_ns() + HOLD.as_nanos() as u64,
                    (_, true) => self.epoch_ns() + MIGRANT_HOLD.as_nanos() as u64,
                };
                self.hold_ends[p as usize].store(ends, Ordering::Relaxed);
            }
            self.handled.fetch_add(1, Ordering::Relaxed);
            self.enqueue(out);
            s.sleepers > 0
        };
        if wake {
            self.changed.notify_all();
        }
    }

    /// How many pages a read fault asks for ahead once read faults go through the
    /// region in order (0, the default: none; at most [`MAX_READ_AHEAD`]). Reading ahead takes those pages from
    /// their owners as a read would.
    pub fn set_read_ahead(&self, pages: u32) {
        self.read_ahead.store(pages.min(MAX_READ_AHEAD), Ordering::Relaxed);
    }

    /// How long each link's reader polls for the next message before it sleeps in
    /// `read` (zero, the default: it sleeps at once). A message found while polling
    /// needs no wake-up of a sleeping thread, which costs 15–19 µs in a virtual machine
    /// whose CPU went idle; the price is up to this much of a CPU after every message.
    /// Worth it where the node has a CPU to spare for its readers.
    pub fn set_link_poll(&self, d: Duration) {
        self.link_poll.store(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Sends `req`, this node's request for `page` (for a write, or a read: which then
    /// asks for the pages ahead too, [`State::read_ahead`]), and releases the lock.
    pub(crate) fn ask(&self, mut s: MutexGuard<'_, State<M>>, page: Page, write: bool, req: Frame) {
        s.asked[page as usize] = if write { Asked::Write } else { Asked::Read };
        let mut out = vec![req];
        if !write {
            let ahead = s.read_ahead(page, self.read_ahead.load(Ordering::Relaxed));
            self.counters.read_ahead.fetch_add(ahead.len() as u64, Ordering::Relaxed);
            out.extend(ahead);
        }
        self.enqueue(out);
        drop(s);
        self.pump();
    }

    /// `page` was upgraded here for a thread that is woken to retry its write: the
    /// hold starts again, for that retry.
    pub(crate) fn upgraded(&self, page: Page) {
        self.hold_ends[page as usize].store(self.epoch_ns() + HOLD.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The thread that faulted on `page` goes on to write it now (it runs the protocol
    /// itself, and returns to its access): the hold ends [`RETRY`] from now, the time
    /// its access takes to be retried, rather than a whole [`HOLD`] after the grant.
    pub(crate) fn written(&self, page: Page) {
        self.hold_ends[page as usize].store(self.epoch_ns() + RETRY.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The thread that faulted on `page` to read it goes on to read it now, and the
    /// page came Modified (migratory): its write follows without a fault, so the hold
    /// ends [`MIGRANT_WRITE`] from now, if it would end later.
    fn read_migrant(&self, page: Page) {
        let ends = self.epoch_ns() + MIGRANT_WRITE.as_nanos() as u64;
        self.hold_ends[page as usize].fetch_min(ends, Ordering::Relaxed);
    }

    fn epoch_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State<M>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Node `id` of `nodes` over `pages` pages held in `mem` (all zero at first),
    /// writing to node `j` on `links[j]` and reading each of `readers` on a thread of
    /// its own.
    fn start(
        id: NodeId,
        nodes: u16,
        pages: u32,
        page_size: usize,
        mem: M,
        links: Vec<Option<Writer>>,
        readers: Vec<(NodeId, Reader)>,
    ) -> Arc<Self> {
        // An empty page is a page of zeros: no node allocates the pages nobody touched.
        let node = Node::new(id, nodes, pages, Vec::new());
        let me = Arc::new(NodeDriver {
            id,
            nodes,
            pages,
            page_size,
            state: Mutex::new(State {
                node,
                pages: mem,
                asked: vec![Asked::No; pages as usize],
                closed: false,
                leaving: 0,
                sleepers: 0,
                stream: None,
            }),
            outbox: (0..nodes).map(|_| Mutex::default()).collect(),
            self_turn: Mutex::new(()),
            handled: AtomicU64::new(0),
            hold_ends: (0..pages).map(|_| AtomicU64::new(0)).collect(),
            read_ahead: std::sync::atomic::AtomicU32::new(0),
            link_poll: AtomicU64::new(0),
            started: Instant::now(),
            counters: Counters::default(),
            changed: Condvar::new(),
            links: links.into_iter().map(|l| l.map(Mutex::new)).collect(),
        });
        for (from, r) in readers {
            let node = me.clone();
            std::thread::spawn(move || node.serve(from, r));
        }
        me
    }

    /// The link from `peer` closed: it died (its process ended). The protocol learns of
    /// it, and threads waiting on a page its death lost are woken to fail.
    fn peer_died(&self, peer: NodeId) {
        {
            let mut s = self.lock();
            if s.closed {
                return;
            }
            let State { node, pages, asked, .. } = &mut *s;
            let epoch = node.epoch() + 1;
            let out = node.node_died(peer, epoch, pages);
            self.handled.fetch_add(1, Ordering::Relaxed);
            // The pages homed at `peer` are lost now too: their requests will never be
            // answered.
            for (p, a) in asked.iter_mut().enumerate() {
                if node.is_lost(p as Page) {
                    *a = Asked::No;
                }
            }
            self.enqueue(out);
        };
        self.changed.notify_all();
        self.pump();
    }

    /// Nodes this one knows dead.
    pub fn dead(&self) -> u32 {
        self.lock().node.dead_count()
    }

    /// Joins the nodes at `peers` (by index: this node is `peers[id]`), all over TCP or
    /// all over Unix sockets, with its pages in `mem`: listens on its own entry (a TCP
    /// node on `listen` instead, if given: where the peers reach it through a
    /// translation, or on every interface), and connects to every other, waiting up to
    /// `wait` for them to come up.
    pub fn join_with(
        id: NodeId,
        peers: &[Peer],
        listen: Option<SocketAddr>,
        pages: u32,
        page_size: usize,
        mem: M,
        wait: Duration,
    ) -> std::io::Result<Arc<Self>> {
        let n = peers.len();
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        if id as usize >= n || n > 64 {
            return Err(invalid(format!("node {id} of {n} (at most 64)")));
        }
        let unix = matches!(peers[id as usize], Peer::Unix(_));
        if peers.iter().any(|p| matches!(p, Peer::Unix(_)) != unix) {
            return Err(invalid("the peers mix TCP addresses and Unix socket paths".into()));
        }
        if unix && listen.is_some() {
            return Err(invalid("a node reached by a Unix socket listens on its own path".into()));
        }
        let listener = Listener::bind(&peers[id as usize], listen)?;
        let deadline = Instant::now() + wait;
        let mut links: Vec<Option<Writer>> = (0..n).map(|_| None).collect();
        let mut readers: Vec<(NodeId, Reader)> = Vec::new();
        for (j, peer) in peers.iter().enumerate().filter(|&(j, _)| j != id as usize) {
            let mut s = loop {
                match Stream::connect(peer) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            s.write_all(&hello(id, n as u16, pages, page_size))?;
            links[j] = Some(s.into_link());
        }
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        while readers.len() < n - 1 {
            let (mut s, from) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{} of {} nodes connected in {wait:?}", readers.len() + 1, n),
                    ))
                }
                Err(e) => return Err(e),
            };
            // A peer says hello as soon as it connects. A connection that does not (a
            // probe of whether the path is live, a port scanner) is dropped, and the
            // join goes on; a node that says hello with another format or geometry is
            // a configuration to fix, and ends it.
            let hello_wait = deadline.saturating_duration_since(Instant::now()).min(HELLO_WAIT);
            s.set_read_timeout(Some(hello_wait.max(Duration::from_millis(100))))?;
            let mut got = [0u8; HELLO];
            if let Err(e) = s.read_exact(&mut got) {
                eprintln!("shmpool-dsm node {id}: a connection from {from} sent no hello ({e}): dropped");
                continue;
            }
            s.set_read_timeout(None)?;
            if got[..3] != *b"SPD" {
                eprintln!(
                    "shmpool-dsm node {id}: a connection from {from} is not a shmpool-dsm node: dropped"
                );
                continue;
            }
            if got[3] != WIRE_VERSION {
                return Err(bad(format!(
                    "{from} speaks wire format {}, this node {WIRE_VERSION}: another version of shmpool",
                    got[3]
                )));
            }
            let peer = u16::from_le_bytes([got[4], got[5]]);
            if got[6..] != hello(peer, n as u16, pages, page_size)[6..] {
                return Err(bad(format!(
                    "{from} (node {peer}) has another geometry: nodes, pages or page size differ"
                )));
            }
            if peer as usize >= n || peer == id || readers.iter().any(|(p, _)| *p == peer) {
                return Err(bad(format!("{from} says it is node {peer}, which is not a peer of node {id}")));
            }
            readers.push((peer, s.into_reader()));
        }
        Ok(Self::start(id, n as u16, pages, page_size, mem, links, readers))
    }

    /// Handles frames from `peer` until the link closes, which is its death.
    fn serve(self: Arc<Self>, peer: NodeId, from: Reader) {
        // Buffered: a frame's length and body, and the frames that came together, in
        // one read.
        let mut from = std::io::BufReader::with_capacity(64 << 10, from);
        loop {
            let poll = self.link_poll.load(Ordering::Relaxed);
            if poll > 0
                && from.buffer().is_empty()
                && await_input(from.get_ref().as_fd(), Duration::from_nanos(poll))
            {
                self.counters.polled.fetch_add(1, Ordering::Relaxed);
            }
            let Ok(env) = read_frame(&mut from) else { break };
            if let Err(why) = self.check(peer, &env) {
                eprintln!("shmpool-dsm node {}: dropping node {peer}: {why}", self.id);
                break;
            }
            let page_bytes = match &env.msg {
                Msg::Grant { data: Some(d), .. } | Msg::Recalled { data: d, .. } => d.len() as u64,
                _ => 0,
            };
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            self.counters.page_bytes_in.fetch_add(page_bytes, Ordering::Relaxed);
            if matches!(env.msg, Msg::Leave) {
                self.lock().leaving |= 1 << env.from;
                self.changed.notify_all();
                continue;
            }
            self.handle(env);
            self.pump();
        }
        // Gone, or talking nonsense: dead to this node, and told so (its link closes).
        if let Some(l) = &self.links[peer as usize] {
            l.lock().unwrap_or_else(|e| e.into_inner()).shut();
        }
        self.peer_died(peer);
    }

    /// Whether `env`, read from `peer`'s link, is one this node can take: from that
    /// peer, to this node, about a page of the region, with a page's bytes or none.
    fn check(&self, peer: NodeId, env: &Frame) -> Result<(), String> {
        if env.from != peer || env.to != self.id {
            return Err(format!("a message from {} to {} on its link", env.from, env.to));
        }
        let (page, data, from) = match &env.msg {
            Msg::Request { page, from, .. } => (Some(*page), None, Some(*from)),
            Msg::Recalled { page, from, data, .. } => (Some(*page), Some(data), Some(*from)),
            Msg::Invalidated { page, from } => (Some(*page), None, Some(*from)),
            Msg::Grant { page, data, .. } => (Some(*page), data.as_ref(), None),
            Msg::Recall { page, .. } | Msg::Invalidate { page } | Msg::Lost { page } => {
                (Some(*page), None, None)
            }
            Msg::Leave => (None, None, None),
        };
        if page.is_some_and(|p| p >= self.pages) {
            return Err(format!("page {page:?} of a region of {} pages", self.pages));
        }
        if data.is_some_and(|d| !d.is_empty() && d.len() != self.page_size) {
            return Err(format!(
                "a page of {} bytes (pages are {})",
                data.map_or(0, Vec::len),
                self.page_size
            ));
        }
        if from.is_some_and(|f| f != peer) {
            return Err(format!("a message of node {peer} on behalf of node {from:?}"));
        }
        // Messages a home answers must be for a page homed here.
        let homed = matches!(env.msg, Msg::Request { .. } | Msg::Recalled { .. } | Msg::Invalidated { .. });
        if homed && page.is_some_and(|p| crate::protocol::home(p, self.nodes) != self.id) {
            return Err(format!("a home's message for page {page:?}, not homed here"));
        }
        Ok(())
    }

    /// What the driver has done so far.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            page_bytes_in: c.page_bytes_in.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            read_ahead: c.read_ahead.load(Ordering::Relaxed),
            migratory: c.migratory.load(Ordering::Relaxed),
            polled: c.polled.load(Ordering::Relaxed),
            moved: self.lock().pages.moves(),
        }
    }

    /// Leaves the region once every node is done with it: tells every other node this
    /// one is done, waits (up to `wait`) until each has said the same or died, then
    /// closes. A node that is done still serves its pages until then, so no node loses
    /// a page to another's leaving. Whether every node said so in time.
    pub fn leave(&self, wait: Duration) -> bool {
        let me = self.id;
        let s = self.lock();
        let nodes = s.node.nodes();
        let out = (0..nodes)
            .filter(|&j| j != me)
            .map(|to| Frame { from: me, to, epoch: s.node.epoch(), msg: Msg::Leave })
            .collect();
        self.enqueue(out);
        drop(s);
        self.pump();
        let all = if nodes == 64 { u64::MAX } else { (1u64 << nodes) - 1 } & !(1 << me);
        let deadline = Instant::now() + wait;
        let mut s = self.lock();
        let ok = loop {
            if (s.leaving | s.node.dead_mask()) & all == all {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            s = self.changed.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        };
        drop(s);
        self.close();
        ok
    }

    /// Waits until this node may access `page` (`write`: holds it Modified), asking its
    /// home if it may not yet; the node's lock, held, so the access stays allowed.
    pub(crate) fn acquire(&self, page: Page, write: bool) -> Result<MutexGuard<'_, State<M>>, Fault> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return Err(Fault::Lost(page)); // left: nothing serves the page any more
            }
            let asked = s.awaited(page);
            let req = if asked {
                None
            } else {
                let State { node, pages, .. } = &mut *s;
                node.fault(page, write, pages)?
            };
            match req {
                None if !asked => {
                    if write {
                        self.written(page);
                    } else if s.node.access(page) == Access::Modified {
                        self.read_migrant(page);
                    }
                    return Ok(s);
                }
                None => {}
                Some(req) => {
                    self.ask(s, page, write, req);
                    s = self.lock();
                    continue;
                }
            }
            // The answer usually comes within a round trip: spin for it a while,
            // yielding (a sleeping thread costs a wake-up, dear in a VM), then sleep.
            let seen = self.handled.load(Ordering::Relaxed);
            drop(s);
            let until = Instant::now() + ACQUIRE_SPIN;
            while self.handled.load(Ordering::Relaxed) == seen && Instant::now() < until {
                std::thread::yield_now();
            }
            s = self.lock();
            // The counter moves under the lock: unchanged here, the next message's
            // notification comes after this wait begins.
            if self.handled.load(Ordering::Relaxed) == seen {
                // Counted under the lock: a message handled after this sees the sleeper
                // and wakes it.
                s.sleepers += 1;
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                s.sleepers -= 1;
            }
        }
    }

    /// Leaves: the links close (the peers count this node dead) and no message touches
    /// its memory from now on.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        // Under the lock, as for every message: a waiter that saw the old count is in
        // `wait` before this notifies.
        self.handled.fetch_add(1, Ordering::Relaxed);
        drop(s);
        // Accesses waiting for a page fail now (`acquire` sees `closed`).
        self.changed.notify_all();
        for l in self.links.iter().flatten() {
            l.lock().unwrap_or_else(|e| e.into_inner()).shut();
        }
    }

    /// This node's index.
    pub fn id(&self) -> NodeId {
        self.id
    }
}

impl NodeDriver<Pages> {
    /// [`join_with`](Self::join_with) the nodes at TCP addresses `addrs`, over `pages`
    /// zeroed pages of `page_size` bytes in ordinary memory.
    pub fn join_tcp(
        id: NodeId,
        addrs: &[SocketAddr],
        pages: u32,
        page_size: usize,
        wait: Duration,
    ) -> std::io::Result<Arc<Self>> {
        let peers: Vec<Peer> = addrs.iter().map(|&a| a.into()).collect();
        Self::join_with(id, &peers, None, pages, page_size, Pages::new(pages, page_size), wait)
    }

    /// Runs `f` on the page's bytes once this node may (`write`: hold it Modified).
    fn with_page<R>(&self, page: Page, write: bool, f: impl FnOnce(&mut Vec<u8>) -> R) -> Result<R, Fault> {
        let mut s = self.acquire(page, write)?;
        Ok(f(&mut s.pages.bytes[page as usize]))
    }

    /// Copies `len` bytes of `page` at `at`.
    pub fn read(&self, page: Page, at: usize, len: usize) -> Result<Vec<u8>, Fault> {
        self.with_page(page, false, |b| b[at..at + len].to_vec())
    }

    /// Writes `data` into `page` at `at`.
    pub fn write(&self, page: Page, at: usize, data: &[u8]) -> Result<(), Fault> {
        self.with_page(page, true, |b| b[at..at + data.len()].copy_from_slice(data))
    }

    /// Replaces the little-endian `u64` at `at` of `page` with `new` if it is `old`;
    /// the value seen. Atomic: the page is held Modified, under this node's lock.
    pub fn cas_u64(&self, page: Page, at: usize, old: u64, new: u64) -> Result<u64, Fault> {
        self.with_page(page, true, |b| {
            let cur = u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
            if cur == old {
                b[at..at + 8].copy_from_slice(&new.to_le_bytes());
            }
            cur
        })
    }
}

/// Nodes of one process wired together over Unix socket pairs.
pub struct Cluster {
    nodes: Vec<Arc<NodeDriver>>,
}

impl Cluster {
    /// `n` nodes sharing `pages` pages of `page_size` zeroed bytes.
    pub fn local(n: u16, pages: u32, page_size: usize) -> std::io::Result<Cluster> {
        // writers[a][b]: a's end of the link to b; readers[b]: b's ends of its links in.
        let mut writers: Vec<Vec<Option<Writer>>> = Vec::new();
        let mut readers: Vec<Vec<(NodeId, Reader)>> = (0..n).map(|_| Vec::new()).collect();
        for a in 0..n {
            let mut row: Vec<Option<Writer>> = Vec::new();
            for (b, r) in readers.iter_mut().enumerate() {
                if b == a as usize {
                    row.push(None); // a node hands itself its messages directly
                    continue;
                }
                let (w, rd) = UnixStream::pair()?;
                row.push(Some(Box::new(w)));
                r.push((a, Box::new(rd)));
            }
            writers.push(row);
        }
        let nodes = writers
            .into_iter()
            .zip(readers)
            .enumerate()
            .map(|(i, (w, r))| {
                NodeDriver::start(i as NodeId, n, pages, page_size, Pages::new(pages, page_size), w, r)
            })
            .collect();
        Ok(Cluster { nodes })
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> Arc<NodeDriver> {
        self.nodes[i].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three read faults on pages in order start the read-ahead: the third asks for
    /// the next pages too, which then need no request of their own; the page after
    /// them goes on with the stream; a read elsewhere, or with read-ahead off, asks
    /// for its own page only. Every page reads what was written.
    #[test]
    fn reads_in_order_ask_for_the_pages_ahead() {
        let c = Cluster::local(2, 64, 64).unwrap();
        let (writer, reader) = (c.node(1), c.node(0));
        for p in 0..64 {
            writer.write(p, 0, &[p as u8 + 1; 8]).unwrap();
        }
        reader.set_read_ahead(8);
        let requests = || reader.stats().requests;
        let read = |p: Page| assert_eq!(reader.read(p, 0, 8).unwrap(), vec![p as u8 + 1; 8], "page {p}");
        let start = requests();
        read(0);
        read(1);
        assert_eq!(requests() - start, 2, "two in order: no read-ahead yet");
        read(2);
        assert_eq!(requests() - start, 3 + 8, "the third asks for pages 3..=10 too");
        (3..=10).for_each(read);
        assert_eq!(requests() - start, 11, "pages 3..=10 were asked for already");
        read(11);
        assert_eq!(requests() - start, 11 + 1 + 8, "page 11 goes on with the stream: 12..=19");
        assert_eq!(reader.stats().read_ahead, 16);
        read(40);
        assert_eq!(requests() - start, 21, "a read elsewhere asks for its own page");
        reader.set_read_ahead(0);
        (50..54).for_each(read);
        assert_eq!(requests() - start, 25, "read-ahead off: a request per page");
        assert_eq!(reader.stats().read_ahead, 16);
    }

    /// Two nodes take turns to read a page and then write it: it turns migratory, and
    /// from the second hand-over on each read is granted Modified, so a turn is one
    /// request and its write needs none. When both then only read the page, the node
    /// granted it so gives it back unwritten, and the two come to share it: their reads
    /// stop asking.
    #[test]
    fn a_page_read_then_written_in_turns_migrates_writable_until_only_read() {
        let c = Cluster::local(2, 2, 64).unwrap();
        let nodes = [c.node(0), c.node(1)];
        let value = |n: &NodeDriver| u64::from_le_bytes(n.read(1, 0, 8).unwrap().try_into().unwrap());
        let turns = 10u64;
        let mut last = 0;
        for _ in 0..turns {
            for n in &nodes {
                assert_eq!(value(n), last, "node {} reads the last write", n.id());
                last += 1;
                n.write(1, 0, &last.to_le_bytes()).unwrap();
            }
        }
        let [a, b] = nodes.each_ref().map(|n| n.stats());
        // Page 1's home is node 1. Node 0's first read found the page nobody held.
        assert_eq!((a.migratory, b.migratory), (turns - 1, turns), "reads granted Modified");
        assert_eq!((a.requests, b.requests), (turns, turns), "one request a turn");
        for _ in 0..5 {
            for n in &nodes {
                assert_eq!(value(n), last);
            }
        }
        let [a2, b2] = nodes.each_ref().map(|n| n.stats());
        // Node 0's read is granted Modified once more; node 1's finds it unwritten and
        // gets the page Exclusive; node 0's next read shares it, and that is all.
        assert_eq!((a2.migratory, b2.migratory), (turns, turns));
        assert_eq!((a2.requests - a.requests, b2.requests - b.requests), (2, 1), "reads share the page");
    }

    /// Adds 1 to the counter at `at` in `page` with a CAS loop.
    fn add_one(n: &NodeDriver, page: Page, at: usize) {
        let mut v = 0;
        loop {
            let seen = n.cas_u64(page, at, v, v + 1).unwrap();
            if seen == v {
                return;
            }
            v = seen;
        }
    }

    /// Three nodes add 1 to a counter in page 0 with a CAS loop, 200 times each, with
    /// their link readers polling 1 ms before they sleep: the sum is exact, and readers
    /// find messages while polling. Without polling, none is found so.
    #[test]
    fn link_readers_that_poll_find_messages_and_lose_none() {
        for poll in [Duration::from_millis(1), Duration::ZERO] {
            let c = Cluster::local(3, 2, 4096).unwrap();
            (0..3).for_each(|i| c.node(i).set_link_poll(poll));
            let workers: Vec<_> = (0..3)
                .map(|i| {
                    let n = c.node(i);
                    std::thread::spawn(move || {
                        (0..200).for_each(|_| add_one(&n, 0, 8));
                    })
                })
                .collect();
            workers.into_iter().for_each(|w| w.join().unwrap());
            let got = c.node(1).read(0, 8, 8).unwrap();
            assert_eq!(u64::from_le_bytes(got.try_into().unwrap()), 600, "polling {poll:?}");
            let polled: u64 = (0..3).map(|i| c.node(i).stats().polled).sum();
            if poll.is_zero() {
                assert_eq!(polled, 0, "no polling: every message woke its reader");
            } else {
                assert!(polled > 0, "readers that poll find messages so");
            }
        }
    }

    /// Three nodes, each in its own threads, add 1 to a counter in page 0 with a CAS
    /// loop 300 times: the sum is exact. Each also writes its own page, read back by
    /// the others.
    #[test]
    fn a_cas_counter_incremented_by_three_nodes_sums_exactly() {
        let c = Cluster::local(3, 4, 4096).unwrap();
        let workers: Vec<_> = (0..3)
            .map(|i| {
                let n = c.node(i);
                std::thread::spawn(move || {
                    (0..300).for_each(|_| add_one(&n, 0, 8));
                    n.write(1 + i as Page, 0, &[i as u8 + 1; 100]).unwrap();
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        for i in 0..3 {
            let got = c.node(i).read(0, 8, 8).unwrap();
            assert_eq!(u64::from_le_bytes(got.try_into().unwrap()), 900, "node {i} sees the whole sum");
            for p in 1..4u32 {
                assert_eq!(c.node(i).read(p, 0, 100).unwrap(), vec![p as u8; 100]);
            }
        }
    }

    /// Message passing: node 0 writes data then a flag; a node that sees the flag sees
    /// the data (sequential consistency), every time.
    #[test]
    fn message_passing_litmus_sees_the_data_with_the_flag() {
        let c = Cluster::local(3, 2, 64).unwrap();
        for round in 1..=50u8 {
            let (w, r) = (c.node(0), c.node(1 + (round % 2) as usize));
            let writer = std::thread::spawn(move || {
                w.write(0, 0, &[round]).unwrap();
                w.write(1, 0, &[round]).unwrap();
            });
            loop {
                let flag = r.read(1, 0, 1).unwrap()[0];
                if flag == round {
                    assert_eq!(r.read(0, 0, 1).unwrap()[0], round, "the data with the flag");
                    break;
                }
                assert!(flag < round, "a flag from the future");
            }
            writer.join().unwrap();
        }
    }

    /// Store buffering: node 0 writes x then reads y while node 1 writes y then reads x;
    /// sequential consistency forbids both reading the old value, in every round.
    #[test]
    fn store_buffering_litmus_never_reads_both_old() {
        const ROUNDS: u32 = 40;
        let c = Cluster::local(3, 2 * ROUNDS, 64).unwrap();
        let start = Arc::new(std::sync::Barrier::new(2));
        let side = |me: usize, mine: u32, theirs: u32| {
            let n = c.node(me);
            let start = start.clone();
            std::thread::spawn(move || {
                (0..ROUNDS)
                    .map(|r| {
                        start.wait();
                        n.write(2 * r + mine, 0, &[1]).unwrap();
                        n.read(2 * r + theirs, 0, 1).unwrap()[0]
                    })
                    .collect::<Vec<u8>>()
            })
        };
        let (a, b) = (side(0, 0, 1), side(1, 1, 0));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        for r in 0..ROUNDS as usize {
            assert!(a[r] == 1 || b[r] == 1, "round {r}: both read the old value");
        }
    }
}

#[cfg(test)]
mod tcp_tests {
    use super::*;

    #[test]
    fn two_nodes_over_tcp_read_each_others_writes() {
        let addrs: Vec<SocketAddr> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap())
            .collect();
        let a2 = addrs.clone();
        let other =
            std::thread::spawn(move || NodeDriver::join_tcp(1, &a2, 8, 64, Duration::from_secs(10)).unwrap());
        let n0 = NodeDriver::join_tcp(0, &addrs, 8, 64, Duration::from_secs(10)).unwrap();
        let n1 = other.join().unwrap();
        for i in 0..200u64 {
            let page = (i % 8) as Page;
            n1.write(page, 0, &i.to_le_bytes()).unwrap();
            assert_eq!(n0.read(page, 0, 8).unwrap(), i.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;
    use crate::transport::write_frame;

    /// Two free loopback addresses, and a listener on the second (a hand-made node 1's).
    fn two_addresses_and_node_1s_listener() -> (Vec<SocketAddr>, TcpListener) {
        let addrs: Vec<SocketAddr> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap())
            .collect();
        let listener = TcpListener::bind(addrs[1]).unwrap();
        (addrs, listener)
    }

    /// A connection to `to`, retried until node 0 listens there.
    fn connect_retrying(to: SocketAddr) -> TcpStream {
        loop {
            match TcpStream::connect(to) {
                Ok(s) => return s,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Node 0 over TCP, and a hand-made node 1 (this test's own sockets) that says
    /// hello and then does what the test says: node 0's driver, and node 1's two ends.
    fn node0_and_fake_peer() -> (Arc<NodeDriver>, TcpStream, TcpStream) {
        let (addrs, listener) = two_addresses_and_node_1s_listener();
        let a0 = addrs[0];
        let fake = std::thread::spawn(move || {
            let mut to0 = connect_retrying(a0);
            to0.write_all(&hello(1, 2, 8, 64)).unwrap();
            let (mut from0, _) = listener.accept().unwrap();
            let mut h = [0u8; HELLO];
            from0.read_exact(&mut h).unwrap();
            assert_eq!(h, hello(0, 2, 8, 64));
            (to0, from0)
        });
        let n0 = NodeDriver::join_tcp(0, &addrs, 8, 64, Duration::from_secs(10)).unwrap();
        let (to0, from0) = fake.join().unwrap();
        (n0, to0, from0)
    }

    /// Node 0 of two joins while a fake node 1 connects once per entry of `firsts`,
    /// writing it (an empty one: ending its side at once), then accepts node 0's link;
    /// the join's outcome, and the fake's connections (node 1 is alive while they are).
    fn join_against(firsts: Vec<Vec<u8>>) -> (std::io::Result<Arc<NodeDriver>>, Box<dyn std::any::Any>) {
        let (addrs, listener) = two_addresses_and_node_1s_listener();
        let a0 = addrs[0];
        let fake = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for first in firsts {
                let mut c = connect_retrying(a0);
                c.write_all(&first).unwrap();
                if first.is_empty() {
                    c.shutdown(Shutdown::Write).unwrap(); // says nothing, and ends
                }
                conns.push(c);
            }
            let from0 = listener.accept().unwrap();
            (conns, from0) // held until the join is over
        });
        let joined = NodeDriver::join_tcp(0, &addrs, 8, 64, Duration::from_secs(20));
        (joined, Box::new(fake.join().unwrap()))
    }

    /// A node started at the Unix socket path of a node that is joining is refused
    /// (`AddrInUse`), and its probe of the path does not disturb the live node, which
    /// joins its real peer.
    #[test]
    fn a_second_node_at_a_live_unix_path_is_refused_and_the_first_joins() {
        let dir = std::env::temp_dir().join(format!("shmpool-dsm-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let peers = [Peer::Unix(dir.join("0.sock")), Peer::Unix(dir.join("1.sock"))];
        let join = |id: NodeId, peers: &[Peer]| {
            NodeDriver::join_with(id, peers, None, 8, 64, Pages::new(8, 64), Duration::from_secs(20))
        };
        let p = peers.clone();
        let first = std::thread::spawn(move || join(0, &p));
        while !dir.join("0.sock").exists() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let dup = join(0, &peers).err().expect("a second node 0");
        assert_eq!(dup.kind(), std::io::ErrorKind::AddrInUse, "{dup}");
        let n1 = join(1, &peers).expect("node 1 joins");
        let n0 = first.join().unwrap().expect("node 0 joins despite the probe");
        n1.write(3, 0, b"live").unwrap();
        assert_eq!(n0.read(3, 0, 4).unwrap(), b"live");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A node of another wire format is refused when it joins, with a message saying
    /// so; connections that send no hello, or something else, are dropped and the join
    /// goes on.
    #[test]
    fn a_node_of_another_wire_format_is_refused_and_strangers_dropped() {
        let mut other = hello(1, 2, 8, 64);
        other[3] = WIRE_VERSION + 1;
        let e = join_against(vec![other.to_vec()]).0.err().expect("refused");
        assert!(e.to_string().contains(&format!("speaks wire format {}", WIRE_VERSION + 1)), "{e}");
        let strangers =
            vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Vec::new(), hello(1, 2, 8, 64).to_vec()];
        let (n0, _node1) = join_against(strangers);
        let n0 = n0.expect("the stranger and the silent connection are dropped");
        assert_eq!(n0.dead(), 0);
    }

    /// A thread waiting for a page that never comes is let go by `close`, with an error.
    #[test]
    fn close_fails_the_accesses_waiting_for_a_page() {
        let (n0, _to0, _from0) = node0_and_fake_peer(); // node 1 never answers
        let reader = {
            let n0 = n0.clone();
            std::thread::spawn(move || n0.read(1, 0, 8)) // page 1: homed at node 1
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!reader.is_finished(), "the read waits for node 1");
        n0.close();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reader.is_finished() {
            assert!(Instant::now() < deadline, "a waiting access outlived close");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(reader.join().unwrap(), Err(Fault::Lost(1)));
    }

    /// A grant with a page of the wrong length, or about a page past the region, is not
    /// taken: the peer counts dead, and its link is closed.
    #[test]
    fn a_peer_sending_a_malformed_page_is_cut_off() {
        for bad in [
            Msg::Grant { page: 1, access: Access::Shared, data: Some(vec![7; 100]) },
            Msg::Grant { page: 99, access: Access::Shared, data: None },
            Msg::Recalled { page: 1, from: 1, data: vec![0; 64], kept: false }, // page 1 is not homed at 0
        ] {
            let (n0, mut to0, mut from0) = node0_and_fake_peer();
            write_frame(&mut to0, &Frame { from: 1, to: 0, epoch: 0, msg: bad.clone() }).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while n0.dead() == 0 {
                assert!(Instant::now() < deadline, "{bad:?} was taken");
                std::thread::sleep(Duration::from_millis(5));
            }
            // Node 0 closed its link to node 1: node 1 reads the end of it.
            let mut rest = Vec::new();
            from0.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert!(from0.read_to_end(&mut rest).is_ok(), "{bad:?}: the link to the peer was not closed");
        }
    }

    /// A peer whose geometry differs is refused when it joins.
    #[test]
    fn a_peer_of_another_geometry_is_refused() {
        let addrs: Vec<SocketAddr> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap())
            .collect();
        let a2 = addrs.clone();
        let other = std::thread::spawn(move || NodeDriver::join_tcp(1, &a2, 16, 64, Duration::from_secs(5)));
        let n0 = NodeDriver::join_tcp(0, &addrs, 8, 64, Duration::from_secs(5));
        let e = n0.err().expect("node 0 refuses a node of 16 pages");
        assert!(e.to_string().contains("another geometry"), "{e}");
        assert!(other.join().unwrap().is_err());
    }
}
