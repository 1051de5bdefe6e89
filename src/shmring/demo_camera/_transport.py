# How the camera demo's stages hand frames to each other: one small interface, two transports.
#
# Theory: the pipeline is written once against Sender/Receiver; ShmTransport maps them
# onto shmring rings (a claimed slot is the frame: zero copies), QueueTransport onto
# multiprocessing.Queue (every hop pickles a copy), so `--transport queue` measures the
# difference on identical stage code.
#
# Rules:
# - Every wait is cut into WAIT_SLICE_S pieces; between pieces the stage's Interrupt is
#   consulted, so a stage notices a shutdown within a slice even when its peer is dead.
#   A stage with input pending never looks at it, so a shutdown drains what is queued.
# - A channel's topology (policy, receiver groups and their sizes, writer count) is fixed
#   up front in a Channel; the queue transport needs it to fan frames out and to count
#   end-of-stream markers, the ring transport to size its rings.
# - Each frame carries (seq, producer, timestamp_ns): seq is the capture's frame number,
#   kept by every stage so results can be matched up; timestamp_ns is the capture time,
#   so every stage can measure its latency from capture.
# - Channels with one writer are created by that writer (it owns and unlinks the ring);
#   channels with several writers are hosted by the supervisor, which outlives them.

from __future__ import annotations

import queue
import struct
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from multiprocessing.queues import Queue
from types import TracebackType
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import DTypeLike, NDArray

from shmring import (
    EndOfStream,
    Frame,
    RingExists,
    RingNotFound,
    RingReader,
    RingTimeout,
    RingWriter,
    remove_ring,
)

WAIT_SLICE_S = 0.1
# Room for a few readers beyond the pipeline's own (e.g. a viewer attached by name).
SPARE_READERS = 2

Policy = Literal["block", "overwrite"]
TransportKind = Literal["shm", "queue"]


class StopRequested(Exception):
    """The pipeline is shutting down; raised out of a wait that would otherwise go on."""


class StartupTimeout(Exception):
    """A ring the stage needs did not appear in time."""


class Interrupt(Protocol):
    def check(self) -> None:
        """Raise StopRequested if the pipeline is shutting down."""

    def stopping(self) -> bool: ...


@dataclass(frozen=True)
class Channel:
    name: str
    policy: Policy
    groups: Mapping[str, int]  # receiver group -> how many processes share it
    writers: int = 1
    slots: int = 8
    dtype: str = "uint8"
    shape: tuple[int, ...] | None = None  # None: the capture's frame shape


@dataclass(frozen=True)
class Received:
    array: NDArray[Any]  # valid until the next frame is taken from the same receiver
    seq: int
    producer: int
    timestamp_ns: int
    dropped: int


class Sender(Protocol):
    def claim(
        self, seq: int, timestamp_ns: int | None = None
    ) -> AbstractContextManager[NDArray[Any]]:
        """Context manager yielding a writable array; published when the block exits
        normally, discarded if it raises. timestamp_ns None: stamped at publish time."""

    def __enter__(self) -> Sender: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Receiver(Protocol):
    def frames(self) -> Iterator[Received]:
        """Every frame for this receiver, in order, until end of stream."""

    def freshest(self) -> Iterator[Received]:
        """The newest frame each time, skipping (and counting) older ones."""

    def poll(self) -> list[Received]:
        """Whatever is ready now, copied out, without waiting; [] at end of stream."""

    def __enter__(self) -> Receiver: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Transport(Protocol):
    kind: TransportKind

    def host(self, channel: Channel) -> ExitStack:
        """Create `channel` here if it has several writers; it lives until the stack closes."""

    def sender(
        self, channel: Channel, shape: tuple[int, ...], producer: int, interrupt: Interrupt
    ) -> Sender: ...

    def receiver(
        self, channel: Channel, group: str, interrupt: Interrupt, deadline: float
    ) -> Receiver: ...

    def remove_leftovers(self, channels: Mapping[str, Channel]) -> list[str]:
        """After every stage exited: remove what a killed stage could not; say what."""


def _slice_until(deadline: float, interrupt: Interrupt, what: str) -> float:
    """The next wait slice before `deadline`; raises once the deadline or a stop is reached."""
    interrupt.check()
    left = deadline - time.monotonic()
    if left <= 0:
        raise StartupTimeout(f"{what} did not appear in time")
    return min(WAIT_SLICE_S, left)


# --- shared memory -------------------------------------------------------------------------

_META = struct.Struct("<qq")  # seq, producer


class ShmSender:
    def __init__(self, writer: RingWriter, producer: int, interrupt: Interrupt) -> None:
        self._writer = writer
        self._producer = producer
        self._interrupt = interrupt

    @contextmanager
    def claim(self, seq: int, timestamp_ns: int | None = None) -> Iterator[NDArray[Any]]:
        meta = _META.pack(seq, self._producer)
        with ExitStack() as stack:
            while True:
                try:
                    slot: NDArray[Any] = stack.enter_context(
                        self._writer.claim(
                            timeout=WAIT_SLICE_S, timestamp_ns=timestamp_ns, meta=meta
                        )
                    )
                    break
                except RingTimeout:
                    self._interrupt.check()
            yield slot

    def __enter__(self) -> ShmSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._writer.close()


def _received(frame: Frame, array: NDArray[Any]) -> Received:
    seq, producer = _META.unpack_from(frame.meta)
    return Received(array, seq, producer, frame.timestamp_ns, frame.dropped)


class ShmReceiver:
    def __init__(self, reader: RingReader, interrupt: Interrupt) -> None:
        self._reader = reader
        self._interrupt = interrupt
        self._ended = False

    def _take(self, latest: bool) -> Iterator[Received]:
        take = self._reader.latest if latest else self._reader.read
        while True:
            try:
                frame = take(timeout=WAIT_SLICE_S)
            except RingTimeout:
                self._interrupt.check()
                continue
            except EndOfStream:
                return
            with frame:
                yield _received(frame, frame.array)

    def frames(self) -> Iterator[Received]:
        return self._take(latest=False)

    def freshest(self) -> Iterator[Received]:
        return self._take(latest=True)

    def poll(self) -> list[Received]:
        ready: list[Received] = []
        while not self._ended:
            try:
                with self._reader.read(timeout=0) as frame:
                    ready.append(_received(frame, frame.array.copy()))
            except RingTimeout:
                break
            except EndOfStream:
                self._ended = True
        return ready

    def __enter__(self) -> ShmReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._reader.close()


class ShmTransport:
    """Rings named `<prefix>-<channel>`; the prefix is unique per run."""

    kind: TransportKind = "shm"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def ring_name(self, channel: Channel) -> str:
        return f"{self.prefix}-{channel.name}"

    def _create(self, channel: Channel, shape: tuple[int, ...]) -> RingWriter:
        return RingWriter.create(
            self.ring_name(channel),
            shape,
            np.dtype(channel.dtype),
            slots=channel.slots,
            policy=channel.policy,
            max_readers=sum(channel.groups.values()) + SPARE_READERS,
            max_writers=channel.writers + 1,  # +1: the host of a multi-writer ring
            meta_size=_META.size,
        )

    def host(self, channel: Channel) -> ExitStack:
        stack = ExitStack()
        if channel.writers > 1:
            assert channel.shape is not None, "a hosted channel needs a fixed shape"
            stack.enter_context(self._create(channel, channel.shape))
        return stack

    def sender(
        self, channel: Channel, shape: tuple[int, ...], producer: int, interrupt: Interrupt
    ) -> ShmSender:
        if channel.writers > 1:
            writer = RingWriter.attach(self.ring_name(channel))
        else:
            writer = self._create(channel, shape)
        return ShmSender(writer, producer, interrupt)

    def receiver(
        self, channel: Channel, group: str, interrupt: Interrupt, deadline: float
    ) -> ShmReceiver:
        name = self.ring_name(channel)
        # A group of one is plain fan-out: the reader is its own group and sees every frame.
        shared_group = group if channel.groups[group] > 1 else None
        while True:
            slice_s = _slice_until(deadline, interrupt, f"ring {name!r}")
            try:
                reader = RingReader.attach(name, group=shared_group, timeout=slice_s)
            except (RingNotFound, RingTimeout):
                continue
            return ShmReceiver(reader, interrupt)

    def remove_leftovers(self, channels: Mapping[str, Channel]) -> list[str]:
        # A creator killed by SIGKILL cannot unlink its ring. The last participant to leave
        # it does, but a ring nobody else had attached yet stays: remove it here. One still
        # in use belongs to an outside reader, and goes when that reader leaves.
        removed = []
        for channel in channels.values():
            name = self.ring_name(channel)
            try:
                remove_ring(name)
            except (FileNotFoundError, RingExists):
                continue
            removed.append(name)
        return removed


# --- multiprocessing.Queue ----------------------------------------------------------------

# Queue items: (seq, producer, timestamp_ns, array), or None: one writer's end of stream.
_Item = tuple[int, int, int, NDArray[Any]] | None


class QueueSender:
    def __init__(
        self,
        channel: Channel,
        queues: Mapping[str, Queue[_Item]],
        shape: tuple[int, ...],
        producer: int,
        interrupt: Interrupt,
    ) -> None:
        self._channel = channel
        self._queues = queues
        self._shape = shape
        self._dtype: DTypeLike = np.dtype(channel.dtype)
        self._producer = producer
        self._interrupt = interrupt

    def _put(self, target: Queue[_Item], item: _Item) -> None:
        if self._channel.policy == "overwrite" and item is not None:
            # Never wait for a slow reader; it sees the gap in seq as dropped frames.
            with suppress(queue.Full):
                target.put_nowait(item)
            return
        while True:
            try:
                target.put(item, timeout=WAIT_SLICE_S)
                return
            except queue.Full:
                self._interrupt.check()

    @contextmanager
    def claim(self, seq: int, timestamp_ns: int | None = None) -> Iterator[NDArray[Any]]:
        # A fresh array per frame: the queue pickles it later, in its feeder thread.
        array = np.empty(self._shape, self._dtype)
        yield array
        stamp = time.monotonic_ns() if timestamp_ns is None else timestamp_ns
        for target in self._queues.values():
            self._put(target, (seq, self._producer, stamp, array))

    def __enter__(self) -> QueueSender:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None or self._interrupt.stopping():
            # Readers may be gone, and a feeder thread blocked on a full pipe would keep this
            # process from exiting: drop what is unsent. The price is mp.Queue's weak spot: a
            # writer that exits (or dies) mid-message leaves a torn message in the pipe, and a
            # reader that has started on it blocks in recv_bytes, where no timeout applies.
            # The supervisor kills such a reader at its deadline; rings have no such state.
            for target in self._queues.values():
                target.cancel_join_thread()
            return
        for group, target in self._queues.items():
            for _ in range(self._channel.groups[group]):
                self._put(target, None)


class QueueReceiver:
    def __init__(self, channel: Channel, source: Queue[_Item], interrupt: Interrupt) -> None:
        self._source = source
        self._interrupt = interrupt
        self._writers_left = channel.writers
        # Gaps in seq are losses only when one writer feeds one reader.
        self._gaps_are_drops = channel.writers == 1 and sum(channel.groups.values()) == 1
        self._next_seq = 0

    def _get(self, timeout: float) -> tuple[int, int, int, NDArray[Any]] | None:
        """The next frame; None at end of stream. Raises queue.Empty after `timeout` (0: now)."""
        while self._writers_left:
            item = self._source.get(timeout=timeout) if timeout else self._source.get_nowait()
            if item is not None:
                return item
            self._writers_left -= 1
        return None

    def _received(self, item: tuple[int, int, int, NDArray[Any]], skipped: int) -> Received:
        seq, producer, stamp, array = item
        dropped = seq - self._next_seq if self._gaps_are_drops else skipped
        self._next_seq = seq + 1
        return Received(array, seq, producer, stamp, dropped)

    def _next(self) -> tuple[int, int, int, NDArray[Any]] | None:
        while True:
            try:
                return self._get(WAIT_SLICE_S)
            except queue.Empty:
                self._interrupt.check()

    def frames(self) -> Iterator[Received]:
        while (item := self._next()) is not None:
            yield self._received(item, 0)

    def freshest(self) -> Iterator[Received]:
        while (item := self._next()) is not None:
            skipped = 0
            while True:
                try:
                    newer = self._get(0)
                except queue.Empty:
                    break
                if newer is None:
                    break
                item, skipped = newer, skipped + 1
            yield self._received(item, skipped)

    def poll(self) -> list[Received]:
        ready: list[Received] = []
        while True:
            try:
                item = self._get(0)
            except queue.Empty:
                return ready
            if item is None:
                return ready
            ready.append(self._received(item, 0))

    def __enter__(self) -> QueueReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class QueueTransport:
    """One bounded multiprocessing.Queue per (channel, receiver group), made up front."""

    kind: TransportKind = "queue"

    def __init__(self, ctx: SpawnContext, channels: Mapping[str, Channel]) -> None:
        self._queues: dict[str, dict[str, Queue[_Item]]] = {
            channel.name: {group: ctx.Queue(maxsize=channel.slots) for group in channel.groups}
            for channel in channels.values()
        }

    def host(self, channel: Channel) -> ExitStack:
        return ExitStack()

    def sender(
        self, channel: Channel, shape: tuple[int, ...], producer: int, interrupt: Interrupt
    ) -> QueueSender:
        return QueueSender(channel, self._queues[channel.name], shape, producer, interrupt)

    def receiver(
        self, channel: Channel, group: str, interrupt: Interrupt, deadline: float
    ) -> QueueReceiver:
        return QueueReceiver(channel, self._queues[channel.name][group], interrupt)

    def remove_leftovers(self, channels: Mapping[str, Channel]) -> list[str]:
        return []


def make_transport(
    kind: TransportKind, ctx: SpawnContext, run_id: str, channels: Mapping[str, Channel]
) -> Transport:
    if kind == "shm":
        return ShmTransport(run_id)
    return QueueTransport(ctx, channels)
