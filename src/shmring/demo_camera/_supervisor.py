# The supervisor of `python -m shmring.demo_camera`: a camera pipeline of six processes over
# shmring rings.
#
# Theory: this process is only the supervisor. It starts capture first (the first frame's
# shape is the rings' geometry), then the other stages; once all of them are attached it
# lets capture go. From then on it reads progress from each stage's pipe, prints a line a
# second, and watches the process sentinels. It never touches a frame.
#
# Shutdown: the source ending (or --frames/--seconds) closes the capture ring; every stage
# drains its input, closes its output and exits, in pipeline order. Ctrl-C, SIGTERM or the
# window closing end it the same way: the stop flag's FINISH level stops capture alone, so
# the MP4 still has every frame captured. A stage dying raises the flag to ABORT: every stage
# stops at its next wait (<= 0.1 s) and unwinds. A drain still running after 1 s is aborted
# too, and a stage still alive 2 s after the shutdown began is killed. Last, rings whose
# creator was killed are removed, so nothing stays in /dev/shm.

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from ._drawing import display_available
from ._runtime import (
    GO,
    Finished,
    Opened,
    Progress,
    Ready,
    StopFlag,
    StopPipeline,
)
from ._sources import parse_size
from ._stages import (
    PIPELINE,
    STAGES,
    STARTUP_TIMEOUT_S,
    PipelineConfig,
    StageSpec,
    stage_main,
)
from ._transport import TransportKind, make_transport

SHUTDOWN_GRACE_S = 2.0
# Longer than the stages' own waits for their rings, so their more precise reasons come first.
STARTUP_DEADLINE_S = STARTUP_TIMEOUT_S + 5
# Stages still draining this long after the shutdown began are waiting on something that
# will not come: the abort wakes them before the kill.
DRAIN_BEFORE_ABORT_S = 1.0
TICK_S = 0.1
PRINT_INTERVAL_S = 1.0
STALLED_AFTER_S = 1.5  # stages report twice a second while frames flow
SUMMARY_FILE = "summary.json"
PIPELINE_SKETCH = "capture -> frames -> edges + (stats0 | stats1) -> recorder -> preview -> display"


def say(line: str) -> None:
    print(line, flush=True)


@dataclass
class _Child:
    name: str
    process: BaseProcess
    conn: Connection
    conn_open: bool = True
    ready: bool = False
    progress: Progress | None = None
    progress_at: float = 0.0
    finished: Finished | None = None
    exit_code: int | None = None
    exited_at: float | None = None
    killed: bool = False  # by the supervisor, after the grace period

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def failed(self) -> bool:
        return self.killed or bool(self.exit_code)

    def outcome(self) -> Finished:
        """The stage's final report; for a stage that died without one, its last progress."""
        if self.finished:
            return self.finished
        last = self.progress or Progress(0, 0, 0.0, None, None)
        return Finished(last.frames, last.dropped, None, last.p50_ms, last.p99_ms, "no report")


def _describe_exit(child: _Child) -> str:
    code = child.exit_code or 0
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    reason = child.finished.reason if child.finished else "no report"
    return f"exited with code {code} ({reason})" if code else f"ended: {reason}"


class Supervisor:
    def __init__(self, config: PipelineConfig, transport: TransportKind) -> None:
        self._config = config
        self._ctx = multiprocessing.get_context("spawn")
        self._stop = StopFlag(self._ctx)
        self._transport = make_transport(transport, self._ctx, f"cam{os.getpid()}", PIPELINE)
        self._children: dict[str, _Child] = {}
        self._opened: Opened | None = None
        self._went_at: float | None = None
        self._startup_deadline = time.monotonic() + STARTUP_DEADLINE_S
        self._reason: str | None = None
        self._shutdown_at: float | None = None
        self._signal: int | None = None
        self._signal_exit: int | None = None
        self._printed_at = 0.0

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        os.makedirs(self._config.out_dir, exist_ok=True)
        handlers = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            with ExitStack() as hosted:
                for channel in PIPELINE.values():
                    hosted.enter_context(self._transport.host(channel))
                self._start("capture", "capture", 0, self._config)
                self._supervise()
            removed = self._transport.remove_leftovers(PIPELINE)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        for name in removed:
            say(f"removed ring {name!r}: its creator was killed before it could unlink it")
        return self._summarise(removed)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal = signum

    def _start(self, name: str, role: str, index: int, config: PipelineConfig) -> None:
        parent_end, child_end = self._ctx.Pipe()
        spec = StageSpec(
            name, role, index, config, self._transport, self._stop, child_end, os.getpid()
        )
        process = self._ctx.Process(target=stage_main, args=(spec,), name=f"shmring-{name}")
        process.start()
        child_end.close()  # so the supervisor sees EOF when the stage is gone
        self._children[name] = _Child(name, process, parent_end)
        say(f"started {name} (pid {process.pid})")

    def _supervise(self) -> None:
        while any(child.running for child in self._children.values()):
            self._check_signal()
            self._check_deadlines()
            waitables: list[Any] = [c.conn for c in self._children.values() if c.conn_open]
            waitables += [c.process.sentinel for c in self._children.values() if c.running]
            for ready in wait(waitables, timeout=TICK_S):
                child = next(
                    c for c in self._children.values() if ready in (c.conn, c.process.sentinel)
                )
                if ready is child.conn:
                    self._receive(child)
                else:
                    self._reap(child)
            self._print_progress()

    def _receive(self, child: _Child) -> None:
        try:
            message = child.conn.recv()
        except (EOFError, OSError):
            child.conn_open = False
            child.conn.close()
            return
        if isinstance(message, Progress):
            child.progress, child.progress_at = message, time.monotonic()
        elif isinstance(message, Finished):
            child.finished = message
            if child.name == "capture":
                self._shutdown(f"capture: {message.reason}")  # the others drain, then end
        elif isinstance(message, Ready):
            child.ready = True
            self._maybe_go()
        elif isinstance(message, Opened):
            self._on_opened(message)
        elif isinstance(message, StopPipeline):
            self._shutdown(f"{child.name}: {message.reason}")
            self._stop.raise_to(StopFlag.FINISH)

    def _reap(self, child: _Child) -> None:
        child.process.join()
        child.exit_code = child.process.exitcode
        child.exited_at = time.monotonic()
        while child.conn_open and child.conn.poll():  # its last words may still be in the pipe
            self._receive(child)
        if child.failed() or self._reason is None:
            self._shutdown(f"stage {child.name} {_describe_exit(child)}")
            self._stop.raise_to(StopFlag.ABORT)

    def _on_opened(self, opened: Opened) -> None:
        self._opened = opened
        if opened.fallback_note:
            say(opened.fallback_note)
        height, width = opened.shape[:2]
        say(f"source: {opened.description}, {width}x{height} frames")
        if self._reason is not None:
            return
        config = replace(self._config, frame_shape=opened.shape)
        for name, role, index in STAGES[1:]:
            self._start(name, role, index, config)

    def _maybe_go(self) -> None:
        if len(self._children) == len(STAGES) and all(c.ready for c in self._children.values()):
            self._children["capture"].conn.send(GO)
            self._went_at = self._printed_at = time.monotonic()
            say(f"running over {self._transport.kind}: {PIPELINE_SKETCH}")

    def _check_signal(self) -> None:
        if self._signal is None:
            return
        signum, self._signal = self._signal, None
        if self._signal_exit is not None:  # a second Ctrl-C: do not wait for the drain
            self._stop.raise_to(StopFlag.ABORT)
            return
        self._signal_exit = 128 + signum
        self._shutdown(f"{signal.Signals(signum).name} received")
        self._stop.raise_to(StopFlag.FINISH)

    def _shutdown(self, reason: str) -> None:
        """Start the clock on the shutdown; the first reason is the one reported."""
        if self._reason is None:
            self._reason = reason
            self._shutdown_at = time.monotonic()
            say(f"stopping: {reason}")

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        if self._shutdown_at is None:
            if self._went_at is None and now > self._startup_deadline:
                late = ", ".join(c.name for c in self._children.values() if not c.ready)
                self._shutdown(f"not ready after {STARTUP_DEADLINE_S:g} s: {late}")
                self._stop.raise_to(StopFlag.ABORT)
            return
        if now - self._shutdown_at > DRAIN_BEFORE_ABORT_S:
            self._stop.raise_to(StopFlag.ABORT)
        if now - self._shutdown_at > SHUTDOWN_GRACE_S:
            for child in self._children.values():
                if child.running and not child.killed:
                    say(f"{child.name} did not exit within {SHUTDOWN_GRACE_S:g} s: killing it")
                    child.process.kill()
                    child.killed = True

    # --- reporting -----------------------------------------------------------------------------

    def _print_progress(self) -> None:
        """One line a second: per stage fps, latency from capture p50/p99, drops."""
        now = time.monotonic()
        if self._went_at is None or self._reason is not None:
            return
        if now - self._printed_at < PRINT_INTERVAL_S:
            return
        parts = []
        for child in self._children.values():
            progress = child.progress or Progress(0, 0, 0.0, None, None)
            if now - child.progress_at > STALLED_AFTER_S:
                parts.append(f"{child.name} stalled")
                continue
            part = f"{child.name} {progress.fps:.1f} fps"
            if progress.p50_ms is not None and progress.p99_ms is not None:
                part += f" {progress.p50_ms:.1f}/{progress.p99_ms:.1f} ms"
            if progress.dropped:
                part += f" drop {progress.dropped}"
            parts.append(part)
        self._printed_at = now
        say(f"{now - self._went_at:5.1f} s | " + " | ".join(parts))

    def _summarise(self, removed: list[str]) -> int:
        failed = [c.name for c in self._children.values() if c.failed()]
        exit_code = self._signal_exit or (1 if failed or self._went_at is None else 0)
        outcomes = {c.name: c.outcome() for c in self._children.values()}
        outputs = {k: v for outcome in outcomes.values() for k, v in outcome.outputs.items()}
        seconds = time.monotonic() - self._went_at if self._went_at else 0.0
        say(
            f"summary ({self._transport.kind} transport, "
            f"{self._opened.description if self._opened else 'no source'}, {seconds:.1f} s): "
            f"{self._reason}"
        )
        say(f"  {'stage':<9}{'frames':>7}{'dropped':>9}{'fps':>8}  {'latency p50/p99':<18}ended")
        for child in self._children.values():
            say("  " + _stage_row(child))
        say("  " + _frame_counts(outcomes))
        if "video" in outputs:
            say(f"  MP4: {outputs['video']}")
        if "contact_sheet" in outputs:
            say(f"  contact sheet: {outputs['contact_sheet']}")
        summary_path = os.path.join(self._config.out_dir, SUMMARY_FILE)
        self._write_summary(summary_path, exit_code, outputs, removed)
        say(f"  summary: {summary_path}")
        return exit_code

    def _write_summary(
        self, path: str, exit_code: int, outputs: dict[str, str], removed: list[str]
    ) -> None:
        shutdown_at = self._shutdown_at or 0.0
        stages = {
            child.name: {
                **asdict(child.outcome()),
                "ended": _describe_exit(child),
                "exit_code": child.exit_code,
                "killed_after_grace": child.killed,
                "exited_after_shutdown_s": (child.exited_at or shutdown_at) - shutdown_at,
            }
            for child in self._children.values()
        }
        summary = {
            "transport": self._transport.kind,
            "source": self._opened.description if self._opened else None,
            "fallback_note": self._opened.fallback_note if self._opened else None,
            "frame_shape": list(self._opened.shape) if self._opened else None,
            "reason": self._reason,
            "exit_code": exit_code,
            "stages": stages,
            "outputs": outputs,
            "removed_leftovers": removed,
        }
        with open(path, "w", encoding="utf-8") as file:
            json.dump(summary, file, indent=2)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _stage_row(child: _Child) -> str:
    report = child.outcome()
    latency = f"{_number(report.p50_ms, '.1f')}/{_number(report.p99_ms, '.1f')} ms"
    ended = _describe_exit(child) + (" (after the grace period)" if child.killed else "")
    return (
        f"{child.name:<9}{report.frames:>7}{report.dropped:>9}{_number(report.fps, '.1f'):>8}"
        f"  {latency:<18}{ended}"
    )


def _frame_counts(outcomes: dict[str, Finished]) -> str:
    """Frames captured, processed, recorded, displayed; '?' for a stage that never started."""

    def count(name: str) -> str:
        return str(outcomes[name].frames) if name in outcomes else "?"

    stats = [name for name in outcomes if name.startswith("stats")]
    split = " + ".join(f"{name} {count(name)}" for name in stats)
    stats_total = sum(outcomes[name].frames for name in stats)
    display = outcomes.get("display")
    shown = f"{display.frames} (dropped {display.dropped})" if display else "?"
    return (
        f"captured {count('capture')}, processed {count('edges')} by edges and {stats_total}"
        f" by stats ({split}), recorded {count('recorder')}, displayed {shown}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m shmring.demo_camera",
        description="A camera pipeline over shmring rings: capture, edges, 2 stats workers, "
        "an MP4 recorder and a display (a window, or a PNG contact sheet when headless).",
    )
    parser.add_argument(
        "--source",
        default="0",
        help="camera index, device path, video file, RTSP/HTTP URL, or 'synthetic' "
        "(default: camera 0; falls back to the synthetic pattern if it does not open)",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(640, 480),
        metavar="WxH",
        help="synthetic pattern size, and the size asked of a camera (default: 640x480)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=30.0,
        help="pace of the synthetic pattern and of video files; 0: as fast as the pipeline "
        "goes; asked of a camera (default: 30)",
    )
    parser.add_argument("--seconds", type=float, help="stop capturing after this long")
    parser.add_argument("--frames", type=int, help="stop capturing after this many frames")
    parser.add_argument("--headless", action="store_true", help="no window even with a display")
    parser.add_argument("--out", default="demo-output", help="directory for the MP4, PNG, JSON")
    parser.add_argument(
        "--transport",
        choices=("shm", "queue"),
        default="shm",
        help="shm: shmring rings (default); queue: the same pipeline over multiprocessing.Queue",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    gui = not args.headless and display_available()
    if not args.headless and not gui:
        say("no display (or OpenCV without GUI): running headless, writing an MP4 and a PNG")
    config = PipelineConfig(
        source=args.source,
        size=args.size,
        fps=args.fps,
        seconds=args.seconds,
        frames=args.frames,
        out_dir=args.out,
        gui=gui,
    )
    return Supervisor(config, args.transport).run()
