# `python -m bench.create_huge_pages`: what `RingWriter.create` costs with each `huge_pages=`
# choice, against reserving the same memory alone (posix_fallocate of a nameless /dev/shm
# file), and what a reader's attach costs after it.
#
# Why: moving a ring's buffers onto huge pages (MADV_COLLAPSE) copies them, milliseconds per
# MiB, so the default ("auto") asks only for rings of at most 128 MiB of buffers. Each figure
# is the median of --runs creations in this process; a ring is closed (unlinked) before the
# next. Nothing here is a pass/fail target; docs/OPERATIONS.md ("Huge pages") quotes a run.
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from shmring import RingReader, RingWriter

RINGS: list[tuple[str, tuple[int, ...], int]] = [
    ("1 GiB: 8 x 128 MiB (8192x16384)", (8192, 16384), 8),
    ("128 MiB: 8 x 16 MiB (4096x4096)", (4096, 4096), 8),
    ("50 MB: 8 x 1920x1080x3", (1080, 1920, 3), 8),
]
CHOICES: list[bool | str] = [False, "auto", True]


def median_s(step: Callable[[], float], runs: int) -> float:
    return statistics.median(step() for _ in range(runs))


def fallocate_s(size: int) -> float:
    start = time.perf_counter()
    fd = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def create_s(shape: tuple[int, ...], slots: int, choice: bool | str, attach: list[float]) -> float:
    """Seconds to create the ring; appends the seconds a reader's attach took to `attach`."""
    name = f"benchhp{os.getpid()}"
    start = time.perf_counter()
    writer = RingWriter.create(name, shape, np.uint8, slots=slots, huge_pages=choice)  # type: ignore[arg-type]
    took = time.perf_counter() - start
    try:
        start = time.perf_counter()
        RingReader.attach(name).close()
        attach.append(time.perf_counter() - start)
    finally:
        writer.close()
    return took


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="creations per figure (median)")
    args = parser.parse_args(argv)
    print(f"RingWriter.create, uint8 rings, median of {args.runs} (seconds; attach: a reader)")
    header = ["ring", "fallocate alone"]
    for choice in CHOICES:
        header += [f"huge_pages={choice!r}", "attach"]
    header += ["auto / fallocate", "True / False"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, shape, slots in RINGS:
        size = int(np.prod(shape)) * slots
        alone = median_s(lambda: fallocate_s(size), args.runs)  # noqa: B023 (called at once)
        cells = [label, f"{alone:.3f}"]
        created: dict[str, float] = {}
        for choice in CHOICES:
            attach: list[float] = []
            created[repr(choice)] = median_s(
                lambda: create_s(shape, slots, choice, attach),  # noqa: B023 (called at once)
                args.runs,
            )
            cells += [f"{created[repr(choice)]:.3f}", f"{statistics.median(attach):.3f}"]
        cells += [
            f"{created[repr('auto')] / alone:.1f}x",
            f"{created['True'] / created['False']:.1f}x",
        ]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
