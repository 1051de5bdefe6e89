"""Process: edge detection on the frames of ring "camera", into ring "camera-edges".

    python process.py [--input camera] [--output camera-edges] [--group NAME]

Without --group, this process sees every frame (fan-out: every other reader of "camera" sees
them too). Processes started with the same --group share the frames instead, each frame going
to exactly one of them, and all of them write into the same output ring.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import cv2
import numpy as np

from shmring import RingExists, RingReader, RingWriter, WriterGone


def draw_edges(source: np.ndarray, out: np.ndarray, gray: np.ndarray, edges: np.ndarray) -> None:
    """The frame dimmed, with its Canny edges in green, drawn straight into `out`."""
    cv2.cvtColor(source, cv2.COLOR_BGR2GRAY, dst=gray)
    cv2.Canny(gray, 60, 180, edges=edges)
    cv2.convertScaleAbs(source, dst=out, alpha=0.5)
    np.maximum(out[..., 1], edges, out=out[..., 1])


def open_output(name: str, shape: tuple[int, ...]) -> RingWriter:
    try:
        # overwrite: the display wants the freshest frame and must never hold us back.
        return RingWriter.create(
            name, shape, np.uint8, slots=12, policy="overwrite", max_readers=4, max_writers=4
        )
    except RingExists:
        return RingWriter.attach(name)  # another worker of the group created it


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", default="camera")
    parser.add_argument("--output", default="camera-edges")
    parser.add_argument("--group", help="share the input's frames with processes of this group")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    print(f"waiting for ring {args.input!r} (start capture.py)")
    count = 0
    with RingReader.attach(args.input, group=args.group, timeout=60) as frames:
        gray = np.empty(frames.shape[:2], np.uint8)
        edges = np.empty_like(gray)
        with open_output(args.output, frames.shape) as output:
            print(f"edges of {args.input!r} -> {args.output!r}, group {args.group}")
            started = time.monotonic()
            try:
                for frame in frames:  # read-only views into shared memory; no copies
                    # Passing the capture timestamp on lets the display measure end to end.
                    with output.claim(timestamp_ns=frame.timestamp_ns) as slot:
                        draw_edges(frame.array, slot, gray, edges)
                    count += 1
                print("end of stream: the capture closed its ring")
            except WriterGone:
                print("the capture process died")
            except KeyboardInterrupt:
                print("interrupted")
    fps = count / max(time.monotonic() - started, 1e-9)
    print(f"processed {count} frames ({fps:.1f} fps); ring {args.output!r} closed")


if __name__ == "__main__":
    main()
