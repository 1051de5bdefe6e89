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
#   iceoryx2-loan, iceoryx2-loan-poll: iceoryx2-event and iceoryx2-poll doing shmring-claim's
#     job, iceoryx2's documented zero-copy use: loan a slice, write the frame into it in
#     place, send it. Like shmring-claim (the producing of pixels being the application's
#     work) they write only the stamp, head and tail, straight into the loaned sample, through
#     a ctypes array over its payload (what Slice.as_memory_view() wraps); zero copies, so
#     they are ranked against claim, not write (in every topology where claim runs).
# Lossless mode discards samples sent before a subscriber has connected, so the producer waits
# until every subscriber is registered, then update_connections(), before the first frame. And a
# subscriber created before the publisher loses samples in lossless mode (iceoryx2 issue #1697,
# seen here as one early gap of a few hundred frames), so readers wait for the publisher first.
# Topologies: every process makes its own node (iceoryx2's rule: one node per process); in the
# supervisor topology the parent also makes one and creates the services before the children
# start, holding them until the run is over; fan-in: 2 publishers on one service (each waits
# for the subscriber; the subscriber waits for both). iceoryx2-latest (latest frame): safe
# overflow on and subscriber buffers of 1, so receive() returns the newest sample, older ones
# being replaced; the reader sleeps on the event like iceoryx2-event when none is new.
# Each cell gets its own iceoryx2 file prefix and root directory; cleanup() removes them
# (iceoryx2 keeps a per-prefix global management segment in /dev/shm by design, and a killed
# process leaves its other files there): the sweep removes every /dev/shm file of the prefix.
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

from bench.cell import FAN_IN, FAN_OUT, LATEST_FRAME, MAIN, SUPERVISOR, Cell
from bench.frames import Frame, make_source, stamper
from bench.transports import Consumer, Producer, Transport

SLOTS = 8
WAIT = iox2.Duration.from_secs(1)  # each Listener wait is bounded; the reader loops
SHM_DIR = Path("/dev/shm")

Loaner = Callable[[int], Any]  # Publisher.loan_slice_uninit: n elements -> SampleMutUninit
Notify = Callable[[], Any]
Send = Callable[[int, int], None]


def _node(endpoint: tuple[str, str, str]) -> Any:
    prefix, root, _ = endpoint
    config = iox2.config.default()
    config.global_cfg.prefix = iox2.FileName.new(prefix)
    config.global_cfg.root_path = iox2.Path.new(root)
    return iox2.NodeBuilder.new().config(config).create(iox2.ServiceType.Ipc)


def _service(node: Any, endpoint: tuple[str, str, str], cell: Cell, buffer: int) -> Any:
    """The frames service; safe overflow (the newest sample replaces the oldest) when
    subscribers keep a single sample."""
    return (
        node.service_builder(iox2.ServiceName.new(endpoint[2]))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(buffer == 1)
        .subscriber_max_buffer_size(buffer)
        .max_subscribers(max(1, cell.consumers))
        .max_publishers(cell.producers)
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
    topologies = frozenset({MAIN, SUPERVISOR, FAN_OUT})
    spinning_reader = True
    event = False
    buffer = SLOTS  # subscriber buffer (samples)
    _parent: tuple[Any, ...] = ()  # supervisor: the parent's node and services

    def prepare(self, cell: Cell, ctx: Any) -> Any:
        self._prefix = f"sb{cell.token}_"
        self._root = tempfile.mkdtemp(prefix=f"sb{cell.token}iox")
        endpoint = self._prefix, self._root + "/", f"bench/{cell.token}"
        if cell.topology == SUPERVISOR:
            node = _node(endpoint)
            self._parent = (node, _service(node, endpoint, cell, self.buffer))
            if self.event:
                self._parent += (_event(node, endpoint),)
        return endpoint

    def cleanup(self) -> None:
        self._parent = ()  # drops the parent's services and node before their files go
        for entry in SHM_DIR.glob(f"{self._prefix}*"):
            entry.unlink(missing_ok=True)
        shutil.rmtree(self._root, ignore_errors=True)

    def _send(self, loan: Loaner, notify: Notify | None, cell: Cell) -> Send:
        """send(seq, t_ns): stamp the source frame, loan a slice, copy the frame in, send it
        (and notify, when the reader is event-woken)."""
        n = cell.size.nbytes
        src = make_source(cell.size)
        src_address = src.ctypes.data
        stamp = stamper(cell.size)
        memmove = ctypes.memmove

        if notify is None:

            def send(seq: int, t_ns: int) -> None:
                stamp(src, seq, t_ns)
                sample = loan(n)
                memmove(sample.payload_ptr, src_address, n)
                sample.assume_init().send()

        else:

            def send(seq: int, t_ns: int) -> None:
                stamp(src, seq, t_ns)
                sample = loan(n)
                memmove(sample.payload_ptr, src_address, n)
                sample.assume_init().send()
                notify()

        return send

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        node = _node(endpoint)
        service = _service(node, endpoint, cell, self.buffer)
        publisher = (
            service.publisher_builder()
            .initial_max_slice_len(cell.size.nbytes)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        notifier = _event(node, endpoint).notifier_builder().create() if self.event else None
        notify = None if notifier is None else notifier.notify
        send = self._send(publisher.loan_slice_uninit, notify, cell)

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
        service = _service(node, endpoint, cell, self.buffer)

        def published() -> bool:
            return bool(service.dynamic_config.number_of_publishers >= cell.producers)

        _wait_for(published, cell, "publishers")
        subscriber = service.subscriber_builder().buffer_size(self.buffer).create()
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
    topologies = frozenset({MAIN, SUPERVISOR, FAN_IN, FAN_OUT})
    spinning_reader = False
    event = True


class Latest(EventWait):
    name = "iceoryx2-latest"
    topologies = frozenset({LATEST_FRAME})
    buffer = 1


class _Loaning(Polling):
    """iceoryx2 doing shmring-claim's job (the classes below add the reader's way to wait)."""

    topologies = frozenset({MAIN, SUPERVISOR, FAN_OUT})
    copies = False

    def _send(self, loan: Loaner, notify: Notify | None, cell: Cell) -> Send:
        """send(seq, t_ns): loan a slice, stamp it in place (head and tail, where the
        verifier reads them), send it (and notify, when the reader is event-woken)."""
        n = cell.size.nbytes
        at = (ctypes.c_uint8 * n).from_address
        stamp = stamper(cell.size)

        if notify is None:

            def send(seq: int, t_ns: int) -> None:
                sample = loan(n)
                stamp(at(sample.payload_ptr), seq, t_ns)
                sample.assume_init().send()

        else:

            def send(seq: int, t_ns: int) -> None:
                sample = loan(n)
                stamp(at(sample.payload_ptr), seq, t_ns)
                sample.assume_init().send()
                notify()

        return send


class LoanPolling(_Loaning):
    name = "iceoryx2-loan-poll"


class Loan(_Loaning, EventWait):
    name = "iceoryx2-loan"
