//! The pools' loops alone, for instruction counts beside W1's: `pool_ops KIND N` with
//! KIND one of `slots` (loan + return), `freelist` (alloc + free), `bump` (alloc) or
//! `w1` (the heap's alloc + free), each with a write of one u64. Run under
//! `valgrind --tool=callgrind` at two values of N; the difference of the counts divided
//! by the difference of N is instructions per operation.
use shmpool::heap::Heap;
use shmpool::pools::{BumpArena, FreeList, SlotPool};
use shmpool::SegmentOptions;

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "slots".into());
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let heap = Heap::create(SegmentOptions::new().max_size(1 << 30).create_memfd("ops").unwrap()).unwrap();
    let base = heap.segment().backend().base().as_ptr();
    // SAFETY: every offset poked is a live block of at least 8 bytes, 8-aligned, in the
    // mapping.
    let poke = |off: u64, v: u64| unsafe { base.add(off as usize).cast::<u64>().write_volatile(v) };
    match kind.as_str() {
        "slots" => {
            let pool = SlotPool::create_in(&heap, 64, 1024).unwrap();
            for i in 0..n {
                let l = pool.try_loan().unwrap();
                poke(l.offset(), i);
            }
        }
        "freelist" => {
            let list = FreeList::create_in(&heap, 64, 1024).unwrap();
            for i in 0..n {
                let o = list.alloc().unwrap();
                poke(o, i);
                list.free(o).unwrap();
            }
        }
        "bump" => {
            let arena = BumpArena::create_in(&heap, 64 * n + 64).unwrap();
            for i in 0..n {
                poke(arena.alloc(64, 16).unwrap(), i);
            }
        }
        "w1" => {
            for i in 0..n {
                let o = heap.alloc(64).unwrap();
                poke(o, i);
                heap.free(o).unwrap();
            }
        }
        other => panic!("unknown kind {other}: slots, freelist, bump or w1"),
    }
}
