"""A camera pipeline over shmring rings: `python -m shmring.demo_camera --help`.

Capture, edge detection, a worker group of two histogram processes, an MP4 recorder and a
display (a window, or a PNG contact sheet when headless), each its own process, supervised
by the command. It needs OpenCV (`pip install 'shmring[demo]'`); the library itself never
imports this package.
"""

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo (`python -m shmring.demo_camera`); without OpenCV, say what to install."""
    try:
        from ._supervisor import main as run
    except ModuleNotFoundError as exc:
        if exc.name != "cv2":
            raise
        sys.exit("shmring's camera demo needs OpenCV: pip install 'shmring[demo]'")
    return run(argv)
