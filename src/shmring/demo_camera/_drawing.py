# The camera demo's pictures: edges, text, histograms, and a contact sheet of thumbnails.
#
# Rules: every function draws into an array the caller gives (a claimed ring slot, or a copy
# where a picture is changed), so drawing itself allocates nothing per frame; only the
# contact sheet keeps thumbnails, a bounded number of them.

from __future__ import annotations

import os
import re
import sys

import cv2
import numpy as np
from numpy.typing import NDArray

from ._sources import Image


def display_available() -> bool:
    """A screen to show windows on, and an OpenCV built with a GUI backend."""
    screen = sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    backend = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    return screen and backend is not None and backend.group(1).upper() != "NONE"


def draw_edges(source: Image, out: Image, gray: Image, edges: Image) -> None:
    """The frame dimmed, with its Canny edges in green, drawn straight into `out`."""
    cv2.cvtColor(source, cv2.COLOR_BGR2GRAY, dst=gray)
    cv2.Canny(gray, 60, 180, edges=edges)
    cv2.convertScaleAbs(source, dst=out, alpha=0.5)
    green = out[..., 1]
    np.maximum(green, edges, out=green)


def draw_text(image: Image, lines: list[str], at_bottom: bool = False) -> None:
    """White lines on a black band, sized to the image, at its top or bottom edge."""
    height, width = image.shape[:2]
    scale = max(0.35, height / 800)
    thickness = max(1, round(scale * 1.6))
    line_height = int(32 * scale) + 4
    band = line_height * len(lines) + 6
    top = height - band if at_bottom else 0
    cv2.rectangle(image, (0, top), (width - 1, top + band), (0, 0, 0), cv2.FILLED)
    for number, line in enumerate(lines, start=1):
        origin = (6, top + number * line_height)
        cv2.putText(
            image, line, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness
        )


def draw_histogram(image: Image, histogram: NDArray[np.float32], label: str) -> None:
    """Bars near the bottom-right corner. Square-root scale: camera pictures often put most
    pixels in a few bins, which would flatten every other bar."""
    height, width = image.shape[:2]
    box_width, box_height = width // 4, height // 5
    # Clear of the bottom edge, where the display puts its own line.
    left, bottom = width - box_width - 8, height - height // 8
    cv2.rectangle(image, (left, bottom - box_height), (width - 8, bottom), (0, 0, 0), cv2.FILLED)
    heights = np.sqrt(histogram)
    tallest = float(heights.max()) or 1.0
    bar_width = box_width / len(histogram)
    for index, value in enumerate(heights):
        bar_height = int((box_height - 4) * float(value) / tallest)
        x = left + int(index * bar_width)
        right = x + max(1, int(bar_width) - 1)
        cv2.rectangle(image, (x, bottom - bar_height), (right, bottom), (0, 200, 255), cv2.FILLED)
    scale = max(0.35, height / 1200)
    cv2.putText(
        image,
        label,
        (left + 4, bottom - box_height + int(28 * scale) + 2),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )


class ContactSheet:
    """A grid of thumbnails spread evenly over every frame offered, however many that is.

    Keeps one frame in `stride`; when twice the grid is kept, every other one is let go and
    the stride doubles, so memory stays bounded and the picks stay evenly spaced."""

    def __init__(self, frame_shape: tuple[int, ...], columns: int = 3, rows: int = 2) -> None:
        height, width = frame_shape[:2]
        self.thumb_width = min(width, 320)
        self.thumb_height = round(height * self.thumb_width / width)
        self.columns, self.rows = columns, rows
        self._cells = columns * rows
        self._kept: list[Image] = []
        self._offered = 0
        self._stride = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.rows * self.thumb_height, self.columns * self.thumb_width, 3

    def offer(self, image: Image, label: str) -> None:
        self._offered += 1
        if (self._offered - 1) % self._stride:
            return
        size = (self.thumb_width, self.thumb_height)
        thumb = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.uint8, copy=False)
        draw_text(thumb, [label], at_bottom=True)
        self._kept.append(thumb)
        if len(self._kept) == 2 * self._cells:
            self._kept = self._kept[::2]
            self._stride *= 2

    def save(self, path: str) -> bool:
        if not self._kept:
            return False
        picks = np.linspace(0, len(self._kept) - 1, min(self._cells, len(self._kept)))
        sheet = np.zeros(self.shape, np.uint8)
        for cell, pick in enumerate(np.round(picks).astype(int)):
            row, column = divmod(cell, self.columns)
            top, left = row * self.thumb_height, column * self.thumb_width
            sheet[top : top + self.thumb_height, left : left + self.thumb_width] = self._kept[pick]
        return bool(cv2.imwrite(path, sheet))
