# `python -m bench.copies`: how fast this machine copies a frame into shared memory, into the
# same buffer every time against buffers taken in turn, and glibc's threshold for copying
# past the cache.
#
# Why: write() copies with numpy, i.e. glibc's memcpy. Below glibc's non-temporal threshold
# the CPU reads every destination line before overwriting it, so a copy into a cache-cold
# buffer costs far more than into the buffer just written; that is why large frames wait
# for the buffer just released (docs/API.md, `spin`). Above the threshold the copy streams
# past the cache and the destination stops mattering. docs/OPERATIONS.md ("Large frames")
# shows how to read this probe's output and what GLIBC_TUNABLES changes. The copies land in
# pages of a /dev/shm segment, as in a ring; one process, one CPU, no reader.
from __future__ import annotations

import argparse
import os
import subprocess
import time
from multiprocessing import shared_memory

import numpy as np

from bench.frames import make_source, parse_size

BUFFER_COUNTS = (1, 2, 8)
MOST_BUFFERS = max(BUFFER_COUNTS)
LOADER = "/lib64/ld-linux-x86-64.so.2"
SEGMENT_PREFIX = "shmring-copies-"  # /dev/shm name; the smoke test checks none is left


def non_temporal_threshold() -> str:
    """glibc's x86_non_temporal_threshold as this process sees it, or why it is unknown."""
    try:
        listing = subprocess.run(
            [LOADER, "--list-tunables"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({LOADER} --list-tunables: {exc})"
    for line in listing.splitlines():
        if "x86_non_temporal_threshold" in line:
            value = line.split(":", 1)[1].split()[0]
            return f"{value} = {int(value, 16) / 2**20:g} MiB"
    return "unknown (not in the loader's tunables)"


def copies_per_second(source: np.ndarray, buffers: list[np.ndarray], seconds: float) -> float:
    """Frames/s copying `source` into `buffers` in turn, after a short warm-up."""
    for buffer in buffers:
        buffer[...] = source
    count = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for buffer in buffers:
            buffer[...] = source
        count += len(buffers)
    return count / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1920x1080x3", help="bytes or WxHxC")
    parser.add_argument("--seconds", type=float, default=1.0, help="per row")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    size = parse_size(args.size)
    source = make_source(size)
    stride = -(-size.nbytes // 4096) * 4096
    segment = shared_memory.SharedMemory(
        f"{SEGMENT_PREFIX}{os.getpid()}", create=True, size=stride * MOST_BUFFERS
    )
    try:
        flat = np.ndarray((stride * MOST_BUFFERS,), np.uint8, segment.buf)
        views = [
            flat[i * stride : i * stride + size.nbytes].reshape(size.shape)
            for i in range(MOST_BUFFERS)
        ]
        print(f"glibc x86_non_temporal_threshold: {non_temporal_threshold()}")
        print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}")
        print(f"{size.label} copies into /dev/shm, frames/s:")
        for count in BUFFER_COUNTS:
            rate = copies_per_second(source, views[:count], args.seconds)
            label = "the same buffer every time" if count == 1 else f"{count} buffers in turn"
            print(f"  {label:27s} {rate:10,.0f}")
        del flat, views  # the segment cannot close while numpy views export its buffer
    finally:
        segment.close()
        segment.unlink()


if __name__ == "__main__":
    main()
