# The textbook ring users hand-write: SharedMemory slots + two multiprocessing.Semaphores.
#
# Usage chosen, and why: the classic bounded buffer. `free` counts empty slots (starts at 8),
# `filled` counts published ones (starts at 0). The producer takes `free`, copies its frame into
# the next slot with `slot[...] = src` (numpy's fastest copy into an existing array, ~2x cheaper
# than np.copyto for small frames) and releases `filled`; the consumer takes `filled`, works on a
# zero-copy ndarray view of the slot (views are made once, not per frame), and releases `free`
# when it asks for the next frame. Semaphores are the blocking wait (no spinning).
# The parent creates the segment and unlinks it; children attach (spawned children share the
# parent's resource tracker, so attaching does not unlink it at their exit).
from __future__ import annotations

from collections.abc import Generator
from itertools import cycle
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from bench.cell import Cell
from bench.frames import Frame, make_source, stamper
from bench.transports import Consumer, Producer, Transport

SLOTS = 8


def _slot_views(shm: SharedMemory, cell: Cell) -> list[Frame]:
    n = cell.size.nbytes
    return [
        np.ndarray(cell.size.shape, np.uint8, buffer=shm.buf, offset=i * n) for i in range(SLOTS)
    ]


class TextbookRing(Transport):
    name = "textbook-ring"

    def prepare(self, cell: Cell, ctx: Any) -> Any:
        self._shm = SharedMemory(f"sb{cell.token}tb", create=True, size=SLOTS * cell.size.nbytes)
        return self._shm.name, ctx.Semaphore(SLOTS), ctx.Semaphore(0)

    def cleanup(self) -> None:
        self._shm.close()
        self._shm.unlink()

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        name, free, filled = endpoint
        shm = SharedMemory(name)
        slots = cycle(_slot_views(shm, cell))
        next_slot = slots.__next__
        src = make_source(cell.size)
        stamp = stamper(cell.size)
        acquire = free.acquire
        release = filled.release

        def send(seq: int, t_ns: int) -> None:
            stamp(src, seq, t_ns)
            acquire()
            next_slot()[...] = src
            release()

        def close() -> None:
            nonlocal slots, next_slot
            del slots, next_slot  # drop the views before unmapping
            shm.close()

        return Producer(send, close)

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        name, free, filled = endpoint
        shm = SharedMemory(name)

        def frames() -> Generator[Frame, None, None]:
            acquire = filled.acquire
            release = free.release
            for view in cycle(_slot_views(shm, cell)):
                acquire()
                yield view
                release()

        stream = frames()

        def close() -> None:
            stream.close()
            shm.close()

        return Consumer(stream, close)
