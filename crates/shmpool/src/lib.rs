//! # shmpool — many processes, one memory
//!
//! shmpool gives processes a shared memory *segment* and the tools to use it: forked
//! children inherit it, unrelated processes attach to it by name or by path, or receive
//! its file descriptor over a Unix socket.
//!
//! ```text
//!   process A                 process B (unrelated)        process C (got the fd)
//!   ┌──────────┐              ┌──────────┐                 ┌──────────┐
//!   │ mapping ─┼──┐        ┌──┼─ mapping │              ┌──┼─ mapping │
//!   └──────────┘  │        │  └──────────┘              │  └──────────┘
//!                 ▼        ▼                            ▼
//!        ┌────────┬──────────────────────────┬ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ┐
//!        │ header │ data (committed)         │  reserved, not committed
//!        └────────┴──────────────────────────┴ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ┘
//!        0       4096                  committed()                  reserved()
//! ```
//!
//! Every process maps the whole *reserved* capacity once; the *committed* part grows
//! with `ftruncate`/`fallocate` and every mapping sees the new pages at once, so
//! mappings never need to be redone. Shared memory holds offsets, never pointers.
//!
//! ```
//! use shmpool::segment::{Segment, SegmentOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let seg = SegmentOptions::new().size(64 << 10).max_size(16 << 20).create_memfd("doc")?;
//! let off = seg.data_start();
//! seg.write_bytes(off, b"hello")?;
//! let mut back = [0u8; 5];
//! seg.read_bytes(off, &mut back)?;
//! assert_eq!(&back, b"hello");
//! seg.grow_to(1 << 20)?; // every process mapping this segment now sees 1 MiB
//! assert!(seg.committed() >= 1 << 20);
//! # Ok(()) }
//! ```
//!
//! The layers are listed in `DESIGN.md`; this crate provides [`segment`], [`offset`], [`heap`],
//! [`pools`], [`buffer`], [`sync`] and [`channel`].
//!
//! # Unsafe code
//! The crate denies `unsafe_code`; the modules that opt back in are the audit list:
//! - `segment::mapping` (mmap and munmap) and `segment::access` (the header, checked raw
//!   reads and writes of the mapping, `Send`/`Sync` of `Segment`);
//! - `offset` (reinterpreting copied bytes as a `ShmSafe` type);
//! - `pools::region` (the views of a pool's header and meta array) and `sync::mutex` (the
//!   guarded value), and `channel::{spsc, mpmc, oneshot}` (the values in their slots);
//! - `heap::raw`, whose one primitive views the heap's own structures in the segment, and
//!   the heap modules that call it (`heap`, `slab`, `store`, `layout`, `lock`), plus
//!   `heap::tls` (the fork handler). Each names what makes its views sound.
//!
//! The loom models in `tests/` use `unsafe` on modelled cells only.
#![deny(unsafe_code)]
#![warn(missing_docs)]

// The derive macros name `::shmpool`, which inside this crate is the crate itself.
extern crate self as shmpool;

pub(crate) mod asym;
pub mod buffer;
pub mod channel;
pub mod crash;
pub mod heap;
pub(crate) mod loom;
pub mod offset;
pub mod pages;
pub mod pools;
pub mod segment;
pub mod sync;
#[cfg(test)]
mod tests;

pub use offset::{Offset, ShmSafe};
pub use segment::{AttachError, CreateError, GrowError, Segment, SegmentOptions};
