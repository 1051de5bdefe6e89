# Recording: a reader of a ring writes every frame it gets into an MCAP file (the layout is
# _mcap_format.py's), with the MCAP writer of foxglove-sdk (Foxglove's SDK; its writer is the
# `mcap` Rust crate). The `mcap` Python package only reads recordings (_replay.py): its
# writer copies every frame several times (chunk buffer, record buffer, CRCs), which
# held recording far below the disk's speed (docs/performance.md, "Recording and replay").
#
# Rules:
#   - The recorder is an ordinary reader (its own group unless told otherwise): under the
#     block policy it holds writers back like any reader; under overwrite it can lose frames,
#     and each Frame message says how many it lost just before it.
#   - Each recording has its own foxglove.Context: its channels reach only its own file,
#     never another recording's or a sink of the process's default context.
#   - The SDK's writer streams each chunk straight into the file (one copy of a frame: our
#     bytes into the page cache; building chunks in memory cost a second one) and patches
#     the chunk's header when the recorder ends the chunk (MCAPWriter.flush), once it holds
#     `chunk_size` bytes of messages; the chunk's message indexes follow. Until then the
#     chunk's record length is the SDK's placeholder (all ones), which mcap's reader takes
#     for a record cut short. So a recorder killed at any point leaves every chunk it
#     finished in the file, followed by at most part of one chunk, which mcap's reader
#     does not read (tests/test_record.py).
#   - Chunk CRCs only with `crc`: they cost a pass over every byte (docs/performance.md).
#     A killed recorder's file needs none (record lengths end it); they detect chunks
#     damaged at rest, e.g. by a power loss before the page cache reached the disk.
#   - The SDK opens (creates or truncates) the file itself; the recorder opens it only after
#     a failure. (Opening it first and letting the SDK truncate it again made ext4 write the
#     whole file back when the SDK closed it: its rule for files truncated and rewritten.)
#     It writes nothing on opening (the file's start waits for the first flush), so a failed
#     open is no failed write: it is raised (as an OSError), and leaves what was at the path
#     as it was.
#   - Every failed write raises. flush, write_metadata and close raise it themselves;
#     Channel.log, which writes too, only logs it as a warning of logger
#     "foxglove.log_sink_set" (_WriteFailures catches those and add() raises). The SDK's
#     error does not say why the write failed, so the recorder asks the kernel: it writes a
#     chunk's worth of bytes at the end of the file itself, and raises what that write
#     gets (ENOSPC on a full disk). The file is then cut back to where it ended after the
#     last chunk the recorder finished (`complete`), which drops the chunk being written
#     (whatever the SDK patched into it on closing) and that probe. A file this recording
#     created is removed instead when the disk filled up before any of it was complete; a
#     file that was there before is never removed.
#   - MCAP message fields: the SDK sets publish_time to log_time (when the recorder took the
#     frame) and numbers each channel's messages 1, 2, ... in `sequence`; a frame's own
#     sequence number and timestamp are in its Frame message.
#   - The recording ends, and the file is finished (chunk, index, summary, footer), on
#     `frames`, `seconds`, end of stream, every writer gone, a stop request (Ctrl-C,
#     SIGTERM; _recording.StopRequest), or any error but a failed write, which is the only
#     end that leaves the file unfinished.

from __future__ import annotations

import errno
import logging
import math
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

from foxglove import Channel, Context, Schema, open_mcap
from foxglove.mcap import MCAPCompression, MCAPWriteOptions
from mcap_protobuf.schema import build_file_descriptor_set

from ._errors import (
    EndOfStream,
    ParticipantStalled,
    RecordingDiskFull,
    RingNotFound,
    RingTimeout,
    WriterGone,
)
from ._inspect import inspect_segment
from ._layout import SEQ_LIMIT, positive_int
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
    StallNotice,
    StopRequest,
    choice,
    positive_number,
)
from ._timing import deadline_from

_COMPRESSION = {"none": None, "zstd": MCAPCompression.Zstd, "lz4": MCAPCompression.Lz4}
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
MAX_CHUNK_BYTES = 1 << 30  # chunks are written, and after a failure probed, whole
# A chunk ends after this long even if it holds fewer than chunk_size bytes: what a killed
# recorder loses (the chunk being written) is then at most this much of a slow stream.
CHUNK_SECONDS = 1.0
_SDK_WRITE_LOG = "foxglove.log_sink_set"  # where foxglove-sdk reports a failed Channel.log
_log = logging.getLogger("shmring.record")


class _WriteFailures(logging.Filter):
    """Catches the SDK's warnings of failed Channel.log writes made on this thread (the
    SDK logs them on the thread that called log) and keeps them out of the program's log:
    the recorder raises them instead."""

    def __init__(self) -> None:
        super().__init__()
        self.first = ""
        self._thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.get_ident() != self._thread:
            return True  # another recording's
        self.first = self.first or record.getMessage()
        return False

    @contextmanager
    def watching(self) -> Iterator[_WriteFailures]:
        logger = logging.getLogger(_SDK_WRITE_LOG)
        level = logger.level
        if not logger.isEnabledFor(logging.WARNING):  # the SDK asks before it logs
            logger.setLevel(logging.WARNING)
        logger.addFilter(self)
        try:
            yield self
        finally:
            logger.removeFilter(self)
            logger.setLevel(level)


def _failure(path: str, error: RuntimeError, size: int) -> OSError:
    """The OSError behind the SDK's failed write `error` of `path`: what a write of `size`
    bytes at its end gets (EIO with the SDK's message if it succeeds)."""
    probe = memoryview(bytes(size))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            while probe:
                probe = probe[os.write(fd, probe) :]
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    return OSError(errno.EIO, f"writing {path} failed: {error}")


def _cut(path: str, length: int) -> None:
    """Cut `path` back to `length` bytes, if it is a regular file."""
    if os.path.isfile(path):
        os.truncate(path, length)


class _Recorder:
    """Writes a ring's frames into an MCAP file: metadata, channels, messages, index. Making
    one opens the file; use it as a context manager, and start() it there: leaving it
    finishes the file, unless a write failed."""

    def __init__(
        self,
        path: str,
        ring: RecordedRing,
        compression: str,
        chunk_size: int,
        crc: bool,
        failures: _WriteFailures,
    ) -> None:
        self.ring = ring
        self.frames = 0
        self.dropped = 0
        self._path = path
        self._chunk_size = chunk_size
        self._pending = 0  # bytes of messages in the chunk being written
        self._chunk_ends = math.inf  # when the chunk being written ends, at the latest
        self.complete = 0  # bytes of the file up to the end of the last finished chunk
        self.complete_frames = 0  # frames in the file up to there
        self._failures = failures
        self._context = Context()  # its channels close when it is freed
        self._frames_channel: Channel  # declared by start()
        self._image_topic = image_topic(ring.name) if ring.image_encoding else ""
        self._image_channel: Channel | None = None
        options = MCAPWriteOptions(
            compression=_COMPRESSION[compression],
            chunk_size=None,  # chunks end in add()
            calculate_chunk_crcs=crc,
            calculate_data_section_crc=False,  # a pass over the whole file again
        )
        self.created = not os.path.lexists(path)  # by the open below: only then ours to remove
        self._file: int | None = None  # the file the SDK opened: sizes follow it if moved
        try:
            self._mcap = open_mcap(
                path, allow_overwrite=True, context=self._context, writer_options=options
            )
        except RuntimeError as exc:  # no probe (_writing): it would append to what was there
            raise OSError(errno.EIO, f"opening {path} failed: {exc}") from exc
        except OSError as exc:  # the SDK's names neither the file nor a remedy, nor its errno
            found = re.search(r"\(os error (\d+)\)", str(exc))
            code = exc.errno or (int(found[1]) if found else errno.EIO)
            raise OSError(  # the subclass of that errno (FileNotFoundError, ...)
                code,
                f"cannot record to {path}: {os.strerror(code)}; give a path in an existing "
                "directory you may write to",
            ) from exc
        try:
            # O_PATH: fstat needs no permission to read it (a write-only file)
            self._file = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except BaseException:
            self._close()
            raise

    def start(self) -> None:
        """Write the ring's metadata as the file's first chunk, and declare the channels."""
        with self._writing():
            self._mcap.write_metadata(RING_METADATA, ring_metadata(self.ring))
            self._end_chunk()
        self._frames_channel = _channel(self._context, frames_topic(self.ring.name), Frame)
        if self._image_topic:
            self._image_channel = _channel(self._context, self._image_topic, Image)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Raise a failed write of the SDK's writer as the OSError behind it."""
        try:
            yield
        except RuntimeError as exc:  # the SDK's FoxgloveError
            raise _failure(self._path, exc, self._chunk_size) from exc

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
            self._pending += len(fields) + len(pixels)
        else:
            message = with_bytes_field(fields, FRAME_DATA_FIELD, array)
            self._frames_channel.log(message, log_time=taken)
            self._pending += len(message)
        if self._failures.first:
            raise _failure(self._path, RuntimeError(self._failures.first), self._chunk_size)
        self.frames += 1
        self.dropped += frame.dropped
        if self._pending >= self._chunk_size:
            self._end_chunk()
        elif self._chunk_ends == math.inf:  # the chunk's first frame
            self._chunk_ends = time.monotonic() + CHUNK_SECONDS
        else:
            self.end_chunk_if_due()

    def end_chunk_if_due(self) -> None:
        """End the chunk being written if it holds frames taken CHUNK_SECONDS ago or more."""
        if time.monotonic() >= self._chunk_ends:
            self._end_chunk()

    def _end_chunk(self) -> None:
        """Finish the chunk being written (its header, message indexes) and hand it, with
        everything before it, to the kernel."""
        self._pending, self._chunk_ends = 0, math.inf
        with self._writing():
            self._mcap.flush()
        self.complete = self.size()
        self.complete_frames = self.frames

    def size(self) -> int:
        """Bytes in the file now (0 for a device), wherever it was moved meanwhile."""
        assert self._file is not None
        status = os.fstat(self._file)
        return status.st_size if stat.S_ISREG(status.st_mode) else 0

    def finish(self, ended: str) -> None:
        with self._writing():
            self._mcap.write_metadata(
                END_METADATA,
                {"frames": str(self.frames), "dropped": str(self.dropped), "ended": ended},
            )
            self._mcap.close()

    def _close(self) -> None:
        """Close the SDK's writer, finishing the file (after a failed write it only says
        that again)."""
        with suppress(RuntimeError):
            self._mcap.close()  # a no-op once closed
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()


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
    crc: bool,
    progress: bool,
) -> RecordResult:
    """shmring.record (_recording.py), once the optional packages are imported."""
    choice(compression, COMPRESSIONS, "compression")
    choice(color, COLORS, "color")
    if frames is not None:
        positive_int(frames, "frames", 1, SEQ_LIMIT)
    if seconds is not None:
        seconds = positive_number(seconds, "seconds", "seconds")
    positive_int(chunk_size, "chunk_size", 1, MAX_CHUNK_BYTES)
    deadline_from(timeout)  # checked before anything waits for it
    _check_destination(path)
    began = time.monotonic()
    with StopRequest() as stop:
        attached = _attach(ring, group, start, timeout, stop)
        if attached is None:  # stopped before the ring appeared: nothing recorded, no file
            return RecordResult(path, 0, 0, time.monotonic() - began, 0, "stop request")
        with attached as reader:
            info = inspect_segment(reader._p.segment)  # (its writer may have removed the name)
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
                Progress(progress, frames, "recording") as bar,
                _WriteFailures().watching() as failures,
            ):
                recorder = _Recorder(path, recorded, compression, chunk_size, crc, failures)
                try:
                    with recorder:
                        recorder.start()
                        ended = _take_frames(reader, recorder, frames, seconds, stop, bar)
                        recorder.finish(ended)
                        size = recorder.size()
                except OSError as exc:
                    failure = _write_failed(exc, path, recorder)
                    if failure is exc:
                        raise
                    raise failure from exc
                return RecordResult(
                    path=path,
                    frames=recorder.frames,
                    bytes=size,
                    seconds=time.monotonic() - began,
                    dropped=recorder.dropped,
                    ended=ended,
                )


def _check_destination(path: str) -> None:
    """Refuse a path that exists but cannot take a recording, before the ring is attached:
    the writer finishes each chunk by seeking back into it (a pipe or a terminal fails, after
    a write of the failure probe into it), and opening a FIFO waits for a reader, deaf to
    Ctrl-C and SIGTERM. Files, and devices that seek (/dev/null), may be recorded to."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # (nothing there: the SDK creates the file, or says why it cannot)
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return  # (a directory: the SDK's open says so, _Recorder names it)
    kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
    if kind == "device":
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot record to {path}: {exc.strerror}") from None
        try:
            os.lseek(fd, 0, os.SEEK_CUR)
            return
        except OSError:
            kind = "device that cannot seek (a terminal?)"
        finally:
            os.close(fd)
    raise OSError(
        errno.ESPIPE,
        f"cannot record to {path}: it is a {kind}, not a file, and an MCAP recording is "
        "finished by seeking back into it; give the path of a file (copy it elsewhere "
        "afterwards)",
    )


def _attach(
    ring: str, group: str | None, start: str, timeout: float | None, stop: StopRequest
) -> RingReader | None:
    """RingReader.attach, waiting for the ring up to `timeout` in slices of STOP_POLL, so
    that a stop request ends the wait (None)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = STOP_POLL if deadline is None else deadline - time.monotonic()
        try:
            return RingReader.attach(
                ring, group=group, start=start, timeout=max(min(left, STOP_POLL), 0.0)
            )
        except RingNotFound:
            if stop.requested:
                return None
            if deadline is not None and time.monotonic() >= deadline:
                raise


def _write_failed(exc: OSError, path: str, recorder: _Recorder) -> OSError:
    """What a failed write of the file raises, after cutting the file back to its last
    complete chunk (or removing it, if this recording created it and the disk filled up
    before even its start was complete)."""
    removed = (
        recorder.created
        and not recorder.complete
        and exc.errno in _DISK_FULL
        and os.path.isfile(path)  # (not /dev/full)
    )
    if removed:  # nothing to keep, in a file nobody had before
        os.unlink(path)
    else:
        _cut(path, recorder.complete)
    if exc.errno not in _DISK_FULL:
        return exc
    kept = (
        f"the file was cut back to its last complete chunk "
        f"({recorder.complete_frames} frames) and has no index; read it with "
        "`shmring replay --recover` (recover=True)"
        if recorder.complete
        else "nothing of it was complete" + ("; it was removed" if removed else "")
    )
    return RecordingDiskFull(
        exc.errno,
        f"{'disk full' if exc.errno == errno.ENOSPC else 'disk quota exceeded'} "
        f"writing {path} after {recorder.frames} frames: {kept}; free space "
        "before recording again",
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
    stall = StallNotice(_log)
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
        except ParticipantStalled as stalled:
            stall.stall(stalled)
            recorder.end_chunk_if_due()
            continue
        except RingTimeout:
            stall.clear()
            recorder.end_chunk_if_due()  # a stream that paused: its frames reach the file
            continue
        except EndOfStream:
            return "end of stream"
        except WriterGone:
            return "writer gone"
        stall.clear()
        with frame:
            recorder.add(frame)
            bar.add(1, frame.array.nbytes)
