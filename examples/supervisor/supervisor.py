"""The supervisor wiring: the parent creates the ring, a child writes, a child reads.

This is the shape of the textbook `multiprocessing.shared_memory` program and of most launch
scripts. The parent owns the ring (it unlinks it when its `with` block ends) but never writes,
so it costs the writer nothing: the writer child publishes on the lock-free fast path, and the
stream ends when the writer child closes, not when the parent does.

    python examples/supervisor/supervisor.py --frames 10000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os

import numpy as np

import shmring

SHAPE = (64,)


def produce(name: str, frames: int) -> None:
    with shmring.RingWriter.attach(name, timeout=10.0) as writer:
        writer.wait_for_readers(1, timeout=10.0)  # frames before the first reader are not kept
        frame = np.zeros(SHAPE, np.uint64)
        for n in range(frames):
            frame[:] = n
            writer.write(frame)
            if n == frames // 2:  # mid-stream: the parent's handle is not a writer
                info = shmring.inspect_ring(name)
                print(f"writer: {len(info.writers)} writer(s), mode {info.writer_mode}")
    # Closing the only writer ends the stream: the reader drains it, then its loop ends.


def consume(name: str, frames: int) -> None:
    expected = 0
    with shmring.RingReader.attach(name, timeout=10.0, start="oldest") as reader:
        for frame in reader:
            if not (frame.array == expected).all():
                raise SystemExit(f"frame {frame.seq}: got {frame.array[0]}, expected {expected}")
            expected += 1
    if expected != frames:
        raise SystemExit(f"got {expected} frames of {frames}")
    print(f"reader: {expected} frames verified, in order")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--name", default=f"supervisor-{os.getpid()}")
    args = parser.parse_args()
    spawn = mp.get_context("spawn")
    with shmring.RingWriter.create(args.name, SHAPE, np.uint64) as ring:
        reader = spawn.Process(target=consume, args=(ring.name, args.frames))
        writer = spawn.Process(target=produce, args=(ring.name, args.frames))
        reader.start()
        writer.start()
        writer.join()
        reader.join()  # ends by itself: the writer child's close() ended the stream
    if writer.exitcode or reader.exitcode:
        raise SystemExit(f"writer exit code {writer.exitcode}, reader {reader.exitcode}")
    print("supervisor: done")


if __name__ == "__main__":
    main()
