"""Who owns the segment: creators unlink, attachers never do, stale rings are reclaimed."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import (
    SMALL,
    WAIT,
    Child,
    Pattern,
    collect,
    finish,
    make_tag,
    seg_path,
    unique_name,
)

from shmring import (
    EndOfStream,
    RingExists,
    RingNotFound,
    RingReader,
    RingWriter,
    ShmringError,
    StaleRingWarning,
    _writer,
)
from shmring._inspect import inspect_segment

CONFTEST = Path(__file__).with_name("conftest.py")


def test_leak_fixture_fails_tests_that_leave_segments(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The autouse fixture in conftest.py turns a leaked segment (or creation temp file)
    into a test error, and removes it so the next test starts clean."""
    monkeypatch.setenv("SHMRING_TEST_STRICT_LEAKS", "1")  # this session runs beside it
    ring_leak, file_leak, tmp_leak = (unique_name("leak") for _ in range(3))
    # A temp file named after a live pid (this one): other sessions' create() sweeps dead ones
    tmp_leak = f"{os.getpid()}-{tmp_leak}"
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        test_inner=textwrap.dedent(
            f"""
            import numpy as np
            import shmring

            KEEP = []

            def test_leaks_a_ring():
                KEEP.append(shmring.RingWriter.create({ring_leak!r}, (8,), np.uint8))

            def test_leaks_a_file():
                with open("/dev/shm/shmring.{file_leak}", "wb") as f:
                    f.write(b"x")

            def test_leaks_a_temp_file():
                with open("/dev/shm/.shmring-tmp-{tmp_leak}", "wb") as f:
                    f.write(b"x")

            def test_clean_ring():
                with shmring.RingWriter.create({ring_leak + "c"!r}, (8,), np.uint8):
                    pass

            def test_clean():
                pass
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, errors=3)
    out = result.stdout.str()
    for leaked in (f"shmring.{ring_leak}", f"shmring.{file_leak}", f".shmring-tmp-{tmp_leak}"):
        assert leaked in out
        assert not os.path.exists(os.path.join("/dev/shm", leaked))
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaks_a_ring*"])


@pytest.mark.parametrize(
    ("kind", "close"),
    [("popen", True), ("popen", False), ("spawn", False), ("fork", False), ("fork", True)],
)
def test_attacher_exits_segment_survives(kind: str, close: bool) -> None:
    """Another process attaches (a reader and a writer), uses the ring and exits, with or
    without closing: the segment stays, the ring keeps working, nothing on stderr."""
    name = unique_name()
    pat = Pattern(SMALL)
    with (
        RingWriter.create(name, SMALL, np.uint8, slots=4) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        w.write(pat.make(make_tag(0, 0)), 1.0)
        with Child(kind, "attach_exit", name=name, close=close) as kid:
            report = finish(kid)
            assert report == {"tag": make_tag(0, 0), "seq": 1}
            if kind == "popen":
                assert kid.stderr() == ""
        assert os.path.exists(seg_path(name))
        assert collect(r, pat, limit=2, timeout=1.0).tags == [make_tag(0, 0), make_tag(5, 0)]
        with RingReader.attach(name) as r2:  # attach by name still works
            assert w.write(pat.make(make_tag(0, 2)), 1.0) == 2
            assert collect(r2, pat, limit=2, timeout=1.0).seqs == [1, 2]
        assert collect(r, pat, limit=1, timeout=1.0).seqs == [2]
    assert not os.path.exists(seg_path(name))


@pytest.mark.parametrize("how", ["close", "with", "gc", "exit"])
def test_creator_in_other_process_unlinks(how: str) -> None:
    """The creator unlinks on close, context exit, garbage collection and interpreter exit,
    quietly (nothing on stderr)."""
    name = unique_name()
    with Child("popen", "create_exit", name=name, how=how) as kid:
        assert kid.expect("ready")["ready"] == name
        assert os.path.exists(seg_path(name))
        kid.send("exit")
        bye = finish(kid)
        assert bye["bye"] is (how == "exit")  # still there only until interpreter exit
        assert kid.stderr() == ""
    assert not os.path.exists(seg_path(name))


def test_creator_unlinks_in_process() -> None:
    for how in ("close", "with", "gc"):
        name = unique_name()
        if how == "with":
            with RingWriter.create(name, SMALL, np.uint8) as w:
                assert os.path.exists(seg_path(name))
                assert w.name == name
        else:
            w = RingWriter.create(name, SMALL, np.uint8)
            assert os.path.exists(seg_path(name))
            if how == "close":
                w.close()
            else:
                del w
                gc.collect()
        assert not os.path.exists(seg_path(name)), how
        with pytest.raises(RingNotFound):
            RingReader.attach(name)


@pytest.mark.parametrize("wrote", [True, False])
def test_a_creators_close_removes_the_name_before_it_ends_the_stream(
    wrote: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader told the stream ended (EndOfStream) finds the name gone: a program that
    then looks for the ring, or creates it anew, sees the end it was told of."""
    name = unique_name()
    seen: list[bool] = []
    for step in ("_leave_as_writer", "_end_unwritten_stream"):
        original = getattr(_writer, step)

        def looked(*args: Any, _original: Any = original) -> None:
            seen.append(os.path.exists(seg_path(name)))
            _original(*args)

        monkeypatch.setattr(_writer, step, looked)
    w = RingWriter.create(name, SMALL, np.uint8)
    with RingReader.attach(name) as r:
        if wrote:
            w.write(np.zeros(SMALL, np.uint8))
            r.read(WAIT).release()
        w.close()
        assert seen == [False]
        with pytest.raises(EndOfStream):
            r.read(0)


def test_attached_writer_close_does_not_end_stream_or_unlink() -> None:
    name = unique_name()
    pat = Pattern(SMALL)
    with (
        RingWriter.create(name, SMALL, np.uint8) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        other = RingWriter.attach(name)
        other.write(pat.make(make_tag(1, 0)), 1.0)
        other.close()
        assert os.path.exists(seg_path(name))
        w.write(pat.make(make_tag(0, 0)), 1.0)
        assert collect(r, pat, limit=2, timeout=1.0).tags == [make_tag(1, 0), make_tag(0, 0)]
        w.close()  # the last writer closes: the stream ends
        assert not os.path.exists(seg_path(name))
        with pytest.raises(EndOfStream):
            r.read(1.0)


def test_stale_ring_is_reclaimed_live_ring_is_not() -> None:
    name = unique_name()
    with Child("spawn", "lock_holder", name=name, create=True, mode="none", frames=0) as kid:
        kid.expect("ready")
        # alive: nobody may take the name, in this process or another one
        with pytest.raises(RingExists) as ei:
            RingWriter.create(name, SMALL, np.uint8)
        assert isinstance(ei.value, FileExistsError)
        with Child("popen", "try_create", name=name) as other:
            assert finish(other) == {"error_type": "RingExists", "file_exists": True}
        kid.kill()
        assert kid.join() == -signal.SIGKILL
    assert os.path.exists(seg_path(name))  # SIGKILL: nobody unlinked it
    with pytest.warns(StaleRingWarning) as rec:
        w = RingWriter.create(name, (8, 8), np.uint16, slots=3)
    assert name in str(rec[0].message)
    assert rec[0].filename == __file__, "attributed to the line that called create()"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with w, RingReader.attach(name) as r:
            assert (w.shape, w.dtype, w.slots) == ((8, 8), np.dtype(np.uint16), 3)
            w.write(np.full((8, 8), 513, np.uint16), 1.0)
            with r.read(1.0) as f:
                assert f.array.shape == (8, 8) and int(f.array[7, 7]) == 513
    assert not os.path.exists(seg_path(name))


def test_attaching_by_name_waits_for_creation() -> None:
    """attach(timeout=...) waits for a ring created later by another process."""
    name = unique_name()
    with Child("spawn", "attach_when_created", name=name) as kid:
        kid.expect("ready")
        with RingWriter.create(name, SMALL, np.uint8) as w:
            w.write(np.full(SMALL, 42, np.uint8), WAIT)
            kid.expect("attached")
            assert finish(kid) == {"first": 42}


def test_a_pickled_handle_keeps_its_settings_and_a_closed_one_does_not_pickle() -> None:
    """Pickling (multiprocessing's spawn and forkserver) re-attaches by name with the
    handle's settings; a closed handle refuses, rather than attach later to whatever ring
    has that name then."""
    name = unique_name()
    with RingWriter.create(name, SMALL, np.uint8) as w:
        with RingWriter.attach(name, spin=0.0) as writer, RingReader.attach(name, spin=0.0) as r:
            with pickle.loads(pickle.dumps(writer)) as again:
                assert again._spin == 0.0
            with pickle.loads(pickle.dumps(r)) as again_r:
                assert again_r._spin == 0.0
        for closed in (writer, r):
            with pytest.raises(ShmringError, match="closed"):
                pickle.dumps(closed)
        assert w.readers == 0


def test_a_frame_does_not_pickle_and_says_what_to_send() -> None:
    """A Frame is a view its reader holds: pickling one (a multiprocessing.Queue's put)
    raises a TypeError that says what to send instead, not one naming a private class."""
    name = unique_name()
    with (
        RingWriter.create(name, SMALL, np.uint8) as w,
        RingReader.attach(name, start="oldest") as r,
    ):
        for value in range(3):
            w.write(np.full(SMALL, value, np.uint8))
        read = r.read(WAIT)
        iterated = next(iter(r))  # from the C step of iteration
        for frame in (read, iterated):
            with pytest.raises(TypeError, match=r"cannot be pickled: send frame\.array\.copy"):
                pickle.dumps(frame)
        read.release()


def test_attach_that_waited_for_a_missing_ring_says_how_long() -> None:
    """RingNotFound after a bounded wait names the wait, rather than advising a timeout=
    the caller gave already; without one it still advises it."""
    name = unique_name()
    with pytest.raises(RingNotFound, match=r"appeared within 0\.05 s .* start its creator"):
        RingReader.attach(name, timeout=0.05)
    with pytest.raises(RingNotFound, match="pass timeout= to attach to wait for it"):
        RingWriter.attach(name)


def test_a_handles_own_snapshot_sees_it_alive_after_its_name_is_gone() -> None:
    """inspect_segment (record's and the bridge sender's look at the ring they attached):
    through a description of its own, so the handle's own locks count (a query through the
    handle's description would find its own liveness byte and creator lock free)."""
    name = unique_name()
    with RingWriter.create(name, SMALL, np.uint8) as w, RingReader.attach(name) as r:
        w.write(np.zeros(SMALL, np.uint8))
        os.unlink(seg_path(name))  # the name gone, or given to another ring: no matter
        for handle in (w, r):
            info = inspect_segment(handle._p.segment)
            assert info.creator_alive, handle
            assert [wr.alive for wr in info.writers] == [True], handle
            assert [rd.alive for rd in info.readers] == [True], handle
