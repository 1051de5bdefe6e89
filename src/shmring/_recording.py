# The public API of recordings: record a ring into an MCAP file, replay one into a ring, read
# one; and what the recording and replaying sides share.
#
# Rules:
#   - This module imports without the optional packages of `shmring[record]` (foxglove-sdk,
#     mcap, its protobuf support, the Foxglove schemas, tqdm), so that `import shmring`
#     never needs them. The work is done by _record.py (ring -> file) and _replay.py (file -> ring),
#     imported on first use; a missing package raises RecordExtraMissing, which says what
#     to install.
#   - Ctrl-C (SIGINT) and SIGTERM stop a recording or a replay between two frames, never in
#     the middle of writing one: while one runs in the main thread, those signals only set
#     a flag (StopRequest) that the loop checks between frames and every STOP_POLL seconds
#     while it waits. The recording is then finished (index and footer written) and the
#     ring closed as after any other stop.
#   - Every wait (for a frame, for readers, for room in a ring, for a frame's due time) is
#     cut into slices of at most STOP_POLL seconds, so a stop request is seen promptly and
#     every wait honours its timeout.
#   - A wait held up by a stopped participant (ParticipantStalled: it holds the ring's header
#     lock) goes on as any wait, but is logged once per stall (logger "shmring.record" or
#     "shmring.replay"), so a recording that stands still says why.

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import ParticipantStalled, RecordExtraMissing
from ._timing import is_number

if TYPE_CHECKING:
    from ._replay import Recording

STOP_POLL = 0.1  # seconds: the longest a stop request waits to be seen
OPTIONAL_PACKAGES = (
    "foxglove",
    "mcap",
    "mcap_protobuf",
    "foxglove_schemas_protobuf",
    "google",
    "tqdm",
)
COMPRESSIONS = ("none", "zstd", "lz4")
COLORS = ("rgb8", "bgr8")  # the RawImage encoding of H×W×3 uint8 frames


@dataclass(frozen=True)
class RecordedRing:
    """The geometry and policy of the ring a recording was made from (its MCAP metadata)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    policy: str
    slots: int
    max_readers: int
    max_writers: int
    meta_size: int
    image_encoding: str  # foxglove.RawImage encoding of its frames, "" if not image-shaped


@dataclass(frozen=True)
class RecordedFrame:
    """One frame read back from a recording."""

    seq: int  # its sequence number in the recorded ring
    timestamp_ns: int  # its timestamp in the recorded ring (Frame.timestamp_ns)
    log_time_ns: int  # when the recorder took it (time.time_ns())
    dropped: int  # frames the recorder lost just before this one (overwrite rings)
    meta: bytes
    array: np.ndarray  # read-only


@dataclass(frozen=True)
class RecordResult:
    path: str
    frames: int
    bytes: int  # size of the finished file
    seconds: float
    dropped: int  # frames the recorder lost (overwrite rings only)
    ended: str  # "frame limit", "time limit", "end of stream", "writer gone", "stop request"


@dataclass(frozen=True)
class ReplayResult:
    frames: int  # frames written, over every pass
    seconds: float
    passes: int  # complete passes through the recording
    ended: str  # "end of recording" or "stop request"


def extra_missing(exc: ImportError) -> RecordExtraMissing | None:
    """The error to raise for `exc` if it is a missing optional package, else None."""
    if (exc.name or "").split(".")[0] not in OPTIONAL_PACKAGES:
        return None
    return RecordExtraMissing(
        f"recording and replay need the optional packages of shmring's `record` extra "
        f"({exc.name} is missing): pip install 'shmring[record]'"
    )


def record(
    ring: str,
    path: str,
    *,
    frames: int | None = None,
    seconds: float | None = None,
    compression: str = "none",
    start: str = "latest",
    group: str | None = None,
    color: str = "rgb8",
    timeout: float | None = 0.0,
    chunk_size: int = 1 << 20,
    crc: bool = False,
    progress: bool = False,
) -> RecordResult:
    """Record ring `ring` into the MCAP file `path` until `frames` frames, `seconds`
    seconds, the end of the stream, the death of every writer, or Ctrl-C/SIGTERM.

    Attaches as a reader (its own group unless `group`), starting at `start`, waiting up to
    `timeout` s for the ring to appear. `compression`: "none", "zstd" or "lz4" per chunk
    of about `chunk_size` bytes; `crc`: give each chunk a CRC of its bytes, to detect
    damage at rest (a pass over every byte: slower). `color`: how H×W×3 uint8 frames are
    shown ("rgb8" or "bgr8"). `progress`: show frames, MB, rate and elapsed time on stderr
    if it is a terminal. The file is finished (indexed) whatever ends the recording, except
    a full disk (RecordingDiskFull) or the recorder's death."""
    try:
        from ._record import record_ring
    except ImportError as exc:
        raise extra_missing(exc) or exc from exc
    return record_ring(
        ring,
        path,
        frames=frames,
        seconds=seconds,
        compression=compression,
        start=start,
        group=group,
        color=color,
        timeout=timeout,
        chunk_size=chunk_size,
        crc=crc,
        progress=progress,
    )


def replay(
    path: str,
    ring: str,
    *,
    speed: float | None = 1.0,
    loop: bool = False,
    wait_readers: int = 0,
    slots: int | None = None,
    policy: str | None = None,
    timeout: float | None = None,
    recover: bool = False,
    progress: bool = False,
) -> ReplayResult:
    """Write the frames of recording `path` into ring `ring`, with their original
    timestamps (as `timestamp_ns`), sequence order, shapes and metadata.

    Creates the ring with the recorded geometry (`slots`/`policy` override the recorded
    ones), or attaches to an existing one of the same shape, dtype and at least the same
    meta_size (else IncompatibleRing). `speed`: frames keep their original spacing
    divided by `speed`; None writes them back to back. `loop`: start over at the end,
    until Ctrl-C/SIGTERM. `wait_readers`: start once that many readers are attached.
    `timeout`: how long to wait for those readers, and for room for each frame under the
    block policy (None: as long as it takes). `recover`: read a truncated recording
    (RecordingTruncated otherwise) up to its last complete chunk. `progress`: a bar with
    ETA on stderr if it is a terminal. The ring is closed at the end (readers drain it,
    then get EndOfStream; a ring created here is removed)."""
    try:
        from ._replay import replay_file
    except ImportError as exc:
        raise extra_missing(exc) or exc from exc
    return replay_file(
        path,
        ring,
        speed=speed,
        loop=loop,
        wait_readers=wait_readers,
        slots=slots,
        policy=policy,
        timeout=timeout,
        recover=recover,
        progress=progress,
    )


def read_recording(path: str, *, recover: bool = False) -> Recording:
    """Open recording `path`: `.ring` (RecordedRing), `.frame_count` (None if truncated),
    `.frames()` (RecordedFrame, in recorded order). Use it as a context manager.
    `recover`: read a truncated file up to its last complete chunk."""
    try:
        from ._replay import Recording
    except ImportError as exc:
        raise extra_missing(exc) or exc from exc
    return Recording(path, recover=recover)


def positive_number(value: object, what: str, unit: str) -> float:
    """`value`, a finite number above 0 (of `unit`s); TypeError or ValueError naming `what`."""
    if not is_number(value):
        raise TypeError(f"{what} must be a number of {unit}, got {value!r}")
    if not 0 < value < math.inf:  # (NaN fails too)
        raise ValueError(f"{what} must be a positive number of {unit}, got {value}")
    return float(value)


def choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return value


class StallNotice:
    """Logs a ParticipantStalled once per stall: again only after a step went through or
    waited for another reason (no frame, no room)."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self.stalled: ParticipantStalled | None = None

    def stall(self, stalled: ParticipantStalled) -> None:
        if self.stalled is None:
            self._log.warning("%s; waiting for it", stalled)
        self.stalled = stalled

    def clear(self) -> None:
        self.stalled = None


class StopRequest:
    """Turns SIGINT and SIGTERM into a flag while a recording or replay runs (main thread
    only; elsewhere those signals do not reach the loop anyway)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._saved: list[Any] = []

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._saved = [signal.signal(sig, self._handle) for sig in self.SIGNALS]
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in zip(self.SIGNALS, self._saved, strict=False):
            signal.signal(sig, handler)
