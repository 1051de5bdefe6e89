# CPU accounting for a measurement window, and the machine description.
#
# Theory: each process reads its own CPU time with getrusage(RUSAGE_SELF) (all its threads, µs
# resolution; os.times() ticks at 10 ms, too coarse for an idle reader) at the window's ends, so
# "cores used" = CPU seconds / wall seconds. One process per cell also reads /proc/stat (whole
# machine, clock ticks) at its window's ends; the machine's busy cores minus the cores our own
# processes used is what *other* processes (and the hypervisor, as steal) took during the cell —
# the noise figure used to repeat disturbed cells.
from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    wall: float  # time.perf_counter()
    cpu: float  # user + system seconds of this process (all threads)
    voluntary_switches: int
    involuntary_switches: int
    busy_ticks: int  # whole machine, /proc/stat (0 when not read)
    steal_ticks: int


def _proc_stat() -> tuple[int, int]:
    with open("/proc/stat", "rb") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal, steal


def snapshot(machine: bool = False) -> Snapshot:
    busy, steal = _proc_stat() if machine else (0, 0)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return Snapshot(
        wall=time.perf_counter(),
        cpu=usage.ru_utime + usage.ru_stime,
        voluntary_switches=usage.ru_nvcsw,
        involuntary_switches=usage.ru_nivcsw,
        busy_ticks=busy,
        steal_ticks=steal,
    )


def machine_busy_cores(interval_s: float) -> float:
    """Busy cores of the whole machine over the next interval_s (sleeps meanwhile)."""
    before, _ = _proc_stat()
    time.sleep(interval_s)
    after, _ = _proc_stat()
    return (after - before) / CLOCK_TICK / interval_s


def window(start: Snapshot, end: Snapshot) -> dict[str, float]:
    """Wall seconds, cores used by this process and, when read, by the whole machine."""
    wall = max(end.wall - start.wall, 1e-9)
    out = {
        "wall_s": wall,
        "cores": (end.cpu - start.cpu) / wall,
        "switches_per_s": (end.voluntary_switches - start.voluntary_switches) / wall,
        "preempted_per_s": (end.involuntary_switches - start.involuntary_switches) / wall,
    }
    if end.busy_ticks:
        out["machine_cores"] = (end.busy_ticks - start.busy_ticks) / CLOCK_TICK / wall
        out["steal_cores"] = (end.steal_ticks - start.steal_ticks) / CLOCK_TICK / wall
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _l3_cache() -> str:
    index = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    return index.read_text().strip() if index.exists() else "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    total_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total_kib = int(line.split()[1])
    except OSError:
        pass
    dists = ("shmring", "numpy", "pyzmq", "faster-fifo", "iceoryx2", "matplotlib")
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "l3_cache": _l3_cache(),
        "memory_gib": round(total_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "versions": {d: _version(d) for d in dists},
        "git_commit": _git_commit(),
    }
