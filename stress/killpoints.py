# Kill-point sweep: SIGKILL a participant at every line of shmring it executes inside one
# call, and check after each death that the ring still works for everyone else. Part of
# `python -m stress.chaos` (`make chaos`); tests/test_chaos.py runs a strided sample.
#
# Random kills (stress/chaos.py) find the likely windows; this finds the narrow ones,
# deterministically. For each scenario (a call, made by a victim process that created the
# ring or attached to it, under either policy: writing, claiming, publishing a gap with
# skip(), reading, releasing one of several held frames out of order and reading one more,
# ...) a first victim runs the call under a trace function that counts the lines it executes
# in shmring's source; then, for k = 1, 2, ..., a fresh victim runs the same call and
# SIGKILLs itself at its k-th line (one whose call ends before line k is a violation: that
# point was not swept). A victim is a fork of this process that never returns into its code
# (it leaves by os._exit, whatever happens); one still running after VICTIM_LIMIT is killed
# and reported. After each death the survivor (this process) checks: frames already
# published are whole and in order; it can write 2 * SLOTS + 1 frames and read each back at
# once (nothing stays blocked, nothing is lost); what its reader counted dropped adds up
# (beyond the numbers it passed over, only the victim's gap: SKIP_COUNT - 1, or nothing if
# the gap was not published whole); under the overwrite policy its reader can hold MAX_PINS
# frames (a dead reader's pins are reaped); a new reader attaches at once; the header is
# consistent (no more frames in flight than slots, and under the block policy every buffer
# is free, queued or claimed); and when everyone has left, the segment is gone.

from __future__ import annotations

import os
import select
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

import numpy as np

import shmring
from shmring import (
    Frame,
    RingReader,
    RingTimeout,
    RingWriter,
    ShmringError,
    WriterGone,
)
from shmring import _layout as L

from . import make_tag, ring_name, segment_path, split_tag, stamp, verify

SHAPE = (512,)
DTYPE = np.uint64
SLOTS = 9  # overwrite needs slots > max_readers + max_writers
MAX_PARTICIPANTS = 4  # max_readers and max_writers
SURVIVOR, VICTIM = 1, 2  # writer ids in frame tags
# Frames published before the victim's call: some, so reads do not wait (a holder takes
# HOLD of them, then one more); under the overwrite policy more than the ring holds, so a
# write also moves tail.
PREFILL = {"block": 4, "overwrite": SLOTS + 2}
HOLD = 3  # frames the holding victim holds when its traced call starts
SKIP_COUNT = 5  # frames the victim's gap stands for
SOURCE = os.path.dirname(shmring.__file__)
TIMEOUT = 2.0  # every wait of the survivor's checks
VICTIM_LIMIT = 10 * TIMEOUT  # a victim still running by then (its calls wait TIMEOUT) hangs


class KillAt:
    """sys.settrace function: SIGKILL this process at the n-th line run in shmring's code
    (n = 0: only count them)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lines = 0

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        return self.line if frame.f_code.co_filename.startswith(SOURCE) else None

    def line(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "line":
            self.lines += 1
            if self.lines == self.n:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.line


# ---- what the victim does: untraced preparation, then the traced call ------------------------
def _frame(counter: int) -> np.ndarray:
    frame = np.empty(SHAPE, DTYPE)
    stamp(frame, make_tag(VICTIM, counter))
    return frame


def _write(name: str, counter: int) -> Callable[[], object]:
    writer = RingWriter.attach(name)
    return lambda: writer.write(_frame(counter), TIMEOUT)


def _claim(name: str, counter: int) -> Callable[[], object]:
    writer = RingWriter.attach(name)

    def claim() -> None:
        with writer.claim(TIMEOUT) as slot:
            stamp(slot, make_tag(VICTIM, counter))

    return claim


def _abandon(name: str, counter: int) -> Callable[[], object]:
    writer = RingWriter.attach(name)

    def abandon() -> None:
        try:
            with writer.claim(TIMEOUT) as slot:
                slot[...] = 0
                raise LookupError("the caller changed its mind")
        except LookupError:
            pass

    return abandon


def _read(name: str, counter: int, group: str | None = None) -> Callable[[], object]:
    reader = RingReader.attach(name, group=group, start="oldest")

    def read() -> None:
        with reader.read(TIMEOUT) as frame:
            verify(frame.array)

    return read


def _skip(name: str, counter: int) -> Callable[[], object]:
    writer = RingWriter.attach(name)
    return lambda: writer.skip(SKIP_COUNT, TIMEOUT)


def _hold(name: str, counter: int) -> Callable[[], object]:
    """Hold HOLD frames (overwrite: pins in the reader's pin line), then release the middle
    one (out of order) and read one more."""
    reader = RingReader.attach(name, start="oldest")
    held = [reader.read(TIMEOUT) for _ in range(HOLD)]

    def hold() -> None:
        held.pop(1).release()
        held.append(reader.read(TIMEOUT))

    return hold


def _latest(name: str, counter: int) -> Callable[[], object]:
    reader = RingReader.attach(name, start="oldest")
    return lambda: reader.latest(TIMEOUT)


def _iterate(name: str, counter: int) -> Callable[[], object]:
    frames = iter(RingReader.attach(name, start="oldest"))
    return lambda: (next(frames), next(frames))  # the second releases the first


def _close_reader(name: str, counter: int) -> Callable[[], object]:
    reader = RingReader.attach(name, start="oldest")
    reader.read(TIMEOUT)  # held when it closes
    return reader.close


def _close_writer(name: str, counter: int) -> Callable[[], object]:
    return RingWriter.attach(name).close


def _attach(kind: type[RingReader] | type[RingWriter], **kwargs: Any) -> Callable[..., Any]:
    return lambda name, counter: lambda: kind.attach(name, **kwargs)


def _own(call: str) -> Callable[[RingWriter], Callable[[], object]]:
    """For the creator-victim: its own (exclusive, lock-free) writer's call."""

    def prepare(writer: RingWriter) -> Callable[[], object]:
        counter = PREFILL[writer.policy]
        if call == "write":
            return lambda: writer.write(_frame(counter), TIMEOUT)
        if call == "skip":
            return lambda: writer.skip(SKIP_COUNT, TIMEOUT)
        if call == "claim":

            def claim() -> None:
                with writer.claim(TIMEOUT) as slot:
                    stamp(slot, make_tag(VICTIM, counter))

            return claim
        return writer.close

    return prepare


# Each prepares (untraced) and returns the call to trace; a frame it writes carries the
# counter equal to the sequence number it will get (every frame's counter is its seq).
ATTACHED: dict[str, Callable[[str, int], Callable[[], object]]] = {
    "write": _write,
    "claim": _claim,
    "abandon": _abandon,
    "skip": _skip,
    "read": _read,
    "hold": _hold,
    "group_read": lambda name, counter: _read(name, counter, group="g"),
    "latest": _latest,
    "iterate": _iterate,
    "close_reader": _close_reader,
    "close_writer": _close_writer,
    "attach_reader": _attach(RingReader, start="oldest"),
    "attach_group": _attach(RingReader, group="g"),
    "attach_writer": _attach(RingWriter),
}
CREATOR: dict[str, Callable[[RingWriter], Callable[[], object]]] = {
    "own_write": _own("write"),
    "own_claim": _own("claim"),
    "own_skip": _own("skip"),
    "own_close": _own("close"),
}
SCENARIOS = [(policy, call) for policy in ("block", "overwrite") for call in (*ATTACHED, *CREATOR)]


def create(name: str, policy: str) -> RingWriter:
    return RingWriter.create(
        name,
        SHAPE,
        DTYPE,
        slots=SLOTS,
        policy=policy,
        max_readers=MAX_PARTICIPANTS,
        max_writers=MAX_PARTICIPANTS,
    )


# ---- one kill point -------------------------------------------------------------------------
def prepare(name: str, policy: str, call: str, report: int, go: int) -> Callable[[], object]:
    """In the victim, untraced: its handles, and the call to trace. The creator-victim
    creates the ring, prefills it and reports b"c"; it goes on once the survivor attached."""
    if call not in CREATOR:
        return ATTACHED[call](name, PREFILL[policy])
    writer = create(name, policy)
    for n in range(PREFILL[policy]):
        writer.write(_frame(n), TIMEOUT)
    os.write(report, b"c")
    os.read(go, 1)
    return CREATOR[call](writer)


def run_victim(
    name: str, policy: str, call: str, kill_at: int, pipes: tuple[int, int, int, int]
) -> NoReturn:
    """In the forked victim: prepare untraced, then run the call traced; report the count
    of lines (when it was not killed) and what raised, if anything. `pipes`: the report and
    go pipes' ends, (read, write) each; the victim writes reports and reads go."""
    code = 1
    try:
        report_r, report, go, go_w = pipes
        os.close(report_r)
        os.close(go_w)  # so that a survivor that gives up leaves go at end of file
        tracer = KillAt(kill_at)
        error = ""
        try:
            op = prepare(name, policy, call, report, go)
        except Exception as exc:
            error = f"the victim's preparation raised {exc!r}"
        else:
            sys.settrace(tracer)
            try:
                op()
            except Exception as exc:
                error = f"the victim's call raised {exc!r}"
            finally:
                sys.settrace(None)
        # One write of less than PIPE_BUF bytes: the survivor reads it whole. A failed
        # preparation reports 0 lines, so its first byte is never the creator's b"c".
        os.write(report, struct.pack("<Q", tracer.lines) + error.encode()[:4000])
        code = 0
    finally:
        # Whatever happened, leave like a crash: no finalizer of its handles runs (a creator's
        # would unlink the ring), and never back into the caller's code (pytest, the sweep).
        os._exit(code)


def read_within(fd: int, size: int, deadline: float) -> bytes:
    """Up to `size` bytes from pipe `fd` once it is readable; b"" at end of file, or if
    nothing came by `deadline`."""
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    return os.read(fd, size) if ready else b""


def reap(pid: int, deadline: float) -> int | None:
    """The victim's wait status, polled (WNOHANG) until `deadline`; None if it was still
    running then: it is SIGKILLed and reaped."""
    pause = 1e-4
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # SIGKILL is not ignored: this returns at once
            return None
        time.sleep(pause)
        pause = min(2 * pause, 0.01)


@dataclass
class Survivor:
    """This process's handles on the ring while a victim runs, and what it checks after."""

    name: str
    policy: str
    writer: RingWriter | None = None
    reader: RingReader | None = None
    problems: list[str] = field(default_factory=list)
    excess: int = 0  # what its reader counted dropped beyond the numbers it passed over
    last_seq: int | None = None  # of the frame its reader read last

    def setup(self) -> None:
        self.writer = create(self.name, self.policy)
        self.reader = RingReader.attach(self.name, start="oldest")
        for n in range(PREFILL[self.policy]):
            frame = np.empty(SHAPE, DTYPE)
            stamp(frame, make_tag(SURVIVOR, n))
            self.writer.write(frame, TIMEOUT)

    def check(self) -> None:
        """After the victim's death: does the ring still work for everyone?"""
        assert self.reader is not None
        if self.writer is None:  # the creator died: join as a writer instead
            self.writer = RingWriter.attach(self.name)
        self.drain()
        frame = np.empty(SHAPE, DTYPE)
        for n in range(2 * SLOTS + 1):
            stamp(frame, make_tag(SURVIVOR, 1000 + n))
            self.writer.write(frame, TIMEOUT)
            with self.reader.read(TIMEOUT) as got:
                self.count(got)
                if verify(got.array) != make_tag(SURVIVOR, 1000 + n):
                    raise AssertionError(f"frame {n} after the death is not the one written")
        if self.policy == "overwrite":  # a dead reader's pins do not count against the rule
            for n in range(L.MAX_PINS):
                stamp(frame, make_tag(SURVIVOR, 2000 + n))
                self.writer.write(frame, TIMEOUT)
            held = [self.reader.read(TIMEOUT) for _ in range(L.MAX_PINS)]
            for got in held:
                self.count(got)
                verify(got.array)
                got.release()
        started = time.monotonic()
        RingReader.attach(self.name).close()
        if time.monotonic() - started > 1.0:
            self.problems.append(f"a new reader took {time.monotonic() - started:.1f} s")
        info = shmring.inspect_ring(self.name)
        in_flight = info.published - info.tail
        if not 0 <= in_flight <= SLOTS:
            self.problems.append(f"{in_flight} frames in flight in {SLOTS} slots")
        if self.policy == "block":
            queued = sum(slot.state == "queued" for slot in info.slot_states)
            claimed = sum(w.claimed_buffer is not None for w in info.writers if w.alive)
            if info.free_buffers + queued + claimed != SLOTS:
                self.problems.append(
                    f"buffers lost: {info.free_buffers} free + {queued} queued + {claimed} "
                    f"claimed of {SLOTS}"
                )

    def drain(self) -> None:
        """Frames published before or by the victim: whole, each carrying its own sequence
        number as its counter (a frame holding another frame's bytes, or one published
        twice, shows up here)."""
        assert self.reader is not None
        while True:
            try:
                frame = self.reader.read(0.0)
            except (RingTimeout, WriterGone):
                return
            with frame:
                self.count(frame)
                writer, counter = split_tag(verify(frame.array))
                if counter != frame.seq:
                    raise AssertionError(f"frame {frame.seq} holds frame {counter} of {writer}")

    def count(self, frame: Frame) -> None:
        """Add up what the reader counted dropped beyond the numbers it passed over (from
        its first frame: before that, what it joined at is not known here)."""
        if self.last_seq is not None:
            self.excess += frame.dropped - (frame.seq - self.last_seq - 1)
        self.last_seq = frame.seq

    def close(self) -> None:
        for handle in (self.reader, self.writer):
            if handle is not None:
                handle.close()
        if os.path.lexists(segment_path(self.name)):
            self.problems.append("the segment outlived every participant")
            os.unlink(segment_path(self.name))


def kill_point(policy: str, call: str, kill_at: int) -> tuple[int, list[str]]:
    """Run the scenario with a victim killed at line `kill_at` (0: never); returns the
    victim's line count (when it lived) and the problems the survivor found."""
    survivor = Survivor(ring_name("kp"), policy)
    if call not in CREATOR:
        survivor.setup()
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        run_victim(survivor.name, policy, call, kill_at, (report_r, report_w, go_r, go_w))
    os.close(report_w)
    os.close(go_r)
    deadline = time.monotonic() + VICTIM_LIMIT
    message = b""
    try:
        if call in CREATOR:
            message = read_within(report_r, 1, deadline)
            if message == b"c":  # created: the survivor's reader attaches before it goes on
                message = b""
                survivor.reader = RingReader.attach(survivor.name, start="oldest")
                os.write(go_w, b"g")
    except ShmringError as exc:
        survivor.problems.append(f"attaching to the victim's ring: {type(exc).__name__}: {exc}")
    finally:
        os.close(go_w)  # a creator-victim still waiting for it goes on, and ends
        status = reap(pid, deadline)
    lines = 0
    try:
        if status is None:
            raise AssertionError(f"the victim hung: SIGKILLed after {VICTIM_LIMIT} s")
        message += read_within(report_r, 4096, deadline)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if len(message) >= 8:
            (lines,) = struct.unpack_from("<Q", message)
            if message[8:]:
                survivor.problems.append(message[8:].decode())
            if kill_at:
                survivor.problems.append(
                    f"the call ended after {lines} lines, before line {kill_at}: not swept"
                )
        elif kill_at == 0 or not killed:
            survivor.problems.append(f"the victim ended with status {status}, reporting nothing")
        if os.path.lexists(segment_path(survivor.name)):
            survivor.check()
            gap = {0, SKIP_COUNT - 1} if call in ("skip", "own_skip") else {0}
            if survivor.excess not in gap:
                survivor.problems.append(
                    f"dropped beyond the numbers passed over: {survivor.excess}, not in {gap}"
                )
        elif call != "own_close":
            survivor.problems.append("the segment is gone, yet its creator did not close")
    except (ShmringError, AssertionError) as exc:
        survivor.problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        os.close(report_r)
        try:
            survivor.close()
        except ShmringError as exc:
            survivor.problems.append(f"closing: {type(exc).__name__}: {exc}")
    return lines, survivor.problems


@dataclass
class Sweep:
    points: dict[str, int] = field(default_factory=dict)  # scenario -> kill points run
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


def sweep(stride: int = 1, scenarios: list[tuple[str, str]] = SCENARIOS) -> Sweep:
    """Every scenario, killed at every `stride`-th line of its call."""
    result = Sweep()
    started = time.monotonic()
    for policy, call in scenarios:
        key = f"{policy}/{call}"
        lines, problems = kill_point(policy, call, 0)
        result.violations += [f"{key}, not killed: {p}" for p in problems]
        for k in range(1, lines + 1, stride):
            _, problems = kill_point(policy, call, k)
            result.violations += [f"{key}, killed at line {k} of {lines}: {p}" for p in problems]
        result.points[key] = len(range(1, lines + 1, stride))
    result.seconds = time.monotonic() - started
    return result
