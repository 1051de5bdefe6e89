# Which cells run, in what order, how often; what a run measured; medians over repeats.
#
# Rules: scenarios are `wake` (kernel wake floor and a blocked shmring reader, 24-byte stamp,
# paced), `limit` (in-process memcpy), `alone` (shmring's write() with no reader process) and
# the topologies of bench/cell.py, each run by every
# transport that lists it: `main` (1 -> 1, the producer creates: throughput then paced latency,
# plus the idle reader at the smallest size), `supervisor` (1 -> 1, the parent creates),
# `latest` (newest frame only), `fanin` (2 -> 1), `groups` (1 -> 2 sharing the work) and
# `fanout` (1 -> 3), throughput only. Within a size, repeats go
# round-robin over the cells so a slow drift on this shared machine spreads over all of them.
# Noise: a run is *disturbed* when other processes used more than `noise_threshold` cores during
# any of its measurement windows; disturbed runs are repeated (up to `max_extra` more runs per
# cell, within `extra_budget_s` for the whole suite) and the cell's figures are medians over its
# undisturbed runs — or over all its runs, flagged `noisy`, when none was undisturbed. The
# rate (frames/s, or the latest-frame writer's) and the CPU beside it come from one run, the
# median one by rate (the lower middle of an even count), so they always belong together. Before
# each run the suite waits for the machine to go quiet (bounded per wait and by a budget for the
# whole suite). A failed run (error, deadline, gap, duplicate, torn frame, leak) fails the
# cell: a failure is a finding, never retried away.
from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from bench import cpu, harness
from bench.cell import (
    ALONE,
    FAN_IN,
    FAN_OUT,
    GROUPS,
    IDLE,
    LATENCY,
    LATEST,
    LATEST_FRAME,
    MAIN,
    SUPERVISOR,
    THROUGHPUT,
    TOPOLOGIES,
    Cell,
    Timing,
)
from bench.frames import FrameSize, stamp_size
from bench.transports import load, skip_reason
from bench.verify import TAKEN, verdict

SCENARIOS = ("wake", MAIN, "limit", ALONE, *TOPOLOGIES[1:])
SHAPES = {  # topology: (producers, consumers)
    MAIN: (1, 1),
    SUPERVISOR: (1, 1),
    LATEST_FRAME: (1, 1),
    FAN_IN: (2, 1),
    GROUPS: (1, 2),
    FAN_OUT: (1, 3),
}


@dataclass(frozen=True)
class Plan:
    sizes: tuple[FrameSize, ...]
    transports: tuple[str, ...]
    scenarios: tuple[str, ...]
    timing: Timing
    repeats: int
    max_extra: int
    noise_threshold: float
    pin: bool
    quiet_budget_s: float  # total time the suite may spend waiting for other load to stop
    extra_budget_s: float  # total time the suite may spend re-running disturbed runs


QUIET_SAMPLE_S = 0.2
QUIET_MAX_WAIT_S = 20.0


@dataclass
class Budget:
    budget_s: float


class Quiet:
    """Before each run, waits until other processes leave the CPUs alone (bounded)."""

    def __init__(self, plan: Plan, log: Callable[[str], None]) -> None:
        self.threshold = plan.noise_threshold
        self.budget_s = plan.quiet_budget_s
        self.log = log

    def wait(self) -> None:
        if self.budget_s <= 0:
            return
        started = time.perf_counter()
        load = cpu.machine_busy_cores(QUIET_SAMPLE_S)
        while load > self.threshold and time.perf_counter() - started < QUIET_MAX_WAIT_S:
            load = cpu.machine_busy_cores(QUIET_SAMPLE_S)
        waited = time.perf_counter() - started
        self.budget_s -= waited
        if waited > 2 * QUIET_SAMPLE_S:
            self.log(f"  (other processes busy: waited {waited:.0f} s, now {load:.2f} cores)")


@dataclass
class CellResult:
    scenario: str
    cell: Cell
    runs: list[dict[str, Any]]

    def as_json(self, plan: Plan) -> dict[str, Any]:
        ok = [r for r in self.runs if r["status"] == "ok"]
        clean = [r for r in ok if not r["disturbed"]]
        failed = [r for r in self.runs if r["status"] == "failed"]
        basis = clean or ok  # undisturbed runs; all runs (flagged noisy) when none was
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "transport": self.cell.transport,
            "kind": load(self.cell.transport).kind,
            "drops": load(self.cell.transport).drops,
            "writes_reach_reader": load(self.cell.transport).writes_reach_reader,
            "copies": load(self.cell.transport).copies,
            "size": self.cell.size.label,
            "shape": list(self.cell.size.shape),
            "nbytes": self.cell.size.nbytes,
            "producers": self.cell.producers,
            "consumers": self.cell.consumers,
            "phases": list(self.cell.phases),
            "status": "failed" if failed else "ok",
            "reason": failed[0]["reason"] if failed else None,
            "runs_total": len(self.runs),
            "runs_clean": len(clean),
            "noisy": not clean,  # its figures are medians over disturbed runs
            "median": _median(basis),
            "runs": self.runs,
        }
        return out


RATES = ("fps", "write_fps")  # a run's rate: the first of these it has
WITH_RATE = ("gbps", "producer_cores", "consumer_cores")  # figures shown beside the rate


def _median(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each figure's median over `runs`, except the rate and WITH_RATE: those of the median
    run by rate."""
    keys = sorted({k for r in runs for k, v in r["metrics"].items() if v is not None})
    out = {
        k: statistics.median(r["metrics"][k] for r in runs if r["metrics"].get(k) is not None)
        for k in keys
    }
    rate = next((k for k in RATES if k in out), None)
    if rate is not None:
        rated = sorted(
            (r["metrics"] for r in runs if r["metrics"].get(rate) is not None),
            key=lambda m: float(m[rate]),
        )
        middle = rated[(len(rated) - 1) // 2]
        for k in (rate, *WITH_RATE):
            if middle.get(k) is not None:
                out[k] = middle[k]
            else:
                out.pop(k, None)  # not measured in the run whose rate is shown
    return out


def _other(machine: dict[str, Any], *windows: dict[str, Any]) -> float | None:
    """Cores used by other processes: the machine's busy cores minus ours, same window."""
    if "machine_cores" not in machine:
        return None
    return float(machine["machine_cores"] - sum(w.get("cores", 0.0) for w in windows))


def assess(cell: Cell, run: dict[str, Any], noise_threshold: float) -> dict[str, Any]:
    """Status, verification and figures of one run (all plain numbers, JSON-ready)."""
    producers, consumers = run["producers"], run["consumers"]
    reason = run["error"]
    counts = {"lost": 0, "dups": 0, "torn": 0, "dropped": 0}
    if reason is None and run["leaked"]:
        reason = f"left in /dev/shm: {', '.join(run['leaked'])}"
    drops = load(cell.transport).drops
    if reason is None:
        reason, counts = verdict(cell, drops, producers, consumers)
    # the bitmaps served the verdict: results.json keeps the counts, not megabytes of bits
    consumers = [{k: v for k, v in c.items() if k != TAKEN} for c in consumers]
    metrics: dict[str, float | None] = {}
    others: list[float] = []
    if reason is None:
        first = consumers[0] if consumers else producers[0]
        for phase in cell.phases:
            prods, windows = [p[phase] for p in producers], [c[phase] for c in consumers]
            other = _other(first[phase], *prods, *windows)
            if other is not None:
                others.append(other)
                metrics[f"{phase}_other_cores"] = other
                metrics[f"{phase}_steal_cores"] = first[phase].get("steal_cores")
            if phase == THROUGHPUT:
                metrics.update(_throughput(cell, prods, windows))
                if drops:
                    sent = sum(p["sent"] for p in producers) * len(consumers)
                    metrics["dropped_pct"] = 100 * counts["dropped"] / max(1, sent)
            elif phase == LATENCY:
                metrics.update(
                    latency_p50_us=windows[0].get("latency_p50_us"),
                    latency_p99_us=windows[0].get("latency_p99_us"),
                    latency_max_us=windows[0].get("latency_max_us"),
                    latency_interval_ms=prods[0]["interval_s"] * 1e3,
                    latency_consumer_cores=windows[0]["cores"],
                )
            elif phase == IDLE:
                metrics["idle_consumer_cores"] = windows[0]["cores"]
            elif phase == LATEST:
                metrics.update(
                    write_fps=prods[0]["fps"],
                    read_fps=windows[0]["fps"],
                    age_p50_us=windows[0].get("age_p50_us"),
                    age_p99_us=windows[0].get("age_p99_us"),
                    producer_cores=prods[0]["cores"],
                    consumer_cores=windows[0]["cores"],
                )
    return {
        "status": "failed" if reason else "ok",
        "reason": reason,
        "disturbed": bool(others) and max(others) > noise_threshold,
        "elapsed_s": run["elapsed_s"],
        "tracebacks": run["tracebacks"],
        "verified_frames": sum(  # lossless phases, then the newest frames a LATEST phase took
            c.get("delivered", 0) + c.get(LATEST, {}).get("frames", 0) for c in consumers
        ),
        **counts,
        "metrics": metrics,
        "producers": producers,
        "consumers": consumers,
    }


def _throughput(
    cell: Cell, prods: list[dict[str, Any]], windows: list[dict[str, Any]]
) -> dict[str, float | None]:
    """frames/s: per consumer (the slowest one) — for groups, all consumers together; a
    limit cell (no consumer) counts the producer's. CPU: all producers, all consumers."""
    if not windows:
        fps = prods[0]["fps"]
    elif cell.topology == GROUPS:
        fps = sum(w["fps"] for w in windows)
    else:
        fps = min(w["fps"] for w in windows)
    return {
        "fps": fps,
        "gbps": fps * cell.size.nbytes / 1e9,
        "producer_fps": sum(p["fps"] for p in prods),
        "producer_cores": sum(p["cores"] for p in prods),
        "consumer_cores": sum(w["cores"] for w in windows) if windows else None,
    }


def _cells(plan: Plan, size: FrameSize) -> list[tuple[str, Cell]]:
    """The cells of one frame size, in table order (each run gets its own token later)."""
    smallest = min(plan.sizes, key=lambda s: s.nbytes)
    cells: list[tuple[str, Cell]] = []
    for topology in TOPOLOGIES:
        if topology not in plan.scenarios:
            continue
        producers, consumers = SHAPES[topology]
        if topology == MAIN:
            phases: tuple[str, ...] = (THROUGHPUT, LATENCY, *((IDLE,) if size == smallest else ()))
        else:
            phases = (LATEST,) if topology == LATEST_FRAME else (THROUGHPUT,)
        for name in plan.transports:
            if topology in load(name).topologies:
                cell = Cell(
                    name, size, consumers, phases, plan.timing, "", plan.pin, topology, producers
                )
                cells.append((topology, cell))
    for scenario in ("limit", ALONE):  # producer-only cells: the transport's kind names them
        if scenario in plan.scenarios:
            cells += [
                (scenario, Cell(name, size, 0, (THROUGHPUT,), plan.timing, "", plan.pin))
                for name in plan.transports
                if load(name).kind == scenario
            ]
    return cells


def _wake_cells(plan: Plan) -> list[tuple[str, Cell]]:
    if "wake" not in plan.scenarios:
        return []
    t = plan.timing
    timing = replace(
        t, latency_s=t.wake_latency_s, latency_cap_s=max(t.latency_cap_s, 2 * t.wake_latency_s)
    )
    return [
        ("wake", Cell(name, stamp_size(), 1, (LATENCY,), timing, "", plan.pin))
        for name in plan.transports
        if load(name).kind in ("floor", "wake")
    ]


def available(names: Iterable[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """Split transport names into those that import and those skipped (with the reason)."""
    ok, skipped = [], {}
    for name in names:
        reason = skip_reason(name)
        if reason is None:
            ok.append(name)
        else:
            skipped[name] = reason
    return tuple(ok), skipped


def _run_group(
    plan: Plan,
    cells: list[tuple[str, Cell]],
    log: Callable[[str], None],
    fresh: Callable[[Cell], Cell],
    quiet: Quiet,
    extras: Budget,
) -> list[CellResult]:
    results = [CellResult(scenario, cell, []) for scenario, cell in cells]

    def run(result: CellResult) -> None:
        quiet.wait()
        cell = fresh(result.cell)
        assessed = assess(cell, harness.run_once(cell), plan.noise_threshold)
        result.runs.append(assessed)
        log(_progress(result, assessed))

    for _ in range(plan.repeats):
        for result in results:
            if not any(r["status"] == "failed" for r in result.runs):
                run(result)
    for result in results:
        extra = 0
        while (
            extra < plan.max_extra
            and extras.budget_s > 0
            and not any(r["status"] == "failed" for r in result.runs)
            and sum(1 for r in result.runs if not r["disturbed"]) < plan.repeats
        ):
            started = time.perf_counter()
            run(result)
            extras.budget_s -= time.perf_counter() - started
            extra += 1
    return results


def _progress(result: CellResult, run: dict[str, Any]) -> str:
    cell = result.cell
    head = (
        f"{cell.size.label:>12} {cell.transport:<15} {result.scenario:<10} run {len(result.runs)}"
    )
    if run["status"] == "failed":
        return f"{head}: FAILED {run['reason'][:300]}"
    m = run["metrics"]
    parts = []
    if "fps" in m:
        parts.append(f"{m['fps']:,.0f} frames/s ({m['gbps']:.2f} GB/s)")
    if "dropped_pct" in m:
        parts.append(f"dropped {m['dropped_pct']:.1f}%")
    if m.get("latency_p50_us") is not None:
        parts.append(f"latency {m['latency_p50_us']:.0f}/{m['latency_p99_us']:.0f} µs")
    if "read_fps" in m:
        parts.append(f"write {m['write_fps']:,.0f}/s, read {m['read_fps']:,.0f}/s")
        parts.append(f"age {m['age_p50_us']:.0f}/{m['age_p99_us']:.0f} µs")
    if "idle_consumer_cores" in m:
        parts.append(f"idle reader {100 * (m['idle_consumer_cores'] or 0):.2f}% core")
    others = [v for k, v in m.items() if k.endswith("_other_cores") and v is not None]
    if others:
        parts.append(f"others {max(others):.2f} cores" + (" DISTURBED" if run["disturbed"] else ""))
    return f"{head}: " + ", ".join(parts)


def run_plan(plan: Plan, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every cell of the plan; return the cells as JSON-ready dicts."""
    serial = itertools.count()
    prefix = f"{os.getpid() & 0xFFFF:x}"

    def token() -> str:
        return f"{prefix}x{next(serial):x}"

    def fresh(cell: Cell) -> Cell:
        """A new token per run, so a killed run's leftovers never meet the next run."""
        return replace(cell, token=token())

    groups = [_wake_cells(plan)] + [_cells(plan, size) for size in plan.sizes]
    out: list[dict[str, Any]] = []
    started = time.perf_counter()
    quiet = Quiet(plan, log)
    extras = Budget(plan.extra_budget_s)
    for cells in groups:
        for result in _run_group(plan, cells, log, fresh, quiet, extras):
            out.append(result.as_json(plan))
    log(f"all cells done in {time.perf_counter() - started:.0f} s")
    return out
