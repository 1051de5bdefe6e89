# The textbook code users hand-write: SharedMemory slots + multiprocessing locks/semaphores.
#
# textbook-ring (main, supervisor):
# Usage chosen, and why: the classic bounded buffer. `free` counts empty slots (starts at 8),
# `filled` counts published ones (starts at 0). The producer takes `free`, copies its frame into
# the next slot with `slot[...] = src` (numpy's fastest copy into an existing array, ~2x cheaper
# than np.copyto for small frames) and releases `filled`; the consumer takes `filled`, works on a
# zero-copy ndarray view of the slot (views are made once, not per frame), and releases `free`
# when it asks for the next frame. Semaphores are the blocking wait (no spinning).
# The parent creates the segment and unlinks it; children attach (spawned children share the
# parent's resource tracker, so attaching does not unlink it at their exit). The textbook ring
# is thus always the supervisor program: its main and supervisor cells run the same code.
# textbook-latest (latest): one slot, a frame counter beside it and a multiprocessing.Condition
# (a lock with a wait). The producer, holding the lock, copies its frame into the slot, bumps
# the counter and notify()s; the consumer waits (bounded waits, in a loop) until the counter
# moves, then copies the newest frame out under the lock — it cannot work on the slot itself
# without stopping the writer — and works on its copy.
from __future__ import annotations

from collections.abc import Generator
from itertools import cycle
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from bench.cell import LATEST_FRAME, MAIN, SUPERVISOR, Cell
from bench.frames import Frame, make_source, stamper
from bench.transports import Consumer, Producer, Transport

SLOTS = 8
COUNTER_BYTES = 64  # textbook-latest: the frame counter's cache line, before the slot
WAIT_S = 1.0  # each Condition wait is bounded; the consumer loops


def _slot_views(shm: SharedMemory, cell: Cell) -> list[Frame]:
    n = cell.size.nbytes
    return [
        np.ndarray(cell.size.shape, np.uint8, buffer=shm.buf, offset=i * n) for i in range(SLOTS)
    ]


class TextbookRing(Transport):
    name = "textbook-ring"
    topologies = frozenset({MAIN, SUPERVISOR})

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


class TextbookLatest(Transport):
    name = "textbook-latest"
    topologies = frozenset({LATEST_FRAME})

    def prepare(self, cell: Cell, ctx: Any) -> Any:
        size = COUNTER_BYTES + cell.size.nbytes
        self._shm = SharedMemory(f"sb{cell.token}tl", create=True, size=size)
        return self._shm.name, ctx.Condition()

    def cleanup(self) -> None:
        self._shm.close()
        self._shm.unlink()

    @staticmethod
    def _views(shm: SharedMemory, cell: Cell) -> tuple[Any, Frame]:
        """(the frame counter, the slot)."""
        counter = np.ndarray((1,), np.uint64, buffer=shm.buf)
        slot = np.ndarray(cell.size.shape, np.uint8, buffer=shm.buf, offset=COUNTER_BYTES)
        return counter, slot

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        name, fresh = endpoint
        shm = SharedMemory(name)
        counter, slot = self._views(shm, cell)
        src = make_source(cell.size)
        stamp = stamper(cell.size)
        acquire, release, notify = fresh.acquire, fresh.release, fresh.notify

        def send(seq: int, t_ns: int) -> None:
            stamp(src, seq, t_ns)
            acquire()
            slot[...] = src
            counter[0] += 1
            notify()
            release()

        def close() -> None:
            nonlocal counter, slot
            del counter, slot  # drop the views before unmapping
            shm.close()

        return Producer(send, close)

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        name, fresh = endpoint
        shm = SharedMemory(name)

        def frames() -> Generator[Frame, None, None]:
            counter, slot = self._views(shm, cell)
            mine = np.empty_like(slot)
            seen = 0
            wait_for = fresh.wait_for

            def moved() -> bool:
                return int(counter[0]) != seen

            while True:
                with fresh:
                    while not wait_for(moved, WAIT_S):
                        pass
                    seen = int(counter[0])
                    mine[...] = slot
                yield mine

        stream = frames()

        def close() -> None:
            stream.close()
            shm.close()

        return Consumer(stream, close)
