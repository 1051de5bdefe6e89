"""The shared words Python no longer stores itself (issue 16, item 6): a reader's release word
and the writers' sleeper count are stored by the C core (Taker.release, Publisher.
count_sleeper/uncount_sleeper), and Python's lock-free looks go through load_word.

Real processes and real shared memory: a writer child sleeps for space until the parent's
reader releases a frame; the release itself (in C) bumps the space futex word and wakes it
(otherwise the writer would only find the space at its next liveness round)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import SMALL, WAIT, Child, Pattern, finish, make_tag, unique_name

from shmring import RingReader, RingTimeout, RingWriter
from shmring import _layout as L
from shmring._fastpath import load_word, store_word, wake


def _until(condition: object, what: str, timeout: float = WAIT) -> None:
    """Poll a condition on shared words until it holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.001)


def test_a_release_wakes_the_writer_sleeping_for_space_and_the_count_returns_to_zero() -> None:
    name = unique_name("cw")
    pat = Pattern(SMALL)
    with RingWriter.create(name, SMALL, np.uint8, slots=2) as owner:
        reader = RingReader.attach(name, start="oldest")
        control = owner._p.control
        with Child("spawn", "stream_writer", name=name, create=False, count=4, slots=2) as writer:
            writer.expect("ready")
            writer.send("go")
            held = [reader.read(WAIT), reader.read(WAIT)]  # the ring is full: frames 0 and 1
            _until(lambda: load_word(control, L.C_WRITER_WAITERS) == 1, "the writer's sleep")
            assert load_word(control, L.C_SPACE_WANTED) == 1  # tail 0 + half of 2 slots
            space = load_word(control, L.C_SPACE)
            held.pop(0).release()  # Taker.release: R_RELEASE = 1, then the wake-up, at once
            assert load_word(control, L.C_SPACE) == (space + 1) & 0xFFFFFFFF
            frame = reader.read(WAIT)
            assert frame.seq == 2 and pat.check(frame.array) == make_tag(0, 2)
            held += [frame]
            for frame in held:
                frame.release()
            last = reader.read(WAIT)
            assert last.seq == 3
            last.release()
            assert finish(writer)["seqs"] == [0, 1, 2, 3]
        assert load_word(control, L.C_WRITER_WAITERS) == 0  # counted once, uncounted once
        reader.close()


def test_a_write_that_times_out_leaves_no_sleeper_counted() -> None:
    name = unique_name("cw")
    pat = Pattern(SMALL)
    with (
        RingWriter.create(name, SMALL, np.uint8, slots=1) as writer,
        Child("spawn", "hold_reader", name=name) as reader,
    ):
        reader.expect("ready")
        writer.write(pat.make(make_tag(0, 0)), WAIT)
        assert reader.expect("holding")["holding"] == 0
        with pytest.raises(RingTimeout):
            writer.write(pat.make(make_tag(0, 1)), 0.05)
        assert load_word(writer._p.control, L.C_WRITER_WAITERS) == 0
        assert load_word(writer._record, L.W_SLEEPING) == 0
        reader.send("release")
        reader.expect("done")
        assert reader.join() == 0


def test_load_word_store_word_and_wake_refuse_words_they_do_not_serve() -> None:
    name = unique_name("cw")
    with RingWriter.create(name, SMALL, np.uint8) as writer:
        control = writer._p.control
        with pytest.raises(IndexError):
            load_word(control, L.CONTROL_WORDS + 1000)
        with pytest.raises(IndexError):
            store_word(control, L.CONTROL_WORDS + 1000, 0)
        for bad in (-1, 2**64, "7"):
            with pytest.raises((OverflowError, TypeError)):
                store_word(control, L.C_SPACE_WANTED, bad)  # type: ignore[arg-type]
        store_word(control, L.C_SPACE_WANTED, 2**64 - 2)
        assert control[L.C_SPACE_WANTED] == load_word(control, L.C_SPACE_WANTED) == 2**64 - 2
        store_word(control, L.C_SPACE_WANTED, 0)
        with pytest.raises(ValueError, match="not a futex word"):
            wake(control, L.C_HEAD)
        before = load_word(control, L.C_FRAMES)
        wake(control, L.C_FRAMES)
        assert load_word(control, L.C_FRAMES) == (before + 1) & 0xFFFFFFFF
