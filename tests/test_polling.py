"""Polling is decided by who runs, not by who is attached (issue 16, item 3; _cpu_use.py).

A reader polls before it sleeps only while every participant that runs can have a CPU of its
own. Participants that are attached but idle (asleep between frames, waiting for work of
another group, a creator that never writes) must not switch polling off; busy ones must."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import pytest
from conftest import YieldCount, is_ours
from helpers import SMALL, WAIT, Child, unique_name

from shmring import RingReader, RingTimeout, RingWriter, _cpu_use
from shmring._cpu_use import SAMPLE, usable_cpus
from shmring._ring import Participant

CPUS = usable_cpus()


def this_tests_busy_seconds() -> float:
    """machine_busy_seconds() of a machine that runs this test and nothing else: the CPU
    time of this process and of its running descendants (the busy outsiders among them), so
    that another program busy on the machine meanwhile changes no answer."""
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit() and is_ours(int(d))]
    return sum(seconds for pid in pids if (seconds := _cpu_use.cpu_seconds(pid)) is not None)


@pytest.fixture(autouse=True)
def machine_of_this_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cpu_use, "machine_busy_seconds", this_tests_busy_seconds)


@contextmanager
def busy_processes(count: int, ring: str | None = None, busy: bool = True) -> Iterator[None]:
    """`count` child processes, readers attached to `ring` or (None) programs that attach
    to nothing, idle or busy until the block ends."""
    with ExitStack() as stack:
        children = [
            stack.enter_context(
                Child("spawn", "busy_outsider")
                if ring is None
                else Child("spawn", "attached_reader", name=ring, busy=busy)
            )
            for _ in range(count)
        ]
        for child in children:
            child.expect("ready")
        yield
        for child in children:
            child.send("leave")
            child.expect("done")


def measured(p: Participant) -> bool:
    """spinning_pays() once an interval that began after this call has been measured."""
    deadline = time.monotonic() + WAIT
    first = p._cpu_use.intervals
    while p._cpu_use.intervals < first + 2:  # the first may reach back before this call
        p.spinning_pays()
        assert time.monotonic() < deadline, "spinning_pays never measured an interval"
        time.sleep(SAMPLE / 5)  # bounded poll for the sampler's next interval
    return p.spinning_pays()


def pays_once_the_machine_is_quiet(p: Participant) -> bool:
    """Whether spinning_pays() says so for some fresh interval within WAIT: with one busy
    participant beside the poller, it does only while nothing outside the ring keeps
    half a CPU busy (the busy outsiders of the test: they may take a moment to stop)."""
    deadline = time.monotonic() + WAIT
    while not measured(p):
        if time.monotonic() > deadline:
            return False
    return True


def test_no_more_participants_than_cpus_poll_before_a_first_measurement() -> None:
    name = unique_name("poll")
    with (
        RingWriter.create(name, SMALL, np.uint8) as owner,
        RingReader.attach(name) as reader,
    ):
        owner.write(np.zeros(SMALL, np.uint8))  # the owner joins: 2 participants
        assert reader._p.spinning_pays() == (CPUS >= 2)
        assert reader._p._cpu_use.intervals == 0


def test_idle_participants_do_not_switch_polling_off() -> None:
    """More readers attached than CPUs, all but this one idle: polling pays."""
    name = unique_name("poll")
    with (
        RingWriter.create(name, SMALL, np.uint8, max_readers=CPUS + 4),
        RingReader.attach(name) as reader,
        busy_processes(CPUS + 1, name, busy=False),
    ):
        assert measured(reader._p)


def test_busy_participants_switch_polling_off() -> None:
    """As many busy processes as CPUs beside this reader: polling would take a CPU from one
    of them, so it does not pay."""
    name = unique_name("poll")
    with (
        RingWriter.create(name, SMALL, np.uint8, max_readers=CPUS + 4),
        RingReader.attach(name) as reader,
        busy_processes(CPUS, name),
    ):
        assert not measured(reader._p)


def test_busy_processes_outside_the_ring_switch_polling_off() -> None:
    """A writer and its reader on a machine whose other CPUs run other programs: polling
    would take the CPU from the writer or from them (rule 4). It pays again once they
    stop."""
    name = unique_name("poll")
    with (
        RingWriter.create(name, SMALL, np.uint8, max_readers=4),
        RingReader.attach(name) as reader,
        busy_processes(1, name),  # the ring's other participant, busy
    ):
        assert pays_once_the_machine_is_quiet(reader._p)
        with busy_processes(CPUS - 1):
            assert not measured(reader._p)
        assert pays_once_the_machine_is_quiet(reader._p)


@pytest.mark.parametrize(("writers", "group"), [(1, None), (2, None), (1, "workers")])
def test_a_reader_among_several_writers_or_in_a_group_yields_while_it_polls(
    writers: int, group: str | None, sched_yields: YieldCount, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When polling does not pay, a reader of a ring that several writers share, or a group
    member, still polls for `spin`, yielding the CPU before each look (as those writers do
    for space); a reader of its own with one writer sleeps at once. Either way the wait ends
    at its timeout."""
    name = unique_name("poll")
    with RingWriter.create(name, SMALL, np.uint8) as first, ExitStack() as stack:
        for writer in [first] + [
            stack.enter_context(RingWriter.attach(name)) for _ in range(writers - 1)
        ]:
            writer.write(np.zeros(SMALL, np.uint8))  # joins: a writer from its first frame
        reader = stack.enter_context(RingReader.attach(name, start="latest", group=group))
        reader.read(WAIT).release()  # the newest frame; none is left
        monkeypatch.setattr(reader._p, "spinning_pays", lambda: False)
        sched_yields.count = 0
        started = time.monotonic()
        with pytest.raises(RingTimeout):
            reader.read(0.2)
        assert 0.2 <= time.monotonic() - started < 0.2 + WAIT
        assert (sched_yields.count > 0) == (writers > 1 or group is not None)
        frames = iter(reader)  # iteration takes the same wait
        first.write(np.ones(SMALL, np.uint8))
        assert int(next(frames).array[0]) == 1
