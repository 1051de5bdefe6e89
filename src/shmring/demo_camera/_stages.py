# The camera demo's stages: what each process of the pipeline does with its frames.
#
#   capture ──frames──┬──> edges ──processed──> recorder ──preview──> display
#   (block)           └──> stats0 ┐             (MP4)     (overwrite) (window or
#                          stats1 ┴──stats──────^                      contact sheet)
#
# Theory: `frames` fans out: edges and the stats group each see every frame, and the two
# stats workers split theirs. `frames` and `processed` are lossless (block), so the MP4 has
# every frame; `preview` overwrites, so the display always gets the freshest frame and never
# holds the recorder back; `stats` overwrites too: small results, read when the recorder
# gets round to them.
#
# Rules:
# - A stage reads in place and writes into the slot it claimed: capture decodes into the
#   slot, edges draws into its output slot, the recorder composes its overlay in the preview
#   slot and encodes the MP4 from there. The only copies are where a picture changes (edges,
#   overlays, thumbnails) and the first captured frame (read before the ring existed).
# - Every stage attaches its inputs and creates its outputs, then says Ready; capture starts
#   only when every stage is Ready, so lossless consumers see frame 0.
# - A stage returns a one-line reason for ending; stage_main turns exceptions into reasons
#   and exit codes, and reports the stage's counters last.

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType

import cv2
import numpy as np

from shmring import WriterGone

from ._drawing import ContactSheet, draw_edges, draw_histogram, draw_text
from ._runtime import Opened, Ready, StageRuntime, StopFlag, StopPipeline
from ._sources import FrameSource, Image, Metronome, open_source
from ._transport import (
    Channel,
    Received,
    Receiver,
    Sender,
    StopRequested,
    Transport,
)

FRAMES, PROCESSED, STATS, PREVIEW = "frames", "processed", "stats", "preview"
STATS_WORKERS = 2
HIST_BINS = 32
PIPELINE: dict[str, Channel] = {
    FRAMES: Channel(FRAMES, "block", {"edges": 1, "stats": STATS_WORKERS}),
    PROCESSED: Channel(PROCESSED, "block", {"recorder": 1}),
    STATS: Channel(
        STATS,
        "overwrite",
        {"recorder": 1},
        writers=STATS_WORKERS,
        slots=16,
        dtype="float32",
        shape=(HIST_BINS,),
    ),
    PREVIEW: Channel(PREVIEW, "overwrite", {"display": 1}),
}
# (stage name, role, worker index), in start order.
STAGES: tuple[tuple[str, str, int], ...] = (
    ("capture", "capture", 0),
    ("edges", "edges", 0),
    *((f"stats{index}", "stats", index) for index in range(STATS_WORKERS)),
    ("recorder", "recorder", 0),
    ("display", "display", 0),
)
STARTUP_TIMEOUT_S = 30.0  # a camera or a stream URL can take seconds to open
VIDEO_FILE = "pipeline.mp4"
CONTACT_SHEET_FILE = "contact-sheet.png"
# The MP4's nominal rate when frames are not paced (--fps 0).
UNPACED_VIDEO_FPS = 30.0
WINDOW_TITLE = "shmring camera pipeline (q: quit)"


@dataclass(frozen=True)
class PipelineConfig:
    source: str
    size: tuple[int, int]
    fps: float
    seconds: float | None
    frames: int | None
    out_dir: str
    gui: bool
    frame_shape: tuple[int, ...] = ()  # known once capture has read the first frame


@dataclass(frozen=True)
class StageSpec:
    """Everything a stage process gets from the supervisor."""

    name: str
    role: str
    index: int
    config: PipelineConfig
    transport: Transport
    stop: StopFlag
    conn: Connection
    parent_pid: int


class Terminated(BaseException):
    """SIGTERM: unwinds the stage so its rings are closed (and unlinked) on the way out."""


# --- stages --------------------------------------------------------------------------------


class _SourceEnded(Exception):
    """Raised inside a claim so the slot is abandoned, not published."""


def _receive_from(stage: StageRuntime, spec: StageSpec, channel: str, group: str) -> Receiver:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    return spec.transport.receiver(PIPELINE[channel], group, stage, deadline)


def _send_to(
    stage: StageRuntime, spec: StageSpec, channel: str, shape: tuple[int, ...] = ()
) -> Sender:
    return spec.transport.sender(
        PIPELINE[channel], shape or spec.config.frame_shape, spec.index, stage
    )


def run_capture(stage: StageRuntime, spec: StageSpec) -> str:
    config = spec.config
    opened = open_source(config.source, config.size, config.fps)
    try:
        shape = opened.first_frame.shape
        stage.send(Opened(shape, opened.source.description, opened.fallback_note))
        with _send_to(stage, spec, FRAMES, shape) as frames:
            stage.send(Ready())
            stage.wait_for_go()
            return _stream(stage, config, opened.source, opened.first_frame, frames)
    finally:
        opened.source.close()


def _stream(
    stage: StageRuntime,
    config: PipelineConfig,
    source: FrameSource,
    first_frame: Image,
    frames: Sender,
) -> str:
    metronome = Metronome(0 if source.live else config.fps, stage)
    started = time.monotonic()
    pending_first: Image | None = first_frame
    seq = 0
    while True:
        if config.frames is not None and seq >= config.frames:
            return f"--frames {config.frames} reached"
        if config.seconds is not None and time.monotonic() - started >= config.seconds:
            return f"--seconds {config.seconds:g} reached"
        if stage.finishing():
            return "asked to stop"
        metronome.wait()
        try:
            with frames.claim(seq) as slot:
                if pending_first is not None:
                    np.copyto(slot, pending_first)
                    pending_first = None
                elif not source.read_into(slot):
                    raise _SourceEnded
        except _SourceEnded:
            return "the source stopped delivering frames" if source.live else "end of video"
        stage.meter.record(None)
        seq += 1


def run_edges(stage: StageRuntime, spec: StageSpec) -> str:
    gray = np.empty(spec.config.frame_shape[:2], np.uint8)
    edges = np.empty_like(gray)
    with (
        _receive_from(stage, spec, FRAMES, "edges") as frames,
        _send_to(stage, spec, PROCESSED) as processed,
    ):
        stage.send(Ready())
        for frame in frames.frames():
            with processed.claim(frame.seq, frame.timestamp_ns) as slot:
                draw_edges(frame.array, slot, gray, edges)
            stage.meter.record(frame.timestamp_ns, frame.dropped)
    return "end of stream"


def run_stats(stage: StageRuntime, spec: StageSpec) -> str:
    gray = np.empty(spec.config.frame_shape[:2], np.uint8)
    hist_shape = PIPELINE[STATS].shape
    assert hist_shape is not None
    with (
        _receive_from(stage, spec, FRAMES, "stats") as frames,
        _send_to(stage, spec, STATS, hist_shape) as results,
    ):
        stage.send(Ready())
        for frame in frames.frames():
            cv2.cvtColor(frame.array, cv2.COLOR_BGR2GRAY, dst=gray)
            histogram = cv2.calcHist([gray], [0], None, [HIST_BINS], [0, 256]).reshape(-1)
            with results.claim(frame.seq, frame.timestamp_ns) as slot:
                np.divide(histogram, gray.size, out=slot)
            stage.meter.record(frame.timestamp_ns, frame.dropped)
    return "end of stream"


class _HistogramMatcher:
    """Pairs each frame with the stats result for the same seq, or the newest one before it:
    the stats workers run beside edges, so their results arrive early, late or not at all."""

    def __init__(self) -> None:
        self._pending: dict[int, Received] = {}
        self._current: Received | None = None

    def for_frame(self, seq: int, arrived: list[Received]) -> Received | None:
        self._pending.update((result.seq, result) for result in arrived)
        for older in [key for key in self._pending if key <= seq]:
            result = self._pending.pop(older)
            if self._current is None or result.seq > self._current.seq:
                self._current = result
        return self._current


def run_recorder(stage: StageRuntime, spec: StageSpec) -> str:
    config = spec.config
    height, width = config.frame_shape[:2]
    path = os.path.join(config.out_dir, VIDEO_FILE)
    video = cv2.VideoWriter(
        path, cv2.VideoWriter.fourcc(*"mp4v"), config.fps or UNPACED_VIDEO_FPS, (width, height)
    )
    if not video.isOpened():
        raise OSError(f"cannot write {path}")
    stage.outputs["video"] = path
    matcher = _HistogramMatcher()
    try:
        with (
            _receive_from(stage, spec, PROCESSED, "recorder") as processed,
            _receive_from(stage, spec, STATS, "recorder") as stats,
            _send_to(stage, spec, PREVIEW) as preview,
        ):
            stage.send(Ready())
            for frame in processed.frames():
                histogram = matcher.for_frame(frame.seq, stats.poll())
                with preview.claim(frame.seq, frame.timestamp_ns) as slot:
                    np.copyto(slot, frame.array)
                    _annotate_recording(slot, frame, histogram, stage)
                    video.write(slot)
                stage.meter.record(frame.timestamp_ns, frame.dropped)
    finally:
        video.release()
    return "end of stream"


def _annotate_recording(
    image: Image, frame: Received, histogram: Received | None, stage: StageRuntime
) -> None:
    latency_ms = (time.monotonic_ns() - frame.timestamp_ns) / 1e6
    draw_text(
        image,
        [
            f"shmring demo  frame {frame.seq}",
            f"capture->record {latency_ms:.1f} ms  {stage.meter.fps:.1f} fps",
        ],
    )
    if histogram is not None:
        label = f"frame {histogram.seq} by stats{histogram.producer}"
        draw_histogram(image, histogram.array, label)


def run_display(stage: StageRuntime, spec: StageSpec) -> str:
    config = spec.config
    sheet = ContactSheet(config.frame_shape)
    path = os.path.join(config.out_dir, CONTACT_SHEET_FILE)
    try:
        with _receive_from(stage, spec, PREVIEW, "display") as preview:
            stage.send(Ready())
            for frame in preview.freshest():
                latency_ms = stage.meter.record(frame.timestamp_ns, frame.dropped)
                label = (
                    f"capture->display {latency_ms:.1f} ms  {stage.meter.fps:.1f} fps"
                    f"  dropped {stage.meter.dropped}"
                )
                if config.gui and not _show(frame.array, label):
                    stage.send(StopPipeline("the display window was closed"))
                    return "the window was closed"
                sheet.offer(frame.array, label)
    finally:
        if sheet.save(path):
            stage.outputs["contact_sheet"] = path
        if config.gui:
            cv2.destroyAllWindows()
    return "end of stream"


def _show(image: Image, label: str) -> bool:
    """Show the frame with the display's own overlay; False once the user quits."""
    view = image.copy()  # the frame is a read-only view into the ring
    draw_text(view, [label], at_bottom=True)
    cv2.imshow(WINDOW_TITLE, view)
    key = cv2.waitKey(1) & 0xFF
    visible = cv2.getWindowProperty(WINDOW_TITLE, cv2.WND_PROP_VISIBLE) >= 1
    return visible and key not in (ord("q"), 27)


_ROLES: dict[str, Callable[[StageRuntime, StageSpec], str]] = {
    "capture": run_capture,
    "edges": run_edges,
    "stats": run_stats,
    "recorder": run_recorder,
    "display": run_display,
}


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def stage_main(spec: StageSpec) -> None:
    """Entry point of every stage process."""
    # Ctrl-C reaches the whole process group; the supervisor decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_terminated)
    stage = StageRuntime(spec.conn, spec.stop, spec.parent_pid)
    exit_code = 0
    try:
        reason = _ROLES[spec.role](stage, spec)
    except StopRequested:
        reason = "stopped with the pipeline"
    except WriterGone:
        reason = "its input's writer died"
    except Terminated:
        reason, exit_code = "terminated by SIGTERM", 128 + signal.SIGTERM
    except Exception as error:
        traceback.print_exc()
        reason, exit_code = f"crashed: {type(error).__name__}: {error}", 1
    stage.send(stage.meter.finished(reason, stage.outputs))
    sys.exit(exit_code)
