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

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

from . import _layout as L
from ._errors import RingTimeout
from ._fastpath import load_word
from ._sys import try_lock_range, unlock_range

_FIRST_BACKOFF = 20e-6
_MAX_BACKOFF = 1e-3
LOCK_FLOOR = 1.0  # seconds: the shortest wait for the lock, whatever the caller's timeout


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

    def acquire(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            raise self._timeout()
        try:
            backoff = _FIRST_BACKOFF
            while not try_lock_range(self._fd, L.LOCK_HEADER):
                # Contended: look at the file's size at each round, so that a truncation
                # met while waiting raises instead of faulting (SIGBUS) on the owner word.
                self._check_size()
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._timeout()
                time.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            try:
                if backoff != _FIRST_BACKOFF:  # slept: the file may be truncated since
                    self._check_size()
                if self._control[L.C_LOCK_OWNER] != 0:
                    self._repair()
                self._control[L.C_LOCK_OWNER] = self._token
            except BaseException:
                unlock_range(self._fd, L.LOCK_HEADER)
                raise
        except BaseException:
            self._thread_lock.release()
            raise

    def until(self, deadline: float | None) -> Held:
        """`with lock.until(deadline):` holds the lock, taken by lock_deadline(deadline)
        (None: wait for ever), else raises RingTimeout naming the holder."""
        return Held(self, deadline)

    def release(self, clean: bool = True) -> None:
        """Release; `clean=False` leaves the owner mark so the next holder repairs."""
        if clean:
            self._control[L.C_LOCK_OWNER] = 0
        unlock_range(self._fd, L.LOCK_HEADER)
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

    def _timeout(self) -> RingTimeout:
        pid = self._holder_pid(load_word(self._control, L.C_LOCK_OWNER))  # lock-free
        holder = "another process" if pid is None else f"process {pid}"
        return RingTimeout(
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
