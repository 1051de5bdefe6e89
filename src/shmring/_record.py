# Recording: a reader of a ring writes every frame it gets into an MCAP file (the layout is
# _mcap_format.py's), with the `mcap` library.
#
# Rules:
#   - The recorder is an ordinary reader (its own group unless told otherwise): under the
#     block policy it holds writers back like any reader; under overwrite it can lose frames,
#     and each Frame message says how many it lost just before it.
#   - The file is written without a buffer in this process (_Output): every record mcap
#     hands over goes straight to the kernel. mcap builds each chunk in memory and hands it
#     over whole, so a recorder killed at any point leaves every chunk it finished in the file
#     (mcap's reader recovers them: tests/test_record.py), and after a failed write (a full
#     disk) the file is cut back to the end of the last record written whole.
#   - The recording ends, and the file is finished (chunk, index, summary, footer), on
#     `frames`, `seconds`, end of stream, every writer gone, or a stop request (Ctrl-C,
#     SIGTERM; _recording.StopRequest). A failed write is the only end that leaves the file
#     unfinished: mcap's writer cannot go on after one.

from __future__ import annotations

import errno
import os
import time
from types import TracebackType
from typing import IO, cast

from mcap.writer import CompressionType, Writer
from mcap_protobuf.schema import register_schema

from ._errors import EndOfStream, RecordingDiskFull, RingTimeout, WriterGone
from ._inspect import inspect_ring
from ._mcap_format import (
    END_METADATA,
    FRAME_DATA_FIELD,
    LIBRARY,
    PROTOBUF,
    RING_METADATA,
    SEQUENCE_MASK,
    Frame,
    Image,
    frames_topic,
    image_encoding,
    image_topic,
    ring_metadata,
    with_bytes_field,
)
from ._progress import Progress
from ._reader import Frame as RingFrame
from ._reader import RingReader
from ._recording import (
    COLORS,
    COMPRESSIONS,
    STOP_POLL,
    RecordedRing,
    RecordResult,
    StopRequest,
    choice,
)

_COMPRESSION = {
    "none": CompressionType.NONE,
    "zstd": CompressionType.ZSTD,
    "lz4": CompressionType.LZ4,
}
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _Output:
    """The recording's file, written without a buffer in this process."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.position = 0  # bytes written by write() calls that completed

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        self.position += done
        return done

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        """Nothing is buffered here (mcap calls it)."""

    def cut(self) -> None:
        """Drop what a failed write left after the last complete one (regular files)."""
        if os.path.isfile(f"/proc/self/fd/{self._fd}"):
            os.ftruncate(self._fd, self.position)

    def __enter__(self) -> _Output:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        os.close(self._fd)


class _Recorder:
    """Writes a ring's frames into an MCAP file: metadata, channels, messages, index."""

    def __init__(
        self, output: _Output, ring: RecordedRing, compression: str, chunk_size: int
    ) -> None:
        self.ring = ring
        self.frames = 0
        self.dropped = 0
        mcap = self._mcap = Writer(
            cast(IO[bytes], output), chunk_size=chunk_size, compression=_COMPRESSION[compression]
        )
        mcap.start(library=LIBRARY)
        mcap.add_metadata(RING_METADATA, ring_metadata(ring))
        frame_schema = register_schema(mcap, Frame)
        self._frames_channel = mcap.register_channel(
            frames_topic(ring.name), PROTOBUF, frame_schema
        )
        self._image_topic = image_topic(ring.name) if ring.image_encoding else ""
        self._image_channel = 0
        if ring.image_encoding:
            image_schema = register_schema(mcap, Image)
            self._image_channel = mcap.register_channel(self._image_topic, PROTOBUF, image_schema)

    def add(self, frame: RingFrame) -> None:
        array = frame.array
        stamp = frame.timestamp_ns
        taken = time.time_ns()
        sequence = frame.seq & SEQUENCE_MASK
        fields = Frame(
            seq=frame.seq,
            timestamp_ns=stamp,
            shape=array.shape,
            dtype=array.dtype.str,
            meta=frame.meta,
            dropped=frame.dropped,
            image_topic=self._image_topic,
        ).SerializeToString()
        if self._image_topic:
            self._mcap.add_message(self._frames_channel, taken, fields, stamp, sequence)
            height, width = array.shape[:2]
            image = Image(
                frame_id=self.ring.name,
                width=width,
                height=height,
                encoding=self.ring.image_encoding,
                step=array.nbytes // max(height, 1),  # rows are packed: C order
            )
            image.timestamp.FromNanoseconds(taken)
            pixels = with_bytes_field(image.SerializeToString(), Image.DATA_FIELD_NUMBER, array)
            self._mcap.add_message(self._image_channel, taken, _as_bytes(pixels), stamp, sequence)
        else:
            message = with_bytes_field(fields, FRAME_DATA_FIELD, array)
            self._mcap.add_message(self._frames_channel, taken, _as_bytes(message), stamp, sequence)
        self.frames += 1
        self.dropped += frame.dropped

    def finish(self, ended: str) -> None:
        self._mcap.add_metadata(
            END_METADATA,
            {"frames": str(self.frames), "dropped": str(self.dropped), "ended": ended},
        )
        self._mcap.finish()  # type: ignore[no-untyped-call]  # mcap leaves it unannotated


def _as_bytes(data: bytearray) -> bytes:
    """mcap types message data as bytes; it only writes it to a stream, which takes any
    buffer, so the one copy made by with_bytes_field is the last."""
    return cast(bytes, data)


def record_ring(
    ring: str,
    path: str,
    *,
    frames: int | None,
    seconds: float | None,
    compression: str,
    start: str,
    group: str | None,
    color: str,
    timeout: float | None,
    chunk_size: int,
    progress: bool,
) -> RecordResult:
    """shmring.record (_recording.py), once the optional packages are imported."""
    choice(compression, COMPRESSIONS, "compression")
    choice(color, COLORS, "color")
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be a positive number of frames, got {frames}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of bytes, got {chunk_size}")
    began = time.monotonic()
    with RingReader.attach(ring, group=group, start=start, timeout=timeout) as reader:
        info = inspect_ring(ring)
        recorded = RecordedRing(
            name=ring,
            shape=reader.shape,
            dtype=reader.dtype,
            policy=info.policy,
            slots=info.slots,
            max_readers=info.max_readers,
            max_writers=info.max_writers,
            meta_size=info.meta_size,
            image_encoding=image_encoding(reader.shape, reader.dtype, color),
        )
        with (
            _Output(path) as output,
            StopRequest() as stop,
            Progress(progress, frames, "recording") as bar,
        ):
            recorder: _Recorder | None = None
            try:
                recorder = _Recorder(output, recorded, compression, chunk_size)
                ended = _take_frames(reader, recorder, frames, seconds, stop, bar)
                recorder.finish(ended)
            except OSError as exc:
                output.cut()
                if exc.errno in _DISK_FULL:
                    count = recorder.frames if recorder else 0
                    raise RecordingDiskFull(
                        exc.errno,
                        f"disk full writing {path} after {count} frames: the file was cut back "
                        "to its last complete chunk and has no index; read it with `shmring "
                        "replay --recover` (recover=True), and free space before recording "
                        "again",
                    ) from exc
                raise
            return RecordResult(
                path=path,
                frames=recorder.frames,
                bytes=output.position,
                seconds=time.monotonic() - began,
                dropped=recorder.dropped,
                ended=ended,
            )


def _take_frames(
    reader: RingReader,
    recorder: _Recorder,
    frames: int | None,
    seconds: float | None,
    stop: StopRequest,
    bar: Progress,
) -> str:
    """Record until one of the ends; returns which."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        if stop.requested:
            return "stop request"
        if frames is not None and recorder.frames >= frames:
            return "frame limit"
        wait = STOP_POLL
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return "time limit"
        try:
            frame = reader.read(wait)
        except RingTimeout:
            continue
        except EndOfStream:
            return "end of stream"
        except WriterGone:
            return "writer gone"
        with frame:
            recorder.add(frame)
            bar.add(1, frame.array.nbytes)
