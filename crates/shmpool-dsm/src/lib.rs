//! # shmpool-dsm — one region shared by processes on several hosts
//!
//! Layer: shmpool-dsm, above the core crate (DESIGN.md: Distributed mode). Each node (a
//! process, on this host or another) maps the region at the same address; a page is
//! Invalid, Shared (read-only, any number of nodes) or Modified (one writer), kept
//! sequentially consistent IVY-style (Li and Hudak, "Memory Coherence in Shared Virtual
//! Memory Systems", 1989) with a fixed home node per page that serialises its
//! transactions. Plain loads, stores and atomics on the region are sequentially
//! consistent across the nodes, and the shmpool heap runs on it unchanged.
//!
//! - [`protocol`]: the coherence protocol as a pure state machine (messages and faults
//!   in, messages and page updates out, no I/O), checked exhaustively in its tests with
//!   and without a node killed at any point;
//! - [`transport`]: postcard-encoded envelopes over TCP or Unix sockets;
//! - [`driver`]: a node — the protocol, its links, messages sent in the order made —
//!   and an explicit-access driver over ordinary memory;
//! - [`region`]: the mapped region, whose faults are caught with [`uffd`]
//!   (userfaultfd) or, where that cannot be had, with [`signals`] (page protection);
//!   a segment backend, so the heap runs on it;
//! - [`board`]: the demo's shared structure, built on the heap by every node.
//!
//! ```no_run
//! use shmpool::heap::Heap;
//! use shmpool_dsm::region::{Region, RegionOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let peers = ["10.0.0.1:7000".parse()?, "10.0.0.2:7000".parse()?, "10.0.0.3:7000".parse()?];
//! let id = 0; // this node's index in `peers`; the others run the same with 1 and 2
//! let region = Region::join_tcp(id, &peers, &RegionOptions::new(64 << 20))?;
//! let heap = if id == 0 {
//!     Heap::create(region.create_segment(1 << 20)?)? // one node puts the heap on it
//! } else {
//!     Heap::attach(region.attach_segment()?)? // (retry while it is not there yet)
//! };
//! let block = heap.alloc(64)?; // from this node's own pages; any node may free it
//! heap.free(block)?;
//! region.leave(std::time::Duration::from_secs(60)); // once every node is done
//! # Ok(()) }
//! ```

// Under `--cfg loom` only the lock-free slot and its model are built.
#[cfg(not(loom))]
pub mod board;
#[cfg(not(loom))]
pub mod driver;
#[cfg(not(loom))]
pub mod protocol;
#[cfg(not(loom))]
pub mod region;
#[cfg(not(loom))]
pub mod signals;
mod slot;
#[cfg(not(loom))]
pub mod transport;
#[cfg(not(loom))]
pub mod uffd;
