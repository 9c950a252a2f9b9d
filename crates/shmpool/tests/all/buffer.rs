//! Buffers and their handles on every backend; handles through a socket and a named
//! root to forked and unrelated processes; the block freed by the last drop anywhere;
//! bad handles refused; reference counts against a model.

use crate::conformance::{self, Fixture};
use crate::support::{fork, pattern, spawn_peer, trial, wait_peer, SharedHeap};
use libtest_mimic::Trial;
use proptest::prelude::*;
use shmpool::buffer::{Buffer, BufferError, MemoryHandle};
use shmpool::heap::Heap;
use shmpool::segment::Access;
use shmpool::{Segment, SegmentOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

pub fn tests() -> Vec<Trial> {
    let mut v: Vec<Trial> = [
        ("heap", conformance::heap as fn() -> Fixture),
        ("memfd", conformance::memfd),
        ("shm", conformance::shm),
        ("huge", conformance::huge),
        ("file", conformance::file),
    ]
    .into_iter()
    .map(|(backend, make)| {
        Trial::test(format!("buffer::{backend}::buffers_share_one_block"), move || {
            let f = make();
            buffers_share_one_block(Heap::create(f.seg).unwrap());
            Ok(())
        })
    })
    .collect();
    v.extend([
        trial("buffer::bad_handles_are_refused", bad_handles_are_refused),
        trial("buffer::the_last_drop_in_a_child_frees_the_block", the_last_drop_in_a_child_frees_the_block),
        trial(
            "buffer::the_last_drop_in_the_parent_frees_the_block",
            the_last_drop_in_the_parent_frees_the_block,
        ),
        trial(
            "buffer::an_unrelated_process_takes_a_handle_by_name",
            an_unrelated_process_takes_a_handle_by_name,
        ),
        trial("buffer::random_clones_and_drops_match_a_model", random_clones_and_drops_match_a_model),
    ]);
    v
}

fn allocated(heap: &Heap) -> u64 {
    heap.check().unwrap().allocated_bytes
}

/// Clones and slices share the block and its count; a handle's bytes turn back into the
/// same view; the block goes when the last reference does.
fn buffers_share_one_block(heap: Heap) {
    let before = allocated(&heap);
    let data = pattern(0, 5000, 4);
    let b = Buffer::from_slice(&heap, &data).unwrap().with_meta(99);
    assert_eq!((b.len(), b.refs(), b.meta()), (5000, 1, 99));
    assert_eq!(b.to_vec().unwrap(), data);
    let c = b.clone();
    let s = b.slice(1000..1010).unwrap();
    assert_eq!((b.refs(), s.len(), s.offset()), (3, 10, b.offset() + 1000));
    assert_eq!(s.to_vec().unwrap(), &data[1000..1010]);
    s.write(0, b"zero-copy!").unwrap();
    let mut got = [0u8; 10];
    c.read(1000, &mut got).unwrap();
    assert_eq!(&got, b"zero-copy!", "one block behind every view");
    let wire = s.share().to_bytes();
    assert_eq!(b.refs(), 4);
    let back = Buffer::from_handle(&heap, MemoryHandle::from_bytes(&wire).unwrap()).unwrap();
    assert_eq!((back.offset(), back.len(), back.meta(), back.refs()), (s.offset(), 10, 99, 4));
    assert_eq!(back.slice(..).unwrap().len(), 10);
    assert_eq!(back.slice(3..=4).unwrap().to_vec().unwrap(), b"o-");
    let empty = b.slice(5000..).unwrap();
    assert!(empty.is_empty());
    assert!(allocated(&heap) > before);
    drop((b, c, s, back, empty));
    assert_eq!(allocated(&heap), before, "the last drop freed the block");
    let zero = Buffer::new(&heap, 0).unwrap();
    assert_eq!(zero.to_vec().unwrap(), b"");
}

/// Handles of another segment, of a freed block, or with a range outside their block,
/// and ranges outside a buffer, are refused.
fn bad_handles_are_refused() {
    let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("buf").unwrap()).unwrap();
    let other = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("buf2").unwrap()).unwrap();
    let b = Buffer::new(&heap, 100).unwrap();
    let h = b.share();
    assert!(matches!(Buffer::from_handle(&other, h), Err(BufferError::WrongSegment { .. })));
    assert!(matches!(
        Buffer::from_handle(&heap, MemoryHandle { len: 101, ..h }),
        Err(BufferError::BadRange { len: 101, .. })
    ));
    assert!(matches!(
        Buffer::from_handle(&heap, MemoryHandle { offset: h.offset - 1, ..h }),
        Err(BufferError::BadRange { .. })
    ));
    assert!(matches!(
        Buffer::from_handle(&heap, MemoryHandle { stamp: h.stamp ^ 2, ..h }),
        Err(BufferError::Stale(_))
    ));
    assert!(matches!(
        Buffer::from_handle(&heap, MemoryHandle { block: 12345, ..h }),
        Err(BufferError::Stale(_))
    ));
    assert_eq!(MemoryHandle::from_bytes(&[0; 47]), Err(BufferError::BadLength(47)));
    assert!(matches!(b.slice(50..101), Err(BufferError::OutOfRange { start: 50, end: 101, len: 100 })));
    assert!(matches!(b.write(99, b"ab"), Err(BufferError::OutOfRange { .. })));
    drop(Buffer::from_handle(&heap, h).unwrap()); // the shared reference
    drop(b); // the last: freed
    assert!(matches!(Buffer::from_handle(&heap, h), Err(BufferError::Stale(_))), "a handle of a freed block");
    // The block reused by another buffer: the stamp tells them apart.
    let again: Vec<Buffer> = (0..64).map(|_| Buffer::new(&heap, 100).unwrap()).collect();
    assert!(matches!(Buffer::from_handle(&heap, h), Err(BufferError::Stale(_))));
    drop(again);
}

/// The child takes a handle from the socket, checks and answers in the bytes, clones the
/// buffer, and drops everything; then tells the parent.
fn child_side(name: &SharedHeap, mut sock: UnixStream, len: usize) -> i32 {
    let heap = name.attach();
    let mut wire = [0u8; MemoryHandle::LEN];
    sock.read_exact(&mut wire).unwrap();
    let b = Buffer::from_handle(&heap, MemoryHandle::from_bytes(&wire).unwrap()).unwrap();
    if b.to_vec().unwrap() != pattern(0, len, 5) {
        return 3;
    }
    b.write(0, b"answer").unwrap();
    let copies: Vec<Buffer> = (0..5).map(|_| b.clone()).collect();
    drop((b, copies));
    sock.write_all(b"done").unwrap();
    0
}

fn the_last_drop_in_a_child_frees_the_block() {
    let n = SharedHeap::new("buf-child");
    let before = allocated(&n.heap);
    let (mut here, there) = UnixStream::pair().unwrap();
    let b = Buffer::from_slice(&n.heap, &pattern(0, 70_000, 5)).unwrap(); // a large block
    here.write_all(&b.into_handle().to_bytes()).unwrap(); // the parent keeps nothing
    let child = fork(|| child_side(&n, there, 70_000));
    assert_eq!(child.wait(), 0);
    assert_eq!(allocated(&n.heap), before, "freed by the child's last drop");
}

fn the_last_drop_in_the_parent_frees_the_block() {
    let n = SharedHeap::new("buf-parent");
    let before = allocated(&n.heap);
    let (mut here, there) = UnixStream::pair().unwrap();
    let b = Buffer::from_slice(&n.heap, &pattern(0, 300, 5)).unwrap();
    here.write_all(&b.share().to_bytes()).unwrap();
    let child = fork(|| child_side(&n, there, 300));
    let mut done = [0u8; 4];
    here.read_exact(&mut done).unwrap();
    assert_eq!(child.wait(), 0);
    assert_eq!(b.refs(), 1, "the child's references are gone");
    let mut got = [0u8; 6];
    b.read(0, &mut got).unwrap();
    assert_eq!(&got, b"answer", "the child wrote into the same bytes");
    drop(b);
    assert_eq!(allocated(&n.heap), before);
}

/// The handle waits in a named root; an unrelated process attaches by name, takes it,
/// and its drop is the last.
fn an_unrelated_process_takes_a_handle_by_name() {
    let n = SharedHeap::new("buf-peer");
    let before = allocated(&n.heap);
    let b = Buffer::from_slice(&n.heap, &pattern(0, 1000, 5)).unwrap().with_meta(42);
    let h = b.into_handle();
    let root = n.heap.find_or_init::<MemoryHandle>("handle", || h).unwrap();
    let peer = spawn_peer("buffer-peer", &[&n.name]);
    assert_eq!(wait_peer(peer), 0);
    assert_eq!(allocated(&n.heap) - before, root_bytes(&n.heap), "only the root's own block is left");
    let _ = root;
}

/// Bytes of the named root's value block (allocated by `find_or_init`).
fn root_bytes(heap: &Heap) -> u64 {
    let off = heap.find_or_init::<MemoryHandle>("handle", || unreachable!()).unwrap().get();
    heap.usable_size(off).unwrap()
}

pub fn peer_buffer(args: &[&str]) -> i32 {
    let heap = Heap::attach(Segment::open_shm(args[0], Access::ReadWrite).unwrap()).unwrap();
    let h = heap.find_or_init::<MemoryHandle>("handle", || unreachable!()).unwrap();
    let b = Buffer::from_handle(&heap, h.read(heap.segment()).unwrap()).unwrap();
    let ok = b.meta() == 42 && b.to_vec().unwrap() == pattern(0, 1000, 5);
    i32::from(!ok)
}

#[derive(Debug, Clone)]
enum Op {
    Clone(usize),
    Slice(usize, u64),
    ShareAndBack(usize),
    Drop(usize),
}

/// Random clones, slices, handle round trips and drops: the shared count always equals
/// the model's, and the block is freed exactly when the last view goes.
fn random_clones_and_drops_match_a_model() {
    let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("buf").unwrap()).unwrap();
    let op = prop_oneof![
        1 => any::<usize>().prop_map(Op::Clone),
        1 => (any::<usize>(), 0u64..64).prop_map(|(k, s)| Op::Slice(k, s)),
        1 => any::<usize>().prop_map(Op::ShareAndBack),
        2 => any::<usize>().prop_map(Op::Drop),
    ];
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 64, ..Default::default() });
    let before = allocated(&heap);
    runner
        .run(&prop::collection::vec(op, 1..100), |ops| {
            let mut views = vec![Buffer::from_slice(&heap, &pattern(0, 64, 6)).unwrap()];
            let data = views[0].offset();
            for op in ops {
                if views.is_empty() {
                    break;
                }
                let n = views.len();
                match op {
                    Op::Clone(k) => views.push(views[k % n].clone()),
                    Op::Slice(k, s) => {
                        let v = &views[k % n];
                        let part = v.slice(s.min(v.len())..).unwrap();
                        let mut first = [0u8; 1];
                        if part.read(0, &mut first).is_ok() {
                            prop_assert_eq!(first[0], pattern(0, 64, 6)[(part.offset() - data) as usize]);
                        }
                        views.push(part);
                    }
                    Op::ShareAndBack(k) => {
                        let h = views[k % n].share();
                        views.push(Buffer::from_handle(&heap, h).unwrap());
                    }
                    Op::Drop(k) => drop(views.swap_remove(k % n)),
                }
                if let Some(v) = views.first() {
                    prop_assert_eq!(v.refs(), views.len() as u64);
                    prop_assert!(allocated(&heap) > before);
                }
            }
            views.clear();
            prop_assert_eq!(allocated(&heap), before, "freed with the last view");
            Ok(())
        })
        .unwrap();
}
