"""A camera pipeline over shmring rings: `python -m shmring.demo_camera --help`.

Capture, edge detection, a worker group of two histogram processes, an MP4 recorder and a
display (a window, or a PNG contact sheet when headless), each its own process, supervised
by the command. It needs OpenCV (`pip install 'shmring[demo]'`); the library itself never
imports this package.
"""

from ._supervisor import main

__all__ = ["main"]
