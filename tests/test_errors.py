"""Every typed error, when it is raised, and the checks on arguments and frames."""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import select
import signal
import time
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from helpers import (
    SLACK,
    SMALL,
    WAIT,
    Child,
    Pattern,
    bounded,
    collect,
    make_tag,
    seg_path,
    unique_name,
    wait_pid_exit,
)

import shmring
from shmring import (
    EndOfStream,
    IncompatibleRing,
    RingExists,
    RingFull,
    RingNotFound,
    RingReader,
    RingTimeout,
    RingWriter,
    ShmringError,
    WriterGone,
    inspect_ring,
)
from shmring import _layout as L

MAGIC_OFFSET = 0


def test_error_hierarchy() -> None:
    for cls, builtin in [
        (RingNotFound, FileNotFoundError),
        (RingExists, FileExistsError),
        (EndOfStream, EOFError),
        (RingTimeout, TimeoutError),
    ]:
        assert issubclass(cls, ShmringError) and issubclass(cls, builtin)
    for cls in (IncompatibleRing, shmring.RingCorrupted, WriterGone, RingFull):
        assert issubclass(cls, ShmringError)
    assert issubclass(shmring.StaleRingWarning, UserWarning)


# ----------------------------------------------------------------------------- not found


def test_ring_not_found() -> None:
    name = unique_name()
    for attach in (RingReader.attach, RingWriter.attach):
        with pytest.raises(RingNotFound) as ei:
            attach(name)
        assert isinstance(ei.value, FileNotFoundError)
        assert name in str(ei.value)
    t0 = time.monotonic()
    with pytest.raises(RingNotFound):
        RingReader.attach(name, timeout=0.2)  # waited for it, it never appeared
    assert 0.2 <= time.monotonic() - t0 < 0.2 + SLACK


def test_ring_exists() -> None:
    name = unique_name()
    with RingWriter.create(name, SMALL, np.uint8):
        with pytest.raises(RingExists) as ei:
            RingWriter.create(name, (3, 3), np.float32)
        assert isinstance(ei.value, FileExistsError)
        assert name in str(ei.value)
        with RingReader.attach(name):  # the original ring is untouched
            pass


# ---------------------------------------------------------------------------- incompatible


@pytest.fixture
def ring_name() -> str:
    return unique_name()


def _patch(name: str, offset: int, data: bytes) -> bytes:
    with open(seg_path(name), "r+b") as f:
        f.seek(offset)
        old = f.read(len(data))
        f.seek(offset)
        f.write(data)
    return old


@pytest.mark.parametrize(
    ("offset", "what"), [(MAGIC_OFFSET, "magic"), (8, "version"), (100, "geometry")]
)
def test_incompatible_ring_damaged_header(ring_name: str, offset: int, what: str) -> None:
    """Overwrite bytes of a live ring's fixed header (the magic at offset 0, the format
    version after it, a geometry field covered by the header checksum): attaching fails
    with IncompatibleRing naming the ring; restoring the bytes makes it attachable again."""
    with RingWriter.create(ring_name, SMALL, np.uint8) as w:
        old = _patch(ring_name, offset, b"\xa5\x5a\xa5\x5a")
        try:
            for attach in (RingReader.attach, RingWriter.attach):
                with pytest.raises(IncompatibleRing) as ei:
                    attach(ring_name)
                assert ring_name in str(ei.value)
        finally:
            _patch(ring_name, offset, old)
        with RingReader.attach(ring_name) as r:
            w.write(np.ones(SMALL, np.uint8), 1.0)
            assert r.read(1.0).seq == 0


@pytest.mark.parametrize("size", [0, 10, 255, 4096, 1 << 20])
def test_incompatible_ring_not_a_ring(ring_name: str, size: int) -> None:
    """A file in the ring's place that is not a ring: a clear error, never a crash."""
    path = seg_path(ring_name)
    rng = np.random.default_rng(size)
    with open(path, "wb") as f:
        f.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    try:
        for attach in (RingReader.attach, RingWriter.attach):
            with pytest.raises(IncompatibleRing):
                attach(ring_name)
    finally:
        os.unlink(path)


def test_incompatible_ring_truncated(ring_name: str) -> None:
    with RingWriter.create(ring_name, SMALL, np.uint8):
        size = os.path.getsize(seg_path(ring_name))
        os.truncate(seg_path(ring_name), size - 1)
        try:
            with pytest.raises(IncompatibleRing):
                RingReader.attach(ring_name)
        finally:
            os.truncate(seg_path(ring_name), size)


# --------------------------------------------------------------------- gone / end / timeout


def test_writer_gone_after_sigkill() -> None:
    """The only writer SIGKILLed: what it published is still delivered, then WriterGone
    (from read, latest and iteration alike)."""
    name = unique_name()
    pat = Pattern(SMALL)
    with Child("popen", "lock_holder", name=name, create=True, mode="none", frames=2) as kid:
        kid.expect("ready")
        r = RingReader.attach(name, start="oldest")
        r2 = RingReader.attach(name, start="oldest")
        kid.send("go")
        kid.expect("wrote")
        kid.kill()
        assert kid.join() == -signal.SIGKILL
    assert collect(r, pat, limit=2, timeout=1.0).tags == [make_tag(9, 0), make_tag(9, 1)]
    t0 = time.monotonic()
    with pytest.raises(WriterGone) as ei:
        r.read(5.0)
    assert time.monotonic() - t0 < 1.0 + SLACK
    assert name in str(ei.value)
    with pytest.raises(WriterGone):
        r.latest(5.0)
    with pytest.raises(WriterGone):  # iteration does not silently end: the stream was cut
        bounded(lambda: [f.seq for f in r2])
    r.close()
    r2.close()
    assert not os.path.exists(seg_path(name))  # the last reader out unlinked the orphan


def test_end_of_stream() -> None:
    name = unique_name()
    pat = Pattern(SMALL)
    with RingWriter.create(name, SMALL, np.uint8) as w:
        r = RingReader.attach(name, start="oldest")
        r_iter = RingReader.attach(name, start="oldest")
        r_latest = RingReader.attach(name, start="oldest")
        for i in range(3):
            w.write(pat.make(make_tag(0, i)), 1.0)
        w.close()
        assert not os.path.exists(seg_path(name))  # unlinked, but attached readers drain
        assert collect(r, pat, limit=3, timeout=1.0).seqs == [0, 1, 2]
        for _ in range(2):  # and stays ended
            with pytest.raises(EndOfStream) as ei:
                r.read(WAIT)
            assert isinstance(ei.value, EOFError)
        assert bounded(lambda: [f.seq for f in r_iter]) == [0, 1, 2]  # iteration just stops
        assert bounded(lambda: list(r_iter)) == []
        with r_latest.latest(1.0) as f:
            assert f.seq == 2
        with pytest.raises(EndOfStream):
            r_latest.latest(WAIT)
        for rr in (r, r_iter, r_latest):
            rr.close()


def test_ring_timeout_reader() -> None:
    name = unique_name()
    with RingWriter.create(name, SMALL, np.uint8), RingReader.attach(name) as r:
        for call in (r.read, r.latest):
            t0 = time.monotonic()
            with pytest.raises(RingTimeout) as ei:
                call(0.15)
            elapsed = time.monotonic() - t0
            assert 0.15 <= elapsed < 0.15 + SLACK
            assert isinstance(ei.value, TimeoutError)
            t0 = time.monotonic()
            with pytest.raises(RingTimeout):
                call(0.0)
            assert time.monotonic() - t0 < SLACK


def test_ring_timeout_writer_block_policy() -> None:
    """A block-policy ring whose reader does not read: write and claim time out."""
    name = unique_name()
    with (
        RingWriter.create(name, SMALL, np.uint8, slots=4) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        n = 0
        while True:
            assert n <= 64, "block policy never blocked the writer"
            try:
                w.write(np.full(SMALL, n, np.uint8), 0.0)
            except RingTimeout:
                break
            n += 1
        assert n >= 4  # at least `slots` frames fit
        t0 = time.monotonic()
        with pytest.raises(RingTimeout):
            w.write(np.zeros(SMALL, np.uint8), 0.15)
        assert 0.15 <= time.monotonic() - t0 < 0.15 + SLACK
        with pytest.raises(RingTimeout), w.claim(0.1) as slot:
            slot[...] = 1
        with r.read(1.0) as f:  # one frame read and released makes room for one
            assert f.seq == 0
        w.write(np.zeros(SMALL, np.uint8), 1.0)
        with pytest.raises(RingTimeout):
            w.write(np.zeros(SMALL, np.uint8), 0.0)


def test_ring_full() -> None:
    name = unique_name()
    with RingWriter.create(name, SMALL, np.uint8, max_readers=2, max_writers=2):
        r1 = RingReader.attach(name)
        r2 = RingReader.attach(name)
        with pytest.raises(RingFull):
            RingReader.attach(name)
        r1.close()
        RingReader.attach(name).close()  # a closed reader's record is free again
        w2 = RingWriter.attach(name)  # the creator has not written: it holds no record
        w3 = RingWriter.attach(name)
        with pytest.raises(RingFull):
            RingWriter.attach(name)
        w2.close()
        RingWriter.attach(name).close()
        w3.close()
        r2.close()


# ------------------------------------------------------------------------ arguments, frames


def test_frame_type_errors_name_expected_and_got() -> None:
    name = unique_name()
    with RingWriter.create(name, (4, 5), np.uint8) as w, RingReader.attach(name) as r:
        cases: list[tuple[np.ndarray, list[str]]] = [
            (np.zeros((4, 5), np.float32), ["uint8", "float32"]),
            (np.zeros((4, 5, 1), np.uint8), ["(4, 5)", "(4, 5, 1)"]),
            (np.zeros((20,), np.uint8), ["(4, 5)", "(20,)"]),
            (np.zeros((4, 6), np.uint8), ["(4, 5)", "(4, 6)"]),
            (np.zeros((5, 5), np.uint8), ["(4, 5)", "(5, 5)"]),
        ]
        for frame, words in cases:
            with pytest.raises(ValueError) as ei:
                w.write(frame, 1.0)
            for word in words:
                assert word in str(ei.value), (word, str(ei.value))
        for shape in [(4, 6), (5, 5), (4, 5, 1), (20,)]:
            with pytest.raises(ValueError) as ei, w.claim(1.0, shape=shape):
                pass
            assert str(shape) in str(ei.value) and "(4, 5)" in str(ei.value)
        with pytest.raises(RingTimeout):  # nothing was published by the failed calls
            r.read(0.0)
        assert w.write(np.zeros((4, 5), np.uint8), 1.0) == 0


def test_frame_array_is_read_only() -> None:
    name = unique_name()
    with RingWriter.create(name, SMALL, np.uint8) as w, RingReader.attach(name) as r:
        w.write(np.full(SMALL, 9, np.uint8), 1.0)
        with r.read(1.0) as f:
            assert not f.array.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                f.array[0] = 1
            with pytest.raises(ValueError):
                f.array.flags.writeable = True
            assert int(f.array[0]) == 9


def test_claim_abandoned_on_exception_is_never_seen() -> None:
    name = unique_name()
    with RingWriter.create(name, SMALL, np.uint8) as w, RingReader.attach(name) as r:
        with pytest.raises(KeyError), w.claim(1.0) as slot:
            slot[...] = 77
            raise KeyError("boom")
        with pytest.raises(RingTimeout):
            r.read(0.0)
        c = w.claim(1.0)
        with c as slot:
            slot[...] = 5
        with r.read(1.0) as f:
            assert f.seq == c.seq
            assert int(f.array[0]) == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"policy": "overwrite", "slots": 1},
        {"policy": "overwrite", "spare_buffers": -1},
        {"policy": "sometimes"},
        {"slots": 0},
        {"max_readers": 0},
    ],
)
def test_create_rejects_bad_arguments(ring_name: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RingWriter.create(ring_name, SMALL, np.uint8, **kwargs)  # type: ignore[arg-type]
    assert not os.path.exists(seg_path(ring_name))


def test_overwrite_minimum_slots_accepted(ring_name: str) -> None:
    """slots=2 is the least an overwrite ring takes with the default max_readers and
    max_writers (API.md; slots=1 is refused: test_create_rejects_bad_arguments), and it
    streams: 2 slots + 2 spare buffers."""
    with (
        RingWriter.create(ring_name, SMALL, np.uint8, policy="overwrite", slots=2) as w,
        RingReader.attach(ring_name) as r,
    ):
        assert (w._p.geometry.slots, w._p.geometry.buffers) == (2, 4)
        for value in range(5):
            w.write(np.full(SMALL, value, np.uint8), 0.0)
        with r.latest(1.0) as frame:
            assert frame.seq == 4 and int(frame.array[0]) == 4


@pytest.mark.parametrize("name", ["", "a/b", "x" * 65, "sp ace", "../up", "é"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        RingWriter.create(name, SMALL, np.uint8)
    with pytest.raises(ValueError):
        RingReader.attach(name)


def test_longest_name_and_all_allowed_characters() -> None:
    name = (unique_name("Az9_.-") + "x" * 64)[:64]
    with RingWriter.create(name, SMALL, np.uint8), RingReader.attach(name) as r:
        assert os.path.exists(seg_path(name))
        assert r is not None


def test_ring_larger_than_free_shm_space(ring_name: str) -> None:
    """Fails at create with ENOSPC, naming the size asked and the space free, instead of a
    SIGBUS later; nothing is left behind."""
    st = os.statvfs("/dev/shm")
    free = st.f_bavail * st.f_frsize
    frame_bytes = free // 4 + (1 << 20)
    with pytest.raises(OSError) as ei:
        RingWriter.create(ring_name, (frame_bytes,), np.uint8, slots=8)
    assert ei.value.errno == errno.ENOSPC
    msg = str(ei.value)
    numbers = [int(x.replace(",", "").replace("_", "")) for x in re.findall(r"\d[\d,_]*", msg)]
    assert any(n >= 8 * frame_bytes for n in numbers), f"size asked not named: {msg}"
    assert any(abs(n - free) <= free // 10 for n in numbers), f"space free not named: {msg}"
    assert not os.path.exists(seg_path(ring_name))
    with warnings.catch_warnings():  # and the name is free to use right away
        warnings.simplefilter("error")
        RingWriter.create(ring_name, SMALL, np.uint8).close()


def _in_forked_child(calls: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Fork; in the child, run each call and report what it raised (or that it did not)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running any cleanup of the parent's
        try:
            outcomes = {}
            for label, call in calls.items():
                try:
                    call()
                    outcomes[label] = "no error"
                except BaseException as exc:  # reported to the parent, whatever it is
                    outcomes[label] = f"{type(exc).__name__}: {exc}"
            os.write(write_end, json.dumps(outcomes).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], WAIT)
        assert ready, "the forked child did not report"
        report: dict[str, str] = json.loads(os.read(read_end, 1 << 16))
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # it will not report now: do not wait for it
        raise
    finally:
        os.close(read_end)
        try:
            wait_pid_exit(pid)
        finally:
            os.kill(pid, signal.SIGKILL)  # (a no-op once it has exited: it is not reaped yet)
            os.waitpid(pid, 0)
    return report


def test_handles_inherited_across_fork_refuse_and_say_so() -> None:
    """A forked child's copies of the parent's handles must not touch the ring (write()'s
    fast path takes no lock: a second process publishing through it would break the ring)."""
    name = unique_name()
    with (
        RingWriter.create(name, SMALL, np.uint8) as w,
        RingReader.attach(name, start="oldest") as r,
        RingReader.attach(name, group="g", start="oldest") as member,
    ):
        w.write(np.zeros(SMALL, np.uint8), WAIT)
        w.write(np.zeros(SMALL, np.uint8), WAIT)
        iterating = iter(r)
        assert next(iterating).seq == 0  # an iterator the child goes on with
        report = _in_forked_child(
            {
                "write": lambda: w.write(np.ones(SMALL, np.uint8), 1.0),
                "claim": lambda: w.claim(1.0),
                "read": lambda: r.read(1.0),
                "iter": lambda: iter(r),
                "next": lambda: next(iterating),
                "latest": lambda: r.latest(1.0),
                "group read": lambda: member.read(1.0),
            }
        )
        for label, outcome in report.items():
            assert outcome.startswith("ShmringError") and "inherited across fork()" in outcome, (
                label,
                outcome,
            )
        # The parent's ring saw nothing of it: the same two frames, then nothing.
        assert next(iterating).seq == 1
        with pytest.raises(RingTimeout):
            r.read(0.0)
        assert [member.read(WAIT).seq for _ in range(2)] == [0, 1]


def test_an_infinite_timeout_waits_as_none_does(ring_name: str) -> None:
    """timeout=math.inf (or anything past what the OS can time) means "for ever", as None:
    it reached the lock's wait as a number the OS refused (OverflowError)."""
    frame = np.ones(SMALL, np.uint8)
    for forever in (float("inf"), 1e300):
        with (
            RingWriter.create(ring_name, SMALL, np.uint8) as w,
            RingReader.attach(ring_name, timeout=forever) as r,
        ):
            assert w.write(frame, forever) == 0  # the creator's first frame joins, locked
            with r.read(forever) as got:
                assert got.seq == 0
            assert w.wait_for_readers(1, forever) == 1


def test_a_closed_writer_says_so_everywhere(ring_name: str) -> None:
    w = RingWriter.create(ring_name, SMALL, np.uint8)
    w.close()
    calls: list[Callable[[], object]] = [lambda: w.wait_for_readers(1, 0.0), lambda: w.readers]
    for call in calls:
        with pytest.raises(shmring.ShmringError, match="closed"):
            call()


# A plain claim (a ring-shaped frame without stamp or metadata) of a writer that has joined
# is taken and published in C (Claim, _publisher.c); one with its own (smaller) shape by
# RingWriter's general steps.
CLAIM_SHAPES = pytest.mark.parametrize("shape", [None, (2,)], ids=["plain", "own shape"])


@CLAIM_SHAPES
@pytest.mark.parametrize("second", ["claim", "write", "strided write"])
@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_a_second_claim_or_a_write_while_a_claim_is_open_is_refused(
    second: str, policy: str, shape: tuple[int, ...] | None
) -> None:
    """A writer's record keeps one claim: a second claim, or a write, while one is open (a
    nested `with`, or another thread sharing the writer) is refused with RuntimeError. It
    used to make the ring forget the first claim, and a repair then corrupted the header.
    The open claim publishes as usual, and the ring stays sound for the other writers."""
    name = unique_name()
    with (
        RingWriter.create(name, (4,), np.uint8, slots=4, policy=policy) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        w.write(np.full(4, 0, np.uint8), WAIT)  # joined: its plain claims are taken in C
        other = RingWriter.attach(name)  # two writers: sequenced, as where it corrupted
        with w.claim(WAIT, shape=shape) as slot:
            slot[...] = 1
            with pytest.raises(RuntimeError, match="a writer holds one claim at a time"):
                if second == "claim":
                    with w.claim(WAIT, shape=shape):
                        pass
                elif second == "write":
                    w.write(np.full(4, 9, np.uint8), WAIT)
                else:
                    w.write(np.arange(8, dtype=np.uint8)[::2], WAIT)
        other.write(np.full(4, 2, np.uint8), WAIT)
        other.close()  # the last other writer leaves: the ring switches back
        w.write(np.full(4, 3, np.uint8), WAIT)
        got = []
        for _ in range(4):
            with r.read(WAIT) as frame:
                got.append(int(frame.array[0]))
        assert got == [0, 1, 2, 3]
        assert inspect_ring(name).problems == []


@pytest.mark.parametrize("policy", ["block", "overwrite"])
@pytest.mark.parametrize("writers", [1, 2])
def test_a_claim_interrupted_as_it_returns_is_filled_by_the_next_write(
    policy: str, writers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing as the C claim returns, before its Claim's with block begins: the
    buffer (and, with several writers, its sequence number) stays claimed in the writer's
    record. The next write fills it; replacing that claim lost the buffer until close, and
    with several block writers the number, which held every later frame back for good."""
    name, slots = unique_name(), 4
    with (
        RingWriter.create(name, (4,), np.uint8, slots=slots, policy=policy) as w,
        RingWriter.attach(name) as other,
        RingReader.attach(name, start="oldest") as r,
    ):
        if writers == 1:
            other.close()
        w.write(np.full(4, 0, np.uint8), WAIT)  # joined: the fast path
        claim_buffer = w._claim_buffer_fast

        def interrupted() -> int:
            claim_buffer()
            raise KeyboardInterrupt

        monkeypatch.setattr(w, "_claim_buffer_fast", interrupted)
        # (A frame with its own shape: the general path. A plain claim takes its buffer and
        # opens its with block in one C call, where no signal lands.)
        with pytest.raises(KeyboardInterrupt), w.claim(WAIT, shape=(2,)):
            pass
        monkeypatch.undo()
        with r.read(WAIT) as frame:
            assert int(frame.array[0]) == 0
        got: list[int] = []
        for value in range(1, 3 * slots + 1):
            # A full ring first (block): a lost buffer would leave one short.
            writer = other if writers == 2 and value % 2 else w
            writer.write(np.full(4, value, np.uint8), WAIT)
            if value % slots == 0:
                for _ in range(slots):
                    with r.read(WAIT) as frame:
                        got.append(int(frame.array[0]))
        # The interrupted claim's number comes before the other writer's next: each
        # writer's frames in order, every frame once.
        assert sorted(got) == list(range(1, 3 * slots + 1)), got
        for odd in (0, 1):
            mine = [value for value in got if value % 2 == odd]
            assert mine == sorted(mine), got
        assert w._record[L.W_CLAIMED] == L.NONE and w._record[L.W_CLAIMED_SEQ] == L.NONE
        assert inspect_ring(name).problems == []


@pytest.mark.parametrize("in_a_cycle", [False, True], ids=["dropped", "cycle"])
@CLAIM_SHAPES
def test_a_claim_whose_exit_never_ran_does_not_refuse_later_writes(
    shape: tuple[int, ...] | None, in_a_cycle: bool
) -> None:
    """Ctrl-C can land as a claim's with block ends, before its __exit__ runs (here: the
    Claim dropped without leaving, or left in a reference cycle for the garbage collector):
    that claim is gone, so the writer's next write and claim go through rather than being
    refused for a claim nobody holds. The next write fills the buffer it left claimed;
    while the Claim lives, a write is refused."""
    name = unique_name()
    with (
        RingWriter.create(name, (4,), np.uint8, slots=4) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        w.write(np.full(4, 0, np.uint8), WAIT)  # joined: its plain claims are taken in C
        claim = w.claim(shape=shape)
        claim.__enter__()[...] = 1
        with pytest.raises(RuntimeError, match="a writer holds one claim at a time"):
            w.write(np.full(4, 9, np.uint8), WAIT)
        if in_a_cycle:  # the Claim references a list that references it
            claim._deadline = [claim]  # type: ignore[assignment]
        del claim
        gc.collect()
        assert w.write(np.full(4, 2, np.uint8), WAIT) == 1
        with w.claim(shape=shape) as slot:
            slot[...] = 3
        assert [int(r.read(WAIT).array[0]) for _ in range(3)] == [0, 2, 3]


def test_the_dtype_advice_works_for_a_ring_of_another_byte_order() -> None:
    """For a '>f4' ring, "frame.astype(np.float32)" (its name) gave the same error again."""
    with RingWriter.create(unique_name("endian"), (4,), ">f4") as w:
        frame = np.arange(4, dtype=np.float32)
        with pytest.raises(ValueError, match=re.escape("frame.astype(writer.dtype)")):
            w.write(frame)
        writer = w
        w.write(frame.astype(writer.dtype))  # the advice, as given
    with (
        RingWriter.create(unique_name("native"), (4,), np.float32) as w,
        pytest.raises(ValueError, match=re.escape("frame.astype(np.float32)")),
    ):
        w.write(np.zeros(4, np.float64))
