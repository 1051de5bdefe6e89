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
# Fan-in: the one PULL binds and the PUSHes connect (ZeroMQ's fan-in shape); else PUSH binds.
# pyzmq-pubsub (fan-out): PUB/SUB, ZeroMQ's one-to-many pattern. It drops a subscriber's frames
#   when its queue is at the high-water mark (reported as drops, not as a failure). The
#   publisher is an XPUB with XPUB_VERBOSE (a PUB that also receives each subscription), so it
#   starts only once every subscriber is connected: a plain PUB would drop the first frames
#   while they connect (ZeroMQ's "slow joiner").
# pyzmq-conflate (latest frame): a PUB and a SUB, both with CONFLATE (ZeroMQ's last-value
#   option: each end's queue keeps only the newest message; an XPUB ignores it, so no
#   subscription handshake here: frames sent while the SUB connects are skipped, like any
#   frame the reader does not take). recv() returns the latest frame. send() returns once the
#   frame is in the PUB's own queue, which keeps only the newest, so most frames counted as
#   written never leave the writer's process: its writer rate is shown, not ranked.
from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Generator
from itertools import cycle
from typing import Any

import numpy as np
import zmq

from bench.cell import FAN_IN, FAN_OUT, LATEST_FRAME, MAIN, Cell
from bench.frames import Frame, make_source, stamper
from bench.transports import Consumer, Producer, Transport

POOL = 16  # source frames in flight at once (zero-copy sizes)
QUEUE_BYTES = 64 << 20
TRACKER_WAIT_S = 30.0
SUBSCRIBE = 1  # first byte of a subscription message received by an XPUB


def _hwm(cell: Cell) -> int:
    return max(8, min(1000, QUEUE_BYTES // cell.size.nbytes))


class PushPull(Transport):
    name = "pyzmq"
    topologies = frozenset({MAIN, FAN_IN})
    sender_type = zmq.PUSH
    receiver_type = zmq.PULL

    def _socket(self, context: Any, kind: int, endpoint: str, binds: bool, cell: Cell) -> Any:
        sock = context.socket(kind)
        sock.sndhwm = sock.rcvhwm = _hwm(cell)
        self._configure(sock, kind)
        if binds:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
        return sock

    def _configure(self, sock: Any, kind: int) -> None:
        """Socket options that must be set before bind/connect."""

    def _start(self, sock: Any, cell: Cell) -> Callable[[int], None] | None:
        """Producer.start: the rendezvous before the first frame (none needed here)."""
        return None

    def prepare(self, cell: Cell, ctx: Any) -> Any:
        self._dir = tempfile.mkdtemp(prefix=f"sb{cell.token}zmq")
        return f"ipc://{self._dir}/frames"

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        context = zmq.Context()
        binds = cell.topology != FAN_IN
        sock = self._socket(context, self.sender_type, endpoint, binds, cell)
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

        return Producer(send, close, self._start(sock, cell))

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        context = zmq.Context()
        binds = cell.topology == FAN_IN
        sock = self._socket(context, self.receiver_type, endpoint, binds, cell)
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


class PubSub(PushPull):
    name = "pyzmq-pubsub"
    topologies = frozenset({FAN_OUT})
    drops = True
    sender_type = zmq.XPUB
    receiver_type = zmq.SUB

    def _configure(self, sock: Any, kind: int) -> None:
        if kind == zmq.XPUB:
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, not one
        else:
            sock.setsockopt(zmq.SUBSCRIBE, b"")

    def _start(self, sock: Any, cell: Cell) -> Callable[[int], None] | None:
        def start(consumers: int) -> None:
            deadline = time.monotonic() + cell.timing.sync_timeout_s
            subscribed = 0
            while subscribed < consumers:
                left_ms = round(1000 * (deadline - time.monotonic()))
                if left_ms <= 0 or not sock.poll(left_ms, zmq.POLLIN):
                    raise TimeoutError(f"{subscribed} of {consumers} subscribers connected")
                if sock.recv()[0] == SUBSCRIBE:
                    subscribed += 1

        return start


class Conflate(PubSub):
    name = "pyzmq-conflate"
    topologies = frozenset({LATEST_FRAME})
    writes_reach_reader = False  # the PUB's CONFLATE queue drops all but its newest frame
    sender_type = zmq.PUB

    def _configure(self, sock: Any, kind: int) -> None:
        sock.setsockopt(zmq.CONFLATE, 1)  # keep only the newest message
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"")

    def _start(self, sock: Any, cell: Cell) -> Callable[[int], None] | None:
        return None
