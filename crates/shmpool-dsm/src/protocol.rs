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
//!    which ends the transaction, and the requester installs the page.
//!
//! Links are FIFO (TCP, or a node's messages to itself handled in order), so a home's
//! next recall or invalidation of the page reaches the requester after its grant: the
//! home need not wait for the grant to be installed before it starts the page's next
//! transaction, and no acknowledgement of the grant is sent (IVY's confirmation
//! message, which the model showed unneeded over FIFO links).
//!
//! A read of a page no other node holds is granted Exclusive (the only copy, mapped
//! read-only; the first write makes it Modified here without a message), and an owner
//! that wrote its copy gives it up whole when another node reads it, so a page passed
//! between writers costs one transaction per hand-over, not a read and an upgrade.
//!
//! A page that nodes take in turn to read and then write (a lock, a counter, a queue's
//! head: *migratory* data, after Stenström, Brorsson and Sandberg 1993) is granted
//! Modified to a read, so the write that follows needs no fault either. The home
//! learns the pattern from its recalls: an owner that got the page for a read and gave
//! it up written marks it migratory; one that gave it back unwritten (an Exclusive copy
//! kept, or a migratory grant's bytes unchanged, which the home compares with what it
//! granted) ends that, and readers share the page again.
//!
//! Invariants (checked by the exhaustive model in the tests, 3 nodes × 2 pages): at most
//! one owner (Exclusive or Modified) of a page, and no Shared copy beside it; every valid copy holds the
//! last value written (so a read returns the last write); and no state is stuck with a
//! request unserved.
//!
//! A node's page bytes and protections live in its [`Memory`] (the mapping, in the real
//! system); the machine reads and writes them only while handling a message. Envelopes
//! carry the sender's membership epoch. When a node dies, each survivor is told
//! ([`Node::node_died`], the membership's next epoch) and from then on drops whatever the
//! dead node sent, so a node fenced out cannot disturb the survivors; a message a
//! survivor sent before it learned of the death still counts (the model caught a grant
//! dropped for its older epoch, which left its requester waiting).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// A node's index.
pub type NodeId = u16;
/// A page's index in the region.
pub type Page = u32;

/// What a node may do with its copy of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Access {
    /// No valid copy: any access faults.
    Invalid,
    /// A read-only copy; other nodes may hold one too.
    Shared,
    /// The only copy, not written since it was granted: mapped read-only, and the first
    /// write makes it Modified here, without a message (MESI's exclusive-clean). A read
    /// of a page no other node holds is granted this.
    Exclusive,
    /// The only copy, writable, and written.
    Modified,
}

impl Access {
    /// Whether this is the page's only copy (Exclusive or Modified).
    pub fn is_owner(self) -> bool {
        matches!(self, Access::Exclusive | Access::Modified)
    }
}

/// A protocol message. Page bytes are encoded as one byte string (`serde_bytes`), not
/// as a sequence of numbers: a copy, not a loop over the page.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound(serialize = "D: serde_bytes::Serialize", deserialize = "D: serde_bytes::Deserialize<'de>"))]
pub enum Msg<D> {
    /// To the home: `from` faulted on `page`, to write it or to read it.
    Request { page: Page, from: NodeId, write: bool },
    /// From the home to the page's owner: send the page back, and drop it
    /// (`invalidate`), or keep it Shared for a reader. An owner that wrote the page
    /// drops it either way: a page written by one node and then read by another
    /// migrates whole, so the reader may write it next without another transaction.
    Recall { page: Page, invalidate: bool },
    /// To the home: the recalled page's bytes, and whether the owner kept a Shared copy.
    Recalled {
        page: Page,
        from: NodeId,
        #[serde(with = "serde_bytes")]
        data: D,
        kept: bool,
    },
    /// From the home to a Shared holder: drop your copy.
    Invalidate { page: Page },
    /// To the home: dropped.
    Invalidated { page: Page, from: NodeId },
    /// From the home to the requester: hold `page` as `access`, with these bytes (none:
    /// your copy is current). Ends the transaction.
    Grant {
        page: Page,
        access: Access,
        #[serde(with = "serde_bytes")]
        data: Option<D>,
    },
    /// From the home to a requester: the page's only valid copy was on a node that died
    /// (or its home died): the access fails, it is never served stale bytes.
    Lost { page: Page },
    /// The sender is done with the region and leaves once every node is: not part of
    /// the coherence protocol (the state machine ignores it; the driver counts it).
    Leave,
}

/// Why an access cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Fault {
    /// The page's only valid copy, or its home, was on a node that died.
    #[error("page {0} was lost with the node that held it (or was its home)")]
    Lost(Page),
    /// A byte past the region's end was asked for (`Region::acquire`).
    #[error("offset {0} is past the region's end")]
    OutOfRange(usize),
}

/// A message with its route and the sender's membership epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound(serialize = "Msg<D>: Serialize", deserialize = "Msg<D>: Deserialize<'de>"))]
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
    /// The page's bytes, for a recall that drops this node's copy (a `protect` to
    /// Invalid follows): memory that can move the page out instead of copying it (and
    /// then dropping it) does so.
    fn take(&mut self, page: Page) -> D {
        self.read(page)
    }
    /// Replaces the page's bytes.
    fn write(&mut self, page: Page, data: D);
    /// Sets the page's protection.
    fn protect(&mut self, page: Page, access: Access);
    /// The page can no longer be served to this node (its only copy, or its home, died):
    /// accesses its current protection does not allow must fail from now on, and the
    /// threads waiting for it must be told.
    fn lost(&mut self, page: Page) {
        let _ = page;
    }
    /// Pages `take` moved out rather than copied, so far.
    fn moves(&self) -> u64 {
        0
    }
}

/// A transaction the home is running for a page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Txn {
    requester: NodeId,
    write: bool,
    /// The nodes whose reply (a recall or an invalidation) is still awaited, a bit each.
    owed: u64,
    /// The requester died before the grant: the transaction finishes collecting its
    /// answers (they carry the page's bytes), then ends without a grant.
    orphan: bool,
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
    /// The owner got the page for a read (Exclusive, or Modified as migratory).
    owner_read: bool,
    /// Read, then written, by one node after another: a read is granted Modified.
    migratory: bool,
    /// The bytes of the owner's migratory grant, to tell on its recall whether it
    /// wrote them.
    granted: Option<D>,
    /// The only valid copy died with its holder.
    lost: bool,
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
    /// Pages whose accesses fail for good (`Msg::Lost`, or their home died).
    lost: Vec<bool>,
    /// Nodes known dead (a bit each).
    dead: u64,
}

/// The home of `page` among `nodes` nodes.
pub fn home(page: Page, nodes: u16) -> NodeId {
    (page % u32::from(nodes)) as NodeId
}

/// A page's bytes as the protocol carries them.
pub trait PageData: Clone {
    /// Whether `self` and `other` are the same contents (a home compares a recalled
    /// page with the bytes it granted).
    fn same(&self, other: &Self) -> bool;
}

/// Bytes, where an empty vector stands for a page of zeros (a page nobody wrote).
impl PageData for Vec<u8> {
    fn same(&self, other: &Self) -> bool {
        match (self.is_empty(), other.is_empty()) {
            (false, false) => self == other,
            (true, true) => true,
            (true, false) => other.iter().all(|&b| b == 0),
            (false, true) => self.iter().all(|&b| b == 0),
        }
    }
}

/// A version number standing for a page's contents (the model's pages).
impl PageData for u64 {
    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

impl<D: PageData> Node<D> {
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
                    owner_read: false,
                    migratory: false,
                    granted: None,
                    lost: false,
                    txn: None,
                    queue: VecDeque::new(),
                })
            })
            .collect();
        Self {
            id,
            nodes,
            epoch: 0,
            access: vec![Access::Invalid; pages as usize],
            dirs,
            lost: vec![false; pages as usize],
            dead: 0,
        }
    }

    /// This node's access to `page`.
    pub fn access(&self, page: Page) -> Access {
        self.access[page as usize]
    }

    fn send(&self, to: NodeId, msg: Msg<D>) -> Envelope<D> {
        Envelope { from: self.id, to, epoch: self.epoch, msg }
    }

    /// A thread touched `page` (to write it, or to read it) and faulted, or would: the
    /// request to send, or `None` if this node's access already allows it; `Fault::Lost`
    /// if the page can no longer be served.
    pub fn fault(
        &mut self,
        page: Page,
        write: bool,
        mem: &mut impl Memory<D>,
    ) -> Result<Option<Envelope<D>>, Fault> {
        let have = self.access(page);
        if write && have == Access::Exclusive {
            self.set(page, Access::Modified, mem); // the only copy: written without asking
            return Ok(None);
        }
        let enough = if write { have == Access::Modified } else { have != Access::Invalid };
        if enough {
            return Ok(None);
        }
        if self.lost[page as usize] {
            return Err(Fault::Lost(page));
        }
        Ok(Some(self.send(home(page, self.nodes), Msg::Request { page, from: self.id, write })))
    }

    /// This node's membership epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many nodes there are.
    pub fn nodes(&self) -> u16 {
        self.nodes
    }

    /// Nodes known dead.
    pub fn dead_count(&self) -> u32 {
        self.dead.count_ones()
    }

    /// The nodes known dead, a bit each.
    pub fn dead_mask(&self) -> u64 {
        self.dead
    }

    /// This node dropped its copy of `page`, which is lost (a write to it failed): its
    /// access is Invalid from now on, so every access fails as the mapping's does.
    pub fn forget(&mut self, page: Page) {
        if self.lost[page as usize] && !self.access(page).is_owner() {
            self.access[page as usize] = Access::Invalid;
        }
    }

    /// Whether `page` is lost to this node.
    pub fn is_lost(&self, page: Page) -> bool {
        self.lost[page as usize]
    }

    /// The membership moved to `epoch` without node `dead`: messages of older epochs are
    /// dropped from now on; the pages `dead` was home of are lost (copies held here stay,
    /// as no write can be granted any more); the directories here forget it, lose the
    /// pages only it held, and finish or drop its transactions. What to send.
    pub fn node_died(&mut self, dead: NodeId, epoch: u64, mem: &mut impl Memory<D>) -> Vec<Envelope<D>> {
        self.epoch = self.epoch.max(epoch);
        self.dead |= 1 << dead;
        let mut out = Vec::new();
        for page in 0..self.access.len() as Page {
            if home(page, self.nodes) == dead {
                self.lost[page as usize] = true;
                mem.lost(page);
                continue;
            }
            let Some(dir) = self.dirs[page as usize].as_mut() else { continue };
            dir.sharers &= !(1 << dead);
            dir.queue.retain(|&(n, _)| n != dead);
            if dir.owner == Some(dead) {
                dir.owner = None;
                dir.clean = None;
                dir.granted = None;
                dir.lost = true;
            }
            let Some(txn) = dir.txn.clone() else { continue };
            if txn.requester == dead {
                // Answers are still on their way (a recall carries the page): collect
                // them, then end without a grant.
                if let Some(t) = dir.txn.as_mut() {
                    t.orphan = true;
                }
                if txn.owed & 1 << dead != 0 {
                    out.extend(self.answered(page, dead));
                }
            } else if txn.owed & 1 << dead != 0 {
                if self.dir(page).lost {
                    // The recall from the dead holder will never come: the page is gone.
                    self.dir(page).txn = None;
                    out.push(self.send(txn.requester, Msg::Lost { page }));
                    out.extend(self.next_txn(page));
                } else {
                    // A dead sharer's invalidation needs no answer.
                    out.extend(self.answered(page, dead));
                }
            }
        }
        out
    }

    /// Starts the next queued request of `page`, if any.
    fn next_txn(&mut self, page: Page) -> Vec<Envelope<D>> {
        match self.dir(page).queue.pop_front() {
            Some((from, write)) => self.request(page, from, write),
            None => Vec::new(),
        }
    }

    /// Handles one message: what to send in reply.
    pub fn on_message(&mut self, env: Envelope<D>, mem: &mut impl Memory<D>) -> Vec<Envelope<D>> {
        if self.dead >> env.from & 1 != 0 {
            return Vec::new(); // from a node fenced out
        }
        match env.msg {
            Msg::Request { page, from, write } => self.request(page, from, write),
            Msg::Recall { page, invalidate } => {
                let kept = !invalidate && self.access(page) != Access::Modified;
                let data = if kept { mem.read(page) } else { mem.take(page) };
                self.set(page, if kept { Access::Shared } else { Access::Invalid }, mem);
                vec![self.send(env.from, Msg::Recalled { page, from: self.id, data, kept })]
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
                Vec::new()
            }
            Msg::Recalled { page, from, data, kept } => {
                let dir = self.dir(page);
                let read = dir.txn.as_ref().is_some_and(|t| !t.write);
                // What the recall says of the owner that got the page for a read: it
                // wrote it (then its next reader will too), or not.
                match dir.granted.take() {
                    Some(granted) => dir.migratory = !data.same(&granted),
                    None if dir.owner_read && read => dir.migratory = !kept,
                    None => {} // a write's recall: an Exclusive copy is given up either way
                }
                dir.clean = Some(data);
                dir.owner = None;
                if kept {
                    dir.sharers |= 1 << from; // downgraded, not dropped
                }
                self.answered(page, from)
            }
            Msg::Invalidated { page, from } => self.answered(page, from),
            Msg::Lost { page } => {
                self.lost[page as usize] = true;
                mem.lost(page);
                Vec::new()
            }
            Msg::Leave => Vec::new(),
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
        if dir.lost {
            // No transaction starts: the queued requests are answered the same way now.
            let mut out = vec![self.send(from, Msg::Lost { page })];
            out.extend(self.next_txn(page));
            return out;
        }
        let mut out = Vec::new();
        let mut owed = 0u64;
        match dir.owner {
            Some(o) if o != from => {
                out.push(Envelope {
                    from: id,
                    to: o,
                    epoch: 0,
                    msg: Msg::Recall { page, invalidate: write },
                });
                owed |= 1 << o;
            }
            _ if write => {
                for s in (0..64u16).filter(|&s| dir.sharers >> s & 1 != 0 && s != from) {
                    out.push(Envelope { from: id, to: s, epoch: 0, msg: Msg::Invalidate { page } });
                    owed |= 1 << s;
                }
            }
            _ => {}
        }
        dir.txn = Some(Txn { requester: from, write, owed, orphan: false });
        let epoch = self.epoch;
        for e in &mut out {
            e.epoch = epoch;
        }
        if owed == 0 {
            out.extend(self.grant(page));
        }
        out
    }

    /// `from`'s recall or invalidation came back (or `from` died owing it): grant once
    /// the last one has.
    fn answered(&mut self, page: Page, from: NodeId) -> Vec<Envelope<D>> {
        let Some(txn) = self.dir(page).txn.as_mut() else { return Vec::new() };
        if txn.owed & 1 << from == 0 {
            return Vec::new();
        }
        txn.owed &= !(1 << from);
        if txn.owed != 0 {
            return Vec::new();
        }
        self.grant(page)
    }

    /// Every other copy is recalled or dropped: grant the requester (or, if it died,
    /// end the transaction with the page clean at the home).
    fn grant(&mut self, page: Page) -> Vec<Envelope<D>> {
        let dir = self.dir(page);
        if dir.txn.as_ref().is_some_and(|t| t.orphan) {
            if dir.txn.as_ref().is_some_and(|t| t.write) {
                dir.sharers = 0; // every sharer dropped its copy for the dead writer
            }
            dir.txn = None;
            return self.next_txn(page);
        }
        let txn = dir.txn.take().expect("a transaction to grant");
        let (to, write) = (txn.requester, txn.write);
        let holds = dir.owner == Some(to) || dir.sharers >> to & 1 != 0;
        // The requester's copy is current if it holds one (the page is not Modified
        // elsewhere: that was recalled).
        let data = if holds { None } else { dir.clean.clone() };
        // A reader of a page no other node holds gets it Exclusive: its first write
        // then needs no transaction; Modified if the page is migratory, and its first
        // write then needs no fault. The home keeps the bytes of a migratory grant.
        let alone = dir.sharers & !(1 << to) == 0;
        let access = if write || alone {
            let migratory = !write && dir.migratory && dir.owner != Some(to);
            dir.owner = Some(to);
            dir.owner_read = !write;
            dir.sharers = 0;
            let clean = dir.clean.take();
            dir.granted = if migratory { clean } else { None };
            if write || migratory {
                Access::Modified
            } else {
                Access::Exclusive
            }
        } else {
            dir.sharers |= 1 << to;
            Access::Shared
        };
        let mut out = vec![self.send(to, Msg::Grant { page, access, data })];
        out.extend(self.next_txn(page));
        out
    }
}

#[cfg(test)]
mod model;
