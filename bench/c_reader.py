# `python -m bench.c_reader`: examples/c_reader's shmring-read against shmring's Python
# reader, reading the same writer, in the same run.
#
# Rules: this process is the writer (RingWriter.create, block policy, 8 slots, write() of one
# prepared frame); each reader is its own process, started after the ring exists and joined
# before the first frame (wait_for_readers). A run times the writer from its first write to
# the return of its last: with the block policy it cannot get more than `slots` frames
# ahead of its reader, so frames/s is the reader's pace. The C reader is built with `make`
# into a temporary directory; its output goes to /dev/null. Every reader must exit 0 having
# read every frame, or the run fails. Figures are medians of --runs runs per cell, the runs
# of the readers interleaved.
# Theory: the Python reader (`for frame in reader`) touches no frame byte; shmring-read
# --no-hash does the same work in C, and plain shmring-read also hashes every byte (FNV-1a,
# one byte per multiply: the frame size, not the ring, bounds it at large frames).
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.frames import FrameSize, make_source, parse_size
from shmring import RingWriter

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "c_reader"
SLOTS = 8
JOIN_TIMEOUT = 30.0  # seconds for a reader process to start and join
EXIT_TIMEOUT = 60.0
PYTHON_READER = """
import sys
import shmring
with shmring.RingReader.attach(sys.argv[1], timeout=30) as reader:
    count = int(sys.argv[2])
    for n, frame in enumerate(reader, 1):
        if n == count:
            break
"""

Command = Callable[[str, int], list[str]]


def build(directory: Path) -> Path:
    """Build shmring-read into `directory`; its path."""
    subprocess.run(
        ["make", "-s", "-C", str(EXAMPLE), f"BUILD={directory}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return directory / "shmring-read"


def readers(binary: Path) -> dict[str, Command]:
    """Each reader's command line for (ring name, frame count)."""
    return {
        "python: for frame in reader": lambda name, n: [
            sys.executable,
            "-c",
            PYTHON_READER,
            name,
            str(n),
        ],
        "C: shmring-read --no-hash": lambda name, n: [str(binary), "--no-hash", name, str(n)],
        "C: shmring-read (FNV-1a)": lambda name, n: [str(binary), name, str(n)],
    }


def one_run(size: FrameSize, command: Command, frames: int, tag: str) -> float:
    """Frames/s of one reader process reading `frames` frames of `size`."""
    source = make_source(size)
    name = f"bcr{os.getpid()}_{tag}"
    with RingWriter.create(name, size.shape, np.uint8, slots=SLOTS) as writer:
        reader = subprocess.Popen(
            command(name, frames), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            writer.wait_for_readers(1, JOIN_TIMEOUT)
            start = time.perf_counter()
            for _ in range(frames):
                writer.write(source, EXIT_TIMEOUT)
            elapsed = time.perf_counter() - start
            _, err = reader.communicate(timeout=EXIT_TIMEOUT)
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait(EXIT_TIMEOUT)
    if reader.returncode != 0:
        raise RuntimeError(f"reader {command(name, frames)[0]} exited {reader.returncode}: {err}")
    return frames / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per cell (median)")
    parser.add_argument("--small-frames", type=int, default=50_000, help="frames at 64 B")
    parser.add_argument("--large-frames", type=int, default=1_000, help="frames at 640x480x3")
    args = parser.parse_args(argv)
    cells = [(parse_size("64"), args.small_frames), (parse_size("640x480x3"), args.large_frames)]
    with tempfile.TemporaryDirectory() as directory:
        commands = readers(build(Path(directory)))
        print(
            f"one writer process (RingWriter.write, block, {SLOTS} slots) -> one reader "
            f"process; frames/s, median of {args.runs} runs; {os.cpu_count()} CPUs, load "
            f"average {os.getloadavg()[0]:.2f} at the start"
        )
        print("| size | frames | reader | frames/s | × python |\n|---|---:|---|---:|---:|")
        for size, frames in cells:
            # Runs alternate between the readers, so that a disturbance of this shared
            # machine falls on all of them alike.
            rates: dict[str, list[float]] = {label: [] for label in commands}
            for run in range(args.runs):
                for label, command in commands.items():
                    rates[label].append(one_run(size, command, frames, str(run)))
            baseline = statistics.median(rates[next(iter(commands))])
            for label, measured in rates.items():
                rate = statistics.median(measured)
                print(
                    f"| {size.label} | {frames} | {label} | {rate:,.0f} | {rate / baseline:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
