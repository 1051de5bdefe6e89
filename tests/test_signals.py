# Ctrl-C (SIGINT) and SIGTERM while a process is blocked inside shmring.
#
# A child blocks in read, a group read, latest, iteration, write or claim (all without a
# timeout); the test waits until the kernel shows it asleep in a futex, signals it, and
# checks that the call was interrupted within 0.2 s (KeyboardInterrupt for SIGINT, the
# handler's SystemExit for SIGTERM). Then everyone keeps using the ring: the child's own
# handle still works, the test's reader gets every frame in order, a new reader attaches at
# once, and no sleeper count is left behind. With SIGTERM's default action the child just
# dies; the others must not notice beyond losing it. Last, Ctrl-C landing as read() returns
# (injected at that exact instant) must not wedge a reader that handles it and goes on.
from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

import numpy as np
import pytest
from helpers import WAIT, seg_path, unique_name, wait_pid_exit, wait_until_process_asleep_in_futex

from shmring import Claim, Frame, RingReader, RingTimeout, RingWriter
from shmring._timing import DEFAULT_SPIN

BOUND = 0.2  # the promise: interrupted within 0.2 s
SHAPE = (64,)
SLOTS = 4
CONTROL = 256  # docs/FORMAT.md: the control block's byte offset
READER_WAITERS, WRITER_WAITERS = 16, 17


def _publish(claim: Claim) -> None:
    with claim as slot:
        slot[...] = 1


BLOCKING: dict[str, Callable[[Any], object]] = {
    "read": lambda reader: reader.read(None),
    "group_read": lambda reader: reader.read(None),
    "latest": lambda reader: reader.latest(None),
    "iterate": lambda reader: next(iter(reader)),
    "iterate_sleeping": lambda reader: next(iter(reader)),  # spin=0: it sleeps in C (_taker.c)
    "write": lambda writer: writer.write(np.ones(SHAPE, np.uint8), None),
    "claim": lambda writer: _publish(writer.claim(None)),
}
WRITER_CALLS = ("write", "claim")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def blocked_child(conn: Connection, name: str, call: str, handle_sigterm: bool) -> None:
    """Attach, block in `call` until a signal interrupts it, report, then keep using the
    ring through the same handle when told to."""
    if handle_sigterm:
        signal.signal(signal.SIGTERM, _terminate)
    handle: RingReader | RingWriter
    if call in WRITER_CALLS:
        handle = RingWriter.attach(name)
    else:
        handle = RingReader.attach(
            name,
            group="g" if call == "group_read" else None,
            spin=0 if call == "iterate_sleeping" else DEFAULT_SPIN,
        )
    conn.send("ready")
    try:
        BLOCKING[call](handle)
        conn.send(("returned", "", 0.0))
    except (KeyboardInterrupt, SystemExit) as exc:
        conn.send(("interrupted", type(exc).__name__, time.monotonic()))
    conn.recv()
    if isinstance(handle, RingWriter):
        conn.send(("wrote", handle.write(np.full(SHAPE, 77, np.uint8), WAIT)))
    else:
        with handle.read(WAIT) as frame:
            conn.send(("read", int(frame.array[0])))
    handle.close()
    conn.send(("closed", 0, 0.0))


@contextmanager
def child(name: str, call: str, handle_sigterm: bool = False) -> Iterator[tuple[Any, Any]]:
    ctx = mp.get_context("fork")  # fast, and inherited handles must be harmless anyway
    ours, theirs = ctx.Pipe()
    process = ctx.Process(
        target=blocked_child, args=(theirs, name, call, handle_sigterm), daemon=True
    )
    process.start()
    theirs.close()
    try:
        assert ours.poll(WAIT), "child did not start"
        assert ours.recv() == "ready"
        yield process, ours
    finally:
        if process.exitcode is None:
            process.kill()
        process.join(WAIT)


def recv(conn: Connection) -> Any:
    assert conn.poll(WAIT), "child is silent"
    return conn.recv()


def sleeper_counts(name: str) -> tuple[int, int]:
    with open(seg_path(name), "rb") as f:
        f.seek(CONTROL + 8 * READER_WAITERS)
        readers, writers = struct.unpack("<QQ", f.read(16))
    return readers, writers


def fill(writer: RingWriter) -> None:
    """Publish SLOTS frames (values 0..SLOTS-1) that the test's reader does not read yet:
    under the block policy the ring is then full, and any further write waits."""
    for n in range(SLOTS):
        writer.write(np.full(SHAPE, n, np.uint8), 1.0)


def check_ring_usable(name: str, writer: RingWriter, reader: RingReader, after: list[int]) -> None:
    """The test's reader gets `after` then a fresh frame in order; a new reader joins fast."""
    for value in after:
        with reader.read(1.0) as frame:
            assert int(frame.array[0]) == value
    started = time.monotonic()
    with RingReader.attach(name) as late:
        assert time.monotonic() - started < 1.0
        writer.write(np.full(SHAPE, 99, np.uint8), 1.0)
        with reader.read(1.0) as frame:
            assert int(frame.array[0]) == 99
        assert int(late.latest(1.0).array[0]) == 99


@pytest.mark.parametrize("call", list(BLOCKING))
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_interrupts_a_blocked_call(call: str, signum: signal.Signals) -> None:
    name = unique_name("sg")
    with (
        RingWriter.create(name, SHAPE, np.uint8, slots=SLOTS) as writer,
        RingReader.attach(name, start="oldest") as reader,
    ):
        if call in WRITER_CALLS:
            fill(writer)
        with child(name, call, handle_sigterm=signum == signal.SIGTERM) as (process, conn):
            wait_until_process_asleep_in_futex(process.pid)
            sent = time.monotonic()
            os.kill(process.pid, signum)
            what, exception, caught = recv(conn)
            assert what == "interrupted"
            expected = "KeyboardInterrupt" if signum == signal.SIGINT else "SystemExit"
            assert exception == expected
            assert caught - sent < BOUND, f"interrupted after {caught - sent:.3f} s"
            # the interrupted handle still works, and nothing it did shows
            conn.send("continue")
            if call in WRITER_CALLS:
                for n in range(SLOTS):
                    with reader.read(1.0) as frame:
                        assert int(frame.array[0]) == n
                assert recv(conn)[0] == "wrote"
                check_ring_usable(name, writer, reader, after=[77])
            else:
                writer.write(np.full(SHAPE, 5, np.uint8), 1.0)
                assert recv(conn) == ("read", 5)
                check_ring_usable(name, writer, reader, after=[5])
            assert recv(conn)[0] == "closed"
            process.join(WAIT)
            assert process.exitcode == 0
        assert sleeper_counts(name) == (0, 0)


@pytest.mark.parametrize("call", ["read", "write"])
def test_sigterm_default_action_kills_and_others_carry_on(call: str) -> None:
    name = unique_name("st")
    with (
        RingWriter.create(name, SHAPE, np.uint8, slots=SLOTS) as writer,
        RingReader.attach(name, start="oldest") as reader,
    ):
        if call in WRITER_CALLS:
            fill(writer)
        with child(name, call) as (process, _):
            wait_until_process_asleep_in_futex(process.pid)
            sent = time.monotonic()
            os.kill(process.pid, signal.SIGTERM)
            wait_pid_exit(process.pid, WAIT)
            assert time.monotonic() - sent < BOUND
            process.join(WAIT)
            assert process.exitcode == -signal.SIGTERM
        # a dead reader stops holding back the writer; a dead writer took nothing with it
        if call in WRITER_CALLS:
            check_ring_usable(name, writer, reader, after=list(range(SLOTS)))
        for n in range(2 * SLOTS):
            writer.write(np.full(SHAPE, n, np.uint8), 2.0)
            with reader.read(1.0) as frame:
                assert int(frame.array[0]) == n
        check_ring_usable(name, writer, reader, after=[])
        assert sleeper_counts(name) == (0, 0)


def _interrupt(
    cls: type, method: str, event: str, passed: int = 0, where: list[Any] | None = None
) -> Callable[..., Any]:
    """A trace function that raises KeyboardInterrupt at the first `event` ("line" or
    "return") of `cls.method` after `passed` such events: what a SIGINT delivered at that
    instant does. `where` gets the types of the method's local variables of that instant
    (not the values: they would keep a Frame alive)."""
    seen = [0]

    def trace(frame: FrameType, event_: str, arg: object) -> Any:
        own = isinstance(frame.f_locals.get("self"), cls)  # Frame subclasses too
        if event_ == "call" and frame.f_code.co_name == method and own:
            return interrupting
        return None

    def interrupting(frame: FrameType, event_: str, arg: object) -> Any:
        if event_ == event:
            seen[0] += 1
            if seen[0] > passed:
                sys.settrace(None)
                if where is not None:
                    where.append({k: type(v) for k, v in frame.f_locals.items()})
                raise KeyboardInterrupt
        return interrupting

    return trace


@pytest.mark.parametrize(
    ("policy", "cls", "method", "event", "passed"),
    [
        pytest.param("block", RingReader, "read", "return", 0, id="as read returns-block"),
        pytest.param("overwrite", RingReader, "read", "return", 0, id="as read returns-overwrite"),
        # A block reader's Frame is built in C (Taker.take, the second line of _take_own):
        # interrupt at the line after it, before the frame is recorded.
        pytest.param("block", RingReader, "_take_own", "line", 2, id="as the Frame is built-block"),
        # An overwrite reader's Frame is built in C (take_pinned): interrupt as it is recorded.
        pytest.param(
            "overwrite", RingReader, "_take_pinned", "return", 0, id="as the Frame is pinned"
        ),
    ],
)
def test_ctrl_c_inside_read_does_not_wedge_the_reader(
    policy: str, cls: type, method: str, event: str, passed: int
) -> None:
    """Ctrl-C can land after read() took the frame but before the caller holds it (even
    before the reader has recorded it). An application that handles Ctrl-C and carries on
    must be able to: the frame nobody holds may not stay pinned (overwrite) or held back
    (block) for ever, and its clean-up must not fail."""
    unraisable: list[Any] = []
    name = unique_name("ki")
    with (
        RingWriter.create(name, SHAPE, np.uint8, slots=16, policy=policy) as writer,
        RingReader.attach(name) as reader,
    ):
        writer.write(np.zeros(SHAPE, np.uint8), 1.0)
        hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
        where: list[Any] = []
        sys.settrace(_interrupt(cls, method, event, passed, where))
        try:
            with pytest.raises(KeyboardInterrupt):
                reader.read(1.0)
            gc.collect()
        finally:
            sys.settrace(None)
            sys.unraisablehook = hook
        if method == "_take_own":  # interrupted with the Frame built, not yet recorded
            assert issubclass(where[0]["frame"], Frame) and "held" not in where[0], where
        assert not unraisable, [f"{u.exc_type.__name__}: {u.exc_value}" for u in unraisable]
        with contextlib.suppress(RingTimeout), reader.read(0.0) as again:
            assert again.seq == 0  # the interrupted frame, handed out again (or not at all)
        for n in range(40):  # more than the ring holds
            writer.write(np.full(SHAPE, n, np.uint8), 1.0)
            with reader.read(1.0) as frame:
                assert int(frame.array[0]) == n


def test_a_reader_woken_with_a_frame_stops_counting_as_a_sleeper() -> None:
    """A reader woken with a frame stays counted as a sleeper (the subtraction is a system
    call, kept off the wake-up path) only until its next step that needs no wait, or its
    close: the count never leaks, so writers do not go on waking nobody."""
    name = unique_name("wk")
    with RingWriter.create(name, SHAPE, np.uint8, slots=SLOTS) as writer:
        reader = RingReader.attach(name, spin=0)
        for leave_by in ("next read", "close"):
            got: list[int] = []
            waiter = threading.Thread(target=lambda got=got: got.append(reader.read(WAIT).seq))
            waiter.start()
            deadline = time.monotonic() + WAIT
            while sleeper_counts(name)[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.001)  # bounded poll for the reader to count itself asleep
            assert sleeper_counts(name) == (1, 0)
            seq = writer.write(np.zeros(SHAPE, np.uint8), 1.0)
            waiter.join(WAIT)
            assert got == [seq]
            if leave_by == "next read":
                writer.write(np.ones(SHAPE, np.uint8), 1.0)
                with reader.read(0.0) as frame:
                    assert frame.seq == seq + 1
            else:
                reader.close()
            assert sleeper_counts(name) == (0, 0)


@pytest.mark.parametrize("policy", ["block", "overwrite"])
@pytest.mark.parametrize("event", ["line", "return"], ids=["as release starts", "as it ends"])
def test_ctrl_c_inside_release_leaves_the_frame_releasable(policy: str, event: str) -> None:
    """Ctrl-C can land inside Frame.release(). The frame must still be released (again by
    hand, or when it is garbage-collected), and a repeated release must not undo anything:
    an overwrite reader whose pin stayed set could never read again (found by make chaos)."""
    name = unique_name("kr")
    with (
        RingWriter.create(name, SHAPE, np.uint8, slots=16, policy=policy) as writer,
        RingReader.attach(name) as reader,
    ):
        writer.write(np.zeros(SHAPE, np.uint8), 1.0)
        sys.settrace(_interrupt(RingReader, "_release", event))
        try:
            with pytest.raises(KeyboardInterrupt), reader.read(1.0):
                pass
            gc.collect()  # the interrupted frame is unreachable now: its finalizer runs
        finally:
            sys.settrace(None)
        for n in range(1, 40):  # more than the ring holds
            writer.write(np.full(SHAPE, n, np.uint8), 1.0)
            with reader.read(1.0) as frame:
                assert int(frame.array[0]) == n
