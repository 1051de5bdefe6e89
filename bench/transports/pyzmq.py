# pyzmq PUSH/PULL over ipc:// (a Unix socket), zero-copy where pyzmq does it.
#
# Usage chosen, and why: PUSH/PULL is ZeroMQ's lossless one-way pipeline (PUB/SUB drops at the
# high-water mark). send(frame, copy=False) hands pyzmq the ndarray's buffer without copying it
# into a message; pyzmq itself still copies frames below zmq.COPY_THRESHOLD (64 KiB), where that
# is cheaper. A zero-copy frame stays in use until the I/O thread has written it, so for those
# the producer cycles through a pool of source frames and, before reusing one, waits on the
# MessageTracker that send(..., track=True) returned — pyzmq's documented way to know a buffer is
# free. recv(copy=False) returns a zmq.Frame whose buffer np.frombuffer() wraps without a copy
# (measured here as fast as recv() of bytes at 64 B and faster at 4 KiB). High-water marks hold
# up to 64 MiB of frames per side (the 1000-message default would buffer gigabytes of 1080p).
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Generator
from itertools import cycle
from typing import Any

import numpy as np
import zmq

from bench.cell import Cell
from bench.frames import Frame, make_source, stamper
from bench.transports import Consumer, Producer, Transport

POOL = 16  # source frames in flight at once (zero-copy sizes)
QUEUE_BYTES = 64 << 20
TRACKER_WAIT_S = 30.0


def _hwm(cell: Cell) -> int:
    return max(8, min(1000, QUEUE_BYTES // cell.size.nbytes))


class PushPull(Transport):
    name = "pyzmq"

    def prepare(self, cell: Cell, ctx: Any) -> Any:
        self._dir = tempfile.mkdtemp(prefix=f"sb{cell.token}zmq")
        return f"ipc://{self._dir}/frames"

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        context = zmq.Context()
        sock = context.socket(zmq.PUSH)
        sock.sndhwm = _hwm(cell)
        sock.bind(endpoint)
        stamp = stamper(cell.size)
        zsend: Callable[..., Any] = sock.send  # takes any buffer (an ndarray here)

        if cell.size.nbytes < zmq.COPY_THRESHOLD:
            src = make_source(cell.size)

            def send(seq: int, t_ns: int) -> None:
                stamp(src, seq, t_ns)
                zsend(src, copy=False)

        else:
            sources = [make_source(cell.size) for _ in range(POOL)]
            trackers = [zmq.MessageTracker() for _ in range(POOL)]  # empty trackers are done
            turn = cycle(range(POOL)).__next__

            def send(seq: int, t_ns: int) -> None:
                i = turn()
                if not trackers[i].done:
                    trackers[i].wait(TRACKER_WAIT_S)
                stamp(sources[i], seq, t_ns)
                trackers[i] = zsend(sources[i], copy=False, track=True)

        def close() -> None:
            sock.close(linger=0)
            context.term()

        return Producer(send, close)

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        context = zmq.Context()
        sock = context.socket(zmq.PULL)
        sock.rcvhwm = _hwm(cell)
        sock.connect(endpoint)
        shape = cell.size.shape

        def frames() -> Generator[Frame, None, None]:
            recv = sock.recv
            frombuffer = np.frombuffer
            uint8 = np.uint8
            while True:
                yield frombuffer(recv(copy=False).buffer, uint8).reshape(shape)

        stream = frames()

        def close() -> None:
            stream.close()
            sock.close(linger=0)
            context.term()

        return Consumer(stream, close)
