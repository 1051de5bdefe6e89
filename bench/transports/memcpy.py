# The physical limit: the producer's own loop with the transport replaced by one in-process copy.
#
# Theory: a one-copy transport can at best run the harness's producer loop (stamp the frame, call
# send) plus one memcpy of the frame; these cells run exactly that, with no consumer, so
# "shmring write ÷ memcpy" is the fraction of the one-copy limit reached. Two destinations:
# `memcpy-hot` copies into the same buffer every time (stays in cache when it fits: the best a
# buffer pool that reuses the most recently freed slot can do); `memcpy-ring` cycles through 8
# slots like a strict ring (8 x 1080p = 50 MB, larger than the L3). The copy is `dst[...] = src`,
# as in the textbook ring. Verified at close: a destination holds the PHASE_END stamp.
from __future__ import annotations

from itertools import cycle

import numpy as np

from bench.cell import Cell
from bench.frames import PHASE_END, make_source, read_head, stamper
from bench.transports import Producer, Transport

RING_SLOTS = 8


class _Copy(Transport):
    kind = "limit"
    slots: int

    def open_producer(self, endpoint: object, cell: Cell) -> Producer:
        src = make_source(cell.size)
        dsts = [np.ones(cell.size.shape, np.uint8) for _ in range(self.slots)]  # pages touched
        next_dst = cycle(dsts).__next__
        stamp = stamper(cell.size)

        def send(seq: int, t_ns: int) -> None:
            stamp(src, seq, t_ns)
            next_dst()[...] = src

        def close() -> None:
            if not any(read_head(dst) == PHASE_END for dst in dsts):
                raise RuntimeError("the last copy did not land")

        return Producer(send, close)


class CacheHot(_Copy):
    name = "memcpy-hot"
    slots = 1


class StrictRing(_Copy):
    name = "memcpy-ring"
    slots = RING_SLOTS
