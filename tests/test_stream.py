"""Streams across processes: spawn, fork and an unrelated ``python`` attaching by name.

Every frame's bytes are checked (tag in head and tail, CRC-32 of the body, body against its
pattern): frames arrive in order, none lost (block policy), none duplicated, none torn.
"""

from __future__ import annotations

import os

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
    make_tag,
    seg_path,
    unique_name,
)

from shmring import RingReader, RingWriter

N = 10_000
FULL_HD = (1080, 1920, 3)

WRITER_CASES = [
    ("spawn", SMALL, "write"),
    ("spawn", VGA, "claim"),
    ("fork", SMALL, "claim"),
    ("fork", VGA, "write"),
    ("popen", SMALL, "write"),
    ("popen", VGA, "claim"),
]


def _id(case: tuple[str, tuple[int, ...], str]) -> str:
    kind, shape, api = case
    return f"{kind}-{'x'.join(map(str, shape))}-{api}"


@pytest.mark.parametrize("case", WRITER_CASES, ids=_id)
def test_writer_in_child_reader_in_test(case: tuple[str, tuple[int, ...], str]) -> None:
    """The child creates the ring and writes N frames; the test attaches by name and reads.

    The creator closes (and unlinks) as soon as it has written: the reader still drains
    every published frame, then the stream ends.
    """
    kind, shape, api = case
    name = unique_name()
    pat = Pattern(shape)
    with Child(kind, "stream_writer", name=name, shape=list(shape), count=N, api=api) as child:
        child.expect("ready")
        with RingReader.attach(name, start="oldest", timeout=WAIT) as r:
            child.send("go")
            got = collect(r, pat, "read")
        report = finish(child)
    assert len(got.tags) == N
    assert got.tags == [make_tag(0, n) for n in range(N)]  # order, no loss, no duplicate
    assert got.seqs == list(range(N))
    assert got.seqs == report["seqs"]  # the seq write()/claim returned is the one read
    assert got.drops == [0] * N
    assert got.dropped == 0
    assert set(got.shapes) == {shape}
    assert not os.path.exists(seg_path(name))


@pytest.mark.parametrize(
    ("kind", "shape", "count"),
    [
        ("spawn", SMALL, N),
        ("fork", SMALL, N),
        ("popen", SMALL, N),
        ("popen", VGA, N),
        ("popen", FULL_HD, 300),  # the writer waits for the hot buffer at this size
    ],
    ids=["spawn-64", "fork-64", "popen-64", "popen-vga", "popen-1080p"],
)
def test_reader_in_child_writer_in_test(kind: str, shape: tuple[int, ...], count: int) -> None:
    """The test creates and writes; the child reads. With spawn the child gets a
    RingReader pickled by name and re-attaches; fork and popen children attach by name."""
    name = unique_name()
    pat = Pattern(shape)
    with RingWriter.create(name, shape, np.uint8, slots=8) as w:
        if kind == "spawn":
            parent_r = RingReader.attach(name, start="oldest")
            child = Child(kind, "stream_reader", reader=parent_r, shape=list(shape))
        else:
            parent_r = None
            child = Child(kind, "stream_reader", name=name, shape=list(shape), method="read")
        with child:
            child.expect("ready")
            if parent_r is not None:
                parent_r.close()  # the child holds its own reader now
            seqs = []
            for n in range(count):
                if n % 2:
                    c = w.claim(WAIT)
                    with c as slot:
                        pat.fill(slot, make_tag(0, n))
                    seqs.append(c.seq)
                else:
                    seqs.append(w.write(pat.make(make_tag(0, n)), WAIT))
            w.close()
            got = Received.from_dict(finish(child)["got"])
    assert seqs == list(range(count))
    assert got.tags == [make_tag(0, n) for n in range(count)]
    assert got.seqs == seqs
    assert got.drops == [0] * count
    assert got.dropped == 0
    assert set(got.shapes) == {shape}


def test_pattern_checker_detects_damage() -> None:
    """The verifier used by every stream test rejects torn, stale and shifted frames."""
    pat = Pattern(VGA)
    a = pat.make(make_tag(0, 5)).copy()
    assert pat.check(a) == make_tag(0, 5)
    b = pat.make(make_tag(0, 6)).copy()
    torn = a.copy()
    torn[240:] = b[240:]  # second half from the next frame
    bad_body = a.copy()
    bad_body[100, 100, 1] ^= 1  # one bit flipped in the middle
    mixed = b.copy()
    mixed.reshape(-1)[:16] = a.reshape(-1)[:16]  # head of one frame, rest of another
    shifted = np.roll(a, 1)
    for damaged in (torn, bad_body, mixed, shifted):
        with pytest.raises(AssertionError):
            pat.check(damaged)
    small = Pattern(SMALL)
    s = small.make(make_tag(3, 7)).copy()
    s[30] ^= 0xFF
    with pytest.raises(AssertionError):
        small.check(s)
