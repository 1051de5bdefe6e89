"""Which buffer a writer copies a large frame into: the one written last that its readers
have done with, still in cache (docs/performance.md, "Buffer reuse" and "Hot buffer"). The
cross-process stream of such frames is in test_stream.py."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from helpers import WAIT, Waiter, bounded, unique_name

import shmring
from shmring import _layout as L
from shmring import _writer
from shmring._timing import DEFAULT_SPIN

LARGE = (1080, 1920, 3)  # above HOT_BUFFER_BYTES
MEDIUM = (256, 384, 3)  # above EAGER_RECLAIM_BYTES, below HOT_BUFFER_BYTES
# Frames of at least EAGER_RECLAIM_BYTES, 4 of which fit in CACHED_POOL_BYTES (which depends
# on this machine's cache; 0 if unknown) or do not.
FITS = (max(_writer.CACHED_POOL_BYTES // 4 // 4096 * 4096, 1),)
OUTGROWS = (max(_writer.CACHED_POOL_BYTES // 4 + 4096, _writer.EAGER_RECLAIM_BYTES),)


def _address(frame: shmring.Frame) -> int:
    address: int = frame.array.__array_interface__["data"][0]
    return address


def _ring(shape: tuple[int, ...], spin: float = DEFAULT_SPIN) -> shmring.RingWriter:
    return shmring.RingWriter.create(unique_name("reuse"), shape, np.uint8, slots=4, spin=spin)


def _overwrite_ring() -> shmring.RingWriter:
    """An overwrite ring whose buffers outgrow CACHED_POOL_BYTES (4 slots, 6 buffers)."""
    return shmring.RingWriter.create(
        unique_name("reuse"), OUTGROWS, np.uint8, policy="overwrite", slots=4
    )


def _value(frame: shmring.Frame) -> int:
    """The frame's fill value, checked at both ends (a torn frame differs)."""
    first, last = int(frame.array.flat[0]), int(frame.array.flat[-1])
    assert first == last
    return first


def test_the_sizes_here_sit_on_both_sides_of_the_threshold() -> None:
    assert np.prod(LARGE) >= _writer.HOT_BUFFER_BYTES > np.prod(MEDIUM)
    assert np.prod(MEDIUM) >= _writer.EAGER_RECLAIM_BYTES
    assert 4 * np.prod(OUTGROWS) > _writer.CACHED_POOL_BYTES >= 4 * np.prod(FITS)
    assert np.prod(OUTGROWS) >= _writer.EAGER_RECLAIM_BYTES


@pytest.mark.parametrize(("shape", "buffers_used"), [(FITS, 4), (OUTGROWS, 1)])
def test_the_buffer_just_released_is_reused_when_the_pool_outgrows_the_cache(
    shape: tuple[int, ...], buffers_used: int
) -> None:
    if np.prod(shape) < _writer.EAGER_RECLAIM_BYTES:
        pytest.skip("this machine's cache holds no pool of 4 such frames: every ring reclaims")
    with _ring(shape) as w, shmring.RingReader.attach(w.name) as r:
        addresses = set()
        for n in range(8):
            w.write(np.full(shape, n, np.uint8))
            with r.read(1.0) as frame:
                assert int(frame.array.flat[0]) == int(frame.array.flat[-1]) == n
                addresses.add(_address(frame))
        assert len(addresses) == buffers_used


def test_a_large_frame_goes_into_the_buffer_just_released() -> None:
    with _ring(LARGE) as w, shmring.RingReader.attach(w.name) as r:
        addresses = []
        for n in range(5):
            w.write(np.full(LARGE, n, np.uint8))
            with r.read(1.0) as frame:
                assert int(frame.array[0, 0, 0]) == int(frame.array[-1, -1, -1]) == n
                addresses.append(_address(frame))
        assert len(set(addresses)) == 1
        assert w._hot_wait_skips == 0  # every frame was released before the next write


def test_an_iterating_reader_releases_its_frame_before_it_waits_for_the_next() -> None:
    """`for frame in reader`: asking for the next frame releases the last one at once, also
    while the next is not there yet, so the writer (which waits for that release) copies
    the next frame into the same buffer; iteration goes on with every frame in order."""
    with _ring(LARGE) as w, shmring.RingReader.attach(w.name) as r:
        frames = iter(r)
        w.write(np.full(LARGE, 0, np.uint8))
        first = next(frames)
        address = _address(first)
        waiting = Waiter(lambda: next(frames))
        waiting.start()
        deadline = time.monotonic() + WAIT
        while r._record[L.R_RELEASE] != 1:  # the iterator released frame 0, and waits
            assert time.monotonic() < deadline, "frame 0 was not released before the wait"
        assert first._reader is None and waiting.is_alive()
        w.write(np.full(LARGE, 1, np.uint8), timeout=WAIT)
        waiting.finish()
        assert waiting.exc is None
        second = waiting.result
        assert int(second.array[0, 0, 0]) == int(second.array[-1, -1, -1]) == 1
        assert _address(second) == address and w._hot_wait_skips == 0
        w.write(np.full(LARGE, 2, np.uint8), timeout=WAIT)
        assert int(bounded(lambda: next(frames)).array[-1, -1, -1]) == 2
        assert r._held == [2]


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="nobody polls with more participants than CPUs"
)
def test_a_reader_that_keeps_its_frame_costs_one_bounded_wait_then_a_back_off() -> None:
    with _ring(LARGE) as w, shmring.RingReader.attach(w.name) as r:
        w.write(np.full(LARGE, 0, np.uint8))
        kept = r.read(1.0)  # held across the next writes: the writer cannot have its buffer
        w.write(np.full(LARGE, 1, np.uint8), timeout=1.0)  # waits HOT_BUFFER_WAIT, gives up
        assert w._hot_wait_skips == _writer.HOT_BUFFER_BACKOFF
        newer = r.read(1.0)
        newer.release()
        w.write(np.full(LARGE, 2, np.uint8), timeout=1.0)  # skips the wait, as do the next
        assert w._hot_wait_skips == _writer.HOT_BUFFER_BACKOFF - 1
        assert int(kept.array[0, 0, 0]) == int(kept.array[-1, -1, -1]) == 0  # untouched
        assert _address(kept) != _address(newer)
        kept.release()
        assert int(r.read(1.0).array[-1, -1, -1]) == 2


def test_a_writer_with_several_readers_never_waits_for_the_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        _ring(LARGE) as w,
        shmring.RingReader.attach(w.name) as r,
        shmring.RingReader.attach(w.name) as other,
    ):
        # As on a machine with a CPU for each of the three (here polling may not pay).
        monkeypatch.setattr(w._p, "spinning_pays", lambda: True)
        w.write(np.full(LARGE, 0, np.uint8))
        kept = r.read(1.0)
        other.read(1.0).release()
        w.write(np.full(LARGE, 1, np.uint8), timeout=1.0)  # r keeps frame 0: no wait for it
        assert w._hot_wait_skips == 0  # never waited, so never backed off
        assert _value(kept) == 0
        kept.release()
        assert _value(r.read(1.0)) == _value(other.read(1.0)) == 1


def test_medium_frames_and_a_writer_without_spin_never_wait_for_the_buffer() -> None:
    for writer in (_ring(MEDIUM), _ring(LARGE, spin=0)):
        with writer as w, shmring.RingReader.attach(w.name) as r:
            w.write(np.zeros(w.shape, np.uint8))
            kept = r.read(1.0)
            w.write(np.ones(w.shape, np.uint8), timeout=1.0)
            assert w._hot_wait_skips == 0  # never waited, so never backed off
            assert int(kept.array[-1, -1, -1]) == 0
            kept.release()


def test_an_overwrite_writer_reuses_the_buffers_its_latest_reader_passed() -> None:
    if np.prod(OUTGROWS) < _writer.EAGER_RECLAIM_BYTES:
        pytest.skip("this machine's cache holds no pool of 4 such frames")
    with _overwrite_ring() as w, shmring.RingReader.attach(w.name) as r:
        addresses = set()
        for n in range(30):
            w.write(np.full(OUTGROWS, n, np.uint8))
            if n % 3 == 2:  # the reader looks at every third frame, skipping two
                with r.latest(1.0) as frame:
                    assert (frame.seq, _value(frame), frame.dropped) == (n, n, 2)
                    addresses.add(_address(frame))
        assert len(addresses) <= 2  # of 6 buffers: taken in turn, 10 looks used them all


def test_an_overwrite_writer_still_drops_the_oldest_frames_of_an_iterating_reader() -> None:
    with _overwrite_ring() as w, shmring.RingReader.attach(w.name, start="oldest") as r:
        for n in range(6):  # 4 slots: frames 0 and 1 leave the window
            w.write(np.full(OUTGROWS, n, np.uint8))
        frames = iter(r)
        got = [next(frames) for _ in range(2)]
        assert [(f.seq, _value(f), f.dropped) for f in got] == [(2, 2, 2), (3, 3, 0)]
        for n in range(6, 8):  # frames 4 and 5 are not passed yet: they stay
            w.write(np.full(OUTGROWS, n, np.uint8))
        got = [next(frames) for _ in range(4)]
        assert [(f.seq, _value(f), f.dropped) for f in got] == [(n, n, 0) for n in range(4, 8)]


def test_an_overwrite_ring_without_readers_keeps_its_newest_frames() -> None:
    with _overwrite_ring() as w:
        for n in range(4):
            w.write(np.full(OUTGROWS, n, np.uint8))
        with shmring.RingReader.attach(w.name, start="oldest") as r:
            frames = iter(r)
            got = [next(frames) for _ in range(4)]
            assert [(f.seq, _value(f), f.dropped) for f in got] == [(n, n, 0) for n in range(4)]


def test_a_frame_held_in_an_overwrite_ring_outlives_the_reuse_of_the_others() -> None:
    with (
        _overwrite_ring() as w,
        shmring.RingReader.attach(w.name) as keeper,
        shmring.RingReader.attach(w.name) as looker,
    ):
        w.write(np.full(OUTGROWS, 0, np.uint8))
        kept = keeper.read(1.0)
        for n in range(1, 60):
            w.write(np.full(OUTGROWS, n, np.uint8))
            with looker.latest(1.0) as frame:
                assert (frame.seq, _value(frame)) == (n, n)
                assert _address(frame) != _address(kept)
        assert (kept.seq, _value(kept)) == (0, 0)
        kept.release()
