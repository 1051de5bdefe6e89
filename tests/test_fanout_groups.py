"""Fan-out, reader groups, several writers, late join and variable-size frames."""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections import Counter
from typing import Any

import numpy as np
import pytest
from helpers import (
    SMALL,
    VGA,
    WAIT,
    Child,
    Pattern,
    Received,
    collect,
    finish,
    increasing,
    make_tag,
    split_tag,
    unique_name,
    variable_shape,
)

from shmring import EndOfStream, RingReader, RingTimeout, RingWriter, inspect_ring
from shmring import _layout as L

SHAPE = (32, 32, 3)


def _write_stream(w: RingWriter, pat: Pattern, count: int, first: int = 0) -> list[int]:
    return [w.write(pat.make(make_tag(0, n)), WAIT) for n in range(first, first + count)]


def test_fanout_three_reader_processes_see_everything() -> None:
    """One writer, three independent readers (spawn, fork, unrelated python): each one
    receives every frame, in order, intact."""
    n = 3000
    name = unique_name()
    pat = Pattern(SHAPE)
    with RingWriter.create(name, SHAPE, np.uint8, slots=8) as w, contextlib.ExitStack() as st:
        methods = {"spawn": "iter", "fork": "read", "popen": "read"}
        kids = [
            st.enter_context(
                Child(k, "stream_reader", name=name, shape=list(SHAPE), method=methods[k])
            )
            for k in ("spawn", "fork", "popen")
        ]
        for kid in kids:
            kid.expect("ready")
        seqs = _write_stream(w, pat, n)
        w.close()
        results = [Received.from_dict(finish(kid)["got"]) for kid in kids]
    assert seqs == list(range(n))
    for got in results:
        assert got.tags == [make_tag(0, i) for i in range(n)]
        assert got.seqs == seqs
        assert got.drops == [0] * n
        assert got.dropped == 0


def test_group_members_in_processes_split_frames() -> None:
    """Two processes in group "g": every frame goes to exactly one of them, none lost.

    Each member, after its first frame, waits until the other has one too, so both are
    guaranteed a share whatever the scheduling."""
    n = 4000
    name = unique_name()
    pat = Pattern(SHAPE)
    with RingWriter.create(name, SHAPE, np.uint8, slots=8) as w, contextlib.ExitStack() as st:
        kids = [
            st.enter_context(
                Child(
                    k,
                    "stream_reader",
                    name=name,
                    shape=list(SHAPE),
                    group="g",
                    pause_after_first=True,
                    method="read",
                )
            )
            for k in ("spawn", "popen")
        ]
        for kid in kids:
            kid.expect("ready")
        # Writes proceed while both members are paused: the group's cursor has moved past
        # the two frames they hold, and block policy waits for them only when full.
        seqs = [w.write(pat.make(make_tag(0, 0)), WAIT), w.write(pat.make(make_tag(0, 1)), WAIT)]
        for kid in kids:
            kid.expect("first")
        for kid in kids:
            kid.send("continue")
        seqs += _write_stream(w, pat, n - 2, first=2)
        w.close()
        a, b = (Received.from_dict(finish(kid)["got"]) for kid in kids)
    assert seqs == list(range(n))
    assert a.tags and b.tags, "both members must get frames"
    assert not set(a.tags) & set(b.tags), "a frame went to both members"
    assert sorted(a.tags + b.tags) == [make_tag(0, i) for i in range(n)], "frames lost"
    for got in (a, b):
        assert increasing(got.seqs)  # each member sees its share in order
        assert got.dropped == 0
        assert got.drops == [0] * len(got.seqs)
        assert [split_tag(t)[1] for t in got.tags] == got.seqs


def test_group_in_process_round_robin_and_independent_reader() -> None:
    """Deterministic group semantics in one process: members share one cursor, a reader
    outside the group still sees every frame."""
    name = unique_name()
    pat = Pattern(SMALL)
    with RingWriter.create(name, SMALL, np.uint8, slots=8) as w:
        m1 = RingReader.attach(name, group="workers")
        m2 = RingReader.attach(name, group="workers")
        solo = RingReader.attach(name)
        other = RingReader.attach(name, group="other")
        _write_stream(w, pat, 6)
        order = []
        for m in (m1, m2, m1, m1, m2, m2):
            with m.read(1.0) as f:
                order.append(f.seq)
                assert pat.check(f.array) == make_tag(0, f.seq)
        assert order == [0, 1, 2, 3, 4, 5]
        for m in (m1, m2):
            with pytest.raises(RingTimeout):
                m.read(0.0)
        assert collect(solo, pat, limit=6).seqs == list(range(6))
        assert collect(other, pat, limit=6).seqs == list(range(6))
        w.close()
        for m in (m1, m2, solo, other):
            with pytest.raises(EndOfStream):
                m.read(1.0)
            m.close()


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_a_group_whose_members_all_left_goes_on_from_its_cursor(policy: str) -> None:
    """A restarted worker of a one-member group repeats no frame: the group's record keeps
    its cursor while free (a new member took `start` again, the newest frame, delivered
    already), unless another group had to take it; frames published meanwhile come next."""
    name = unique_name()
    frame = np.zeros(SMALL, np.uint8)
    with RingWriter.create(name, SMALL, np.uint8, slots=8, policy=policy) as w:

        def seqs(member: RingReader, count: int) -> list[int]:
            taken = []
            for _ in range(count):
                with member.read(WAIT) as got:
                    taken.append(got.seq)
            return taken

        with RingReader.attach(name, group="workers") as worker:
            for _ in range(3):
                w.write(frame, WAIT)
            assert seqs(worker, 3) == [0, 1, 2]
        kept = [(g.name, g.cursor, g.members) for g in inspect_ring(name).groups]
        assert kept == [("workers", 3, 0)]  # listed without members, its cursor kept
        with RingReader.attach(name, group="workers", start="oldest") as restarted:
            with pytest.raises(RingTimeout):
                restarted.read(0.0)  # not frame 0 (oldest) or 2 (newest) again
            w.write(frame, WAIT)
            assert seqs(restarted, 1) == [3]
        w.write(frame, WAIT)  # 4, while the group has no member
        with RingReader.attach(name, group="others") as other:  # a record never used
            assert seqs(other, 1) == [4]
        with RingReader.attach(name, group="workers") as again:
            assert seqs(again, 1) == [4]


def test_two_writer_processes_one_reader() -> None:
    """Two writers (a spawn child given an attached RingWriter pickled by name, and an
    unrelated python attaching by name) → one reader: every frame exactly once, each
    writer's frames in its order, seqs 0..2n-1 in order."""
    n = 3000
    name = unique_name()
    pat = Pattern(SHAPE)
    with (
        RingWriter.create(name, SHAPE, np.uint8, slots=8, max_writers=3) as w,
        RingReader.attach(name, start="oldest") as r,
        contextlib.ExitStack() as st,
    ):
        handle = RingWriter.attach(name)
        w1 = st.enter_context(
            Child("spawn", "stream_writer", writer=handle, shape=list(SHAPE), count=n, writer_id=1)
        )
        w1.expect("ready")
        handle.close()  # the child re-attached its own writer
        w2 = st.enter_context(
            Child(
                "popen",
                "stream_writer",
                name=name,
                create=False,
                shape=list(SHAPE),
                count=n,
                writer_id=2,
            )
        )
        w2.expect("ready")
        w1.send("go")
        w2.send("go")
        got = collect(r, pat, "read", limit=2 * n)
        reports = {1: finish(w1)["seqs"], 2: finish(w2)["seqs"]}
        with pytest.raises(EndOfStream):  # both writers closed; the creator never wrote
            r.read(WAIT)
        assert not w.closed
    assert len(got.tags) == 2 * n
    assert got.seqs == list(range(2 * n))
    assert Counter(got.tags) == Counter(make_tag(k, i) for k in (1, 2) for i in range(n))
    for k in (1, 2):
        mine = [split_tag(t)[1] for t in got.tags if split_tag(t)[0] == k]
        assert mine == list(range(n))
    for tag, seq in zip(got.tags, got.seqs, strict=True):
        k, i = split_tag(tag)
        assert reports[k][i] == seq  # the seq each writer was told is where it landed
    assert got.dropped == 0


def test_late_join_latest_in_another_process() -> None:
    """A reader process joining a running stream with start="latest" first gets the newest
    frame already published, then every later frame."""
    name = unique_name()
    pat = Pattern(SMALL)
    with RingWriter.create(name, SMALL, np.uint8, slots=8) as w:
        assert _write_stream(w, pat, 100) == list(range(100))  # no reader: nothing blocks
        with Child("spawn", "stream_reader", name=name, start="latest", method="read") as kid:
            kid.expect("ready")
            _write_stream(w, pat, 50, first=100)
            w.close()
            got = Received.from_dict(finish(kid)["got"])
    assert got.seqs == list(range(99, 150))
    assert got.tags == [make_tag(0, i) for i in range(99, 150)]
    assert got.drops == [0] * 51
    assert got.dropped == 0


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_late_join_start_positions(policy: str) -> None:
    slots = 8
    name = unique_name()
    pat = Pattern(SMALL)
    with RingWriter.create(
        name, SMALL, np.uint8, slots=slots, policy=policy, max_readers=3, max_writers=1
    ) as w:
        # "latest" on an empty ring: the next frame published is the first one read
        with RingReader.attach(name, start="latest") as e:
            _write_stream(w, pat, 3)
            assert collect(e, pat, limit=3).seqs == [0, 1, 2]
        _write_stream(w, pat, 97, first=3)  # no reader now: nothing blocks
        oldest = RingReader.attach(name, start="oldest")
        latest = RingReader.attach(name, start="latest")
        _write_stream(w, pat, 3, first=100)
        w.close()
        o = collect(oldest, pat)
        la = collect(latest, pat)
        oldest.close()
        latest.close()
    # "oldest": the oldest frame still in the ring, then everything after it (under the
    # overwrite policy the 3 later writes may evict some of those it had not read yet)
    joined_at = o.seqs[0] - o.drops[0]
    assert 100 - slots <= joined_at < 100
    assert o.tags == [make_tag(0, s) for s in o.seqs]
    if policy == "block":
        assert o.seqs == list(range(joined_at, 103))
        assert o.dropped == 0 and o.drops == [0] * len(o.seqs)
    else:
        assert o.seqs == list(range(o.seqs[0], 103))
        assert len(o.seqs) + o.dropped == 103 - joined_at
    # "latest": the newest frame already published, then everything after it
    assert la.seqs == [99, 100, 101, 102]
    assert la.tags == [make_tag(0, s) for s in la.seqs]
    assert la.dropped == 0


@pytest.mark.parametrize(
    ("kind", "shape", "count"),
    [("fork", VGA, 1500), ("popen", SMALL, 3000), ("spawn", (40, 30), 2000)],
    ids=["fork-vga", "popen-64", "spawn-2d"],
)
def test_variable_size_frames(kind: str, shape: tuple[int, ...], count: int) -> None:
    """Frames smaller than the ring's shape in any dimension (written with write() and
    with claim(shape=...)) reach the reader with their own shape and intact contents."""
    name = unique_name()
    pat = Pattern(shape)
    with Child(
        kind,
        "stream_writer",
        name=name,
        shape=list(shape),
        count=count,
        api="mixed",
        variable=True,
    ) as kid:
        kid.expect("ready")
        with RingReader.attach(name, start="oldest", timeout=WAIT) as r:
            kid.send("go")
            got = collect(r, pat)
        finish(kid)
    assert got.tags == [make_tag(0, i) for i in range(count)]
    want = [variable_shape(i, shape) for i in range(count)]
    assert got.shapes == want
    assert len(set(want)) > 2 and shape in want  # the stream really varies


def test_claim_shape_gives_a_writable_view_of_that_shape() -> None:
    name = unique_name()
    with (
        RingWriter.create(name, (6, 8, 3), np.uint16, slots=4) as w,
        RingReader.attach(name) as r,
    ):
        c = w.claim(1.0, shape=(2, 5, 3))
        with c as slot:
            assert slot.shape == (2, 5, 3)
            assert slot.dtype == np.uint16
            assert slot.flags.c_contiguous and slot.flags.writeable
            slot[...] = np.arange(30, dtype=np.uint16).reshape(2, 5, 3)
        assert c.seq == 0
        with r.read(1.0) as f:
            assert f.seq == 0
            assert f.array.shape == (2, 5, 3)
            assert f.array.dtype == np.uint16
            np.testing.assert_array_equal(f.array, np.arange(30).reshape(2, 5, 3))
        small = np.full((6, 1, 3), 7, np.uint16)
        assert w.write(small, 1.0) == 1
        with r.read(1.0) as f:
            assert f.array.shape == (6, 1, 3)
            np.testing.assert_array_equal(f.array, small)


@pytest.mark.parametrize("own_shape", [False, True], ids=["ring-shaped", "own-shape"])
def test_a_frame_finalized_while_a_member_takes_the_next_keeps_the_next_held(
    own_shape: bool,
) -> None:
    """A group member's frame that only a reference cycle keeps dies in a garbage collection
    that an allocation inside the member's next take runs (the Frame it builds, or the
    tuple for a frame of its own shape). Its finalizer releases it; the frame being taken,
    which the group's cursor has already passed, must stay held (R_RELEASE at most its
    seq), or a writer may reuse its buffer under the member. The collection is placed after
    the claim by setting the collector's threshold a few allocations ahead; the test looks
    for the first count that lands there."""
    shape = (16,) if own_shape else (64,)
    if not any(_collect_inside_a_take(ahead, shape) for ahead in range(12)):
        pytest.fail("no garbage collection ran between the claim and the end of the take")


class _Marker:
    """An object with a weak-reference finalizer, to see when its cycle is collected."""


def _collect_inside_a_take(allocations_ahead: int, shape: tuple[int, ...]) -> bool:
    """Whether the collection landed after the claim (then checked as the test says)."""
    name = unique_name("gcg")
    with (
        RingWriter.create(name, (64,), np.uint8, slots=8) as w,
        RingReader.attach(name, group="g") as r,
    ):
        for value in range(3):
            w.write(np.full(shape, value, np.uint8))
        cursor, release = r._group_record, r._record
        assert cursor is not None  # a group member's record
        first = r.read(0)
        marker = _Marker()
        cycle: list[object] = [first, marker]
        cycle.append(cycle)
        died: list[int] = []  # the group's cursor when the cycle was collected
        weakref.finalize(marker, lambda: died.append(cursor[L.G_CURSOR]))
        after_collections: list[tuple[int, int]] = []  # (cursor, R_RELEASE) after each

        def look(phase: str, info: dict[str, int]) -> None:
            if phase == "stop":
                after_collections.append((cursor[L.G_CURSOR], release[L.R_RELEASE]))

        del first, marker, cycle
        thresholds = gc.get_threshold()
        gc.callbacks.append(look)
        gc.set_threshold(gc.get_count()[0] + allocations_ahead)
        try:
            taken = r.read(0)
        finally:
            gc.set_threshold(*thresholds)
            gc.callbacks.remove(look)
        with taken:
            if not died or died[0] <= taken.seq:
                return False
            held_after = [held for at, held in after_collections if at > taken.seq]
            assert held_after and max(held_after) <= taken.seq, after_collections
            assert int(taken.array[0]) == 1
            return True


class _CutShort:
    """A reader's Taker whose take_group is interrupted (as by Ctrl-C's handler) right after
    the call returned, before the caller stored its result."""

    def __init__(self, taker: Any) -> None:
        self._taker = taker

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._taker, attribute)

    def take_group(self, *args: Any) -> Any:
        self._taker.take_group(*args)
        raise KeyboardInterrupt


def test_a_group_take_cut_short_before_its_frame_is_built_lets_it_go() -> None:
    """A frame of its own shape is built in Python after take_group held it; an interrupt
    before that leaves nobody to release it, so the member lets it go (out of `held`,
    R_RELEASE back to nothing) and the writer keeps its space."""
    name, slots = unique_name("cut"), 4
    with (
        RingWriter.create(name, (64,), np.uint8, slots=slots) as w,
        RingReader.attach(name, group="g") as r,
    ):
        w.write(np.ones(16, np.uint8), timeout=0)  # its own shape: built in Python
        taker = r._taker
        r._taker = _CutShort(taker)  # type: ignore[assignment]
        with pytest.raises(KeyboardInterrupt):
            r.read(0)
        r._taker = taker
        assert r._held == [] and r._record[L.R_RELEASE] == L.NONE
        for _ in range(slots):  # the whole ring is the writer's again
            w.write(np.ones(64, np.uint8), timeout=0)
