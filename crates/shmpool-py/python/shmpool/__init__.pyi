"""Type stubs of shmpool's Python package."""

from types import TracebackType
from typing import Self, type_check_only

__version__: str

class ShmpoolError(Exception):
    """Base class of every shmpool error."""

class DoubleFreeError(ShmpoolError):
    """The block was freed already (or never allocated)."""

class OutOfMemoryError(ShmpoolError):
    """The allocator has no room for the request."""

class BadOffsetError(ShmpoolError):
    """The offset (or range) is not a block of this allocator."""

class ClosedError(ShmpoolError):
    """The object was closed."""

class NotFoundError(ShmpoolError):
    """No shared memory of that name (or not of this kind)."""

class ExistsError(ShmpoolError):
    """Shared memory of that name exists already."""

@type_check_only
class _Allocator:
    def __init__(self, name: str, capacity: int = 0, create: bool = True, slot_size: int = 64) -> None:
        """Creates the allocator in shared memory called ``name`` (``create=True``) or
        attaches to the one another process created (``create=False``)."""
    def allocate(self, n: int) -> int:
        """Allocates ``n`` bytes; returns the block's offset."""
    def write(self, offset: int, data: bytes | bytearray) -> None:
        """Copies ``data`` into the block at ``offset`` (for a memoryview or an array,
        write into ``view(offset, n)`` instead)."""
    def read(self, offset: int, n: int) -> bytes:
        """Copies ``n`` bytes of the block at ``offset`` out."""
    def view(self, offset: int, n: int) -> memoryview:
        """A writable, zero-copy view of ``n`` bytes at ``offset`` (numpy can wrap it)."""
    def free(self, offset: int) -> None:
        """Frees the block at ``offset``, from any process."""
    def reset(self) -> None:
        """Frees every block at once (a Heap refuses)."""
    def available_bytes(self) -> int:
        """Bytes that can still be allocated (a snapshot)."""
    def close(self) -> None:
        """Unmaps here; later calls raise ClosedError; views stay valid until released."""
    def unlink(self) -> None:
        """Removes the shared memory's name."""
    @property
    def name(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool: ...

class BumpAllocator(_Allocator):
    """Bump allocation, freed all at once by ``reset``; ``free`` is refused."""

class FreeListAllocator(_Allocator):
    """Fixed-size slots of ``slot_size`` bytes with individual frees, lock-free."""

class SlabAllocator(_Allocator):
    """Fixed-size slots of ``slot_size`` bytes tracked by an atomic bitmap."""

class Heap(_Allocator):
    """shmpool's general allocator: any size, frees from any process."""

class OffsetQueue:
    """A bounded queue of integers (offsets) between processes."""
    def __init__(self, name: str, capacity: int = 1024, create: bool = True) -> None: ...
    def put(self, offset: int, timeout: float | None = None) -> None:
        """Puts ``offset``; raises TimeoutError if the queue stays full."""
    def get(self, timeout: float | None = None) -> int:
        """Takes the next offset; raises TimeoutError if none comes."""
    def close(self) -> None: ...
    def unlink(self) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool: ...
