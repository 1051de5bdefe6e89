# Whether polling for a frame pays: who of a ring's participants is runnable
# (Participant.spinning_pays).
#
# Rules:
#   1. Polling pays only while the poller can have a CPU of its own beside every process that
#      runs: a poller on a busy machine takes the CPU from the process it waits for (1 writer
#      and 3 readers woken by every frame, on 2 CPUs, ran at under half the rate when they
#      polled).
#   2. Attached is not runnable. A creator that never writes (it has not joined), a reader
#      asleep between its frames (a monitor taking latest() once a second), a reader of
#      another group with nothing to do: they use no CPU and must not switch polling off.
#   3. So the answer is measured, not counted: a participant process is busy if it used at
#      least IDLE_SHARE of a CPU (utime + stime of /proc/PID/stat, all threads) over the last
#      interval of at least SAMPLE seconds; polling pays if the busy other processes and the
#      poller are no more than the machine's CPUs. (Summing the CPU they used
#      instead let 3 readers woken by every frame, each using a fifth of a CPU, poll beside
#      their writer on 2 CPUs: 640x480x3 fan-out ran at half the rate.)
#   4. While the participants are no more than the CPUs, polling pays without measuring. A
#      process whose /proc entry cannot be read (another PID namespace, exited) or that
#      joined within the interval counts as busy; before a first interval is measured
#      polling does not pay (the count says there are more participants than CPUs).

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

SAMPLE = 0.5  # seconds: how often the answer is measured again (CPU time comes in 10 ms ticks)
IDLE_SHARE = 0.05  # of a CPU: a process that used less over an interval is idle
_TICK = 1.0 / os.sysconf("SC_CLK_TCK")
_UTIME = 11  # utime, stime: fields 14 and 15 of /proc/PID/stat, counted after ") "


def cpu_seconds(pid: int) -> float | None:
    """CPU time a process has used (all its threads), or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[_UTIME]) + int(fields[_UTIME + 1])) * _TICK


def usable_cpus() -> int:
    """The machine's CPUs, not this process's affinity: a poller pinned to one CPU still
    leaves the others to the rest of the ring's processes."""
    return os.cpu_count() or 1


class CpuUse:
    """Rule 3 for one process's handle on a ring, measured at most every SAMPLE seconds."""

    __slots__ = ("_cpus", "_measured_at", "_pays", "_seconds", "_until", "intervals")

    def __init__(self, cpus: int) -> None:
        self._cpus = cpus
        self._until = 0.0  # the answer holds until then
        self._pays = False
        self._measured_at = 0.0
        self._seconds: dict[int, float | None] = {}
        self.intervals = 0  # intervals measured so far (tests wait for one)

    def polling_pays(self, participants: int, other_pids: Callable[[], Iterable[int]]) -> bool:
        if participants <= self._cpus:
            return True
        now = time.monotonic()
        if now < self._until:
            return self._pays
        self._until = now + SAMPLE
        seconds = {pid: cpu_seconds(pid) for pid in set(other_pids())}
        first, elapsed = self._measured_at == 0.0, now - self._measured_at
        previous, self._seconds, self._measured_at = self._seconds, seconds, now
        if first:
            self._pays = False
            return False
        busy = 0
        for pid, spent in seconds.items():
            before = previous.get(pid)
            busy += spent is None or before is None or spent - before >= IDLE_SHARE * elapsed
        self.intervals += 1
        self._pays = busy + 1 <= self._cpus
        return self._pays
