"""SIGKILL at the worst moments: nobody else may deadlock.

* the only writer killed while holding the header lock / inside ``claim``: waiting readers
  get ``WriterGone`` within 1 s;
* one of two writers killed there: the other writer and the reader carry on;
* a reader killed while holding a frame (block policy): a blocked writer proceeds within 1 s.

The killed child is reaped only after the survivors reacted: a dead-but-unreaped (zombie)
participant must count as dead.
"""

from __future__ import annotations

import os
import signal
import time
import warnings

import numpy as np
import pytest
from helpers import (
    SLACK,
    SMALL,
    WAIT,
    Child,
    Pattern,
    Waiter,
    collect,
    make_tag,
    seg_path,
    unique_name,
    wait_pid_exit,
)

from shmring import RingReader, RingTimeout, RingWriter, WriterGone

BOUND = 1.0  # documented: survivors react within 1 s
GONE_WAIT = 5.0  # a read that must end in WriterGone long before this


def _orphan_removed(name: str) -> None:
    """The killed creator's segment was unlinked by the last participant to leave (nobody
    else would ever have), so the name is free again: creating it does not warn."""
    assert not os.path.exists(seg_path(name))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with RingWriter.create(name, SMALL, np.uint8) as w, RingReader.attach(name) as r:
            w.write(np.full(SMALL, 3, np.uint8), 1.0)
            with r.read(1.0) as f:
                assert f.seq == 0 and int(f.array[0]) == 3


@pytest.mark.parametrize(
    ("mode", "kind"),
    [("lock", "spawn"), ("lock", "popen"), ("claim", "fork"), ("claim", "popen")],
)
def test_only_writer_killed_readers_get_writer_gone(mode: str, kind: str) -> None:
    name = unique_name()
    pat = Pattern(SMALL)
    with Child(kind, "lock_holder", name=name, create=True, mode=mode, frames=3) as kid:
        kid.expect("ready")
        r = RingReader.attach(name, start="oldest")
        kid.send("go")
        kid.expect("wrote")
        assert collect(r, pat, limit=3).tags == [make_tag(9, i) for i in range(3)]
        kid.send("hold")
        kid.expect("holding")
        waiter = Waiter(lambda: r.read(GONE_WAIT))
        waiter.start()
        kid.kill()
        t_kill = time.monotonic()
        waiter.finish()
        assert isinstance(waiter.exc, WriterGone), repr(waiter.exc)
        assert waiter.t_end is not None and waiter.t_end - t_kill < BOUND + SLACK
        assert kid.join() == -signal.SIGKILL
    # not deadlocked afterwards either: reads fail fast, new readers can attach
    t0 = time.monotonic()
    with pytest.raises(WriterGone):
        r.read(GONE_WAIT)
    assert time.monotonic() - t0 < BOUND + SLACK
    with RingReader.attach(name, start="oldest") as late:
        assert collect(late, pat, limit=3).tags == [make_tag(9, i) for i in range(3)]
        with pytest.raises(WriterGone):
            late.read(GONE_WAIT)
    r.close()
    _orphan_removed(name)


@pytest.mark.parametrize("mode", ["lock", "claim"])
def test_one_of_two_writers_killed_others_carry_on(mode: str) -> None:
    name = unique_name()
    pat = Pattern(SMALL)
    slots = 8
    with (
        RingWriter.create(name, SMALL, np.uint8, slots=slots, max_writers=2, max_readers=2) as w,
        RingReader.attach(name, start="oldest") as r,
        Child("spawn", "lock_holder", name=name, create=False, mode=mode, frames=3) as kid,
    ):
        kid.expect("ready")
        kid.send("go")
        kid.expect("wrote")
        assert collect(r, pat, limit=3).tags == [make_tag(9, i) for i in range(3)]
        kid.send("hold")
        kid.expect("holding")
        waiter = Waiter(lambda: w.write(pat.make(make_tag(0, 0)), WAIT))
        waiter.start()
        if mode == "claim":  # a claim in progress elsewhere must not stop other writers
            waiter.finish(BOUND + SLACK)
        kid.kill()
        t_kill = time.monotonic()
        waiter.finish()
        assert waiter.exc is None, repr(waiter.exc)
        # Two writers sequence their frames: a claim holds its number (3), published as a
        # skip once its writer is found dead.
        first = 4 if mode == "claim" else 3
        assert waiter.result == first
        if mode == "lock":
            assert waiter.t_end is not None and waiter.t_end - t_kill < BOUND + SLACK
        kid.wait_dead()  # (not reaped: a zombie)
        # the dead writer's record, lock and claimed buffer are all recovered
        with RingWriter.attach(name) as w2:  # max_writers=2: the dead one's record is free
            seqs = [first]
            for i in range(1, 3 * slots):
                writer = w if i % 2 else w2
                seqs.append(writer.write(pat.make(make_tag(0, i)), 2.0))
                got = collect(r, pat, limit=1, timeout=2.0)
                assert got.seqs == [seqs[-2]]
            assert seqs == list(range(first, first + 3 * slots))
        assert kid.join() == -signal.SIGKILL
        got = collect(r, pat, limit=1, timeout=2.0)
        assert got.tags == [make_tag(0, 3 * slots - 1)]  # never the abandoned claim's bytes
        w.close()
        assert collect(r, pat).tags == []


def test_reader_killed_holding_a_frame_unblocks_writer() -> None:
    name = unique_name()
    pat = Pattern(SMALL)
    with (
        RingWriter.create(name, SMALL, np.uint8, slots=4, max_readers=2) as w,
        RingReader.attach(name, start="oldest") as alive,
        Child("spawn", "hold_reader", name=name) as kid,
    ):
        kid.expect("ready")
        n = 0
        got = []
        while True:  # fill the ring: the killed-to-be reader holds frame 0 and reads no more
            assert n < 100, "block policy never blocked the writer"
            try:
                w.write(pat.make(make_tag(0, n)), 0.0)
            except RingTimeout:
                break
            n += 1
            if n == 1:
                assert kid.expect("holding")["holding"] == 0
            got += collect(alive, pat, limit=1, timeout=1.0).tags
        assert n >= 2
        with pytest.raises(RingTimeout):
            w.write(pat.make(make_tag(0, n)), 0.1)  # really blocked, not just slow
        waiter = Waiter(lambda: w.write(pat.make(make_tag(0, n)), WAIT))
        waiter.start()
        kid.kill()
        t_kill = time.monotonic()
        waiter.finish()
        assert waiter.exc is None, repr(waiter.exc)
        assert waiter.result == n
        assert waiter.t_end is not None and waiter.t_end - t_kill < BOUND + SLACK
        assert kid.join() == -signal.SIGKILL
        for i in range(n + 1, n + 20):  # its reader record is gone: nothing blocks any more
            w.write(pat.make(make_tag(0, i)), 1.0)
            got += collect(alive, pat, limit=1, timeout=1.0).tags
        got += collect(alive, pat, limit=1, timeout=1.0).tags
        assert got == [make_tag(0, i) for i in range(n + 20)]  # the live reader lost nothing
        with RingReader.attach(name, start="latest") as r2:  # its record was freed
            w.write(pat.make(make_tag(0, n + 20)), 1.0)
            assert collect(r2, pat, limit=2, timeout=1.0).seqs == [n + 19, n + 20]


def test_a_killed_reader_is_no_longer_counted_among_the_readers() -> None:
    """`readers` and wait_for_readers count live readers: a reader SIGKILLed while idle
    (nothing reaps its record, as nobody waits on it) was counted for ever, and a producer's
    wait_for_readers(1) returned at once with no consumer left."""
    name = unique_name()
    with (
        RingWriter.create(name, SMALL, np.uint8) as w,
        Child("spawn", "hold_reader", name=name) as kid,
    ):
        kid.expect("ready")
        assert w.readers == 1 and w.wait_for_readers(1, 0) == 1
        kid.kill()
        assert kid.join() == -signal.SIGKILL
        assert w.readers == 0
        with pytest.raises(RingTimeout, match="0 of 1 readers"):
            w.wait_for_readers(1, 0.1)
        with RingReader.attach(name):
            assert w.wait_for_readers(1, 0) == 1 and w.readers == 1


def test_killed_reader_in_group_does_not_lose_the_groups_frames() -> None:
    """A group member killed while holding a frame: the other member carries on and
    receives every later frame (the dead member's cursor share is not stuck)."""
    name = unique_name()
    pat = Pattern(SMALL)
    with (
        RingWriter.create(name, SMALL, np.uint8, slots=4) as w,
        RingReader.attach(name, group="g") as alive,
        Child("fork", "hold_reader", name=name, group="g") as kid,
    ):
        kid.expect("ready")
        w.write(pat.make(make_tag(0, 0)), 1.0)
        assert kid.expect("holding")["holding"] == 0  # `alive` has not read yet
        kid.kill()
        assert kid.join() == -signal.SIGKILL
        got = []
        for i in range(1, 12):  # more than `slots` frames: frame 0's slot was recovered
            w.write(pat.make(make_tag(0, i)), 2.0)
            got += collect(alive, pat, limit=1, timeout=2.0).tags
        assert got == [make_tag(0, i) for i in range(1, 12)]


def test_creator_killed_after_forking_a_child_that_outlives_it() -> None:
    """The writer forked a child (which inherited its descriptors) and was then SIGKILLed:
    the grandchild must not keep the dead writer looking alive."""
    name = unique_name()
    pat = Pattern(SMALL)
    with Child("popen", "fork_then_hold", name=name) as kid:
        kid.expect("ready")
        r = RingReader.attach(name, start="oldest")
        kid.send("go")
        grandchild = kid.expect("grandchild")["grandchild"]
        assert collect(r, pat, limit=2, timeout=1.0).tags == [make_tag(9, 0), make_tag(9, 1)]
        waiter = Waiter(lambda: r.read(GONE_WAIT))
        waiter.start()
        kid.kill()
        t_kill = time.monotonic()
        waiter.finish()
        assert isinstance(waiter.exc, WriterGone), repr(waiter.exc)
        assert waiter.t_end is not None and waiter.t_end - t_kill < BOUND + SLACK
        assert kid.join() == -signal.SIGKILL
    wait_pid_exit(grandchild)  # it leaves once its parent's pipe end is gone
    r.close()
    _orphan_removed(name)
