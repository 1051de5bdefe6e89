"""Display: always the freshest frame of a ring, in a window; without a screen (or with
--headless), a PNG contact sheet of what the window would have shown.

    python display.py [--ring camera-edges] [--headless] [--out contact-sheet.png]

Frames that arrive faster than they are shown are skipped, and counted as dropped.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import cv2

from shmring import EndOfStream, RingReader, RingTimeout, WriterGone
from shmring.demo_camera import ContactSheet, display_available, draw_text

QUIT_KEYS = (ord("q"), 27)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ring", default="camera-edges")
    parser.add_argument("--headless", action="store_true")
    parser.add_argument("--out", default="contact-sheet.png", help="contact sheet (headless)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    gui = not args.headless and display_available()

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
                    draw_text(view, [label], at_bottom=True)
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
