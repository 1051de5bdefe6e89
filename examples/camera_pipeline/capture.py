"""Capture: decode camera frames straight into the shared-memory ring "camera".

    python capture.py [--source 0] [--size 640x480] [--fps 30] [--seconds N] [--ring camera]

--source is a camera index, a device path, a video file, an RTSP/HTTP URL, or "synthetic";
a source that does not open is replaced by a synthetic test pattern. Readers attach by
name, before or after this starts. Ctrl-C closes the ring: readers get what was published,
then EndOfStream.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import cv2
import numpy as np

from shmring import RingWriter


class SourceEnded(Exception):
    """Raised inside a claim, so that slot is abandoned: readers never see it."""


class SourceChangedSize(Exception):
    """Raised inside a claim: the camera's frame no longer fits the ring's shape."""


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480)."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def open_camera(source: str, size: tuple[int, int]) -> cv2.VideoCapture | None:
    """An opened cv2.VideoCapture, or None when the source does not open."""
    if source == "synthetic":
        return None
    camera = cv2.VideoCapture(int(source) if source.isdigit() else source)
    camera.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])  # a request: the first frame decides
    camera.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
    if camera.isOpened():
        return camera
    print(f"source {source!r} did not open; using the synthetic pattern")
    return None


def draw_pattern(out: np.ndarray, number: int) -> None:
    """A test pattern drawn straight into `out`: a ball moving across bars, and a counter."""
    height, width = out.shape[:2]
    for index in range(8):
        shade = (index * 32, 255 - index * 32, (index * 80) % 256)
        left, right = index * width // 8, (index + 1) * width // 8
        cv2.rectangle(out, (left, 0), (right, height), shade, cv2.FILLED)
    x = (number * 4) % width
    cv2.circle(out, (x, height // 2), max(4, height // 10), (255, 255, 255), cv2.FILLED)
    cv2.putText(out, f"frame {number}", (8, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default="0")
    parser.add_argument("--size", type=parse_size, default=(640, 480), metavar="WxH")
    parser.add_argument("--fps", type=float, default=30.0, help="pace of files and the pattern")
    parser.add_argument("--seconds", type=float, help="stop after this long")
    parser.add_argument("--ring", default="camera")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the ring is closed and unlinked on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    camera = open_camera(args.source, args.size)
    if camera is not None:
        ok, first = camera.read()
        if not ok:
            sys.exit(f"source {args.source!r} opened but gave no frame")
        live = args.source.isdigit() or "://" in args.source or args.source.startswith("/dev/")
    else:
        first = np.empty((args.size[1], args.size[0], 3), np.uint8)
        draw_pattern(first, 0)
        live = False
    period = 1 / args.fps if args.fps > 0 and not live else 0.0
    height, width = first.shape[:2]
    count = 0
    # The first frame's shape is the ring's geometry; the ring is unlinked when it closes.
    with RingWriter.create(args.ring, first.shape, first.dtype, slots=8) as ring:
        ring.write(first)  # the only copy: this frame was read before the ring existed
        count = 1
        print(f"capturing {args.source} ({width}x{height}) into ring {args.ring!r}")
        started = reported = time.monotonic()
        try:
            while args.seconds is None or time.monotonic() - started < args.seconds:
                if period:  # files and the pattern would otherwise go as fast as readers allow
                    time.sleep(max(0.0, started + count * period - time.monotonic()))
                with ring.claim() as slot:  # a buffer inside shared memory: decode into it
                    if camera is None:
                        draw_pattern(slot, count)
                    else:
                        ok, image = camera.read(image=slot)
                        if not ok:
                            raise SourceEnded
                        if not np.shares_memory(image, slot):  # another size: OpenCV made
                            raise SourceChangedSize(image.shape)  # a new array (abandoned)
                count += 1
                if time.monotonic() - reported >= 1:
                    reported = time.monotonic()
                    print(f"{count} frames, {count / (reported - started):.1f} fps")
        except SourceEnded:
            print("the source ended")
        except SourceChangedSize as changed:
            print(f"the source changed its frame size to {changed.args[0]}: restart capture")
        except KeyboardInterrupt:
            print("interrupted")
        finally:
            if camera is not None:
                camera.release()
    print(f"captured {count} frames; ring {args.ring!r} closed")


if __name__ == "__main__":
    main()
