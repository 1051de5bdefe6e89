"""Which frames a reader holds when iteration, read() and latest() are mixed."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import unique_name

import shmring


def _ring(policy: str = "block") -> shmring.RingWriter:
    return shmring.RingWriter.create(
        unique_name("hold"), (4,), np.uint8, slots=8, policy=policy, max_readers=2, max_writers=1
    )


def test_frames_from_read_stay_held_across_iteration() -> None:
    with _ring() as w, shmring.RingReader.attach(w.name) as r:
        for i in range(6):
            w.write(np.full(4, i, np.uint8))
        frames = iter(r)
        first = next(frames)
        first.release()  # released by hand: iteration must not release anything twice
        kept = r.read(1.0)
        second, third = next(frames), next(frames)
        assert [first.seq, kept.seq, second.seq, third.seq] == [0, 1, 2, 3]
        assert int(kept.array[0]) == 1  # still held, still intact
        kept.release()
        assert next(frames).seq == 4


def test_block_writer_waits_for_a_held_frame_then_goes_on() -> None:
    with _ring() as w, shmring.RingReader.attach(w.name) as r:
        w.write(np.full(4, 0, np.uint8))
        held = r.read(1.0)
        for i in range(1, 8):
            w.write(np.full(4, i, np.uint8), timeout=1.0)
        with pytest.raises(shmring.RingTimeout):
            w.write(np.full(4, 8, np.uint8), timeout=0.05)  # every slot is still needed
        assert int(held.array[0]) == 0
        held.release()
        for i in range(1, 8):
            with r.read(1.0) as frame:
                assert int(frame.array[0]) == i
        assert w.write(np.full(4, 8, np.uint8), timeout=1.0) == 8


def test_overwrite_reader_holds_frames_like_a_block_reader() -> None:
    """read() frames stay held until released, iteration releases only the frame it
    returned last, and each held frame is intact while newer frames replace the ring's."""
    with _ring("overwrite") as w, shmring.RingReader.attach(w.name, start="oldest") as r:
        for i in range(3):
            w.write(np.full(4, i, np.uint8))
        first, second = r.read(1.0), r.read(1.0)  # two at once, neither released
        frames = iter(r)
        third = next(frames)
        for i in range(3, 30):  # the writer laps the ring around the held frames
            w.write(np.full(4, i, np.uint8))
        assert [first.seq, second.seq, third.seq] == [0, 1, 2]
        assert [int(f.array[0]) for f in (first, second, third)] == [0, 1, 2]
        newer = next(frames)  # releases `third` only
        assert third._reader is None and first._reader is not None
        assert int(first.array[0]) == 0 and int(second.array[0]) == 1
        assert int(newer.array[0]) == newer.seq
        first.release()
        first.release()  # idempotent
        second.release()
