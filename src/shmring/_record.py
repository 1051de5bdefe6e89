# Recording: a reader of a ring writes every frame it gets into an MCAP file (the layout is
# _mcap_format.py's), with the MCAP writer of foxglove-sdk (Foxglove's SDK; its writer is the
# `mcap` Rust crate). The `mcap` Python package only reads recordings (_replay.py): its
# writer copies every frame about five times (chunk buffer, record buffer, CRCs), which
# held recording to a tenth of the disk's speed (docs/performance.md).
#
# Rules:
#   - The recorder is an ordinary reader (its own group unless told otherwise): under the
#     block policy it holds writers back like any reader; under overwrite it can lose frames,
#     and each Frame message says how many it lost just before it.
#   - Each recording has its own foxglove.Context: its channels reach only its own file,
#     never another recording's or a sink of the process's default context.
#   - The SDK writes through _Output, a file object without a buffer in this process: every
#     record goes straight to the kernel. The writer streams each chunk into the file behind
#     a placeholder header (record length all ones) and, when the chunk is complete, seeks
#     back and writes the real header. So a recorder killed at any point leaves every chunk
#     it finished in the file, followed by at most a chunk that mcap's reader cannot read
#     past (tests/test_record.py).
#   - The SDK does not raise a failed write from Channel.log (it logs a warning and stops
#     writing), so _Output keeps the first OSError and writes nothing after it, and the
#     recorder raises that error after the SDK call that met it. The file is then cut back
#     to the end of the last record mcap's reader reads whole (_replay.complete_length).
#   - MCAP message fields: the SDK sets publish_time to log_time (when the recorder took the
#     frame) and numbers each channel's messages 1, 2, ... in `sequence`; a frame's own
#     sequence number and timestamp are in its Frame message.
#   - The recording ends, and the file is finished (chunk, index, summary, footer), on
#     `frames`, `seconds`, end of stream, every writer gone, a stop request (Ctrl-C,
#     SIGTERM; _recording.StopRequest), or any error but a failed write, which is the only
#     end that leaves the file unfinished.

from __future__ import annotations

import errno
import os
import time
from types import TracebackType
from typing import Any

from foxglove import Channel, Context, Schema, open_mcap
from foxglove.mcap import MCAPCompression, MCAPWriteOptions
from mcap_protobuf.schema import build_file_descriptor_set

from ._errors import EndOfStream, RecordingDiskFull, RingTimeout, WriterGone
from ._inspect import inspect_ring
from ._mcap_format import (
    END_METADATA,
    FRAME_DATA_FIELD,
    PROTOBUF,
    RING_METADATA,
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
from ._replay import complete_length

_COMPRESSION = {"none": None, "zstd": MCAPCompression.Zstd, "lz4": MCAPCompression.Lz4}
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _Output:
    """The recording's file for the SDK's writer, without a buffer in this process. After
    a failed write it keeps the error in `failure` and writes nothing more, but goes on
    counting positions as if it did: the SDK checks them when it finishes a chunk, and it
    is closed after the failure."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.failure: OSError | None = None
        self._at = self._end = 0  # positions after a failure

    def write(self, data: bytes | bytearray) -> int:
        if self.failure is None:
            view = memoryview(data)
            done = 0
            try:
                while done < len(view):
                    done += os.write(self._fd, view[done:])
            except OSError as exc:
                self.failure = exc
                self._at = os.lseek(self._fd, 0, os.SEEK_CUR) + len(view) - done
                self._end = max(self._at, os.fstat(self._fd).st_size)
        else:
            self._at += len(data)
            self._end = max(self._end, self._at)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self.failure is None:
            return os.lseek(self._fd, offset, whence)
        self._at = offset + {os.SEEK_SET: 0, os.SEEK_CUR: self._at, os.SEEK_END: self._end}[whence]
        return self._at

    def flush(self) -> None:
        """Nothing is buffered here (the SDK calls it)."""

    def check(self) -> None:
        """Raise the error of the first failed write, if any."""
        if self.failure is not None:
            raise self.failure

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def cut(self) -> None:
        """Drop what follows the last complete record (regular files)."""
        if os.path.isfile(f"/proc/self/fd/{self._fd}"):
            os.ftruncate(self._fd, complete_length(self.path))

    def __enter__(self) -> _Output:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        os.close(self._fd)


class _Recorder:
    """Writes a ring's frames into an MCAP file: metadata, channels, messages, index. Use
    it as a context manager: leaving it finishes the file (nothing is written after a
    failed write)."""

    def __init__(
        self, output: _Output, ring: RecordedRing, compression: str, chunk_size: int
    ) -> None:
        self.ring = ring
        self.frames = 0
        self.dropped = 0
        self._output = output
        context = self._context = Context()  # its channels close when it is freed
        options = MCAPWriteOptions(compression=_COMPRESSION[compression], chunk_size=chunk_size)
        self._mcap = open_mcap(output, context=context, writer_options=options)
        try:
            self._mcap.write_metadata(RING_METADATA, ring_metadata(ring))
            output.check()
        except BaseException:
            self._mcap.close()
            raise
        self._frames_channel = _channel(context, frames_topic(ring.name), Frame)
        self._image_topic = image_topic(ring.name) if ring.image_encoding else ""
        self._image_channel: Channel | None = None
        if ring.image_encoding:
            self._image_channel = _channel(context, self._image_topic, Image)

    def add(self, frame: RingFrame) -> None:
        array = frame.array
        taken = time.time_ns()
        fields = Frame(
            seq=frame.seq,
            timestamp_ns=frame.timestamp_ns,
            shape=array.shape,
            dtype=array.dtype.str,
            meta=frame.meta,
            dropped=frame.dropped,
            image_topic=self._image_topic,
        ).SerializeToString()
        if self._image_channel is not None:
            self._frames_channel.log(fields, log_time=taken)
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
            self._image_channel.log(pixels, log_time=taken)
        else:
            message = with_bytes_field(fields, FRAME_DATA_FIELD, array)
            self._frames_channel.log(message, log_time=taken)
        self._output.check()
        self.frames += 1
        self.dropped += frame.dropped

    def finish(self, ended: str) -> None:
        self._mcap.write_metadata(
            END_METADATA,
            {"frames": str(self.frames), "dropped": str(self.dropped), "ended": ended},
        )
        self._mcap.close()
        self._output.check()

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._mcap.close()  # a no-op once finished


def _channel(context: Context, topic: str, message_class: Any) -> Channel:
    """A channel of protobuf messages of `message_class`, its schema stored in the file."""
    schema = Schema(
        name=message_class.DESCRIPTOR.full_name,
        encoding=PROTOBUF,
        data=build_file_descriptor_set(message_class).SerializeToString(),
    )
    return Channel(topic, message_encoding=PROTOBUF, schema=schema, context=context)


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
                with _Recorder(output, recorded, compression, chunk_size) as recorder:
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
                bytes=output.size(),
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
