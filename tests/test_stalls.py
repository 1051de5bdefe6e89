"""Issue 17, findings 1, 5 and 7: a stopped lock holder, a truncated ring, a forged head.

* A participant that holds the header lock and is stopped (SIGSTOP) is not dead, so the
  kernel keeps its lock: every call with a timeout must still return or raise RingTimeout
  within about max(timeout, LOCK_FLOOR), and close() within CLOSE_LIMIT (it takes none).
* A ring truncated under a waiting reader: the reader raises RingCorrupted instead of dying
  of SIGBUS, and the creator's close() still unlinks the name.
* head, tail or the next number to claim past the sequence limit is RingCorrupted.

The stopped or waiting participant is an unrelated ``python -c`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from helpers import (
    SMALL,
    WAIT,
    Child,
    Waiter,
    assert_loop_kept_running,
    let_go_position,
    readline_within,
    seg_path,
    unique_name,
    wait_for_state,
    writer_held_back,
)

from shmring import (
    HandleInUse,
    ParticipantStalled,
    RingCorrupted,
    RingReader,
    RingTimeout,
    RingWriter,
)
from shmring import _layout as L
from shmring._lock import LOCK_FLOOR
from shmring._ring import CLOSE_LIMIT

HANG_BOUND = 2.0  # the generous bound above each timeout: a hang check, not a perf assertion
TIMEOUT = 0.5


def _child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _expect_line(proc: subprocess.Popen[str], want: str) -> None:
    assert proc.stdout is not None
    line = readline_within(proc.stdout).strip()
    if line != want:
        proc.kill()  # so that its stderr ends
        _, err = proc.communicate(timeout=WAIT)
        raise AssertionError(f"child said {line!r}, not {want!r}; stderr: {err}")


def _bounded(call: Callable[[], Any], limit: float) -> BaseException | None:
    """Run `call`; return what it raised (None if nothing), failing if it took too long."""
    start = time.monotonic()
    try:
        call()
        raised: BaseException | None = None
    except Exception as exc:
        raised = exc
    elapsed = time.monotonic() - start
    assert elapsed < limit, f"{call} took {elapsed:.2f} s (limit {limit} s): a hang"
    return raised


@pytest.fixture
def stopped_holder() -> Iterator[Callable[[str, str], int]]:
    """Start a child that attaches to a ring as `role` ("writer" or "reader"), takes its
    header lock and stops itself; returns its pid. Killed and reaped afterwards."""
    procs: list[subprocess.Popen[str]] = []

    def start(name: str, role: str) -> int:
        proc = _child(
            f"""
            import os, signal, numpy as np
            from shmring import RingReader, RingWriter
            if {role!r} == "writer":
                h = RingWriter.attach({name!r})
                h.write(np.zeros({SMALL}, np.uint8), 5.0)
            else:
                h = RingReader.attach({name!r})
            h._lock.acquire(5.0)
            print("holding", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
            """
        )
        procs.append(proc)
        _expect_line(proc, "holding")
        wait_for_state(proc.pid, "T")
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(WAIT)


def _assert_timeout(exc: BaseException | None, pid: int) -> None:
    assert isinstance(exc, ParticipantStalled), repr(exc)
    text = f"{exc} {exc.__cause__}"  # close() chains the lock's timeout
    assert f"process {pid} holds it" in text, text  # the holder, named from its record


def test_overwrite_ring_calls_time_out_while_the_lock_holder_is_stopped(
    stopped_holder: Callable[[str, str], int],
) -> None:
    """With two writers (the ring sequenced) writes and claims take no lock, so they go on;
    a group member's reads, attaching and closing need it, and time out naming the holder."""
    name = unique_name()
    frame = np.ones(SMALL, np.uint8)
    limit = TIMEOUT + HANG_BOUND
    w = RingWriter.create(name, SMALL, np.uint8, slots=4, policy="overwrite", max_writers=2)
    w.write(frame, WAIT)  # joined: with the child, two writers sequence their frames
    member = RingReader.attach(name, group="g")
    pid = stopped_holder(name, "writer")
    head = w._control[L.C_HEAD]
    assert _bounded(lambda: w.write(frame, timeout=TIMEOUT), limit) is None

    def claim() -> None:
        with w.claim(TIMEOUT) as slot:
            slot[...] = 1

    assert _bounded(claim, limit) is None
    assert _bounded(lambda: asyncio.run(w.awrite(frame, timeout=TIMEOUT)), limit) is None
    assert w._control[L.C_HEAD] == head + 3  # all published beside the stopped lock holder
    _assert_timeout(_bounded(lambda: member.read(TIMEOUT), limit), pid)
    _assert_timeout(_bounded(lambda: member.latest(TIMEOUT), limit), pid)
    _assert_timeout(_bounded(lambda: RingReader.attach(name, timeout=TIMEOUT), limit), pid)
    _assert_timeout(_bounded(lambda: RingWriter.attach(name, timeout=TIMEOUT), limit), pid)
    _assert_timeout(_bounded(lambda: asyncio.run(member.aread(TIMEOUT)), limit), pid)
    close_limit = CLOSE_LIMIT + HANG_BOUND
    _assert_timeout(_bounded(member.close, close_limit), pid)
    _assert_timeout(_bounded(w.close, close_limit), pid)
    assert member.closed and w.closed
    assert not os.path.exists(seg_path(name))  # the creator unlinked it all the same


def test_block_ring_calls_time_out_while_a_reader_holding_the_lock_is_stopped(
    stopped_holder: Callable[[str, str], int],
) -> None:
    name = unique_name()
    limit = TIMEOUT + HANG_BOUND
    with RingWriter.create(name, SMALL, np.uint8, slots=2) as w:
        member = RingReader.attach(name, group="g")
        w.write(np.zeros(SMALL, np.uint8), WAIT)
        pid = stopped_holder(name, "reader")
        # The exclusive writer and group members take no lock: they go on.
        assert _bounded(lambda: w.write(np.zeros(SMALL, np.uint8), TIMEOUT), limit) is None
        with member.read(TIMEOUT) as got:
            assert got.seq == 0
        assert isinstance(
            _bounded(lambda: w.write(np.zeros(SMALL, np.uint8), TIMEOUT), limit), RingTimeout
        )  # full: the stopped reader holds frames back
        _assert_timeout(_bounded(lambda: RingReader.attach(name, timeout=TIMEOUT), limit), pid)
        _assert_timeout(_bounded(lambda: RingWriter.attach(name, timeout=TIMEOUT), limit), pid)
        assert isinstance(_bounded(lambda: w.wait_for_readers(4, TIMEOUT), limit), RingTimeout)
        _assert_timeout(_bounded(member.close, CLOSE_LIMIT + HANG_BOUND), pid)
        with pytest.raises(RingTimeout):
            w.close()
    assert not os.path.exists(seg_path(name))


# How the child waits: read()'s general path, or iteration's wait in C (spin=0: no polling).
_WAITS = {
    "read": ("r = RingReader.attach({name!r})", "r.read(5.0).release()", "r.read(5.0)"),
    "iterate": ("r = RingReader.attach({name!r}, spin=0); it = iter(r)", "next(it)", "next(it)"),
}


@pytest.mark.parametrize("wait", list(_WAITS))
def test_truncated_ring_raises_in_a_waiting_reader_and_the_creator_still_unlinks(
    wait: str,
) -> None:
    name = unique_name()
    path = seg_path(name)
    w = RingWriter.create(name, SMALL, np.uint8, slots=4)
    w.write(np.zeros(SMALL, np.uint8), WAIT)  # the stream has begun: the reader waits
    attach, first, second = (line.format(name=name) for line in _WAITS[wait])
    proc = _child(
        f"""
        from shmring import RingCorrupted, RingReader
        {attach}
        {first}
        print("reading", flush=True)
        try:
            {second}
        except RingCorrupted:
            print("RingCorrupted", flush=True)
        try:
            r.close()
        except RingCorrupted:
            print("closed", flush=True)
        """
    )
    try:
        _expect_line(proc, "reading")
        wait_for_state(proc.pid, "S")  # asleep in its wait
        os.truncate(path, 0)
        _expect_line(proc, "RingCorrupted")
        _expect_line(proc, "closed")
        assert proc.wait(WAIT) == 0  # not killed by SIGBUS
        with pytest.raises(RingCorrupted):
            w.wait_for_readers(2, TIMEOUT)
        with pytest.raises(RingCorrupted):  # no longer the fast path, which checks no size
            w.write(np.zeros(SMALL, np.uint8), TIMEOUT)
    finally:
        proc.kill()
        proc.wait(WAIT)
        with pytest.raises(RingCorrupted):
            w.close()
    assert w.closed and not os.path.exists(path)


def test_handles_of_a_truncated_ring_left_open_leave_quietly_at_exit() -> None:
    """A program that found its ring truncated and exits without closing: the finalizers
    leave (the creator's unlinks the name) without a RingCorrupted traceback on stderr,
    which nobody could act on any more."""
    name = unique_name()
    proc = _child(
        f"""
        import os, numpy as np
        from shmring import RingCorrupted, RingReader, RingWriter
        w = RingWriter.create({name!r}, {SMALL!r}, np.uint8)
        r = RingReader.attach({name!r})
        os.truncate({seg_path(name)!r}, 0)
        try:
            w.wait_for_readers(2, 0)
        except RingCorrupted:
            print("found", flush=True)
        """
    )
    out, err = proc.communicate(timeout=WAIT)
    assert (proc.returncode, out, err) == (0, "found\n", "")
    assert not os.path.exists(seg_path(name))


def test_a_handle_another_found_truncated_refuses_close_while_its_call_waits() -> None:
    """Marked truncated by another handle of the process while a thread waits in it, a
    handle still refuses close() (HandleInUse) until that call ends, with RingCorrupted:
    closing under it left the call an OSError (EBADF) from its closed descriptor."""
    name = unique_name()
    w = RingWriter.create(name, SMALL, np.uint8)
    finder = RingWriter.attach(name)
    waiter = Waiter(lambda: w.wait_for_readers(2, WAIT))
    waiter.start()
    deadline = time.monotonic() + WAIT
    while not w._p.calls:  # counted: in its wait
        assert time.monotonic() < deadline, "the wait never began"
        time.sleep(0.001)  # polling a condition with a deadline, not synchronising
    os.truncate(seg_path(name), 0)
    with pytest.raises(RingCorrupted):
        finder.wait_for_readers(2, 0)  # looks at the size first, and marks `w` too
    with pytest.raises(HandleInUse):
        w.close()
    waiter.finish()
    assert isinstance(waiter.exc, RingCorrupted), repr(waiter.exc)
    for handle in (finder, w):
        with pytest.raises(RingCorrupted):
            handle.close()
    assert w.closed and not os.path.exists(seg_path(name))


def test_timeouts_name_the_writer_whose_claim_the_others_wait_for() -> None:
    """Two writers (the ring sequenced), one holding a claim it does not publish: the
    reader waits for that frame and the other writer for the slots behind it. Both
    timeouts name the frame and that writer's process, not a lagging reader."""
    name = unique_name()
    frame = np.zeros(SMALL, np.uint8)
    with (
        RingWriter.create(name, SMALL, np.uint8, slots=4) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        w.write(frame, WAIT)
        r.read(WAIT).release()
        proc = _child(
            f"""
            import threading
            from shmring import RingWriter
            w = RingWriter.attach({name!r})
            with w.claim():
                print("claimed", flush=True)
                threading.Event().wait(60)  # holding it until killed
            """
        )
        try:
            _expect_line(proc, "claimed")
            for _ in range(3):  # frames 2-4: with frame 1 the ring's 4 slots
                w.write(frame, WAIT)
            held_up = f"frame 1 is claimed by writer process {proc.pid}, which has not published"
            with pytest.raises(RingTimeout, match=held_up):
                w.write(frame, TIMEOUT)
            with pytest.raises(RingTimeout, match=held_up):
                r.read(TIMEOUT)
        finally:
            proc.kill()
            proc.wait(WAIT)


TRUNCATED_CALLS = (
    "w.write(frame, 0.1)",
    "w.claim(0.1).__enter__()",
    "w.skip(1, 0.1)",
    "r.read(0.1)",
    "r.latest(0.1)",
    "next(iter(r))",
    "r.close()",
    "w.close()",
)


def test_once_a_truncated_ring_raised_no_handle_of_the_process_touches_it() -> None:
    """A handle that raised RingCorrupted for a truncated ring, and every other handle of
    its process on that ring, raise it again at every call instead of touching the mapping
    (the writer's next write faulted: SIGBUS); the creator's close still unlinks."""
    name = unique_name()
    proc = _child(
        f"""
        import os, numpy as np
        from shmring import RingCorrupted, RingReader, RingWriter
        frame = np.zeros({SMALL!r}, np.uint8)
        w = RingWriter.create({name!r}, frame.shape, np.uint8, slots=4)
        w.write(frame)  # joined: its writes take the C fast path
        r = RingReader.attach({name!r}, start="oldest")
        os.truncate({seg_path(name)!r}, 0)
        try:
            w.wait_for_readers(2, 0.1)  # a wait: it looks at the file's size first
        except RingCorrupted:
            print("found", flush=True)
        for call in {TRUNCATED_CALLS!r}:
            try:
                eval(call)
            except RingCorrupted:
                print(call, flush=True)
        print(os.path.exists({seg_path(name)!r}), flush=True)
        """
    )
    try:
        for line in ("found", *TRUNCATED_CALLS, "False"):
            _expect_line(proc, line)
        assert proc.wait(WAIT) == 0
    finally:
        proc.kill()
        proc.wait(WAIT)


@pytest.mark.parametrize("word", ["head", "tail"])
def test_forged_head_or_tail_is_ring_corrupted(word: str) -> None:
    name = unique_name()
    slots = 4
    forged = L.NONE  # 2**64 - 1, past the sequence limit
    w = RingWriter.create(name, SMALL, np.uint8, slots=slots)
    r = RingReader.attach(name, start="oldest")
    try:
        for value in range(2):
            w.write(np.full(SMALL, value, np.uint8), WAIT)
        for _ in range(2):
            r.read(WAIT).release()
        if word == "head":  # with a matching descriptor: the frame "before" it looks published
            w._control[L.C_HEAD] = forged
            w._p.views.descriptors[(forged - 1) % slots][L.D_SEQ] = forged - 1
            with pytest.raises(RingCorrupted, match="sequence limit"):
                r.latest(TIMEOUT)
        else:
            w._control[L.C_TAIL] = forged
        with pytest.raises(RingCorrupted):
            r.read(TIMEOUT)
        with pytest.raises(RingCorrupted):
            next(iter(r))
        with pytest.raises(RingCorrupted):
            for _ in range(slots + 1):
                w.write(np.zeros(SMALL, np.uint8), TIMEOUT)
    finally:
        r.close()
        with contextlib.suppress(RingCorrupted):  # it may find the damage too: it unlinks
            w.close()
    assert not os.path.exists(seg_path(name))


def test_forged_next_number_is_ring_corrupted() -> None:
    name = unique_name()
    with (
        RingWriter.create(name, SMALL, np.uint8, slots=4, max_writers=2) as w,
        RingWriter.attach(name) as w2,
        RingReader.attach(name, start="oldest") as r,
    ):
        w.write(np.zeros(SMALL, np.uint8), WAIT)  # two writers: the ring is sequenced
        assert w._p.sequenced()
        r.read(WAIT).release()
        w._control[L.C_NEXT_SEQ] = L.SEQ_LIMIT
        with pytest.raises(RingCorrupted):
            w2.write(np.zeros(SMALL, np.uint8), TIMEOUT)
        with pytest.raises(RingCorrupted):
            r.read(TIMEOUT)
        w._control[L.C_NEXT_SEQ] = w._control[L.C_HEAD]  # repaired: they close cleanly


def test_a_forged_next_number_cannot_hold_a_writer_that_kept_a_number() -> None:
    """An overwrite writer among several, with a number kept from a stalled publish (its
    record's claimed_seq), must not walk head towards a forged next number: that loop held
    the GIL and took no signal. Run in a child, which a hang would not take down with
    the suite."""
    script = f"""
import numpy as np, shmring, shmring._layout as L
a = shmring.RingWriter.create({unique_name()!r}, (4,), np.uint8, slots=4, policy="overwrite")
a.write(np.zeros(4, np.uint8))
b = shmring.RingWriter.attach(a.name)  # two writers: the ring is sequenced
assert a._p.sequenced()
a._control[L.C_NEXT_SEQ] = L.SEQ_LIMIT - 1
for descriptor in a._p.views.descriptors:
    descriptor[L.D_SEQ] = L.SEQ_LIMIT - 2  # every position "taken by a later number"
a._record[L.W_CLAIMED_SEQ] = 1  # a kept number
try:
    a.write(np.ones(4, np.uint8), timeout=0.1)
except shmring.RingCorrupted:
    print("RingCorrupted")
for writer in (b, a):  # (the creator unlinks the ring, whatever else it finds)
    try:
        writer.close()
    except shmring.RingCorrupted:
        pass
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT
    )
    assert done.stdout == "RingCorrupted\n", (done.stdout, done.stderr)


def test_a_head_forged_for_a_moment_does_not_move_latest_past_every_frame() -> None:
    name = unique_name()
    with (
        RingWriter.create(name, SMALL, np.uint8, slots=8) as w,
        RingReader.attach(name) as r,
    ):
        w.write(np.zeros(SMALL, np.uint8), WAIT)
        assert r.latest(WAIT).seq == 0
        head = w._control[L.C_HEAD]
        w._control[L.C_HEAD] = 1 << 40  # forged, for one call
        with pytest.raises(RingCorrupted, match="inconsistent") as raised:
            r.latest(TIMEOUT)
        # what to do, as every damage found says it
        assert raised.value.args[0].endswith(
            f"the header was overwritten: remove the ring (shmring rm --force {name}) and "
            "create it again"
        )
        w._control[L.C_HEAD] = head  # put back
        for value in range(1, 4):
            w.write(np.full(SMALL, value, np.uint8), WAIT)
        with r.read(WAIT) as frame:
            assert frame.seq == 1 and int(frame.array.flat[0]) == 1


class _Ticker:
    """A task that ticks every 1 ms on the running loop: its gaps show whether anything
    blocked the loop meanwhile."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.001)
            now = time.monotonic()
            self.gaps.append(now - last)
            last = now

    async def assert_loop_kept_running(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        assert_loop_kept_running(self.gaps)


async def _timed(call: Any) -> tuple[BaseException | None, float]:
    """Await `call`; what it raised (None if nothing) and how long it took."""
    start = time.monotonic()
    try:
        await call
        raised: BaseException | None = None
    except Exception as exc:
        raised = exc
    return raised, time.monotonic() - start


def test_async_calls_wait_for_a_stopped_lock_holder_on_the_loop(
    stopped_holder: Callable[[str, str], int],
) -> None:
    """Awaitable calls whose step needs the header lock that a stopped process holds wait
    for it on the loop (other tasks run: issue 19's 50 ms bound) as long as the blocking
    calls wait, max(timeout, LOCK_FLOOR), then raise the lock's RingTimeout; calls that need
    no lock go on meanwhile."""
    name = unique_name()
    frame = np.ones(SMALL, np.uint8)
    w = RingWriter.create(name, SMALL, np.uint8, slots=4, policy="overwrite", max_writers=2)
    w.write(frame, WAIT)
    member = RingReader.attach(name, group="g")
    pid = stopped_holder(name, "writer")

    async def main() -> None:
        ticker = _Ticker()
        calls = {
            "aattach": RingReader.aattach(name, timeout=TIMEOUT),
            "aread": member.aread(TIMEOUT),
            "alatest": member.alatest(TIMEOUT),
        }
        for call, awaitable in calls.items():
            raised, took = await _timed(awaitable)
            _assert_timeout(raised, pid)
            assert LOCK_FLOOR <= took < LOCK_FLOOR + HANG_BOUND, (call, took)
        assert await w.awrite(frame, TIMEOUT) >= 0  # sequenced with the child: no lock
        await ticker.assert_loop_kept_running()

    try:
        asyncio.run(main())
    finally:
        with contextlib.suppress(RingTimeout):
            member.close()
        with contextlib.suppress(RingTimeout):
            w.close()
    assert not os.path.exists(seg_path(name))


def _active_writers(w: RingWriter) -> int:
    return sum(record[L.W_STATE] == L.STATE_ACTIVE for record in w._p.views.writers)


def test_a_join_that_times_out_gives_its_writer_record_back() -> None:
    """A creator's first write joins; with another writer inside its publish step (forged:
    as if it were stopped there) the join's switch to shared mode times out. The record it
    took goes back each time, so retrying never runs into RingFull; the awaitable write
    waits on the loop meanwhile. Once the other writer leaves its step, the write joins."""
    name = unique_name()
    frame = np.ones(SMALL, np.uint8)
    with (
        RingWriter.create(name, SMALL, np.uint8, slots=4, max_writers=2) as w,
        RingWriter.attach(name) as other,
    ):
        other.write(frame, WAIT)
        other._record[L.W_IN_PUBLISH] = 1  # forged: "stopped inside its publish step"
        for _ in range(2):  # max_writers=2: a record kept by the first would fail the second
            raised = _bounded(lambda: w.write(frame, 0.0), LOCK_FLOOR + HANG_BOUND)
            assert isinstance(raised, ParticipantStalled), raised
            assert "publish step" in str(raised)
            assert _active_writers(w) == 1 and w._control[L.C_WRITERS] == 1

        async def main() -> None:
            ticker = _Ticker()
            raised, took = await _timed(w.awrite(frame, TIMEOUT))
            assert isinstance(raised, ParticipantStalled), raised
            assert "publish step" in str(raised)
            assert LOCK_FLOOR <= took < LOCK_FLOOR + HANG_BOUND, took
            await ticker.assert_loop_kept_running()

        asyncio.run(main())
        assert _active_writers(w) == 1 and w._control[L.C_WRITERS] == 1
        assert w._control[L.C_WRITER_MODE] == L.MODE_EXCLUSIVE
        other._record[L.W_IN_PUBLISH] = 0  # it left its step
        assert w.write(frame, WAIT) == 1
        assert _active_writers(w) == 2 and w._control[L.C_WRITER_MODE] == L.MODE_SHARED


def test_a_recording_held_up_by_a_stopped_lock_holder_says_so_once(
    stopped_holder: Callable[[str, str], int], tmp_path: Any
) -> None:
    """`shmring record` of a group (its reads take the lock in an overwrite ring) waits while
    a stopped process holds the lock, and says so on stderr once, naming it; resumed, the
    holder leaves and the recording ends as asked."""
    name, path = unique_name(), tmp_path / "stalled.mcap"
    with RingWriter.create(name, SMALL, np.uint8, slots=4, policy="overwrite") as w:
        command = ["record", name, str(path), "--group", "g", "--seconds", "3"]
        recorder = subprocess.Popen(
            [sys.executable, "-m", "shmring", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            w.wait_for_readers(1, WAIT)
            w.write(np.ones(SMALL, np.uint8), WAIT)
            pid = stopped_holder(name, "writer")
            assert recorder.stderr is not None
            warning = readline_within(recorder.stderr)
            assert warning.startswith("shmring record: ") and f"process {pid} holds" in warning
            assert warning.rstrip().endswith("waiting for it"), warning
            os.kill(pid, signal.SIGCONT)  # it releases the lock and exits
            out, err = recorder.communicate(timeout=WAIT)
        finally:
            recorder.kill()
            recorder.wait(WAIT)
    assert recorder.returncode == 0, err
    assert "ended by time limit" in out and err == "", (out, err)


def test_a_repair_waits_for_a_stopped_writer_only_as_long_as_the_call_may() -> None:
    """An overwrite ring of two writers, one SIGKILLed (its record needs a repair, which
    resequences the ring) and the other stopped inside its publish step (forged). An
    attach with timeout 0 repairs under the lock and waits for the stopped writer: about
    LOCK_FLOOR, as any wait of the call, not the 5 s of a join's quiesce."""
    name = unique_name()
    frame = np.ones(SMALL, np.uint8)
    with RingWriter.create(name, SMALL, np.uint8, slots=4, policy="overwrite") as w:
        w.write(frame, WAIT)
        with Child(
            "spawn", "lock_holder", name=name, create=False, policy="overwrite", mode="none"
        ) as dead:
            dead.expect("ready")
            dead.send("go")
            dead.expect("wrote")
            dead.kill()
            dead.wait_dead()
        assert w._p.sequenced()
        w._record[L.W_IN_PUBLISH] = 1  # forged: stopped inside its publish step
        try:
            raised = _bounded(lambda: RingReader.attach(name, timeout=0.0), LOCK_FLOOR + 1.0)
            assert isinstance(raised, ParticipantStalled), raised
            assert "did not leave its publish step" in str(raised)
        finally:
            w._record[L.W_IN_PUBLISH] = 0
        with RingReader.attach(name, timeout=WAIT):  # the repair goes through now
            pass


def test_an_interrupted_stalled_write_keeps_its_buffer_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write held back by another writer's position, interrupted in its pause (Ctrl-C):
    its claimed buffer and number stay the writer's, as after a timeout, and its next write
    publishes under that number; nothing is lost from the pool."""
    name, slots = unique_name(), 4
    frame = np.ones(SMALL, np.uint8)
    with writer_held_back(name, slots) as (w, held):

        def interrupted(seconds: float) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(time, "sleep", interrupted)  # the stalled write's pause
        with pytest.raises(KeyboardInterrupt):
            w.write(frame, WAIT)
        monkeypatch.undo()
        claimed = w._record[L.W_CLAIMED]
        assert claimed != L.NONE and w._stranded == claimed
        let_go_position(w, held, slots)
        assert w.write(frame, WAIT) == held + slots
        assert w._record[L.W_CLAIMED] == L.NONE and w._stranded == -1


@pytest.mark.parametrize("shape", [None, (1,)], ids=["plain", "own shape"])
def test_a_claim_held_back_by_a_position_honours_its_timeout(
    shape: tuple[int, ...] | None,
) -> None:
    """A claim whose publish waits for another writer's position (a stopped writer holds
    it) raises ParticipantStalled at claim()'s timeout, counted from entering the claim,
    and keeps its buffer and number for the writer's next write. A plain claim is taken in
    C (Claim, _publisher.c), one with its own shape by the general path: both bounded."""
    name, slots = unique_name(), 4
    with writer_held_back(name, slots) as (w, held):
        claim = w.claim(TIMEOUT, shape=shape)

        def fill_and_publish() -> None:
            with claim as slot:
                slot[...] = 1

        started = time.monotonic()
        raised = _bounded(fill_and_publish, TIMEOUT + HANG_BOUND)
        assert isinstance(raised, ParticipantStalled), raised
        assert time.monotonic() - started >= TIMEOUT * 0.9
        claimed = w._record[L.W_CLAIMED]
        assert claimed != L.NONE and w._stranded == claimed
        let_go_position(w, held, slots)
        assert w.write(np.ones(SMALL, np.uint8), WAIT) == held + slots


def test_a_claim_given_back_after_a_stalled_write_leaves_no_hole_at_close() -> None:
    """A write held back by another writer's position times out and keeps its number; the
    next claim (handed the kept buffer) is given back, its `with` block having raised; then
    the writer closes. The kept number must be placed (as a skip) when it leaves, or head
    stops there and the frames the other writers publish after it never reach readers."""
    name, slots = unique_name(), 4
    with writer_held_back(name, slots) as (w, held), RingReader.attach(name) as r:
        with pytest.raises(RingTimeout):
            w.write(np.ones(SMALL, np.uint8), 0.05)
        assert w._record[L.W_CLAIMED_SEQ] == held + slots  # kept for its next publish
        with pytest.raises(ValueError), w.claim():
            raise ValueError("the producer failed while it filled the claim")
        let_go_position(w, held, slots)
        with RingWriter.attach(name) as survivor:  # before the creator's close unlinks the name
            w.close()
            last = survivor.write(np.full(SMALL, 7, np.uint8), WAIT)
        got: list[tuple[int, int]] = []
        with contextlib.suppress(RingTimeout):
            while not got or got[-1][1] != 7:
                with r.read(0.5) as frame:
                    got.append((frame.seq, int(frame.array.flat[0])))
        assert got and got[-1] == (last, 7), got


def test_a_write_held_back_by_a_position_lets_other_threads_run() -> None:
    """A blocking write waiting for another writer's position does not hold the GIL: a
    thread of the same process counts on meanwhile."""
    name, slots = unique_name(), 4
    frame = np.ones(SMALL, np.uint8)
    gaps: list[float] = []
    stop = threading.Event()

    def count() -> None:
        last = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    with writer_held_back(name, slots) as (w, _):
        counter = threading.Thread(target=count)
        counter.start()
        try:
            with pytest.raises(ParticipantStalled):
                w.write(frame, 0.2)
        finally:
            stop.set()
            counter.join(WAIT)
    # Holding the GIL through a C wait shows as gaps of ~20 ms that add up to most of the
    # 0.2 s; a scheduling hiccup of the machine is one gap now and then, so count the sum.
    held = sum(gap for gap in gaps if gap > 0.010)
    assert len(gaps) > 100 and held < 0.06, sorted(gaps)[-5:]
