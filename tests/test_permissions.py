# Who may attach to a ring: the segment's file mode.
#
# Rings are created 0600 whatever the umask; `mode=` sets the exact mode (0660 shares a
# ring with the creator's group), and create refuses a mode that lets the group or others
# read without writing (they could lock bytes of the file). The cross-user checks create
# the ring as root and attach from a forked child that dropped to `nobody` (setgid, then
# setuid): a group member of a 0660 ring streams through it; anyone else gets a
# PermissionError that names the ring. Those need root and are skipped without it.
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pytest
from helpers import WAIT, forked, seg_path, unique_name

import shmring
from shmring import RingReader, RingWriter

NOBODY = 65534  # uid of `nobody`, gid of `nogroup`
OTHER_GROUP = 54321  # a group nobody is a member of
SHAPE = (16,)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def file_mode(name: str) -> int:
    return stat.S_IMODE(os.stat(seg_path(name)).st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_default_mode_is_0600_whatever_the_umask(mask: int) -> None:
    name = unique_name("pm")
    with umask(mask), RingWriter.create(name, SHAPE, np.uint8):
        assert file_mode(name) == 0o600


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666, 0o606, 0o620, 0o400])
def test_mode_option_is_exact_whatever_the_umask(mode: int) -> None:
    name = unique_name("pm")
    with umask(0o077), RingWriter.create(name, SHAPE, np.uint8, mode=mode):
        assert file_mode(name) == mode


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_a_new_ring_file_is_private_until_its_mode_is_set(
    mode: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is made 0600 and given its mode (fchmod) afterwards: made with the mode
    itself, the umask could leave it readable by others for a moment (0666 & ~022 = 0644),
    long enough to open it read-only and keep that descriptor (checked_mode says why that
    matters)."""
    made: list[int] = []
    real_open = os.open

    def watched(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE:
            made.append(mode)
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", watched)
    name = unique_name()
    with RingWriter.create(name, (16,), np.uint8, mode=mode):
        monkeypatch.undo()
        assert stat.S_IMODE(os.stat(seg_path(name)).st_mode) == mode
    assert made == [0o600]


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o640, "its group"), (0o644, "its group"), (0o604, "other users"), (0o664, "other users")],
)
def test_create_refuses_a_mode_that_lets_others_read_without_writing(mode: int, who: str) -> None:
    """Such a user cannot attach, but could read-lock the header lock's byte and stall the
    ring: create makes no such file."""
    name = unique_name("pm")
    with pytest.raises(ValueError) as refused:
        RingWriter.create(name, SHAPE, np.uint8, mode=mode)
    message = str(refused.value)
    assert f"mode {mode:#o} lets {who} read the ring but not write it" in message
    assert "0o600" in message and "0o660" in message and "0o666" in message
    assert not os.path.lexists(seg_path(name))


# ---- other users ---------------------------------------------------------------------------
def _roundtrip(name: str) -> str:
    with RingReader.attach(name) as reader, RingWriter.attach(name) as writer:
        writer.write(np.full(SHAPE, 42, np.uint8), 1.0)
        with reader.read(1.0) as frame:
            return f"read {int(frame.array[0])}"


ATTEMPTS: dict[str, Callable[[str], object]] = {
    "RingReader.attach": lambda name: RingReader.attach(name).close(),
    "RingWriter.attach": lambda name: RingWriter.attach(name).close(),
    "inspect_ring": shmring.inspect_ring,
    "roundtrip": _roundtrip,
}


def _attempt_as(conn: Connection, name: str, gid: int) -> None:
    """In a forked child: become nobody in group `gid`, try every attempt, report."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(NOBODY)
    results: dict[str, tuple[str, str, int | None]] = {}
    for what, attempt in ATTEMPTS.items():
        try:
            outcome = attempt(name)
        except Exception as exc:
            results[what] = (type(exc).__name__, str(exc), getattr(exc, "errno", None))
        else:
            results[what] = ("ok", str(outcome), None)
    conn.send(results)


def attempts_as(name: str, gid: int) -> dict[str, Any]:
    with forked(_attempt_as, name, gid) as (ours, _):
        assert ours.poll(WAIT), "child did not report"
        results: dict[str, Any] = ours.recv()
    return results


@needs_root
@pytest.mark.parametrize(
    ("mode", "group", "gid"),
    [
        (0o600, 0, NOBODY),  # default: only the creator
        (0o660, NOBODY, OTHER_GROUP),  # shared with a group the child is not in
        (0o640, NOBODY, NOBODY),  # group may read the file, but attaching maps it writable
    ],
    ids=["0600", "0660-other-group", "0640-group"],
)
def test_no_permission_is_a_permission_error_naming_the_ring(
    mode: int, group: int, gid: int
) -> None:
    name = unique_name("pm")
    with RingWriter.create(name, SHAPE, np.uint8) as writer:
        os.chmod(seg_path(name), mode)  # by hand: create refuses 0640
        os.chown(seg_path(name), -1, group)
        results = attempts_as(name, gid)
        for what, (error, message, code) in results.items():
            assert error == "PermissionError", f"{what}: {error}: {message}"
            assert code == errno.EACCES, f"{what}: errno {code}"
            assert repr(name) in message, f"{what}: message does not name the ring: {message}"
        # the refused attempts changed nothing
        with RingReader.attach(name) as reader:
            writer.write(np.full(SHAPE, 1, np.uint8), 1.0)
            assert int(reader.read(1.0).array[0]) == 1
            assert shmring.inspect_ring(name).live_participants == 2


@needs_root
def test_0660_shares_the_ring_with_its_group() -> None:
    name = unique_name("pm")
    with RingWriter.create(name, SHAPE, np.uint8, mode=0o660):
        os.chown(seg_path(name), -1, NOBODY)  # as if the creator's group were nogroup
        results = attempts_as(name, NOBODY)
        assert {what: outcome[0] for what, outcome in results.items()} == dict.fromkeys(
            ATTEMPTS, "ok"
        )
        assert results["roundtrip"][1] == "read 42"


def _remove_as_nobody(conn: Connection, name: str) -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    try:
        shmring.remove_ring(name)
        conn.send(("removed", ""))
    except Exception as exc:
        conn.send((type(exc).__name__, str(exc)))


@needs_root
def test_rm_of_a_ring_its_owner_may_not_open_is_refused() -> None:
    """nobody's own live ring, mode 000: its liveness locks cannot be looked at, so rm
    cannot tell that its creator is alive. It removed it ("not a ring it can read");
    now it refuses, saying --force would."""
    name = unique_name("pm")
    with RingWriter.create(name, SHAPE, np.uint8) as writer:
        os.chown(seg_path(name), NOBODY, NOBODY)
        os.chmod(seg_path(name), 0)
        with forked(_remove_as_nobody, name) as (ours, _):
            assert ours.poll(WAIT), "child did not report"
            outcome, message = ours.recv()
        assert outcome == "RingExists" and "cannot tell whether" in message, message
        assert os.path.exists(seg_path(name))
        writer.write(np.zeros(SHAPE, np.uint8), 1.0)  # the ring goes on
