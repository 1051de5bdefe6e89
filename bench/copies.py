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
# --copiers N: N processes copy at once, each pinned to a CPU of its own if there are enough,
# into the buffers of one segment, copier i into buffers i, i+N, ... of each row's buffers
# (the ring's two writers of the fan-in topology, 8 buffers in turn: 4 each); a row prints
# all copiers' frames/s together, then each copier's.
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import subprocess
import time
from multiprocessing import shared_memory
from multiprocessing.synchronize import Barrier

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


STARTUP_LIMIT = 60.0  # seconds a copier may take to start and report beyond its copying


def _copier(
    index: int,
    name: str,
    size_text: str,
    stride: int,
    copiers: int,
    count: int,
    seconds: float,
    cpu: int | None,
    start: Barrier,
    results: mp.Queue[tuple[int, float]],
) -> None:
    """Copier `index` of `copiers`: copy into buffers index, index + copiers, ... of the
    first `count` of segment `name` once `start` opens; report (index, frames/s)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    size = parse_size(size_text)
    flat = np.memmap(f"/dev/shm/{name}", np.uint8, "r+")
    buffers = [
        flat[i * stride : i * stride + size.nbytes].reshape(size.shape)
        for i in range(index, count, copiers)
    ]
    source = make_source(size)
    start.wait(STARTUP_LIMIT)
    results.put((index, copies_per_second(source, buffers, seconds)))


def _rates_together(
    name: str, size_text: str, stride: int, count: int, copiers: int, seconds: float
) -> list[float]:
    """Frames/s of each of `copiers` processes copying at once into `count` buffers."""
    cpus = sorted(os.sched_getaffinity(0))
    spawn = mp.get_context("spawn")
    start, results = spawn.Barrier(copiers), spawn.Queue()
    processes = [
        spawn.Process(
            target=_copier,
            args=(i, name, size_text, stride, copiers, count, seconds),
            kwargs={
                "cpu": cpus[i] if copiers <= len(cpus) else None,
                "start": start,
                "results": results,
            },
        )
        for i in range(copiers)
    ]
    for process in processes:
        process.start()
    try:
        rates = dict(results.get(timeout=seconds + STARTUP_LIMIT) for _ in processes)
    except queue.Empty:
        raise RuntimeError(
            "a copier did not report: exit codes " + str([p.exitcode for p in processes])
        ) from None
    finally:
        for process in processes:
            process.join(STARTUP_LIMIT)
            if process.is_alive():
                process.kill()
    return [rates[i] for i in range(copiers)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1920x1080x3", help="bytes or WxHxC")
    parser.add_argument("--seconds", type=float, default=1.0, help="per row")
    parser.add_argument(
        "--copiers",
        type=int,
        default=1,
        choices=range(1, MOST_BUFFERS + 1),
        metavar="N",
        help=f"processes copying at once (1-{MOST_BUFFERS})",
    )
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity") and args.copiers == 1:
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
        for view in views:
            view[...] = source  # pages touched here, not in the first row's copies
        print(f"glibc x86_non_temporal_threshold: {non_temporal_threshold()}")
        print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}")
        together = f", {args.copiers} processes at once" if args.copiers > 1 else ""
        print(f"{size.label} copies into /dev/shm{together}, frames/s:")
        for count in sorted({min(count * args.copiers, MOST_BUFFERS) for count in BUFFER_COUNTS}):
            label = f"{count} buffers in turn"
            if count == args.copiers:
                label = "the same buffer every time" if count == 1 else "each the same buffer"
            if args.copiers == 1:
                print(
                    f"  {label:27s} {copies_per_second(source, views[:count], args.seconds):10,.0f}"
                )
                continue
            rates = _rates_together(
                segment.name, args.size, stride, count, args.copiers, args.seconds
            )
            each = ", ".join(f"{rate:,.0f}" for rate in rates)
            print(f"  {label:27s} {sum(rates):10,.0f}  ({each})")
        del flat, views  # the segment cannot close while numpy views export its buffer
    finally:
        segment.close()
        segment.unlink()


if __name__ == "__main__":
    main()
