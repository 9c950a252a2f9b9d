"""shmpool: shared-memory allocators for multiprocessing.

Each allocator lives in named POSIX shared memory; pass the object to a worker (it
pickles as "attach by name") or construct it with ``create=False`` in any process::

    from shmpool import Heap
    with Heap(name="jobs", capacity=64 << 20) as heap:
        off = heap.allocate(100)
        heap.write(off, b"hello")
        heap.view(off, 5)[0:1] = b"H"          # zero-copy
        assert heap.read(off, 5) == b"Hello"
        heap.free(off)                          # from any process
        heap.unlink()
"""

from ._shmpool import (
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
    __version__,
)

__all__ = [
    "BadOffsetError",
    "BumpAllocator",
    "ClosedError",
    "DoubleFreeError",
    "ExistsError",
    "FreeListAllocator",
    "Heap",
    "NotFoundError",
    "OffsetQueue",
    "OutOfMemoryError",
    "ShmpoolError",
    "SlabAllocator",
    "__version__",
]
