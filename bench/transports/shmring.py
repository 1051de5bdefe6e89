# shmring itself: RingWriter / RingReader, per docs/API.md.
#
# Usage chosen, and why (the API's documented fast paths):
#   shmring-write: RingWriter.create(..., policy="block"), w.write(frame) — one copy into the
#     ring; the reader iterates `for frame in reader` (the previous frame is released when the
#     next is taken) and works on frame.array, a zero-copy view.
#   shmring-claim: `with w.claim() as slot:` — zero copies: the producer fills the slot in place.
#     Here "filling" is writing the stamp; producing the pixels is the application's work.
#   shmring-spin: shmring-write with the optional spin setting: the reader polls for 10 ms
#     before it sleeps (RingReader.attach(spin=0.01)), so a stream faster than 100 frames/s
#     never puts it to sleep. It trades a core while frames flow for throughput and latency,
#     like iceoryx2's polling reader; it is not the blocking reader the targets are about.
#   shmring-sleep: shmring-write with spin=0: the reader never polls and never naps ahead of a
#     frame (docs/API.md, `spin`), so every frame reaches it through a futex wake-up. Measured
#     only in the wake scenario, beside the kernel floors: the wake-up target is judged on it,
#     since the default reader of a steady stream is already polling when its frame lands.
#   shmring-latest: policy="overwrite" (the writer never waits) and a reader that calls
#     r.latest() for the newest frame, skipping older ones — the preview/monitor use case. The
#     ring is made with the natural call, RingWriter.create(name, shape, dtype,
#     policy="overwrite", slots=4), default max_readers / max_writers.
#   shmring-write-alone / shmring-overwrite-alone: write() with no reader at all, the
#     scenario `alone` where issue 16's "overwrite write >= 0.8x block write" is judged: the
#     same producer loop into a block ring (8 slots; frames nobody reads are not kept) and
#     into the latest-frame cell's overwrite ring (4 slots; it keeps its newest frames).
#     shmring-overwrite-lagging: the overwrite ring with a reader attached in the writer's
#     process that reads nothing, shown beside them: the ring keeps its frames for that reader,
#     so at large frames the writer copies into buffers out of its cache (block would wait).
#     Verified at close: the overwrite ring's newest frame is the PHASE_END frame; the block
#     ring, which keeps no frame, has published some (every write() raises if it fails).
# Topologies: the producer creates the ring (main, groups, fanout); the parent creates it and
# the producers attach with RingWriter.attach (supervisor, fanin: the textbook supervisor
# program, the parent holding its handle, never writing, until the run is over); groups:
# readers attach with group="workers" and share the frames.
# Block-policy rings keep the API's defaults (8 slots, max_readers=8, max_writers=4).
# Readers attach with start="oldest" so nothing published before the first read is missed.
from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, ClassVar

import numpy as np

from bench.cell import FAN_IN, FAN_OUT, GROUPS, LATEST_FRAME, MAIN, SUPERVISOR, Cell
from bench.frames import PHASE_END, Frame, make_source, read_head, stamper
from bench.transports import Consumer, Producer, Transport
from shmring import RingReader, RingWriter, inspect_ring

SLOTS = 8
LATEST_SLOTS = 4
ATTACH_TIMEOUT_S = 30.0
GROUP = "workers"
PARENT_CREATES = frozenset({SUPERVISOR, FAN_IN})


def _name(cell: Cell) -> str:
    return f"sb{cell.token}"


class Write(Transport):
    name = "shmring-write"
    kind = "shmring"
    topologies = frozenset({MAIN, SUPERVISOR, FAN_IN, GROUPS, FAN_OUT})
    reader_options: ClassVar[dict[str, Any]] = {}  # RingReader.attach keywords beyond these
    _owner: Any = None  # the parent's handle, when the parent creates the ring

    def _create(self, cell: Cell) -> Any:
        return RingWriter.create(_name(cell), cell.size.shape, np.uint8, slots=SLOTS)

    def prepare(self, cell: Cell, ctx: Any) -> Any:
        if cell.topology in PARENT_CREATES:
            self._owner = self._create(cell)
        return None

    def cleanup(self) -> None:
        if self._owner is not None:
            self._owner.close()

    def _send(self, writer: Any, cell: Cell) -> Any:
        return _copy_in(writer, cell)

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        if cell.topology in PARENT_CREATES:
            writer = RingWriter.attach(_name(cell), timeout=ATTACH_TIMEOUT_S)
        else:
            writer = self._create(cell)
        return Producer(self._send(writer, cell), writer.close)

    def _frames(self, reader: Any) -> Generator[Frame, None, None]:
        for frame in reader:
            yield frame.array

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        reader = RingReader.attach(
            _name(cell),
            start="oldest",
            timeout=ATTACH_TIMEOUT_S,
            group=GROUP if cell.topology == GROUPS else None,
            **self.reader_options,
        )
        stream = self._frames(reader)

        def close() -> None:
            stream.close()
            reader.close()

        return Consumer(stream, close)


class Claim(Write):
    name = "shmring-claim"
    topologies = frozenset({MAIN, SUPERVISOR, FAN_OUT})
    copies = False

    def _send(self, writer: Any, cell: Cell) -> Any:
        stamp = stamper(cell.size)
        claim = writer.claim

        def send(seq: int, t_ns: int) -> None:
            with claim() as slot:
                stamp(slot, seq, t_ns)

        return send


class SpinningReader(Write):
    name = "shmring-spin"
    topologies = frozenset({MAIN})
    spinning_reader = True
    reader_options: ClassVar[dict[str, Any]] = {"spin": 0.01}


class SleepingReader(Write):
    name = "shmring-sleep"
    kind = "wake"
    topologies = frozenset()
    reader_options: ClassVar[dict[str, Any]] = {"spin": 0}


class Latest(Write):
    name = "shmring-latest"
    topologies = frozenset({LATEST_FRAME})

    def _create(self, cell: Cell) -> Any:
        return RingWriter.create(
            _name(cell), cell.size.shape, np.uint8, policy="overwrite", slots=LATEST_SLOTS
        )

    def _frames(self, reader: Any) -> Generator[Frame, None, None]:
        latest = reader.latest
        while True:
            with latest(timeout=None) as frame:
                yield frame.array


def _copy_in(writer: Any, cell: Cell) -> Callable[[int, int], None]:
    """send(seq, t_ns): stamp the source frame, then write() it (one copy into the ring)."""
    src = make_source(cell.size)
    stamp = stamper(cell.size)
    write = writer.write

    def send(seq: int, t_ns: int) -> None:
        stamp(src, seq, t_ns)
        write(src)

    return send


class WriteAlone(Transport):
    """write() into a block ring with no reader (scenario `alone`): nothing waits, and
    frames nobody reads are not kept."""

    name = "shmring-write-alone"
    kind = "alone"
    lagging_reader = False  # a reader attached in the writer's process that reads nothing

    def _create(self, cell: Cell) -> Any:
        return RingWriter.create(_name(cell), cell.size.shape, np.uint8, slots=SLOTS)

    def _check(self, name: str) -> None:
        """After the run: the ring, which keeps no frame, published some."""
        if not inspect_ring(name).published:
            raise RuntimeError("no frame was published")

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        name = _name(cell)
        writer = self._create(cell)
        lagging = RingReader.attach(name, timeout=0) if self.lagging_reader else None

        def close() -> None:
            try:
                self._check(name)
            finally:
                if lagging is not None:
                    lagging.close()
                writer.close()

        return Producer(_copy_in(writer, cell), close)


class OverwriteAlone(WriteAlone):
    """write() into the latest-frame cell's overwrite ring, no reader attached."""

    name = "shmring-overwrite-alone"

    def _create(self, cell: Cell) -> Any:
        return Latest()._create(cell)

    def _check(self, name: str) -> None:
        """After the run: the newest frame the ring keeps is the PHASE_END frame."""
        with RingReader.attach(name, timeout=0) as reader, reader.latest(0) as frame:
            if read_head(frame.array) != PHASE_END:
                raise RuntimeError("the newest frame is not the end frame")


class OverwriteLagging(OverwriteAlone):
    """The same with a reader attached in the writer's process that reads nothing: the ring
    keeps its newest frames for that reader, so the writer cannot reuse the buffer just
    passed (docs/FORMAT.md, "Writers")."""

    name = "shmring-overwrite-lagging"
    lagging_reader = True
