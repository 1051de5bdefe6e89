"""Which buffer a writer copies a large frame into. Copying a frame of several MiB into the
buffer just written, still in cache, took ~170 µs at 1080p against 330-380 µs into one of
eight taken in turn (docs/OPERATIONS.md, "Large frames"). The cross-process stream of such
frames is in test_stream.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import unique_name

import shmring
from shmring import _writer
from shmring._timing import DEFAULT_SPIN

LARGE = (1080, 1920, 3)  # above HOT_BUFFER_BYTES
MEDIUM = (720, 1280, 3)  # above EAGER_RECLAIM_BYTES, below HOT_BUFFER_BYTES
# Frames of at least EAGER_RECLAIM_BYTES, 4 of which fit in CACHED_POOL_BYTES (which depends
# on this machine's cache; 0 if unknown) or do not.
FITS = (max(_writer.CACHED_POOL_BYTES // 4 // 4096 * 4096, 1),)
OUTGROWS = (max(_writer.CACHED_POOL_BYTES // 4 + 4096, _writer.EAGER_RECLAIM_BYTES),)


def _address(frame: shmring.Frame) -> int:
    address: int = frame.array.__array_interface__["data"][0]
    return address


def _ring(shape: tuple[int, ...], spin: float = DEFAULT_SPIN) -> shmring.RingWriter:
    return shmring.RingWriter.create(unique_name("reuse"), shape, np.uint8, slots=4, spin=spin)


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


def test_medium_frames_and_a_writer_without_spin_never_wait_for_the_buffer() -> None:
    for writer in (_ring(MEDIUM), _ring(LARGE, spin=0)):
        with writer as w, shmring.RingReader.attach(w.name) as r:
            w.write(np.zeros(w.shape, np.uint8))
            kept = r.read(1.0)
            w.write(np.ones(w.shape, np.uint8), timeout=1.0)
            assert w._hot_wait_skips == 0  # never waited, so never backed off
            assert int(kept.array[-1, -1, -1]) == 0
            kept.release()
