# faster-fifo: a C++ circular buffer in shared memory behind a multiprocessing.Queue-like API.
#
# Usage chosen, and why: Queue(max_size_bytes, loads=..., dumps=...) with per-instance
# serializers that skip pickle — dumps hands put() a ctypes view of the frame (no copy; put()
# copies it into the shared circular buffer) and loads wraps the received bytes in an ndarray
# (no copy) — so a frame is copied exactly twice (in, out), the least this API allows; pickling
# would add two more. The consumer uses get_many(), faster-fifo's batched receive (one lock for
# every frame waiting), in every topology. In groups the readers share the work, and the
# writer's PHASE_END frames (one per reader) come last: a reader whose batch ends with more than
# its own puts the others back for the other reader. The buffer is faster-fifo's default and
# its README's size, 1,000,000 bytes, or 8 frames (the rings' 8 slots) where that is more.
# put() copies before it returns, so the producer reuses one source frame.
from __future__ import annotations

import ctypes
import functools
from collections.abc import Generator
from queue import Empty
from typing import Any

import faster_fifo
import faster_fifo_reduction  # noqa: F401  (pickles the queue for spawn)
import numpy as np

from bench.cell import FAN_IN, GROUPS, MAIN, SUPERVISOR, Cell
from bench.frames import PHASE_END, Frame, make_source, read_head, stamper
from bench.transports import Consumer, Producer, Transport

BUFFER_BYTES = 1000 * 1000  # faster-fifo's default max_size_bytes, the size its README uses
SLOTS = 8
MESSAGE_HEADER = 8  # faster-fifo stores a size_t before each message
WAIT_S = 1.0  # each get_many() wait is bounded; the consumer loops


def _dumps(frame: Any) -> Any:
    return (ctypes.c_ubyte * frame.nbytes).from_buffer(frame)


def _loads(shape: tuple[int, ...], message: memoryview) -> Frame:
    return np.frombuffer(message, np.uint8).reshape(shape)


class FasterFifo(Transport):
    name = "faster-fifo"
    # The parent always creates the queue (main and supervisor are the same program); any
    # number of processes put and get.
    topologies = frozenset({MAIN, SUPERVISOR, FAN_IN, GROUPS})

    def prepare(self, cell: Cell, ctx: Any) -> Any:
        return faster_fifo.Queue(
            max_size_bytes=max(BUFFER_BYTES, SLOTS * (cell.size.nbytes + MESSAGE_HEADER)),
            loads=functools.partial(_loads, cell.size.shape),
            dumps=_dumps,
        )

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        put = endpoint.put
        src = make_source(cell.size)
        stamp = stamper(cell.size)

        def send(seq: int, t_ns: int) -> None:
            stamp(src, seq, t_ns)
            put(src)

        return Producer(send)

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        shared = cell.topology == GROUPS

        def frames() -> Generator[Frame, None, None]:
            get_many, put = endpoint.get_many, endpoint.put
            while True:
                try:
                    batch = get_many(timeout=WAIT_S)
                except Empty:
                    continue
                if shared and read_head(batch[-1]) == PHASE_END:
                    # the phase's end: keep this reader's PHASE_END, put the others' back
                    first = next(i for i, f in enumerate(batch) if read_head(f) == PHASE_END)
                    mine = first + cell.ends_due
                    for other in batch[mine:]:
                        put(other)
                    batch = batch[:mine]
                yield from batch

        stream = frames()
        return Consumer(stream, stream.close)
