# multiprocessing.Pipe, one-way, with send_bytes / recv_bytes.
#
# Usage chosen, and why: send_bytes() skips pickling entirely, the fastest documented way to
# move a buffer through a Connection. It takes a memoryview of the frame cast to bytes ("B"):
# send_bytes(ndarray) would send only shape[0] bytes of an N-d array. recv_bytes() returns a
# fresh bytes object that np.frombuffer() wraps without a copy; recv_bytes_into() a preallocated
# buffer measured no faster here (CPython reads into a BytesIO either way, then copies again).
from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from bench.cell import MAIN, Cell
from bench.frames import Frame, make_source, stamper
from bench.transports import Consumer, OneWayPipe, Producer


class MpPipe(OneWayPipe):
    name = "mp-pipe"
    topologies = frozenset({MAIN})

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        _, conn = endpoint
        src = make_source(cell.size)
        stamp = stamper(cell.size)
        send_bytes = conn.send_bytes
        flat = src.data.cast("B")

        def send(seq: int, t_ns: int) -> None:
            stamp(src, seq, t_ns)
            send_bytes(flat)

        return Producer(send, close=conn.close)

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        conn, _ = endpoint
        shape = cell.size.shape

        def frames() -> Generator[Frame, None, None]:
            recv_bytes = conn.recv_bytes
            frombuffer = np.frombuffer
            uint8 = np.uint8
            while True:
                yield frombuffer(recv_bytes(), uint8).reshape(shape)

        stream = frames()

        def close() -> None:
            stream.close()
            conn.close()

        return Consumer(stream, close)
