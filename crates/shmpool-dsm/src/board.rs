//! A shared structure built by every node on the shmpool heap of a distributed region:
//! the demo's workload, and a test of the heap running there unchanged.
//!
//! Layer: shmpool-dsm, above `region` and the core crate's heap. Node 0 puts a segment
//! and a heap on the region; the others attach once it is there. Then:
//!
//! 1. every node allocates `posts` notes from the heap (its own pages) and pushes each
//!    onto one shared list with a CAS on the list's head (a heap root);
//! 2. every node walks the whole list, checks each note's checksum, counts the notes
//!    by author, and checks that no page holds notes of two authors (each node
//!    allocates from its own pages);
//! 3. every node frees the notes of the next node (`(id + 1) % nodes`): frees into
//!    another node's pages, which reach their owner lock-free;
//! 4. node 0 checks the heap: its allocated bytes are back where they started.
//!
//! The phases are separated by barriers: counters in a second heap root.

use crate::region::Region;
use shmpool::heap::{Heap, HeapError};
use shmpool::segment::AttachError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A note: the list link, its author, its number, and a checksum of the three.
#[repr(C)]
struct Note {
    next: AtomicU64,
    author: u64,
    seq: u64,
    check: u64,
}

fn checksum(author: u64, seq: u64) -> u64 {
    (author << 32 ^ seq).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed
}

/// What a node saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Notes on the list, by author.
    pub by_author: Vec<u64>,
    /// Notes whose checksum was wrong.
    pub corrupt: u64,
    /// Pages holding notes of more than one author: each node allocates from its own
    /// pages, so none.
    pub shared_pages: u64,
    /// Notes this node freed.
    pub freed: u64,
    /// On node 0: the heap's allocated bytes before the notes and at the end.
    pub allocated: Option<(u64, u64)>,
}

/// Why the structure could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BoardError {
    /// The heap could not be put on the region, or attached.
    #[error("the heap on the region: {0}")]
    Heap(String),
    /// A node did not reach a barrier in time.
    #[error("barrier {0}: the other nodes did not come in 60 s")]
    Barrier(usize),
    /// An allocation or a free failed.
    #[error("{0}")]
    Alloc(String),
}

/// The heap on `region`: node 0 makes it, the others wait (up to 30 s) until they can
/// attach to it.
pub fn heap(region: &Region) -> Result<Heap, BoardError> {
    if region.id() == 0 {
        let seg = region.create_segment(1 << 20).map_err(|e| BoardError::Heap(e.to_string()))?;
        return Heap::create(seg).map_err(|e| BoardError::Heap(e.to_string()));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tried = match region.attach_segment() {
            Ok(seg) => match Heap::attach(seg) {
                Ok(h) => return Ok(h),
                Err(HeapError::NotAHeap) => None,
                Err(e) => Some(e.to_string()),
            },
            Err(AttachError::Uninitialized | AttachError::Empty) => None,
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = tried {
            return Err(BoardError::Heap(e));
        }
        if Instant::now() > deadline {
            return Err(BoardError::Heap("node 0 did not put a heap on the region in 30 s".into()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn word(heap: &Heap, off: u64) -> &AtomicU64 {
    heap.segment().atomic_u64(off).expect("a word of a heap block")
}

/// Waits until every node has passed barrier `k`.
fn barrier(heap: &Heap, barriers: u64, nodes: u16, k: usize) -> Result<(), BoardError> {
    let w = word(heap, barriers + 8 * k as u64);
    // SYNC: SeqCst, as every access to the region is (the region is sequentially
    // consistent across nodes; this orders the phases within one).
    w.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.load(Ordering::SeqCst) < u64::from(nodes) {
        if Instant::now() > deadline {
            return Err(BoardError::Barrier(k));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(())
}

/// Builds the board with `posts` notes per node (see the module docs); the last
/// barrier keeps every node up until all are done.
pub fn build(region: &Region, posts: u64) -> Result<Report, BoardError> {
    let heap = heap(region)?;
    let (me, nodes) = (u64::from(region.id()), region.nodes());
    let roots = |name: &str| {
        heap.find_or_init(name, || [0u64; 8]).map(|o| o.get()).map_err(|e| BoardError::Heap(e.to_string()))
    };
    let (head, barriers) = (roots("board.head")?, roots("board.barriers")?);
    barrier(&heap, barriers, nodes, 0)?;
    let before = (me == 0).then(|| heap.check().map(|r| r.allocated_bytes));
    barrier(&heap, barriers, nodes, 1)?;
    let alloc = |e: String| BoardError::Alloc(e);
    for seq in 0..posts {
        let off = heap.alloc(size_of::<Note>() as u64).map_err(|e| alloc(e.to_string()))?;
        let (ptr, _) = heap.resolve(off).map_err(|e| alloc(e.to_string()))?;
        // SAFETY: the block is ours, just allocated, at least a `Note` long and 8-aligned;
        // nobody else sees it before it is pushed below.
        unsafe {
            ptr.cast::<Note>().write(Note {
                next: AtomicU64::new(0),
                author: me,
                seq,
                check: checksum(me, seq),
            })
        };
        let h = word(&heap, head);
        let mut cur = h.load(Ordering::SeqCst);
        loop {
            word(&heap, off).store(cur, Ordering::Relaxed);
            // SYNC: SeqCst publishes the note's fields with it (pairs with the walkers'
            // SeqCst loads of the head).
            match h.compare_exchange(cur, off, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
    }
    barrier(&heap, barriers, nodes, 2)?;
    let (mut by_author, mut corrupt, mut mine) = (vec![0u64; nodes as usize], 0, Vec::new());
    let mut page_author = std::collections::HashMap::new();
    let mut shared = std::collections::HashSet::new();
    let mut at = word(&heap, head).load(Ordering::SeqCst);
    while at != 0 {
        let (ptr, _) = heap.resolve(at).map_err(|e| alloc(format!("a note at {at}: {e}")))?;
        // SAFETY: a note on the list is a live block (nothing is freed before the next
        // barrier), written before it was published.
        let n = unsafe { ptr.cast::<Note>().as_ref() };
        match by_author.get_mut(n.author as usize) {
            Some(c) if n.check == checksum(n.author, n.seq) => *c += 1,
            _ => corrupt += 1,
        }
        if n.author == (me + 1) % u64::from(nodes) {
            mine.push(at);
        }
        let page = at / region.page_size() as u64;
        if *page_author.entry(page).or_insert(n.author) != n.author {
            shared.insert(page);
        }
        at = n.next.load(Ordering::SeqCst);
    }
    barrier(&heap, barriers, nodes, 3)?;
    for &off in &mine {
        heap.free(off).map_err(|e| alloc(format!("freeing {off}: {e}")))?;
    }
    barrier(&heap, barriers, nodes, 4)?;
    // The owners take back the blocks freed into their pages as they allocate again:
    // one allocation and free each.
    let off = heap.alloc(size_of::<Note>() as u64).map_err(|e| alloc(e.to_string()))?;
    heap.free(off).map_err(|e| alloc(e.to_string()))?;
    barrier(&heap, barriers, nodes, 5)?;
    let allocated = match before {
        Some(b) => {
            let b = b.map_err(|e| BoardError::Heap(e.to_string()))?;
            let after = heap.check().map_err(|e| BoardError::Heap(e.to_string()))?.allocated_bytes;
            Some((b, after))
        }
        None => None,
    };
    barrier(&heap, barriers, nodes, 6)?;
    Ok(Report { by_author, corrupt, shared_pages: shared.len() as u64, freed: mine.len() as u64, allocated })
}
