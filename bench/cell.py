# What one cell is: a transport, a frame size, a topology (who creates the channel, how many
# producers and consumers, whether consumers share the work) and the phases to run.
#
# Rules: a Cell is plain picklable data (it crosses the spawn boundary); every duration that a
# phase may take is here, so the parent can derive the cell's hard deadline from it.
# Topologies (a transport takes part in those it lists, transports/__init__.py):
#   main        1 producer -> 1 consumer, the producer creates the channel (today's cell);
#   supervisor  1 -> 1, the parent (the harness) creates the channel, the children attach;
#   latest      1 -> 1, the producer writes flat out, the consumer takes only the newest frame;
#   fanin       2 producers -> 1 consumer, lossless, each producer's frames in order;
#   groups      1 -> 2 consumers sharing the work: each frame reaches exactly one of them;
#   fanout      1 -> 3 consumers, each sees every frame.
from __future__ import annotations

from dataclasses import dataclass, replace

from bench.frames import FrameSize

# Phases, in the order a cell may run them.
THROUGHPUT = "throughput"  # flat out after a warm-up; lossless
LATENCY = "latency"  # frames paced so they never queue; one-way latency per frame
IDLE = "idle"  # no frames flow; the blocked consumer's CPU
LATEST = "latest"  # overwrite ring, flat out; a slow reader takes only the newest frame

# Topologies, in the order of the report.
MAIN = "main"
SUPERVISOR = "supervisor"
LATEST_FRAME = "latest"
FAN_IN = "fanin"
GROUPS = "groups"
FAN_OUT = "fanout"
# A scenario beside the topologies: a writer alone in its process, no consumer process.
ALONE = "alone"
TOPOLOGIES = (MAIN, SUPERVISOR, LATEST_FRAME, FAN_IN, GROUPS, FAN_OUT)
TITLES = {  # topology: heading in the report and its plot
    MAIN: "Producer creates: 1 writer → 1 reader",
    SUPERVISOR: "Supervisor: the parent creates the ring, a child writes, a child reads",
    LATEST_FRAME: "Latest frame: the writer runs flat out, the reader always takes the newest",
    FAN_IN: "Fan-in: 2 writers → 1 reader, lossless, each writer's frames in order",
    GROUPS: "Groups: 1 writer → 2 readers sharing the work, each frame exactly once",
    FAN_OUT: "Fan-out: 1 writer → 3 readers, each sees every frame",
}


@dataclass(frozen=True)
class Timing:
    warmup_s: float = 0.3
    duration_s: float = 1.0
    latency_s: float = 0.5  # paced phase length (at least latency_min_frames frames)
    latency_min_frames: int = 20
    latency_cap_s: float = 3.0  # a paced phase stops here even short of latency_min_frames
    # The wake scenario's paced phase: its p99s are compared with each other, and a p99 of
    # 0.5 s of frames (~470, so the 5th slowest) swung 3x between runs here; ~2,800 frames.
    wake_latency_s: float = 3.0
    min_interval_s: float = 0.001  # fastest pacing (1000 frames/s)
    idle_s: float = 1.0
    work_s: float = 0.001  # the LATEST reader's per-frame work (it holds the frame meanwhile)
    sync_timeout_s: float = 30.0  # any rendezvous between the processes of a cell
    spawn_allowance_s: float = 30.0  # process start-up and teardown, added to the deadline

    def quick(self) -> Timing:
        return replace(
            self,
            warmup_s=0.05,
            duration_s=0.2,
            latency_s=0.05,
            latency_min_frames=10,
            latency_cap_s=1.0,
            wake_latency_s=0.05,
            idle_s=0.2,
        )


@dataclass(frozen=True)
class Cell:
    transport: str
    size: FrameSize
    consumers: int
    phases: tuple[str, ...]
    timing: Timing
    token: str  # unique per run of a cell; every named resource carries it
    pin: bool  # pin each process to its own CPU (only when there are enough CPUs)
    topology: str = MAIN
    producers: int = 1

    @property
    def processes(self) -> int:
        return self.producers + self.consumers

    @property
    def ends_sent(self) -> int:
        """PHASE_END frames each producer sends: one per consumer when they share the work
        (each takes one and stops), else one (every consumer sees it)."""
        return self.consumers if self.topology == GROUPS else 1

    @property
    def ends_due(self) -> int:
        """PHASE_END frames a consumer takes before its phase is over: one per producer."""
        return self.producers

    def deadline_s(self) -> float:
        """Upper bound for one run of this cell; past it the processes are killed."""
        t = self.timing
        per_phase = {
            THROUGHPUT: t.warmup_s + t.duration_s,
            LATENCY: t.latency_cap_s,
            IDLE: t.idle_s,
            LATEST: t.warmup_s + t.duration_s,
        }
        return t.spawn_allowance_s + 3 * sum(per_phase[p] for p in self.phases)
