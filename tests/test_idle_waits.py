"""An idle wait wakes a few times a second, not ten (_timing.Sleeps).

Each wake-up of a waiting call runs its liveness checks with cold caches, which on a VM cost
more than the checks themselves (docs/performance.md, the idle reader's CPU); a wait's sleeps
therefore grow from POLL_SLICE to LONGEST_SLICE while nothing comes. Frames still wake it at
once (a futex wake-up), and what the slices bound still holds: a dead writer is reported
within a second, and every timeout is honoured."""

from __future__ import annotations

import itertools
import resource
import time

import numpy as np
import pytest
from helpers import (
    SLACK,
    SMALL,
    WAIT,
    Child,
    Waiter,
    unique_name,
    wait_until_asleep_in_futex,
)

from shmring import RingReader, RingTimeout, RingWriter, WriterGone, _reader, _sys
from shmring._timing import LONGEST_SLICE, POLL_SLICE, Sleeps

GONE_BOUND = 1.0  # documented: waiting readers get WriterGone within a second


def test_sleeps_double_up_to_the_longest_slice_and_stop_at_the_deadline() -> None:
    sleeps = Sleeps()
    lengths = [sleeps.next(None) for _ in range(6)]
    assert lengths[0] == POLL_SLICE
    assert all(b == min(2 * a, LONGEST_SLICE) for a, b in itertools.pairwise(lengths))
    assert lengths[-1] == LONGEST_SLICE <= GONE_BOUND / 2
    deadline = time.monotonic() + POLL_SLICE / 4
    assert 0 < Sleeps().next(deadline) <= POLL_SLICE / 4
    assert Sleeps().next(time.monotonic() - 1) < 0  # past: the caller raises its timeout


def test_an_idle_reader_sleeps_longer_the_longer_nothing_comes() -> None:
    """1.5 s with no frame takes 5 sleeps (0.1, 0.2, 0.4, 0.4, 0.4 s), not 15 of 0.1 s; the
    read still ends at its timeout."""
    timeout = 1.5
    with RingWriter.create(unique_name(), SMALL, np.uint8) as w, RingReader.attach(w.name) as r:
        outcome: dict[str, float] = {}

        def idle_read() -> None:
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
            start = time.monotonic()
            with pytest.raises(RingTimeout):
                r.read(timeout)
            outcome["seconds"] = time.monotonic() - start
            outcome["sleeps"] = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - before

        reading = Waiter(idle_read)
        reading.start()
        reading.finish(timeout + WAIT)
        assert reading.exc is None, repr(reading.exc)
    assert timeout <= outcome["seconds"] < timeout + SLACK
    assert outcome["sleeps"] <= 8, outcome  # slices of POLL_SLICE would take 15


def test_a_reader_idle_for_long_still_reports_a_dead_writer_within_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = unique_name()
    sleeps: list[float] = []
    real_wait = _sys.futex_wait  # what _reader imported

    def recorded_wait(address: int, expected: int, timeout: float) -> None:
        sleeps.append(timeout)
        real_wait(address, expected, timeout)

    monkeypatch.setattr(_reader, "futex_wait", recorded_wait)
    with Child("spawn", "lock_holder", name=name, create=True, mode="none", frames=1) as kid:
        kid.expect("ready")
        with RingReader.attach(name, start="oldest") as r:
            kid.send("go")
            kid.expect("wrote")
            with r.read(WAIT) as frame:
                assert frame.seq == 0
            kid.send("hold")
            kid.expect("holding")
            waiter = Waiter(lambda: r.read(10 * WAIT))
            waiter.start()
            deadline = time.monotonic() + WAIT
            while LONGEST_SLICE not in sleeps:  # its sleeps have grown to the longest
                assert time.monotonic() < deadline and waiter.is_alive()
                time.sleep(0.01)  # bounded poll
            wait_until_asleep_in_futex(waiter)  # in that longest sleep
            kid.kill()
            killed = time.monotonic()
            waiter.finish()
            assert isinstance(waiter.exc, WriterGone), repr(waiter.exc)
            assert waiter.t_end is not None and waiter.t_end - killed < GONE_BOUND + SLACK
