//! Segment-layer costs: attaching by name (open, fstat, pread + validate, mmap), growing
//! by 1 MiB (eager `fallocate` vs lazy `ftruncate`), and a bounds-checked 4 KiB copy in
//! and out of a segment (atomic word copies, and the unsafe plain `memcpy` variant)
//! beside a plain `memcpy` between private buffers.
#![allow(unsafe_code)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shmpool::segment::{Access, Commit};
use shmpool::{Segment, SegmentOptions};
use shmpool_bench::{unique_shm_name, Unlink};
use std::hint::black_box;

fn attach(c: &mut Criterion) {
    let name = unique_shm_name("attach");
    let _u = Unlink(name.clone());
    let _seg = SegmentOptions::new().max_size(64 << 30).create_shm(&name).unwrap();
    c.bench_function("attach_by_name_64GiB_reserved", |b| {
        b.iter(|| black_box(Segment::open_shm(&name, Access::ReadWrite).unwrap()))
    });
}

fn grow(c: &mut Criterion) {
    let mut g = c.benchmark_group("grow_1MiB");
    g.throughput(Throughput::Bytes(1 << 20));
    for (label, commit) in [("eager", Commit::Eager), ("lazy", Commit::Lazy)] {
        g.bench_function(label, |b| {
            b.iter_batched(
                || {
                    SegmentOptions::new()
                        .size(1 << 20)
                        .max_size(64 << 20)
                        .commit(commit)
                        .create_memfd("b")
                        .unwrap()
                },
                |seg| black_box(seg.grow_to(2 << 20).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// A page-aligned 4 KiB window of `buf` (whose length must leave room for it).
fn page_aligned(buf: &mut [u8]) -> &mut [u8] {
    let skip = buf.as_ptr().align_offset(4096);
    &mut buf[skip..skip + 4096]
}

fn copy(c: &mut Criterion) {
    let seg = SegmentOptions::new().size(1 << 20).create_memfd("copy").unwrap();
    // The reference copies between page-aligned buffers, as the segment's are: a copy
    // between buffers whose addresses differ by 4096 + 16 runs 20x slower here.
    let (mut a, mut b) = (vec![7u8; 8192], vec![0u8; 8192]);
    let (src, dst) = (page_aligned(&mut a), page_aligned(&mut b));
    let off = seg.data_start();
    seg.write_bytes(off, src).unwrap();
    let mut g = c.benchmark_group("copy_4KiB");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("memcpy_private", |b| b.iter(|| dst.copy_from_slice(black_box(&*src))));
    g.bench_function("segment_write_bytes", |b| b.iter(|| seg.write_bytes(black_box(off), src).unwrap()));
    g.bench_function("segment_read_bytes", |b| b.iter(|| seg.read_bytes(black_box(off), dst).unwrap()));
    g.bench_function("segment_write_bytes_nonatomic", |b| {
        b.iter(|| {
            // SAFETY: nothing else touches this private benchmark segment.
            unsafe { seg.write_bytes_nonatomic(black_box(off), src) }.unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, attach, grow, copy);
criterion_main!(benches);
