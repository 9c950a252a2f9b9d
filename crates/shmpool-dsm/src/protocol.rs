//! The coherence protocol: a pure state machine per node, with no I/O.
//!
//! Layer: shmpool-dsm. After IVY's fixed distributed manager (Li and Hudak 1989): page
//! `p`'s *home* is node `p % nodes`; it keeps the page's directory (the one Modified
//! holder, or the set of Shared holders and a clean copy) and runs one transaction per
//! page at a time, queueing the requests that come meanwhile. A transaction:
//!
//! 1. a node faults and sends `Request` to the home (a message to itself if it is the
//!    home);
//! 2. the home recalls the page from its Modified holder (`Recall` → `Recalled`, which
//!    carries the bytes), or for a write invalidates the Shared holders (`Invalidate` →
//!    `Invalidated`);
//! 3. the home sends `Grant` (with the bytes, unless the requester holds them already),
//!    and the requester installs the page, then says `Installed`, which ends the
//!    transaction.
//!
//! Invariants (checked by the exhaustive model in the tests, 3 nodes × 2 pages): at most
//! one Modified copy of a page, and none Shared beside it; every valid copy holds the
//! last value written (so a read returns the last write); and no state is stuck with a
//! request unserved.
//!
//! A node's page bytes and protections live in its [`Memory`] (the mapping, in the real
//! system); the machine reads and writes them only while handling a message. Envelopes
//! carry the sender's membership epoch; a message of an older epoch than the receiver's
//! is dropped, so a node fenced out cannot disturb the survivors.

use std::collections::VecDeque;

/// A node's index.
pub type NodeId = u16;
/// A page's index in the region.
pub type Page = u32;

/// What a node may do with its copy of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// No valid copy: any access faults.
    Invalid,
    /// A read-only copy; other nodes may hold one too.
    Shared,
    /// The only copy, writable.
    Modified,
}

/// A protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Msg<D> {
    /// To the home: `from` faulted on `page`, to write it or to read it.
    Request { page: Page, from: NodeId, write: bool },
    /// From the home to the Modified holder: send the page back, and drop it
    /// (`invalidate`) or keep it Shared.
    Recall { page: Page, invalidate: bool },
    /// To the home: the recalled page's bytes.
    Recalled { page: Page, from: NodeId, data: D },
    /// From the home to a Shared holder: drop your copy.
    Invalidate { page: Page },
    /// To the home: dropped.
    Invalidated { page: Page, from: NodeId },
    /// From the home to the requester: hold `page` as `access`, with these bytes (none:
    /// your copy is current).
    Grant { page: Page, access: Access, data: Option<D> },
    /// To the home: granted access installed; the page's next transaction may start.
    Installed { page: Page, from: NodeId },
}

/// A message with its route and the sender's membership epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Envelope<D> {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The sender's membership epoch.
    pub epoch: u64,
    /// The message.
    pub msg: Msg<D>,
}

/// A node's pages as the protocol sees them: bytes and protection.
pub trait Memory<D> {
    /// The page's current bytes.
    fn read(&self, page: Page) -> D;
    /// Replaces the page's bytes.
    fn write(&mut self, page: Page, data: D);
    /// Sets the page's protection.
    fn protect(&mut self, page: Page, access: Access);
}

/// A transaction the home is running for a page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Txn {
    requester: NodeId,
    write: bool,
    /// Replies still awaited (recalls and invalidations).
    waiting: u32,
    /// Granted; waiting for `Installed`.
    granted: bool,
}

/// A home's directory entry for one of its pages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Dir<D> {
    /// The Modified holder, if one.
    owner: Option<NodeId>,
    /// Shared holders (a bit per node).
    sharers: u64,
    /// The clean bytes, while no node holds the page Modified.
    clean: Option<D>,
    txn: Option<Txn>,
    queue: VecDeque<(NodeId, bool)>,
}

/// One node's protocol state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node<D> {
    id: NodeId,
    nodes: u16,
    epoch: u64,
    /// This node's access to each page.
    access: Vec<Access>,
    /// The directories of the pages homed here (`None` for the others).
    dirs: Vec<Option<Dir<D>>>,
}

/// The home of `page` among `nodes` nodes.
pub fn home(page: Page, nodes: u16) -> NodeId {
    (page % u32::from(nodes)) as NodeId
}

impl<D: Clone> Node<D> {
    /// Node `id` of `nodes` over `pages` pages, every page's first bytes `zero` (held
    /// clean by its home; no node has a copy yet).
    pub fn new(id: NodeId, nodes: u16, pages: u32, zero: D) -> Self {
        assert!(nodes > 0 && nodes <= 64, "1..=64 nodes");
        let dirs = (0..pages)
            .map(|p| {
                (home(p, nodes) == id).then(|| Dir {
                    owner: None,
                    sharers: 0,
                    clean: Some(zero.clone()),
                    txn: None,
                    queue: VecDeque::new(),
                })
            })
            .collect();
        Self { id, nodes, epoch: 0, access: vec![Access::Invalid; pages as usize], dirs }
    }

    /// This node's access to `page`.
    pub fn access(&self, page: Page) -> Access {
        self.access[page as usize]
    }

    fn send(&self, to: NodeId, msg: Msg<D>) -> Envelope<D> {
        Envelope { from: self.id, to, epoch: self.epoch, msg }
    }

    /// A thread touched `page` (to write it, or to read it) and faulted, or would: the
    /// request to send, or `None` if this node's access already allows it.
    pub fn fault(&mut self, page: Page, write: bool) -> Option<Envelope<D>> {
        let have = self.access(page);
        let enough = if write { have == Access::Modified } else { have != Access::Invalid };
        (!enough).then(|| self.send(home(page, self.nodes), Msg::Request { page, from: self.id, write }))
    }

    /// Handles one message: what to send in reply.
    pub fn on_message(&mut self, env: Envelope<D>, mem: &mut impl Memory<D>) -> Vec<Envelope<D>> {
        if env.epoch < self.epoch {
            return Vec::new(); // from a node fenced out
        }
        match env.msg {
            Msg::Request { page, from, write } => self.request(page, from, write),
            Msg::Recall { page, invalidate } => {
                let data = mem.read(page);
                let access = if invalidate { Access::Invalid } else { Access::Shared };
                self.set(page, access, mem);
                vec![self.send(env.from, Msg::Recalled { page, from: self.id, data })]
            }
            Msg::Invalidate { page } => {
                self.set(page, Access::Invalid, mem);
                vec![self.send(env.from, Msg::Invalidated { page, from: self.id })]
            }
            Msg::Grant { page, access, data } => {
                if let Some(d) = data {
                    mem.write(page, d);
                }
                self.set(page, access, mem);
                vec![self.send(env.from, Msg::Installed { page, from: self.id })]
            }
            Msg::Recalled { page, from, data } => {
                let dir = self.dir(page);
                dir.clean = Some(data);
                dir.owner = None;
                let keep = dir.txn.as_ref().is_some_and(|t| !t.write);
                if keep {
                    dir.sharers |= 1 << from; // downgraded, not dropped
                }
                self.answered(page)
            }
            Msg::Invalidated { page, .. } => self.answered(page),
            Msg::Installed { page, .. } => {
                let dir = self.dir(page);
                dir.txn = None;
                match dir.queue.pop_front() {
                    Some((from, write)) => self.request(page, from, write),
                    None => Vec::new(),
                }
            }
        }
    }

    fn set(&mut self, page: Page, access: Access, mem: &mut impl Memory<D>) {
        self.access[page as usize] = access;
        mem.protect(page, access);
    }

    fn dir(&mut self, page: Page) -> &mut Dir<D> {
        self.dirs[page as usize].as_mut().expect("a message for a page homed here")
    }

    /// A request reaches the home: queued behind the running transaction, or started.
    fn request(&mut self, page: Page, from: NodeId, write: bool) -> Vec<Envelope<D>> {
        let id = self.id;
        let dir = self.dir(page);
        if dir.txn.is_some() {
            dir.queue.push_back((from, write));
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut waiting = 0;
        match dir.owner {
            Some(o) if o != from => {
                out.push(Envelope {
                    from: id,
                    to: o,
                    epoch: 0,
                    msg: Msg::Recall { page, invalidate: write },
                });
                waiting = 1;
            }
            _ if write => {
                for s in (0..64u16).filter(|&s| dir.sharers >> s & 1 != 0 && s != from) {
                    out.push(Envelope { from: id, to: s, epoch: 0, msg: Msg::Invalidate { page } });
                    waiting += 1;
                }
            }
            _ => {}
        }
        dir.txn = Some(Txn { requester: from, write, waiting, granted: false });
        let epoch = self.epoch;
        for e in &mut out {
            e.epoch = epoch;
        }
        if waiting == 0 {
            out.extend(self.grant(page));
        }
        out
    }

    /// A recall or invalidation came back: grant once the last one has.
    fn answered(&mut self, page: Page) -> Vec<Envelope<D>> {
        let txn = self.dir(page).txn.as_mut().expect("an answer within a transaction");
        txn.waiting -= 1;
        if txn.waiting > 0 {
            return Vec::new();
        }
        self.grant(page)
    }

    /// Every other copy is recalled or dropped: grant the requester.
    fn grant(&mut self, page: Page) -> Vec<Envelope<D>> {
        let dir = self.dir(page);
        let txn = dir.txn.as_mut().expect("a transaction to grant");
        txn.granted = true;
        let (to, write) = (txn.requester, txn.write);
        let holds = dir.owner == Some(to) || dir.sharers >> to & 1 != 0;
        // The requester's copy is current if it holds one (the page is not Modified
        // elsewhere: that was recalled).
        let data = if holds { None } else { dir.clean.clone() };
        let access = if write {
            dir.owner = Some(to);
            dir.sharers = 0;
            dir.clean = None;
            Access::Modified
        } else {
            dir.sharers |= 1 << to;
            Access::Shared
        };
        vec![self.send(to, Msg::Grant { page, access, data })]
    }
}

#[cfg(test)]
mod model;
