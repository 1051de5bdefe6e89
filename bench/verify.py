# Frame verification: what a consumer checks per frame, and the verdict on a whole run.
#
# Rules: a consumer checks every frame it gets (head and tail agree: not torn; sequence numbers
# in order: no duplicate; no gap unless the topology or the transport allows one) and reports
# counts; the parent's verdict() then checks those counts against what the producers sent, per
# topology. The loops below are the consumer's hot path (their cost is inside every figure), so
# they bind everything to locals and do the least per frame.
# Theory: Tally follows one stream 0, 1, 2, ... (1 producer; every consumer sees every frame, or
# the newest only). Streams follows several producers' streams (fan-in: frames of producer i
# carry i << WRITER_SHIFT, each stream must be complete and in order) or one consumer's share of
# one stream (groups: its frames increase, the others' are missing). For groups each consumer
# also marks the sequence numbers it took (one byte per frame in a bytearray, sent to the parent
# as a bitmap) and the parent checks the shares exactly: disjoint, and together every frame sent.
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bench.cell import FAN_IN, GROUPS, LATEST, Cell
from bench.frames import HEAD, PHASE_END, SEQ_MASK, TAIL, WRITER_SHIFT, Frame

Report = dict[str, Any]
TAKEN = "taken"  # a group consumer's report: the bitmap of the sequence numbers it took
SHARE_START = 1 << 20  # frames a group consumer's marks cover before the bytearray first grows
Unpack = Callable[..., tuple[Any, ...]]  # struct unpack_from on an ndarray (a buffer)


class Tally:
    """A consumer's lossless bookkeeping of one stream, carried across phases."""

    def __init__(self, tail_offset: int) -> None:
        self.tail_offset = tail_offset
        self.expected = 0  # next sequence number due
        self.gaps = 0  # frames skipped
        self.dups = 0  # frames seen again or out of order
        self.torn = 0  # head and tail disagree

    @property
    def delivered(self) -> int:
        return self.expected - self.gaps

    def report(self) -> Report:
        return {
            "expected": self.expected,
            "delivered": self.delivered,
            "gaps": self.gaps,
            "dups": self.dups,
            "torn": self.torn,
        }

    def take(
        self,
        frames: Iterator[Frame],
        until: float = math.inf,
        latencies: list[int] | None = None,
    ) -> bool:
        """Verify frames up to PHASE_END (returns True) or until perf_counter() passes `until`."""
        unpack_head: Unpack = HEAD.unpack_from
        unpack_tail: Unpack = TAIL.unpack_from
        tail_offset = self.tail_offset
        clock = time.perf_counter
        now = time.monotonic_ns
        timed = until != math.inf
        record = None if latencies is None else latencies.append
        expected, gaps, dups, torn = self.expected, self.gaps, self.dups, self.torn
        ended = False
        for frame in frames:
            received = now() if record is not None else 0
            head, sent = unpack_head(frame)
            (tail,) = unpack_tail(frame, tail_offset)
            if head == expected and tail == head:
                expected += 1
            elif head != tail:
                torn += 1
            elif head == PHASE_END:
                ended = True
                break
            elif head > expected:
                gaps += head - expected
                expected = head + 1
            else:
                dups += 1
            if record is not None:
                record(received - sent)
            if timed and clock() >= until:
                break
        self.expected, self.gaps, self.dups, self.torn = expected, gaps, dups, torn
        return ended


class Streams:
    """A consumer's bookkeeping of several producers' streams, or of its share of one
    (`share`: it also marks which sequence numbers it took)."""

    def __init__(self, tail_offset: int, producers: int, ends_due: int, share: bool) -> None:
        self.tail_offset = tail_offset
        self.ends_due = ends_due  # PHASE_END frames that end a phase (one per producer)
        self.ends = 0  # PHASE_END frames taken in the current phase
        self.last = [-1] * producers  # per producer: the last sequence number taken
        self.counts = [0] * producers  # per producer: frames taken
        self.share = share
        self.taken = bytearray(SHARE_START if share else 0)  # share: taken[seq] = 1
        self.gaps = 0  # frames skipped (in a group: the frames the other consumers took)
        self.dups = 0
        self.torn = 0

    @property
    def delivered(self) -> int:
        return sum(self.counts)

    def report(self) -> Report:
        report: Report = {
            "delivered": self.delivered,
            "counts": self.counts,
            "gaps": self.gaps,
            "dups": self.dups,
            "torn": self.torn,
        }
        if self.share:  # packed 8 frames a byte for the trip to the parent
            report[TAKEN] = np.packbits(np.frombuffer(self.taken, np.uint8)).tobytes()
        return report

    def take(
        self,
        frames: Iterator[Frame],
        until: float = math.inf,
        latencies: list[int] | None = None,
    ) -> bool:
        """Verify frames up to the phase's last PHASE_END (True) or until `until` passes."""
        unpack_head: Unpack = HEAD.unpack_from
        unpack_tail: Unpack = TAIL.unpack_from
        tail_offset = self.tail_offset
        clock = time.perf_counter
        now = time.monotonic_ns
        timed = until != math.inf
        record = None if latencies is None else latencies.append
        last, counts = self.last, self.counts
        share, taken, room = self.share, self.taken, len(self.taken)
        gaps, dups, torn, ends, due = self.gaps, self.dups, self.torn, self.ends, self.ends_due
        ended = False
        for frame in frames:
            received = now() if record is not None else 0
            head, sent = unpack_head(frame)
            (tail,) = unpack_tail(frame, tail_offset)
            if head != tail:
                torn += 1
            elif head == PHASE_END:
                ends += 1
                if ends == due:
                    ends = 0
                    ended = True
                    break
            else:
                writer, seq = head >> WRITER_SHIFT, head & SEQ_MASK
                step = seq - last[writer]
                if step > 0:
                    gaps += step - 1
                    last[writer] = seq
                    counts[writer] += 1
                    if share:
                        if seq >= room:
                            taken.extend(bytes(seq + 1))  # at least doubles: rare, amortised
                            room = len(taken)
                        taken[seq] = 1
                else:
                    dups += 1
            if record is not None:
                record(received - sent)
            if timed and clock() >= until:
                break
        self.gaps, self.dups, self.torn, self.ends = gaps, dups, torn, ends
        return ended


Verifier = Tally | Streams


def verifier(cell: Cell) -> Verifier:
    """The bookkeeping a consumer of this cell keeps."""
    if cell.topology in (FAN_IN, GROUPS):
        return Streams(
            cell.size.tail_offset, cell.producers, cell.ends_due, cell.topology == GROUPS
        )
    return Tally(cell.size.tail_offset)


def verdict(
    cell: Cell, drops: bool, producers: list[Report], consumers: list[Report]
) -> tuple[str | None, dict[str, int]]:
    """(why the run's frames fail verification or None, the counts: lost, dups, torn,
    dropped). `drops`: the transport may drop frames by design (PUB/SUB); its gaps are
    reported as dropped, not as a failure."""
    sent = [p.get("sent", 0) for p in producers]
    dups = sum(c.get("dups", 0) for c in consumers)
    torn = sum(c.get("torn", 0) for c in consumers)
    lost = dropped = 0
    if LATEST in cell.phases:
        pass  # the newest frame only: skipping is the point (order and tearing are checked)
    elif cell.topology == FAN_IN:
        lost = sum(max(0, s - n) for c in consumers for s, n in zip(sent, c["counts"], strict=True))
        lost += sum(c["gaps"] for c in consumers)
    elif cell.topology == GROUPS:
        lost, twice = shares(sent[0], [c[TAKEN] for c in consumers])
        dups += twice
    else:
        missing = sum(c["gaps"] + sent[0] - c["expected"] for c in consumers)
        if drops:
            dropped = missing
        else:
            lost = missing
    counts = {"lost": lost, "dups": dups, "torn": torn, "dropped": dropped}
    if lost or dups or torn:
        delivered = [c.get("delivered") for c in consumers]
        return (
            f"verification failed: lost={lost} dups={dups} torn={torn} "
            f"delivered={delivered} sent={sent}",
            counts,
        )
    return None, counts


def shares(sent: int, taken: list[bytes]) -> tuple[int, int]:
    """Groups: (frames no consumer took, extra copies taken) from each consumer's bitmap of
    the sequence numbers it took; a frame numbered past those sent counts as an extra copy."""
    width = max([sent, *(8 * len(bitmap) for bitmap in taken)])
    per_frame = np.zeros(width, np.uint8)  # consumers that took each frame
    for bitmap in taken:
        bits = np.unpackbits(np.frombuffer(bitmap, np.uint8))
        per_frame[: bits.size] += bits
    within, beyond = per_frame[:sent], per_frame[sent:]
    lost = int(np.count_nonzero(within == 0))
    extra = int(within.sum()) - (sent - lost) + int(beyond.sum())
    return lost, extra
