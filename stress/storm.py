# Attach storm: `python -m stress.storm [--readers 16] [--seconds 3]`.
#
# A writer process streams 64-byte counter frames flat out into a block ring while a steady
# reader checks every one, and `--readers` processes attach a reader, read one frame and
# close, in a loop. Every join quiesces the lock-free writer under the header lock (FORMAT.md,
# "Joining and leaving", step 7), so this measures what joining costs everyone else: the
# writer's frames/s, joins/s and the slowest attach + read + close. Exits 1 if the steady
# reader saw a frame lost, duplicated or out of order.

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from multiprocessing.queues import Queue
from typing import Any

import numpy as np

from shmring import EndOfStream, RingReader, RingTimeout, RingWriter

_FRAME = (8,)
_WAIT = 30.0


def _writer(name: str, seconds: float, results: Queue[Any]) -> None:
    with RingWriter.attach(name, timeout=_WAIT) as writer:
        frame = np.zeros(_FRAME, np.uint64)
        end = time.monotonic() + seconds
        count = 0
        while time.monotonic() < end:
            frame[0] = count
            try:
                writer.write(frame, timeout=0.01)  # short: keep looking at the clock
            except RingTimeout:
                continue
            count += 1
    results.put(("writer", count))


def _steady(name: str, results: Queue[Any]) -> None:
    broken = 0
    expected = 0
    with RingReader.attach(name, timeout=_WAIT, start="oldest") as reader:
        results.put(("attached",))
        try:
            for frame in reader:
                broken += int(frame.array[0]) != expected
                expected += 1
        except EndOfStream:
            pass
    results.put(("steady", expected, broken))


def _churn(name: str, seconds: float, results: Queue[Any]) -> None:
    worst = 0.0
    joins = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        with RingReader.attach(name, timeout=_WAIT) as reader:
            reader.read(_WAIT).release()
        worst = max(worst, time.monotonic() - started)
        joins += 1
    results.put(("churn", joins, worst))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.storm", description=__doc__)
    parser.add_argument("--readers", type=int, default=16, help="churning reader processes")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    results: Queue[Any] = ctx.Queue()
    name = f"storm-{time.monotonic_ns()}"
    with RingWriter.create(
        name, _FRAME, np.uint64, slots=64, max_readers=args.readers + 2
    ) as _owner:
        steady = ctx.Process(target=_steady, args=(name, results))
        steady.start()
        results.get(timeout=_WAIT)  # the steady reader is there before the first frame
        processes = [ctx.Process(target=_writer, args=(name, args.seconds, results))]
        processes += [
            ctx.Process(target=_churn, args=(name, args.seconds, results))
            for _ in range(args.readers)
        ]
        for process in processes:
            process.start()
        reports = [results.get(timeout=args.seconds + 120) for _ in range(len(processes) + 1)]
        for process in [steady, *processes]:
            process.join(_WAIT)
    written = next(r[1] for r in reports if r[0] == "writer")
    _, seen, broken = next(r for r in reports if r[0] == "steady")
    churns = [r for r in reports if r[0] == "churn"]
    joins = sum(r[1] for r in churns)
    print(
        f"{args.readers} readers churning for {args.seconds:g} s: writer "
        f"{written / args.seconds:,.0f} frames/s; {joins / args.seconds:,.0f} joins/s "
        f"(attach, read, close); slowest {max(r[2] for r in churns) * 1e3:.1f} ms; "
        f"steady reader {seen:,} frames, {broken} out of order"
    )
    return 0 if broken == 0 and seen == written else 1


if __name__ == "__main__":
    sys.exit(main())
