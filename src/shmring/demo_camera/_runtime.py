# What a camera-demo stage process shares with its supervisor: a stop flag, a private pipe for
# messages, and the meter whose numbers travel over that pipe.
#
# Rules:
# - The stop flag is one int in shared memory, read without a lock: a stage killed at any
#   moment can leave no lock held (a dead holder of a multiprocessing.Lock or Event blocks
#   everyone). It has two levels. FINISH asks capture alone to stop, as if the source had
#   ended, so the others drain and the outputs are complete; ABORT asks every stage to stop
#   waiting. Only the supervisor sets it; a stage that wants the pipeline stopped says so
#   with StopPipeline.
# - Each stage talks to the supervisor over its own Pipe: no lock is shared between stages,
#   and the supervisor learns of a death from the pipe's end and the process sentinel.
# - A stage whose parent died stops as if asked to.
# - Latency is measured from the frame's capture timestamp (CLOCK_MONOTONIC, which every
#   process on the machine shares) to when the stage is done with the frame.

from __future__ import annotations

import ctypes
import os
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext

import numpy as np

from ._transport import WAIT_SLICE_S, StopRequested

REPORT_INTERVAL_S = 0.5
# Overall percentiles cover the most recent frames only, so memory stays bounded.
LATENCY_HISTORY = 100_000
GO = "go"


@dataclass(frozen=True)
class Opened:
    """From capture: the source is open and its first frame read."""

    shape: tuple[int, ...]
    description: str
    fallback_note: str | None


@dataclass(frozen=True)
class Ready:
    """The stage is attached to its inputs and has created its outputs."""


@dataclass(frozen=True)
class StopPipeline:
    """A stage asks the supervisor to stop every stage (e.g. the user closed the window)."""

    reason: str


@dataclass(frozen=True)
class Progress:
    frames: int
    dropped: int
    fps: float  # over the frames since the previous report
    p50_ms: float | None  # over the frames since the previous report
    p99_ms: float | None


@dataclass(frozen=True)
class Finished:
    frames: int
    dropped: int
    fps: float | None
    p50_ms: float | None
    p99_ms: float | None
    reason: str
    outputs: dict[str, str] = field(default_factory=dict)


class StopFlag:
    RUN, FINISH, ABORT = 0, 1, 2

    def __init__(self, ctx: SpawnContext) -> None:
        self._value = ctx.RawValue(ctypes.c_int, self.RUN)

    def raise_to(self, level: int) -> None:
        self._value.value = max(self._value.value, level)

    @property
    def level(self) -> int:
        return int(self._value.value)


class StageRuntime:
    """A stage's view of the run: the stop flag, its pipe, and its meter."""

    def __init__(self, conn: Connection, stop: StopFlag, parent_pid: int) -> None:
        self._conn = conn
        self._stop = stop
        self._parent_pid = parent_pid
        self.meter = Meter(self)
        self.outputs: dict[str, str] = {}

    def stopping(self) -> bool:
        """Stop waiting: the pipeline is aborting, or the supervisor is gone."""
        return self._stop.level >= StopFlag.ABORT or os.getppid() != self._parent_pid

    def finishing(self) -> bool:
        """Capture only: stop capturing and let the rest of the pipeline drain."""
        return self._stop.level >= StopFlag.FINISH or self.stopping()

    def check(self) -> None:
        if self.stopping():
            raise StopRequested

    def send(self, message: object) -> None:
        # If the supervisor is gone, stopping() says so at the stage's next wait.
        with suppress(OSError):
            self._conn.send(message)

    def wait_for_go(self) -> None:
        """Wait for the supervisor's go; its startup deadline (an abort) bounds the wait."""
        while not self._conn.poll(WAIT_SLICE_S):
            self.check()
        message = self._conn.recv()
        assert message == GO, f"unexpected message from the supervisor: {message!r}"


def _percentiles(samples_ns: list[int] | deque[int]) -> tuple[float | None, float | None]:
    if not samples_ns:
        return None, None
    p50, p99 = np.percentile(np.asarray(samples_ns), [50, 99]) / 1e6
    return float(p50), float(p99)


class Meter:
    """Counts frames and drops, times latency, and reports to the supervisor twice a second."""

    def __init__(self, runtime: StageRuntime) -> None:
        self._runtime = runtime
        self.frames = 0
        self.dropped = 0
        self.fps = 0.0  # over the last report interval
        self._latencies_ns: deque[int] = deque(maxlen=LATENCY_HISTORY)
        self._recent_ns: list[int] = []
        self._first_ns: int | None = None
        self._last_ns = 0
        self._interval_start_ns = 0
        self._interval_frames = 0

    def record(self, timestamp_ns: int | None, dropped: int = 0) -> float | None:
        """Count one frame; returns its latency from capture in ms (None: not timed)."""
        now = time.monotonic_ns()
        if self._first_ns is None:  # rates count the gaps after the first frame, not start-up
            self._first_ns = self._interval_start_ns = now
            self._interval_frames = 1
        self.frames += 1
        self.dropped += dropped
        self._last_ns = now
        latency_ms = None
        if timestamp_ns is not None:
            self._latencies_ns.append(now - timestamp_ns)
            self._recent_ns.append(now - timestamp_ns)
            latency_ms = (now - timestamp_ns) / 1e6
        elapsed_ns = now - self._interval_start_ns
        if elapsed_ns >= REPORT_INTERVAL_S * 1e9:
            self.fps = (self.frames - self._interval_frames) * 1e9 / elapsed_ns
            latency = _percentiles(self._recent_ns)
            self._runtime.send(Progress(self.frames, self.dropped, self.fps, *latency))
            self._recent_ns.clear()
            self._interval_start_ns, self._interval_frames = now, self.frames
        return latency_ms

    def finished(self, reason: str, outputs: dict[str, str]) -> Finished:
        span_ns = self._last_ns - (self._first_ns or self._last_ns)
        fps = (self.frames - 1) * 1e9 / span_ns if span_ns else None
        p50, p99 = _percentiles(self._latencies_ns)
        return Finished(self.frames, self.dropped, fps, p50, p99, reason, outputs)
