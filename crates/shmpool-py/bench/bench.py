"""Kops/s of the Python allocators, beside a pure-Python free list over
multiprocessing.shared_memory guarded by a multiprocessing.Lock, in the same run.

    python crates/shmpool-py/bench/bench.py [--reps 5] [--n 200000]

One line per allocator (medians of the repetitions, each operation on 64-byte blocks):
write, read, sequential alloc, alloc+free pairs, and a reuse pattern (allocate 1,000,
free every other one, allocate them again); then alloc+free of the reference and the
ratio, which the package aims to keep at 5x or more.
"""

import argparse
import multiprocessing as mp
import statistics
import struct
import time
import uuid
from multiprocessing import shared_memory

from shmpool import BumpAllocator, FreeListAllocator, Heap, SlabAllocator


class PyFreeList:
    """The reference: 64-byte slots, a stack of free indices in shared memory, a Lock."""

    def __init__(self, slots):
        self.slots = slots
        self.shm = shared_memory.SharedMemory(create=True, size=8 + 4 * slots + 64 * slots)
        self.lock = mp.Lock()
        buf = self.shm.buf
        struct.pack_into("q", buf, 0, slots)
        for i in range(slots):
            struct.pack_into("i", buf, 8 + 4 * i, slots - 1 - i)
        self.data = 8 + 4 * slots

    def allocate(self, n):
        with self.lock:
            buf = self.shm.buf
            (head,) = struct.unpack_from("q", buf, 0)
            if head == 0:
                raise MemoryError("full")
            head -= 1
            (idx,) = struct.unpack_from("i", buf, 8 + 4 * head)
            struct.pack_into("q", buf, 0, head)
        return self.data + 64 * idx

    def free(self, off):
        idx = (off - self.data) // 64
        with self.lock:
            buf = self.shm.buf
            (head,) = struct.unpack_from("q", buf, 0)
            struct.pack_into("i", buf, 8 + 4 * head, idx)
            struct.pack_into("q", buf, 0, head + 1)

    def close(self):
        self.shm.close()
        self.shm.unlink()


def kops(n, f):
    t = time.perf_counter()
    f()
    return n / (time.perf_counter() - t) / 1000


def measure(a, n, resettable):
    block = b"x" * 64
    off = a.allocate(64)
    out = {}
    out["write"] = kops(n, lambda: [a.write(off, block) for _ in range(n)])
    out["read"] = kops(n, lambda: [a.read(off, 64) for _ in range(n)])
    a.free(off) if not isinstance(a, BumpAllocator) else a.reset()

    def seq():
        k = 0
        while k < n:
            batch = min(1000, n - k)
            offs = [a.allocate(64) for _ in range(batch)]
            if resettable:
                a.reset()
            else:
                for o in offs:
                    a.free(o)
            k += batch

    out["seq_alloc"] = kops(n, seq)
    if isinstance(a, BumpAllocator):
        return out

    def pairs():
        for _ in range(n):
            a.free(a.allocate(64))

    out["alloc_free"] = kops(n, pairs)

    def reuse():
        offs = [a.allocate(64) for _ in range(1000)]
        for _ in range(n // 1000):
            for i in range(0, 1000, 2):
                a.free(offs[i])
            for i in range(0, 1000, 2):
                offs[i] = a.allocate(64)
        for o in offs:
            a.free(o)

    out["reuse"] = kops(n // 1000 * 1000, reuse)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    n = args.n
    cap = 64 * 4096
    kinds = [
        ("BumpAllocator", lambda name: BumpAllocator(name=name, capacity=64 * 1000 * 2)),
        ("FreeListAllocator", lambda name: FreeListAllocator(name=name, capacity=cap, slot_size=64)),
        ("SlabAllocator", lambda name: SlabAllocator(name=name, capacity=cap, slot_size=64)),
        ("Heap", lambda name: Heap(name=name, capacity=256 << 20)),
    ]
    print(f"# shmpool python bench: reps={args.reps} n={n} block=64")
    ref = PyFreeList(4096)
    results = {k: {} for k, _ in kinds}
    ref_pairs, ratios = [], {k: [] for k, _ in kinds}
    try:
        for _ in range(args.reps):
            def ref_pairs_loop():
                for _ in range(n):
                    ref.free(ref.allocate(64))

            t = kops(n, ref_pairs_loop)
            ref_pairs.append(t)
            for name, make in kinds:
                a = make(f"shmpool-bench-{uuid.uuid4().hex[:10]}")
                try:
                    got = measure(a, n, name == "BumpAllocator")
                finally:
                    a.unlink()
                    a.close()
                for k, v in got.items():
                    results[name].setdefault(k, []).append(v)
                if "alloc_free" in got:
                    ratios[name].append(got["alloc_free"] / t)
    finally:
        ref.close()
    for name, _ in kinds:
        fields = " ".join(f"{k}_kops={statistics.median(v):.0f}" for k, v in results[name].items())
        ratio = f" vs_pylist={statistics.median(ratios[name]):.1f}" if ratios[name] else ""
        print(f"shmpool-py {name} {fields}{ratio} reps={args.reps}")
    print(f"pure-python freelist+Lock alloc_free_kops={statistics.median(ref_pairs):.0f} reps={args.reps}")


if __name__ == "__main__":
    main()
