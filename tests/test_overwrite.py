"""Overwrite policy: writers never wait, held frames stay intact, drops are accounted."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import pytest
from helpers import (
    Child,
    Pattern,
    Received,
    bounded,
    collect,
    finish,
    increasing,
    make_tag,
    unique_name,
)

from shmring import EndOfStream, RingReader, RingTimeout, RingWriter

SHAPE = (32, 32, 3)


def _check_accounting(
    got: Received, published: int, tag_of: Callable[[int], int] = lambda s: make_tag(0, s)
) -> None:
    """received + dropped == published since the reader joined (it joined before seq 0)."""
    assert increasing(got.seqs), "frames out of order or duplicated"
    assert got.tags == [tag_of(s) for s in got.seqs], "a frame's contents do not match its seq"
    assert len(got.seqs) + got.dropped == published
    assert sum(got.drops) == got.dropped
    prev = -1
    for seq, dropped in zip(got.seqs, got.drops, strict=True):
        assert dropped == seq - prev - 1, f"frame {seq}: dropped={dropped} after {prev}"
        prev = seq
    assert got.seqs[-1] == published - 1, "the newest frame must never be lost"


def test_held_frame_survives_1000_writes_from_another_process() -> None:
    name = unique_name()
    pat = Pattern(SHAPE)
    with (
        RingWriter.create(
            name, SHAPE, np.uint8, slots=8, policy="overwrite", max_readers=2, max_writers=2
        ) as w,
        RingReader.attach(name, start="oldest") as r,
        Child("fork", "overwrite_writer", name=name, shape=list(SHAPE), count=1000) as kid,
    ):
        assert w.write(pat.make(make_tag(0, 0)), 0.0) == 0
        held = r.read(1.0)
        snapshot = held.array.copy()
        kid.expect("ready")
        kid.send("go")
        report = finish(kid)  # 1000 writes with timeout=0: the writer never waited
        assert report["seqs"] == [1, 1000]
        assert held.seq == 0
        np.testing.assert_array_equal(held.array, snapshot)
        assert pat.check(held.array) == make_tag(0, 0)
        held.release()
        got = Received()
        got.take(held, pat)
        while True:
            try:
                frame = r.read(0.0)
            except RingTimeout:
                break
            with frame:
                got.take(frame, pat)
        got.dropped = r.dropped
        assert got.seqs[-1] == 1000
        assert got.drops[1] > 0  # the reader fell behind while it held frame 0
        _check_accounting(got, 1001, lambda s: make_tag(1, s - 1) if s else make_tag(0, 0))


@pytest.mark.parametrize(
    ("frame_bytes", "n"),
    [(64, 20_000), (512 * 1024, 4_000)],  # 512 KiB: the writer reuses what readers passed
)
def test_dropped_counts_add_up_per_reader(frame_bytes: int, n: int) -> None:
    """Three reader processes on a fast overwrite stream; one pauses for 1,000 frames.
    For each: received + dropped == published, and each frame's dropped equals its gap."""
    name = unique_name()
    shape = [frame_bytes]
    pat = Pattern(shape)
    with (
        RingWriter.create(
            name,
            (frame_bytes,),
            np.uint8,
            slots=12,
            policy="overwrite",
            max_readers=4,
            max_writers=1,
        ) as w,
        contextlib.ExitStack() as st,
    ):
        fast_read = st.enter_context(
            Child("spawn", "stream_reader", name=name, shape=shape, method="read", start="oldest")
        )
        fast_latest = st.enter_context(
            Child("popen", "stream_reader", name=name, shape=shape, method="latest", start="oldest")
        )
        slow = st.enter_context(
            Child(
                "fork",
                "stream_reader",
                name=name,
                shape=shape,
                method="iter",
                start="oldest",
                pause_after_first=True,
            )
        )
        for kid in (fast_read, fast_latest, slow):
            kid.expect("ready")
        seqs = [w.write(pat.make(make_tag(0, 0)), 0.0)]
        slow.expect("first")
        seqs += [w.write(pat.make(make_tag(0, i)), 0.0) for i in range(1, 1001)]
        slow.send("continue")
        seqs += [w.write(pat.make(make_tag(0, i)), 0.0) for i in range(1001, n)]
        w.close()
        results = {
            "read": Received.from_dict(finish(fast_read)["got"]),
            "latest": Received.from_dict(finish(fast_latest)["got"]),
            "slow": Received.from_dict(finish(slow)["got"]),
        }
    assert seqs == list(range(n))
    for label, got in results.items():
        try:
            _check_accounting(got, n)
        except AssertionError as e:
            raise AssertionError(f"{label} reader: {e}") from e
    assert results["slow"].seqs[0] == 0
    assert results["slow"].drops[1] >= 1000 - 12  # it missed all but the ring's last frames


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_latest_skips_to_newest_and_counts_drops(policy: str) -> None:
    name = unique_name()
    pat = Pattern((64,))
    with RingWriter.create(
        name, (64,), np.uint8, slots=8, policy=policy, max_readers=2, max_writers=1
    ) as w:
        r = RingReader.attach(name, start="oldest")
        for i in range(5):
            w.write(pat.make(make_tag(0, i)), 0.0)
        with r.latest(1.0) as f:
            assert f.seq == 4 and pat.check(f.array) == make_tag(0, 4)
            assert f.dropped == 4
        assert r.dropped == 4
        with pytest.raises(RingTimeout):
            r.latest(0.05)  # nothing newer than what it already took
        w.write(pat.make(make_tag(0, 5)), 0.0)
        with r.latest(1.0) as f:
            assert f.seq == 5 and f.dropped == 0
        w.write(pat.make(make_tag(0, 6)), 0.0)
        w.write(pat.make(make_tag(0, 7)), 0.0)
        with r.read(1.0) as f:  # read() still goes in order
            assert f.seq == 6 and f.dropped == 0
        assert r.dropped == 4
        w.close()
        with r.latest(1.0) as f:
            assert f.seq == 7
        with pytest.raises(EndOfStream):
            r.latest(1.0)
        r.close()


def test_overwrite_writer_never_waits_for_a_stalled_reader() -> None:
    """A reader that holds one frame and never reads again must not slow the writer."""
    name = unique_name()
    pat = Pattern((64,))
    with (
        RingWriter.create(
            name, (64,), np.uint8, slots=5, policy="overwrite", max_readers=2, max_writers=2
        ) as w,
        RingReader.attach(name, start="oldest") as stalled,
        RingReader.attach(name, start="oldest") as idle,
    ):
        w.write(pat.make(make_tag(0, 0)), 0.0)
        held = stalled.read(0.0)
        for i in range(1, 200):
            assert w.write(pat.make(make_tag(0, i)), 0.0) == 2 * i - 1
            c = w.claim(0.0)
            with c as slot:
                pat.fill(slot, make_tag(0, 1000 + i))
            assert c.seq == 2 * i
        assert pat.check(held.array) == make_tag(0, 0)
        held.release()
        got = collect(stalled, pat, limit=1)
        assert got.seqs[0] > 1 and got.drops[0] == got.seqs[0] - 1
        got_idle = collect(idle, pat, limit=1)
        assert got_idle.drops[0] == got_idle.seqs[0]  # never read: everything before lost


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_iteration_and_latest_release_the_previous_frame(policy: str) -> None:
    """Iteration and latest() release the frame they returned before when they take the
    next one (API.md; Frame docstring) — under both policies."""
    name = unique_name()
    pat = Pattern((64,))
    with RingWriter.create(
        name, (64,), np.uint8, slots=6, policy=policy, max_readers=2, max_writers=1
    ) as w:
        r_iter = RingReader.attach(name, start="oldest")
        r_latest = RingReader.attach(name, start="oldest")
        w.write(pat.make(make_tag(0, 0)), 0.0)
        first = r_latest.latest(1.0)
        assert first.seq == 0 and first._reader is r_latest  # held
        w.write(pat.make(make_tag(0, 1)), 0.0)
        second = r_latest.latest(1.0)
        assert first._reader is None, "latest() did not release the frame it returned before"
        assert second.seq == 1 and pat.check(second.array) == make_tag(0, 1)
        for i in range(2, 5):
            w.write(pat.make(make_tag(0, i)), 0.0)
        w.close()

        def iterate() -> list[int]:
            tags, previous = [], None
            for frame in r_iter:
                assert frame._reader is r_iter  # held
                if previous is not None:
                    assert previous._reader is None, f"frame {previous.seq} still held"
                tags.append(pat.check(frame.array))
                previous = frame
            assert previous is not None and previous._reader is None  # at the end, too
            return tags

        assert bounded(iterate) == [make_tag(0, i) for i in range(5)]
        with r_latest.latest(1.0) as third:
            assert second._reader is None, "latest() did not release the frame it returned before"
            assert third.seq == 4 and third.dropped == 2
        for r in (r_iter, r_latest):
            r.close()
