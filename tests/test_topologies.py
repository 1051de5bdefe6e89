"""The ways users wire a pipeline (issue 16): the supervisor wiring, a parent that creates a
ring for several writer children, latest-frame overwrite rings with the default limits.

Real processes throughout; every frame is verified (Pattern) for order, loss and tearing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
import pytest
from helpers import (
    SMALL,
    WAIT,
    Child,
    Pattern,
    Waiter,
    finish,
    hold_next_position,
    let_go_position,
    make_tag,
    seg_path,
    split_tag,
    unique_name,
)

import shmring
import shmring._layout as L
from shmring import (
    EndOfStream,
    RingFull,
    RingReader,
    RingWriter,
    WriterGone,
    _cpu_use,
    _ring,
    _writer,
)

TIMEOUT = 5.0  # a write or read that does not happen at once fails the test well before WAIT

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "examples",
    "supervisor",
    "supervisor.py",
)


# ---- owning a ring is not writing to it ---------------------------------------------------


def test_supervisor_program_ends_by_itself_on_the_fast_path() -> None:
    """examples/supervisor: parent creates, a writer child and a reader child stream 10,000
    verified frames; the program returns by itself, and mid-stream the ring has one writer
    in exclusive mode (the parent's handle took no writer record)."""
    name = unique_name("sup")
    done = subprocess.run(
        [sys.executable, EXAMPLE, "--frames", "10000", "--name", name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "writer: 1 writer(s), mode exclusive" in lines
    assert "reader: 10000 frames verified, in order" in lines
    assert lines[-1] == "supervisor: done"


def test_a_creator_that_never_writes_takes_no_writer_record() -> None:
    name = unique_name("own")
    with RingWriter.create(name, SMALL, np.uint8, max_writers=1) as owner:
        info = shmring.inspect_ring(name)
        assert info.writers == [] and info.writer_mode == "exclusive"
        with RingWriter.attach(name) as writer:  # max_writers=1: the owner left room
            writer.write(np.zeros(SMALL, np.uint8))
            assert len(shmring.inspect_ring(name).writers) == 1
            with pytest.raises(RingFull, match="max_writers"):
                owner.write(np.zeros(SMALL, np.uint8))  # joining now needs a second record


def test_closing_the_only_writer_ends_the_stream_while_the_owner_lives() -> None:
    name = unique_name("eos")
    pat = Pattern(SMALL)
    with RingWriter.create(name, SMALL, np.uint8), RingReader.attach(name) as reader:
        iterating = Waiter(lambda: [pat.check(frame.array) for frame in reader])
        with Child("spawn", "stream_writer", name=name, count=500, create=False) as child:
            child.expect("ready")
            iterating.start()
            child.send("go")
            finish(child)
        iterating.finish()  # the loop ended: EndOfStream, though the owner's handle is open
        assert iterating.exc is None
        assert [split_tag(t)[1] for t in iterating.result] == list(range(500))


def test_a_ring_that_never_had_a_writer_waits_then_ends_when_its_owner_closes() -> None:
    name = unique_name("nw")
    owner = RingWriter.create(name, SMALL, np.uint8)
    reader = RingReader.attach(name)
    try:
        with pytest.raises(shmring.RingTimeout):
            reader.read(0.3)  # no writer yet: neither EndOfStream nor WriterGone
        waiting = Waiter(lambda: reader.read(WAIT))
        waiting.start()
        owner.close()
        waiting.finish()
        assert isinstance(waiting.exc, EndOfStream)
    finally:
        reader.close()
        owner.close()


def test_reader_of_a_dead_creator_that_never_wrote_gets_writer_gone() -> None:
    name = unique_name("dc")
    with Child("spawn", "create_exit", name=name) as creator:
        creator.expect("ready")
        with RingReader.attach(name, timeout=WAIT) as reader:
            creator.kill()
            started = time.monotonic()
            with pytest.raises(WriterGone, match="no writer ever joined"):
                reader.read(WAIT)
            assert time.monotonic() - started < 1.5
    assert not os.path.exists(seg_path(name))  # the last one out of an orphaned ring unlinks


# ---- several writers attach to a parent's ring -----------------------------------------------


@contextmanager
def writer_children(
    writers: int, func: str = "stream_writer", go: bool = True, **kwargs: Any
) -> Iterator[list[Child]]:
    """`writers` children running `func` (writer_id 0, 1, ...), each ready and, with `go`,
    told to go; closed (killed if still running) on exit."""
    children = [Child("spawn", func, writer_id=i, **kwargs) for i in range(writers)]
    try:
        for child in children:
            child.expect("ready")
        for child in children if go else ():
            child.send("go")
        yield children
    finally:
        for child in children:
            child.close()


def tagged_frames(
    reader: RingReader,
    pat: Pattern,
    timeout: float = WAIT,
    until: type[Exception] = EndOfStream,
) -> Iterator[tuple[int, int, int]]:
    """(writer, n, seq) of each frame the reader gets, every byte checked (Pattern), until
    a read raises `until` (the end of the stream; RingTimeout with timeout 0: none is left)."""
    while True:
        try:
            frame = reader.read(timeout)
        except until:
            return
        with frame:
            writer, n = split_tag(pat.check(frame.array))
            seq = frame.seq
        yield writer, n, seq


def test_four_writer_children_of_a_parent_one_killed_mid_stream() -> None:
    """The parent creates with the default max_writers=4; four writer children attach and
    write tagged frames; one is SIGKILLed mid-stream. The reader gets every survivor's frames
    in order, none torn or duplicated, and the survivors go on within 1 s."""
    name = unique_name("fan")
    pat = Pattern(SMALL)
    count, victim = 3000, 3
    with RingWriter.create(name, SMALL, np.uint8, slots=8) as owner:
        with (
            RingReader.attach(name, start="oldest") as reader,
            writer_children(4, name=name, count=count, create=False) as children,
        ):
            per_writer: dict[int, list[int]] = {i: [] for i in range(4)}
            killed_at, first_after_kill, head_at_kill = None, None, 0
            for writer, n, seq in tagged_frames(reader, pat):
                per_writer[writer].append(n)
                if killed_at is None and len(per_writer[victim]) == 200:
                    children[victim].kill()
                    children[victim].wait_dead()
                    killed_at, head_at_kill = time.monotonic(), owner._control[L.C_HEAD]
                elif (
                    killed_at is not None
                    and first_after_kill is None
                    and writer != victim
                    and seq >= head_at_kill  # published after the kill, not queued before it
                ):
                    first_after_kill = time.monotonic()
            for child in children[:victim]:
                finish(child)
        assert owner.readers == 0
    assert killed_at is not None and first_after_kill is not None
    assert first_after_kill - killed_at < 1.0, "survivors stalled after the kill"
    for writer in range(4):
        got = per_writer[writer]
        if writer == victim:
            assert got == list(range(len(got))) and 200 <= len(got) < count
        else:
            assert got == list(range(count)), f"writer {writer}: lost or reordered frames"


def test_two_writers_streaming_their_copies_deliver_whole_frames() -> None:
    """Shared mode copies past the cache (non-temporal stores, then a fence before the
    publish) when the ring outgrows half the last-level cache; forced here for a frame
    that is no multiple of the 32-byte vector step, so the tail is copied too. Every byte
    of every frame of both writer processes is checked, in each writer's order."""
    name, shape, count = unique_name("stream"), (241, 333), 1500
    pat = Pattern(shape)
    with (
        RingWriter.create(name, shape, np.uint8, slots=8) as owner,
        RingReader.attach(name, start="oldest") as reader,
        writer_children(
            2, name=name, shape=list(shape), count=count, create=False, stream_copies=True
        ) as kids,
    ):
        per_writer: dict[int, list[int]] = {0: [], 1: []}
        shared = 0  # frames published while both writers were writing
        for frame in reader:
            writer, n = split_tag(pat.check(frame.array))
            per_writer[writer].append(n)
            shared += owner._control[L.C_WRITER_MODE] == L.MODE_SHARED
        reports = [finish(child) for child in kids]
    assert all(report["streamed"] for report in reports)
    assert per_writer == {0: list(range(count)), 1: list(range(count))}
    assert shared > count // 2  # most frames took the shared (streamed) path


# ---- several writers of an overwrite ring: no lock per frame --------------------------------


def overwrite_writers(writers: int, name: str, count: int) -> AbstractContextManager[list[Child]]:
    """`writers` tagged_overwrite_writer children joined to overwrite ring `name`, each
    ready to write `count` frames on "go" (see writer_children)."""
    return writer_children(writers, "tagged_overwrite_writer", go=False, name=name, count=count)


def test_overwrite_writers_publish_while_another_process_holds_the_lock() -> None:
    """Two writer children of an overwrite ring that a parent created write 2,000 frames
    each while a third process holds the header lock: no step of theirs takes it (the ring
    is sequenced, F_SEQUENCED). Their frames arrive whole, each writer's in its order; once
    the holder is SIGKILLed, the writers close and the reader gets EndOfStream."""
    name, pat, count = unique_name("owlock"), Pattern(SMALL), 2000
    with (
        RingWriter.create(name, SMALL, np.uint8, policy="overwrite") as owner,
        RingReader.attach(name, start="oldest") as reader,
        overwrite_writers(2, name, count) as writers,
        Child(
            "spawn", "lock_holder", name=name, create=False, policy="overwrite", frames=0
        ) as holder,
    ):
        holder.expect("ready")
        holder.send("go")
        holder.expect("wrote")
        assert owner._p.sequenced() and owner._control[L.C_WRITERS] == 3
        holder.send("hold")
        holder.expect("holding")
        for writer in writers:
            writer.send("go")
        reports = [writer.expect("seqs") for writer in writers]  # no lock needed to write
        assert all(report["increasing"] for report in reports)
        per_writer: dict[int, list[int]] = {}
        for writer_id, n, _ in tagged_frames(reader, pat, 0, shmring.RingTimeout):
            per_writer.setdefault(writer_id, []).append(n)
        assert set(per_writer) <= {0, 1} and per_writer
        for got in per_writer.values():
            assert got == sorted(set(got)), "a writer's frames out of order or twice"
        assert max(n for got in per_writer.values() for n in got) == count - 1
        holder.kill()
        holder.wait_dead()
        for writer in writers:
            writer.send("close")
            writer.expect("closed")
        with pytest.raises(EndOfStream):
            reader.read(WAIT)


def test_an_overwrite_writer_killed_mid_stream_stalls_the_others_less_than_a_second() -> None:
    """Three writer children of an overwrite ring write flat out; one is SIGKILLed mid-stream
    (anywhere: copying, owning a position, between its steps). The survivors write all
    their frames, the reader gets frames of theirs within 1 s of the kill, none torn, each
    writer's in order and once; every number the reader passed is counted (received +
    dropped = numbers published)."""
    name, pat, count, victim = unique_name("owkill"), Pattern(SMALL), 200_000, 2
    with (
        RingWriter.create(name, SMALL, np.uint8, policy="overwrite") as owner,
        RingReader.attach(name, start="oldest") as reader,
        overwrite_writers(3, name, count) as writers,
    ):
        for writer in writers:
            writer.send("go")
        per_writer: dict[int, list[int]] = {0: [], 1: [], 2: []}
        received, killed_at, first_after_kill, head_at_kill = 0, None, None, 0
        frames = tagged_frames(reader, pat)
        for writer_id, n, seq in frames:
            per_writer[writer_id].append(n)
            received += 1
            if killed_at is None and len(per_writer[victim]) >= 100:
                writers[victim].kill()
                writers[victim].wait_dead()
                killed_at, head_at_kill = time.monotonic(), owner._control[L.C_HEAD]
            elif killed_at is not None and seq >= head_at_kill:  # published after the kill
                first_after_kill = time.monotonic()
                break
        for writer in writers[:victim]:
            assert writer.expect("seqs")["increasing"]
            writer.send("close")
            writer.expect("closed")
        for writer_id, n, _ in frames:  # the rest, to the end of the stream
            per_writer[writer_id].append(n)
            received += 1
        published = owner._control[L.C_HEAD]
    assert killed_at is not None and first_after_kill is not None
    assert first_after_kill - killed_at < 1.0, "survivors' frames stalled after the kill"
    for got in per_writer.values():
        assert got == sorted(set(got)), "a writer's frames out of order or twice"
    assert max(per_writer[w][-1] for w in range(victim)) == count - 1  # the newest frame
    assert received + reader.dropped == published


def test_a_position_a_dead_writer_owned_becomes_a_skip_and_the_stream_goes_on() -> None:
    """A writer SIGKILLed while it owned a position (D_SEQ = number | SEQ_BUSY; forged here
    for a child killed idle, since no kill lands there on cue): head waits at that number
    while the survivor's frames go on past it; the next repair (here: a reader attaching
    reaps the dead writer) makes the number a skip, head moves over the frames published
    meanwhile, and the ring returns to exclusive mode. Readers count the skip as dropped;
    every frame is whole and in order, and later writes go on."""
    name, pat, slots = unique_name("owbusy"), Pattern(SMALL), 8
    with (
        RingWriter.create(name, SMALL, np.uint8, policy="overwrite", slots=slots) as w,
        RingReader.attach(name, start="oldest") as reader,
        Child(
            "spawn", "lock_holder", name=name, create=False, policy="overwrite", frames=0
        ) as dead,
    ):
        w.write(pat.make(make_tag(0, 0)))
        dead.expect("ready")
        assert w._p.sequenced()
        dead.kill()
        dead.wait_dead()
        control, descriptors = w._control, w._p.views.descriptors
        owned = hold_next_position(w, slots)  # as if the dead writer had taken it
        assert [w.write(pat.make(make_tag(0, n))) for n in (1, 2)] == [owned + 1, owned + 2]
        assert control[L.C_HEAD] == owned  # waiting for the owned position
        (slot,) = [s for s in shmring.inspect_ring(name).slot_states if s.state == "writing"]
        assert slot.seq == owned and slot.position == owned % slots
        with RingReader.attach(name):  # joining reaps the dead writer, which repairs
            pass
        assert descriptors[owned % slots][L.D_SEQ] == owned
        assert descriptors[owned % slots][L.D_FLAGS] == L.DF_SKIP | L.DF_EVICTED
        assert control[L.C_HEAD] == owned + 3
        assert control[L.C_WRITER_MODE] == L.MODE_EXCLUSIVE and not w._p.sequenced()
        assert w.write(pat.make(make_tag(0, 3))) == owned + 3
        received = []
        for _ in range(4):
            with reader.read(WAIT) as frame:
                received.append((split_tag(pat.check(frame.array))[1], frame.dropped))
        assert received == [(0, 0), (1, 1), (2, 0), (3, 0)]  # the skip counted once


@pytest.mark.parametrize("goes_on", ["the writer left", "a writer joining later"])
def test_a_repair_cut_short_is_finished_before_a_lone_writer_goes_on(goes_on: str) -> None:
    """A sequenced overwrite ring with a number nobody will place (a dead writer's; forged)
    and frames published past it, down to one writer (or none, then one joins); then a
    repair is cut short, as a reader's is when the writer is stopped in its lock-free step
    past the repair's wait (forged: SEQUENCED cleared, nothing placed, the lock's owner
    mark left set). The next lock holder's repair finishes it: the number becomes a skip,
    head passes the frames published meanwhile. Its recount switched the ring to exclusive
    mode first, so the repair was skipped and the writer published from head again,
    replacing those frames under their own numbers, uncounted."""
    name, pat, slots = unique_name("owcut"), Pattern(SMALL), 8
    with (
        RingWriter.create(name, SMALL, np.uint8, policy="overwrite", slots=slots),  # the owner
        RingReader.attach(name, start="oldest") as reader,
    ):
        first, second = RingWriter.attach(name), RingWriter.attach(name)
        first.write(pat.make(make_tag(0, 0)))
        assert first._p.sequenced()
        control = reader._p.control
        held = hold_next_position(first, slots)
        assert [first.write(pat.make(make_tag(0, n))) for n in (1, 2)] == [held + 1, held + 2]
        second.close()
        writer = first
        if goes_on == "a writer joining later":
            first.close()
        control[L.C_FLAGS] &= ~L.F_SEQUENCED  # the repair's first step, and its last
        control[L.C_LOCK_OWNER] = reader._p.token  # (the reader's: taken, never cleared)
        if goes_on == "a writer joining later":
            writer = RingWriter.attach(name)
        with writer:
            assert writer.write(pat.make(make_tag(0, 3)), WAIT) == held + 3
            assert control[L.C_WRITER_MODE] == L.MODE_EXCLUSIVE and not writer._p.sequenced()
        received = []
        for _ in range(4):
            with reader.read(WAIT) as frame:
                received.append((split_tag(pat.check(frame.array))[1], frame.dropped))
        assert received == [(0, 0), (1, 1), (2, 0), (3, 0)]  # the skip counted once


def test_a_publish_held_back_after_the_repair_it_waited_for_times_out_as_stalled() -> None:
    """A claim's publish finds a repair cut short (forged: SEQUENCED cleared, the owner mark
    left), so it takes the lock, whose repair sequences the ring again; then its number
    falls on a position another writer holds (forged after the repair). The publish waits
    for it as any stalled publish does, up to its timeout (ParticipantStalled). It raised
    RingCorrupted ("head is not a sequence number") at once."""
    name, pat, slots = unique_name("owheld"), Pattern(SMALL), 2
    with (
        RingWriter.create(name, SMALL, np.uint8, policy="overwrite", slots=slots) as w,
        RingWriter.attach(name) as other,
    ):
        w.write(pat.make(make_tag(0, 0)))
        other.write(pat.make(make_tag(1, 0)))
        assert w._p.sequenced()
        control, descriptors = w._control, w._p.views.descriptors
        repair = w._p.lock._repair

        def repaired_then_held() -> None:
            w._p.lock._repair = repair  # once
            repair()
            assert w._p.sequenced()
            held = hold_next_position(w, slots)  # the number after it falls on its position
            descriptors[(held + 1) % slots][L.D_FLAGS] = L.DF_SKIP
            descriptors[(held + 1) % slots][L.D_SEQ] = held + 1
            control[L.C_NEXT_SEQ] = held + 2

        w._p.lock._repair = repaired_then_held
        with (
            pytest.raises(shmring.ParticipantStalled, match="holds back"),
            w.claim(0.2) as buffer,
        ):
            buffer[:] = pat.make(make_tag(0, 1))
            control[L.C_FLAGS] &= ~L.F_SEQUENCED
            control[L.C_LOCK_OWNER] = other._p.token


def test_a_writer_stopped_holding_a_position_makes_the_others_wait_up_to_their_timeout() -> None:
    """A live writer that holds a position (forged: D_SEQ = number | SEQ_BUSY, as if it were
    stopped inside its publish) holds head back; another writer goes on until its next
    number falls on that position, then its write() waits (keeping the number: no hole),
    and raises RingTimeout at its timeout. When the holder finishes (forged: it places its
    number), the next write publishes under the kept number: head passes both, no hole.
    Once the holder is gone (SIGKILL) the repair sees nothing to place; writes go on."""
    name, pat, slots, timeout = unique_name("owstop"), Pattern(SMALL), 4, 0.2
    with (
        RingWriter.create(name, SMALL, np.uint8, policy="overwrite", slots=slots) as w,
        Child(
            "spawn", "lock_holder", name=name, create=False, policy="overwrite", frames=0
        ) as holder,
    ):
        w.write(pat.make(make_tag(0, 0)))
        holder.expect("ready")
        control = w._control
        owned = hold_next_position(w, slots)
        written = 0
        started = time.monotonic()
        with pytest.raises(shmring.RingTimeout, match="holds back"):
            for n in range(1, 4 * slots):
                started = time.monotonic()
                w.write(pat.make(make_tag(0, n)), timeout)
                written += 1
        assert timeout <= time.monotonic() - started < timeout + 1.0
        assert written == slots - 1 and control[L.C_HEAD] == owned  # then it needs that one
        kept = owned + slots
        assert w._record[L.W_CLAIMED_SEQ] == kept and control[L.C_NEXT_SEQ] == kept + 1
        let_go_position(w, owned, slots)
        assert w.write(pat.make(make_tag(0, slots)), timeout) == kept
        assert control[L.C_HEAD] == kept + 1 and w._record[L.W_CLAIMED_SEQ] == L.NONE
        assert w._record[L.W_CLAIMED] == L.NONE  # the kept buffer was filled, not a new one
        holder.kill()
        holder.wait_dead()
        assert w.write(pat.make(make_tag(0, 99)), timeout) == kept + 1


# ---- overwrite: the latest-frame ring with the default limits ------------------------------


@pytest.mark.parametrize("slots", [None, 2, 4, 8])
def test_overwrite_with_default_limits(slots: int | None) -> None:
    """The pinned calls: policy="overwrite" with the default slots, and slots=2, 4, 8, with the
    default max_readers/max_writers. A frame held across 1,000 overwrites is unchanged;
    latest() then returns one of the newest frames."""
    name = unique_name("ow")
    pat = Pattern(SMALL)
    kwargs: dict[str, Any] = {} if slots is None else {"slots": slots}
    with (
        RingWriter.create(name, SMALL, np.uint8, policy="overwrite", **kwargs) as writer,
        RingReader.attach(name) as reader,
    ):
        writer.write(pat.make(make_tag(0, 0)))
        held = reader.read(1.0)
        before = held.array.tobytes()
        for n in range(1, 1001):
            writer.write(pat.make(make_tag(0, n)), 0.0)  # never waits
        assert held.array.tobytes() == before and pat.check(held.array) == make_tag(0, 0)
        held.release()
        with reader.latest(1.0) as newest:
            assert split_tag(pat.check(newest.array))[1] == 1000
            assert newest.seq == 1000
            assert newest.dropped == 999  # received + dropped = published since joining


def test_overwrite_readers_each_holding_a_frame_while_a_child_writes_flat_out() -> None:
    """Three readers each hold a frame while a writer process overwrites 2,000 times:
    the writer never waits, held frames stay intact, received + dropped = published."""
    name = unique_name("ow3")
    pat = Pattern(SMALL)
    with RingWriter.create(name, SMALL, np.uint8, policy="overwrite", slots=2) as owner:
        readers = [RingReader.attach(name) for _ in range(3)]
        try:
            with Child("spawn", "overwrite_writer", name=name, count=2000) as child:
                child.expect("ready")
                child.send("go")
                held = []
                for reader in readers:
                    held.append(reader.latest(WAIT))
                snapshots = [frame.array.tobytes() for frame in held]
                report = finish(child)
                assert [frame.array.tobytes() for frame in held] == snapshots
                for frame in held:
                    pat.check(frame.array)
                    frame.release()
            published = report["seqs"][1] + 1  # the readers joined before the first frame
            for reader in readers:
                received = 1  # the frame it held
                while True:
                    try:
                        with reader.read(WAIT):
                            received += 1
                    except EndOfStream:
                        break
                assert received + reader.dropped == published
        finally:
            for reader in readers:
                reader.close()
        assert owner.policy == "overwrite"


def test_overwrite_holding_more_than_the_ring_was_sized_for_names_the_knob() -> None:
    name = unique_name("owf")
    with RingWriter.create(
        name, SMALL, np.uint8, policy="overwrite", slots=2, spare_buffers=0
    ) as writer:
        writer.write(np.zeros(SMALL, np.uint8))
        with RingReader.attach(name) as first, RingReader.attach(name) as second:
            with first.latest(1.0), pytest.raises(RingFull, match="spare_buffers"):
                second.latest(1.0)
            with second.latest(1.0) as frame:  # room again once the first let go
                assert frame.seq == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"slots": 0}, ValueError, "slots must be between 1"),
        ({"slots": 1, "policy": "overwrite"}, ValueError, "slots >= 2"),
        ({"max_readers": -1}, ValueError, "max_readers must be between"),
        ({"max_writers": 0}, ValueError, "max_writers must be between"),
        ({"policy": "newest"}, ValueError, "policy must be 'block' or 'overwrite'"),
        ({"spare_buffers": 2}, ValueError, "spare_buffers is for overwrite rings"),
        ({"policy": "overwrite", "spare_buffers": -1}, ValueError, "spare_buffers must be"),
    ],
)
def test_bad_geometry_gets_a_typed_error(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        RingWriter.create(unique_name("bad"), SMALL, np.uint8, **kwargs)  # type: ignore[arg-type]


# ---- polling is decided by who is runnable ---------------------------------------------


def test_an_owner_that_never_writes_does_not_switch_polling_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted before any measurement (which would find them all idle, and polling paying)."""
    monkeypatch.setattr(_cpu_use, "SAMPLE", 10 * WAIT)  # (a slow start must not measure)
    name = unique_name("poll")
    cpus = os.cpu_count() or 1
    with RingWriter.create(name, SMALL, np.uint8) as owner, RingWriter.attach(name) as writer:
        readers = [RingReader.attach(name) for _ in range(cpus - 1)]
        try:
            assert writer._p.spinning_pays()  # one writer and cpus - 1 readers: the owner
            with RingReader.attach(name):  # is no participant; one more reader is one too many
                assert not writer._p.spinning_pays()
        finally:
            for reader in readers:
                reader.close()
        assert owner.readers == 0


def _first_values(r: RingReader, count: int) -> list[int]:
    """The first element of each of the next `count` frames, read one at a time."""
    values = []
    for _ in range(count):
        with r.read(TIMEOUT) as frame:
            values.append(int(frame.array.flat[0]))
    return values


def test_without_membarrier_a_lone_block_writer_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a kernel (or sandbox) without membarrier a joiner could not quiesce an exclusive
    writer, so every writer stays sequenced, the lone one included: it writes, and goes on
    after a second writer came and left (before, each write waited for its timeout)."""
    monkeypatch.setattr(_ring, "MEMBARRIER_AVAILABLE", False)
    monkeypatch.setattr(_writer, "MEMBARRIER_AVAILABLE", False)
    with (
        RingWriter.create(unique_name(), SMALL, np.uint8, slots=8) as w,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        for value in range(3):
            w.write(np.full(SMALL, value, np.uint8), TIMEOUT)
        with RingWriter.attach(w.name) as other:
            other.write(np.full(SMALL, 3, np.uint8), TIMEOUT)
        w.write(np.full(SMALL, 4, np.uint8), TIMEOUT)
        assert _first_values(r, 5) == [0, 1, 2, 3, 4]


def test_without_membarrier_a_repaired_switch_leaves_a_block_ring_sequenced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A switch to shared mode cut short (SEQUENCED clear: its writer died before the
    commit point) is finished by the next joiner's repair: without membarrier into a
    sequenced ring whatever the number of writers, never exclusive mode (each writer would
    then go on alone)."""
    monkeypatch.setattr(_ring, "MEMBARRIER_AVAILABLE", False)
    monkeypatch.setattr(_writer, "MEMBARRIER_AVAILABLE", False)
    with (
        RingWriter.create(unique_name(), SMALL, np.uint8, slots=8) as w,
        RingWriter.attach(w.name) as second,
        RingReader.attach(w.name, start="oldest") as r,
    ):
        w.write(np.full(SMALL, 0, np.uint8), TIMEOUT)
        second.write(np.full(SMALL, 1, np.uint8), TIMEOUT)
        w._control[L.C_FLAGS] &= ~L.F_SEQUENCED  # the switch "cut short"
        with RingWriter.attach(w.name) as third:
            assert w._control[L.C_WRITER_MODE] == L.MODE_SHARED
            assert w._control[L.C_FLAGS] & L.F_SEQUENCED
            third.write(np.full(SMALL, 2, np.uint8), TIMEOUT)
        w.write(np.full(SMALL, 3, np.uint8), TIMEOUT)
        assert _first_values(r, 4) == [0, 1, 2, 3]
