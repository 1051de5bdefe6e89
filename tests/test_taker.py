"""Iteration's taking of frames in C (_taker.c): what Taker.take builds and when it declines,
what one Taker.wait does, and Frame's fields (FrameBase). Streams across processes go through
it in test_stream and test_crash (every iterating own-group reader); the signal tests cover
Ctrl-C in its sleep (test_signals, "iterate_sleeping")."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest
from helpers import (
    SLACK,
    WAIT,
    reinit_refused,
    started_thread,
    unique_name,
    wait_until_asleep_in_futex,
)

import shmring._layout as L
from shmring import Frame, HandleInUse, RingCorrupted, RingReader, RingWriter
from shmring._fastpath import FrameBase, Taker
from shmring._reader import _CollectableFrame, taker_arguments

SHAPE = (4, 6)


def _frame(value: int) -> np.ndarray:
    return np.full(SHAPE, value, np.uint8)


def test_take_builds_the_frame_and_records_nothing() -> None:
    with (
        RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        w.write(_frame(7), WAIT)
        release_before = r._record[L.R_RELEASE]
        collectable = r._taker.take(r, 0, 5, True)  # read()'s: released when collected
        assert type(collectable) is _CollectableFrame and collectable.dropped == 5
        collectable._reader = None  # (never recorded: nothing to release)
        frame = r._taker.take(r, 0, 0, False)  # iteration's: the reader releases it
        assert type(frame) is Frame
        assert frame.seq == 0 and frame.dropped == 0 and frame.meta == b""
        assert frame.timestamp_ns > 0 and frame._reader is r
        assert np.array_equal(frame.array, _frame(7)) and not frame.array.flags.writeable
        buffer = r._descriptors[0][L.D_BUFFER]
        assert frame.array is r._buffers[buffer]
        # the caller records the frame; take() itself left the reader as it was
        assert r._held == [] and r._next == 0
        assert r._record[L.R_RELEASE] == release_before


def test_take_declines_what_the_general_path_must_handle() -> None:
    with (
        RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4, meta_size=8) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):

        def take(seq: int) -> Frame | None:
            return r._taker.take(r, seq, 0, False)

        assert take(0) is None  # not published yet
        w.write(_frame(1), WAIT, meta=b"m")
        with w.claim(WAIT, shape=(2, 6)) as slot:
            slot[...] = 2
        w.write(_frame(3), WAIT)
        w.skip(2)
        assert take(0) is None  # metadata
        assert take(1) is None  # its own shape
        assert take(2) is not None
        assert take(3) is None  # a skip
        assert take(6) is None  # the descriptor slot holds frame 2, not 6
        got = [(f.seq, f.meta, f.array.shape) for f in _first(r, 3)]
        assert got == [(0, b"m", SHAPE), (1, b"", (2, 6)), (2, b"", SHAPE)]


def _first(reader: RingReader, count: int) -> list[Frame]:
    frames = []
    for frame in reader:
        frames.append(frame)
        if len(frames) == count:
            return frames
    raise AssertionError("the stream ended early")


def test_an_out_of_range_buffer_index_is_reported_as_corruption() -> None:
    with (
        RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        w.write(_frame(1), WAIT)
        r._descriptors[0][L.D_BUFFER] = 1000
        assert r._taker.take(r, 0, 0, False) is None
        with pytest.raises(RingCorrupted, match="buffer"):
            next(iter(r))


def test_wait_returns_the_frame_at_once_when_it_is_there() -> None:
    with (
        RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4) as w,
        RingReader.attach(w.name, start="oldest", spin=0) as r,
    ):
        w.write(_frame(4), WAIT)
        frame = r._taker.wait(r, 0, WAIT)
        assert frame is not None and frame.seq == 0 and int(frame.array[0, 0]) == 4


def test_wait_sleeps_at_most_its_timeout() -> None:
    with (
        RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4) as w,
        RingReader.attach(w.name, start="oldest", spin=0) as r,
    ):
        assert r._taker.wait(r, 0, 0.0) is None
        assert r._taker.wait(r, 0, 0.01) is None
        started = time.monotonic()
        assert r._taker.wait(r, 0, 0.2) is None  # nothing comes: it sleeps out its timeout
        slept = time.monotonic() - started
        assert 0.2 <= slept < 0.2 + SLACK, slept
        with pytest.raises(ValueError, match="timeout"):
            r._taker.wait(r, 0, -1.0)
        with pytest.raises(ValueError, match="timeout"):
            r._taker.wait(r, 0, float("nan"))


def test_wait_does_not_sleep_once_the_stream_is_closed() -> None:
    w = RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)
    with RingReader.attach(w.name, start="oldest", spin=0) as r:
        w.close()
        started = time.monotonic()
        assert r._taker.wait(r, 0, WAIT) is None
        assert time.monotonic() - started < WAIT / 2  # did not sleep out its timeout
        assert list(r) == []  # ... and iteration reports the end of the stream


def _sleep_in_wait(reader: RingReader, seq: int, out: list[Any]) -> threading.Thread:
    """A thread that counts `reader` as a sleeper and waits in Taker.wait; returned once it
    sleeps in futex(2). Its wait lasts 3 * WAIT: a test that joins it within WAIT sees a
    wake-up, not the end of the timeout."""

    def run() -> None:
        reader._count()
        try:
            out.append(reader._taker.wait(reader, seq, 3 * WAIT))
        except BaseException as exc:  # reported to the test
            out.append(exc)
        finally:
            reader._uncount()

    thread = started_thread(run)
    wait_until_asleep_in_futex(thread)
    return thread


def test_a_write_wakes_the_wait_with_the_frame() -> None:
    with (
        RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4) as w,
        RingReader.attach(w.name, start="oldest", spin=0) as r,
    ):
        out: list[Any] = []
        thread = _sleep_in_wait(r, 0, out)
        w.write(_frame(9), WAIT)
        thread.join(WAIT)
        assert not thread.is_alive(), "the write did not wake the wait"
        [frame] = out
        assert isinstance(frame, Frame) and frame.seq == 0 and int(frame.array[0, 0]) == 9


def test_closing_the_reader_while_another_thread_waits_in_it_raises() -> None:
    w = RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)
    r = RingReader.attach(w.name, start="oldest", spin=0)
    out: list[Any] = []
    thread = _sleep_in_wait(r, 0, out)
    with pytest.raises(HandleInUse, match="another thread waits"):  # (from C)
        r.close()
    assert not r.closed  # nothing was closed: the waiting thread's memory stays mapped
    w.close()  # ends the stream: the wait returns
    thread.join(WAIT)
    assert not thread.is_alive(), "closing the stream did not wake the wait"
    assert out == [None]
    r.close()
    assert r.closed


def test_after_close_take_and_wait_decline() -> None:
    with RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4) as w:
        r = RingReader.attach(w.name, start="oldest")
        w.write(_frame(1), WAIT)
        taker = r._taker
        r.close()
        assert taker.take(r, 0, 0, False) is None
        assert taker.wait(r, 0, WAIT) is None


def test_bad_arguments_are_refused_without_leaking_references() -> None:
    with (
        RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        arguments = taker_arguments(r._p, r._record)
        before = sys.getrefcount(r._p.views.buffers), sys.getrefcount(Frame)
        bad: list[tuple[dict[str, Any], type[Exception]]] = [
            ({"frame_type": int}, TypeError),
            ({"buffers": tuple(r._p.views.buffers)}, TypeError),
            ({"slots": 0}, ValueError),
            ({"descriptor_words": 1}, ValueError),
            ({"slots": 1 << 60}, ValueError),
            ({"control": memoryview(bytearray(64)).cast("Q")}, ValueError),
        ]
        for change, error in bad:
            with pytest.raises(error):
                Taker(**{**arguments, **change})
        taker = Taker(**arguments)
        with pytest.raises(RuntimeError, match="once"):
            taker.__init__(**arguments)
        with pytest.raises(TypeError):
            taker.take(r)  # type: ignore[call-arg]
        with pytest.raises(OverflowError):
            taker.take(r, -1, 0, False)
        with pytest.raises(OverflowError):
            taker.take(r, 0, -1, False)
        taker.close()
        del taker
        gc.collect()
        assert (sys.getrefcount(r._p.views.buffers), sys.getrefcount(Frame)) == before


def test_integers_out_of_range_are_refused_not_wrapped() -> None:
    with (
        RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        arguments = taker_arguments(r._p, r._record)
        for change in ({"slots": (1 << 64) + 4}, {"max_readers": -1}, {"nbuffers": 1 << 65}):
            with pytest.raises(OverflowError):
                Taker(**{**arguments, **change})


def test_an_init_run_again_from_its_own_arguments_is_refused_and_keeps_nothing() -> None:
    """Parsing the arguments may run Python code (here __index__) that calls __init__ again:
    that call is refused, and the outer one keeps no reference and no export."""
    with (
        RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        arguments = taker_arguments(r._p, r._record)
        taker = Taker.__new__(Taker)

        class Reentering:
            def __index__(self) -> int:
                taker.__init__(**arguments)
                return int(arguments["descriptor_words"])

        before = sys.getrefcount(r._p.views.buffers)
        assert "once" in reinit_refused(taker, arguments, "descriptor_words", Reentering())
        taker.close()
        after = sys.getrefcount(r._p.views.buffers)
        assert after == before


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_the_number_that_marks_a_free_pin_is_no_frame(policy: str) -> None:
    """NONE marks a free pin slot: no frame has that number, so the taker holds none under
    it (a block ring's taker has no pin line beyond its first slot to clear)."""
    with (
        RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4, policy=policy) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        w.write(_frame(1), WAIT)
        taker = r._taker
        assert taker.pin(0) >= 0 and taker.held() == 1
        assert not taker.holds(L.NONE) and not taker.unpin(L.NONE)
        assert taker.held() == 1 and taker.unpin(0)


_FINALIZER_CLOSES = """
import gc, sys
import numpy as np
from shmring import RingReader, RingWriter
name, what = sys.argv[1], sys.argv[2]
with RingWriter.create(name, (4, 6), np.uint8, slots=4) as w:
    r = RingReader.attach(name, start="oldest")
    w.write(np.ones((4, 6), np.uint8), 5.0)
    taker, buffers = r._taker, r._p.views.buffers

    class Finalizer:
        def __del__(self) -> None:
            buffers.clear() if what == "buffers" else taker.close()

    gc.disable()
    cycle = Finalizer()
    cycle.self = cycle  # type: ignore[attr-defined]
    del cycle
    gc.set_threshold(1)
    gc.enable()  # the frame's allocation collects the cycle: its finalizer runs in the call
    frame = taker.take(r, 0, 0, False) if what == "buffers" else taker.advance(r, 0)
    gc.disable()
    print(type(frame).__name__)
"""


@pytest.mark.parametrize(("what", "returned"), [("buffers", "Frame"), ("taker", "NoneType")])
def test_a_finalizer_run_while_a_frame_is_built_cannot_pull_the_ring_away(
    what: str, returned: str
) -> None:
    """Allocating the Frame may collect garbage (Python 3.11; 3.12 collects after the call)
    whose finalizer empties the buffers list or closes the taker: the frame is built from
    what was checked, or the step answers None; the interpreter does not crash."""
    if sys.version_info >= (3, 12):
        returned = "Frame"
    done = subprocess.run(
        [sys.executable, "-c", _FINALIZER_CLOSES, unique_name(), what],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == returned


def test_frame_fields_are_read_only_and_checked() -> None:
    with (
        RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        w.write(_frame(1), WAIT)
        with r.read(WAIT) as frame:
            for field in ("seq", "timestamp_ns", "dropped", "array"):
                with pytest.raises(AttributeError):
                    setattr(frame, field, getattr(frame, field))
            assert isinstance(frame, FrameBase)
        array = np.zeros(SHAPE, np.uint8)
        with pytest.raises(OverflowError):
            Frame(r, array, -1, 0, 0, b"")
        with pytest.raises(TypeError, match="timestamp_ns"):
            Frame(r, array, 0, 1.5, 0, b"")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Frame(r, array, 0, 0, 0, "text")  # type: ignore[arg-type]
        stamp = Frame(r, array, 3, 2**64 - 1, 0, b"x")  # the largest stamp a writer may give
        assert (stamp.seq, stamp.timestamp_ns, stamp.meta) == (3, 2**64 - 1, b"x")


def test_a_frame_and_its_reader_in_a_cycle_are_collected() -> None:
    """A Frame references its reader and the reader its last frame: the garbage collector
    must see through FrameBase to free both (and leave the ring)."""
    with RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4) as w:
        r = RingReader.attach(w.name, start="oldest")
        w.write(_frame(1), WAIT)
        next(iter(r))
        assert w.readers == 1
        del r
        gc.collect()
        assert w.readers == 0


@pytest.mark.parametrize("gap", [L.DF_SKIP, L.DF_EVICTED], ids=["skip", "evicted"])
def test_a_gap_is_never_built_into_a_frame(gap: int) -> None:
    """The general path builds a frame from its descriptor as read in C (describe): if
    that look finds a gap where the caller saw a frame (a skip, an evicted frame), it raises
    instead of handing out the stale bytes of the position's buffer."""
    name = unique_name("gap")
    with RingWriter.create(name, (64,), np.uint8) as w, RingReader.attach(name) as r:
        seq = w.write(np.ones(64, np.uint8))
        r._descriptors[seq % w.slots][L.D_FLAGS] = gap  # what a look in between would find
        with pytest.raises(RingCorrupted, match="turned into a gap"):
            r._frame(seq, 0)
