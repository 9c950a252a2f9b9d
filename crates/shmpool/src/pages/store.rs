//! Where the buddy allocator keeps its state: the unit table, the list heads and the
//! per-free-block links. The heap stores them in the segment; tests use [`VecStore`].

use super::{MAX_ORDER, NIL};

/// Storage of a [`Buddy`](super::Buddy).
pub trait UnitStore {
    /// Units under management.
    fn managed(&self) -> u32;
    /// Sets the number of units under management.
    fn set_managed(&mut self, units: u32);
    /// The table word of unit `u`.
    fn entry(&self, u: u32) -> u64;
    /// Sets the table word of unit `u`.
    fn set_entry(&mut self, u: u32, word: u64);
    /// Head of free list `order` (`NIL` if empty).
    fn head(&self, order: usize) -> u32;
    /// Sets the head of free list `order`.
    fn set_head(&mut self, order: usize, u: u32);
    /// `(next, prev)` links of the free block at `u`.
    fn link(&self, u: u32) -> (u32, u32);
    /// Sets the links of the free block at `u`.
    fn set_link(&mut self, u: u32, next: u32, prev: u32);
}

/// A store in ordinary memory, for tests and models.
#[derive(Debug, Clone)]
pub struct VecStore {
    managed: u32,
    table: Vec<u64>,
    heads: [u32; MAX_ORDER],
    links: Vec<(u32, u32)>,
}

impl VecStore {
    /// Room for `capacity` units, none managed yet.
    pub fn new(capacity: u32) -> Self {
        Self {
            managed: 0,
            table: vec![0; capacity as usize],
            heads: [NIL; MAX_ORDER],
            links: vec![(NIL, NIL); capacity as usize],
        }
    }

    /// Overwrites one table word, as a crash or a bug might.
    pub fn poke(&mut self, u: u32, word: u64) {
        self.table[u as usize] = word;
    }
}

impl UnitStore for VecStore {
    fn managed(&self) -> u32 {
        self.managed
    }
    fn set_managed(&mut self, units: u32) {
        self.managed = units;
    }
    fn entry(&self, u: u32) -> u64 {
        self.table[u as usize]
    }
    fn set_entry(&mut self, u: u32, word: u64) {
        self.table[u as usize] = word;
    }
    fn head(&self, order: usize) -> u32 {
        self.heads[order]
    }
    fn set_head(&mut self, order: usize, u: u32) {
        self.heads[order] = u;
    }
    fn link(&self, u: u32) -> (u32, u32) {
        self.links[u as usize]
    }
    fn set_link(&mut self, u: u32, next: u32, prev: u32) {
        self.links[u as usize] = (next, prev);
    }
}
