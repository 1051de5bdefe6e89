# The asyncio reader against the blocking reader and the asyncio peers, in one run.
#
# Rules: each cell is a fresh producer process and a fresh consumer process (multiprocessing
# "spawn"), meeting at a barrier; every rendezvous has a timeout. The producer writes frames
# flat out for THROUGHPUT_S (then a PHASE_END frame), then LATENCY_FRAMES frames paced at
# least 1 ms (and 4x its own frame time) apart (then PHASE_END), then nothing for IDLE_S, then
# a last PHASE_END; a PHASE_END carries the count of frames sent before it. The consumer
# verifies every frame (sequence in head and tail: no gap, no duplicate, no tear; the counts
# at each PHASE_END: no frame lost just before it) and reports frames/s and its CPU (all
# threads, getrusage) over the flat-out phase, one-way latency p50/p99 over the paced phase
# (its monotonic_ns() minus the producer's stamp) and its CPU over the paced phase (a steady
# stream, 1 kHz up to 640x480x3: "reader cores, paced"), and its CPU while idle.
# Consumers: "blocking" is `for frame in reader`; "async" is `async for frame in reader`
# (the chosen design: the loop takes frames, a published one at once, polls for `spin` while
# they flow, naps in the sleeper thread until a steady stream's next frame is due, and the
# sleeper thread only sleeps), "async-uvloop" the same under uvloop, "async-spin0" the same with
# spin=0 (the sleeper thread at every miss, no polling: the design without polling), and
# "executor-read" `await loop.run_in_executor(None, reader.read)` per frame (a thread takes
# every frame and hands it to the loop: the waiter-thread design). The peers an asyncio user
# would write today: "mp-queue-executor" `await loop.run_in_executor(None, queue.get)` over a
# multiprocessing.Queue(maxsize=8), and "unix-stream" an asyncio StreamReader reading the
# same frames from a Unix socket (readexactly).
# With --repeats N every cell runs N times, the kinds interleaved within each round (so a
# change in the machine's load hits them alike); the tables show each metric's median, and
# the header the load average before and after.
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from itertools import cycle
from typing import Any, cast

import numpy as np

import shmring
from bench import cpu
from bench.frames import HEAD, PHASE_END, TAIL, FrameSize, make_source, parse_size, stamper

SIZES = ("64", "65536", "640x480x3", "1920x1080x3")
SHMRING = ("blocking", "async", "async-uvloop", "async-spin0", "executor-read")
PEERS = ("mp-queue-executor", "unix-stream")
THROUGHPUT_S = 1.5
LATENCY_FRAMES = 300
IDLE_S = 1.0
SYNC_S = 30.0
QUEUE_SIZE = 8


class Tally:
    """The consumer's checks and measurements, fed one frame (any buffer) at a time."""

    def __init__(self, size: FrameSize) -> None:
        self.tail_offset = size.tail_offset
        self.expected = 0
        self.errors = 0
        self.phase = 0
        self.frames = 0
        self.start: cpu.Snapshot | None = None
        self.marks: list[cpu.Snapshot] = []
        self.latencies: list[int] = []

    def add(self, buf: Any) -> bool:
        """Check one frame; True after the last phase ended."""
        received = time.monotonic_ns()
        head, sent = HEAD.unpack_from(buf, 0)
        (tail,) = TAIL.unpack_from(buf, self.tail_offset)
        if head != tail:
            self.errors += 1
        if head == PHASE_END:
            if sent != self.expected:  # frames lost just before the end of a phase
                self.errors += 1
            self.marks.append(cpu.snapshot())
            self.phase += 1
            return self.phase == 3
        if head != self.expected:
            self.errors += 1
        self.expected = head + 1
        if self.phase == 0:
            if self.start is None:
                self.start = cpu.snapshot()
            else:
                self.frames += 1
        elif self.phase == 1:
            self.latencies.append(received - sent)
        return False

    def report(self) -> dict[str, float]:
        assert self.start is not None and len(self.marks) == 3
        flat = cpu.window(self.start, self.marks[0])
        paced = cpu.window(self.marks[0], self.marks[1])
        idle = cpu.window(self.marks[1], self.marks[2])
        lat = sorted(self.latencies)
        return {
            "fps": self.frames / flat["wall_s"],
            "cores": flat["cores"],
            "p50_us": statistics.median(lat) / 1e3,
            "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3,
            "paced_cores": paced["cores"],
            "idle_cores": idle["cores"],
            "errors": float(self.errors),
        }


# ---- producer --------------------------------------------------------------------------


def produce(kind: str, size: FrameSize, endpoint: Any, barrier: Any) -> None:
    stamp = stamper(size)
    sources = [make_source(size) for _ in range(QUEUE_SIZE + 1)]  # see bench.transports.mpqueue
    send: Callable[[Any], object]
    close: Callable[[], object]
    if kind == "mp-queue-executor":
        send, close = endpoint.put, endpoint.close
        barrier.wait(SYNC_S)
    elif kind == "unix-stream":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(endpoint)
        server.listen(1)
        barrier.wait(SYNC_S)
        server.settimeout(SYNC_S)
        conn, _ = server.accept()
        server.close()
        send, close = cast(Callable[[Any], object], conn.sendall), conn.close
    else:
        writer = shmring.RingWriter.create(endpoint, size.shape, np.uint8, slots=QUEUE_SIZE)
        barrier.wait(SYNC_S)
        writer.wait_for_readers(1, SYNC_S)
        send, close = writer.write, writer.close
    source = cycle(sources).__next__
    seq = 0

    def one(number: int) -> None:
        src = source()
        stamp(src, number, time.monotonic_ns())
        send(src)

    def phase_end() -> None:  # it carries the count sent, in place of a send time
        src = source()
        stamp(src, PHASE_END, seq)
        send(src)

    end = time.perf_counter() + THROUGHPUT_S
    while time.perf_counter() < end:
        for _ in range(64):
            one(seq)
            seq += 1
    frame_time = THROUGHPUT_S / seq
    phase_end()
    gap = max(0.001, 4 * frame_time)
    for _ in range(LATENCY_FRAMES):
        time.sleep(gap)  # pacing, so that frames never queue
        one(seq)
        seq += 1
    phase_end()
    time.sleep(IDLE_S)  # the consumer waits meanwhile: its idle CPU
    phase_end()
    barrier.wait(SYNC_S)  # the consumer took everything
    close()


# ---- consumers -------------------------------------------------------------------------


def consume(kind: str, size: FrameSize, endpoint: Any, barrier: Any, results: Any) -> None:
    tally = Tally(size)
    barrier.wait(SYNC_S)
    if kind == "blocking":
        with shmring.RingReader.attach(endpoint, start="oldest", timeout=SYNC_S) as reader:
            for frame in reader:
                if tally.add(frame.array):
                    break
    else:
        run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
        if kind == "async-uvloop":
            import uvloop

            run = uvloop.run
        run(_consume_async(kind, endpoint, size, tally))
    barrier.wait(SYNC_S)
    results.put(tally.report())


async def _consume_async(kind: str, endpoint: Any, size: FrameSize, tally: Tally) -> None:
    async for buf in _async_frames(kind, endpoint, size):
        if tally.add(buf):
            break


async def _async_frames(kind: str, endpoint: Any, size: FrameSize) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    if kind == "mp-queue-executor":
        while True:
            yield await loop.run_in_executor(None, endpoint.get)
    elif kind == "unix-stream":
        stream, writer = await asyncio.open_unix_connection(endpoint)
        try:
            while True:
                yield await stream.readexactly(size.nbytes)
        finally:
            writer.close()
    else:
        spin = 0.0 if kind == "async-spin0" else 50e-6
        reader = await shmring.RingReader.aattach(
            endpoint, start="oldest", timeout=SYNC_S, spin=spin
        )
        with reader:
            if kind == "executor-read":
                while True:
                    with await loop.run_in_executor(None, reader.read, SYNC_S) as frame:
                        yield frame.array
            else:
                async for frame in reader:
                    yield frame.array


# ---- the run ---------------------------------------------------------------------------


def run_cell(kind: str, size: FrameSize) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    endpoint: Any
    if kind == "mp-queue-executor":
        endpoint = ctx.Queue(maxsize=QUEUE_SIZE)
    elif kind == "unix-stream":
        endpoint = os.path.join(tempfile.gettempdir(), f"shmring-bench-{uuid.uuid4().hex[:8]}")
    else:
        endpoint = f"ba{os.getpid()}_{uuid.uuid4().hex[:6]}"
    producer = ctx.Process(target=produce, args=(kind, size, endpoint, barrier))
    consumer = ctx.Process(target=consume, args=(kind, size, endpoint, barrier, results))
    producer.start()
    consumer.start()
    try:
        report: dict[str, float] = results.get(timeout=THROUGHPUT_S + IDLE_S + 60)
    finally:
        for process in (producer, consumer):
            process.join(SYNC_S)
            if process.exitcode is None:
                process.kill()
                process.join()
        if kind == "unix-stream" and os.path.exists(endpoint):
            os.unlink(endpoint)
    return report


def _si(value: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def table(labels: list[str], rows: dict[str, dict[str, dict[str, float]]]) -> Iterator[str]:
    """The markdown tables of a run, then the issue's ratios (async ÷ blocking, ÷ peers)."""
    head = "| {} | " + " | ".join(labels) + " |"
    rule = "|---|" + "---:|" * len(labels)
    metrics: list[tuple[str, Callable[[dict[str, float]], str]]] = [
        ("frames/s", lambda r: _si(r["fps"])),
        ("latency p50/p99 µs", lambda r: f"{r['p50_us']:.0f}/{r['p99_us']:.0f}"),
        ("reader cores, flat out", lambda r: f"{r['cores']:.2f}"),
        ("reader cores, paced", lambda r: f"{100 * r['paced_cores']:.2f}%"),
        ("reader cores, idle", lambda r: f"{100 * r['idle_cores']:.2f}%"),
    ]
    for title, show in metrics:
        yield ""
        yield head.format(title)
        yield rule
        for kind, cells in rows.items():
            yield f"| {kind} | " + " | ".join(show(cells[label]) for label in labels) + " |"
    yield ""
    yield "| ratios | " + " | ".join(labels) + " |"
    yield rule

    def ratio(kind: str, base: Callable[[str], float], metric: str) -> Callable[[str], str]:
        return lambda label: f"{rows[kind][label][metric] / base(label):.2f}×"

    checks = []
    if "async" in rows and "blocking" in rows:
        checks += [
            (
                "async ÷ blocking, frames/s",
                ratio("async", lambda lb: rows["blocking"][lb]["fps"], "fps"),
            ),
            (
                "async ÷ blocking, latency p50",
                ratio("async", lambda lb: rows["blocking"][lb]["p50_us"], "p50_us"),
            ),
            (
                "async ÷ blocking, reader cores paced",
                ratio("async", lambda lb: rows["blocking"][lb]["paced_cores"], "paced_cores"),
            ),
        ]
    if "async" in rows and any(peer in rows for peer in PEERS):
        best_peer = {
            label: max(rows[peer][label]["fps"] for peer in PEERS if peer in rows)
            for label in labels
        }
        checks.append(
            ("async ÷ best asyncio peer, frames/s", ratio("async", best_peer.__getitem__, "fps"))
        )
    for title, show_ratio in checks:
        yield f"| {title} | " + " | ".join(show_ratio(label) for label in labels) + " |"


def measure(
    sizes: list[FrameSize],
    kinds: list[str],
    log: Callable[[str], None] = print,
    repeats: int = 1,
) -> dict[str, dict[str, dict[str, float]]]:
    """Every cell (kind x size), `repeats` times, the kinds interleaved (each round runs every
    kind once per size, so a change in the machine's load hits all of them alike): {kind:
    {size label: the median of each metric over the rounds}}; SystemExit on a bad frame."""
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        kind: {size.label: [] for size in sizes} for kind in kinds
    }
    for round_ in range(repeats):
        for size in sizes:
            for kind in kinds:
                report = run_cell(kind, size)
                if report["errors"]:
                    raise SystemExit(f"{kind} {size.label}: {report['errors']:.0f} bad frames")
                runs[kind][size.label].append(report)
                log(f"# round {round_ + 1} {kind} {size.label}: {report}")
    return {
        kind: {
            label: {key: statistics.median(r[key] for r in reports) for key in reports[0]}
            for label, reports in cells.items()
        }
        for kind, cells in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--kinds", default=",".join(SHMRING + PEERS))
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of every cell, kinds interleaved; the tables show each metric's median",
    )
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    kinds = list(dict.fromkeys(args.kinds.split(",")))
    load_before = os.getloadavg()
    rows = measure(sizes, kinds, lambda line: print(line, flush=True), max(1, args.repeats))
    load_after = os.getloadavg()
    print(
        f"\npython -m bench.async_reader, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"Python {'.'.join(map(str, sys.version_info[:3]))}, {os.cpu_count()} CPUs, "
        f"median of {max(1, args.repeats)} interleaved round(s), load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    for line in table([s.label for s in sizes], rows):
        print(line)


if __name__ == "__main__":
    main()
