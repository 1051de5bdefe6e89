# Pacing: a reader of a steady stream naps until just before its next frame is due, then
# polls, so that it is awake when the frame lands instead of being woken by the writer.
#
# Why: a reader woken by the writer costs the writer a FUTEX_WAKE system call and arrives
# after the kernel's wake-up latency (docs/performance.md: `floor-futex`). A writer
# that waits for the reader's release before copying a large frame (_writer.py, "hot
# buffer") waits that long for every frame. A reader already polling when the frame is
# published takes it within a microsecond, and the writer finds nobody to wake.
#
# Theory: a Pacer sees only when the frames a reader waited for arrived (time.monotonic()
# seconds) and their sequence numbers. From those it learns the stream's interval, and so
# when frame `seq` is due. A nap ends `lead` seconds before that: the lead covers how late
# a timed sleep ends on this machine plus the stream's jitter, and it adapts: a nap that
# ends after the frame arrived lengthens it, a long poll after the nap shortens it. A frame
# that came during the nap counts as arriving when the nap was to end at the latest (the
# reader saw it late, by a wake-up's latency). A gap
# of _PAUSE intervals or more is a pause in the stream, which keeps the interval, unless the
# next gap is one too: then the stream slowed down (a writer that ran flat out, then paced),
# and the last gap is its new interval.
#
# A reader that may not poll freely (more busy processes than CPUs) naps only on a `steady`
# stream: it waited for each of its last frames and the gaps keep within STEADY_JITTER of
# the interval; it then polls yielding the CPU, and its lead may grow to half the interval.
#
# Rules: the Pacer only advises; it never waits, reads shared memory or raises. The reader
# naps as a counted sleeper, so a frame that comes early still wakes it at once: a wrong
# guess costs polling, never a lost frame or a later one than without pacing. Streams whose
# interval is shorter than NAP_MIN (a reader's spin covers those) or longer than
# MAX_INTERVAL (an ordinary sleep costs little there) are not paced.

from __future__ import annotations

NAP_MIN = 50e-6  # shorter naps are not worth their system calls: poll instead
MAX_INTERVAL = 0.1  # slower streams sleep until woken (and keep the reader's liveness checks)
LEAD_START = 100e-6  # how early the first nap ends
LEAD_MIN = 10e-6
POLL_TARGET = 30e-6  # how long a reader should poll after a nap before its frame comes
# The lead is at most the reader's spin plus LEAD_SLACK (and half the interval): a jittery
# stream makes it grow, and a reader polls up to lead + spin per frame. Capped so, a reader
# polls at most ~2x what it did before pacing (spin, then a sleep and a wake-up).
LEAD_SLACK = 2 * POLL_TARGET
STEADY_JITTER = 0.25  # a steady stream's gaps stray at most this share of its interval
_PAUSE = 4.0  # a gap this many intervals long is a pause in the stream, not a new rate
_SMOOTHING = 0.25  # weight of a new gap in the interval estimate


class Pacer:
    """Learns one reader's stream interval and advises it when to nap."""

    __slots__ = (
        "_jitter",
        "_lead_max",
        "_paused",
        "_ref_seq",
        "_ref_time",
        "interval",
        "lead",
        "steady",
        "yielding",
    )

    def __init__(self, spin: float) -> None:
        self.interval: float | None = None  # seconds between frames, once learned
        self._lead_max = spin + LEAD_SLACK
        self.lead = min(LEAD_START, self._lead_max)
        self._ref_seq = -1  # the last frame that arrived while the reader waited ...
        self._ref_time = 0.0  # ... and when
        self._paused = False  # whether the last gap was a pause
        self._jitter = 0.0  # how far gaps stray from the interval, smoothed like it
        # Whether the reader waited for each of its last two frames (it keeps pace, rather
        # than catching up with a backlog between waits) and the gaps keep to the interval.
        self.steady = False
        self.yielding = False  # whether the reader polls yielding the CPU (set by it)

    def nap_until(self, seq: int, now: float) -> float | None:
        """When a reader waiting for frame `seq` at `now` should end its nap (None: do not
        nap, poll or sleep as usual)."""
        interval = self.interval
        if interval is None or self._ref_seq < 0 or seq <= self._ref_seq:
            return None
        nap_end = self._ref_time + (seq - self._ref_seq) * interval - self.lead
        # More than an interval ahead, the frame was extrapolated from a burst (frames taken
        # without a wait, published faster than the interval) or a head that jumped: no
        # nap, whose polling afterwards would last as long and checks no writer's liveness.
        if nap_end - now < NAP_MIN or nap_end - now > interval:
            return None
        return nap_end

    def due(self, seq: int) -> float:
        """When frame `seq` is expected (only meaningful after nap_until gave a time)."""
        assert self.interval is not None
        return self._ref_time + (seq - self._ref_seq) * self.interval

    def arrived(self, seq: int, now: float, nap_end: float | None = None) -> None:
        """Frame `seq` arrived at `now` while the reader was waiting for it, or (`nap_end`
        given) was there when the reader woke from a nap meant to end at `nap_end`."""
        if nap_end is not None:
            # It came before the nap ended, as far as we know, and the reader saw it late,
            # by its wake-up's latency. Counted at `now`, that lateness would move the next
            # nap's end as late, past the next frame, which would wake the reader late again.
            now = min(now, nap_end)
        if 0 <= self._ref_seq < seq:
            gap = (now - self._ref_time) / (seq - self._ref_seq)
            interval = self.interval
            if interval is None:
                if NAP_MIN <= gap <= MAX_INTERVAL:
                    self.interval = gap
                    self._jitter = gap  # steady only once gaps have kept to it
            elif gap > MAX_INTERVAL or gap < NAP_MIN:
                self.interval = None  # the stream changed pace: relearn it
            elif gap < _PAUSE * interval:
                self.interval = interval + (gap - interval) * _SMOOTHING
                self._jitter += (abs(gap - interval) - self._jitter) * _SMOOTHING
                self._paused = False
            elif self._paused:  # a second pause in a row: the stream's new pace
                self.interval = gap
                self._paused = False
            else:
                self._paused = True
        self.steady = (
            seq == self._ref_seq + 1
            and self.interval is not None
            and self._jitter <= self.interval * STEADY_JITTER
        )
        self._ref_seq, self._ref_time = seq, now

    def nap_outcome(self, overslept: bool, polled: float) -> None:
        """After a nap: `overslept` if the frame was there when the reader woke (or woke it);
        else `polled` seconds of polling before it came. Adapts the lead. A reader that
        polls `yielding` the CPU (more busy processes than CPUs) lets whoever wants the CPU
        run first, so its timer wake-up may wait its turn; its lead is not capped by the
        spin, only by half the interval, so that it is awake before the writer publishes
        and the writer has nobody to wake."""
        if overslept:
            lead = self.lead * 2
        else:
            lead = self.lead + (POLL_TARGET - polled) / 2
        lead_max = float("inf") if self.yielding else self._lead_max
        limit = lead_max if self.interval is None else min(lead_max, self.interval / 2)
        self.lead = min(max(lead, LEAD_MIN), limit)
