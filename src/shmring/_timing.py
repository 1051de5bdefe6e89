# Timeouts and polling: how every wait in shmring is bounded.
#
# Rules: a user timeout is None (wait forever) or a number of seconds >= 0, turned into an
# absolute time.monotonic() deadline once, at the start of the call; one past any wait the
# OS can time (math.inf, or beyond threading.TIMEOUT_MAX) is taken as None. No single
# sleep lasts longer than POLL_SLICE, so liveness checks run and a lost wake-up costs at
# most one slice, whatever the timeout.

from __future__ import annotations

import math
import threading
import time

POLL_SLICE = 0.1  # longest single sleep: bounds liveness checks and any lost wake-up
DEFAULT_SPIN = 50e-6  # poll this long before sleeping: catches back-to-back frames
# A sequenced overwrite writer held back by another writer (_writer._published, and
# _async's retries) looks again after this pause, doubling up to the last: a stopped writer
# may resume at any time.
STALLED_FIRST_PAUSE = 50e-6
STALLED_LAST_PAUSE = 1e-3


def deadline_from(timeout: float | None) -> float | None:
    """Absolute time.monotonic() deadline for a user timeout (None: wait forever)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    if timeout >= threading.TIMEOUT_MAX:
        return None
    return time.monotonic() + timeout


def checked_spin(spin: object) -> float:
    if isinstance(spin, bool) or not isinstance(spin, (int, float)) or not 0 <= spin <= 1:
        raise ValueError(f"spin must be a number of seconds between 0 and 1, got {spin!r}")
    return float(spin)


def remaining(deadline: float | None) -> float:
    """Seconds left before `deadline`, capped at one poll slice."""
    if deadline is None:
        return POLL_SLICE
    return min(POLL_SLICE, deadline - time.monotonic())
