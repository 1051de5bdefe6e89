# Fuzzing a live ring's shared memory with Hypothesis: the quick form of `make fuzz`.
#
# Each example is a stress.fuzz.Case: a ring, how it was used, values written over part of
# it (or the file resized), and more values written while a fresh process is attached. A
# lane of two long-lived worker processes runs it: the owner keeps using and then closes the
# damaged ring, a fresh prober inspects, attaches, writes and reads. So a crash shows up as a
# signal and a hang as a timeout; either fails the test, as does an exception that is not a
# ShmringError and a segment or file descriptor that the owner's close left behind, a step
# past its bound, and a worker that does not exit cleanly once the lane closes. Known
# damage patterns are pinned as explicit cases beside the generated ones: among them forged
# skip counts and pin lines, an overwrite reader holding its most frames across the damage,
# a stream with gaps, and a planted ring whose pin table offset the geometry does not imply.
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import random
import struct
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import numpy as np
import pytest
from helpers import WAIT, seg_path, unique_name, wait_for_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmring
from shmring import RingCorrupted, RingReader, RingTimeout, RingWriter
from shmring import _layout as L
from stress import fuzz
from stress.fuzz import (
    BLOCK_SLOTS,
    DESCRIPTOR_BYTES,
    DTYPES,
    GROUPS,
    META_SIZES,
    OVERWRITE_SLOTS,
    POLICIES,
    REGIONS,
    RESIZES,
    SHAPES,
    WORDS,
    Case,
    CaseResult,
    Lane,
    Patch,
    Steps,
)

pytestmark = pytest.mark.stress  # randomized damage and hypothesis rounds

NONE = 2**64 - 1
CONTROL_HEAD, CONTROL_TAIL, CONTROL_FREE_COUNT = 0, 1, 2
CONTROL_WRITERS, CONTROL_READERS, CONTROL_MEMBERSHIP = 11, 12, 13
CONTROL_SPACE_WANTED = 19
DESCRIPTOR_BUFFER, DESCRIPTOR_FLAGS, DESCRIPTOR_SHAPE = 1, 2, 5
RECORD_STATE, RECORD_TOKEN, READER_GROUP, READER_RELEASE, READER_PINNED = 0, 1, 3, 4, 7
WRITER_IN_PUBLISH, WRITER_CLAIMED = 3, 4
WRITERS_OFFSET = 192  # docs/FORMAT.md: fixed-header field writers_offset
SHAPE = (8192,)  # two pages per buffer
DESCRIPTOR_WORDS = DESCRIPTOR_BYTES // 8


@pytest.fixture(scope="module")
def lane() -> Iterator[Lane]:
    lane = Lane()
    yield lane
    exits = lane.close()  # each worker exits by itself, with status 0, when its stdin closes
    assert not exits, exits


def problems(result: CaseResult) -> str:
    return "\n".join(f"{kind}: {detail}" for kind, detail in result.problems)


# ---- generated cases -------------------------------------------------------------------------
word_patches = st.builds(
    Patch.word,
    st.sampled_from(REGIONS),
    st.integers(0, 63),
    st.sampled_from(WORDS) | st.integers(0, NONE),
)
byte_patches = st.builds(
    Patch, st.sampled_from(REGIONS), st.integers(0, 4095), st.binary(min_size=1, max_size=32)
)
forged_patches = st.builds(Patch.forged, st.randoms(use_true_random=False))  # skips, pins
patches = word_patches | byte_patches | forged_patches


@st.composite
def cases(draw: st.DrawFn) -> Case:
    policy = draw(st.sampled_from(POLICIES))
    return Case(
        seed=-1,
        policy=policy,
        shape=draw(st.sampled_from(SHAPES)),
        dtype=draw(st.sampled_from(DTYPES)),
        slots=draw(st.sampled_from(BLOCK_SLOTS if policy == "block" else OVERWRITE_SLOTS)),
        meta_size=draw(st.sampled_from(META_SIZES)),
        group=draw(st.sampled_from(GROUPS)),
        fresh_group=draw(st.sampled_from(GROUPS)),
        written=draw(st.integers(0, 20)),
        variable=draw(st.booleans()),
        held=draw(st.integers(0, L.MAX_PINS)),
        second_writer=draw(st.booleans()),
        patches=tuple(draw(st.lists(patches, min_size=1, max_size=4))),
        resize=draw(st.none() | st.sampled_from(RESIZES)),
        late_patches=tuple(draw(st.lists(patches, max_size=2))),
        skips=draw(st.booleans()),
    )


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cases())
def test_damaged_ring_gives_only_typed_errors(lane: Lane, case: Case) -> None:
    result = lane.run(case)
    assert not result.problems, problems(result)


# ---- damage patterns pinned as explicit cases -----------------------------------------------
PLAIN = Case(
    seed=-1,
    policy="block",
    shape=(4, 4),
    dtype="uint8",
    slots=4,
    meta_size=8,
    group=None,
    fresh_group=None,
    written=3,
    variable=True,
    held=1,
    second_writer=False,
    patches=(),
    resize=None,
)
LOCK_MARK = Patch.word("lock", 0, 0x5A5A_5A5A_5A5A_5A5A)  # "a holder died": repair runs
# An overwrite ring whose owner-side reader holds three frames (pins in its pin line, 0).
OVERWRITE_HOLDING = {"policy": "overwrite", "slots": 4, "written": 6, "held": 3}


def damaged(*patches: Patch, **changes: object) -> Case:
    return dataclasses.replace(PLAIN, patches=patches, **changes)  # type: ignore[arg-type]


PINNED = {
    "lock word garbage": damaged(LOCK_MARK),
    "lock word garbage, shared writers": damaged(LOCK_MARK, second_writer=True),
    "head at NONE": damaged(Patch.word("control", CONTROL_HEAD, NONE), LOCK_MARK),
    "head at 2**63": damaged(Patch.word("control", CONTROL_HEAD, 2**63)),
    "tail beyond head": damaged(Patch.word("control", CONTROL_TAIL, 99), LOCK_MARK),
    "free count huge": damaged(Patch.word("control", CONTROL_FREE_COUNT, 2**40)),
    "free count huge, lock mark": damaged(
        Patch.word("control", CONTROL_FREE_COUNT, 2**40), LOCK_MARK
    ),
    "membership at NONE": damaged(Patch.word("control", CONTROL_MEMBERSHIP, NONE), LOCK_MARK),
    "writer and reader counts at NONE": damaged(
        Patch.word("control", CONTROL_WRITERS, NONE),
        Patch.word("control", CONTROL_READERS, NONE),
        LOCK_MARK,
    ),
    "space wanted at NONE": damaged(Patch.word("control", CONTROL_SPACE_WANTED, NONE)),
    "descriptor names a buffer out of range": damaged(
        Patch.word("descriptors", DESCRIPTOR_BUFFER, 2**32)
    ),
    "descriptor own shape of zeros": damaged(
        Patch.word("descriptors", DESCRIPTOR_FLAGS, 2),
        Patch.word("descriptors", DESCRIPTOR_SHAPE, 0),
    ),
    "descriptor own shape too large": damaged(
        Patch.word("descriptors", DESCRIPTOR_FLAGS, 2),
        Patch.word("descriptors", DESCRIPTOR_SHAPE, 2**40),
    ),
    "reader record names group out of range": damaged(
        Patch.word("readers", READER_GROUP, 17), LOCK_MARK
    ),
    "reader release at NONE": damaged(Patch.word("readers", READER_RELEASE, NONE)),
    "overwrite reader pins a buffer out of range": damaged(
        Patch.word("readers", READER_PINNED, 2**33),
        LOCK_MARK,
        policy="overwrite",
        slots=9,
    ),
    "every reader record active with a garbage token": damaged(
        *(Patch.word("readers", 8 * i + RECORD_STATE, 1) for i in range(4)),
        *(Patch.word("readers", 8 * i + RECORD_TOKEN, 12345) for i in range(4)),
    ),
    "group record state garbage": damaged(
        Patch.word("groups", RECORD_STATE, 7), LOCK_MARK, group="g", fresh_group="g"
    ),
    "writer claims a buffer out of range": damaged(
        Patch.word("writers", WRITER_CLAIMED, 2**20), LOCK_MARK
    ),
    "free list entries out of range": damaged(
        *(Patch.word("freelist", i, 2**31 + i) for i in range(4)), written=0, held=0
    ),
    "skip count at its most on a published frame": damaged(
        Patch.word("descriptors", DESCRIPTOR_FLAGS, L.DF_SKIP | L.MAX_SKIP_COUNT << 32)
    ),
    "skip count on an evicted descriptor, overwrite": damaged(
        Patch.word("descriptors", DESCRIPTOR_FLAGS, L.DF_SKIP | L.DF_EVICTED | 1000 << 32),
        policy="overwrite",
        slots=2,
        written=9,
    ),
    "pin line top far past the line": damaged(
        Patch.word("pins", L.PIN_TOP, 2**32), LOCK_MARK, **OVERWRITE_HOLDING
    ),
    "pin line holds buffers out of range": damaged(
        *(Patch.word("pins", L.PIN_HELD + i, 2**33 + i) for i in range(L.PINS_PER_LINE)),
        Patch.word("pins", L.PIN_TOP, L.PINS_PER_LINE),
        **OVERWRITE_HOLDING,
    ),
    "pin line pins every buffer": damaged(
        *(Patch.word("pins", L.PIN_HELD + i, i) for i in range(L.PINS_PER_LINE)),
        Patch.word("pins", L.PIN_TOP, L.PINS_PER_LINE),
        **OVERWRITE_HOLDING,
    ),
    "stream with gaps, the reader holding up to eight frames": damaged(
        Patch.word("descriptors", 2 * DESCRIPTOR_WORDS + DESCRIPTOR_FLAGS, L.DF_SKIP | 7 << 32),
        policy="overwrite",
        slots=8,
        written=20,
        held=L.MAX_PINS,
        skips=True,
    ),
    "planted ring with a pin table offset its geometry does not imply": damaged(
        plant="pins_offset"
    ),
    "whole header zeroed past the fixed part": damaged(Patch("header", 256, bytes(3840))),
    "fixed header magic": damaged(Patch("fixed", 0, b"\x00SHMRING")),
    "file truncated to the fixed header": damaged(resize="fixed"),
    "file one byte short": damaged(resize="short"),
    "file grown by a page": damaged(resize="page-more"),
}


@pytest.mark.parametrize("case", PINNED.values(), ids=PINNED.keys())
def test_pinned_damage(lane: Lane, case: Case) -> None:
    result = lane.run(case)
    assert not result.problems, problems(result)
    if case.resize is not None or any(p.region == "fixed" for p in case.patches):
        for step in ("inspect", "attach_reader", "attach_writer"):
            assert result.steps[step] == "IncompatibleRing", result.steps
    if case.plant is not None:
        for step in ("plant_inspect", "plant_attach_reader", "plant_attach_writer"):
            assert result.steps[step] == "IncompatibleRing", result.steps
    if case.held:  # every frame it held was released (out of order), each step typed
        assert "owner_release" in result.steps, result.steps


def test_writer_stuck_in_publish_is_a_bounded_wait() -> None:
    """A garbage in_publish flag on the live writer's record cannot be told from a writer
    stopped mid-publish: a joining reader waits a bounded time, then RingTimeout; the
    writer's next publish clears the flag and joining works again."""
    name = unique_name("ip")
    with RingWriter.create(name, SHAPE, np.uint8) as writer:
        writer._join()  # the creator takes writer record 0 at its first frame; take it now
        with open(seg_path(name), "r+b") as f:
            f.seek(WRITERS_OFFSET)
            (writers,) = struct.unpack("<Q", f.read(8))
            f.seek(writers + 8 * WRITER_IN_PUBLISH)
            f.write(struct.pack("<Q", 1))
        started = time.monotonic()
        with pytest.raises(RingTimeout):
            RingReader.attach(name)
        assert time.monotonic() - started < 10
        writer.write(np.zeros(SHAPE, np.uint8), 1.0)
        RingReader.attach(name).close()


# ---- a file cut short under processes that are waiting on it -----------------------------
def _wait_in(conn: Connection, name: str, call: str) -> None:
    """Forked child: block in `call` (bounded) and report what it raised."""
    try:
        if call == "read":
            with RingReader.attach(name) as reader:
                conn.send("ready")
                reader.read(5.0)
        else:
            with RingWriter.attach(name) as writer:
                conn.send("ready")
                writer.write(np.zeros(SHAPE, np.uint8), 5.0)
        conn.send("returned")
    except Exception as exc:
        conn.send(type(exc).__name__)


@pytest.mark.parametrize("call", ["read", "write"])
def test_file_cut_short_under_a_waiting_process_is_ring_corrupted(call: str) -> None:
    """Touching pages a truncation dropped is a SIGBUS nobody can catch; a process that is
    waiting (for a frame, for space) notices the new size and raises RingCorrupted."""
    name = unique_name("tr")
    path = seg_path(name)
    with RingWriter.create(name, SHAPE, np.uint8, slots=2) as owner:
        with RingReader.attach(name, start="oldest"):
            for _ in range(2 if call == "write" else 0):  # full: the next write waits
                owner.write(np.zeros(SHAPE, np.uint8), 1.0)
            size = os.path.getsize(path)
            ctx = mp.get_context("fork")
            ours, theirs = ctx.Pipe()
            child = ctx.Process(target=_wait_in, args=(theirs, name, call), daemon=True)
            child.start()
            try:
                assert ours.poll(WAIT) and ours.recv() == "ready"
                assert child.pid is not None
                wait_for_state(child.pid, "S")  # asleep in its wait, not before it
                os.truncate(path, size - 4096)  # the last frame buffer's page
                assert ours.poll(WAIT), "the waiting child did not notice"
                assert ours.recv() == "RingCorrupted"
            finally:
                child.join(WAIT)
                if child.is_alive():  # a failed step above: do not leave it waiting
                    child.kill()
                    child.join(WAIT)
                os.truncate(path, size)  # so the owner can close without touching a hole
        assert child.exitcode == 0


# ---- the driver's own verdicts ----------------------------------------------------------------
def test_a_step_past_its_bound_is_late(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuzz, "LOCK_FLOOR", 0.0)
    monkeypatch.setattr(fuzz, "STEP_SLACK", 0.01)
    steps = Steps()
    steps.run("nap", lambda: time.sleep(0.05))
    steps.run("nap in its timeout", lambda: time.sleep(0.05), timeout=1.0)
    assert [late.split(" took ")[0] for late in steps.late] == ["nap"]


def test_a_forged_ring_refused_by_another_error_is_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = unique_name("pl")
    fuzz.plant(seg_path(name), "slots", random.Random(0))
    try:

        def corrupted(name: str) -> None:
            raise RingCorrupted(f"ring {name!r}: said instead of IncompatibleRing")

        monkeypatch.setattr(shmring, "inspect_ring", corrupted)
        steps = Steps()
        fuzz.probe_plant(steps, seg_path(name))
    finally:
        os.unlink(seg_path(name))
    assert steps.outcomes["plant_inspect"] == "untyped AssertionError", steps.outcomes
    assert steps.outcomes["plant_attach_reader"] == "IncompatibleRing", steps.outcomes
