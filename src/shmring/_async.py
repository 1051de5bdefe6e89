# asyncio: `async for frame in reader`, awaitable reads, writes, claims and attaches.
#
# Rules: every step that touches a ring (taking a frame, releasing one, publishing, counting
# the handle as a sleeper) runs on the event loop's thread, synchronously, with the same code
# the blocking calls use. A frame is therefore either handed to the awaiting task or left in
# the ring: a task cancelled while it waits has taken nothing, so under the block policy the
# next read gets the frame published meanwhile, and under the overwrite policy the frames
# evicted meanwhile show up in the next frame's `dropped`. Those steps run `impatiently`
# (_lock.py): where one would wait for the header lock that another process holds (perhaps
# stopped), it gives up at once, and the task waits on the loop and runs it again
# (_patiently), as long as the blocking call would wait.
#
# Theory of operation: `async for` takes a frame that is published already at once, with
# iteration's C step (Taker.advance), and hands it over as a Ready (_taker.c: an awaitable
# already done), so a stream that flows costs no coroutine and no trip through the loop per
# frame. A Ready given up before it was awaited (thrown into or closed) hands its frame
# back (_unsent), so that the next step takes it again. A wait first polls (a read:
# yielding to the loop between looks, for up to the reader's `spin` seconds, so other tasks
# run meanwhile; for a steady stream, after a nap that ends before the frame is due:
# RingReader's pacing, _pacing.py), then the handle counts itself as a sleeper exactly as a
# blocking wait does (so the writer, or the reader that frees space, wakes its futex word),
# reads the word, looks once more, and hands the word's address and value to its _Sleeper:
# a daemon thread that only calls futex_wait(address, value, timeout) and then resolves the task's
# future with call_soon_threadsafe. The thread never reads the ring's memory (the kernel compares
# the word), so a handle closed or unmapped under it cannot crash it: the wait ends in EFAULT or at
# its timeout (the wait's Sleeps, _timing.py). A nap is such a sleep (so a frame that comes early
# ends it) that the loop also ends itself on time, on a timerfd it watches (MonotonicTimer, one per
# handle): the kernel wakes the loop's thread directly, earlier by the measured time the loop takes
# to resume the task, instead of through the sleeper thread and call_soon_threadsafe (two wake-ups
# in a row, each of which waits for a CPU on a busy machine, so that a frame came during that
# hand-off and the task took it late). The sleeper thread does not touch the loop for a future that
# is done already. The sleeps of a wait are the blocking calls' (Sleeps), so liveness checks
# (WriterGone, dead readers) run on the loop as often as in the blocking calls. Cancelling a task
# that sleeps wakes its thread (FUTEX_WAKE on the word: other sleepers on it look once more and
# sleep again); close() resolves the waiting future at once, and the woken task raises what the
# blocking calls raise on a closed handle. A thread with nothing to do for IDLE_EXIT seconds exits;
# close() stops it at once. One task at a time may wait on a handle (as one thread at a time may use
# it): a second raises HandleInUse.
#
# Internals this module relies on (keep them when changing the core): RingReader._take_next,
# _take_latest, _wait_for, _count, _uncount, _check_writers_alive, _release_last,
# _release_pending, _nap_plan, _poll_window, _polled, _ended, _last, _pending, _held, _next,
# _control, _carried_drops, _counted, _lock_free, _taker, _pacer, _spin, _block;
# RingWriter._publisher; Participant's futex addresses, check_usable, check_size,
# dead_participant_blocks, reap_dead, spinning_pays.

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from . import _layout as L
from ._errors import EndOfStream, HandleInUse, ParticipantStalled, RingNotFound, RingTimeout
from ._fastpath import Ready, load_word
from ._lock import LockBusy, impatiently, lock_deadline
from ._ring import RingHandle
from ._segment import _ATTACH_POLL, never_appeared
from ._sys import MonotonicTimer, futex_wait, futex_wake
from ._timing import (
    STALLED_FIRST_PAUSE,
    STALLED_LAST_PAUSE,
    Liveness,
    Sleeps,
    deadline_from,
    remaining,
)

if TYPE_CHECKING:
    from ._fastpath import Claim
    from ._reader import Frame, RingReader
    from ._writer import RingWriter

IDLE_EXIT = 1.0  # seconds a sleeper thread waits for work before it exits
LOCK_FIRST_PAUSE = 1e-3  # between tries of a step that met a busy header lock (_patiently)
LOCK_LAST_PAUSE = 10e-3
HANDOFF_START = 50e-6  # how long the nap's timer takes to resume its task, first guess
HANDOFF_MAX = 500e-6
HANDOFF_SMOOTHING = 0.25  # weight of a new measurement

_T = TypeVar("_T")
_Ready = TypeVar("_Ready", "Frame", int)  # as in _reader.py: a frame, or a published seq
_Request = tuple[asyncio.AbstractEventLoop, "asyncio.Future[bool]", int, int, float]


def _resolve(future: asyncio.Future[bool], by_timer: bool = False) -> None:
    """End a sleep (by_timer: a nap's timer ended it)."""
    if not future.done():
        future.set_result(by_timer)


class _Sleeper:
    """A daemon thread that sleeps on futex words for one handle's tasks, one at a time."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _thread against the idle exit
        self._thread: threading.Thread | None = None
        self.address = 0  # the word the thread sleeps on now (0: none)

    def sleep(
        self, loop: asyncio.AbstractEventLoop, address: int, expected: int, timeout: float
    ) -> asyncio.Future[bool]:
        """A future resolved once the u32 at `address` is not `expected`, or on a wake-up,
        or after `timeout` s."""
        future: asyncio.Future[bool] = loop.create_future()
        with self._lock:
            self._requests.put((loop, future, address, expected, timeout))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"shmring-sleeper {self._name}", daemon=True
                )
                self._thread.start()
        return future

    def wake(self) -> None:
        """End the sleep under way (the word's other sleepers look once more)."""
        address = self.address
        if address:
            futex_wake(address)

    def stop(self) -> None:
        """Make the thread exit after its current sleep, which is woken now."""
        with self._lock:
            if self._thread is not None:
                self._thread = None
                self._requests.put(None)
        self.wake()

    def _run(self) -> None:
        while True:
            try:
                request = self._requests.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._requests.empty():
                        self._thread = None
                        return
                continue
            if request is None:
                return
            loop, future, address, expected, timeout = request
            if future.done():  # cancelled before we got to it, or a nap's timer ended it
                continue
            self.address = address
            futex_wait(address, expected, max(timeout, 0.0))
            self.address = 0
            if not future.done():  # (racy, but _resolve looks again on the loop)
                with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
                    loop.call_soon_threadsafe(_resolve, future)


class AsyncHandle(RingHandle):
    """What RingReader and RingWriter share for asyncio: the sleeper thread, the one waiting
    task, and a close() that ends that task's wait at once."""

    _sleeper: _Sleeper | None = None
    _timer: MonotonicTimer | None = None
    _waiting: asyncio.Future[bool] | None = None
    _waiter: asyncio.Task[Any] | None = None  # the task that waits on this handle (_one_waiter)
    _handoff = HANDOFF_START

    def close(self) -> None:
        try:
            sleeper, self._sleeper = self._sleeper, None
            if sleeper is not None:
                sleeper.stop()  # wakes its futex sleep while the ring is still mapped
            future = self._waiting
            if future is not None:  # the waiting task closes the timer, once unwatched
                if not future.done():
                    with contextlib.suppress(RuntimeError):  # its loop is closed already
                        future.get_loop().call_soon_threadsafe(_resolve, future)
            elif self._timer is not None:
                self._timer.close()
        finally:
            super().close()

    def _step(self, step: Callable[[], _T]) -> _T:
        """Run `step`, a synchronous step of a wait that touches the ring, as one step on
        this handle (RingHandle's protocol, Participant.steps): a close() in another thread
        waits for it to end, and a step begun while close() runs raises HandleClosed."""
        p = self._p
        p.step_thread = threading.get_ident()
        p.steps += 1  # (the last statement before `try`: a signal cannot land in between)
        try:
            if p.closing or p.closed:
                self._raise_closed()
            return step()
        finally:
            p.steps -= 1

    def _stepwise(self, step: Callable[[], _T]) -> Callable[[], _T]:
        """`step`, to be run as a step on this handle (_step)."""
        return lambda: self._step(step)

    async def _sleep(
        self, address: int, expected: int, seconds: float, wake_at: float | None = None
    ) -> bool:
        """Wait (without blocking the loop) until the u32 at `address` is not `expected`,
        a wake-up, or `seconds`, or (a nap) until the loop's timer rings at `wake_at`; then
        raise if this handle was closed. Whether the timer ended the wait. The caller waits
        as the handle's one waiting task (_one_waiter)."""
        sleeper = self._sleeper
        if sleeper is None:
            sleeper = self._sleeper = _Sleeper(self.name)
        loop = asyncio.get_running_loop()
        future = self._waiting = sleeper.sleep(loop, address, expected, seconds)
        timer = None
        try:
            if wake_at is not None:
                timer = self._timer
                if timer is None:
                    timer = self._timer = MonotonicTimer()
                loop.add_reader(timer.fileno(), _rang, timer, future)
                timer.arm(wake_at)
            by_timer = await future
        except (asyncio.CancelledError, Exception):  # or the nap's timer could not be set
            future.cancel()
            if not self._p.closed:
                sleeper.wake()  # free the thread for this handle's next wait
            raise
        finally:
            self._waiting = None
            if timer is not None:
                loop.remove_reader(timer.fileno())
            if self._p.closed and self._timer is not None:  # (close() left it to us)
                self._timer.close()
        self._p.check_usable()
        self._p.check_size()  # a truncated ring: raise before the next look faults (SIGBUS)
        return by_timer

    @contextlib.contextmanager
    def _one_waiter(self) -> Iterator[None]:
        """Around a task's wait: a second task that would wait meanwhile raises, before it
        counts itself as a sleeper (the count is the handle's, one flag for both)."""
        if self._waiter_busy:
            raise HandleInUse(
                f"ring {self.name!r}: another task is already waiting on this handle; use one "
                "handle per task (attach another reader or writer)"
            )
        self._waiter = asyncio.current_task()
        try:
            yield
        finally:
            self._waiter = None

    @property
    def _waiter_busy(self) -> bool:
        """Whether a task waits on this handle: not one whose loop was closed while it
        waited (its `finally` never ran)."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not waiter.get_loop().is_closed()

    async def _until(
        self,
        address: int,
        word: int,
        attempt: Callable[[], _T | None],
        deadline: float | None,
    ) -> _T:
        """Call `attempt` until it returns something, sleeping on the control word `word`
        (whose futex is at `address`) between attempts. `attempt` raises to end the wait."""
        control = self._p.control
        sleeps = Sleeps()

        def look() -> tuple[int, _T | None]:
            return load_word(control, word), attempt()  # the word first: then a change wakes

        while True:
            observed, result = await _patiently(self._stepwise(look), deadline)
            if result is not None:
                return result
            await self._sleep(address, observed, sleeps.next(deadline))


def _rang(timer: MonotonicTimer, future: asyncio.Future[bool]) -> None:
    """The loop saw a nap's timer expire: end the nap."""
    timer.clear()
    _resolve(future, by_timer=True)


def _passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


async def _patiently(step: Callable[[], _T], deadline: float | None) -> _T:
    """Run `step`, a synchronous step that may take the header lock, on the loop's thread
    with its waits for the lock cut short (_lock.impatiently). While another process holds
    the lock (it may be stopped), wait here on the loop between tries, for as long as the
    blocking call waits for the lock: until lock_deadline(deadline), then raise the
    ParticipantStalled it would raise. A step on a handle runs as AsyncHandle._step."""
    try:
        return impatiently(step)
    except LockBusy:
        give_up = lock_deadline(deadline)  # the wait for the lock starts
    pause = LOCK_FIRST_PAUSE
    while True:
        await asyncio.sleep(min(pause, remaining(give_up)))
        pause = min(2 * pause, LOCK_LAST_PAUSE)
        try:
            return impatiently(step)
        except LockBusy as busy:
            if _passed(give_up):
                raise ParticipantStalled(str(busy)) from None


# ---- reading ---------------------------------------------------------------------------


class AsyncReading(AsyncHandle):
    """RingReader's awaitable calls (see docs/API.md, "asyncio")."""

    def _reader(self) -> RingReader:
        return cast("RingReader", self)

    @classmethod
    async def aattach(cls, name: str, *, timeout: float | None = 0.0, **options: Any) -> RingReader:
        """RingReader.attach, waiting for the ring to appear without blocking the loop."""
        attach = cast("type[RingReader]", cls).attach
        return await _attach(lambda: attach(name, timeout=0.0, **options), name, timeout)

    def __aiter__(self) -> AsyncReading:
        self._p.check_usable()
        return self

    def __anext__(self) -> Coroutine[Any, Any, Frame]:
        """The next frame of `async for`; releases the previous one, as iteration does.

        While frames flow, the common case of RingReader._iterate_own (a ring-shaped frame
        without metadata, only the previous frame held) is taken here, at once, in C
        (Taker.advance), and handed over already done (Ready): no coroutine, no suspension."""
        r: RingReader = self  # type: ignore[assignment]  # (no call: this runs per frame)
        last, held = r._last, r._held
        if (
            r._lock_free
            and last is not None
            and len(held) == 1
            and held[0] == last.seq
            and last._reader is not None
            and not r._carried_drops
        ):
            seq = r._next
            try:
                frame = r._pending = r._taker.advance(r, seq)
                if frame is not None:  # held, and the last released (None if closed: below)
                    if r._counted:
                        r._uncount()
                    r._next = seq + 1
                    held[0] = seq
                    last._reader = None
                    r._last = frame
                    r._pending = None
                    return Ready(frame, r)  # (r._unsent takes it back if never given)
            except BaseException:  # as in iteration: a frame taken is never left held
                r._release_pending()
                raise
        return self._anext_waiting()

    def _unsent(self, frame: Frame) -> None:
        """Ready's hand-back (_taker.c), between steps: the step __anext__ took `frame` for
        was given up before it ran (its task cancelled first, or closed). The frame is put
        back, still held in the ring by this reader's release word, for the next step to
        take again; the one released for it stays released. If another step ran meanwhile
        (two steps in flight), that step has moved past it: nothing to put back."""
        r = self._reader()
        if r._last is frame and r._held == [frame.seq] and r._next == frame.seq + 1:
            frame._reader = None  # its hold passes to the next take of frame.seq
            r._last = None
            r._held.clear()
            r._next = frame.seq  # = R_RELEASE, as advance left it

    async def _anext_waiting(self) -> Frame:
        """__anext__ when the frame is not there yet (or not for the C step)."""
        r = self._reader()
        r._p.check_usable()
        try:
            frame = await self._next_own() if r._lock_free else None
            if frame is None:
                if not r._block:
                    r._release_last()  # an overwrite reader pins one frame at a time
                frame = await _patiently(self._stepwise(r._take_next), None)
                if frame is None:
                    r._release_last()  # done with it: the writer may reuse its buffer meanwhile
                    frame = await self._wait_frame(r._take_next, None)
                else:
                    r._uncount()  # woken for the last frame, if at all: no longer waiting
            r._release_last()
            r._last = frame
            r._pending = None
        except EndOfStream:
            r._release_last()
            raise StopAsyncIteration from None
        except BaseException:
            r._release_pending()
            raise
        return frame

    async def _next_own(self) -> Frame | None:
        """RingReader._iterate_own's wait for the next frame: release the last, wait until
        the next is published, take it in C; None (nothing taken) where iteration's general
        path decides (a frame there already or not for the C step, skips carried)."""
        r = self._reader()
        seq = r._next
        is_published = r._taker.published
        if is_published(seq):
            return None
        r._release_last()  # done with it: the writer may reuse its buffer meanwhile

        def published() -> int | None:
            return seq if is_published(seq) else None

        await self._wait_frame(published, None)
        frame = r._pending = None if r._carried_drops else r._taker.take(r, seq, 0, False)
        if frame is None or r._held:  # (held: frames kept from aread())
            r._pending = None
            return None
        r._next = seq + 1  # R_RELEASE reads seq already (_release stored r._next)
        r._held.append(seq)
        return frame

    async def aread(self, timeout: float | None = None) -> Frame:
        """RingReader.read: the next frame, held until released."""
        r = self._reader()
        r._p.check_usable()
        deadline = deadline_from(timeout)
        try:
            frame = await self._wait_frame(lambda: r._take_next(deadline), deadline)
        except BaseException:
            r._release_pending()
            raise
        r._pending = None
        return frame

    async def alatest(self, timeout: float | None = None) -> Frame:
        """RingReader.latest: the newest frame; releases the one alatest/latest returned."""
        r = self._reader()
        r._p.check_usable()
        deadline = deadline_from(timeout)
        if not r._block:
            r._release_last()
        try:
            frame = await self._wait_frame(lambda: r._take_latest(deadline), deadline)
        except BaseException:
            r._release_pending()
            raise
        r._release_last()
        r._last = frame
        r._pending = None
        return frame

    async def _wait_frame(
        self, take: Callable[[], _Ready | None], deadline: float | None
    ) -> _Ready:
        """RingReader._wait_for for the event loop: poll, yielding to the loop, for up to
        `spin` s; then sleep on the frames futex as a counted sleeper."""
        r = self._reader()
        take = self._stepwise(take)
        frame = take() if r._lock_free else await _patiently(take, deadline)
        if frame is not None:
            r._uncount()
            return frame
        with self._one_waiter():
            return await self._wait_frame_as_waiter(take, deadline)

    async def _wait_frame_as_waiter(
        self, take: Callable[[], _Ready | None], deadline: float | None
    ) -> _Ready:
        r = self._reader()
        p = r._p
        if r._spin and self._step(p.spinning_pays):
            try:
                frame = await self._poll_async(take, deadline)
            except BaseException:
                if not p.closed:
                    r._uncount()
                raise
            if frame is not None:
                return frame
        liveness = Liveness()

        def attempt() -> _Ready | None:
            frame = take()
            if frame is not None:
                return frame
            if r._ended() or _passed(deadline):
                # The blocking wait reports the end of the stream or the timeout (with a
                # last look), without sleeping: its deadline has passed or the stream ended.
                return r._wait_for(take, deadline_from(0.0))
            if liveness.due():
                r._check_writers_alive(deadline)
            return None

        r._count()  # a writer now wakes the futex for the next frame
        try:
            frame = await self._until(p.frames_address, L.C_FRAMES, attempt, deadline)
        except BaseException:
            if not p.closed:
                r._uncount()  # the task may not come back for a long time
            raise
        r._uncount()  # running again (see RingReader._counted)
        if r._spin:
            r._pacer.arrived(frame if isinstance(frame, int) else frame.seq, time.monotonic())
        return frame

    async def _poll_async(
        self, take: Callable[[], _Ready | None], deadline: float | None
    ) -> _Ready | None:
        """RingReader._poll's steps on the loop: the nap as _nap_async, and the loop runs
        between two looks."""
        r = self._reader()
        nap = self._step(lambda: r._nap_plan(deadline))
        frame = None if nap is None else await self._nap_async(take, nap[0], deadline)
        window = self._step(lambda: r._poll_window(nap, frame, deadline))
        if window is None:
            return frame
        poll_until, now = window
        woke = now
        lock_free = r._lock_free  # its takes are C steps: no lock to wait for
        while True:
            frame = take() if lock_free else await _patiently(take, deadline)
            if frame is not None:
                r._polled(frame, nap, now == woke, now - woke)
                return frame
            now = time.monotonic()
            if now >= poll_until:
                return None
            await asyncio.sleep(0)  # other tasks run between looks
            r._p.check_usable()

    async def _nap_async(
        self, take: Callable[[], _Ready | None], nap_end: float, deadline: float | None
    ) -> _Ready | None:
        """RingReader._nap on the loop: sleep as a counted waiter (a frame that comes early
        wakes us) until `nap_end`, less the handoff (how late the loop's timer resumes the
        task, measured here), so the loop is polling when the frame is due."""
        r = self._reader()
        p, control = r._p, r._control
        r._count()
        observe = self._stepwise(lambda: load_word(control, L.C_FRAMES))
        closed = self._stepwise(lambda: load_word(control, L.C_FLAGS) & L.F_CLOSED)
        while True:
            observed = observe()  # before the look: then a frame published after it wakes
            frame = take() if r._lock_free else await _patiently(take, deadline)
            if frame is not None or closed():
                return frame
            wake_at = nap_end - self._handoff
            if time.monotonic() >= wake_at:
                return None
            if await self._sleep(p.frames_address, observed, remaining(nap_end), wake_at):
                late = time.monotonic() - wake_at  # how long the loop took to resume us
                handoff = self._handoff + (late - self._handoff) * HANDOFF_SMOOTHING
                self._handoff = min(handoff, HANDOFF_MAX)


async def _attach(attach: Callable[[], _T], name: str, timeout: float | None) -> _T:
    """Call `attach` (an attach of ring `name` with timeout 0) until the ring exists or
    `timeout` passes, sleeping on the loop between looks as the blocking attach sleeps."""
    deadline = deadline_from(timeout)
    while True:
        try:
            return await _patiently(attach, deadline)
        except RingNotFound:
            left = _ATTACH_POLL if deadline is None else deadline - time.monotonic()
            if left <= 0 and timeout:
                raise never_appeared(name, timeout) from None
            if left <= 0:
                raise
            await asyncio.sleep(min(_ATTACH_POLL, left))


# ---- writing ---------------------------------------------------------------------------


class AsyncWriting(AsyncHandle):
    """RingWriter's awaitable calls (see docs/API.md, "asyncio")."""

    def _writer(self) -> RingWriter:
        return cast("RingWriter", self)

    @classmethod
    async def aattach(cls, name: str, *, timeout: float | None = 0.0, **options: Any) -> RingWriter:
        """RingWriter.attach, waiting for the ring to appear without blocking the loop."""
        attach = cast("type[RingWriter]", cls).attach
        return await _attach(lambda: attach(name, timeout=0.0, **options), name, timeout)

    async def awrite(
        self,
        frame: np.ndarray,
        timeout: float | None = None,
        *,
        timestamp_ns: int | None = None,
        meta: bytes = b"",
    ) -> int:
        """RingWriter.write: copy `frame` in and publish it, waiting for space (block)."""
        write = self._writer().write
        return await self._until_space(
            lambda: write(frame, 0.0, timestamp_ns=timestamp_ns, meta=meta), timeout
        )

    def aclaim(
        self,
        timeout: float | None = None,
        *,
        shape: tuple[int, ...] | None = None,
        timestamp_ns: int | None = None,
        meta: bytes = b"",
    ) -> AsyncClaim:
        """RingWriter.claim for `async with`: waits for a free buffer without blocking."""
        claim = self._writer().claim(0.0, shape=shape, timestamp_ns=timestamp_ns, meta=meta)
        return AsyncClaim(self, claim, timeout)

    async def await_for_readers(self, count: int = 1, timeout: float | None = None) -> int:
        """RingWriter.wait_for_readers: until `count` readers are attached; how many are."""
        w = self._writer()
        L.positive_int(count, "count", 1, w._p.geometry.max_readers)
        deadline = deadline_from(timeout)

        def attempt() -> int | None:
            try:
                return w.wait_for_readers(count, 0.0)
            except RingTimeout:
                if _passed(deadline):
                    raise
                return None

        with self._one_waiter():
            return await self._until(w._p.membership_address, L.C_MEMBERSHIP, attempt, deadline)

    async def _until_space(self, take: Callable[[], _T], timeout: float | None) -> _T:
        """Call `take` (a write or claim with timeout 0) until it finds a free buffer,
        sleeping meanwhile as a counted space waiter, as RingWriter's blocking wait does."""
        deadline = deadline_from(timeout)
        w = self._writer()
        take = self._stepwise(take)
        try:
            return await _patiently(take, deadline)
        except RingTimeout:
            # Not joined: a creator's first frame joins, which waited for the header lock as
            # long as a write may.
            if _passed(deadline) or not w._joined:
                raise
        with self._one_waiter():
            if not w._block:  # overwrite: another writer held a position; it lets go itself
                return await self._retry_stalled(take, deadline)
            return await self._wait_for_space(take, deadline)

    async def _wait_for_space(self, take: Callable[[], _T], deadline: float | None) -> _T:
        """Block policy: sleep on the space futex, counted from before the first look to
        after the last (each `take` leaves the count to this wait, _wait_for_buffer), so a
        release between two looks wakes the sleep."""
        w = self._writer()
        p, publisher = w._p, w._publisher
        liveness = Liveness()

        def attempt() -> _T | None:
            try:
                return take()
            except LockBusy:  # (_until waits for the lock)
                raise
            except RingTimeout:
                if _passed(deadline):
                    raise
            publisher.count_sleeper()  # asks again for half the ring: tail may have moved
            if liveness.due():
                p.check_size()
                if p.dead_participant_blocks():
                    with p.lock.until(deadline):
                        p.reap_dead()
            return None

        # Ask to be woken when half the ring is free, as the blocking wait does (in C; a
        # forged head or tail made take() raise already).
        publisher.count_sleeper()
        try:
            return await self._until(p.space_address, L.C_SPACE, attempt, deadline)
        finally:
            if not p.closed:
                publisher.uncount_sleeper()

    async def _retry_stalled(self, take: Callable[[], _T], deadline: float | None) -> _T:
        """Call `take` again after pauses that double (the blocking write's, _published)
        until it goes through."""
        pause = STALLED_FIRST_PAUSE
        while True:
            await asyncio.sleep(min(pause, remaining(deadline)))
            pause = min(2 * pause, STALLED_LAST_PAUSE)
            try:
                return await _patiently(take, deadline)
            except RingTimeout:
                if _passed(deadline):
                    raise


class AsyncClaim:
    """A Claim for `async with`: entering waits for a free buffer on the loop and yields the
    writable slot; leaving publishes it (or abandons it on an exception), as Claim does,
    waiting on the loop for a busy header lock or a stalled position up to the deadline."""

    __slots__ = ("_claim", "_deadline", "_timeout", "_writer")

    def __init__(self, writer: AsyncWriting, claim: Claim, timeout: float | None) -> None:
        self._writer = writer
        self._claim = claim
        self._timeout = timeout
        self._deadline: float | None = None

    @property
    def seq(self) -> int | None:
        """The published frame's sequence number (None until published)."""
        return self._claim.seq

    async def __aenter__(self) -> np.ndarray:
        self._deadline = deadline_from(self._timeout)  # (checked here, as claim() checks it)
        return await self._writer._until_space(self._claim.__enter__, self._timeout)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        claim, deadline = self._claim, self._deadline
        writer = claim._writer
        kept = False  # a try timed out: the claim keeps its buffer for the next try

        def leave() -> None:
            nonlocal kept
            claim._deadline = deadline_from(0.0)  # each try waits for nothing: the loop waits
            try:
                claim.__exit__(exc_type, exc, tb)
            except RingTimeout:
                # The try left the buffer stranded (RingWriter._published) for the writer's
                # next write or claim to fill; another task's must not take it meanwhile.
                writer._unstrand()
                kept = True
                raise
            kept = False

        try:
            with writer._claim_publishing():  # the buffer stays this claim's between tries
                await self._publish(leave, deadline)
        except BaseException:
            if kept:  # timed out or cancelled: kept as a publish that timed out keeps it
                writer._strand(claim._buffer)
            raise

    async def _publish(self, leave: Callable[[], None], deadline: float | None) -> None:
        """Try `leave` (the claim's publish) now, then on the loop until `deadline`."""
        leave = self._writer._stepwise(leave)
        try:
            impatiently(leave)
            return
        except RingTimeout as timed_out:
            if _passed(deadline) and not isinstance(timed_out, LockBusy):
                raise
        with self._writer._one_waiter():  # the next tries wait on the loop
            try:
                await _patiently(leave, deadline)
            except RingTimeout:
                if _passed(deadline):
                    raise
                await self._writer._retry_stalled(leave, deadline)
