# The header lock: mutual exclusion between processes for header updates.
#
# Theory: the lock itself is a kernel OFD lock on byte LOCK_HEADER of the segment file, so
# the kernel releases it when a holder dies and no bytes in shared memory can wedge it.
# Beside it, the holder writes its token into the control word C_LOCK_OWNER and clears it
# on a clean release. A process that takes the lock and finds that word non-zero knows the
# previous holder died (or raised) in the middle of an update, and runs the repair callback
# before doing anything else. A thread lock makes one handle safe to share between threads
# (OFD locks are per open file, so threads of one handle would otherwise all "hold" it).
#
# OFD locks have no timed wait, and holds are a few microseconds, so a contended acquire
# polls with a short, growing sleep, bounded by the caller's deadline.
#
# Deadlines: a stopped process (SIGSTOP, a debugger, Ctrl-Z) that holds the lock is not
# dead, so the kernel does not release it; only the waiter's deadline ends the wait. Every
# call that takes a timeout passes its deadline here (`until`), and a call without one that
# must not hang (close) passes its own limit. The wait for the lock is never cut shorter
# than LOCK_FLOOR, though: timeout=0 means "do not wait for frames / space / the ring", not
# "fail when another process is in the middle of a microsecond update". So a call returns
# or raises RingTimeout at most max(timeout, LOCK_FLOOR) after it starts waiting for the
# lock; timeout=None waits for ever, as the caller asked.
#
# Impatience: an awaitable call runs its steps on the event loop's thread, where a wait of
# LOCK_FLOOR would stall every other task. It runs them `impatiently`: within that, a wait
# for the lock gives up after IMPATIENT_WAIT (and one for a writer to leave its lock-free
# step, which may be copying a large frame, after IMPATIENT_QUIESCE) with LockBusy, a
# RingTimeout, so the step unwinds as from any timeout, and a publish waiting for a position
# another writer holds gives up after IMPATIENT_WAIT too (PUBLISH_STALLED); the awaitable call
# then waits on the loop and runs the step again, up to the deadline the blocking call has.
# A context variable marks the steps: other threads, and the loop's own synchronous calls
# (close()), keep waiting as above.

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import TypeVar, overload

from . import _layout as L
from ._errors import ParticipantStalled, RingTimeout
from ._fastpath import load_word, position_patience
from ._sys import try_lock_range, unlock_range

_FIRST_BACKOFF = 20e-6
_MAX_BACKOFF = 1e-3
LOCK_FLOOR = 1.0  # seconds: the shortest wait for the lock, whatever the caller's timeout
IMPATIENT_WAIT = 200e-6  # seconds an impatient step waits before LockBusy: holds take µs
IMPATIENT_POSITION_NS = round(IMPATIENT_WAIT * 1e9)
IMPATIENT_QUIESCE = 20e-3  # ... for a writer to leave its step: that holds a frame's copy

_T = TypeVar("_T")
_impatient: ContextVar[bool] = ContextVar("shmring_impatient", default=False)


class LockBusy(ParticipantStalled):
    """An impatient step gave up waiting for the header lock (or for a writer to leave its
    lock-free step) after IMPATIENT_WAIT; the message says what a timeout would."""


def impatiently(step: Callable[[], _T]) -> _T:
    """Run `step` with its waits for the lock cut to IMPATIENT_WAIT (LockBusy after), and
    its publishes' waits for a position (PUBLISH_STALLED after)."""
    token = _impatient.set(True)
    patience = position_patience(IMPATIENT_POSITION_NS)
    try:
        return step()
    finally:
        position_patience(patience)
        _impatient.reset(token)


@overload
def give_up_at(deadline: float, now: float, patience: float = ...) -> float: ...
@overload
def give_up_at(deadline: float | None, now: float, patience: float = ...) -> float | None: ...
def give_up_at(
    deadline: float | None, now: float, patience: float = IMPATIENT_WAIT
) -> float | None:
    """When a wait that started `now` with `deadline` ends: in an impatient step, after
    `patience` at most."""
    if not _impatient.get():
        return deadline
    return now + patience if deadline is None else min(deadline, now + patience)


def gave_up(error: RingTimeout, deadline: float | None, give_up: float | None) -> RingTimeout:
    """`error` for a wait that reached its deadline, LockBusy if impatience ended it."""
    return error if give_up == deadline else LockBusy(str(error))


def lock_deadline(deadline: float | None) -> float | None:
    """The deadline for a wait on the header lock (or on a writer leaving its lock-free
    step) within a call whose own deadline is `deadline`: never sooner than LOCK_FLOOR."""
    if deadline is None:
        return None
    return max(deadline, time.monotonic() + LOCK_FLOOR)


class HeaderLock:
    def __init__(
        self,
        name: str,
        fd: int,
        control: memoryview,
        token: int,
        repair: Callable[[], None],
        holder_pid: Callable[[int], int | None],
        check_size: Callable[[], None],
    ) -> None:
        self._name = name
        self._holder_pid = holder_pid  # the pid of the record with a token, if any
        self._fd = fd
        self._control = control
        self._token = token
        self._repair = repair
        self._check_size = check_size  # raises if the file was truncated: see acquire
        self._thread_lock = threading.Lock()
        self.held_until: float | None = None  # the deadline of the call that holds it

    def acquire(self, timeout: float | None = None) -> None:
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        give_up = give_up_at(deadline, now)
        wait = -1 if give_up is None else max(give_up - now, 0)
        if not self._thread_lock.acquire(timeout=wait):
            raise gave_up(self._timeout(), deadline, give_up)
        try:
            backoff = _FIRST_BACKOFF
            while not try_lock_range(self._fd, L.LOCK_HEADER):
                # Contended: look at the file's size at each round, so that a truncation
                # met while waiting raises instead of faulting (SIGBUS) on the owner word.
                self._check_size()
                if give_up is not None and time.monotonic() >= give_up:
                    raise gave_up(self._timeout(), deadline, give_up)
                time.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            self.held_until = deadline  # a repair below waits no longer (quiesce_writers)
            if backoff != _FIRST_BACKOFF:  # slept: the file may be truncated since
                self._check_size()
            if self._control[L.C_LOCK_OWNER] != 0:
                self._repair()
            self._control[L.C_LOCK_OWNER] = self._token
        except BaseException:
            try:  # whether or not it was taken (Ctrl-C as try_lock_range returned): a no-op
                unlock_range(self._fd, L.LOCK_HEADER)
            finally:
                self._thread_lock.release()
            raise

    def until(self, deadline: float | None) -> Held:
        """`with lock.until(deadline):` holds the lock, taken by lock_deadline(deadline)
        (None: wait for ever), else raises RingTimeout naming the holder."""
        return Held(self, deadline)

    def release(self, clean: bool = True) -> None:
        """Release; `clean=False` leaves the owner mark so the next holder repairs."""
        try:
            if clean:
                self._control[L.C_LOCK_OWNER] = 0
        finally:
            try:  # each step even if Ctrl-C lands in the one before
                unlock_range(self._fd, L.LOCK_HEADER)
            finally:
                self._thread_lock.release()

    def __enter__(self) -> HeaderLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(clean=exc_type is None)

    def _timeout(self) -> ParticipantStalled:
        pid = self._holder_pid(load_word(self._control, L.C_LOCK_OWNER))  # lock-free
        holder = "another process" if pid is None else f"process {pid}"
        return ParticipantStalled(
            f"ring {self._name!r}: timed out waiting for the header lock; {holder} holds it "
            "and may be stopped (SIGSTOP, a debugger, Ctrl-Z): resume it (kill -CONT), or "
            f"see `shmring inspect {self._name}`"
        )


class Held:
    """The context manager HeaderLock.until returns: takes the lock on entry (bounded by
    the deadline), releases it on exit (leaving the owner mark after an exception)."""

    __slots__ = ("_deadline", "_lock")

    def __init__(self, lock: HeaderLock, deadline: float | None) -> None:
        self._lock = lock
        self._deadline = deadline

    def __enter__(self) -> HeaderLock:
        deadline = lock_deadline(self._deadline)
        self._lock.acquire(None if deadline is None else deadline - time.monotonic())
        return self._lock

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release(clean=exc_type is None)
