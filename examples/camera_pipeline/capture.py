"""Capture: decode camera frames straight into the shared-memory ring "camera".

    python capture.py [--source 0] [--size 640x480] [--fps 30] [--seconds N] [--ring camera]

--source is a camera index, a device path, a video file, an RTSP/HTTP URL, or "synthetic";
a source that does not open is replaced by the synthetic test pattern. Readers attach by
name, before or after this starts. Ctrl-C closes the ring: readers get what was published,
then EndOfStream.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from shmring import RingWriter
from shmring.demo_camera import open_source, parse_size


class SourceEnded(Exception):
    """Raised inside a claim, so that slot is abandoned: readers never see it."""


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

    opened = open_source(args.source, args.size, args.fps)
    if opened.fallback_note:
        print(opened.fallback_note)
    source, first = opened.source, opened.first_frame
    period = 1 / args.fps if args.fps > 0 and not source.live else 0.0
    height, width = first.shape[:2]
    count = 0
    # The first frame's shape is the ring's geometry; the ring is unlinked when it closes.
    with RingWriter.create(args.ring, first.shape, first.dtype, slots=8) as ring:
        ring.write(first)  # the only copy: this frame was read before the ring existed
        count = 1
        print(f"capturing {source.description} ({width}x{height}) into ring {args.ring!r}")
        started = reported = time.monotonic()
        try:
            while args.seconds is None or time.monotonic() - started < args.seconds:
                if period:  # files and the pattern would otherwise go as fast as readers allow
                    time.sleep(max(0.0, started + count * period - time.monotonic()))
                with ring.claim() as slot:  # a buffer inside shared memory: decode into it
                    if not source.read_into(slot):
                        raise SourceEnded
                count += 1
                if time.monotonic() - reported >= 1:
                    reported = time.monotonic()
                    print(f"{count} frames, {count / (reported - started):.1f} fps")
        except SourceEnded:
            print("the source ended")
        except KeyboardInterrupt:
            print("interrupted")
        finally:
            source.close()
    print(f"captured {count} frames; ring {args.ring!r} closed")


if __name__ == "__main__":
    main()
