//! # shmpool-dsm — one region shared by processes on several hosts
//!
//! Layer: shmpool-dsm, above the core crate (DESIGN.md: Distributed mode). Each node (a
//! process, on this host or another) maps the region at the same address; a page is
//! Invalid, Shared (read-only, any number of nodes) or Modified (one writer), kept
//! sequentially consistent IVY-style (Li and Hudak, "Memory Coherence in Shared Virtual
//! Memory Systems", 1989) with a fixed home node per page that serialises its
//! transactions.
//!
//! This crate holds, so far, the coherence protocol as a pure state machine
//! ([`protocol`]): messages and faults in, messages and page updates out, no I/O, so that
//! it is checked exhaustively (the model in `protocol`'s tests, with and without a node
//! killed at any point), and the transport's framing ([`transport`]: postcard-encoded
//! envelopes over TCP or Unix sockets), and a node driver in software ([`driver`]:
//! explicit accesses where the fault handler will stand, nodes of one process wired by
//! Unix sockets). Fault capture (userfaultfd), nodes on several hosts and the heap on a
//! distributed region are to build on them.

pub mod board;
pub mod driver;
pub mod protocol;
pub mod region;
pub mod signals;
pub mod transport;
pub mod uffd;
