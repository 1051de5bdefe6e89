"""RingWriter.skip: a gap a writer publishes, counted as that many dropped frames by readers
in another process, in order with the frames around it.

* Both writer modes (one writer: exclusive; two: shared, which a block ring sequences and
  an overwrite ring runs under the header lock) and both policies; readers that are their
  own group and a group member (spawned children, reading until the end of the stream and
  verifying every frame).
* One descriptor stands for the whole gap (format 2.2: the count in D_FLAGS' high half).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SMALL, Child, Pattern, Received, finish, unique_name

import shmring
from shmring import _layout as L

# What the writer does, in order: an int is a frame (its tag), a tuple ("skip", n) a gap.
SCRIPT: list[int | tuple[str, int]] = [0, ("skip", 1000), 1, ("skip", 5), ("skip", 7), 2, 3]
FRAMES = [step for step in SCRIPT if isinstance(step, int)]
GAPS = [step[1] for step in SCRIPT if isinstance(step, tuple)]


@pytest.mark.parametrize("policy", ["block", "overwrite"])
@pytest.mark.parametrize("writers", [1, 2], ids=["exclusive", "shared"])
def test_readers_in_another_process_count_a_gap_as_its_frames(policy: str, writers: int) -> None:
    name = unique_name("skip")
    pat = Pattern(SMALL)
    with shmring.RingWriter.create(name, SMALL, np.uint8, slots=16, policy=policy) as w:
        second = shmring.RingWriter.attach(name) if writers == 2 else None
        readers = [Child("spawn", "stream_reader", name=name, shape=SMALL)]
        if policy == "block":  # groups share a cursor under the block policy only
            readers.append(Child("spawn", "stream_reader", name=name, shape=SMALL, group="g"))
        try:
            for reader in readers:
                reader.expect("ready")
            seqs = []
            for step in SCRIPT:
                if isinstance(step, int):
                    seqs.append(w.write(pat.make(step), timeout=10))
                else:  # gaps come from the second writer too, when there is one
                    seqs.append((second or w).skip(step[1], timeout=10))
            assert seqs == list(range(len(SCRIPT)))  # a gap takes one number, one slot
            gap = SCRIPT.index(("skip", 1000))
            flags = w._p.views.descriptors[gap % 16][L.D_FLAGS]
            assert flags == L.DF_SKIP | 1000 << L.SKIP_COUNT_SHIFT
            if second is not None:  # the owner joined at its first write: two writers
                assert w._control[L.C_WRITER_MODE] == L.MODE_SHARED
                assert w._control[L.C_FLAGS] & L.F_SEQUENCED  # either policy: no lock
                second.close()
            w.close()  # the end of the stream: readers report what they got
            for reader in readers:
                got = Received.from_dict(finish(reader)["got"])
                assert got.tags == FRAMES
                assert got.drops == [0, 1000, 12, 0]  # each gap rides on the next frame
                assert got.dropped == sum(GAPS)
                assert got.seqs == [seqs[SCRIPT.index(frame)] for frame in FRAMES]
        finally:
            for reader in readers:
                reader.close()


def test_count_out_of_range_is_refused() -> None:
    name = unique_name("skipr")
    with shmring.RingWriter.create(name, SMALL, np.uint8) as w:
        for count in (0, L.MAX_SKIP_COUNT + 1):
            with pytest.raises(ValueError, match="count must be between 1 and"):
                w.skip(count)
        with pytest.raises(TypeError, match="count must be an integer"):
            w.skip(1.5)  # type: ignore[arg-type]
        assert w.skip(L.MAX_SKIP_COUNT) == 0  # the largest gap one descriptor holds


def test_a_gap_waits_for_space_like_a_frame() -> None:
    """Block policy: a gap takes a slot, so a full ring makes skip() wait (and time out)."""
    name = unique_name("skipf")
    with (
        shmring.RingWriter.create(name, SMALL, np.uint8, slots=2) as w,
        shmring.RingReader.attach(name) as r,
    ):
        w.write(np.zeros(SMALL, np.uint8))
        w.skip(3)
        with pytest.raises(shmring.RingTimeout):
            w.skip(1, timeout=0.05)
        with r.read(1) as frame:
            assert (frame.seq, frame.dropped) == (0, 0)
        w.write(np.ones(SMALL, np.uint8))
        with r.read(1) as frame:
            assert (frame.seq, frame.dropped, r.dropped) == (2, 3, 3)


@pytest.mark.parametrize("policy", ["block", "overwrite"])
@pytest.mark.parametrize("group", [None, "g"], ids=["own", "member"])
def test_a_gap_read_before_its_next_frame_rides_on_that_frame(
    group: str | None, policy: str
) -> None:
    """A reader that passes a gap while the next frame is not yet published (its wait times
    out) reports the gap on that frame when it comes; a group member's cursor (an overwrite
    reader's own, when it takes under the lock) has already moved past the skip, so the
    count is carried."""
    name = unique_name("skipc")
    with (
        shmring.RingWriter.create(name, SMALL, np.uint8, slots=8, policy=policy) as w,
        shmring.RingReader.attach(name, group=group, spin=0) as r,
    ):
        w.write(np.zeros(SMALL, np.uint8))
        with r.read(1) as frame:
            assert frame.dropped == 0
        w.skip(5)
        with pytest.raises(shmring.RingTimeout):
            r.read(0.01)
        w.skip(7)
        with pytest.raises(shmring.RingTimeout):
            r.read(0.01)
        # Counted at once, by a reader whose cursor moved; an overwrite reader of its own
        # (in C) takes from where it was each time, and counts them with the frame.
        assert r.dropped == (0 if (policy, group) == ("overwrite", None) else 12)
        w.write(np.ones(SMALL, np.uint8))
        with r.read(1) as frame:
            assert (frame.seq, frame.dropped, r.dropped) == (3, 12, 12)
