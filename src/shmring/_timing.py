# Timeouts and polling: how every wait in shmring is bounded.
#
# Rules: a user timeout is None (wait forever) or a number of seconds >= 0, turned into an
# absolute time.monotonic() deadline once, at the start of the call; one past any wait the
# OS can time (math.inf, or beyond threading.TIMEOUT_MAX) is taken as None. A wait that
# sleeps on a futex sleeps POLL_SLICE first, then twice as long after each sleep nothing
# ended, up to LONGEST_SLICE (Sleeps): an idle waiter wakes a few times a second, not ten
# (each wake-up runs with cold caches: docs/performance.md), and still runs its liveness
# checks and catches a lost wake-up within LONGEST_SLICE, whatever the timeout.

from __future__ import annotations

import math
import threading
import time
from typing import TypeGuard

import numpy as np

POLL_SLICE = 0.1  # a wait's first sleep, and the least time between its liveness checks
LONGEST_SLICE = 0.4  # an idle wait's sleeps grow to this: "within a second" (docs) holds
DEFAULT_SPIN = 50e-6  # poll this long before sleeping: catches back-to-back frames
# A sequenced overwrite writer held back by another writer (_writer._published, and
# _async's retries) looks again after this pause, doubling up to the last: a stopped writer
# may resume at any time.
STALLED_FIRST_PAUSE = 50e-6
STALLED_LAST_PAUSE = 1e-3


def is_number(value: object) -> TypeGuard[float]:
    """Whether `value` is a real number: Python's or NumPy's (one computed with NumPy), not
    a bool."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(
        value, (int, float, np.integer, np.floating)
    )


def deadline_from(timeout: float | None) -> float | None:
    """Absolute time.monotonic() deadline for a user timeout (None: wait forever)."""
    if timeout is None:
        return None
    kind = type(timeout)
    if kind is not float and kind is not int:  # (the common types first: every timed call)
        if not is_number(timeout):
            raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
        timeout = float(timeout)
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    if timeout >= threading.TIMEOUT_MAX:
        return None
    return time.monotonic() + timeout


def checked_spin(spin: object) -> float:
    if isinstance(spin, bool) or not isinstance(spin, (int, float)) or not 0 <= spin <= 1:
        raise ValueError(f"spin must be a number of seconds between 0 and 1, got {spin!r}")
    return float(spin)


def remaining(deadline: float | None, cap: float | None = None) -> float:
    """Seconds left before `deadline`, capped at `cap` (default: one poll slice)."""
    cap = POLL_SLICE if cap is None else cap
    return cap if deadline is None else min(cap, deadline - time.monotonic())


class Liveness:
    """When a wait is due to check that its peers live: every POLL_SLICE. A wait makes one
    at its start and asks it before every sleep."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = time.monotonic() + POLL_SLICE

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + POLL_SLICE
        return True


class Sleeps:
    """The lengths of one wait's futex sleeps (see Rules): POLL_SLICE, then doubling up to
    LONGEST_SLICE, each cut short at the deadline. A wait makes one, and asks it before
    every sleep."""

    __slots__ = ("_length",)

    def __init__(self) -> None:
        self._length = POLL_SLICE

    def next(self, deadline: float | None) -> float:
        length = self._length
        self._length = max(length, min(2 * length, LONGEST_SLICE))
        return remaining(deadline, length)
