# Reading recordings back (Recording) and replaying them into a ring (replay_file), with the
# `mcap` library; the layout is _mcap_format.py's.
#
# Rules:
#   - A file is checked before any frame is written: MCAP's magic (else NotARecording), its
#     footer and summary (else RecordingTruncated, unless `recover`), the "shmring.ring"
#     metadata (else NotARecording), and, when replaying into an existing ring, its shape,
#     dtype and meta_size (else IncompatibleRing).
#   - Frames are read in the order they were written, linearly, by mcap's StreamReader.
#     With `recover`, chunk CRCs are checked and reading stops quietly at the first record
#     that is cut short or fails its check: what remains is every frame of the complete
#     chunks, none torn (a Frame whose image message was lost is not a frame). Without it,
#     damage raises NotARecording.
#   - Every frame read is validated against the recorded geometry (dtype, number of
#     dimensions, sizes, byte count) before it is handed out.
#   - Replay writes each frame with its recorded timestamp_ns and metadata, at its recorded
#     time offset divided by `speed` (None: back to back), measured from the first frame
#     of each pass. Every wait is cut into STOP_POLL slices (see _recording.py).

from __future__ import annotations

import io
import logging
import os
import stat
import struct
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from mcap.exceptions import McapError
from mcap.reader import SeekingReader
from mcap.records import Channel, Header, Message, Metadata
from mcap.stream_reader import StreamReader
from mcap.summary import Summary
from mcap.writer import MCAP0_MAGIC

from ._errors import (
    IncompatibleRing,
    NotARecording,
    ParticipantStalled,
    RecordingTruncated,
    RingTimeout,
)
from ._inspect import inspect_ring
from ._layout import LIMITS, positive_int
from ._mcap_format import (
    RING_METADATA,
    Frame,
    Image,
    frame_bytes,
    frames_topic,
    image_topic,
    ring_from_metadata,
)
from ._progress import Progress
from ._recording import (
    STOP_POLL,
    RecordedFrame,
    RecordedRing,
    ReplayResult,
    StallNotice,
    StopRequest,
    positive_number,
)
from ._segment import file_kind
from ._timing import deadline_from
from ._writer import RingWriter, create_like, created_or_attached

# What mcap, struct and protobuf raise on bytes that are not what they should be.
# OverflowError: a damaged length, read() of more bytes than an index holds.
_DAMAGE = (McapError, ValueError, struct.error, DecodeError, EOFError, OverflowError)
_log = logging.getLogger("shmring.replay")


def _open_recording(path: str) -> io.BufferedReader:
    """`path` opened for reading: a regular file (after symbolic links), never waiting for
    a writer as the open of a FIFO would; NotARecording for anything else."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARecording(f"{path} is {file_kind(mode)}, not a recording (a regular file)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class Recording:
    """An open recording: `ring`, `frame_count`, `frames()`. See read_recording."""

    def __init__(self, path: str, *, recover: bool = False) -> None:
        self.path = path
        self.recover = recover
        self._file = _open_recording(path)
        try:
            head = self._file.read(len(MCAP0_MAGIC))
            if head != MCAP0_MAGIC:
                raise NotARecording(
                    f"{path} is not an MCAP file (it starts with {head!r}); "
                    "give a file made by `shmring record`"
                )
            summary = self._summary()
            self.ring = self._ring()
            self._frames_topic = frames_topic(self.ring.name)
            self._image_topic = image_topic(self.ring.name) if self.ring.image_encoding else ""
            self.frame_count = None if summary is None else self._count(summary)
        except BaseException:
            self._file.close()
            raise

    def _summary(self) -> Summary | None:
        """The file's summary; None if it was cut short and `recover` allows that."""
        try:
            self._file.seek(0)
            summary = SeekingReader(self._file).get_summary()
        except (*_DAMAGE, OSError) as exc:
            if self.recover:
                return None
            raise RecordingTruncated(
                f"{self.path} ends without its index: its recorder was killed or ran out "
                "of disk, or the file was cut short. `shmring replay --recover` "
                "(recover=True) reads the frames of its complete chunks"
            ) from exc
        if summary is None:
            raise NotARecording(f"{self.path} has no summary section: it was not made by shmring")
        return summary

    def _ring(self) -> RecordedRing:
        """The recorded ring's geometry, from the metadata record after the header."""
        self._file.seek(0)
        try:
            for record in StreamReader(self._file, emit_chunks=True).records:
                if isinstance(record, Metadata) and record.name == RING_METADATA:
                    return ring_from_metadata(record.metadata)
                if not isinstance(record, (Header, Metadata)):
                    break
        except (*_DAMAGE, KeyError, TypeError) as exc:
            raise NotARecording(
                f"{self.path}: its first records (the header and the ring's metadata) are cut "
                f"short or damaged ({exc}); no frame of it can be replayed, even with recover"
            ) from exc
        raise NotARecording(
            f"{self.path} is an MCAP file but not a shmring recording (no {RING_METADATA!r} "
            "metadata after its header); give a file made by `shmring record`"
        )

    def _count(self, summary: Summary) -> int | None:
        if summary.statistics is None:
            return None
        counts = summary.statistics.channel_message_counts
        return sum(
            counts.get(channel.id, 0)
            for channel in summary.channels.values()
            if channel.topic == self._frames_topic
        )

    def frames(self) -> Iterator[RecordedFrame]:
        """Every complete frame, in recorded order (a new pass over the file each call)."""
        self._file.seek(0)
        topics: dict[int, str] = {}
        pending: tuple[Any, int] | None = None  # a Frame message waiting for its image
        try:
            for record in StreamReader(self._file, validate_crcs=self.recover).records:
                if isinstance(record, Channel):
                    topics[record.id] = record.topic
                if not isinstance(record, Message):
                    continue
                topic = topics.get(record.channel_id)
                if topic == self._frames_topic:
                    fields = Frame.FromString(record.data)
                    if fields.image_topic:
                        pending = (fields, record.log_time)
                    else:
                        yield self._frame(fields, record.log_time, fields.data)
                elif topic == self._image_topic and pending is not None:
                    fields, log_time = pending
                    pending = None
                    yield self._frame(fields, log_time, Image.FromString(record.data).data)
        except _DAMAGE as exc:
            if not self.recover:
                raise NotARecording(f"{self.path} is damaged: {exc}") from exc

    def _frame(self, fields: Any, log_time: int, data: bytes) -> RecordedFrame:
        ring = self.ring
        shape = tuple(int(size) for size in fields.shape)
        try:
            dtype = np.dtype(fields.dtype)
        except TypeError:
            raise NotARecording(
                f"{self.path}: frame {fields.seq} has dtype {fields.dtype!r}, which NumPy does "
                "not know; the file is damaged"
            ) from None
        if (
            dtype != ring.dtype
            or len(shape) != len(ring.shape)
            or any(size > most for size, most in zip(shape, ring.shape, strict=True))
            or len(data) != frame_bytes(shape, dtype)
        ):
            raise NotARecording(
                f"{self.path}: frame {fields.seq} ({shape} {dtype}, {len(data)} bytes) does "
                f"not fit the recorded ring ({ring.shape} {ring.dtype}); the file is damaged"
            )
        return RecordedFrame(
            seq=int(fields.seq),
            timestamp_ns=int(fields.timestamp_ns),
            log_time_ns=log_time,
            dropped=int(fields.dropped),
            meta=bytes(fields.meta),
            array=np.frombuffer(data, dtype).reshape(shape),
        )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def replay_file(
    path: str,
    ring: str,
    *,
    speed: float | None,
    loop: bool,
    wait_readers: int,
    slots: int | None,
    policy: str | None,
    timeout: float | None,
    recover: bool,
    progress: bool,
) -> ReplayResult:
    """shmring.replay (_recording.py), once the optional packages are imported."""
    if speed is not None:
        speed = positive_number(speed, "speed", "times the recorded pace (or None: back to back)")
    positive_int(wait_readers, "wait_readers", 0, LIMITS["max_readers"][1])
    deadline_from(timeout)  # checked before anything waits for it
    began = time.monotonic()
    with (
        Recording(path, recover=recover) as recording,
        _open_ring(path, ring, recording.ring, slots, policy) as writer,
        StopRequest() as stop,
    ):
        total = None if loop else recording.frame_count
        frames = passes = 0
        complete = _wait_for_readers(writer, wait_readers, timeout, stop)
        with Progress(progress, total, "replaying") as bar:  # (its clock starts here)
            start: float | None = None  # when the pass's first frame is due (None: now)
            while complete:
                written, complete, start = _replay_pass(
                    writer, recording, speed, timeout, stop, bar, start
                )
                frames += written
                passes += complete
                complete = complete and loop and written > 0  # (a loop over no frame ends)
        return ReplayResult(
            frames=frames,
            seconds=time.monotonic() - began,
            passes=passes,
            ended="stop request" if stop.requested else "end of recording",
        )


def _open_ring(
    path: str, name: str, recorded: RecordedRing, slots: int | None, policy: str | None
) -> RingWriter:
    """Create ring `name` with the recorded geometry, or attach to it if it exists."""
    policy = policy or recorded.policy
    if slots is None:
        slots = recorded.slots
        if policy == "overwrite":  # (a block ring of 1 slot replayed as latest frames)
            slots = max(slots, 2)
    return created_or_attached(
        lambda: create_like(name, recorded, slots, policy),
        lambda: _attach_existing(path, name, recorded),
    )


def _attach_existing(path: str, name: str, recorded: RecordedRing) -> RingWriter:
    """Attach to ring `name` as a writer, if its frames are the recording's."""
    what = f"cannot replay {path} into the existing ring {name!r}"
    existing = inspect_ring(name)  # before joining: a writer that left ends it
    meta_size = existing.meta_size
    if meta_size < recorded.meta_size:
        raise IncompatibleRing(
            f"{what}: it keeps {meta_size} bytes of metadata per frame and the recording "
            f"up to {recorded.meta_size}. Replay into another name, or remove that ring"
        )
    try:
        return RingWriter.attach(name, shape=recorded.shape, dtype=recorded.dtype)
    except IncompatibleRing as exc:
        raise IncompatibleRing(
            f"{what}: it holds {tuple(existing.shape)} {existing.dtype} frames and the "
            f"recording {recorded.shape} {recorded.dtype}. Replay into another name, or "
            f"remove that ring (shmring rm {name})"
        ) from exc


def _deadline(timeout: float | None) -> float | None:
    return deadline_from(timeout)


def _slice(deadline: float | None) -> float:
    return STOP_POLL if deadline is None else max(0.0, min(STOP_POLL, deadline - time.monotonic()))


def _wait_for_readers(
    writer: RingWriter, count: int, timeout: float | None, stop: StopRequest
) -> bool:
    """Wait until `count` readers are attached; False if asked to stop first."""
    deadline = _deadline(timeout)
    while count:
        try:
            writer.wait_for_readers(count, _slice(deadline))
            return True
        except RingTimeout:
            if stop.requested:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                raise RingTimeout(
                    f"ring {writer.name!r}: fewer than {count} readers attached after "
                    f"{timeout} s; start them, or wait longer (--timeout)"
                ) from None
    return True


def _replay_pass(
    writer: RingWriter,
    recording: Recording,
    speed: float | None,
    timeout: float | None,
    stop: StopRequest,
    bar: Progress,
    start: float | None,
) -> tuple[int, bool, float | None]:
    """Write every frame once, paced, the first due at `start` (None: now): (frames
    written, False if asked to stop first, when a next pass's first frame is due: the
    recording's mean interval after its last frame, so a loop keeps its pace)."""
    written, due = 0, 0.0
    origin: tuple[float, int] | None = None  # (monotonic time, timestamp) of the first frame
    last = 0  # the last frame's timestamp
    stall = StallNotice(_log)
    for frame in recording.frames():
        if speed is not None:
            if origin is None:
                origin = (time.monotonic() if start is None else start, frame.timestamp_ns)
            due = origin[0] + (frame.timestamp_ns - origin[1]) / 1e9 / speed
            while (left := due - time.monotonic()) > 0 and not stop.requested:
                time.sleep(min(left, STOP_POLL))
        if stop.requested or not _write(writer, frame, timeout, stop, stall):
            return written, False, None
        written += 1
        last = frame.timestamp_ns
        bar.add(1, frame.array.nbytes)
    if speed is None or origin is None or written < 2:  # back to back, or no interval
        return written, True, None
    interval = (last - origin[1]) / 1e9 / speed / (written - 1)
    return written, True, due + max(interval, 0.0)


def _write(
    writer: RingWriter,
    frame: RecordedFrame,
    timeout: float | None,
    stop: StopRequest,
    stall: StallNotice,
) -> bool:
    """Write one frame, waiting up to `timeout` for room; False if asked to stop first."""
    deadline = _deadline(timeout)
    while True:
        try:
            writer.write(
                frame.array, _slice(deadline), timestamp_ns=frame.timestamp_ns, meta=frame.meta
            )
            stall.clear()
            return True
        except RingTimeout as exc:
            if isinstance(exc, ParticipantStalled):
                stall.stall(exc)
            else:
                stall.clear()
            if stop.requested:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                if stall.stalled is not None:
                    raise stall.stalled from None  # its message names the holder
                raise RingTimeout(
                    f"ring {writer.name!r}: no room for the recording's frame {frame.seq} "
                    f"after {timeout} s: its readers do not keep up (`shmring inspect "
                    f"{writer.name}` shows which); wait longer (--timeout) or replay into an "
                    "overwrite ring (--policy overwrite)"
                ) from None
