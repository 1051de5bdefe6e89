# Whether polling for a frame pays: who of a ring's participants is runnable
# (Participant.spinning_pays).
#
# Rules:
#   1. Polling pays only while the poller can have a CPU of its own beside every process that
#      runs: a poller on a busy machine takes the CPU from the process it waits for (1 writer
#      and 3 readers woken by every frame, on 2 CPUs: docs/performance.md, "Fan-out").
#   2. Attached is not runnable. A creator that never writes (it has not joined), a reader
#      asleep between its frames (a monitor taking latest() once a second), a reader of
#      another group with nothing to do: they use no CPU and must not switch polling off.
#   3. So the answer is measured, not counted: a participant process is busy if it used at
#      least IDLE_SHARE of a CPU (utime + stime of /proc/PID/stat, all threads) over the last
#      interval of at least SAMPLE seconds; polling pays if the poller, the busy other
#      participants and the CPUs that other processes keep busy are no more than the
#      machine's CPUs. (Summing the CPU the participants used instead let 3 readers woken by
#      every frame, each using a small share of a CPU, poll beside their writer on 2 CPUs,
#      taking the CPUs from each other.)
#   4. Processes outside the ring count too (a bridge runs two rings of two participants
#      each, four busy processes, on 2 CPUs: each pair polled, taking the CPU from the
#      other). What they used is the machine's busy time (/proc/stat, without steal) minus
#      the participants' own, rounded to whole CPUs: the two are accounted differently and
#      disagree by up to a quarter of a CPU. An interval in which a participant joined
#      keeps the previous figure (its CPU before it joined cannot be told apart).
#   5. Before a first interval is measured, polling pays while the participants are no
#      more than the CPUs. A process whose /proc entry cannot be read (another PID
#      namespace, exited) or that joined within the interval counts as busy.

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


def machine_busy_seconds() -> float | None:
    """CPU time the whole machine has spent running anything (not idle, not stolen by the
    hypervisor), or None without /proc/stat."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    except (OSError, ValueError):  # no procfs, or not Linux's layout
        return None
    return (user + nice + system + irq + softirq) * _TICK


def usable_cpus() -> int:
    """The machine's CPUs, not this process's affinity: a poller pinned to one CPU still
    leaves the others to the rest of the ring's processes."""
    return os.cpu_count() or 1


class CpuUse:
    """Rules 3-5 for one process's handle on a ring, measured at most every SAMPLE seconds."""

    __slots__ = (
        "_busy",
        "_cpus",
        "_machine",
        "_measured_at",
        "_outsiders",
        "_seconds",
        "_until",
        "intervals",
    )

    def __init__(self, cpus: int) -> None:
        self._cpus = cpus
        self._until = 0.0  # the next measurement is due then
        self._measured_at = 0.0
        self._seconds: dict[int, float | None] = {}  # CPU time of each participant process
        self._machine: float | None = None  # and of the machine, at _measured_at
        self._busy = 0  # other participant processes busy over the last interval (rule 3)
        self._outsiders = 0  # CPUs that processes outside the ring kept busy (rule 4)
        self.intervals = 0  # intervals measured so far (tests wait for one)

    def polling_pays(self, participants: int, other_pids: Callable[[], Iterable[int]]) -> bool:
        now = time.monotonic()
        if now >= self._until:
            self._measure(now, other_pids)
        if not self.intervals:
            return participants <= self._cpus
        return self._busy + self._outsiders + 1 <= self._cpus

    def _measure(self, now: float, other_pids: Callable[[], Iterable[int]]) -> None:
        self._until = now + SAMPLE
        own = os.getpid()
        seconds = {pid: cpu_seconds(pid) for pid in {*other_pids(), own}}
        machine = machine_busy_seconds()
        previous, before_machine, elapsed = self._seconds, self._machine, now - self._measured_at
        self._seconds, self._machine, self._measured_at = seconds, machine, now
        if not previous:
            return  # the first sample: an interval begins
        busy = 0
        used: float | None = 0.0  # by the participants, while they can all be told
        for pid, spent in seconds.items():
            before = previous.get(pid)
            if spent is None or before is None:
                busy += pid != own
                used = None
                continue
            if used is not None:
                used += spent - before
            busy += pid != own and spent - before >= IDLE_SHARE * elapsed
        if used is not None and machine is not None and before_machine is not None:
            self._outsiders = max(0, round((machine - before_machine - used) / elapsed))
        self._busy = busy
        self.intervals += 1
