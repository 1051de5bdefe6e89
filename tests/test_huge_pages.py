"""Frame buffers on huge pages (_segment.py, _map_data): every process maps the buffers at an
address where 2 MiB pages fit, and a ring whose frames are at least that large gets them.
Also the mapping's lifecycle: a frame's array outlives close(), and the mapping goes with it."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from helpers import (
    WAIT,
    Child,
    data_address,
    finish,
    huge_mapped_kib,
    mapped_here,
    segment_file_id,
    unique_name,
)

import shmring
from shmring import RingReader, RingWriter, _segment
from shmring._sys import HUGE_PAGE_BYTES, collapse_to_huge_pages

LARGE = (1024, 1024, 3)  # 3 MiB: at least one whole huge page in every buffer


@pytest.fixture
def collapses(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each request for huge pages in this process answered (the real request runs)."""
    answers: list[bool] = []

    def recorded(address: int, length: int) -> bool:
        answers.append(collapse_to_huge_pages(address, length))
        return answers[-1]

    monkeypatch.setattr(_segment, "collapse_to_huge_pages", recorded)
    return answers


def _congruent(address: int, data_offset: int) -> bool:
    return (address - data_offset) % HUGE_PAGE_BYTES == 0


@pytest.mark.parametrize("shape", [(64,), (480, 640, 3), LARGE])
def test_buffers_are_mapped_where_huge_pages_fit(shape: tuple[int, ...]) -> None:
    name = unique_name()
    with RingWriter.create(name, shape, np.uint8, slots=3) as w, RingReader.attach(name) as r:
        offset = w._p.geometry.data_offset
        assert _congruent(data_address(w), offset)
        assert _congruent(data_address(r), offset)
        frame = np.arange(np.prod(shape), dtype=np.uint64).astype(np.uint8).reshape(shape)
        w.write(frame, WAIT)
        with r.read(WAIT) as got:
            assert np.array_equal(got.array, frame)
            assert not got.array.flags.writeable


def test_large_frames_get_huge_pages_in_every_process(collapses: list[bool]) -> None:
    name = unique_name()
    slots = 3
    with RingWriter.create(name, LARGE, np.uint8, slots=slots) as w:
        if collapses != [True]:
            pytest.skip("the kernel refuses MADV_COLLAPSE (Linux < 6.1, or THP set to deny)")
        g = w._p.geometry
        # Every whole 2 MiB page of the file inside the buffers is mapped huge.
        first = -g.data_offset % HUGE_PAGE_BYTES
        whole = (g.segment_bytes - g.data_offset - first) // HUGE_PAGE_BYTES
        assert whole >= slots  # each 3 MiB buffer holds at least one
        want_kib = whole * HUGE_PAGE_BYTES // 1024
        assert huge_mapped_kib(data_address(w)) == want_kib
        w.write(np.full(LARGE, 42, np.uint8), WAIT)
        with Child("popen", "report_huge_pages", name=name) as kid:
            report = finish(kid)
        assert _congruent(report["address"], report["data_offset"])
        assert report["huge_kib"] == want_kib
        assert report["first"] == 42


def test_frame_array_outlives_close_and_nothing_stays_mapped_after_it() -> None:
    name = unique_name()
    w = RingWriter.create(name, LARGE, np.uint8, slots=2)
    r = RingReader.attach(name)
    segment = segment_file_id(name)
    w.write(np.full(LARGE, 7, np.uint8), WAIT)
    frame = r.read(WAIT)
    array = frame.array
    frame.release()
    r.close()
    w.close()
    assert mapped_here(segment)  # the array still reads the ring's pages: they must stay mapped
    assert int(array[-1, -1, -1]) == 7 and int(array.sum()) == 7 * array.size
    del array, frame, r, w
    gc.collect()
    assert not mapped_here(segment)


def test_only_participants_ask_for_huge_pages(collapses: list[bool]) -> None:
    """Asking can move a ring's pages while it streams (when the creator's request failed),
    so looking at a ring (inspect, ls, top) never asks; attaching to it does."""
    asked = collapses
    name = unique_name()
    with RingWriter.create(name, LARGE, np.uint8, slots=2) as w:
        assert len(asked) == 1
        info = shmring.inspect_ring(name)
        assert info.shape == LARGE and len(asked) == 1
        assert any(ring.name == name for ring in shmring.list_rings())
        assert len(asked) == 1
        with RingReader.attach(w.name):
            assert len(asked) == 2
