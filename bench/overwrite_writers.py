# `python -m bench.overwrite_writers`: several writer processes on one overwrite ring (the
# latest-frame ring that two cameras, or a pool of workers, feed), flat out, with a reader
# that takes the newest frame; against one writer on the same ring, same run.
#
# Why: with several writers an overwrite ring is sequenced (docs/FORMAT.md, "Writers"): no
# header lock per frame. This shows what that gives and what the writers cost each other.
# The supervisor wiring: the parent creates the ring, writer and reader processes attach.
# Every frame the reader takes is checked: its writer's tag at both ends (a torn frame would
# mix two) and each writer's numbers increasing.
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import numpy as np

import shmring
from bench.frames import FrameSize, make_source, parse_size

SLOTS = 8
RECEIVE_TIMEOUT = 60.0  # start-up, or the end of a run, of a child process
TAG = np.dtype("<u8")


def writer(
    name: str, size: FrameSize, writer_id: int, go: Event, stop: Event, conn: Connection
) -> None:
    parent = os.getppid()
    frame = make_source(size).copy()  # every page touched: a zeroed one reads for free
    words = frame.reshape(-1).view(TAG)
    with shmring.RingWriter.attach(name) as ring:
        conn.send("ready")
        go.wait()
        count, cpu = 0, time.process_time()
        while not stop.is_set() and os.getppid() == parent:  # (orphaned: stop)
            for _ in range(64):
                words[0] = words[-1] = writer_id << 40 | count
                ring.write(frame)
                count += 1
        conn.send((count, time.process_time() - cpu))


def reader(name: str, writers: int, go: Event, stop: Event, conn: Connection) -> None:
    last = [-1] * writers
    with shmring.RingReader.attach(name) as ring:
        conn.send("ready")
        go.wait()
        taken, parent = 0, os.getppid()
        while not stop.is_set() and os.getppid() == parent:
            try:
                frame = ring.latest(0.05)
            except shmring.RingTimeout:
                continue
            except shmring.EndOfStream:  # the writers saw `stop` first and closed
                break
            with frame:
                words = frame.array.reshape(-1).view(TAG)
                first, final = int(words[0]), int(words[-1])
            if first != final:
                raise AssertionError(f"torn frame: {first:#x} and {final:#x}")
            writer_id, n = first >> 40, first & (1 << 40) - 1
            if n <= last[writer_id]:
                raise AssertionError(f"writer {writer_id}: frame {n} after {last[writer_id]}")
            last[writer_id] = n
            taken += 1
        conn.send(taken)


def receive(pipe: Connection) -> Any:
    """The next message from a child, within RECEIVE_TIMEOUT."""
    if not pipe.poll(RECEIVE_TIMEOUT):
        raise TimeoutError(f"no message from a child within {RECEIVE_TIMEOUT} s")
    return pipe.recv()


def run(size: FrameSize, writers: int, seconds: float) -> tuple[float, float, float]:
    """(frames/s written by all writers, writer CPU in cores, frames/s the reader took)."""
    ctx = mp.get_context("spawn")
    name = f"bench-ow-{os.getpid()}-{writers}"
    go, stop = ctx.Event(), ctx.Event()
    with shmring.RingWriter.create(name, size.shape, np.uint8, policy="overwrite", slots=SLOTS):
        pipes, procs = [], []
        for index in range(writers + 1):
            ours, theirs = ctx.Pipe()
            target, args = (
                (writer, (name, size, index, go, stop, theirs))
                if index < writers
                else (reader, (name, writers, go, stop, theirs))
            )
            procs.append(ctx.Process(target=target, args=args))
            procs[-1].start()
            theirs.close()  # a child that dies closes the pipe: recv() then raises
            pipes.append(ours)
        for pipe in pipes:
            if receive(pipe) != "ready":
                raise RuntimeError("a process did not start")
        go.set()
        time.sleep(seconds)  # the measurement window
        stop.set()
        results = [receive(pipe) for pipe in pipes]
        for proc in procs:
            proc.join(30)
    written = sum(count for count, _ in results[:writers])
    cpu = sum(used for _, used in results[:writers])
    return written / seconds, cpu / seconds, results[-1] / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["64", "64KiB", "640x480x3"])
    parser.add_argument("--writers", type=int, default=2, help="the several writers' count")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternated")
    args = parser.parse_args(argv)
    print(
        f"overwrite ring, {SLOTS} slots, parent creates; a latest() reader; "
        f"{args.seconds:g} s a run, median of {args.repeats}"
    )
    print(f"{'frame':>12} {'writers':>7} {'written/s':>11} {'writer CPU':>10} {'taken/s':>9}")
    for size in args.sizes:
        frame_size = parse_size(size)
        if frame_size.nbytes % TAG.itemsize:
            parser.error(f"{size}: frames here are whole 8-byte words")
        runs: dict[int, list[tuple[float, float, float]]] = {1: [], args.writers: []}
        for _ in range(args.repeats):
            for count in runs:
                runs[count].append(run(frame_size, count, args.seconds))
        medians = {
            count: [statistics.median(column) for column in zip(*results, strict=True)]
            for count, results in runs.items()
        }
        for count, (written, cpu, taken) in medians.items():
            print(f"{size:>12} {count:>7} {written:>11,.0f} {cpu:>10.2f} {taken:>9,.0f}")
        ratio = medians[args.writers][0] / medians[1][0]
        print(f"{size:>12} {args.writers} writers ÷ 1: {ratio:.2f}x")


if __name__ == "__main__":
    main()
