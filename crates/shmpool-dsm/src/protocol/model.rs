//! Exhaustive model of the protocol: 3 nodes × 2 pages, each node running a short
//! program of reads and writes; every interleaving of program steps and message
//! deliveries (per-link FIFO, as TCP gives) is explored.
//!
//! Checked in every reachable state: never two writers, nor a writer beside a reader;
//! every valid copy holds the last value written, so every read returns it; and a state
//! with nothing left to do has every program finished and no message in flight (no
//! deadlock, no lost request).

use super::*;
use std::collections::{BTreeMap, HashSet, VecDeque};

const NODES: u16 = 3;
const PAGES: u32 = 2;

/// A node's memory in the model: a value per page (the version last written) and its
/// protection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Mem {
    data: Vec<u64>,
    prot: Vec<Access>,
}

impl Memory<u64> for Mem {
    fn read(&self, page: Page) -> u64 {
        self.data[page as usize]
    }
    fn write(&mut self, page: Page, data: u64) {
        self.data[page as usize] = data;
    }
    fn protect(&mut self, page: Page, access: Access) {
        self.prot[page as usize] = access;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Read(Page),
    Write(Page),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct World {
    nodes: Vec<Node<u64>>,
    mems: Vec<Mem>,
    /// Per (from, to) link, in order.
    links: BTreeMap<(NodeId, NodeId), VecDeque<Envelope<u64>>>,
    /// Each node's next op, and whether it waits for a grant.
    pc: Vec<usize>,
    waiting: Vec<bool>,
    /// The last value written to each page, and the next to write.
    last: Vec<u64>,
    next: u64,
}

impl World {
    fn new() -> Self {
        Self {
            nodes: (0..NODES).map(|i| Node::new(i, NODES, PAGES, 0)).collect(),
            mems: (0..NODES)
                .map(|_| Mem { data: vec![0; PAGES as usize], prot: vec![Access::Invalid; PAGES as usize] })
                .collect(),
            links: BTreeMap::new(),
            pc: vec![0; NODES as usize],
            waiting: vec![false; NODES as usize],
            last: vec![0; PAGES as usize],
            next: 1,
        }
    }

    fn post(&mut self, envs: impl IntoIterator<Item = Envelope<u64>>) {
        for e in envs {
            self.links.entry((e.from, e.to)).or_default().push_back(e);
        }
    }

    /// Node `n` performs its next op if its access allows, else faults.
    fn step(&mut self, n: usize, op: Op) {
        let (page, write) = match op {
            Op::Read(p) => (p, false),
            Op::Write(p) => (p, true),
        };
        match self.nodes[n].fault(page, write) {
            Some(req) => {
                self.post([req]);
                self.waiting[n] = true;
            }
            None => {
                let mem = &mut self.mems[n];
                if write {
                    mem.data[page as usize] = self.next;
                    self.last[page as usize] = self.next;
                    self.next += 1;
                } else {
                    assert_eq!(
                        mem.data[page as usize], self.last[page as usize],
                        "a read returned a stale value"
                    );
                }
                self.pc[n] += 1;
            }
        }
    }

    fn deliver(&mut self, link: (NodeId, NodeId)) {
        let env = self.links.get_mut(&link).and_then(VecDeque::pop_front).expect("a message");
        if self.links[&link].is_empty() {
            self.links.remove(&link);
        }
        let to = env.to as usize;
        let granted = matches!(env.msg, Msg::Grant { .. });
        let out = self.nodes[to].on_message(env, &mut self.mems[to]);
        self.post(out);
        if granted {
            self.waiting[to] = false; // the faulting op is retried next
        }
    }

    fn check(&self) {
        for p in 0..PAGES {
            let holders: Vec<Access> = self.nodes.iter().map(|n| n.access(p)).collect();
            let writers = holders.iter().filter(|&&a| a == Access::Modified).count();
            let readers = holders.iter().filter(|&&a| a == Access::Shared).count();
            assert!(writers <= 1, "two writers of page {p}: {holders:?}");
            assert!(writers == 0 || readers == 0, "a writer beside readers of page {p}: {holders:?}");
            for (n, a) in holders.iter().enumerate() {
                if *a != Access::Invalid {
                    assert_eq!(
                        self.mems[n].data[p as usize], self.last[p as usize],
                        "a stale copy at node {n}"
                    );
                }
                assert_eq!(self.mems[n].prot[p as usize], *a, "the protection follows the access");
            }
        }
    }
}

/// Explores every interleaving of `programs`; the number of states seen.
fn explore(programs: &[Vec<Op>]) -> usize {
    let mut seen = HashSet::new();
    let mut stack = vec![World::new()];
    while let Some(w) = stack.pop() {
        if !seen.insert(w.clone()) {
            continue;
        }
        w.check();
        let mut moved = false;
        for n in 0..NODES as usize {
            if !w.waiting[n] && w.pc[n] < programs[n].len() {
                let mut next = w.clone();
                next.step(n, programs[n][w.pc[n]]);
                stack.push(next);
                moved = true;
            }
        }
        for &link in w.links.keys() {
            let mut next = w.clone();
            next.deliver(link);
            stack.push(next);
            moved = true;
        }
        if !moved {
            let done = (0..NODES as usize).all(|n| w.pc[n] == programs[n].len());
            assert!(done && w.links.is_empty(), "stuck: {:?}", (w.pc, w.waiting, w.links.len()));
        }
    }
    seen.len()
}

#[test]
fn writers_and_readers_of_two_pages_stay_coherent() {
    use Op::{Read, Write};
    let programs = vec![
        vec![Write(0), Read(1), Write(1)],
        vec![Read(0), Write(0), Read(1)],
        vec![Write(1), Read(0), Write(0)],
    ];
    let states = explore(&programs);
    assert!(states > 1000, "the model explored {states} states");
}

#[test]
fn three_writers_of_one_page_take_turns() {
    use Op::{Read, Write};
    let programs = vec![vec![Write(0), Read(0)], vec![Write(0), Read(0)], vec![Read(0), Write(0)]];
    explore(&programs);
}
