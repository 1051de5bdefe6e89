"""Model-based test: random sequences of write / claim / read / latest / release / close
against a simple model of what one writer and one or two readers must observe.

Single process; both policies. What the model pins down:

* every frame a reader gets has exactly the contents, shape, meta and timestamp that were
  published under its seq, and stays unchanged while held, whatever is written meanwhile;
* block policy: readers get every frame in order, ``dropped`` stays 0; a write succeeds
  (timeout 0) exactly when fewer than ``slots`` frames are still unreleased by some reader,
  and times out otherwise;
* overwrite policy: writes never wait; a reader's frames are in order, each frame's
  ``dropped`` is the gap since its previous one, ``r.dropped`` their sum, and the newest
  ``slots - max_readers - max_writers`` frames are never lost;
* ``latest`` returns the newest frame (and releases the one the previous ``latest`` call
  returned, as the Frame docstring says); an abandoned claim publishes nothing;
* after close: readers drain what was published, then ``EndOfStream``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from helpers import unique_name
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shmring import EndOfStream, Frame, RingReader, RingTimeout, RingWriter

pytestmark = pytest.mark.stress  # hypothesis-driven sequences of operations

SHAPE = (4, 6)
META_SIZE = 8
MAX_READERS = 2
MAX_WRITERS = 1

shapes = st.tuples(st.integers(1, SHAPE[0]), st.integers(1, SHAPE[1]))
metas = st.binary(max_size=META_SIZE)
timestamps = st.one_of(st.none(), st.integers(0, 2**63 - 1))


@dataclass
class Published:
    array: np.ndarray
    meta: bytes
    ts: int | None  # explicit timestamp, or None (then t_lo <= ts <= t_hi)
    t_lo: int
    t_hi: int


@dataclass
class ReaderModel:
    handle: RingReader
    next: int = 0  # first seq this reader has not been handed yet
    dropped: int = 0
    held: dict[int, Frame] = field(default_factory=dict)
    last_latest: int | None = None  # latest() releases the frame the previous one returned


class ErrorLike(Exception):
    pass


class RingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.writer: RingWriter | None = None
        self.readers: list[ReaderModel] = []
        self.published: dict[int, Published] = {}
        self.next_seq = 0
        self.closed = False
        self.counter = 0

    @initialize(
        policy=st.sampled_from(["block", "overwrite"]),
        n_readers=st.integers(1, 2),
        slots=st.integers(1, 7),
    )
    def setup(self, policy: str, n_readers: int, slots: int) -> None:
        if policy == "overwrite":
            slots = max(slots, MAX_READERS + MAX_WRITERS + 1)
        self.policy = policy
        self.slots = slots
        self.keep = slots - MAX_READERS - MAX_WRITERS  # overwrite: newest frames never lost
        self.name = unique_name("sm")
        self.writer = RingWriter.create(
            self.name,
            SHAPE,
            np.uint8,
            slots=slots,
            policy=policy,
            max_readers=MAX_READERS,
            max_writers=MAX_WRITERS,
            meta_size=META_SIZE,
        )
        self.readers = [
            ReaderModel(RingReader.attach(self.name, start="oldest")) for _ in range(n_readers)
        ]

    # ------------------------------------------------------------------ helpers
    def _content(self, shape: tuple[int, int]) -> np.ndarray:
        self.counter += 1
        base = np.arange(shape[0] * shape[1], dtype=np.uint32) * 7 + self.counter * 31
        return (base % 251).astype(np.uint8).reshape(shape)

    def _floor(self) -> int:
        """Lowest seq some reader still needs (held, or not yet read)."""
        floor = self.next_seq
        for rm in self.readers:
            floor = min(floor, min(rm.held) if rm.held else rm.next)
        return floor

    def _must_fit(self) -> bool:
        return self.policy == "overwrite" or self.next_seq - self._floor() < self.slots

    def _published(self, seq: int, data: np.ndarray, meta: bytes, ts: int | None, lo: int) -> None:
        assert seq == self.next_seq, f"published as seq {seq}, expected {self.next_seq}"
        self.published[seq] = Published(data.copy(), meta, ts, lo, time.monotonic_ns())
        self.next_seq += 1

    def _check_frame(self, frame: Frame) -> None:
        want = self.published[frame.seq]
        assert frame.array.shape == want.array.shape
        np.testing.assert_array_equal(frame.array, want.array)
        assert frame.meta == want.meta
        if want.ts is not None:
            assert frame.timestamp_ns == want.ts
        else:
            assert want.t_lo <= frame.timestamp_ns <= want.t_hi

    # ------------------------------------------------------------------ writer rules
    @precondition(lambda self: self.writer is not None and not self.closed)
    @rule(shape=shapes, meta=metas, ts=timestamps)
    def write(self, shape: tuple[int, int], meta: bytes, ts: int | None) -> None:
        assert self.writer is not None
        data = self._content(shape)
        fits = self._must_fit()
        lo = time.monotonic_ns()
        try:
            seq = self.writer.write(data, 0.0, timestamp_ns=ts, meta=meta)
        except RingTimeout:
            assert not fits, "write timed out although the ring had room"
            return
        assert fits, "block policy: write succeeded although a reader would lose a frame"
        self._published(seq, data, meta, ts, lo)

    @precondition(lambda self: self.writer is not None and not self.closed)
    @rule(shape=shapes, meta=metas, ts=timestamps, abandon=st.booleans())
    def claim(self, shape: tuple[int, int], meta: bytes, ts: int | None, abandon: bool) -> None:
        assert self.writer is not None
        data = self._content(shape)
        fits = self._must_fit()
        lo = time.monotonic_ns()
        c = self.writer.claim(0.0, shape=shape, timestamp_ns=ts, meta=meta)
        try:
            with c as slot:
                assert slot.shape == shape and slot.flags.writeable
                slot[...] = data
                if abandon:
                    raise ErrorLike
        except RingTimeout:
            assert not fits, "claim timed out although the ring had room"
            return
        except ErrorLike:
            assert fits
            return  # abandoned: nothing published, no seq used
        assert fits, "block policy: claim succeeded although a reader would lose a frame"
        assert c.seq is not None, "a published claim has a sequence number"
        self._published(c.seq, data, meta, ts, lo)

    @precondition(lambda self: self.writer is not None and not self.closed)
    @rule()
    def close_writer(self) -> None:
        assert self.writer is not None
        self.writer.close()
        self.closed = True

    # ------------------------------------------------------------------ reader rules
    def _can_take(self, i: int) -> bool:
        if not self.readers:
            return False
        rm = self.readers[i % len(self.readers)]
        limit = 1 if self.policy == "overwrite" else 2  # overwrite: one held frame at most
        return len(rm.held) < limit

    def _take(self, i: int, latest: bool, hold: bool) -> None:
        rm = self.readers[i % len(self.readers)]
        try:
            frame = rm.handle.latest(0.0) if latest else rm.handle.read(0.0)
        except RingTimeout:
            assert rm.next >= self.next_seq and not self.closed, "a frame was due"
            return
        except EndOfStream:
            assert rm.next >= self.next_seq and self.closed, "end of stream too early"
            return
        assert rm.next < self.next_seq, f"got frame {frame.seq} but none was published"
        if latest or self.policy == "block":
            want = self.next_seq - 1 if latest else rm.next
            assert frame.seq == want, f"got seq {frame.seq}, expected {want}"
        else:
            assert rm.next <= frame.seq < self.next_seq
            if self.next_seq - rm.next <= self.keep:
                assert frame.seq == rm.next, "overwrite lost one of the newest frames"
        assert frame.dropped == frame.seq - rm.next
        rm.dropped += frame.dropped
        rm.next = frame.seq + 1
        self._check_frame(frame)
        if latest:
            if rm.last_latest is not None:
                rm.held.pop(rm.last_latest, None)  # released by this latest() call
            rm.last_latest = frame.seq if hold else None
        if hold:
            rm.held[frame.seq] = frame
        else:
            frame.release()

    @precondition(lambda self: bool(self.readers))
    @rule(i=st.integers(0, 1), hold=st.booleans())
    def read(self, i: int, hold: bool) -> None:
        if self._can_take(i):
            self._take(i, latest=False, hold=hold)

    @precondition(lambda self: bool(self.readers))
    @rule(i=st.integers(0, 1), hold=st.booleans())
    def latest(self, i: int, hold: bool) -> None:
        if self._can_take(i):
            self._take(i, latest=True, hold=hold)

    @precondition(lambda self: any(rm.held for rm in self.readers))
    @rule(i=st.integers(0, 1), data=st.data())
    def release(self, i: int, data: Any) -> None:
        rm = self.readers[i % len(self.readers)]
        if rm.held:
            seq = data.draw(st.sampled_from(sorted(rm.held)))
            rm.held.pop(seq).release()

    # ------------------------------------------------------------------ invariants
    @invariant()
    def held_frames_unchanged(self) -> None:
        for rm in self.readers:
            for frame in rm.held.values():
                self._check_frame(frame)

    @invariant()
    def dropped_counts(self) -> None:
        for rm in self.readers:
            assert rm.handle.dropped == rm.dropped

    def teardown(self) -> None:
        for rm in self.readers:
            for frame in rm.held.values():
                frame.release()
            rm.handle.close()
        if self.writer is not None:
            self.writer.close()


RingMachine.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ring_state_machine = RingMachine.TestCase
