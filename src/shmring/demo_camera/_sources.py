# Frame sources for the camera demo: anything cv2.VideoCapture opens, or a synthetic pattern.
#
# Rules: a source decodes (or draws) each frame straight into an array the caller supplies —
# a claimed ring slot — so capture makes no copy. Only the first frame is allocated: it is read
# before the ring exists, because its shape is the ring's geometry. A source that does not
# open, or opens but yields no frame, is replaced by the synthetic pattern with a one-line
# note, so the demo behaves the same on a laptop with a webcam and on a server without one.

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from ._transport import WAIT_SLICE_S, Interrupt

SYNTHETIC = "synthetic"

Image = NDArray[np.uint8]

# SMPTE-like bars, BGR.
_BARS = (
    (192, 192, 192),
    (0, 192, 192),
    (192, 192, 0),
    (0, 192, 0),
    (192, 0, 192),
    (0, 0, 192),
    (192, 0, 0),
)


class SourceChanged(Exception):
    """The source started delivering frames of another size than the ring holds."""


class FrameSource(Protocol):
    description: str
    # A live source (camera, stream) delivers frames at its own pace; files and the
    # synthetic pattern are paced by the caller.
    live: bool

    def read_into(self, out: Image) -> bool:
        """Decode the next frame into `out` (same shape as the first frame); False at the end."""

    def close(self) -> None: ...


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480)."""
    width, _, height = text.lower().partition("x")
    size = int(width), int(height)
    if min(size) < 16:
        raise ValueError(f"frame size {text!r} is too small: use WxH, e.g. 640x480")
    return size


class SyntheticSource:
    """A moving, timestamped test pattern, drawn with cv2 calls directly into the target."""

    live = False

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self.description = "the synthetic test pattern"
        self._frame_number = 0

    def read_into(self, out: Image) -> bool:
        draw_test_pattern(out, self._frame_number)
        self._frame_number += 1
        return True

    def close(self) -> None:
        pass


def draw_test_pattern(out: Image, frame_number: int) -> None:
    height, width = out.shape[:2]
    bars_bottom = height * 2 // 3
    for index, color in enumerate(_BARS):
        left = index * width // len(_BARS)
        right = (index + 1) * width // len(_BARS) - 1
        cv2.rectangle(out, (left, 0), (right, bars_bottom), color, cv2.FILLED)
    cv2.rectangle(out, (0, bars_bottom), (width - 1, height - 1), (32, 32, 32), cv2.FILLED)
    # A ball bouncing across the bars and a sweeping clock hand: motion for the edge and
    # histogram stages to react to, and a visible cue when frames stall or jump.
    radius = max(4, height // 10)
    travel = max(1, width - 2 * radius)
    step = (frame_number * max(1, width // 120)) % (2 * travel)
    ball_x = radius + (step if step < travel else 2 * travel - step)
    cv2.circle(out, (ball_x, bars_bottom // 2), radius, (255, 255, 255), cv2.FILLED)
    dial_center = (radius + 4, bars_bottom + (height - bars_bottom) // 2)
    dial_radius = max(3, min(radius, (height - bars_bottom) // 2 - 4))
    angle = frame_number * 2 * np.pi / 60
    hand_end = (
        int(dial_center[0] + dial_radius * np.sin(angle)),
        int(dial_center[1] - dial_radius * np.cos(angle)),
    )
    cv2.circle(out, dial_center, dial_radius, (200, 200, 200), 1, cv2.LINE_AA)
    cv2.line(out, dial_center, hand_end, (0, 255, 255), 2, cv2.LINE_AA)
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    scale = max(0.35, height / 900)
    cv2.putText(
        out,
        f"frame {frame_number}  {stamp}",
        (2 * dial_radius + 16, height - max(6, (height - bars_bottom) // 3)),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        max(1, round(scale * 2)),
        cv2.LINE_AA,
    )


class VideoSource:
    """A cv2.VideoCapture: camera index, device path, video file or stream URL."""

    def __init__(self, capture: cv2.VideoCapture, description: str, live: bool) -> None:
        self._capture = capture
        self.description = description
        self.live = live

    def is_opened(self) -> bool:
        return bool(self._capture.isOpened())

    def read_first(self) -> Image | None:
        ok, frame = self._capture.read()
        if not ok:
            return None
        image = np.asarray(frame)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"{self.description} delivers {image.dtype} frames of shape {image.shape}; "
                "the demo handles 8-bit BGR (OpenCV's default conversion)"
            )
        return image.astype(np.uint8, copy=False)

    def read_into(self, out: Image) -> bool:
        ok, frame = self._capture.read(image=out)
        if not ok:
            return False
        if not np.shares_memory(frame, out):
            # OpenCV reallocates instead of writing into `out` when the size no longer fits.
            raise SourceChanged(
                f"{self.description} changed its frame size to {frame.shape[1]}x{frame.shape[0]}"
                f" (the ring holds {out.shape[1]}x{out.shape[0]})"
            )
        return True

    def close(self) -> None:
        self._capture.release()


@dataclass
class OpenedSource:
    source: FrameSource
    first_frame: Image
    fallback_note: str | None  # one line saying why the requested source is not used


def _open_capture(spec: str, size: tuple[int, int], fps: float) -> VideoSource:
    if spec.isdigit():
        capture, description, live = cv2.VideoCapture(int(spec)), f"camera {spec}", True
    else:
        live = "://" in spec or spec.startswith("/dev/")
        capture, description = cv2.VideoCapture(spec), spec
    if live:
        # Requests only: a camera picks the nearest mode it has; the first frame decides.
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        if fps > 0:
            capture.set(cv2.CAP_PROP_FPS, fps)
    return VideoSource(capture, description, live)


def open_source(spec: str, size: tuple[int, int], fps: float) -> OpenedSource:
    """Open `spec` (a camera index, device path, video file, URL, or 'synthetic')."""
    if spec != SYNTHETIC:
        # OpenCV logs warnings and errors from each backend it tries; our one line says it.
        log_level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            video = _open_capture(spec, size, fps)
            opened = video.is_opened()
            first = video.read_first() if opened else None
        finally:
            cv2.utils.logging.setLogLevel(log_level)
        if first is not None:
            return OpenedSource(video, first, None)
        video.close()
        problem = "gave no frame" if opened else "did not open"
        note = f"source {spec!r} {problem}; using the synthetic {size[0]}x{size[1]} pattern"
    else:
        note = None
    synthetic = SyntheticSource(size)
    first = np.empty((size[1], size[0], 3), np.uint8)
    synthetic.read_into(first)
    return OpenedSource(synthetic, first, note)


class Metronome:
    """Spaces frames 1/fps apart on a fixed schedule (fps 0: no pacing). After a stall it
    restarts the schedule instead of bursting to catch up."""

    def __init__(self, fps: float, interrupt: Interrupt) -> None:
        self._period_s = 1.0 / fps if fps > 0 else 0.0
        self._interrupt = interrupt
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self._period_s:
            return
        now = time.monotonic()
        if now - self._next > self._period_s:
            self._next = now
        # Slept in slices so a shutdown is noticed even at very low frame rates.
        while (left := self._next - time.monotonic()) > 0:
            self._interrupt.check()
            time.sleep(min(left, WAIT_SLICE_S))
        self._next += self._period_s
