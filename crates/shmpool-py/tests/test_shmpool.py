"""The Python package: every allocator's operations and errors, zero-copy views,
pickling, and multiprocessing workers under the fork and the spawn start methods
(allocating, writing, freeing what another process allocated, passing offsets through
a queue), and a worker killed while it allocates."""

import multiprocessing as mp
import os
import pickle
import signal
import uuid

import pytest

import shmpool
from shmpool import (
    BadOffsetError,
    BumpAllocator,
    ClosedError,
    DoubleFreeError,
    ExistsError,
    FreeListAllocator,
    Heap,
    NotFoundError,
    OffsetQueue,
    OutOfMemoryError,
    ShmpoolError,
    SlabAllocator,
)

KINDS = [BumpAllocator, FreeListAllocator, SlabAllocator, Heap]
TIMEOUT = 60


def fresh(cls, **kw):
    name = f"shmpool-py-{cls.__name__}-{uuid.uuid4().hex[:12]}"
    kw.setdefault("capacity", 64 << 20 if cls is Heap else 1 << 16)
    return cls(name=name, **kw)


@pytest.fixture(params=KINDS, ids=lambda c: c.__name__)
def alloc(request):
    a = fresh(request.param)
    yield a
    try:
        a.unlink()
    except ShmpoolError:
        pass


def test_allocate_write_read_free(alloc):
    initial = alloc.available_bytes()
    offs = [alloc.allocate(40) for _ in range(10)]
    assert len(set(offs)) == 10
    for i, o in enumerate(offs):
        alloc.write(o, bytes([i]) * 40)
    for i, o in enumerate(offs):
        assert alloc.read(o, 40) == bytes([i]) * 40
    if isinstance(alloc, BumpAllocator):
        with pytest.raises(ShmpoolError):
            alloc.free(offs[0])
        alloc.reset()
        assert alloc.available_bytes() == alloc.capacity
    else:
        for o in offs:
            alloc.free(o)
        if not isinstance(alloc, Heap):  # a heap keeps its emptied slab for reuse
            assert alloc.available_bytes() == initial
        again = [alloc.allocate(40) for _ in range(10)]
        assert sorted(again) == sorted(offs), 'the freed blocks come back' 


def test_errors_are_exceptions(alloc):
    o = alloc.allocate(16)
    alloc.write(o + 3, b"inside")  # any byte of a block, not only its start
    assert alloc.read(o + 3, 6) == b"inside"
    with pytest.raises(BadOffsetError):
        alloc.write(o + 12, b"leaves the block" * 100)
    with pytest.raises(BadOffsetError):
        alloc.write(1, b"x")
    with pytest.raises(BadOffsetError):
        alloc.read(o, 1 << 20)
    if isinstance(alloc, BumpAllocator):
        with pytest.raises(ShmpoolError, match="reset"):
            alloc.free(o)
    else:
        alloc.free(o)
        with pytest.raises(DoubleFreeError):
            alloc.free(o)
        with pytest.raises(BadOffsetError):
            alloc.read(o, 1)  # a freed block is no block
        with pytest.raises(BadOffsetError):
            alloc.view(o, 1)
    with pytest.raises(OutOfMemoryError):
        alloc.allocate(1 << 40)
    with pytest.raises(OverflowError):
        alloc.read(-1, 1)
    alloc.close()
    assert alloc.closed
    for call in (
        lambda: alloc.allocate(1),
        lambda: alloc.read(o, 1),
        lambda: alloc.write(o, b"x"),
        lambda: alloc.view(o, 1),
        lambda: alloc.free(o),
        lambda: alloc.reset(),
        lambda: alloc.available_bytes(),
    ):
        with pytest.raises(ClosedError):
            call()


def test_out_of_memory_then_usable():
    a = fresh(FreeListAllocator, capacity=64 * 8, slot_size=64)
    try:
        offs = [a.allocate(64) for _ in range(8)]
        with pytest.raises(OutOfMemoryError):
            a.allocate(64)
        a.free(offs[3])
        assert a.allocate(10) == offs[3]
    finally:
        a.unlink()


def test_names_are_checked():
    a = fresh(SlabAllocator)
    try:
        with pytest.raises(ExistsError):
            SlabAllocator(name=a.name, capacity=1 << 16)
        with pytest.raises(NotFoundError):
            FreeListAllocator(name=a.name, create=False)
    finally:
        a.unlink()
    with pytest.raises(NotFoundError):
        Heap(name=f"no-such-{uuid.uuid4().hex}", create=False)
    with pytest.raises(ValueError):
        Heap(name="bad/name", capacity=1 << 20)


def test_views_are_zero_copy_and_outlive_close(alloc):
    o = alloc.allocate(64)
    v = alloc.view(o, 64)
    assert isinstance(v, memoryview) and len(v) == 64 and not v.readonly
    v[0:5] = b"hello"
    assert alloc.read(o, 5) == b"hello"
    alloc.write(o, b"HELLO")
    assert bytes(v[0:5]) == b"HELLO"
    alloc.close()
    assert bytes(v[0:5]) == b"HELLO"  # the mapping stays while the view lives
    v.release()


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
def test_every_class_pickles_as_attach_by_name(cls):
    a = fresh(cls)
    try:
        o = a.allocate(8)
        a.write(o, b"pickled!")
        b = pickle.loads(pickle.dumps(a))
        assert type(b) is cls and b.name == a.name and b.capacity == a.capacity
        assert b.read(o, 8) == b"pickled!"
    finally:
        a.unlink()
    with OffsetQueue(name=f"shmpool-py-q-{uuid.uuid4().hex[:12]}") as q:
        q.put(7)
        assert pickle.loads(pickle.dumps(q)).get(timeout=1) == 7
        q.unlink()


def test_context_manager_and_pickle():
    with fresh(Heap) as h:
        o = h.allocate(10)
        h.write(o, b"0123456789")
        again = pickle.loads(pickle.dumps(h))
        assert again.name == h.name and again.read(o, 10) == b"0123456789"
        again.free(o)
        h.unlink()
    assert h.closed


def _worker_write_and_free(alloc, q_name, n):
    q = OffsetQueue(name=q_name, create=False)
    for i in range(n):
        off = q.get(timeout=TIMEOUT)
        data = alloc.read(off, 8)
        assert data == i.to_bytes(8, "little"), (i, data)
        alloc.free(off)  # a free of a block another process allocated
    return 0


def _worker_allocate(alloc, q_name, n):
    q = OffsetQueue(name=q_name, create=False)
    for i in range(n):
        off = alloc.allocate(8)
        alloc.write(off, i.to_bytes(8, "little"))
        q.put(off, timeout=TIMEOUT)


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("cls", [FreeListAllocator, SlabAllocator, Heap], ids=lambda c: c.__name__)
def test_processes_pass_blocks_and_free_each_others(method, cls):
    ctx = mp.get_context(method)
    alloc = fresh(cls)
    q = OffsetQueue(name=f"shmpool-py-q-{uuid.uuid4().hex[:12]}", capacity=64)
    n = 2000
    try:
        before = alloc.available_bytes()
        producer = ctx.Process(target=_worker_allocate, args=(alloc, q.name, n))
        consumer = ctx.Process(target=_worker_write_and_free, args=(alloc, q.name, n))
        producer.start()
        consumer.start()
        producer.join(TIMEOUT)
        consumer.join(TIMEOUT)
        assert producer.exitcode == 0 and consumer.exitcode == 0
        if cls is not Heap:
            assert alloc.available_bytes() == before, 'every block came back'
        else:
            assert [alloc.allocate(8) for _ in range(10)], 'the heap still allocates' 
    finally:
        alloc.unlink()
        q.unlink()


def _allocate_forever(heap, started):
    started.set()
    while True:
        off = heap.allocate(100)
        heap.write(off, b"x" * 100)
        heap.free(off)


def test_a_worker_killed_mid_allocation_leaves_a_working_heap():
    ctx = mp.get_context("fork")
    heap = fresh(Heap)
    try:
        started = ctx.Event()
        p = ctx.Process(target=_allocate_forever, args=(heap, started))
        p.start()
        assert started.wait(TIMEOUT), 'the worker allocates'
        import time

        time.sleep(0.05)  # in the middle of its loop
        os.kill(p.pid, signal.SIGKILL)
        p.join(TIMEOUT)
        assert p.exitcode == -signal.SIGKILL
        offs = [heap.allocate(100) for _ in range(1000)]
        for o in offs:
            heap.free(o)
    finally:
        heap.unlink()


def test_queue_times_out():
    with OffsetQueue(name=f"shmpool-py-q-{uuid.uuid4().hex[:12]}", capacity=2) as q:
        with pytest.raises(TimeoutError):
            q.get(timeout=0.05)
        q.put(1)
        q.put(2)
        with pytest.raises(TimeoutError):
            q.put(3, timeout=0.05)
        assert (q.get(), q.get(timeout=float("inf"))) == (1, 2)
        with pytest.raises(ValueError):
            q.get(timeout=float("nan"))
        q.unlink()


def test_version():
    assert shmpool.__version__ == "0.1.0"


def test_numpy_wraps_a_view_without_a_copy():
    import numpy as np  # installed by scripts/test-all

    with fresh(Heap) as h:
        off = h.allocate(8 * 100)
        arr = np.frombuffer(h.view(off, 8 * 100), dtype=np.int64)
        arr[:] = np.arange(100)
        assert h.read(off + 8 * 99, 8) == (99).to_bytes(8, "little")
        h.unlink()
