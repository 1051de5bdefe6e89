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

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

from . import _layout as L
from ._errors import RingTimeout
from ._sys import try_lock_range, unlock_range

_FIRST_BACKOFF = 20e-6
_MAX_BACKOFF = 1e-3


class HeaderLock:
    def __init__(
        self, name: str, fd: int, control: memoryview, token: int, repair: Callable[[], None]
    ) -> None:
        self._name = name
        self._fd = fd
        self._control = control
        self._token = token
        self._repair = repair
        self._thread_lock = threading.Lock()

    def acquire(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            raise self._timeout()
        try:
            backoff = _FIRST_BACKOFF
            while not try_lock_range(self._fd, L.LOCK_HEADER):
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._timeout()
                time.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            try:
                if self._control[L.C_LOCK_OWNER] != 0:
                    self._repair()
                self._control[L.C_LOCK_OWNER] = self._token
            except BaseException:
                unlock_range(self._fd, L.LOCK_HEADER)
                raise
        except BaseException:
            self._thread_lock.release()
            raise

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
        return RingTimeout(
            f"ring {self._name!r}: timed out waiting for the header lock; another process "
            "holds it (a stopped process? see `shmring inspect`)"
        )
