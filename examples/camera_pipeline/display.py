"""Display: always the freshest frame of a ring, in a window; without a screen (or with
--headless), a PNG contact sheet of what the window would have shown.

    python display.py [--ring camera-edges] [--headless] [--out contact-sheet.png]

Frames that arrive faster than they are shown are skipped, and counted as dropped.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import cv2
import numpy as np

from shmring import EndOfStream, RingReader, RingTimeout, WriterGone

QUIT_KEYS = (ord("q"), 27)


def draw_text(image: np.ndarray, text: str) -> None:
    """A white line on a black band at the bottom of `image`."""
    height, width = image.shape[:2]
    cv2.rectangle(image, (0, height - 24), (width, height), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, (6, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255))


class ContactSheet:
    """Six thumbnails (3 by 2) spread evenly over every frame offered. It keeps one frame in
    `stride`; when it holds twelve, it lets every other one go and doubles the stride."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        height, width = shape[:2]
        self.size = (min(width, 320), round(height * min(width, 320) / width))
        self.kept: list[np.ndarray] = []
        self.offered, self.stride = 0, 1

    def offer(self, image: np.ndarray, label: str) -> None:
        if self.offered % self.stride == 0:
            thumb = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
            draw_text(thumb, label)
            self.kept.append(thumb)
            if len(self.kept) == 12:
                self.kept, self.stride = self.kept[::2], self.stride * 2
        self.offered += 1

    def save(self, path: str) -> bool:
        if not self.kept:
            return False
        picks = np.linspace(0, len(self.kept) - 1, min(6, len(self.kept))).round().astype(int)
        cells = [self.kept[i] for i in picks] + [np.zeros_like(self.kept[0])] * (6 - len(picks))
        sheet = cv2.vconcat([cv2.hconcat(cells[:3]), cv2.hconcat(cells[3:])])
        return bool(cv2.imwrite(path, sheet))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ring", default="camera-edges")
    parser.add_argument("--headless", action="store_true")
    parser.add_argument("--out", default="contact-sheet.png", help="contact sheet (headless)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    gui = not args.headless and bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))

    print(f"waiting for ring {args.ring!r}")
    shown = 0
    with RingReader.attach(args.ring, timeout=60) as ring:
        sheet = ContactSheet(ring.shape)
        print(f"showing {args.ring!r} " + ("in a window (q quits)" if gui else "headless"))
        try:
            while True:
                try:
                    # The newest frame (older ones are skipped), released when the block ends.
                    with ring.latest(timeout=1.0) as frame:
                        latency_ms = (time.monotonic_ns() - frame.timestamp_ns) / 1e6
                        label = f"capture->display {latency_ms:.1f} ms  dropped {ring.dropped}"
                        if gui:
                            view = frame.array.copy()  # a read-only view: copy to draw on it
                        else:
                            sheet.offer(frame.array, label)
                except RingTimeout:
                    continue
                shown += 1
                if gui:
                    draw_text(view, label)
                    cv2.imshow(args.ring, view)
                    if cv2.waitKey(1) & 0xFF in QUIT_KEYS:
                        break
        except EndOfStream:
            print("end of stream: the writer closed the ring")
        except WriterGone:
            print("the writer died")
        except KeyboardInterrupt:
            print("interrupted")
        print(f"showed {shown} frames, skipped {ring.dropped}")
    if not gui and sheet.save(args.out):
        print(f"contact sheet: {args.out}")


if __name__ == "__main__":
    main()
