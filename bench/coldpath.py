# `python -m bench.coldpath`: what one call costs right after the process slept, against the
# same call back to back.
#
# Why: in the paced latency phase the writer and the reader sleep ~1 ms between frames, and on
# this class of VM a CPU that went idle runs the next few microseconds of code many times
# slower (caches and clocks). A blocked reader's wake-up latency therefore depends on how much
# code runs between the writer's stamp and its FUTEX_WAKE, not on the kernel alone. This probe
# measures that effect for shmring's write() and two references, in one process on one CPU.
# Figures are medians; nothing here is a pass/fail target.
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from shmring import RingWriter

SLEEP_S = 0.001  # the pacing of the latency phase


def cold_us(call: Callable[[], object], samples: int) -> float:
    """Median µs of one call made right after a SLEEP_S sleep."""
    times = []
    for _ in range(samples):
        time.sleep(SLEEP_S)
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return sorted(times)[len(times) // 2] / 1000


def warm_us(call: Callable[[], object], samples: int) -> float:
    """Mean µs of one call made back to back."""
    start = time.perf_counter_ns()
    for _ in range(samples):
        call()
    return (time.perf_counter_ns() - start) / samples / 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=400, help="cold calls per row")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    frame = np.zeros(64, np.uint8)
    target = np.zeros(64, np.uint8)
    with RingWriter.create(f"coldpath{os.getpid()}", frame.shape, frame.dtype) as writer:
        rows: list[tuple[str, Callable[[], object]]] = [
            ("RingWriter.write(), 64 B, no reader", lambda: writer.write(frame)),
            ("numpy copy of 64 B (target[...] = frame)", lambda: target.__setitem__(..., frame)),
            ("an empty Python call", lambda: None),
        ]
        print(f"one call after a {SLEEP_S * 1e3:g} ms sleep (median of {args.samples})")
        for label, call in rows:
            cold = cold_us(call, args.samples)
            warm = warm_us(call, 10 * args.samples)
            print(f"  {label:42s} {cold:7.2f} µs cold  {warm:6.2f} µs back to back")


if __name__ == "__main__":
    main()
