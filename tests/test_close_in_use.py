"""close() while another thread's call waits on the same handle raises RuntimeError and
closes nothing (docs/API.md); the waiting call then goes on and returns what it would have.
Before, only a wait inside the C objects was refused: a wait in Python found its handle
closed under it and failed with EBADF."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import WAIT, started_thread, unique_name, wait_until_asleep_in_futex

from shmring import RingReader, RingWriter

SHAPE = (4,)


def _frame(value: int) -> np.ndarray:
    return np.full(SHAPE, value, np.uint8)


def test_closing_a_writer_while_another_thread_waits_for_space_raises() -> None:
    with RingWriter.create(unique_name(), SHAPE, np.uint8, slots=2) as w:
        r = RingReader.attach(w.name, start="oldest")
        w.write(_frame(0), WAIT)
        w.write(_frame(1), WAIT)  # the ring is full: the reader holds both back
        out: list[Any] = []

        def write() -> None:
            try:
                out.append(w.write(_frame(2), 3 * WAIT))
            except BaseException as exc:  # reported to the test
                out.append(exc)

        thread = started_thread(write)
        wait_until_asleep_in_futex(thread)
        with pytest.raises(RuntimeError, match="under way"):
            w.close()
        assert not w.closed
        r.read(WAIT).release()  # space: the waiting write goes on
        thread.join(WAIT)
        assert not thread.is_alive(), "the write did not go on"
        assert out == [2]
        r.close()
    assert w.closed


@pytest.mark.parametrize(
    ("policy", "group", "how"),
    [
        ("block", None, "iterate"),
        ("block", "workers", "iterate"),
        ("overwrite", None, "iterate"),
        ("block", None, "read"),
        ("overwrite", None, "latest"),
    ],
)
def test_closing_a_reader_while_another_thread_waits_for_a_frame_raises(
    policy: str, group: str | None, how: str
) -> None:
    with RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4, policy=policy) as w:
        r = RingReader.attach(w.name, group=group, start="oldest")
        out: list[Any] = []

        def take() -> None:
            try:
                if how == "iterate":
                    for frame in r:
                        out.append(int(frame.array[0]))
                        break
                else:
                    frame = r.read(3 * WAIT) if how == "read" else r.latest(3 * WAIT)
                    out.append(int(frame.array[0]))
                    frame.release()
            except BaseException as exc:  # reported to the test
                out.append(exc)

        thread = started_thread(take)
        wait_until_asleep_in_futex(thread)
        with pytest.raises(RuntimeError, match="under way"):
            r.close()
        assert not r.closed
        w.write(_frame(7), WAIT)  # the waiting call takes it
        thread.join(WAIT)
        assert not thread.is_alive(), "the reader's call did not go on"
        assert out == [7]
        r.close()
        assert r.closed
