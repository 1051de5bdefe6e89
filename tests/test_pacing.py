"""Pacing (_pacing.py): a reader of a steady stream naps until just before its next frame is
due, then polls. The Pacer's advice is checked with explicit times; the reader's naps with a
real stream from an unrelated ``python`` process, and with a frame that comes early."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

import numpy as np
import pytest
from conftest import YieldCount
from helpers import (
    WAIT,
    Child,
    Pattern,
    Waiter,
    bounded,
    collect,
    finish,
    increasing,
    make_tag,
    unique_name,
)

import shmring
from shmring import _layout as L
from shmring import _pacing, _reader, _sys
from shmring._pacing import Pacer
from shmring._timing import DEFAULT_SPIN

MS = 1e-3
SPIN = DEFAULT_SPIN
needs_two_cpus = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="nobody polls or naps with more participants than CPUs"
)


def _steady(pacer: Pacer, interval: float, frames: int, start: float = 100.0) -> float:
    """Feed `frames` arrivals `interval` apart (seqs 0..frames-1); returns the last time."""
    t = start
    for seq in range(frames):
        t = start + seq * interval
        pacer.arrived(seq, t)
    return t


def test_a_steady_stream_is_learned_and_the_nap_ends_lead_before_the_frame() -> None:
    pacer = Pacer(SPIN)
    assert pacer.nap_until(1, 0.0) is None  # nothing learned yet
    last = _steady(pacer, 2 * MS, 10)
    assert pacer.interval == pytest.approx(2 * MS)
    nap_end = pacer.nap_until(10, last + 0.1 * MS)
    assert nap_end == pytest.approx(last + 2 * MS - _pacing.LEAD_START)
    assert pacer.due(10) == pytest.approx(last + 2 * MS)
    assert pacer.nap_until(9, last) is None  # a frame that already arrived is not due


def test_no_nap_when_the_frame_is_due_too_soon_or_the_stream_is_too_fast_or_slow() -> None:
    pacer = Pacer(SPIN)
    last = _steady(pacer, 2 * MS, 10)
    assert pacer.nap_until(10, last + 2 * MS - _pacing.LEAD_START - _pacing.NAP_MIN / 2) is None
    fast = Pacer(SPIN)
    last = _steady(fast, _pacing.NAP_MIN / 10, 10)
    assert fast.interval is None and fast.nap_until(10, last) is None
    slow = Pacer(SPIN)
    last = _steady(slow, 2 * _pacing.MAX_INTERVAL, 10)
    assert slow.interval is None and slow.nap_until(10, last) is None


def test_no_nap_for_a_frame_due_more_than_an_interval_ahead() -> None:
    """A burst taken without waiting leaves the reference 300 frames back: its due time is
    300 intervals ahead, extrapolated from frames that came faster. A nap (and the polling
    after it, up to the due time) would check no writer's liveness, so a writer that died
    would get its WriterGone that late: the reader waits as it does without pacing."""
    pacer = Pacer(SPIN)
    last = _steady(pacer, 10 * MS, 10)
    assert pacer.nap_until(310, last + 5 * MS) is None
    assert pacer.nap_until(10, last + 5 * MS) is not None  # the next frame: a nap


def test_a_pause_keeps_the_interval_and_a_new_pace_is_relearned() -> None:
    pacer = Pacer(SPIN)
    last = _steady(pacer, 2 * MS, 10)
    pacer.arrived(10, last + 50 * MS)  # the source paused: not a new rate
    assert pacer.interval == pytest.approx(2 * MS)
    assert pacer.nap_until(11, last + 50 * MS) == pytest.approx(last + 52 * MS - _pacing.LEAD_START)
    for seq in range(11, 40):  # the source now runs at 5 ms a frame
        pacer.arrived(seq, last + 50 * MS + (seq - 10) * 5 * MS)
    assert pacer.interval == pytest.approx(5 * MS, rel=0.01)


def test_a_stream_that_slows_down_past_the_pause_length_is_relearned() -> None:
    """A writer that ran flat out, then paces itself: the first long gap is a pause, the
    second one in a row the stream's new interval."""
    pacer = Pacer(SPIN)
    last = _steady(pacer, 70e-6, 10)
    assert pacer.interval == pytest.approx(70e-6)
    pacer.arrived(10, last + 1 * MS)
    assert pacer.interval == pytest.approx(70e-6)  # a pause, so far
    pacer.arrived(11, last + 2.2 * MS)
    assert pacer.interval == pytest.approx(1.2 * MS)
    nap_end = pacer.nap_until(12, last + 2.3 * MS)
    assert nap_end == pytest.approx(last + 3.4 * MS - pacer.lead)
    pacer.arrived(12, last + 3.4 * MS)
    pacer.arrived(13, last + 23.4 * MS)  # one pause after a normal gap keeps the interval
    assert pacer.interval == pytest.approx(1.2 * MS)


def test_a_stream_is_steady_when_the_reader_waits_for_every_frame_and_gaps_keep_time() -> None:
    """`steady` (what a reader that cannot poll freely needs before it naps): the gaps keep
    to the interval, and the reader waited for each frame rather than finding a backlog."""
    pacer = Pacer(SPIN)
    last = _steady(pacer, 2 * MS, 3)
    assert not pacer.steady  # an interval learned from two gaps is not shown to hold yet
    last = _steady(pacer, 2 * MS, 20, start=last - 2 * MS)
    assert pacer.steady
    pacer.arrived(21, last + 4 * MS)  # frame 20 was there when the reader looked: a backlog
    assert not pacer.steady
    jittery = Pacer(SPIN)
    t = 100.0
    for seq in range(40):  # 1 ms and 3 ms gaps in turn: a 2 ms interval, not kept
        t += (1 if seq % 2 else 3) * MS
        jittery.arrived(seq, t)
    assert jittery.interval == pytest.approx(2 * MS, rel=0.3)
    assert not jittery.steady


def test_the_lead_grows_after_oversleeping_and_shrinks_after_long_polls() -> None:
    pacer = Pacer(1 * MS)
    _steady(pacer, 10 * MS, 10)
    pacer.nap_outcome(overslept=True, polled=0.0)
    assert pacer.lead == pytest.approx(2 * _pacing.LEAD_START)
    for _ in range(100):
        pacer.nap_outcome(overslept=False, polled=1 * MS)  # woke far too early, every time
    assert pacer.lead == pytest.approx(_pacing.LEAD_MIN)
    pacer.nap_outcome(overslept=False, polled=_pacing.POLL_TARGET)
    assert pacer.lead == pytest.approx(_pacing.LEAD_MIN)  # polled as long as wanted: unchanged


@pytest.mark.parametrize(
    ("spin", "interval", "yielding", "most"),
    [
        (SPIN, 2 * MS, False, SPIN + _pacing.LEAD_SLACK),  # the reader's polling budget
        (10 * MS, 2 * MS, False, 1 * MS),  # half the interval
        (SPIN, 150e-6, False, 75e-6),  # half the interval of a fast stream
        (SPIN, 2 * MS, True, 1 * MS),  # polling yielding the CPU: half the interval only
    ],
)
def test_however_a_jittery_stream_grows_the_lead_it_stays_bounded(
    spin: float, interval: float, yielding: bool, most: float
) -> None:
    """A reader polls up to lead + spin per frame: the lead never passes its spin plus
    LEAD_SLACK (unless it polls yielding the CPU), nor half the stream's interval."""
    pacer = Pacer(spin)
    pacer.yielding = yielding
    _steady(pacer, interval, 10)
    for _ in range(100):
        pacer.nap_outcome(overslept=True, polled=0.0)
    assert pacer.lead == pytest.approx(most)


@pytest.fixture
def naps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The timeouts of the naps readers take in this process (the real waits still run)."""
    taken: list[float] = []
    real_wait = _sys.precise_futex_wait

    def recorded_wait(address: int, expected: int, timeout: float) -> None:
        taken.append(timeout)
        real_wait(address, expected, timeout)

    monkeypatch.setattr(_reader, "precise_futex_wait", recorded_wait)
    return taken


@needs_two_cpus
@pytest.mark.parametrize(
    ("method", "policy", "group"),
    [
        ("read", "block", None),
        ("iter", "block", None),  # the lock-free iteration path, as in the bench
        ("read", "block", "workers"),  # a group member takes frames under the header lock
        ("latest", "overwrite", None),
    ],
    ids=["read", "iterate", "group-read", "overwrite-latest"],
)
def test_a_steady_stream_from_another_program_is_paced_and_arrives_whole(
    naps: list[float], method: str, policy: str, group: str | None
) -> None:
    """A camera-like stream (one frame every 2 ms) from an unrelated `python`: every frame
    arrives whole and in order (or is counted as dropped, for latest() on an overwrite
    ring), and the reader learned the pace and napped between frames."""
    name, shape, count = unique_name("paced"), (640,), 200
    with Child(
        "popen",
        "stream_writer",
        name=name,
        shape=list(shape),
        count=count,
        policy=policy,
        slots=16,  # overwrite needs more slots than readers + writers (8 + 4 by default)
        interval=2 * MS,
    ) as child:
        child.expect("ready")
        with shmring.RingReader.attach(name, group=group, start="oldest", timeout=WAIT) as r:
            child.send("go")
            got = bounded(lambda: collect(r, Pattern(shape), method))
            interval = r._pacer.interval
        finish(child)
    if method == "latest":
        assert increasing(got.tags) and len(got.tags) + got.dropped == count
    else:
        assert got.tags == [make_tag(0, n) for n in range(count)]
    assert interval is not None and 1 * MS < interval < 50 * MS
    assert naps, "the reader never napped"


@needs_two_cpus
def test_a_paced_reader_naps_and_polls_yielding_when_polling_does_not_pay(
    naps: list[float], sched_yields: YieldCount, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More busy processes than CPUs (fan-out: a writer and three readers on two CPUs): a
    reader of its own with one writer does not poll after every frame, but a steady stream
    it still paces: it naps until just before each frame and then polls yielding the CPU,
    so the writer finds it awake instead of waking it. Every frame arrives whole, in order."""
    name, shape, count = unique_name("paced-yield"), (640,), 200
    with Child(
        "popen", "stream_writer", name=name, shape=list(shape), count=count, interval=2 * MS
    ) as child:
        child.expect("ready")
        with shmring.RingReader.attach(name, start="oldest", timeout=WAIT) as r:
            monkeypatch.setattr(r._p, "spinning_pays", lambda: False)
            child.send("go")
            got = bounded(lambda: collect(r, Pattern(shape), "iter"))
        finish(child)
    assert got.tags == [make_tag(0, n) for n in range(count)]
    assert naps, "the reader never napped"
    assert sched_yields.count > 0, "the reader never polled after a nap"


def _plan_a_nap(w: shmring.RingWriter, r: shmring.RingReader, seconds: float) -> None:
    """Pass one frame, then make the reader's pacer expect the next `seconds` from now (a
    stream of that interval: a nap is at most one interval long)."""
    w.write(np.zeros(w.shape, w.dtype))
    r.read(0).release()
    pacer = r._pacer
    pacer.interval = seconds
    pacer.lead = _pacing.LEAD_MIN
    pacer._ref_seq = r._control[L.C_HEAD] - 1
    pacer._ref_time = time.monotonic()


@needs_two_cpus
def test_a_frame_that_comes_during_a_nap_wakes_the_reader_at_once(
    naps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A nap sleeps in slices of POLL_SLICE and looks for its frame after each: one slice
    # longer than the whole nap, so that only the writer's wake-up can end it early.
    monkeypatch.setattr(_reader, "POLL_SLICE", 3 * WAIT)
    with (
        shmring.RingWriter.create(unique_name("nap"), (64,), np.uint8) as w,
        shmring.RingReader.attach(w.name) as r,
    ):
        _plan_a_nap(w, r, 2 * WAIT)
        reading = Waiter(lambda: r.read(timeout=3 * WAIT))
        reading.start()
        deadline = time.monotonic() + WAIT
        while not naps:  # until the reader is in its nap
            assert time.monotonic() < deadline and reading.is_alive()
        assert r._record[L.R_SLEEPING] == 1  # counted as a sleeper: writers wake it
        written = time.monotonic()
        w.write(np.full(64, 7, np.uint8))
        reading.finish(WAIT)  # a nap that ran its course would take 2 * WAIT
        assert reading.exc is None
        with reading.result as frame:
            assert frame.array[0] == 7
        assert reading.t_end is not None and reading.t_end - written < WAIT


def _timer_slack() -> int:
    slack: int = ctypes.CDLL(None).prctl(30, 0, 0, 0, 0)  # PR_GET_TIMERSLACK
    return slack


@needs_two_cpus
def test_a_nap_leaves_the_threads_timer_slack_as_it_was(naps: list[float]) -> None:
    libc = ctypes.CDLL(None)
    before = _timer_slack()
    libc.prctl(29, 123_456, 0, 0, 0)  # PR_SET_TIMERSLACK
    try:
        with (
            shmring.RingWriter.create(unique_name("slack"), (64,), np.uint8) as w,
            shmring.RingReader.attach(w.name) as r,
        ):
            # A nap is planned only while the frame is not yet due: an interval long enough
            # that a loaded machine's delay before read() does not use it up.
            _plan_a_nap(w, r, 0.2)
            with pytest.raises(shmring.RingTimeout):
                r.read(timeout=1.0)  # naps up to 0.2 s, polls, sleeps, times out
            assert naps and max(naps) <= 0.2
            assert _timer_slack() == 123_456
    finally:
        libc.prctl(29, before, 0, 0, 0)


@needs_two_cpus
def test_ctrl_c_during_a_nap_leaves_no_sleeper_counted(naps: list[float]) -> None:
    """SIGINT while the reader naps: KeyboardInterrupt, the reader is no longer counted as
    a sleeper (writers stop waking it), its timer slack is back, and it reads on."""
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main
    before = _timer_slack()
    with (
        shmring.RingWriter.create(unique_name("nap-int"), (64,), np.uint8) as w,
        shmring.RingReader.attach(w.name) as r,
    ):
        _plan_a_nap(w, r, 2 * WAIT)

        def interrupt_the_nap() -> None:
            deadline = time.monotonic() + WAIT
            while not naps and time.monotonic() < deadline:
                time.sleep(0.001)  # polling for the nap to start, not synchronising on time
            signal.pthread_kill(main, signal.SIGINT)

        interrupter = threading.Thread(target=interrupt_the_nap, daemon=True)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            r.read(timeout=3 * WAIT)
        interrupter.join(WAIT)
        assert naps  # it was napping when interrupted
        assert r._record[L.R_SLEEPING] == 0
        assert r._control[L.C_READER_WAITERS] & 0xFFFF_FFFF == 0
        assert _timer_slack() == before
        w.write(np.full(64, 3, np.uint8))
        with r.read(WAIT) as frame:
            assert frame.array[0] == 3
