# Type stub for the C extension shmring._fastpath (see the comment atop _fastpath.c).
from collections.abc import Callable, Coroutine, Generator
from mmap import mmap
from types import TracebackType
from typing import Self, TypeVar, final

import numpy as np

from shmring._reader import Frame, RingReader
from shmring._writer import RingWriter

PUBLISH_FALLBACK: int
PUBLISH_CORRUPTED: int
PUBLISH_ALONE: int
PUBLISH_STALLED: int
TAKE_FALLBACK: int
TAKE_NO_ROOM: int
TAKE_NO_PIN: int

def settle(
    control: memoryview,
    descriptors: memoryview,
    holes: list[int],
    *,
    slots: int,
    descriptor_words: int,
) -> int: ...
def reclaim(
    *,
    header: mmap,
    control: memoryview,
    descriptors: memoryview,
    freelist: memoryview,
    reader_records: memoryview,
    group_records: memoryview,
    slots: int,
    descriptor_words: int,
    nbuffers: int,
    max_readers: int,
    name: str,
) -> int: ...
def load_word(view: memoryview, index: int, /) -> int: ...
def store_word(view: memoryview, index: int, value: int, /) -> None: ...
def wake(control: memoryview, index: int, /) -> None: ...
def position_patience(nanoseconds: int, /) -> int: ...

@final
class Publisher:
    # A test hook, None in use: called inside the publish bracket before each reclaim, so a
    # test can act at a known point of a publish (re-enter it, close the writer, raise).
    on_reclaim: Callable[[], object] | None
    @property
    def stream_copies(self) -> int: ...
    @property
    def stalled(self) -> int: ...
    @property
    def claim_open(self) -> int: ...  # a Claim's with block runs: the C steps fall back
    def __init__(
        self,
        *,
        header: mmap,
        data: memoryview,
        control: memoryview,
        record: memoryview,
        descriptors: memoryview,
        freelist: memoryview,
        reader_records: memoryview,
        group_records: memoryview,
        frame_bytes: int,
        buffer_stride: int,
        slots: int,
        nbuffers: int,
        descriptor_words: int,
        max_readers: int,
        reclaim_eagerly: bool,
        overwrite: bool,
        meta_size: int,
        ndim: int,
        pin_table: memoryview | None,
        name: str,
        stream_copies: bool = False,
        exclusive_when_alone: bool = True,
        views: list[np.ndarray] | None = None,
    ) -> None: ...
    def claim(self, writer: RingWriter, timeout: float | None = None, /) -> Claim: ...
    def open_claim(self, claim: Claim, /) -> None: ...
    def publish(self, frame: np.ndarray, timestamp_ns: int = ..., /) -> int: ...
    def claim_buffer(self) -> int: ...
    def claim_buffer_locked(self) -> int: ...
    def publish_described(
        self,
        buffer: int,
        timestamp_ns: int,
        shape: tuple[int, ...] | None,
        meta: bytes,
        locked: bool,
    ) -> int: ...
    def publish_skip(self, buffer: int, count: int, timestamp_ns: int, locked: bool) -> int: ...
    def abandon_claimed(self, buffer: int, locked: bool) -> int: ...
    def count_sleeper(self) -> int: ...
    def behind(self) -> int: ...
    def uncount_sleeper(self) -> None: ...
    def close(self) -> None: ...
    def forget(self) -> None: ...

@final
class Claim:
    """A buffer claimed for one frame; use as a context manager.

    Entering yields a writable ndarray inside the shared segment. Leaving the block normally
    publishes it (then `seq` holds its sequence number); leaving by an exception abandons
    it, and readers never see it."""

    _buffer: int
    _deadline: float | None
    def __new__(
        cls,
        writer: RingWriter,
        timeout: float | None,
        shape: tuple[int, ...] | None,
        timestamp_ns: int | None,
        meta: bytes,
        /,
    ) -> Self: ...
    @property
    def seq(self) -> int | None: ...
    @property
    def _writer(self) -> RingWriter: ...
    @property
    def _timeout(self) -> float | None: ...
    @property
    def _shape(self) -> tuple[int, ...] | None: ...
    @property
    def _timestamp_ns(self) -> int | None: ...
    @property
    def _meta(self) -> bytes: ...
    def __enter__(self) -> np.ndarray: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None: ...

class FrameBase:
    _reader: RingReader | None
    def __new__(
        cls,
        reader: RingReader,
        array: np.ndarray,
        seq: int,
        timestamp_ns: int,
        dropped: int,
        meta: bytes,
    ) -> Self: ...
    @property
    def array(self) -> np.ndarray: ...
    @property
    def _meta(self) -> bytes: ...
    @property
    def seq(self) -> int: ...
    @property
    def timestamp_ns(self) -> int: ...
    @property
    def dropped(self) -> int: ...

_T = TypeVar("_T")

# An awaitable already done: awaiting it gives `value` without suspending (see _taker.c).
@final
class Ready(Coroutine[None, None, _T]):
    def __new__(cls, value: _T, owner: object = None, /) -> Self: ...
    def __await__(self) -> Generator[None, None, _T]: ...
    def send(self, value: None, /) -> None: ...
    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: object = None,
        tb: TracebackType | None = None,
        /,
    ) -> None: ...
    def close(self) -> None: ...

@final
class Taker:
    def __init__(
        self,
        *,
        header: mmap,
        control: memoryview,
        descriptors: memoryview,
        buffers: list[np.ndarray],
        frame_type: type[FrameBase],
        slots: int,
        descriptor_words: int,
        record: memoryview,
        reader_records: memoryview,
        collectable_frame_type: type[FrameBase],
        max_readers: int,
        nbuffers: int,
        group: memoryview | None,
        fd: int,
        segment_bytes: int,
        check_size: Callable[[], None],
        pin_table: memoryview | None,
    ) -> None: ...
    # Built as frame_type (collectable_frame_type): _reader.py passes Frame (a subclass).
    def take(
        self, reader: RingReader, seq: int, dropped: int, collectable: bool
    ) -> Frame | None: ...
    def advance(self, reader: RingReader, seq: int) -> Frame | None: ...
    def wait(self, reader: RingReader, seq: int, timeout: float) -> Frame | None: ...
    def release(self, value: int, /) -> None: ...
    def count_dropped(self, total: int, /) -> None: ...
    def published(self, seq: int, /) -> bool: ...
    def describe(
        self, seq: int, /
    ) -> tuple[int, int, int, tuple[int, ...] | None, bytes] | None: ...
    def take_pinned(self, reader: RingReader, next: int, latest: bool) -> Frame | int | None: ...
    def take_group(
        self, reader: RingReader, held: list[int], latest: bool, carried: int
    ) -> Frame | tuple[int, int] | int | None: ...
    def unbuilt(self) -> int: ...
    def pin(self, seq: int) -> int: ...
    def holds(self, seq: int) -> bool: ...
    def unpin(self, seq: int) -> bool: ...
    def held(self) -> int: ...
    def count(self) -> None: ...
    def uncount(self) -> None: ...
    def close(self) -> None: ...
    def forget(self) -> None: ...
