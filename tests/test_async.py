"""asyncio: `async for`, awaitable reads and writes, cancellation, close, crashes, timeouts.

Every test runs its coroutine on the standard event loop and, when uvloop is installed (the
`async` extra), on uvloop too. Writers live in other processes where the issue asks for it;
waits on the loop are bounded by asyncio.timeout / the API's own timeouts.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pytest
from helpers import (
    SLACK,
    SMALL,
    WAIT,
    Child,
    Pattern,
    assert_loop_kept_running,
    let_go_position,
    make_tag,
    unique_name,
    writer_held_back,
)

import shmring
from shmring import (
    HandleInUse,
    RingReader,
    RingTimeout,
    RingWriter,
    ShmringError,
    WriterGone,
    _pacing,
)
from shmring import _layout as L
from shmring._fastpath import Ready
from shmring._lock import LockBusy
from shmring._sys import futex_wake
from shmring._timing import POLL_SLICE

Runner = Callable[[Coroutine[Any, Any, None]], None]
GONE_BOUND = 1.0  # WriterGone after the writer's death, as for the blocking reader


def _uvloop_run() -> Runner:
    uvloop = pytest.importorskip("uvloop")
    return uvloop.run  # type: ignore[no-any-return]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a coroutine to completion on the standard loop or on uvloop."""
    if request.param == "uvloop":
        return _uvloop_run()
    return asyncio.run


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Yield to the loop until `condition()` holds (bounded)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def waiting(handle: RingReader | RingWriter) -> bool:
    """The handle's task sleeps in its sleeper thread."""
    return handle._waiting is not None


def sleeper_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"shmring-sleeper {name}"]


async def no_sleeper_left(name: str) -> None:
    await until(lambda: not sleeper_threads(name))


# ---------------------------------------------------------------- async for, other tasks run


def test_async_for_2000_frames_while_a_ticker_ticks(run: Runner) -> None:
    name = unique_name()
    pat = Pattern(SMALL)
    count = 2000

    async def main() -> None:
        with Child("spawn", "stream_writer", name=name, count=count, interval=0.0003) as kid:
            kid.expect("ready")
            reader = await RingReader.aattach(name, start="oldest", timeout=WAIT)
            gaps: list[float] = []
            done = asyncio.Event()

            async def tick() -> None:
                last = time.monotonic()
                while not done.is_set():
                    await asyncio.sleep(0.001)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.create_task(tick())
            kid.send("go")
            tags = []
            async with asyncio.timeout(WAIT):
                async for frame in reader:
                    tags.append(pat.check(frame.array))
            done.set()
            await ticker
            reader.close()
            assert tags == [make_tag(0, n) for n in range(count)]
            assert statistics.median(gaps) < 0.005, sorted(gaps)[-5:]
            assert_loop_kept_running(gaps)
            assert len(kid.recv()["seqs"]) == count

    run(main())


def test_published_frames_are_handed_over_without_suspending(run: Runner) -> None:
    """While frames are there, each `async for` step takes one at once (no trip through
    the loop: another task does not run in between) and releases the previous one."""
    name = unique_name()
    slots = 8

    async def main() -> None:
        with (
            RingWriter.create(name, SMALL, np.uint8, slots=slots) as w,
            RingReader.attach(name, start="oldest") as r,
        ):
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            for n in range(slots):
                w.write(np.full(SMALL, n, np.uint8), 0.0)
            frames = aiter(r)
            previous = await anext(frames)  # (the first step may go through the loop)
            at_first = ticks
            for n in range(1, slots):
                frame = await anext(frames)
                assert int(frame.array[0]) == n and previous._reader is None
                previous = frame
            assert ticks == at_first
            for n in range(slots - 1):  # every slot but the held one is free again
                w.write(np.full(SMALL, n, np.uint8), 0.0)
            # A step that needs no wait is a coroutine all the same (Ready: see _taker.c).
            frame = await asyncio.create_task(anext(frames))
            assert int(frame.array[0]) == 0 and previous._reader is None
            ticker.cancel()
            with pytest.raises(asyncio.CancelledError):
                await ticker
        ready = Ready(5)
        assert await ready == 5
        with pytest.raises(RuntimeError, match="already awaited"):
            await ready

    run(main())


def test_a_ready_given_up_hands_its_value_back_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ready(value, owner): throw() and close() before the value was given hand it to
    owner._unsent, once; a throw() of no exception gives nothing up; an owner that fails
    to take it back does not replace the thrown exception (a cancellation stays one)."""
    back: list[int] = []
    unraisable: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda what: unraisable.append(what.exc_value))

    class Owner:
        def _unsent(self, value: int) -> None:
            back.append(value)
            if value == 3:
                raise KeyError(value)

    ready = Ready(1, Owner())
    with pytest.raises(TypeError, match="needs an exception"):
        ready.throw(3)  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        ready.throw(asyncio.CancelledError())
    ready.close()  # given back already: once
    Ready(2, Owner()).close()
    with pytest.raises(StopIteration):
        Ready(9, Owner()).send(None)  # given: nothing to hand back
    with pytest.raises(asyncio.CancelledError):
        Ready(3, Owner()).throw(asyncio.CancelledError)  # its KeyError: reported, not raised
    assert back == [1, 2, 3]
    assert [type(error) for error in unraisable] == [KeyError]


def test_a_steady_stream_is_paced_by_the_async_reader(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A camera-like stream (one frame every 2 ms) from another process: every frame arrives
    in order, and the reader learned the pace and napped (on a timer the loop watches)
    between frames, to poll on the loop when the next one is due (as the blocking reader
    does)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("nobody polls or naps with more participants than CPUs")
    name, count = unique_name(), 150
    pat = Pattern(SMALL)
    naps: list[float] = []
    real_arm = shmring._sys.MonotonicTimer.arm

    def recorded_arm(timer: shmring._sys.MonotonicTimer, when: float) -> None:
        naps.append(when)
        real_arm(timer, when)

    monkeypatch.setattr(shmring._sys.MonotonicTimer, "arm", recorded_arm)

    async def main() -> None:
        with Child("spawn", "stream_writer", name=name, count=count, interval=0.002) as kid:
            kid.expect("ready")
            with await RingReader.aattach(name, start="oldest", timeout=WAIT) as r:
                kid.send("go")
                async with asyncio.timeout(WAIT):
                    tags = [pat.check(frame.array) async for frame in r]
                timer = r._timer
            assert len(kid.recv()["seqs"]) == count
        assert tags == [make_tag(0, n) for n in range(count)]
        assert timer is not None and timer.fileno() == -1  # close() closed the nap's timerfd
        # Naps happen only once the pace is learned (the value learned depends on how the
        # machine scheduled the writer: a late writer catches up in a burst; test_pacing.py
        # checks the estimate itself).
        assert naps, "the reader never napped"

    run(main())


# ---------------------------------------------------------------- cancellation


def test_cancelled_read_loses_no_frame_block(run: Runner) -> None:
    name = unique_name()

    async def main() -> None:
        with (
            RingWriter.create(name, SMALL, np.uint8) as w,
            RingReader.attach(name, start="oldest") as r,
        ):
            for cancel_after_publish in (False, True):
                task = asyncio.create_task(r.aread())
                await until(lambda: waiting(r))
                if cancel_after_publish:  # the wake-up is on its way when the task is cancelled
                    seq = w.write(np.full(SMALL, 7, np.uint8))
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                if not cancel_after_publish:
                    seq = w.write(np.full(SMALL, 7, np.uint8))
                with await r.aread(1.0) as frame:
                    assert frame.seq == seq and int(frame.array[0]) == 7
            # async for after a cancelled step gets the frame too
            task = asyncio.create_task(anext(aiter(r)))
            await until(lambda: waiting(r))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            seq = w.write(np.full(SMALL, 8, np.uint8))
            frame = await asyncio.wait_for(anext(aiter(r)), WAIT)
            assert frame.seq == seq
        await no_sleeper_left(name)  # leaks no thread

    run(main())


def test_a_step_given_up_before_it_ran_takes_no_frame(run: Runner) -> None:
    """`async for` takes a frame published already when anext() is called (Ready). A step
    that is then cancelled before its task ran, timed out at once or closed hands that frame
    to the next step, of whatever kind: no frame lost, none counted dropped, none held for
    ever (the ring keeps flowing past its slots). A step dropped unawaited is a step taken,
    as a next() whose result is dropped (a finalizer cannot put a frame back: see _taker.c)."""
    name, slots = unique_name(), 4

    async def main() -> None:
        with (
            RingWriter.create(name, SMALL, np.uint8, slots=slots) as w,
            RingReader.attach(name, start="oldest") as r,
        ):
            frames, got = aiter(r), []
            async with asyncio.timeout(WAIT):  # (a frame lost: the next step waits for ever)
                for n in range(0, 8 * slots, 2):
                    w.write(np.full(SMALL, n, np.uint8), 0.0)
                    got.append(int((await anext(frames)).array[0]))  # held, as r._last
                    w.write(np.full(SMALL, n + 1, np.uint8), 0.0)
                    how = n // 2 % 3  # each gives up a step that took frame n + 1 (Ready)
                    if how == 0:  # a task cancelled before it ever ran
                        task = asyncio.create_task(anext(frames))
                        task.cancel()
                        with pytest.raises(asyncio.CancelledError):
                            await task  # (it gives the step up when it runs)
                    elif how == 1:  # "one if it is there", in asyncio
                        with pytest.raises(TimeoutError):
                            await asyncio.wait_for(anext(frames), 0)
                    else:
                        anext(frames).close()
                    if n // 2 % 2:
                        got.append(int((await anext(frames)).array[0]))
                    else:  # a step of another kind gets it too
                        with r.read(0.0) as frame:
                            got.append(int(frame.array[0]))
            assert got == list(range(8 * slots))
            assert r.dropped == 0
            w.write(np.full(SMALL, 1, np.uint8), 0.0)
            w.write(np.full(SMALL, 2, np.uint8), 0.0)
            step = anext(frames)  # takes the first of them
            del step
            assert int((await anext(frames)).array[0]) == 2

    run(main())


def test_cancelled_nap_leaves_no_sleeper_counted(run: Runner) -> None:
    """A task cancelled while it naps before a frame that is due (a paced stream) is no
    longer counted as a sleeper, frees its sleeper thread, and the frame published after
    the cancellation reaches the next read."""
    name = unique_name()

    async def main() -> None:
        with RingWriter.create(name, SMALL, np.uint8) as w, RingReader.attach(name) as r:
            w.write(np.zeros(SMALL, np.uint8))
            (await r.aread(0.0)).release()
            pacer = r._pacer  # the next frame is due in 2 * WAIT: a long nap
            pacer.interval = _pacing.MAX_INTERVAL
            pacer._ref_seq = r._control[L.C_HEAD] - 1
            pacer._ref_time = time.monotonic() + 2 * WAIT - _pacing.MAX_INTERVAL
            task = asyncio.create_task(r.aread())
            await until(lambda: waiting(r))
            assert r._record[L.R_SLEEPING] == 1  # napping as a counted sleeper
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert r._record[L.R_SLEEPING] == 0 and not r._counted
            seq = w.write(np.full(SMALL, 3, np.uint8))
            with await r.aread(1.0) as frame:
                assert frame.seq == seq and int(frame.array[0]) == 3
        await no_sleeper_left(name)

    run(main())


def test_cancelled_read_counts_evicted_frames_overwrite(run: Runner) -> None:
    name = unique_name()
    slots = 6

    async def main() -> None:
        with (
            RingWriter.create(
                name, SMALL, np.uint8, slots=slots, policy="overwrite", max_readers=2, max_writers=1
            ) as w,
            RingReader.attach(name, start="oldest") as r,
        ):
            task = asyncio.create_task(r.aread())
            await until(lambda: waiting(r))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            published = 3 * slots
            for n in range(published):
                w.write(np.full(SMALL, n, np.uint8), 0.0)
            got = 0
            while True:
                try:
                    frame = await r.aread(0.0)
                except RingTimeout:
                    break
                with frame:
                    got += 1
            assert got > 0 and got + r.dropped == published, (got, r.dropped)

    run(main())


# ---------------------------------------------------------------- close, timeouts, idle CPU


def test_close_from_the_loop_ends_a_waiting_iteration(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique_name()
    # Each sleep of the wait lasts the whole test unless close() wakes it.
    monkeypatch.setattr(shmring._timing, "POLL_SLICE", 3 * WAIT)

    async def main() -> None:
        with RingWriter.create(name, SMALL, np.uint8):
            r = RingReader.attach(name)

            async def iterate() -> None:
                async for _ in r:
                    pass

            task = asyncio.create_task(iterate())
            await until(lambda: waiting(r))
            t0 = time.monotonic()
            r.close()
            with pytest.raises(ShmringError, match="closed"):
                await asyncio.wait_for(task, WAIT)
            assert time.monotonic() - t0 < SLACK  # promptly: not after a sleep's slice or timeout
            await no_sleeper_left(name)

    run(main())


class ClosedFromAThreadAt:
    """A trace function (`trace`) that, at the first call of `handle`'s method `method`,
    starts `handle.close()` in another thread (as a thread switch there would), waits
    until that close has begun, gives it 50 ms to close under the step, and notes whether
    it did (`closed_meanwhile`); `outcome` gets what the close returned or raised."""

    def __init__(self, handle: RingReader, method: str) -> None:
        self.handle, self.method = handle, method
        self.outcome: list[BaseException | None] = []
        self.closed_meanwhile: list[bool] = []
        self.thread = threading.Thread(target=self._close)

    def _close(self) -> None:
        try:
            self.handle.close()
            self.outcome.append(None)
        except BaseException as exc:
            self.outcome.append(exc)

    def trace(self, frame: Any, event: str, arg: object) -> Any:
        if event == "call" and frame.f_code.co_name == self.method and not self.thread.ident:
            self.thread.start()
            deadline = time.monotonic() + WAIT
            while not self.handle._p.closing and time.monotonic() < deadline:
                time.sleep(0.001)  # bounded: until the close has begun
            time.sleep(0.05)  # the closer's chance to close under the step
            self.closed_meanwhile.append(self.handle._p.closed)
        return None

    def join(self) -> None:
        self.thread.join(WAIT)


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_close_from_a_thread_waits_for_the_loops_step(run: Runner, policy: str) -> None:
    """`await asyncio.to_thread(r.close)` (docs/API.md) while a task's step touches the ring
    on the loop's thread: close() waits for that step to end instead of unmapping the ring
    under it (the step met a released memoryview or a closed descriptor: ValueError,
    OSError); the task then finds the handle closed. The closer starts inside the step, as
    a thread switch there would, and the step goes on once the close has begun."""
    name = unique_name()
    taking = "_take_pinned" if policy == "overwrite" else "_take_own"

    async def main() -> None:
        with RingWriter.create(name, SMALL, np.uint8, policy=policy) as w:
            r = RingReader.attach(name)
            w.write(np.zeros(SMALL, np.uint8), WAIT)
            closer = ClosedFromAThreadAt(r, taking)
            sys.settrace(closer.trace)
            try:
                got = await r.aread(WAIT)
            finally:
                sys.settrace(None)
            assert got.seq == 0
            closer.join()
            assert closer.closed_meanwhile == [False]  # it waited for the step
            assert closer.outcome == [None] and r.closed
            with pytest.raises(ShmringError, match="closed"):
                await r.aread(WAIT)

    run(main())


@pytest.mark.parametrize("at", ["spinning_pays", "_nap_plan", "_poll_window"])
def test_close_from_a_thread_between_a_waits_looks(run: Runner, at: str) -> None:
    """The looks a wait makes between two awaits are steps too: a close() from another
    thread begun at one of them (a thread switch there) waits for it (it closed under it
    before: at spinning_pays, which reads the ring's counts, a released memoryview), and
    the task raises HandleClosed."""
    name = unique_name()

    async def main() -> None:
        with RingWriter.create(name, SMALL, np.uint8, policy="overwrite"):
            r = RingReader.attach(name)
            if at != "spinning_pays":  # (to reach the other two whatever the CPUs do)
                r._p.spinning_pays = lambda: True  # type: ignore[method-assign]
            closer = ClosedFromAThreadAt(r, at)
            sys.settrace(closer.trace)
            try:
                with pytest.raises(ShmringError, match="clos"):
                    await r.aread(WAIT)
            finally:
                sys.settrace(None)
            closer.join()
            assert closer.closed_meanwhile == [False]  # it waited for the step
            assert closer.outcome == [None] and r.closed

    run(main())


def test_close_inside_a_step_of_its_own_thread_is_refused_at_once() -> None:
    """A close() that a signal handler (or a finalizer) makes inside the loop's step, in
    the step's own thread, cannot wait for the step: HandleInUse at once, nothing closed."""
    name = unique_name()
    with RingWriter.create(name, SMALL, np.uint8) as w, RingReader.attach(name) as r:
        t0 = time.monotonic()
        with pytest.raises(HandleInUse):
            r._step(r.close)
        assert time.monotonic() - t0 < SLACK and not r.closed
        w.write(np.zeros(SMALL, np.uint8), WAIT)
        assert r.read(WAIT).seq == 0


def test_close_after_the_loop_closed_leaves_the_ring() -> None:
    """A task left waiting when its loop was closed (no one cancelled it): closing the
    handle afterwards still leaves the ring, without an error from the dead loop."""
    name = unique_name()
    with RingWriter.create(name, SMALL, np.uint8):
        r = RingReader.attach(name)
        loop = asyncio.new_event_loop()
        task = loop.create_task(r.aread())
        loop.run_until_complete(until(lambda: waiting(r)))
        loop.close()
        r.close()
        assert shmring.inspect_ring(name).readers == []
        del task  # (pending for good: its loop is gone)


def test_a_second_waiting_task_leaves_the_first_counted(run: Runner) -> None:
    """One task at a time waits on a handle: a second gets RuntimeError at once, and the
    first stays counted as a sleeper, so the writer's next frame wakes it (not a poll slice
    later)."""
    name = unique_name()

    async def main() -> None:
        with RingWriter.create(name, SMALL, np.uint8) as w, RingReader.attach(name) as r:
            first = asyncio.create_task(r.aread(WAIT))
            await until(lambda: waiting(r))
            with pytest.raises(HandleInUse, match="another task is already waiting"):
                await r.aread(WAIT)
            assert r._counted and w._control[L.C_READER_WAITERS] == 1
            w.write(np.full(SMALL, 3, np.uint8))
            with await asyncio.wait_for(first, WAIT) as frame:
                assert int(frame.array[0]) == 3

    run(main())


class CountingPublisher:
    """A writer's Publisher that counts how often its writer counts itself as a sleeper
    for space, and uncounts itself."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.counts = self.uncounts = 0

    def count_sleeper(self) -> Any:
        self.counts += 1
        return self._inner.count_sleeper()

    def uncount_sleeper(self) -> Any:
        self.uncounts += 1
        return self._inner.uncount_sleeper()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_an_async_writer_stays_counted_between_its_looks(run: Runner) -> None:
    """An awrite waiting for space looks again at each wake-up; it stays counted as a space
    waiter from its first look to its last, so a release between two looks wakes it (a
    count dropped between looks would let that release wake nobody: a poll slice lost)."""
    name = unique_name()

    async def main() -> None:
        with (
            RingWriter.create(name, SMALL, np.uint8, slots=2) as w,
            RingReader.attach(name) as r,
        ):
            for n in range(2):
                await w.awrite(np.full(SMALL, n, np.uint8), 1.0)
            publisher = w._publisher = CountingPublisher(w._publisher)  # type: ignore[assignment]
            blocked = asyncio.create_task(w.awrite(np.full(SMALL, 2, np.uint8), WAIT))
            await until(lambda: waiting(w))
            uncounts = publisher.uncounts  # (its first try, before it waits, counts and uncounts)
            for _ in range(3):  # wake-ups that free nothing: the writer looks, sleeps again
                looks = publisher.counts
                futex_wake(w._p.space_address)
                await until(lambda: publisher.counts > looks and waiting(w))  # noqa: B023
            assert publisher.uncounts == uncounts and w._control[L.C_WRITER_WAITERS] == 1
            for n in range(3):
                with await r.aread(1.0) as frame:
                    assert int(frame.array[0]) == n
                if n == 0:
                    assert await asyncio.wait_for(blocked, WAIT) == 2
            assert publisher.uncounts == uncounts + 1 and w._control[L.C_WRITER_WAITERS] == 0

    run(main())


def test_an_async_claim_held_back_at_publish_waits_on_the_loop(run: Runner) -> None:
    """Two writers of an overwrite ring: a claim whose publish falls on a position the other
    writer holds (forged, as if it were stopped there) waits on the loop, not on its thread:
    the test's own task lets the position go. Up to the claim's own timeout: one that runs
    out raises RingTimeout about then and keeps its buffer and number, which the next claim
    publishes."""
    name, slots, short = unique_name("owclaim"), 4, 0.2

    async def main() -> None:
        with writer_held_back(name, slots) as (w, held):
            started = time.monotonic()
            with pytest.raises(shmring.ParticipantStalled, match="holds back"):
                async with w.aclaim(short) as slot:
                    slot[...] = 2
            assert short <= time.monotonic() - started < short + 1.0
            claim = w.aclaim(WAIT)

            async def publish() -> None:
                async with claim as slot:
                    slot[...] = 3

            blocked = asyncio.create_task(publish())
            ticks = 0
            while ticks < 20:  # the loop runs this task while the claim waits
                await asyncio.sleep(0.001)
                ticks += 1
            assert not blocked.done()
            let_go_position(w, held, slots)
            await asyncio.wait_for(blocked, WAIT)
            assert claim.seq == held + slots  # the number the timed-out claim kept
            with RingReader.attach(name, start="oldest") as reader:
                assert (await reader.alatest(WAIT)).array[0] == 3

    run(main())


def test_a_claim_retrying_its_publish_keeps_its_buffer_from_other_tasks(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim's publish that meets a busy header lock (simulated: its first try raises
    LockBusy, leaving the buffer stranded for the writer's next write, as
    RingWriter._locked_step does) retries on the loop. Meanwhile another task's claim on
    the same writer gets a buffer of its own, not the one still holding the first frame."""
    name = unique_name()

    async def main() -> None:
        with (
            RingWriter.create(name, SMALL, np.uint8, slots=4) as w,
            RingReader.attach(name, start="oldest") as reader,
        ):
            w.write(np.zeros(SMALL, np.uint8))
            reader.read(WAIT).release()
            real_publish, busy = w._publish, [True]

            def publish(buffer: int, *rest: Any) -> int:
                if busy[0]:
                    busy[0] = False
                    w._stranded = buffer
                    raise LockBusy("simulated: the header lock is busy")
                return real_publish(buffer, *rest)

            monkeypatch.setattr(w, "_publish", publish)

            async def fill(value: int, after_a_yield: bool) -> None:
                if after_a_yield:  # the first task is then between two tries of its publish
                    await asyncio.sleep(0)
                # (A stamp of its own: the general path, whose publish is patched above. A
                # plain claim publishes in C, and retries the same way when that falls back.)
                async with w.aclaim(WAIT, timestamp_ns=value) as slot:
                    slot[...] = value

            await asyncio.wait_for(asyncio.gather(fill(1, False), fill(2, True)), WAIT)
            assert not busy[0], "the simulated busy lock was never met"
            got = []
            for _ in range(2):
                with reader.read(WAIT) as frame:
                    got.append((int(frame.array[0]), frame.array.ctypes.data))
            assert sorted(value for value, _ in got) == [1, 2]
            assert got[0][1] != got[1][1], "two frames in one buffer"

    run(main())


def test_a_write_while_an_async_claim_publishes_is_refused(run: Runner) -> None:
    """A claim's publish held back (another writer holds its position: an overwrite ring)
    waits on the loop between tries, its buffer still claimed in the writer's record.
    Another task's write on the same writer is refused, as while a claim is open (a writer
    holds one claim at a time), instead of adopting that buffer: it filled it with its own
    frame, and the claim then published that frame."""
    name, slots = unique_name("owpub"), 4

    async def main() -> None:
        with writer_held_back(name, slots) as (w, held):

            async def fill() -> None:
                async with w.aclaim(WAIT) as slot:
                    slot[...] = 2

            claiming = asyncio.create_task(fill())
            await until(lambda: w._waiter_busy)  # its publish waits between tries
            with pytest.raises(RuntimeError, match="still publishing"):
                await w.awrite(np.full(SMALL, 5, np.uint8), WAIT)
            let_go_position(w, held, slots)
            await asyncio.wait_for(claiming, WAIT)
            with RingReader.attach(name, start="oldest") as r:
                frame = await r.alatest(WAIT)
                assert int(frame.array[0]) == 2
                w.write(np.full(SMALL, 7, np.uint8), WAIT)
                assert int(frame.array[0]) == 2  # held: its buffer is not written again
                frame.release()

    run(main())


def test_an_async_read_napping_waits_for_a_busy_lock_as_long_as_it_may(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overwrite group member (its takes need the header lock) naps before a frame that
    is due; the lock stays busy (another thread holds it) past LOCK_FLOOR. With no timeout
    the read waits for it, as the blocking read does, and returns the frame then."""
    name = unique_name()
    held = 1.5  # seconds: past LOCK_FLOOR (1 s)

    async def main() -> None:
        with (
            RingWriter.create(name, SMALL, np.uint8, policy="overwrite") as w,
            RingReader.attach(name, group="g") as r,
        ):
            w.write(np.zeros(SMALL, np.uint8))  # joined: its next write takes no lock
            (await r.aread(WAIT)).release()
            taken, done = threading.Event(), threading.Event()

            def hold() -> None:
                with r._p.lock:
                    taken.set()
                    done.wait(held)

            holder = threading.Thread(target=hold, daemon=True)

            def nap_plan(deadline: float | None) -> tuple[float, int]:
                holder.start()
                taken.wait(WAIT)
                w.write(np.full(SMALL, 7, np.uint8))  # the frame is there; the lock is not
                return (time.monotonic() + 0.02, 0)

            monkeypatch.setattr(r, "_nap_plan", nap_plan)
            monkeypatch.setattr(r._p, "spinning_pays", lambda: True)
            started = time.monotonic()
            frame = await asyncio.wait_for(r.aread(), WAIT)
            assert held <= time.monotonic() - started < held + 1.0
            assert int(frame.array[0]) == 7
            frame.release()
            holder.join(WAIT)

    run(main())


def test_an_async_overwrite_writer_held_back_retries_without_sleeping_on_space(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers of an overwrite ring: a position the other writer holds (forged, as if
    it were preempted there) makes awrite() retry after short pauses, never sleeping on the
    space futex, which nobody wakes in an overwrite ring; it publishes once the position is
    let go."""
    name, slots = unique_name("owasync"), 4

    async def no_space_sleep(*args: object, **kwargs: object) -> bool:
        raise AssertionError("an overwrite writer slept on the space futex")

    async def main() -> None:
        with writer_held_back(name, slots) as (w, held):
            assert w._p.sequenced()
            monkeypatch.setattr(type(w), "_sleep", no_space_sleep)
            attempts = []
            write = w.write

            def counted_write(*args: Any, **kwargs: Any) -> int:
                attempts.append(time.monotonic())
                return write(*args, **kwargs)

            monkeypatch.setattr(w, "write", counted_write)  # awrite's attempts, each timeout 0
            blocked = asyncio.create_task(w.awrite(np.full(SMALL, 2, np.uint8), WAIT))
            await until(lambda: len(attempts) >= 3)  # it tried, and retried after pauses
            assert not blocked.done() and w._waiter_busy
            let_go_position(w, held, slots)
            assert await asyncio.wait_for(blocked, WAIT) == held + slots

    run(main())


def test_an_async_write_held_back_by_a_position_keeps_each_try_short(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """awrite() held back by another writer's position: each try (a write with timeout 0,
    run impatiently on the loop) gives up on the position as soon as a try that waits for
    the header lock does, so other tasks run between tries; it publishes once let go."""
    name, slots = unique_name("owshort"), 4

    async def main() -> None:
        with writer_held_back(name, slots) as (w, held):
            tries: list[float] = []
            write = w.write

            def timed_write(*args: Any, **kwargs: Any) -> int:
                start = time.monotonic()
                try:
                    return write(*args, **kwargs)
                finally:
                    tries.append(time.monotonic() - start)

            monkeypatch.setattr(w, "write", timed_write)  # awrite's tries
            blocked = asyncio.create_task(w.awrite(np.full(SMALL, 2, np.uint8), WAIT))
            await until(lambda: len(tries) >= 5)
            let_go_position(w, held, slots)
            assert await asyncio.wait_for(blocked, WAIT) == held + slots
            # Before, every try held the loop >= 40 ms; the median ignores a machine hiccup.
            assert statistics.median(tries) < 0.01, f"tries held the loop: {sorted(tries)}"

    run(main())


def test_timeouts_and_reader_usable_after(run: Runner) -> None:
    name = unique_name()

    async def main() -> None:
        with RingWriter.create(name, SMALL, np.uint8) as w, RingReader.attach(name) as r:
            for _ in range(2):
                t0 = time.monotonic()
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await r.aread()
                assert 0.045 <= time.monotonic() - t0 < 0.05 + SLACK
            t0 = time.monotonic()
            with pytest.raises(RingTimeout):
                await r.aread(0.05)
            assert 0.045 <= time.monotonic() - t0 < 0.05 + SLACK
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r.alatest(), 0.05)
            seq = w.write(np.full(SMALL, 1, np.uint8))
            with await r.aread(1.0) as frame:
                assert frame.seq == seq
            seq = w.write(np.full(SMALL, 2, np.uint8))
            frame = await r.alatest(1.0)
            assert frame.seq == seq

    run(main())


def test_an_idle_async_reader_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle, it wakes as a blocking wait does (liveness checks), no more: it sleeps in its
    sleeper thread, in sleeps that grow from POLL_SLICE (_timing.Sleeps), and polls nothing.
    (What that costs in CPU is measured by the bench, `python -m bench`, "reader cores,
    idle": a CPU figure of a one-second window is at the resolution of this VM's
    accounting.)"""
    name = unique_name()
    sleeps: list[float] = []
    real_wait = shmring._sys.futex_wait  # what _async imported

    def counted_wait(address: int, expected: int, timeout: float) -> None:
        sleeps.append(timeout)
        real_wait(address, expected, timeout)

    monkeypatch.setattr(shmring._async, "futex_wait", counted_wait)

    async def main() -> None:
        with RingWriter.create(name, SMALL, np.uint8), RingReader.attach(name) as r:
            task = asyncio.create_task(r.aread())
            await until(lambda: waiting(r))
            before, t0 = len(sleeps), time.monotonic()
            await asyncio.sleep(1.0)  # the window observed, not a synchronisation
            slept, seconds = len(sleeps) - before, time.monotonic() - t0
            task.cancel()
            assert slept <= 4 + 2, (slept, seconds)  # 0.1, 0.2, 0.4 and 0.4 s, and the ends
            assert all(timeout >= POLL_SLICE / 2 for timeout in sleeps[before:-1]), sleeps

    asyncio.run(main())


# ---------------------------------------------------------------- crashes


def test_writer_killed_while_async_reader_waits(run: Runner) -> None:
    name = unique_name()

    async def main() -> None:
        with Child("spawn", "lock_holder", name=name, create=True, mode="none", frames=1) as kid:
            kid.expect("ready")
            r = RingReader.attach(name, start="oldest")
            kid.send("go")
            kid.expect("wrote")
            with await r.aread(WAIT) as frame:
                assert frame.seq == 0
            kid.send("hold")
            kid.expect("holding")
            task = asyncio.create_task(r.aread())
            await until(lambda: waiting(r))
            kid.kill()
            t_kill = time.monotonic()
            with pytest.raises(WriterGone):
                await asyncio.wait_for(task, WAIT)
            assert time.monotonic() - t_kill < GONE_BOUND + SLACK
            assert kid.join() == -signal.SIGKILL
            r.close()  # the last one out unlinks the dead creator's ring

    run(main())


def _async_reader_then_killed(name: str, slots: int, conn: Connection) -> None:
    """Attach, take frames and keep them all; once it holds `slots`, report that it waits
    in aread for the next one, and wait there until SIGKILLed."""

    async def main() -> None:
        r = await RingReader.aattach(name, start="oldest", timeout=WAIT)
        conn.send("attached")
        held: list[shmring.Frame] = []  # kept: a dropped Frame is released
        while True:
            task = asyncio.create_task(r.aread(WAIT))
            await until(lambda task=task: waiting(r) or task.done())  # type: ignore[misc]
            if len(held) == slots and not task.done():
                conn.send("waiting")
            held.append(await task)

    asyncio.run(main())


def test_reader_killed_while_waiting_frees_a_waiting_async_writer(run: Runner) -> None:
    name = unique_name()
    slots = 4
    ctx = mp.get_context("spawn")

    async def main() -> None:
        with RingWriter.create(name, SMALL, np.uint8, slots=slots) as w:
            parent, child = ctx.Pipe()
            kid = ctx.Process(
                target=_async_reader_then_killed, args=(name, slots, child), daemon=True
            )
            kid.start()
            try:
                assert parent.poll(WAIT) and parent.recv() == "attached"
                assert await w.await_for_readers(1, WAIT) == 1
                for n in range(slots):
                    await w.awrite(np.full(SMALL, n, np.uint8), 1.0)
                assert parent.poll(WAIT) and parent.recv() == "waiting"
                with pytest.raises(RingTimeout):  # full: the reader holds every frame
                    await w.awrite(np.zeros(SMALL, np.uint8), 0.05)
                task = asyncio.create_task(w.awrite(np.zeros(SMALL, np.uint8), WAIT))
                await until(lambda: waiting(w))
                assert kid.pid is not None
                os.kill(kid.pid, signal.SIGKILL)
                t_kill = time.monotonic()
                await asyncio.wait_for(task, WAIT)
                assert time.monotonic() - t_kill < GONE_BOUND + SLACK
                assert w.readers == 0
            finally:
                kid.kill()
                kid.join(WAIT)

    run(main())


# ---------------------------------------------------------------- many rings, writer side


def _round_robin_writer(names: list[str], count: int, conn: Connection) -> None:
    """Create one ring per name, wait for a reader on each, write `count` pattern frames to
    each in turn, close them all."""
    pat = Pattern(SMALL)
    writers = [RingWriter.create(n, SMALL, np.uint8) for n in names]
    conn.send("ready")
    for w in writers:
        w.wait_for_readers(1, WAIT)
    for n in range(count):
        for i, w in enumerate(writers):
            w.write(pat.make(make_tag(i, n)), WAIT)
    for w in writers:
        w.close()
    conn.send("done")


def test_many_rings_in_one_loop_all_progress(run: Runner) -> None:
    names = [unique_name(f"m{i}") for i in range(8)]
    count = 300
    pat = Pattern(SMALL)
    ctx = mp.get_context("spawn")

    async def main() -> None:
        parent, child = ctx.Pipe()
        kid = ctx.Process(target=_round_robin_writer, args=(names, count, child), daemon=True)
        kid.start()
        try:
            assert parent.poll(WAIT) and parent.recv() == "ready"

            async def read_all(i: int, name: str) -> list[int]:
                tags = []
                with await RingReader.aattach(name, start="oldest", timeout=WAIT) as r:
                    async for frame in r:
                        tags.append(pat.check(frame.array))
                return tags

            async with asyncio.timeout(WAIT):
                results = await asyncio.gather(*(read_all(i, n) for i, n in enumerate(names)))
            for i, tags in enumerate(results):
                assert tags == [make_tag(i, n) for n in range(count)]
            assert parent.poll(WAIT) and parent.recv() == "done"
        finally:
            kid.join(WAIT)
            if kid.exitcode is None:
                kid.kill()
                kid.join(WAIT)

    run(main())


def test_awrite_aclaim_and_aattach(run: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique_name()
    looks = []
    attach = RingReader.attach

    def counted_attach(*args: Any, **kwargs: Any) -> RingReader:
        looks.append(args[0])
        return attach(*args, **kwargs)

    monkeypatch.setattr(RingReader, "attach", counted_attach)  # aattach's looks, timeout 0

    async def main() -> None:
        attaching = asyncio.create_task(RingReader.aattach(name, start="oldest", timeout=WAIT))
        await until(lambda: len(looks) >= 2)  # it looked, found no ring, and looks again
        assert not attaching.done()
        with RingWriter.create(name, SMALL, np.uint8, slots=2) as w, await attaching as r:
            assert w.readers == 1
            second = await RingWriter.aattach(name, timeout=0.0)
            second.close()
            claim = w.aclaim(1.0)
            async with claim as slot:
                slot[...] = 5
            assert claim.seq == 0
            await w.awrite(np.full(SMALL, 6, np.uint8), 1.0)
            blocked = asyncio.create_task(w.awrite(np.full(SMALL, 9, np.uint8), WAIT))
            await until(lambda: waiting(w))
            with await r.aread(1.0) as frame:  # frees a slot: the writer is woken
                assert int(frame.array[0]) == 5
            assert await asyncio.wait_for(blocked, WAIT) == 2
            values = []
            for _ in range(2):
                with await r.aread(1.0) as frame:
                    values.append(int(frame.array[0]))
            assert values == [6, 9]
        # The blocking attach's words: it waited, so not "pass timeout=" (either class).
        for cls in (RingReader, RingWriter):
            with pytest.raises(shmring.RingNotFound, match=r"appeared within 0\.02 s") as gone:
                await cls.aattach(name, timeout=0.02)
            assert "timeout=" not in str(gone.value)
        with pytest.raises(shmring.RingNotFound, match="pass timeout="):
            await RingReader.aattach(name)  # timeout 0: it did not wait

    run(main())


def test_a_loop_closed_while_a_task_waits_leaves_the_handle_to_the_next_loop() -> None:
    """A loop closed with a task still waiting on a handle (its `finally` never runs): the
    handle is not left "waited on" for good; a task of another loop waits on it."""
    name = unique_name("loopgone")
    with RingWriter.create(name, SMALL, np.uint8, slots=4) as w, RingReader.attach(name) as r:
        loop = asyncio.new_event_loop()
        try:
            abandoned = loop.create_task(r.aread(WAIT))
            loop.run_until_complete(until(lambda: r._waiter_busy))
        finally:
            loop.close()
        assert not abandoned.done()

        async def wait_then_read() -> int:
            with pytest.raises(RingTimeout):  # it waited (not "another task is waiting")
                await r.aread(0.05)
            w.write(np.full(SMALL, 7, np.uint8), WAIT)
            with await r.aread(WAIT) as frame:
                return int(frame.array[0])

        assert asyncio.run(wait_then_read()) == 7
