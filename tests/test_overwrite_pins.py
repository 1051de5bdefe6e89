"""Overwrite readers holding several frames (FORMAT.md, "Pin line"): held frames stay
intact while another process laps the ring, releasing them gives their buffers back, the
sizing rule is enforced with a RingFull naming spare_buffers, a SIGKILLed reader's pins stop
counting once it is reaped, and `shmring inspect` shows what each reader holds."""

from __future__ import annotations

import struct
import subprocess
import sys
from multiprocessing.connection import Connection

import numpy as np
import pytest
from helpers import WAIT, Child, Pattern, forked, make_tag, seg_path, unique_name

from shmring import RingFull, RingReader, RingWriter, inspect_ring
from shmring import _layout as L

SHAPE = (32, 32, 3)
LAPS = 1200  # frames the writer publishes while the reader holds its frames


def _writer(conn: Connection, name: str) -> None:
    """Attach as a writer; on ("write", k) write k frames (each with timeout 0: an
    overwrite writer never waits) and report the last seq; on "close", close and report."""
    pat = Pattern(SHAPE)
    with RingWriter.attach(name, timeout=WAIT) as w:
        n = 0
        while (command := conn.recv()) != "close":
            for _ in range(command[1]):
                last = w.write(pat.make(make_tag(1, n)), 0.0)
                n += 1
            conn.send(last)
    conn.send("closed")


def _ask(conn: Connection, command: object) -> object:
    conn.send(command)
    assert conn.poll(WAIT), "the writer process did not answer"
    return conn.recv()


def _queued(name: str) -> int:
    """Frames of the window whose buffer no reader took: what the writer could keep."""
    return sum(slot.state == "queued" for slot in inspect_ring(name).slot_states)


def test_frames_held_while_another_process_overwrites_stay_intact() -> None:
    """A reader holds as many frames as the sizing rule allows (buffers − one per writer)
    while a writer process publishes 1,200 more: each held frame's bytes are unchanged; one
    more raises RingFull naming spare_buffers; released, the buffers are the writer's again."""
    name = unique_name("pins")
    pat = Pattern(SHAPE)
    held_max = 4 + 3 - 1  # slots + spare_buffers − one writer (the creator never writes)
    with (
        RingWriter.create(
            name, SHAPE, np.uint8, slots=4, policy="overwrite", spare_buffers=3
        ) as owner,
        RingReader.attach(name, start="oldest") as r,
        forked(_writer, name) as (conn, _),
    ):
        held = []
        for n in range(held_max):
            assert _ask(conn, ("write", 1)) == n
            held.append(r.read(1.0))
        snapshots = [frame.array.copy() for frame in held]
        assert [frame.seq for frame in held] == list(range(held_max))
        assert _ask(conn, ("write", LAPS)) == held_max + LAPS - 1
        # The writer went on with the one buffer left to it: the window holds one frame.
        assert _queued(name) == 1
        with pytest.raises(RingFull, match="spare_buffers"):
            r.read(1.0)
        held_buffers = inspect_ring(name).readers[0].held_buffers
        assert len(set(held_buffers)) == held_max
        for n, (frame, snapshot) in enumerate(zip(held, snapshots, strict=True)):
            np.testing.assert_array_equal(frame.array, snapshot)
            assert pat.check(frame.array) == make_tag(1, n)
        for frame in held:
            frame.release()
        assert inspect_ring(name).readers[0].held_buffers == ()
        assert _ask(conn, "close") == "closed"
        with r.read(1.0) as newest:  # the frames left in the window, the newest last
            assert pat.check(newest.array) == make_tag(1, newest.seq)
        assert owner.readers == 1


def test_released_buffers_are_written_again() -> None:
    """While a reader holds all but one buffer the writer cycles through that one; once
    the frames are released it spreads over the ring's buffers again."""
    name = unique_name("pins")
    pat = Pattern((64,))
    with (
        RingWriter.create(name, (64,), np.uint8, slots=4, policy="overwrite") as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        held = []
        for n in range(5):  # buffers: 4 + 2 spares = 6; one writer: 5 frames may be held
            w.write(pat.make(make_tag(0, n)), 0.0)
            held.append(r.read(1.0))
        for n in range(5, 100):
            w.write(pat.make(make_tag(0, n)), 0.0)
        assert _queued(name) == 1
        assert [pat.check(frame.array) for frame in held] == [make_tag(0, n) for n in range(5)]
        for frame in held:
            frame.release()
        for n in range(100, 104):
            w.write(pat.make(make_tag(0, n)), 0.0)
        slots = inspect_ring(name).slot_states
        assert _queued(name) == 4
        assert len({slot.buffer for slot in slots}) == 4
        got = _drain(r, pat)
        assert got == [make_tag(0, n) for n in range(100, 104)]


def _drain(r: RingReader, pat: Pattern) -> list[int]:
    """The tags of every frame ready now, each checked while held."""
    tags: list[int] = []
    while True:
        try:
            frame = r.read(0.0)
        except TimeoutError:
            return tags
        with frame:
            tags.append(pat.check(frame.array))


def test_a_reader_holds_at_most_max_pins_frames() -> None:
    name = unique_name("pins")
    pat = Pattern((64,))
    with (
        RingWriter.create(name, (64,), np.uint8, slots=4, policy="overwrite", spare_buffers=8) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        held = []
        for n in range(L.MAX_PINS):  # more than the ring's slots
            w.write(pat.make(make_tag(0, n)), 0.0)
            held.append(r.read(1.0))
        w.write(pat.make(make_tag(0, L.MAX_PINS)), 0.0)
        with pytest.raises(RingFull, match="release one"):
            r.read(1.0)
        held.pop(3).release()  # any one of them: a slot in the middle of the pin line
        with r.read(1.0) as frame:
            assert frame.seq == L.MAX_PINS
        for n, frame in zip([0, 1, 2, 4, 5, 6, 7], held, strict=True):
            assert frame.seq == n and pat.check(frame.array) == make_tag(0, n)


@pytest.mark.parametrize("how", ["group", "meta"])
def test_general_path_holds_several_frames(how: str) -> None:
    """Group members and frames with metadata are pinned under the header lock (pin()):
    the same rules hold there."""
    name = unique_name("pins")
    pat = Pattern((64,))
    with (
        RingWriter.create(
            name, (64,), np.uint8, slots=4, policy="overwrite", spare_buffers=2, meta_size=8
        ) as w,
        RingReader.attach(name, start="oldest", group="g" if how == "group" else None) as r,
    ):
        meta = b"m" if how == "meta" else b""
        held = []
        for n in range(5):
            w.write(pat.make(make_tag(0, n)), 0.0, meta=meta)
            held.append(r.read(1.0))
        w.write(pat.make(make_tag(0, 5)), 0.0, meta=meta)
        with pytest.raises(RingFull, match="spare_buffers"):
            r.read(1.0)
        for n in range(6, 200):
            w.write(pat.make(make_tag(0, n)), 0.0, meta=meta)
        assert [pat.check(frame.array) for frame in held] == [make_tag(0, n) for n in range(5)]
        assert all(frame.meta == meta for frame in held)
        for frame in held:
            frame.release()
        with r.latest(1.0) as frame:
            assert frame.seq == 199


def test_killed_reader_holding_frames_is_reaped_and_its_pins_stop_counting() -> None:
    name = unique_name("pins")
    pat = Pattern((64,))
    with (
        RingWriter.create(
            name, (64,), np.uint8, slots=4, policy="overwrite", spare_buffers=3, max_readers=3
        ) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        for n in range(6):
            w.write(pat.make(make_tag(0, n)), 0.0)
        with Child("fork", "hold_frames", name=name, count=4) as child:
            assert child.recv() == [2, 3, 4, 5]  # the window of 4 slots
            out = subprocess.run(
                [sys.executable, "-m", "shmring", "inspect", name],
                capture_output=True,
                text=True,
                timeout=WAIT,
                check=True,
            ).stdout
            assert "holds buffers" in out, out
            dead = next(x for x in inspect_ring(name).readers if x.pid == child.pid)
            assert len(dead.held_buffers) == 4
            for n in range(6, 1100):  # the writer goes on, with the buffers left to it
                w.write(pat.make(make_tag(0, n)), 0.0)
            # buffers 7 = 4 held there + 1 writer + 2 this reader may hold
            kept = [r.latest(1.0)]
            w.write(pat.make(make_tag(0, 1100)), 0.0)
            kept.append(r.read(1.0))
            w.write(pat.make(make_tag(0, 1101)), 0.0)
            with pytest.raises(RingFull, match="spare_buffers"):
                r.read(1.0)
            child.kill()
            child.wait_dead()
        # Dead: the next read that finds no room reaps it, and its pins stop counting.
        third = r.read(1.0)
        assert third.seq == 1101
        assert [x.pid for x in inspect_ring(name).readers] == [r._p.pid]
        assert len(inspect_ring(name).readers[0].held_buffers) == 3
        for n in range(1102, 1200):
            w.write(pat.make(make_tag(0, n)), 0.0)
        assert [pat.check(f.array) for f in (*kept, third)] == [
            make_tag(0, s) for s in (1099, 1100, 1101)
        ]


def test_close_clears_every_pin_it_stored() -> None:
    """A reader that closes while it holds frames clears its pins (in C, Taker.close): its
    record's `pinned` word and its pin line are empty again."""
    name = unique_name("pins")
    pat = Pattern((64,))
    with RingWriter.create(name, (64,), np.uint8, slots=4, policy="overwrite") as w:
        r = RingReader.attach(name, start="oldest")
        held = []
        for n in range(3):
            w.write(pat.make(make_tag(0, n)), 0.0)
            held.append(r.read(1.0))
        g, index = r._p.geometry, r._index
        assert len(inspect_ring(name).readers[0].held_buffers) == 3
        r.close()
        with open(seg_path(name), "rb") as f:
            raw = f.read(g.data_offset)
        pinned = struct.unpack_from("<Q", raw, g.readers_offset + 64 * index + 8 * L.R_PINNED)
        line = struct.unpack_from("<8Q", raw, g.pins_offset + 64 * index)
        assert pinned == (L.NONE,)
        assert line == (0, *[L.NONE] * L.PINS_PER_LINE)
        assert all(frame._reader is not None for frame in held)  # closing kept the objects
        for frame in held:
            frame.release()  # a no-op now


def test_writer_finding_every_buffer_taken_reaps_a_dead_holder_first() -> None:
    """The sizing rule is checked when a reader pins, against the writers attached then;
    writers that join later may find every buffer held or claimed. If a dead reader holds
    some, the writer reaps it and goes on instead of raising RingFull."""
    name = unique_name("pinw")
    pat = Pattern((64,))
    with RingWriter.create(
        name, (64,), np.uint8, slots=4, policy="overwrite", spare_buffers=3, max_readers=3
    ) as w:
        for n in range(6):
            w.write(pat.make(make_tag(0, n)), 0.0)
        others: list[RingWriter] = []
        try:
            with Child("fork", "hold_frames", name=name, count=4) as child:
                assert child.recv() == [2, 3, 4, 5]  # 4 of the 7 buffers pinned
                others += [RingWriter.attach(name, timeout=WAIT) for _ in range(3)]
                child.kill()
                child.wait_dead()
            assert len(inspect_ring(name).readers) == 1  # not reaped yet
            claims = [writer.claim(0.0) for writer in (w, *others)]  # 4 claims, 3 unpinned
            for n, claim in enumerate(claims):
                claim.__enter__()[:] = pat.make(make_tag(n + 1, 0))
            assert inspect_ring(name).readers == []  # the fourth claim reaped the holder
            for claim in claims:
                claim.__exit__(None, None, None)
            with RingReader.attach(name, start="oldest") as r:
                got = sorted(pat.check(r.read(1.0).array) for _ in range(4))
            assert got == [make_tag(n + 1, 0) for n in range(4)]
        finally:
            for writer in others:
                writer.close()


@pytest.mark.parametrize("writers", [1, 2])
def test_inspect_counts_no_buffer_a_reader_holds_as_free(writers: int) -> None:
    """Frames a reader holds after they left the window keep their buffers: writers skip
    them, and `free_buffers` does not count them (it did, from the free list or pool)."""
    name = unique_name()
    frame = np.zeros(16, np.uint8)
    with (
        RingWriter.create(name, (16,), np.uint8, slots=4, policy="overwrite") as w,
        RingWriter.attach(name) as other,
        RingReader.attach(name, start="oldest") as r,
    ):
        if writers == 2:
            other.write(frame, WAIT)  # two writers: sequenced, the free list a pool
        w.write(frame, WAIT)
        w.write(frame, WAIT)
        held = [r.read(WAIT), r.read(WAIT)]
        for _ in range(8):  # every frame in the window replaced: the held ones left it
            w.write(frame, WAIT)
        info = inspect_ring(name)
        pinned = {b for reader in info.readers for b in reader.held_buffers}
        queued = {s.buffer for s in info.slot_states if s.state == "queued"}
        assert len(pinned) == 2 and not pinned & queued
        assert info.free_buffers == w._p.geometry.buffers - len(pinned | queued)
        for frame_held in held:
            frame_held.release()
        assert inspect_ring(name).free_buffers == w._p.geometry.buffers - len(queued)
