"""Whose rings a process trusts (docs/OPERATIONS.md, "Trust model"; issue 17, finding 2).

Attaching checks the segment file's owner before reading a byte of it: by default the ring
must belong to this process's user or to root, else `UntrustedRing`; `owner=` (a uid or a
user name) names the one user to trust instead. `create` never takes over a name whose file
another user owns, live or stale: `RingExists` names that user.

The cross-user checks play the impostor in a forked child that dropped to `nobody` (setgid,
then setuid) and made `shmring.NAME` first, mode 0666, as a real ring or a planted file; they
need root and are skipped without it. Root removes what the impostor leaves.

Liveness counts write locks only: a read lock, which anyone who can read the file can take,
on a dead participant's byte does not make it look alive.

`shmring gc` run by a third user leaves the impostor's stale entries alone and says so,
without failing: only their owner or root may remove them from /dev/shm.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pickle
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection

import numpy as np
import pytest
from helpers import SHM_DIR, WAIT, forked, seg_path, unique_name

import shmring
from shmring import RingExists, RingReader, RingWriter, StaleRingWarning, UntrustedRing
from shmring import _layout as L
from shmring._cli import build_parser, main
from shmring._sys import _F_OFD_SETLK, _FLOCK

NOBODY = 65534  # uid and gid of `nobody`
THIRD_USER = 54321  # a uid and gid that neither owns the ring nor is root
SHAPE = (16,)
DEAD_PID = 1 << 22  # no process has it (pids stay below 2**22): the "creator" of a temp file
IMPOSTOR_FRAME = 66

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play another user")


def _impostor(conn: Connection, name: str, kind: str) -> None:
    """In a forked child: become nobody and take `name` first, then wait for "done"."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    writer = None
    if kind == "file":  # not a ring at all: attach must refuse it before reading it
        fd = os.open(seg_path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.fchmod(fd, 0o666)
        os.write(fd, b"\x93SHMRING" + bytes(4088))
        os.close(fd)
    else:
        writer = RingWriter.create(name, SHAPE, np.uint8, mode=0o666)
        writer.write(np.full(SHAPE, IMPOSTOR_FRAME, np.uint8), 1.0)
    conn.send("ready")
    if kind == "stale":
        os._exit(0)  # dies without closing: its ring stays, stale
    assert conn.poll(WAIT) and conn.recv() == "done"
    if writer is not None:
        writer.close()
    conn.send("closed")


@contextmanager
def impostor(kind: str) -> Iterator[tuple[str, Connection]]:
    """A ring name another user (nobody) took first: "ring" (live), "stale" or "file"."""
    name = unique_name("trust")
    with forked(_impostor, name, kind) as (ours, child):
        try:
            assert ours.poll(WAIT) and ours.recv() == "ready", "the impostor did not start"
            if kind == "stale":
                child.join(WAIT)  # dead: its ring is stale
            assert os.stat(seg_path(name)).st_uid == NOBODY
            yield name, ours
        finally:
            if child.is_alive():
                ours.send("done")
                assert ours.poll(WAIT) and ours.recv() == "closed"
            child.join(WAIT)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(seg_path(name))  # root may remove anyone's file


def _refused(exc: pytest.ExceptionInfo[UntrustedRing], name: str) -> None:
    message = str(exc.value)
    assert isinstance(exc.value, shmring.ShmringError)
    assert isinstance(exc.value, PermissionError)
    assert repr(name) in message
    assert f"belongs to nobody (uid {NOBODY})" in message
    assert f"owner={NOBODY}" in message  # what to do


@needs_root
def test_attach_refuses_another_users_ring_unless_told_to_trust_its_owner() -> None:
    with impostor("ring") as (name, _):
        with pytest.raises(UntrustedRing) as refused:
            RingReader.attach(name, timeout=1.0)
        _refused(refused, name)
        with pytest.raises(UntrustedRing) as refused:
            RingWriter.attach(name)
        _refused(refused, name)
        # Looking is not trusting: inspection shows the ring.
        assert shmring.inspect_ring(name).creator_alive
        # Told to trust nobody, by name or uid, both attach and the stream flows.
        with (
            RingReader.attach(name, owner="nobody", start="oldest") as reader,
            RingWriter.attach(name, owner=NOBODY) as writer,
        ):
            with reader.read(WAIT) as frame:
                assert int(frame.array[0]) == IMPOSTOR_FRAME
            writer.write(np.full(SHAPE, 7, np.uint8), WAIT)
            with reader.read(WAIT) as frame:
                assert int(frame.array[0]) == 7
            # A pickled handle attaches again trusting the same owner, not the default.
            with pickle.loads(pickle.dumps(reader)) as again:
                assert again.name == name
        # create neither takes the name nor opens the impostor's ring.
        with pytest.raises(RingExists, match=rf"belongs to another user, nobody \(uid {NOBODY}\)"):
            RingWriter.create(name, SHAPE, np.uint8)


@needs_root
def test_a_planted_file_is_refused_before_it_is_read() -> None:
    with impostor("file") as (name, _):
        for attach in (RingReader.attach, RingWriter.attach):
            with pytest.raises(UntrustedRing) as refused:
                attach(name)
            _refused(refused, name)
        with pytest.raises(RingExists, match=rf"belongs to another user, nobody \(uid {NOBODY}\)"):
            RingWriter.create(name, SHAPE, np.uint8)


@needs_root
def test_create_does_not_reclaim_another_users_stale_ring() -> None:
    with impostor("stale") as (name, _):
        inode = os.stat(seg_path(name)).st_ino
        assert shmring.inspect_ring(name).stale
        with pytest.raises(RingExists, match=r"shmring rm"):
            RingWriter.create(name, SHAPE, np.uint8)
        assert os.stat(seg_path(name)).st_ino == inode  # untouched


def _leave_as_third_user(conn: Connection, name: str, kind: str) -> None:
    """In a forked child: become a third user, attach to nobody's ring and close it."""
    os.setgroups([])
    os.setgid(THIRD_USER)
    os.setuid(THIRD_USER)
    attach = RingReader.attach if kind == "reader" else RingWriter.attach
    handle = attach(name, owner=NOBODY)
    try:
        handle.close()
    except Exception as exc:
        conn.send(f"{type(exc).__name__}: {exc}")
    else:
        conn.send("closed")


@needs_root
@pytest.mark.parametrize("kind", ["reader", "writer"])
def test_the_last_one_out_leaves_another_users_ring_without_failing(kind: str) -> None:
    """Sticky /dev/shm lets only the owner (or root) unlink a ring: the last participant of
    another user's orphaned ring leaves it, stale, and its close() succeeds."""
    with impostor("stale") as (name, _):
        with forked(_leave_as_third_user, name, kind) as (ours, _child):
            assert ours.poll(WAIT) and ours.recv() == "closed"
        info = shmring.inspect_ring(name)
        assert info.stale and info.live_participants == 0
        with open(seg_path(name), "rb") as f:
            f.seek(L.control_word_offset(L.C_LOCK_OWNER))
            assert f.read(8) == bytes(8)  # the header lock was released cleanly


# ---- read locks: anyone who can read the file can take them, so they prove nobody alive ----
def _read_lock(name: str, byte: int) -> int:
    """A read-only descriptor of ring `name` holding a read lock on `byte`, as any user who
    can read the file could take (close it to drop the lock)."""
    fd = os.open(seg_path(name), os.O_RDONLY | os.O_CLOEXEC)
    fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, byte, 1, 0))
    return fd


def _create_and_die(conn: Connection, name: str) -> None:
    """In a forked child: create ring `name` and die without closing it (stale)."""
    writer = RingWriter.create(name, SHAPE, np.uint8)
    conn.send(writer.name)
    os._exit(0)


def _attach_and_die(conn: Connection, name: str) -> None:
    """In a forked child: attach to ring `name` as a reader and die without leaving it."""
    reader = RingReader.attach(name)
    conn.send(reader.name)
    os._exit(0)


def test_a_read_lock_does_not_keep_a_dead_creator_alive() -> None:
    """(Reclaiming the name still takes the byte's write lock: that waits for the read lock
    to go, which is why create makes no file that users who cannot write it can read.)"""
    name = unique_name("trust")
    with forked(_create_and_die, name) as (ours, child):
        assert ours.poll(WAIT) and ours.recv() == name
        child.join(WAIT)
    fd = _read_lock(name, L.LOCK_CREATOR)
    try:
        info = shmring.inspect_ring(name)
        assert not info.creator_alive and info.stale
    finally:
        os.close(fd)
    with pytest.warns(StaleRingWarning):
        RingWriter.create(name, SHAPE, np.uint8).close()  # reclaims it, then unlinks it


def test_a_read_lock_does_not_keep_a_dead_reader_alive() -> None:
    """A block writer does not wait for a dead reader whose byte is read-locked."""
    name = unique_name("trust")
    with RingWriter.create(name, SHAPE, np.uint8, slots=1) as writer:
        with forked(_attach_and_die, name) as (ours, child):
            assert ours.poll(WAIT) and ours.recv() == name
            child.join(WAIT)
        (dead,) = shmring.inspect_ring(name).readers
        fd = _read_lock(name, L.LOCK_READER_BASE + dead.index)
        try:
            assert not dead.alive
            writer.write(np.full(SHAPE, 1, np.uint8), WAIT)  # fills the one slot
            writer.write(np.full(SHAPE, 2, np.uint8), WAIT)  # reaps the dead reader's hold
            assert writer.readers == 0
        finally:
            os.close(fd)


def test_owner_names_the_one_user_to_trust() -> None:
    me = os.geteuid()
    other = NOBODY if me != NOBODY else 0
    name = unique_name("trust")
    with RingWriter.create(name, SHAPE, np.uint8) as writer:
        with (
            RingReader.attach(name, owner=me) as reader,
            RingWriter.attach(name, owner=pwd.getpwuid(me).pw_name),
        ):
            writer.write(np.full(SHAPE, 3, np.uint8), WAIT)
            with reader.read(WAIT) as frame:
                assert int(frame.array[0]) == 3
        with pytest.raises(UntrustedRing, match=rf"not to \w+ \(uid {other}\)"):
            RingReader.attach(name, owner=other)
        assert writer.readers == 0  # the refused attach left nothing behind


def _plant_temp(conn: Connection, path: str) -> None:
    """In a forked child: become nobody and leave a creation temporary file, mode 0666."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.fchmod(fd, 0o666)
    os.close(fd)
    conn.send("planted")


def _gc_as(conn: Connection, uid: int, patterns: list[str]) -> None:
    """In a forked child: become user `uid` and run `shmring gc PATTERNS`; report its exit
    code, stdout and stderr."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["gc", *patterns])
    conn.send((code, out.getvalue(), err.getvalue()))


def gc_as(uid: int, *patterns: str) -> tuple[int, str, str]:
    build_parser()  # imports what main needs while we may still read every file
    with forked(_gc_as, uid, list(patterns)) as (ours, _):
        assert ours.poll(WAIT), "gc did not report"
        result: tuple[int, str, str] = ours.recv()
    return result


@needs_root
def test_gc_by_a_third_user_leaves_other_users_entries_and_does_not_fail() -> None:
    temp = f".shmring-tmp-{DEAD_PID}-{unique_name('trust')}"
    temp_path = os.path.join(SHM_DIR, temp)
    with impostor("stale") as (name, _):
        try:
            with forked(_plant_temp, temp_path) as (ours, _):
                assert ours.poll(WAIT) and ours.recv() == "planted"
            code, out, err = gc_as(THIRD_USER, name, temp)
            assert (code, err) == (0, ""), (code, out, err)
            for entry in (name, temp):
                assert f"leaving {entry}: it belongs to nobody (uid {NOBODY}); " in out
            assert os.path.exists(seg_path(name)) and os.path.exists(temp_path)
            # root may remove anyone's entries, and does
            code, out, err = gc_as(0, name, temp)
            assert (code, err) == (0, ""), (code, out, err)
            assert f"removed {name}: " in out and f"removed {temp}: " in out
            assert not os.path.exists(seg_path(name)) and not os.path.exists(temp_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_path)
