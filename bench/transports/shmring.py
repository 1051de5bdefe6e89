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
#     r.latest() for the newest frame, skipping older ones — the preview/monitor use case.
#     Overwrite needs slots > max_readers + max_writers, so it declares 2 readers, 1 writer.
# Block-policy rings keep the API's defaults (8 slots, max_readers=8, max_writers=4).
# Readers attach with start="oldest" so nothing published before the first read is missed.
from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar

import numpy as np

from bench.cell import Cell
from bench.frames import Frame, make_source, stamper
from bench.transports import Consumer, Producer, Transport
from shmring import RingReader, RingWriter

SLOTS = 8
ATTACH_TIMEOUT_S = 30.0


def _name(cell: Cell) -> str:
    return f"sb{cell.token}"


class Write(Transport):
    name = "shmring-write"
    kind = "shmring"
    fanout = True
    reader_options: ClassVar[dict[str, Any]] = {}  # RingReader.attach keywords beyond these

    def _create(self, cell: Cell) -> Any:
        return RingWriter.create(_name(cell), cell.size.shape, np.uint8, slots=SLOTS)

    def _send(self, writer: Any, cell: Cell) -> Any:
        src = make_source(cell.size)
        stamp = stamper(cell.size)
        write = writer.write

        def send(seq: int, t_ns: int) -> None:
            stamp(src, seq, t_ns)
            write(src)

        return send

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        writer = self._create(cell)
        return Producer(self._send(writer, cell), writer.close)

    def _frames(self, reader: Any) -> Generator[Frame, None, None]:
        for frame in reader:
            yield frame.array

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        reader = RingReader.attach(
            _name(cell), start="oldest", timeout=ATTACH_TIMEOUT_S, **self.reader_options
        )
        stream = self._frames(reader)

        def close() -> None:
            stream.close()
            reader.close()

        return Consumer(stream, close)


class Claim(Write):
    name = "shmring-claim"

    def _send(self, writer: Any, cell: Cell) -> Any:
        stamp = stamper(cell.size)
        claim = writer.claim

        def send(seq: int, t_ns: int) -> None:
            with claim() as slot:
                stamp(slot, seq, t_ns)

        return send


class SpinningReader(Write):
    name = "shmring-spin"
    spinning_reader = True
    reader_options: ClassVar[dict[str, Any]] = {"spin": 0.01}


class SleepingReader(Write):
    name = "shmring-sleep"
    kind = "wake"
    reader_options: ClassVar[dict[str, Any]] = {"spin": 0}


class Latest(Write):
    name = "shmring-latest"
    fanout = False

    def _create(self, cell: Cell) -> Any:
        return RingWriter.create(
            _name(cell),
            cell.size.shape,
            np.uint8,
            slots=SLOTS,
            policy="overwrite",
            max_readers=2,
            max_writers=1,
        )

    def _frames(self, reader: Any) -> Generator[Frame, None, None]:
        latest = reader.latest
        while True:
            with latest(timeout=None) as frame:
                yield frame.array
