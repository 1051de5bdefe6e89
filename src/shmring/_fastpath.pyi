# Type stub for the C extension _fastpath.c (see the comment atop that file).
from collections.abc import Callable
from mmap import mmap

import numpy as np

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
        frame_bytes: int,
        buffer_stride: int,
        slots: int,
        nbuffers: int,
        descriptor_words: int,
        c_head: int,
        c_free_count: int,
        c_writer_mode: int,
        c_reader_waiters: int,
        c_frames: int,
        w_in_publish: int,
        d_seq: int,
        d_buffer: int,
        d_timestamp: int,
        d_flags: int,
        mode_exclusive: int,
        reclaim_eagerly: bool,
        fence: bool,
        reclaim: Callable[[], int],
    ) -> None: ...
    def publish(self, frame: np.ndarray) -> int: ...
    def close(self) -> None: ...
    def forget(self) -> None: ...
