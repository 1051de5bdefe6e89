"""close() while another thread's call waits on the same handle raises RuntimeError and
closes nothing (docs/API.md); the waiting call then goes on and returns what it would have.
Before, only a wait inside the C objects was refused: a wait in Python found its handle
closed under it and failed with EBADF. A call that begins while close() runs is refused
too (ShmringError), and a forked child may close what its parent's threads were using."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from helpers import WAIT, forked, started_thread, unique_name, wait_until_asleep_in_futex

from shmring import HandleInUse, RingReader, RingTimeout, RingWriter, ShmringError, inspect_ring
from shmring import _layout as L

SHAPE = (4,)


def _frame(value: int) -> np.ndarray:
    return np.full(SHAPE, value, np.uint8)


def _claim_and_fill(w: RingWriter) -> int:
    claim = w.claim(3 * WAIT)
    with claim as slot:
        slot[...] = 2
    assert claim.seq is not None
    return claim.seq


def _close_refused_while_waiting(
    handle: RingWriter | RingReader, call: Callable[[], Any]
) -> tuple[threading.Thread, list[Any]]:
    """Run `call` in a thread until it sleeps in futex(2); then `handle.close()` raises
    RuntimeError and closes nothing. The thread, and a list that gets what the call
    returned (or raised)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # reported to the test
            out.append(exc)

    thread = started_thread(run)
    wait_until_asleep_in_futex(thread)
    with pytest.raises(HandleInUse, match="under way"):
        handle.close()
    assert not handle.closed
    return thread, out


WRITER_CALLS: dict[str, Callable[[RingWriter], Any]] = {
    "write": lambda w: w.write(_frame(2), 3 * WAIT),
    "claim": _claim_and_fill,
    "skip": lambda w: w.skip(1, 3 * WAIT),
    "wait_for_readers": lambda w: w.wait_for_readers(2, 3 * WAIT),
}


@pytest.mark.parametrize("call", WRITER_CALLS)
def test_closing_a_writer_while_another_thread_waits_in_a_call_raises(call: str) -> None:
    with RingWriter.create(unique_name(), SHAPE, np.uint8, slots=2) as w:
        r = RingReader.attach(w.name, start="oldest")
        w.write(_frame(0), WAIT)
        w.write(_frame(1), WAIT)  # the ring is full: the reader holds both back
        thread, out = _close_refused_while_waiting(w, lambda: WRITER_CALLS[call](w))
        second = RingReader.attach(w.name)  # the second reader wait_for_readers waits for
        r.read(WAIT).release()  # space for the others
        thread.join(WAIT)
        assert not thread.is_alive(), "the call did not go on"
        assert out == [2], out  # the third frame's number (or the two readers counted)
        second.close()
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
    policy: str, group: str | None, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4, policy=policy) as w:
        r = RingReader.attach(w.name, group=group, start="oldest")
        # Polling pays: the wait is Python's (_wait_for), not one sleep in the C Taker,
        # which refused close() already.
        monkeypatch.setattr(r._p, "spinning_pays", lambda: True)

        def take() -> int:
            if how == "iterate":
                frame = next(iter(r))
            else:
                frame = r.read(3 * WAIT) if how == "read" else r.latest(3 * WAIT)
            with frame:
                return int(frame.array[0])

        thread, out = _close_refused_while_waiting(r, take)
        w.write(_frame(7), WAIT)  # the waiting call takes it
        thread.join(WAIT)
        assert not thread.is_alive(), "the reader's call did not go on"
        assert out == [7]
        r.close()
        assert r.closed


def test_a_call_that_begins_while_close_runs_is_refused() -> None:
    """close() has begun (it waits for the header lock, say) when another thread's call
    counts itself: the call raises ShmringError, instead of finding the handle torn down
    under it."""
    with RingWriter.create(unique_name(), SHAPE, np.uint8) as w:
        r = RingReader.attach(w.name)
        r._refuse_close_in_call()  # the first step of close(): nothing under way
        with pytest.raises(ShmringError, match="being closed"):
            r.read(0.1)
        r.close()
        assert r.closed


@pytest.mark.parametrize("kind", ["reader", "writer"])
def test_a_call_counted_after_close_began_does_not_stop_it(kind: str) -> None:
    """close() has marked the handle closing when another thread's call counts itself (it
    has yet to look at the mark): close() goes on and closes, and the call, looking next,
    raises. (The finalizer took the count for a call under way, returned having closed
    nothing, and was spent: the handle could never be closed.)"""
    with RingWriter.create(unique_name(), SHAPE, np.uint8) as owner:
        handle: RingReader | RingWriter = (
            RingReader.attach(owner.name) if kind == "reader" else RingWriter.attach(owner.name)
        )
        handle._refuse_close_in_call()  # close()'s first step: nothing under way
        handle._p.calls += 1  # the other thread's call counts itself here
        try:
            handle._finalizer()  # close()'s next step
            assert handle.closed
            assert handle._p.closing or handle._p.closed  # what the call looks at next
        finally:
            handle._p.calls -= 1
        assert (owner.readers, owner._control[L.C_WRITERS]) == (0, 0)


def test_a_forked_child_closes_a_handle_its_parents_thread_was_waiting_in() -> None:
    with RingWriter.create(unique_name(), SHAPE, np.uint8) as w:
        r = RingReader.attach(w.name, start="oldest")
        out: list[Any] = []
        thread = started_thread(lambda: out.append(int(r.read(3 * WAIT).array[0])))
        wait_until_asleep_in_futex(thread)

        def child(conn: Any) -> None:
            r.close()  # the waiting thread is the parent's: nothing to refuse here
            conn.send(r.closed)

        with forked(child) as (conn, process):
            assert conn.poll(WAIT) and conn.recv() is True
            process.join(WAIT)
        assert not r.closed and os.getpid() == r._p.pid
        w.write(_frame(5), WAIT)
        thread.join(WAIT)
        assert out == [5]
        r.close()


@pytest.mark.parametrize("shape", [None, (2,)], ids=["plain", "own shape"])
@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_close_while_a_claim_is_open_is_refused_and_the_claim_publishes(
    policy: str, shape: tuple[int, ...] | None
) -> None:
    """close() while a claim's with block runs (in this thread, as from a signal handler,
    or in another): refused, nothing closed. It used to give the claimed buffer back while
    the claimer still filled it, for other writers' frames to be torn. A plain claim of a
    writer that has joined runs in C (Claim, _publisher.c), one with its own shape in
    Python."""
    name = unique_name()
    with (
        RingWriter.create(name, SHAPE, np.uint8, slots=4, policy=policy) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        w.write(np.zeros(SHAPE, np.uint8), WAIT)
        r.read(WAIT).release()
        claim = w.claim(WAIT, shape=shape)
        with claim as slot:
            slot[...] = 5
            with pytest.raises(RuntimeError, match="claim on this writer is open"):
                w.close()
        assert not w.closed and claim.seq == 1
        with r.read(WAIT) as frame:
            assert int(frame.array[0]) == 5
        w.close()
        assert w.closed


@pytest.mark.parametrize(
    "how", ["write", "write with meta", "smaller frame", "claim", "write with meta, and skip"]
)
def test_two_threads_writing_through_one_writer_get_handle_in_use_not_a_broken_ring(
    how: str,
) -> None:
    """A write (claim, skip) that takes its buffer in Python while another thread's holds one:
    it took that thread's buffer, claimed in the writer's record, for a strand of its own
    and published it too (two frames in one buffer; the free list broken: RingCorrupted for
    every process, within a few hundred frames). Now each call either goes through or
    raises HandleInUse; every frame published arrives once, whole, and the ring stays
    sound."""
    name, shape = unique_name("twothreads"), (64, 64)
    per_thread = 1000
    with (
        RingWriter.create(name, shape, np.uint8, slots=8, meta_size=4),
        RingWriter.attach(name) as w,  # (the supervisor's wiring: joined at attach)
        RingReader.attach(name, start="oldest") as r,
    ):
        refused: list[int] = [0, 0]
        skips = how.endswith("skip")

        def write(thread: int) -> None:
            for n in range(per_thread):
                value = (thread * 100 + n) % 256
                frame = np.full(shape, value, np.uint8)
                try:
                    if skips and thread == 1:
                        w.skip(1, WAIT)  # (a gap: no frame, one number)
                    elif how == "write":
                        w.write(frame, WAIT)
                    elif how.startswith("write with meta"):
                        w.write(frame, WAIT, meta=bytes([value]))
                    elif how == "smaller frame":
                        w.write(frame[:32], WAIT)
                    else:
                        with w.claim(WAIT) as slot:
                            slot[...] = value
                except HandleInUse:
                    refused[thread] += 1

        seqs: list[int] = []
        writers = [threading.Thread(target=write, args=(k,)) for k in range(2)]

        def read() -> None:
            while True:
                done = not any(t.is_alive() for t in writers)  # (before the look)
                try:
                    frame = r.read(0.1)
                except RingTimeout:
                    if done:
                        return  # every write had returned, and nothing more came
                    continue
                with frame:
                    value = int(frame.array.flat[0])
                    assert (frame.array == value).all(), f"frame {frame.seq} is torn"
                    assert frame.meta in (b"", bytes([value])), frame.meta
                    seqs.append(frame.seq)

        for thread in writers:
            thread.start()
        read()
        for thread in writers:
            thread.join(WAIT)
        if skips:  # the frames of thread 0, in order, among the gaps' numbers
            assert 0 < per_thread - refused[0] == len(seqs) and seqs == sorted(set(seqs))
            assert r.dropped == per_thread - refused[1]
        else:
            assert 0 < 2 * per_thread - sum(refused) == len(seqs)
            assert seqs == list(range(len(seqs)))  # each once, in order
        assert inspect_ring(name).problems == []
        w.write(np.zeros(shape, np.uint8), WAIT)  # the writer still works
