# iceoryx2 (PyPI) publish-subscribe with loaned slices, polling or event-woken readers.
#
# Usage chosen, and why: a Slice[c_uint8] service (iceoryx2's dynamic-size payload) in its
# lossless mode — safe overflow off, RetryUntilDelivered back-pressure, subscriber buffers of 8
# like the rings' 8 slots. The producer loans a slice in shared memory, copies its frame in with
# one ctypes.memmove (loan + copy in: one copy, like shmring write) and sends it; the consumer
# receives a sample and wraps its payload in an ndarray without a copy (view out), holding the
# sample until it asks for the next one.
#   iceoryx2-poll: the reader busy-polls receive() (iceoryx2's lowest-latency mode; it burns a
#     core, so it is reported but is not a blocking reader).
#   iceoryx2-event: the producer also notify()s an event service after each send and the
#     reader sleeps in Listener.timed_wait() whenever receive() finds nothing (events latch, so
#     a notify between the two is not lost).
# Lossless mode discards samples sent before a subscriber has connected, so the producer waits
# until every subscriber is registered, then update_connections(), before the first frame. And a
# subscriber created before the publisher loses samples in lossless mode (iceoryx2 issue #1697,
# seen here as one early gap of a few hundred frames), so readers wait for the publisher first.
# Each cell gets its own iceoryx2 file prefix and root directory; cleanup() removes them
# (iceoryx2 keeps a per-prefix global management segment in /dev/shm by design).
from __future__ import annotations

import ctypes
import shutil
import tempfile
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import iceoryx2 as iox2
import numpy as np

from bench.cell import Cell
from bench.frames import Frame, make_source, stamper
from bench.transports import Consumer, Producer, Transport

SLOTS = 8
WAIT = iox2.Duration.from_secs(1)  # each Listener wait is bounded; the reader loops
SHM_DIR = Path("/dev/shm")


def _node(endpoint: tuple[str, str, str]) -> Any:
    prefix, root, _ = endpoint
    config = iox2.config.default()
    config.global_cfg.prefix = iox2.FileName.new(prefix)
    config.global_cfg.root_path = iox2.Path.new(root)
    return iox2.NodeBuilder.new().config(config).create(iox2.ServiceType.Ipc)


def _service(node: Any, endpoint: tuple[str, str, str], cell: Cell) -> Any:
    return (
        node.service_builder(iox2.ServiceName.new(endpoint[2]))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(False)
        .subscriber_max_buffer_size(SLOTS)
        .max_subscribers(max(1, cell.consumers))
        .open_or_create()
    )


def _event(node: Any, endpoint: tuple[str, str, str]) -> Any:
    return node.service_builder(iox2.ServiceName.new(endpoint[2])).event().open_or_create()


def _wait_for(ready: Callable[[], bool], cell: Cell, what: str) -> None:
    deadline = time.monotonic() + cell.timing.sync_timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"iceoryx2 {what} did not connect")
        time.sleep(0.001)


class Polling(Transport):
    name = "iceoryx2-poll"
    fanout = True
    spinning_reader = True
    event = False

    def prepare(self, cell: Cell, ctx: Any) -> Any:
        self._prefix = f"sb{cell.token}_"
        self._root = tempfile.mkdtemp(prefix=f"sb{cell.token}iox")
        return self._prefix, self._root + "/", f"bench/{cell.token}"

    def cleanup(self) -> None:
        for entry in SHM_DIR.glob(f"{self._prefix}*.global_mgmt"):
            entry.unlink(missing_ok=True)
        shutil.rmtree(self._root, ignore_errors=True)

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        node = _node(endpoint)
        service = _service(node, endpoint, cell)
        n = cell.size.nbytes
        publisher = (
            service.publisher_builder()
            .initial_max_slice_len(n)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        notifier = _event(node, endpoint).notifier_builder().create() if self.event else None
        src = make_source(cell.size)
        src_address = src.ctypes.data
        stamp = stamper(cell.size)
        loan = publisher.loan_slice_uninit
        memmove = ctypes.memmove

        if notifier is None:

            def send(seq: int, t_ns: int) -> None:
                stamp(src, seq, t_ns)
                sample = loan(n)
                memmove(sample.payload_ptr, src_address, n)
                sample.assume_init().send()

        else:
            notify = notifier.notify

            def send(seq: int, t_ns: int) -> None:
                stamp(src, seq, t_ns)
                sample = loan(n)
                memmove(sample.payload_ptr, src_address, n)
                sample.assume_init().send()
                notify()

        def start(consumers: int) -> None:
            def subscribed() -> bool:
                return bool(service.dynamic_config.number_of_subscribers >= consumers)

            _wait_for(subscribed, cell, "subscribers")
            publisher.update_connections()

        def close() -> None:
            if notifier is not None:
                notifier.delete()
            publisher.delete()

        return Producer(send, close, start)

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        node = _node(endpoint)
        service = _service(node, endpoint, cell)
        _wait_for(lambda: service.dynamic_config.number_of_publishers >= 1, cell, "publisher")
        subscriber = service.subscriber_builder().buffer_size(SLOTS).create()
        listener = _event(node, endpoint).listener_builder().create() if self.event else None
        shape = cell.size.shape
        payload_type = ctypes.c_uint8 * cell.size.nbytes

        def frames() -> Generator[Frame, None, None]:
            receive = subscriber.receive
            at = payload_type.from_address
            frombuffer: Callable[..., Frame] = np.frombuffer
            uint8 = np.uint8
            wait = None if listener is None else listener.timed_wait
            while True:
                sample = receive()
                if sample is None:
                    if wait is not None:
                        wait(WAIT)
                    continue
                yield frombuffer(at(sample.payload_ptr), uint8).reshape(shape)

        stream = frames()

        def close() -> None:
            stream.close()  # returns the held sample
            if listener is not None:
                listener.delete()
            subscriber.delete()

        return Consumer(stream, close)


class EventWait(Polling):
    name = "iceoryx2-event"
    spinning_reader = False
    event = True
