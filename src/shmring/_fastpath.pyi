# Type stub for the C extension shmring._fastpath (see the comment atop _fastpath.c).
from collections.abc import Callable
from mmap import mmap
from typing import Self

import numpy as np

from shmring._reader import Frame, RingReader

PUBLISH_FALLBACK: int
PUBLISH_CORRUPTED: int

class Publisher:
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
        record_words: int,
        c_head: int,
        c_tail: int,
        c_free_count: int,
        c_writer_mode: int,
        c_reader_waiters: int,
        c_frames: int,
        w_in_publish: int,
        w_claimed: int,
        d_seq: int,
        d_buffer: int,
        d_timestamp: int,
        d_flags: int,
        r_state: int,
        r_release: int,
        g_state: int,
        g_cursor: int,
        mode_exclusive: int,
        none: int,
        state_active: int,
        reclaim_eagerly: bool,
        reclaim_in_c: bool,
        fence: bool,
        reclaim: Callable[[], int],
    ) -> None: ...
    def publish(self, frame: np.ndarray) -> int: ...
    def claim_buffer(self) -> int: ...
    def publish_claimed(self, buffer: int) -> int: ...
    def close(self) -> None: ...
    def forget(self) -> None: ...

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
        c_frames: int,
        c_flags: int,
        d_seq: int,
        d_buffer: int,
        d_timestamp: int,
        d_flags: int,
        f_closed: int,
    ) -> None: ...
    # Built as frame_type, which _reader.py passes as Frame.
    def take(self, reader: RingReader, seq: int) -> Frame | None: ...
    def wait(self, reader: RingReader, seq: int, timeout: float) -> Frame | None: ...
    def close(self) -> None: ...
    def forget(self) -> None: ...
