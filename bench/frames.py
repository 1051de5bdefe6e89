# Frame format and frame sizes shared by every cell.
#
# Theory: a frame is a C-contiguous uint8 ndarray of the cell's shape. Bytes 0-7 hold the
# sequence number, bytes 8-15 the producer's time.monotonic_ns() (CLOCK_MONOTONIC, shared by all
# processes) taken just before the send, and the last 8 bytes repeat the sequence number. A
# consumer therefore detects gaps, duplicates and torn frames (head != tail) from the frame alone,
# and computes one-way latency as its own monotonic_ns() minus the stamp. The rest of the frame is
# a fixed non-zero pattern, so pages are real and copies move real bytes.
# The sequence number PHASE_END (2**64 - 1) in head and tail ends a phase; it is a full-size frame
# sent through the same path as the others. With several producers (fan-in), producer i numbers
# its frames from i << WRITER_SHIFT, so a consumer tells the streams apart and checks each one's
# order; a single producer's numbers are plain 0, 1, 2, ...
from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

Frame = NDArray[np.uint8]

PHASE_END = 2**64 - 1
STAMP_BYTES = 24  # head (seq, ns) + tail (seq): the smallest possible frame

WRITER_SHIFT = 48
SEQ_MASK = (1 << WRITER_SHIFT) - 1

HEAD = struct.Struct("<QQ")
TAIL = struct.Struct("<Q")

DEFAULT_SIZES = ("64", "4096", "65536", "640x480x3", "1920x1080x3")


@dataclass(frozen=True)
class FrameSize:
    """A frame shape (uint8) and the label used in tables."""

    label: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape)

    @property
    def tail_offset(self) -> int:
        return self.nbytes - TAIL.size


def _byte_label(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20}


def parse_size(token: str) -> FrameSize:
    """`64`, `64KiB`, `1 MiB` (bytes, 1-d; as the tables label them) or `WxHxC` / `WxH` (an
    image: shape (H, W, C) / (H, W))."""
    text = token.strip().lower().replace("×", "x")
    plain = re.fullmatch(r"(\d+) ?(b|kib|mib)?", text)
    if plain:
        nbytes = int(plain[1]) * _UNITS[plain[2] or ""]
        size = FrameSize(_byte_label(nbytes), (nbytes,))
    elif re.fullmatch(r"\d+x\d+(x\d+)?", text):
        dims = [int(d) for d in text.split("x")]
        width, height, *channels = dims
        size = FrameSize("×".join(str(d) for d in dims), (height, width, *channels))
    else:
        raise ValueError(f"bad frame size {token!r}: use bytes (4096, 64KiB) or WxHxC (640x480x3)")
    if size.nbytes < STAMP_BYTES:
        raise ValueError(f"frame size {token!r} is below the {STAMP_BYTES}-byte stamp")
    return size


def stamp_size() -> FrameSize:
    """The bare stamp, for the kernel wake-floor cells."""
    return FrameSize(f"{STAMP_BYTES} B stamp", (STAMP_BYTES,))


def make_source(size: FrameSize) -> Frame:
    """A frame filled with a fixed non-zero pattern (every page touched)."""
    flat = (np.arange(size.nbytes, dtype=np.uint32) % 251 + 1).astype(np.uint8)
    return flat.reshape(size.shape)


def stamper(size: FrameSize) -> Callable[[Any, int, int], None]:
    """stamp(buffer, seq, t_ns): write head and tail into any writable C-contiguous buffer."""
    pack_head = HEAD.pack_into
    pack_tail = TAIL.pack_into
    tail = size.tail_offset

    def stamp(buf: Any, seq: int, t_ns: int) -> None:
        pack_head(buf, 0, seq, t_ns)
        pack_tail(buf, tail, seq)

    return stamp


def read_head(buf: Any) -> int:
    """The sequence number in a frame's head."""
    seq: int = HEAD.unpack_from(buf)[0]
    return seq
