# Overwrite write() and latest() at small frames: what pins cost (issue 16, item 4).
#
#   python -m bench.pins [--baseline PYTHON] [--rounds N] [--frames N]
#
# Rules: one process per measurement (`python -c`), with this checkout's shmring or, with
# --baseline, the interpreter of another checkout (say, main's .venv/bin/python) — the two
# interleaved round by round, so that both see the same machine load. Each measurement is
# in-process and pinned to nothing: a writer with one reader attached to its overwrite ring
# (the writer scans that reader's pins whenever it takes a buffer), best of 5 loops of
# `--frames` calls.
# Cells:
#   block write      RingWriter.write, block ring, no reader (the baseline for overwrite)
#   overwrite write  RingWriter.write, overwrite ring, the reader holding nothing
#   overwrite write, 4 held   the same while the reader holds 4 frames (pin line in use)
#   write + latest   one write() then `with r.latest(0)` per frame, overwrite ring
# The table prints µs per call (median over rounds) and the ratios: overwrite ÷ block write
# in the same process, and, with --baseline, this checkout ÷ the baseline per cell.
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

MEASURE = r"""
import json, sys, time
import numpy as np
import shmring
frames, size, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
frame = np.zeros(size, np.uint8)

def best(step, loops=5):
    times = []
    for _ in range(loops):
        start = time.perf_counter_ns()
        for _ in range(frames):
            step()
        times.append((time.perf_counter_ns() - start) / frames / 1000)
    return min(times)

out = {}
with shmring.RingWriter.create(name + "b", (size,), np.uint8, slots=8) as w:
    w.write(frame)
    out["block write"] = best(lambda: w.write(frame))
with shmring.RingWriter.create(name + "o", (size,), np.uint8, slots=8, policy="overwrite") as w, \
        shmring.RingReader.attach(name + "o") as r:
    w.write(frame)
    out["overwrite write"] = best(lambda: w.write(frame))
    held = []
    try:
        for _ in range(4):
            w.write(frame)
            held.append(r.read(0))
        out["overwrite write, 4 held"] = best(lambda: w.write(frame))
    except shmring.ShmringError:  # a build whose overwrite readers hold one frame at a time
        out["overwrite write, 4 held"] = None
    for f in held:
        f.release()
    def latest_step():
        w.write(frame)
        with r.latest(0):
            pass
    out["write + latest"] = best(latest_step)
print(json.dumps(out))
"""

CELLS = ("block write", "overwrite write", "overwrite write, 4 held", "write + latest")


def measure(python: str, frames: int, size: int, tag: str) -> dict[str, float | None]:
    """One process's figures (µs per call) for each cell."""
    name = f"benchpins{tag}"
    done = subprocess.run(
        [python, "-c", MEASURE, str(frames), str(size), name],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    figures: dict[str, float | None] = json.loads(done.stdout)
    return figures


def _median(values: list[float | None]) -> float | None:
    """None if a build could not measure the cell."""
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _text(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pins", description=__doc__)
    parser.add_argument("--baseline", help="the python of another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per build")
    parser.add_argument("--frames", type=int, default=20000, help="calls per timed loop")
    parser.add_argument("--size", type=int, default=64, help="frame bytes")
    args = parser.parse_args(argv)
    builds = {"this": sys.executable}
    if args.baseline:
        builds["baseline"] = args.baseline
    runs: dict[str, list[dict[str, float | None]]] = {build: [] for build in builds}
    for round_ in range(args.rounds):  # interleaved: this, baseline, this, baseline, ...
        for build, python in builds.items():
            runs[build].append(measure(python, args.frames, args.size, f"{round_}{build}"))
    median = {
        build: {cell: _median([run[cell] for run in results]) for cell in CELLS}
        for build, results in runs.items()
    }
    header = f"| cell ({args.size} B) | this µs | ÷ block write |"
    rule = "|---|---:|---:|"
    if args.baseline:
        header += " baseline µs | this ÷ baseline |"
        rule += "---:|---:|"
    print(header)
    print(rule)
    for cell in CELLS:
        this, block = median["this"][cell], median["this"]["block write"]
        line = f"| {cell} | {_text(this)} | {_text(_ratio(this, block), 2)} |"
        if args.baseline:
            base = median["baseline"][cell]
            line += f" {_text(base)} | {_text(_ratio(this, base), 2)} |"
        print(line)
    print(
        f"\n(medians of {args.rounds} rounds per build, each the best of 5 loops of "
        f"{args.frames} calls; lower µs is faster)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
