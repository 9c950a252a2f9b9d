//! Heap micro-benchmarks: an alloc+free pair by the owning thread (64 B and mixed sizes,
//! mimalloc beside it in the same group), and a remote free — a block allocated by one
//! thread and freed by another (one claim in the remote bitmap and one CAS).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use mimalloc::MiMalloc;
use shmpool::heap::Heap;
use shmpool::SegmentOptions;
use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

fn heap() -> Heap {
    Heap::create(SegmentOptions::new().max_size(4 << 30).create_memfd("bench").unwrap()).unwrap()
}

fn local_pairs(c: &mut Criterion) {
    let heap = heap();
    let mut g = c.benchmark_group("alloc_free");
    g.bench_function("shmpool_64", |b| b.iter(|| heap.free(heap.alloc(black_box(64)).unwrap()).unwrap()));
    let layout = Layout::from_size_align(64, 16).unwrap();
    g.bench_function("mimalloc_64", |b| {
        b.iter(|| {
            // SAFETY: a valid layout, freed with the same layout.
            unsafe { MiMalloc.dealloc(black_box(MiMalloc.alloc(layout)), layout) }
        })
    });
    let sizes: Vec<u64> = (0..64).map(|i| 16 + (i * 977) % 4081).collect();
    let mut i = 0;
    g.bench_function("shmpool_mixed_16_4096", |b| {
        b.iter(|| {
            i = (i + 1) % sizes.len();
            heap.free(heap.alloc(black_box(sizes[i])).unwrap()).unwrap()
        })
    });
    g.finish();
}

fn remote_free(c: &mut Criterion) {
    let heap = heap();
    let mut g = c.benchmark_group("remote_free");
    g.bench_function("shmpool_64_freed_by_another_thread", |b| {
        b.iter_batched(
            || {
                let h = heap.clone();
                std::thread::spawn(move || (0..1024).map(|_| h.alloc(64).unwrap()).collect::<Vec<u64>>())
                    .join()
                    .unwrap()
            },
            |blocks| {
                for off in blocks {
                    heap.free(off).unwrap();
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, local_pairs, remote_free);
criterion_main!(benches);
