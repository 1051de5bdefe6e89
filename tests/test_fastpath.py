"""write()'s and claim()'s fast path in C (_publisher.c): what it publishes, when it gives
way to the general path, and how it fails. Streams across processes and kills are covered
elsewhere (every test_stream / test_crash write or claim of a ring-shaped frame goes through
it); here the Publisher is also driven directly, to see which path a call took."""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

import numpy as np
import pytest
from helpers import WAIT, mapped_here, reinit_refused, segment_file_id, unique_name

import shmring._layout as L
from shmring import (
    HandleInUse,
    RingCorrupted,
    RingReader,
    RingTimeout,
    RingWriter,
    ShmringError,
    inspect_ring,
)
from shmring._fastpath import (
    PUBLISH_ALONE,
    PUBLISH_CORRUPTED,
    PUBLISH_FALLBACK,
    Publisher,
    reclaim,
    settle,
)
from shmring._writer import _publisher, publisher_arguments

SHAPE = (4, 6)


def joined(w: RingWriter) -> RingWriter:
    """A writer that has joined (the creator joins at its first frame): these tests drive
    its Publisher before any frame."""
    w._join()
    return w


def _frame(value: int) -> np.ndarray:
    return np.arange(24, dtype=np.uint8).reshape(SHAPE) + value


def test_publishes_the_frame_with_its_sequence_number_and_stamp() -> None:
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        publish = w._publisher.publish
        assert [publish(_frame(i)) for i in range(10) if i % 3 == 0] == [0, 1, 2, 3]
        for seq, value in enumerate((0, 3, 6, 9)):
            frame = r.read(WAIT)
            assert frame.seq == seq
            assert np.array_equal(frame.array, _frame(value))
            assert frame.timestamp_ns > 0
            frame.release()


def test_a_frame_stamped_by_the_caller_takes_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """write(frame, timestamp_ns=...) with an int (a capture time, a bridge's sender stamp)
    is published in C with that stamp; a stamp C does not take (a numpy integer, one out
    of range) falls back, and the general path takes it or says what is wrong."""
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=8)) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        publish: Any = w._publisher.publish  # also called with what its stub refuses
        assert publish(_frame(1), 0) == 0
        assert publish(_frame(2), 2**64 - 1) == 1
        for stamp in (-1, 2**64, np.uint64(5), True, 1.0, None):
            assert publish(_frame(3), stamp) == PUBLISH_FALLBACK
        with pytest.raises(TypeError):
            publish(_frame(3), 1, 2)
        with monkeypatch.context() as patch:

            def general_path(*args: object) -> int:
                raise AssertionError("write() took the general path")

            patch.setattr(w, "_write", general_path)
            assert w.write(_frame(4), WAIT, timestamp_ns=123) == 2
        numpy_stamp: Any = np.uint64(456)
        assert w.write(_frame(5), WAIT, timestamp_ns=numpy_stamp) == 3
        with pytest.raises(ValueError, match="timestamp_ns must be in"):
            w.write(_frame(6), WAIT, timestamp_ns=-1)
        for seq, (value, stamp) in enumerate(((1, 0), (2, 2**64 - 1), (4, 123), (5, 456))):
            with r.read(WAIT) as frame:
                assert (frame.seq, frame.timestamp_ns) == (seq, stamp)
                assert np.array_equal(frame.array, _frame(value))
        with pytest.raises(RingTimeout):  # the calls that fell back published nothing
            r.read(0.01)


@pytest.mark.parametrize("layout", ["fortran", "strided"])
def test_a_frame_that_is_not_one_contiguous_run_takes_the_general_path(layout: str) -> None:
    source = np.arange(2 * 24, dtype=np.uint8).reshape(4, 12)
    frame = np.asfortranarray(_frame(5)) if layout == "fortran" else source[:, ::2]
    assert frame.shape == SHAPE and not frame.flags.c_contiguous
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        assert w._publisher.publish(frame) == PUBLISH_FALLBACK
        assert w.write(frame, WAIT) == 0  # ... which numpy copies
        with r.read(WAIT) as got:
            assert np.array_equal(got.array, frame)


def test_a_read_only_frame_is_published() -> None:
    frame = _frame(1)
    frame.flags.writeable = False
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        assert w._publisher.publish(frame) == 0
        with r.read(WAIT) as got:
            assert np.array_equal(got.array, frame)


def test_in_shared_mode_block_writers_sequence_their_frames_without_the_lock() -> None:
    """Two writers: each claims the next number (C_NEXT_SEQ) and publishes lock-free."""
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w,
        RingReader.attach(w.name, start="oldest") as r,
        RingWriter.attach(w.name) as other,
    ):
        assert w._control[L.C_WRITER_MODE] == L.MODE_SHARED
        assert w._publisher.publish(_frame(0)) == 0
        assert w._record[L.W_IN_PUBLISH] == 0 and w._record[L.W_CLAIMED_SEQ] == L.NONE
        assert other.write(_frame(1), WAIT) == 1
        assert w.write(_frame(2), WAIT) == 2
        assert w._control[L.C_NEXT_SEQ] == w._control[L.C_HEAD] == 3
        assert [int(f.array[0, 0]) for f in (r.read(WAIT), r.read(WAIT), r.read(WAIT))] == [
            0,
            1,
            2,
        ]
    assert w._p.closed


def test_overwrite_in_shared_mode_is_sequenced_in_c() -> None:
    """Two writers of an overwrite ring publish in C without the lock: numbers from
    C_NEXT_SEQ, buffers from the pool (the free list, one entry per buffer)."""
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4, policy="overwrite")) as w,
        RingReader.attach(w.name, start="oldest") as r,
        RingWriter.attach(w.name) as other,
    ):
        assert w._control[L.C_WRITER_MODE] == L.MODE_SHARED
        assert w._control[L.C_FLAGS] & L.F_SEQUENCED and w._control[L.C_FREE_COUNT] == 0
        assert w._publisher.publish(_frame(1)) == 0
        assert w._record[L.W_IN_PUBLISH] == 0
        assert other._publisher.publish(_frame(2)) == 1
        assert w._control[L.C_NEXT_SEQ] == w._control[L.C_HEAD] == 2
        pool = [b for b in w._p.views.freelist if b != L.NONE]
        in_window = {w._p.views.descriptors[seq][L.D_BUFFER] for seq in (0, 1)}
        assert len(pool) == len(set(pool)) == 6 - 2 and not in_window & set(pool)
        for value in (1, 2):  # an overwrite reader holds one frame at a time
            with r.read(WAIT) as got:
                assert int(got.array[0, 0]) == value


def test_the_writer_left_alone_switches_back_to_exclusive_mode() -> None:
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        with RingWriter.attach(w.name) as other:
            assert other.write(_frame(1), WAIT) == 0
        assert w._control[L.C_WRITER_MODE] == L.MODE_SHARED  # until w writes again
        assert w._publisher.publish(_frame(2)) == PUBLISH_ALONE
        assert w.write(_frame(2), WAIT) == 1
        assert w._control[L.C_WRITER_MODE] == L.MODE_EXCLUSIVE
        for value in range(3, 9):  # more than the ring holds: the free list is whole again
            assert w.write(_frame(value), WAIT) == value - 1
            with r.read(WAIT) as got:
                assert int(got.array[0, 0]) == value - 2  # seq value - 3: frame 1 at 3


def test_claim_takes_a_buffer_and_publishes_it_in_place() -> None:
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        publisher = w._publisher
        count = w._control[L.C_FREE_COUNT]
        buffer = publisher.claim_buffer()
        assert 0 <= buffer < w._p.geometry.buffers
        assert w._record[L.W_CLAIMED] == buffer and w._record[L.W_IN_PUBLISH] == 0
        assert w._control[L.C_FREE_COUNT] == count - 1 and w._control[L.C_HEAD] == 0
        w._buffers[buffer][...] = _frame(8)
        assert publisher.publish_described(buffer, 123, None, b"", False) == 0
        assert w._record[L.W_CLAIMED] == L.NONE and w._record[L.W_IN_PUBLISH] == 0
        with r.read(WAIT) as got:
            assert got.seq == 0 and got.timestamp_ns == 123
            assert np.array_equal(got.array, _frame(8))
        # A plain claim takes and publishes its buffer in C (Claim), the same steps.
        count = w._control[L.C_FREE_COUNT]
        claim = w.claim()
        slot = claim.__enter__()
        buffer = claim._buffer
        assert slot is w._buffers[buffer] and publisher.claim_open
        assert w._record[L.W_CLAIMED] == buffer and w._record[L.W_IN_PUBLISH] == 0
        assert w._control[L.C_FREE_COUNT] == count - 1 and w._control[L.C_HEAD] == 1
        slot[...] = _frame(9)
        claim.__exit__(None, None, None)
        assert claim.seq == 1 and not publisher.claim_open
        assert weakref.ref(claim)() is claim  # as the Python class it replaced
        assert w._record[L.W_CLAIMED] == L.NONE and w._record[L.W_IN_PUBLISH] == 0
        with r.read(WAIT) as got:
            assert got.seq == 1 and got.timestamp_ns > 0
            assert np.array_equal(got.array, _frame(9))
        with pytest.raises(ValueError, match="no buffer"):
            publisher.publish_described(1 << 40, 0, None, b"", False)


@pytest.mark.parametrize("timeout", [None, WAIT])
@pytest.mark.parametrize("writers", [1, 2])
@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_a_plain_claim_runs_no_python_step(
    policy: str, writers: int, timeout: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim of a ring-shaped frame without stamp or metadata, made once the writer has
    joined, is taken and published by the Claim itself, in C: alone (exclusive mode) and
    beside another writer (sequenced), with or without a timeout. RingWriter's general
    steps, patched to fail here, never run."""
    name = unique_name()
    with (
        RingWriter.create(name, SHAPE, np.uint8, slots=4, policy=policy) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        w.write(_frame(0), WAIT)  # joined
        others = [RingWriter.attach(name) for _ in range(writers - 1)]
        try:

            def general(*_: Any) -> None:
                raise AssertionError("the general path ran")

            monkeypatch.setattr(w, "_enter_claim", general)
            monkeypatch.setattr(w, "_exit_claim", general)
            seqs = []
            for value in range(1, 4):
                claim = w.claim(timeout)
                with claim as slot:
                    slot[...] = _frame(value)
                seqs.append(claim.seq)
            assert seqs == [1, 2, 3]
            for value in range(4):
                with r.read(WAIT) as got:
                    assert got.seq == value and np.array_equal(got.array, _frame(value))
        finally:
            for other in others:
                other.close()


def test_a_claim_is_left_once() -> None:
    """Leaving a Claim again, after it published or gave its buffer back, is refused: it
    would publish (or free) the same buffer twice, and a later frame would be torn."""
    name = unique_name()
    with (
        joined(RingWriter.create(name, SHAPE, np.uint8, slots=4)) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        published = w.claim()
        with published as slot:
            slot[...] = _frame(1)
        with pytest.raises(HandleInUse, match="left once"):
            published.__exit__(None, None, None)
        abandoned = w.claim(WAIT)
        with pytest.raises(ValueError, match="abandon"), abandoned:
            raise ValueError("abandon")
        with pytest.raises(HandleInUse, match="left once"):
            abandoned.__exit__(None, None, None)
        with pytest.raises(HandleInUse, match="entered once"):
            published.__enter__()
        assert w.write(_frame(2), WAIT) == 1
        assert [int(r.read(WAIT).array[0, 0]) for _ in range(2)] == [1, 2]
        assert inspect_ring(name).problems == []


def test_in_shared_mode_claims_hold_numbers_and_an_abandoned_one_is_skipped() -> None:
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w,
        RingReader.attach(w.name, start="oldest") as r,
        RingWriter.attach(w.name) as other,
    ):
        first = w.claim(WAIT)
        with first as slot:  # number 0 ...
            slot[...] = _frame(1)
            with other.claim(WAIT) as later:  # ... number 1, published first
                later[...] = _frame(2)
        assert first.seq == 0
        with pytest.raises(KeyError), other.claim(WAIT) as slot:  # number 2: abandoned
            slot[...] = _frame(3)
            raise KeyError
        assert w.write(_frame(4), WAIT) == 3
        got = [r.read(WAIT) for _ in range(3)]
        assert [int(f.array[0, 0]) for f in got] == [1, 2, 4]
        assert [f.seq for f in got] == [0, 1, 3] and got[2].dropped == 1


@pytest.mark.parametrize("call", ["write", "claim"])
def test_a_free_buffer_index_out_of_range_is_corruption_and_publishes_nothing(call: str) -> None:
    with joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w:
        count = w._control[L.C_FREE_COUNT]
        w._p.views.freelist[count - 1] = 1 << 40  # what a stray write into the header would do
        fast = w._publisher.publish if call == "write" else lambda _: w._publisher.claim_buffer()
        assert fast(_frame(0)) == PUBLISH_CORRUPTED
        assert w._control[L.C_HEAD] == 0 and w._control[L.C_FREE_COUNT] == count
        assert w._record[L.W_IN_PUBLISH] == 0 and w._record[L.W_CLAIMED] == L.NONE
        with pytest.raises(RingCorrupted, match="header was overwritten"):
            if call == "write":
                w.write(_frame(0), WAIT)
            else:
                with w.claim(WAIT):
                    pass


def test_the_reclaim_in_c_frees_what_every_group_released_and_no_more() -> None:
    """Buffers come back once both a reader of its own and a group have released their frames:
    the floor is the lower of R_RELEASE and G_CURSOR (_publisher.c, shmring_reclaim)."""
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w,
        RingReader.attach(w.name, start="oldest") as own,
        RingReader.attach(w.name, start="oldest", group="g") as member,
    ):
        for value in range(4):  # the ring is full: 4 frames in 4 buffers
            assert w._publisher.publish(_frame(value)) == value
        for _ in range(3):
            own.read(WAIT).release()  # own group: released 0-2
        member.read(WAIT).release()  # the group: released 0
        assert w._publisher.publish(_frame(4)) == 4  # reclaims frame 0's buffer only
        assert w._control[L.C_TAIL] == 1 and w._control[L.C_FREE_COUNT] == 0
        assert w._publisher.publish(_frame(5)) == PUBLISH_FALLBACK  # nothing more is free
        for _ in range(2):
            member.read(WAIT).release()  # the group: released 1-2 (own group: 0-2)
        assert w._publisher.publish(_frame(5)) == 5
        assert w._control[L.C_TAIL] == 3 and w._control[L.C_FREE_COUNT] == 1
        with own.read(WAIT) as got:
            assert got.seq == 3 and np.array_equal(got.array, _frame(3))


# What a forged word makes the reclaim say (after three frames: head 3, tail 2, 3 free).
_DAMAGES = {
    "tail-past-head": (L.C_TAIL, 9, "head 3 and tail 9 are inconsistent: tail is past head"),
    "window": (L.C_HEAD, 8, "head 8 and tail 2 are inconsistent: a window of 6 frames in 4 slots"),
    "sequence-limit": (L.C_HEAD, L.SEQ_LIMIT, f"head {L.SEQ_LIMIT} is past the sequence limit"),
    "free-count": (L.C_FREE_COUNT, 99, "free count 99 is inconsistent: the ring has 4 buffers"),
    "overflow": (L.C_FREE_COUNT, 4, "free list overflow: 4 buffers free and 1 frames released"),
}


@pytest.mark.parametrize(
    ("call", "word", "value", "message"),
    [
        pytest.param(call, *damage, id=f"{call}-{what}")
        for call in ("write", "claim")
        for what, damage in _DAMAGES.items()
        # write: a head past the limit is no number to publish under, so publish() gives way
        # before any reclaim; the claim case reaches the reclaim with that head
        if (call, what) != ("write", "sequence-limit")
    ],
)
def test_a_damaged_window_or_free_list_makes_the_reclaim_raise(
    word: int, value: int, message: str, call: str
) -> None:
    """The one reclaim, in C, names what is wrong and what to do, stores nothing, and the
    publish leaves its bracket; the same reclaim under the header lock says the same."""
    with joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w:
        publisher = _publisher(w._p, w._record, reclaim_eagerly=True)  # reclaims at every frame
        for value_written in range(3):  # no reader: each frees the frame before (free count 3)
            assert publisher.publish(_frame(value_written)) == value_written
        good = w._control[word]
        w._control[word] = value
        state = list(w._control[L.C_HEAD : L.C_FREE_COUNT + 1])
        expected = f"ring '{w.name}': {message}.*remove the ring \\(shmring rm --force {w.name}"
        with pytest.raises(RingCorrupted, match=expected):
            if call == "write":
                publisher.publish(_frame(3))
            else:
                publisher.claim_buffer()
        assert list(w._control[L.C_HEAD : L.C_FREE_COUNT + 1]) == state
        assert w._record[L.W_IN_PUBLISH] == 0 and w._record[L.W_CLAIMED] == L.NONE
        with w._p.lock.until(None), pytest.raises(RingCorrupted, match=expected):
            w._p.reclaim()
        assert list(w._control[L.C_HEAD : L.C_FREE_COUNT + 1]) == state
        w._control[word] = good
        assert publisher.publish(_frame(3)) == 3  # repaired by hand: it goes on
        publisher.close()


def _interrupted() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("call", ["write", "claim"])
def test_an_error_in_the_reclaim_leaves_the_publish_bracket(call: str) -> None:
    """A reclaim runs inside the W_IN_PUBLISH bracket; whatever is raised there (the
    reclaim's RingCorrupted, above; here a KeyboardInterrupt from the test hook before it)
    must not leave the bracket open, or joining writers wait for it."""
    with joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w:
        publisher = _publisher(w._p, w._record, reclaim_eagerly=True)
        publisher.on_reclaim = _interrupted
        with pytest.raises(KeyboardInterrupt):
            if call == "write":
                publisher.publish(_frame(0))
            else:
                publisher.claim_buffer()
        assert w._record[L.W_IN_PUBLISH] == 0 and w._control[L.C_HEAD] == 0
        assert w._record[L.W_CLAIMED] == L.NONE
        publisher.on_reclaim = None
        assert publisher.publish(_frame(0)) == 0  # without the hook: the reclaim alone
        publisher.close()


def test_two_threads_in_one_publisher_get_an_error_not_a_shared_buffer() -> None:
    """Re-entering a publish that is under way (another thread, while a large copy runs
    without the GIL; here, deterministically, from the test hook at its reclaim) raises."""
    with joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w:
        errors: list[BaseException] = []

        def reenter() -> None:
            try:
                publisher.publish(_frame(1))
            except RuntimeError as exc:
                errors.append(exc)

        publisher = _publisher(w._p, w._record, reclaim_eagerly=True)
        publisher.on_reclaim = reenter
        assert publisher.publish(_frame(0)) == 0  # the outer publish completes
        assert len(errors) == 1 and "under way" in str(errors[0])
        publisher.close()


def test_closing_the_writer_during_its_write_raises_and_leaves_it_whole() -> None:
    """close() from another thread while write() runs (here, deterministically, from the
    test hook at the write's reclaim) must not leave the ring under the write's feet."""
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        refused: list[BaseException] = []

        def close_meanwhile() -> None:
            try:
                w.close()
            except RuntimeError as exc:
                refused.append(exc)

        w._publisher.close()
        w._publisher = _publisher(w._p, w._record, reclaim_eagerly=True)
        w._publisher.on_reclaim = close_meanwhile
        w._publish_fast = w._publisher.publish
        w._claim_buffer_fast = w._publisher.claim_buffer
        assert w.write(_frame(3), WAIT) == 0
        assert len(refused) == 1 and "under way" in str(refused[0])
        assert not w.closed and w.readers == 1
        with r.read(WAIT) as got:
            assert np.array_equal(got.array, _frame(3))
        w._publisher.on_reclaim = None
        assert w.write(_frame(4)[:, ::-1], WAIT) == 1  # strided: the checked path, not closing
        with r.read(WAIT) as got:
            assert np.array_equal(got.array, _frame(4)[:, ::-1])
        w.close()
        assert w.closed


def test_bad_arguments_are_refused_without_leaking_references() -> None:
    with joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w:
        name = "".join(("not", "interned"))  # a str of its own, to count its references
        arguments = {**publisher_arguments(w._p, w._record, reclaim_eagerly=False), "name": name}
        publisher = Publisher(**arguments)
        before = sys.getrefcount(name)
        with pytest.raises(RuntimeError, match="initialized once"):
            publisher.__init__(**arguments)
        for _ in range(20):
            for wrong in (
                {"frame_bytes": 0},
                {"ndim": 9},
                {"descriptor_words": 1},
                {"slots": 1 << 60},
                {"control": memoryview(bytearray(64)).cast("Q")},
            ):
                with pytest.raises(ValueError):
                    Publisher(**{**arguments, **wrong})
        gc.collect()
        assert sys.getrefcount(name) == before
        publisher.close()


def test_integers_out_of_range_are_refused_not_wrapped() -> None:
    with joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w:
        arguments = publisher_arguments(w._p, w._record, reclaim_eagerly=False)
        for change in ({"slots": (1 << 64) + 4}, {"meta_size": -(1 << 64)}, {"ndim": -1}):
            with pytest.raises(OverflowError):
                Publisher(**{**arguments, **change})
        g, views = w._p.geometry, w._p.views
        with pytest.raises(OverflowError):
            settle(
                views.control,
                views.descriptor_table,
                [],
                slots=(1 << 64) + g.slots,
                descriptor_words=g.descriptor_bytes // 8,
            )


def test_holes_to_settle_are_all_checked_before_any_is_stored() -> None:
    with joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w:
        g, views = w._p.geometry, w._p.views
        before = [list(views.descriptors[position]) for position in range(g.slots)]
        with pytest.raises(OverflowError):
            settle(
                views.control,
                views.descriptor_table,
                [1, 2, -1],
                slots=g.slots,
                descriptor_words=g.descriptor_bytes // 8,
            )
        assert [list(views.descriptors[position]) for position in range(g.slots)] == before


def test_an_init_run_again_from_its_own_arguments_is_refused_and_keeps_nothing() -> None:
    """Parsing the arguments may run Python code (here __bool__) that calls __init__ again:
    that call is refused, and the outer one keeps no reference and no export."""
    with joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w:
        name = "".join(("not", "interned"))  # a str of its own, to count its references
        arguments = {**publisher_arguments(w._p, w._record, reclaim_eagerly=False), "name": name}
        publisher = Publisher.__new__(Publisher)

        class Reentering:
            def __bool__(self) -> bool:
                publisher.__init__(**arguments)
                return False

        before = sys.getrefcount(name)
        assert "once" in reinit_refused(publisher, arguments, "reclaim_eagerly", Reentering())
        publisher.close()
        after = sys.getrefcount(name)
        assert after == before


def test_forget_in_the_process_that_made_it_is_close() -> None:
    """forget() (close() in a forked child, whose publishing thread does not exist there) is
    refused like close() in the process whose publish is under way."""
    with joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w:
        publisher = _publisher(w._p, w._record, reclaim_eagerly=True)
        publisher.on_reclaim = publisher.forget
        with pytest.raises(HandleInUse, match="under way"):  # (from C)
            publisher.publish(_frame(0))
        publisher.on_reclaim = None
        assert publisher.publish(_frame(0)) >= 0  # still whole
        publisher.forget()
        assert publisher.publish(_frame(0)) == PUBLISH_FALLBACK


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ in Python: 3.12")
def test_a_frame_whose_buffer_closes_the_publisher_is_not_published() -> None:
    with joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w:
        publisher = _publisher(w._p, w._record, reclaim_eagerly=False)
        frame = _frame(0)

        class Closing:
            def __buffer__(self, flags: int) -> memoryview:
                publisher.close()
                return frame.data

        assert publisher.publish(Closing()) == PUBLISH_FALLBACK  # type: ignore[arg-type]


def test_the_reclaim_under_the_lock_refuses_views_that_do_not_fit() -> None:
    """_fastpath.reclaim (Participant.reclaim's) takes views of the header it is handed and
    the geometry; views elsewhere, or a geometry they cannot hold, are a ValueError."""
    with joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w:
        p, views = w._p, w._p.views
        arguments = dict(
            p.c_arguments(),
            freelist=views.freelist,
            reader_records=views.reader_table,
            group_records=views.group_table,
            nbuffers=4,
            max_readers=p.geometry.max_readers,
            name=p.name,
        )
        with p.lock.until(None):
            assert reclaim(**arguments) == 4  # nothing published: all 4 free
            for wrong in (
                {"slots": 0},
                {"nbuffers": 1 << 20},
                {"max_readers": 1 << 62},
                {"freelist": memoryview(bytearray(64)).cast("Q")},
            ):
                with pytest.raises(ValueError):
                    reclaim(**{**arguments, **wrong})


def test_after_close_it_falls_back_and_holds_no_mapping() -> None:
    name = unique_name()
    w = joined(RingWriter.create(name, SHAPE, np.uint8, slots=4))
    segment = segment_file_id(name)
    assert mapped_here(segment)
    publisher = w._publisher
    w.close()
    assert publisher.publish(_frame(0)) == PUBLISH_FALLBACK
    with pytest.raises(ShmringError, match="this handle is closed"):
        w.write(_frame(0), WAIT)
    del w
    gc.collect()
    assert not mapped_here(segment)


def test_garbage_collection_unmaps_the_ring_too() -> None:
    name = unique_name()
    w = joined(RingWriter.create(name, SHAPE, np.uint8, slots=4))
    w.write(_frame(0), WAIT)
    segment = segment_file_id(name)
    assert mapped_here(segment)
    del w
    gc.collect()
    assert not mapped_here(segment)


@pytest.mark.parametrize("nbytes", [8192, 8192 + 77, 300_001, (2 << 20) + 77])
@pytest.mark.parametrize("misalignment", [1, 16, 63])
def test_a_source_at_any_alignment_arrives_intact(nbytes: int, misalignment: int) -> None:
    """Large copies from a source that differs from the buffer modulo 64 take the vector
    loop (_publisher.c, copy_frame: from 8 KiB, or from 2 MiB on a CPU with FSRM), which
    has its own tail handling."""
    raw = np.random.default_rng(nbytes).integers(0, 256, nbytes + 128, dtype=np.uint8)
    start = (misalignment - raw.ctypes.data) % 64
    frame = raw[start : start + nbytes]
    assert frame.ctypes.data % 64 == misalignment
    with (
        joined(RingWriter.create(unique_name(), (nbytes,), np.uint8, slots=2)) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        assert w._publisher.publish(frame) == 0
        with r.read(WAIT) as got:
            assert np.array_equal(got.array, frame)


def test_a_switch_cut_inside_its_reclaim_loses_no_buffer() -> None:
    """The reclaim stores tail, then the free count: a writer switching the ring to shared
    mode, killed between the two, leaves released buffers neither in the window nor free.
    The repair that finishes (here: undoes) the switch rebuilds the free list."""
    with (
        joined(RingWriter.create(unique_name(), SHAPE, np.uint8, slots=4)) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        for value in range(4):
            w.write(_frame(value), WAIT)
        for _ in range(4):
            r.read(WAIT).release()
        p = r._p  # the repair runs in another participant (here the reader), w alive
        with p.lock.until(WAIT):  # the cut switch: shared mode, tail stored, count not
            w._control[L.C_WRITER_MODE] = L.MODE_SHARED
            w._control[L.C_TAIL] = 4
            assert p.switch_interrupted() and w._control[L.C_FREE_COUNT] == 0
            p.repair_buffers()
        assert w._control[L.C_WRITER_MODE] == L.MODE_EXCLUSIVE
        for value in range(4, 8):  # a whole ring's worth: every buffer came back
            assert w.write(_frame(value), 0.0) == value
        assert [r.read(WAIT).seq for _ in range(4)] == [4, 5, 6, 7]
