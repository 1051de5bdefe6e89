"""Readers joining a ring with a lock-free writer (issue 17, finding 8: attach storms).

A joiner must make the writer see its record before it relies on it (FORMAT.md, "Joining
and leaving", step 7). It used to do that with the plain membarrier, an RCU grace period
spent under the header lock; writers now say in their record (W_EXPEDITED, format 2.1)
that their process takes part in the expedited barrier, and joiners use that one. These
tests check the decision and that every frame survives a churn of joining readers."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SMALL, WAIT, Child, Pattern, split_tag, unique_name

from shmring import RingReader, RingWriter
from shmring import _layout as L
from shmring._sys import BARRIER_REGISTERED, MEMBARRIER_AVAILABLE

pytestmark = pytest.mark.skipif(not MEMBARRIER_AVAILABLE, reason="kernel has no membarrier")

FRAMES = 3000


def test_a_writer_says_its_process_takes_expedited_barriers() -> None:
    name = unique_name("jb")
    with RingWriter.create(name, SMALL, np.uint8) as writer:
        writer.write(np.zeros(SMALL, np.uint8))
        records = [r for r in writer._p.views.writers if r[L.W_STATE] == L.STATE_ACTIVE]
        assert [r[L.W_EXPEDITED] for r in records] == [int(BARRIER_REGISTERED)]


@pytest.mark.skipif(not BARRIER_REGISTERED, reason="kernel has no expedited membarrier")
def test_a_churn_of_readers_quiesces_with_the_expedited_barrier_and_loses_nothing() -> None:
    """A writer child streams FRAMES verified frames while this process attaches and closes
    readers one after another (each reads a frame); a steady reader gets every frame."""
    name = unique_name("jb")
    pattern = Pattern(SMALL)
    with (
        RingWriter.create(name, SMALL, np.uint8, slots=16) as owner,
        RingReader.attach(name, start="oldest") as steady,
        Child("spawn", "stream_writer", name=name, count=FRAMES, create=False) as child,
    ):
        child.expect("ready")
        child.send("go")
        joined = 0
        tags: list[int] = []
        while len(tags) < FRAMES:
            frame = steady.read(WAIT)
            tags.append(split_tag(pattern.check(frame.array))[1])
            frame.release()
            if len(tags) % 30 == 0:
                with RingReader.attach(name) as churner:
                    p = churner._p
                    with p.lock:
                        assert p.other_writers_registered()
                    churner.read(WAIT).release()
                    joined += 1
        assert tags == list(range(FRAMES))
        assert joined == FRAMES // 30
        assert child.recv()["seqs"] == list(range(FRAMES))
        child.join()
        assert owner._p.control[L.C_WRITER_MODE] == L.MODE_EXCLUSIVE


def test_a_writer_that_did_not_register_gets_the_global_barrier() -> None:
    """A 2.0 writer (or one whose kernel refused registration) leaves W_EXPEDITED 0: joiners
    must then fall back to the barrier that reaches every process."""
    name = unique_name("jb")
    with RingWriter.create(name, SMALL, np.uint8) as writer:
        writer.write(np.zeros(SMALL, np.uint8))
        record = next(r for r in writer._p.views.writers if r[L.W_STATE] == L.STATE_ACTIVE)
        with writer._p.lock:
            record[L.W_EXPEDITED] = 0
        with RingReader.attach(name, start="oldest") as reader:
            with reader._p.lock:
                assert not reader._p.other_writers_registered()
            writer.write(np.ones(SMALL, np.uint8))
            with reader.read(WAIT) as frame:
                assert frame.seq == 0
