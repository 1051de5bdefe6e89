# The one producer/consumer harness every transport plugs into.
#
# Rules: one run of a cell = fresh processes started with multiprocessing "spawn"
# (`cell.producers` producers, `cell.consumers` consumers), each pinned to its own CPU when there
# are enough CPUs. They meet at a barrier once every end is open, then run the cell's phases in
# order; a phase ends with PHASE_END frames (cell.ends_sent per producer, cell.ends_due per
# consumer) and another barrier, so the next phase starts with nothing queued. A transport that
# may drop any frame (PUB/SUB) gets its PHASE_END re-sent until every consumer has acknowledged
# one (such cells run a single phase, so no stale PHASE_END meets a later one). Every rendezvous
# has a timeout, and the parent kills the processes of a run that passes the cell's deadline
# (reported as failed). The parent always calls the transport's cleanup() and then removes
# anything left in /dev/shm under the cell's token, reporting it as a leak.
# Theory: throughput is counted by the consumer (frames delivered per second after a warm-up);
# latency is the consumer's monotonic_ns() minus the stamp, with frames paced (a gap of at least
# 4x the measured frame time, and >= 1 ms, after each send returns) so they never queue; CPU is
# per process over the same window (see cpu.py).
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Barrier, Semaphore
from pathlib import Path
from typing import Any

import numpy as np

from bench import cpu
from bench.cell import IDLE, LATENCY, LATEST, THROUGHPUT, Cell
from bench.frames import HEAD, PHASE_END, TAIL, WRITER_SHIFT, Frame
from bench.transports import load
from bench.verify import Unpack, Verifier, verifier

PRODUCER = "producer"
CONSUMER = "consumer"
BATCH_BYTES = 64 * 1024  # the producer checks its clock every ~64 KiB of frames
SHM_DIR = Path("/dev/shm")
ERROR_LINE_CHARS = 400  # an exception may carry a whole frame in its message
ERROR_GRACE_S = 2.0  # after a child fails, how long the others may take to report theirs
RESEND_S = 0.001  # a dropping transport's PHASE_END is re-sent this often until acknowledged

Report = dict[str, Any]
Send = Callable[[int, int], None]


# ---- producer phases: (send, next seq, cell, measured frames/s) -> (report, next seq) ----


def _flat_out(send: Send, seq: int, cell: Cell, rate: float | None) -> tuple[Report, int]:
    clock = time.perf_counter
    now = time.monotonic_ns
    batch = max(1, min(256, BATCH_BYTES // cell.size.nbytes))

    def send_until(deadline: float, seq: int) -> int:
        """Send in batches (the clock is read once a batch) until `deadline`; next seq."""
        while clock() < deadline:
            stop = seq + batch
            for s in range(seq, stop):
                send(s, now())
            seq = stop
        return seq

    seq = send_until(clock() + cell.timing.warmup_s, seq)
    start = cpu.snapshot(machine=cell.consumers == 0)
    first = seq
    seq = send_until(start.wall + cell.timing.duration_s, seq)
    end = cpu.snapshot(machine=cell.consumers == 0)
    report = cpu.window(start, end)
    report["frames"] = seq - first
    report["fps"] = report["frames"] / report["wall_s"]
    return report, seq


def _paced(send: Send, seq: int, cell: Cell, rate: float | None) -> tuple[Report, int]:
    t = cell.timing
    clock = time.perf_counter
    now = time.monotonic_ns
    interval = t.min_interval_s if not rate else max(t.min_interval_s, 4.0 / rate)
    frames = max(t.latency_min_frames, round(t.latency_s / interval))
    start = cpu.snapshot()
    cap = start.wall + t.latency_cap_s
    first = seq
    while seq - first < frames and clock() < cap:
        time.sleep(interval)  # a gap after the previous send returned: nothing queues
        send(seq, now())
        seq += 1
    end = cpu.snapshot()
    time.sleep(interval)  # PHASE_END, too, comes after a gap
    report = cpu.window(start, end)
    report.update(frames=seq - first, interval_s=interval)
    return report, seq


def _idle(send: Send, seq: int, cell: Cell, rate: float | None) -> tuple[Report, int]:
    start = cpu.snapshot()
    time.sleep(cell.timing.idle_s)
    end = cpu.snapshot()
    return cpu.window(start, end), seq


PRODUCER_PHASES: dict[str, Callable[[Send, int, Cell, float | None], tuple[Report, int]]] = {
    THROUGHPUT: _flat_out,
    LATENCY: _paced,
    IDLE: _idle,
    LATEST: _flat_out,
}


def _end_phase(send: Send, cell: Cell, acks: Semaphore | None) -> None:
    """Send this producer's PHASE_END frames; with `acks` (a transport that may drop them),
    re-send until every consumer has acknowledged one."""
    for _ in range(cell.ends_sent):
        send(PHASE_END, time.monotonic_ns())
    if acks is None:
        return
    deadline = time.perf_counter() + cell.timing.sync_timeout_s
    for _ in range(cell.consumers):
        while not acks.acquire(timeout=RESEND_S):
            if time.perf_counter() > deadline:
                raise TimeoutError("PHASE_END was not acknowledged by every consumer")
            send(PHASE_END, time.monotonic_ns())


# ---- consumer phases: (frames, tally, cell, read machine CPU?) -> report ----


def _c_flat_out(frames: Iterator[Frame], tally: Verifier, cell: Cell, machine: bool) -> Report:
    if tally.take(frames, until=time.perf_counter() + cell.timing.warmup_s):
        raise RuntimeError("the phase ended during the warm-up: raise --duration")
    start = cpu.snapshot(machine)
    first = tally.delivered
    tally.take(frames)
    end = cpu.snapshot(machine)
    report = cpu.window(start, end)
    report["frames"] = tally.delivered - first  # a PHASE_END carries no data: not counted
    report["fps"] = report["frames"] / report["wall_s"]
    return report


def _percentiles(samples_ns: list[int], prefix: str) -> Report:
    if not samples_ns:
        return {}
    p50, p99 = np.percentile(np.asarray(samples_ns, dtype=np.float64), [50, 99]) / 1e3
    return {
        f"{prefix}_p50_us": float(p50),
        f"{prefix}_p99_us": float(p99),
        f"{prefix}_max_us": max(samples_ns) / 1e3,
    }


def _c_paced(frames: Iterator[Frame], tally: Verifier, cell: Cell, machine: bool) -> Report:
    latencies: list[int] = []
    start = cpu.snapshot(machine)
    tally.take(frames, latencies=latencies)
    end = cpu.snapshot(machine)
    report = cpu.window(start, end)
    report["frames"] = len(latencies)
    report.update(_percentiles(latencies, "latency"))
    return report


def _c_idle(frames: Iterator[Frame], tally: Verifier, cell: Cell, machine: bool) -> Report:
    start = cpu.snapshot(machine)
    first = tally.delivered
    tally.take(frames)
    end = cpu.snapshot(machine)
    report = cpu.window(start, end)
    report["frames"] = tally.delivered - first
    return report


def _c_latest(frames: Iterator[Frame], tally: Verifier, cell: Cell, machine: bool) -> Report:
    """A slow reader that only wants the newest frame: it holds each frame for `work_s`, then
    checks the frame did not change under it (an overwrite ring must not reuse a held slot)."""
    unpack_head: Unpack = HEAD.unpack_from
    unpack_tail: Unpack = TAIL.unpack_from
    tail_offset = cell.size.tail_offset
    now = time.monotonic_ns
    work = cell.timing.work_s
    ages: list[int] = []
    last = -1
    torn = dups = 0
    start = cpu.snapshot(machine)
    for frame in frames:
        got = now()
        head, sent = unpack_head(frame)
        if head == PHASE_END:
            break
        time.sleep(work)
        again, _ = unpack_head(frame)
        (tail,) = unpack_tail(frame, tail_offset)
        if again != head or tail != head:
            torn += 1
        if head <= last:
            dups += 1
        last = head
        ages.append(got - sent)
    end = cpu.snapshot(machine)
    tally.torn += torn
    tally.dups += dups
    report = cpu.window(start, end)
    report.update(frames=len(ages), torn=torn, dups=dups)
    report["fps"] = report["frames"] / report["wall_s"]
    report.update(_percentiles(ages, "age"))
    return report


CONSUMER_PHASES: dict[str, Callable[[Iterator[Frame], Verifier, Cell, bool], Report]] = {
    THROUGHPUT: _c_flat_out,
    LATENCY: _c_paced,
    IDLE: _c_idle,
    LATEST: _c_latest,
}


# ---- child processes ----


def _pin(cell: Cell, slot: int) -> None:
    """Pin to one CPU before any thread exists (threads inherit it), when each gets its own."""
    if not cell.pin or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= cell.processes:
        os.sched_setaffinity(0, {cpus[slot]})


def _produce(
    cell: Cell, endpoint: Any, index: int, barrier: Barrier, acks: Semaphore | None
) -> Report:
    producer = load(cell.transport)().open_producer(endpoint, cell)
    try:
        wait = cell.timing.sync_timeout_s
        barrier.wait(wait)  # every end is open
        producer.start(cell.consumers)
        report: Report = {}
        first = seq = index << WRITER_SHIFT
        rate = None
        for phase in cell.phases:
            report[phase], seq = PRODUCER_PHASES[phase](producer.send, seq, cell, rate)
            _end_phase(producer.send, cell, acks)
            rate = report[phase].get("fps", rate)
            barrier.wait(wait)  # every consumer has taken its PHASE_END
        report["sent"] = seq - first
        return report
    finally:
        producer.close()


def _consume(
    cell: Cell, endpoint: Any, index: int, barrier: Barrier, acks: Semaphore | None
) -> Report:
    consumer = load(cell.transport)().open_consumer(endpoint, cell, index)
    try:
        wait = cell.timing.sync_timeout_s
        barrier.wait(wait)
        tally = verifier(cell)
        report: Report = {}
        for phase in cell.phases:
            report[phase] = CONSUMER_PHASES[phase](consumer.frames, tally, cell, index == 0)
            if acks is not None:
                acks.release()
            barrier.wait(wait)
        report.update(tally.report())
        return report
    finally:
        consumer.close()


def child_main(
    role: str,
    index: int,
    cell: Cell,
    endpoint: Any,
    barrier: Barrier,
    acks: Semaphore | None,
    out: Any,
) -> None:
    """Entry point of every child process: run the role, always send one report."""
    _pin(cell, index if role == PRODUCER else cell.producers + index)
    try:
        if role == PRODUCER:
            report = _produce(cell, endpoint, index, barrier, acks)
        else:
            report = _consume(cell, endpoint, index, barrier, acks)
    except BaseException:  # the parent fails the run; the others stop at the broken barrier
        barrier.abort()
        lines = traceback.format_exc(limit=6).splitlines()
        report = {"error": "\n".join(line[:ERROR_LINE_CHARS] for line in lines[-40:])}
    out.put((role, index, report))


# ---- parent ----


def _collect(
    procs: dict[tuple[str, int], Any], out: Any, deadline: float
) -> tuple[dict[tuple[str, int], Report], dict[str, str]]:
    """Every child's report; after the first error, the others' errors for ERROR_GRACE_S."""
    reports: dict[tuple[str, int], Report] = {}
    errors: dict[tuple[str, int], str] = {}
    while len(reports) + len(errors) < len(procs):
        left = deadline - time.perf_counter()
        if left <= 0:
            if not errors:
                errors[("parent", 0)] = "deadline passed: processes killed"
            break
        try:
            role, index, report = out.get(timeout=min(left, 0.25))
        except queue.Empty:
            for key, proc in procs.items():
                if key not in reports and key not in errors and proc.exitcode not in (None, 0):
                    errors[key] = f"died with exit code {proc.exitcode}"
            continue
        if "error" in report:
            errors[(role, index)] = report["error"].strip()
            deadline = min(deadline, time.perf_counter() + ERROR_GRACE_S)
        else:
            reports[(role, index)] = report
    return reports, {f"{role} {index}": text for (role, index), text in errors.items()}


def _reap(procs: dict[tuple[str, int], Any], grace_s: float) -> None:
    for proc in procs.values():
        proc.join(grace_s)
        if proc.is_alive():
            proc.kill()  # only our own children, by pid
            proc.join(5)


def sweep_shm(token: str) -> list[str]:
    """Remove what a run left in /dev/shm under its token; return the names (leaks)."""
    leaked = []
    if SHM_DIR.is_dir():
        for entry in SHM_DIR.iterdir():
            if token in entry.name:
                entry.unlink(missing_ok=True)
                leaked.append(entry.name)
    return sorted(leaked)


def run_once(cell: Cell) -> Report:
    """One run of a cell in fresh processes. Never raises for a failing cell: returns an error."""
    ctx = mp.get_context("spawn")
    transport = load(cell.transport)()
    procs: dict[tuple[str, int], Any] = {}
    reports: dict[tuple[str, int], Report] = {}
    errors: dict[str, str] = {}
    out = ctx.Queue()
    started = time.perf_counter()
    try:
        endpoint = transport.prepare(cell, ctx)
        barrier = ctx.Barrier(cell.processes)
        acks = ctx.Semaphore(0) if transport.drops else None
        roles = [(PRODUCER, i) for i in range(cell.producers)]
        roles += [(CONSUMER, i) for i in range(cell.consumers)]
        for role, index in roles:
            procs[(role, index)] = ctx.Process(
                target=child_main,
                args=(role, index, cell, endpoint, barrier, acks, out),
                name=f"bench-{cell.transport}-{role}{index}",
                daemon=True,
            )
        for proc in procs.values():
            proc.start()
        reports, errors = _collect(procs, out, started + cell.deadline_s())
    except Exception:
        errors["parent 0"] = traceback.format_exc(limit=6).strip()
    finally:
        _reap(procs, grace_s=0.0 if errors else 10.0)
        out.close()
        out.cancel_join_thread()
        transport.cleanup()
    leaked = sweep_shm(cell.token)
    return {
        # one line per failing process (its exception), then the full tracebacks
        "error": "; ".join(f"{who}: {text.splitlines()[-1]}" for who, text in errors.items())
        or None,
        "tracebacks": errors,
        "leaked": leaked,
        "elapsed_s": time.perf_counter() - started,
        "producers": [reports.get((PRODUCER, i), {}) for i in range(cell.producers)],
        "consumers": [reports.get((CONSUMER, i), {}) for i in range(cell.consumers)],
    }
