//! W1's loop alone, for instruction counts: `valgrind --tool=callgrind` at two values of
//! N; the difference divided by the difference of N is instructions per pair.
use shmpool::heap::Heap;
use shmpool::SegmentOptions;

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let heap = Heap::create(SegmentOptions::new().max_size(1 << 30).create_memfd("w1").unwrap()).unwrap();
    let base = heap.segment().backend().base().as_ptr();
    for i in 0..n {
        let o = heap.alloc(64).unwrap();
        // SAFETY: a live 64-byte block inside the mapping.
        unsafe { base.add(o as usize).cast::<u64>().write_volatile(i) };
        heap.free(o).unwrap();
    }
}
