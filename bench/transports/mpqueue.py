# multiprocessing.Queue(maxsize=8), putting the ndarray itself.
#
# Usage chosen, and why: put(ndarray) / get() is the documented way; the queue pickles the
# array (one copy into the pickle), a feeder thread writes it to a pipe, and get() unpickles a
# new array — converting to bytes first would only add a copy. maxsize=8 bounds the queue like
# the rings' 8 slots (an unbounded queue of 1080p frames grows without limit). The feeder thread
# pickles *after* put() returns, so the producer must not touch a frame it has put until the
# consumer took it: it cycles through maxsize + 1 source frames, which the bound makes safe
# (when frame i + 9 is stamped, at most 8 frames are untaken, so frame i has been taken).
from __future__ import annotations

from collections.abc import Generator
from itertools import cycle
from typing import Any

from bench.cell import FAN_IN, GROUPS, MAIN, Cell
from bench.frames import Frame, make_source, stamper
from bench.transports import Consumer, Producer, Transport

MAXSIZE = 8


class MpQueue(Transport):
    name = "mp-queue"
    topologies = frozenset({MAIN, FAN_IN, GROUPS})  # any number of putters and getters

    def prepare(self, cell: Cell, ctx: Any) -> Any:
        self._queue = ctx.Queue(maxsize=MAXSIZE)
        return self._queue

    def cleanup(self) -> None:
        self._queue.close()
        self._queue.cancel_join_thread()

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        q = endpoint
        sources = cycle([make_source(cell.size) for _ in range(MAXSIZE + 1)])
        stamp = stamper(cell.size)
        put = q.put
        take = sources.__next__

        def send(seq: int, t_ns: int) -> None:
            src = take()
            stamp(src, seq, t_ns)
            put(src)

        def close() -> None:
            q.close()
            q.join_thread()  # everything put was taken (the final barrier); flushes at once

        return Producer(send, close)

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        q = endpoint

        def frames() -> Generator[Frame, None, None]:
            get = q.get
            while True:
                yield get()

        stream = frames()
        return Consumer(stream, stream.close)
