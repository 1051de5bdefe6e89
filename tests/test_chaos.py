# Chaos, quick form: `python -m stress.chaos` with ~50 SIGKILLs per policy, and a sample of
# the kill-point sweep.
#
# The harness (stress/chaos.py) checks its invariants as it runs and reports them in one
# JSON line per policy; this test runs it as a separate program, as `make chaos` does, and
# asserts on each invariant separately so a failure says which one broke. The checks the
# steady reader applies to every frame are tested first on made-up frames, so a harness
# that could not see a torn, lost, duplicated or reordered frame, or one under another
# sequence number than its write returned, would fail here; and so are the kill-point
# sweep's verdicts on a victim that fails to prepare, hangs, or ends before its kill point.
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from helpers import WAIT, seg_path, unique_name

from shmring import RingWriter
from stress import ROOT, STEADY, StreamCheck, killpoints, make_tag, stamp, untied
from stress.chaos import DTYPE, ROLES, SHAPE

pytestmark = pytest.mark.stress  # kills participants at every kill point

KILLS = 30  # two rounds of the 15 roles: every role is killed twice
WRITERS_OFFSET = 192  # docs/FORMAT.md: fixed-header field writers_offset
WRITER_IN_PUBLISH = 3  # word of a writer record


def frame(seq: int, writer: int, counter: int, dropped: int = 0) -> Any:
    array = np.empty(SHAPE, DTYPE)
    stamp(array, make_tag(writer, counter))
    return SimpleNamespace(seq=seq, dropped=dropped, array=array)


def checked(*frames: Any, lossless: bool = True) -> list[str]:
    check = StreamCheck(lossless)
    for f in frames:
        check.take(f)
    return check.violations


def test_stream_check_accepts_a_good_stream() -> None:
    assert not checked(frame(0, STEADY, 0), frame(1, 7, 0), frame(2, STEADY, 1), frame(3, 7, 5))
    assert not checked(frame(0, STEADY, 0), frame(3, STEADY, 3, dropped=2), lossless=False)


def test_stream_check_sees_a_torn_frame() -> None:
    torn = frame(1, STEADY, 1)
    torn.array[100:] = frame(1, STEADY, 2).array[100:]
    assert "mixes words" in " ".join(checked(frame(0, STEADY, 0), torn))


@pytest.mark.parametrize(
    ("frames", "says"),
    [
        ((frame(0, STEADY, 0), frame(1, STEADY, 2)), "lost frames"),
        ((frame(0, 7, 3), frame(1, 7, 3)), "duplicate or reordered"),
        ((frame(0, 7, 3), frame(1, 7, 2)), "duplicate or reordered"),
        ((frame(0, STEADY, 0), frame(2, 7, 0)), "frame seq 2 after 0"),
        ((frame(0, STEADY, 0), frame(0, 7, 0)), "frame seq 0 after 0"),
    ],
    ids=["lost", "duplicated", "reordered", "seq gap", "seq repeated"],
)
def test_stream_check_sees_a_bad_stream(frames: tuple[Any, ...], says: str) -> None:
    assert says in " ".join(checked(*frames))


def test_stream_check_counts_overwrite_drops() -> None:
    assert "dropped 1" in " ".join(checked(frame(0, 7, 0), frame(3, 7, 1, 1), lossless=False))


def test_stream_check_adds_up_what_gaps_stand_for() -> None:
    """A skip of k frames takes one number and counts k dropped: the k - 1 beyond its
    number add up in `excess`, which chaos compares with the gaps the writers published."""
    check = StreamCheck(lossless=True)
    for f in (frame(0, STEADY, 0), frame(2, STEADY, 1, dropped=5), frame(5, 7, 0, dropped=3)):
        check.take(f)
    assert check.violations == []
    assert (check.dropped, check.excess) == (8, 5)  # numbers 1, 3, 4 passed over


def test_stream_check_ties_steady_frames_to_the_numbers_their_writes_returned() -> None:
    check = StreamCheck(lossless=False, tie=True)
    for f in (frame(4, STEADY, 0), frame(5, 7, 0), frame(9, STEADY, 2, dropped=3)):
        check.take(f)
    assert "steady_seqs" not in check.to_json()
    assert untied(check.steady_seqs, array("q", [4, 6, 9])) == []
    assert untied(check.steady_seqs, array("q", [4, 6, 8])) == [
        "steady frame 2 came as seq 9; its write returned 8"
    ]
    assert untied(check.steady_seqs, array("q", [4])) == [
        "steady frame 2 came as seq 9; its write returned nothing"
    ]


def _chaos(
    *options: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`python -m stress.chaos --json` with `options`: the process and its run per policy,
    block then overwrite (checked)."""
    done = subprocess.run(
        [sys.executable, "-m", "stress.chaos", *options, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    runs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [run["policy"] for run in runs] == ["block", "overwrite"], done.stderr[-3000:]
    return done, runs


def test_quick_chaos_run_keeps_every_invariant() -> None:
    started = time.monotonic()
    done, runs = _chaos("--kills", str(KILLS), "--stops=20", "--truncations=10", "--sweep-stride=0")
    for run in runs:
        policy = run["policy"]
        assert run["violations"] == [], f"{policy}: {run['violations']}"
        assert sum(run["kills"].values()) >= KILLS
        assert set(run["kills"]) == set(ROLES), f"{policy}: some role was never killed"
        assert run["sigints"] > 0
        writer, reader = run["writer"], run["reader"]
        assert writer["written"] > 0 and reader["steady"] > 0
        # gaps were published (the steady writer's and victims') and counted beyond their
        # numbers; victims held several frames at once
        assert writer["skips"] > 0 and run["skips"] > 0 and reader["excess"] > 0
        assert run["held"] and min(map(int, run["held"])) >= 2
        if policy == "block":  # every steady frame; "dropped" counts dead victims' claims
            assert reader["steady"] == writer["written"]
        assert writer["fds"][0] == writer["fds"][1] and reader["fds"][0] == reader["fds"][1]
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < 60  # ~8 s on 2 busy cores; a hang would take 120


def test_quick_chaos_run_with_large_frames_keeps_every_invariant() -> None:
    """512 KiB frames: the writers' cache-reuse paths (the reclaim at every write, the wait
    for the hot buffer, overwrite's newest-first eviction behind latest()) under kills."""
    done, runs = _chaos(
        "--kills=30",
        "--sweep-stride=0",
        "--stops=0",
        "--truncations=0",
        env={**os.environ, "CHAOS_FRAME_WORDS": "65536"},
    )
    for run in runs:
        assert run["violations"] == [], f"{run['policy']}: {run['violations']}"
        assert sum(run["kills"].values()) >= 30
        assert run["writer"]["written"] > 0 and run["reader"]["steady"] > 0
    assert done.returncode == 0, done.stderr[-3000:]


def test_writer_attach_waits_for_a_publish_in_progress() -> None:
    """Found by chaos: a writer attaching while the exclusive writer is inside a publish
    step must wait the microseconds it takes (here 50 ms), not fail at once because the
    attach was not asked to wait for the ring to *appear* (timeout=0)."""
    name = unique_name("aq")
    with RingWriter.create(name, (64,), np.uint8) as w:
        w.write(np.zeros(64, np.uint8))  # the creator joins (takes its writer record)
        with open(seg_path(name), "r+b") as f:
            f.seek(WRITERS_OFFSET)
            (writers,) = struct.unpack("<Q", f.read(8))
        in_publish = writers + 8 * WRITER_IN_PUBLISH  # the creator's writer record

        def set_in_publish(value: int) -> None:
            with open(seg_path(name), "r+b") as f:
                f.seek(in_publish)
                f.write(struct.pack("<Q", value))

        set_in_publish(1)  # the creator is inside a publish step ...
        step_out = threading.Timer(0.05, set_in_publish, (0,))  # ... for 50 ms
        started = time.monotonic()
        step_out.start()
        try:
            RingWriter.attach(name).close()
            waited = time.monotonic() - started
        finally:
            step_out.join(WAIT)
            assert not step_out.is_alive()
        assert waited >= 0.05, f"attach took {waited:.3f} s: it did not wait for the step"


# ---- the kill-point sweep, sampled -----------------------------------------------------------
def stride(call: str) -> int:
    """Every 7th line of a call; attaching runs ~1,000 lines, so every 61st of those."""
    return 61 if call.startswith("attach") else 7


@pytest.mark.parametrize(
    ("policy", "call"), killpoints.SCENARIOS, ids=[f"{p}/{c}" for p, c in killpoints.SCENARIOS]
)
def test_kill_point_sweep_sample(policy: str, call: str) -> None:
    """`make chaos` kills a victim at every line of each call; here at every stride-th."""
    swept = killpoints.sweep(stride(call), [(policy, call)])
    assert swept.points[f"{policy}/{call}"] > 0
    assert not swept.violations, "\n".join(swept.violations[:20])


def test_kill_point_victim_that_fails_to_prepare_never_returns_here(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The victim is a fork of this process: whatever it raises, it must leave by
    os._exit, not carry on with the caller's code (here, the rest of the test session)."""

    def unpreparable(name: str, counter: int) -> Any:
        raise LookupError("no such call")

    monkeypatch.setitem(killpoints.ATTACHED, "unpreparable", unpreparable)
    me = os.getpid()
    _, problems = killpoints.kill_point("block", "unpreparable", 0)
    if os.getpid() != me:  # the victim came back into pytest: tell the parent, and leave
        (tmp_path / "returned").touch()
        os._exit(1)
    assert not (tmp_path / "returned").exists()
    assert problems == ["the victim's preparation raised LookupError('no such call')"]


def test_kill_point_victim_that_hangs_is_killed_and_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(killpoints.ATTACHED, "hang", lambda name, counter: lambda: time.sleep(60))
    monkeypatch.setattr(killpoints, "VICTIM_LIMIT", 0.5)
    started = time.monotonic()
    _, problems = killpoints.kill_point("block", "hang", 0)
    assert time.monotonic() - started < WAIT
    assert problems == ["AssertionError: the victim hung: SIGKILLed after 0.5 s"]


def test_kill_point_past_the_end_of_the_call_is_not_swept() -> None:
    lines, problems = killpoints.kill_point("block", "write", 10**9)
    assert lines > 0
    assert problems == [f"the call ended after {lines} lines, before line {10**9}: not swept"]
