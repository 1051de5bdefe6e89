"""What a call that fails part-way, or a close() that cannot finish, leaves behind: no name
in /dev/shm, no descriptor closed twice, no mapping kept by a cycle, no handle half closed
(from a review of every error path)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from helpers import SMALL, WAIT, mapped_here, seg_path, segment_file_id, unique_name

from shmring import (
    ParticipantStalled,
    RingExists,
    RingFull,
    RingReader,
    RingWriter,
    _lock,
    _ring,
    _segment,
    _sys,
    _writer,
)
from shmring import _layout as L
from shmring._sys import range_is_locked


def test_a_create_refused_for_a_taken_name_closes_its_descriptor_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second close of the same number could close whatever another thread opened
    meanwhile (another ring's liveness descriptor)."""
    name = unique_name()
    made: list[int] = []
    closed: list[int] = []
    new_file, close = _segment._new_file, os.close

    def recorded_new_file() -> tuple[int, str | None]:
        fd, temp = new_file()
        made.append(fd)
        return fd, temp

    def recorded_close(fd: int) -> None:
        closed.append(fd)
        close(fd)

    with RingWriter.create(name, SMALL, np.uint8):
        monkeypatch.setattr(_segment, "_new_file", recorded_new_file)
        monkeypatch.setattr(os, "close", recorded_close)
        with pytest.raises(RingExists):
            RingWriter.create(name, SMALL, np.uint8)
        monkeypatch.undo()
    assert len(made) == 1 and closed.count(made[0]) == 1, (made, closed)


def test_a_create_interrupted_once_its_name_is_linked_removes_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = unique_name()
    link = _segment._link_claiming_stale

    def linked_then_interrupted(source: str, target: str) -> None:
        link(source, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(_segment, "_link_claiming_stale", linked_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        RingWriter.create(name, SMALL, np.uint8)
    assert not os.path.lexists(seg_path(name))


@pytest.mark.parametrize("how", ["latest", "iterate"])
def test_a_closed_reader_keeps_no_mapping_through_its_last_frame(how: str) -> None:
    """The frame iteration or latest() returned last refers back to its reader: a closed
    reader that kept it would keep the ring mapped until the cyclic garbage collector ran."""
    name = unique_name()
    with RingWriter.create(name, SMALL, np.uint8, slots=4, policy="overwrite") as w:
        file_id = segment_file_id(name)
        r = RingReader.attach(name, start="oldest")
        w.write(np.ones(SMALL, np.uint8), WAIT)
        if how == "latest":
            r.latest(WAIT)
        else:
            next(iter(r))  # not kept here: the reader's own reference must not keep the ring
        gc.disable()
        try:
            r.close()
            del r
            w.close()
            assert not mapped_here(file_id)
        finally:
            gc.enable()


def _mappings_of(file_id: tuple[int, int]) -> int:
    """How many mappings of file `file_id` this process has."""
    inode = str(file_id[0])
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.split(maxsplit=5)[4:5] == [inode])


@pytest.mark.parametrize("role", ["reader", "writer"])
def test_an_attach_refused_for_want_of_a_record_unmaps_at_once(role: str) -> None:
    """RingFull (as any failure once the handle's views exist): its mappings go with the
    call, not at the next garbage collection (aattach retries would pile them up)."""
    name = unique_name()
    with (
        RingWriter.create(name, SMALL, np.uint8, max_readers=1, max_writers=1) as w,
        RingReader.attach(name),
    ):
        w.write(np.zeros(SMALL, np.uint8), WAIT)  # the creator's writer record is taken
        file_id = segment_file_id(name)
        before = _mappings_of(file_id)
        attach = RingReader.attach if role == "reader" else RingWriter.attach
        gc.disable()
        try:
            with pytest.raises(RingFull):
                attach(name)
            assert _mappings_of(file_id) == before
        finally:
            gc.enable()


_EXIT_WHILE_WRITING = """
import sys, threading
import numpy as np
from shmring import RingWriter
name = sys.argv[1]
shape = (64 << 20,)
w = RingWriter.create(name, shape, np.uint8, slots=2)
frame = np.ones(shape, np.uint8)
w.write(frame, 5.0)
started = threading.Event()

def write_for_ever() -> None:
    started.set()
    while True:
        w.write(frame, 5.0)

threading.Thread(target=write_for_ever, daemon=True).start()
started.wait()
print("exiting", flush=True)
"""


def test_a_creator_exiting_while_a_daemon_thread_writes_removes_its_ring() -> None:
    """At interpreter exit the writer's finalizer finds a daemon thread inside write() (a
    large copy runs without the GIL): the name is removed all the same."""
    name = unique_name()
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_WHILE_WRITING, name],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    leaked = os.path.lexists(seg_path(name))
    if leaked:
        os.unlink(seg_path(name))
    assert done.returncode == 0 and done.stdout.strip() == "exiting", done.stderr
    assert not leaked, done.stderr


_EXIT_WHILE_WAITING = """
import atexit, sys, threading, time

threads, outcomes = {}, {}


def after_the_finalizers():  # registered first, so it runs after weakref's exit hook
    for role, thread in threads.items():
        thread.join(5.0)
        print(role, outcomes.get(role, "still waiting"), flush=True)


atexit.register(after_the_finalizers)

import numpy as np
from shmring import EndOfStream, RingReader, RingWriter

streamed, full = sys.argv[1], sys.argv[2]
w = RingWriter.create(streamed, (64,), np.uint8)
r = RingReader.attach(streamed)
blocked = RingWriter.create(full, (64,), np.uint8, slots=1)
holder = RingReader.attach(full)
blocked.write(np.zeros(64, np.uint8))  # full: the next write waits for holder


def run(role, call):
    try:
        outcomes[role] = call()
    except EndOfStream:
        outcomes[role] = "EndOfStream"
    except BaseException as exc:
        outcomes[role] = f"{type(exc).__name__}: {exc}"


for role, call in {
    "reader": lambda: r.read(None),
    "writer": lambda: f"wrote {blocked.write(np.ones(64, np.uint8), None)}",
}.items():
    threads[role] = threading.Thread(target=run, args=(role, call), daemon=True)
    threads[role].start()
deadline = time.monotonic() + 5.0
while not (r._p.calls and blocked._p.calls):  # both inside their waits
    assert time.monotonic() < deadline, "the threads never waited"
    time.sleep(0.001)
"""


def test_handles_that_daemon_threads_wait_in_at_exit_stay_theirs() -> None:
    """At interpreter exit, a handle's finalizer that finds a daemon thread's call under way
    leaves the handle to it (before: it unmapped the ring under the thread, which died with
    "released memoryview" or EBADF); the rest close as usual, so the waiting reader gets
    EndOfStream from its writer's close and the blocked writer a slot from its reader's."""
    streamed, full = unique_name("ew"), unique_name("ew")
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_WHILE_WAITING, streamed, full],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    leaked = [name for name in (streamed, full) if os.path.lexists(seg_path(name))]
    for name in leaked:
        os.unlink(seg_path(name))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines() == ["reader EndOfStream", "writer wrote 1"], done.stdout
    assert not leaked


def test_a_loop_link_at_the_name_does_not_stop_close(tmp_path: Any) -> None:
    """The name was removed (shmring rm --force) and a link that loops put there (stat
    follows it: ELOOP): the creator's close() leaves it and closes its handle all the same."""
    name = unique_name()
    w = RingWriter.create(name, SMALL, np.uint8)
    os.unlink(seg_path(name))
    os.symlink(seg_path(name), seg_path(name))
    try:
        w.close()
        assert w.closed
    finally:
        os.unlink(seg_path(name))


def test_a_reader_attach_that_times_out_on_a_stopped_writer_gives_its_record_back() -> None:
    """Joining a block ring waits for each writer to leave its lock-free step; one stopped
    inside it (forged here) makes attach raise ParticipantStalled, and the reader record it
    had taken is free again: not counted as a reader, not left for a reaper."""
    name = unique_name()
    with RingWriter.create(name, SMALL, np.uint8, slots=4) as w, RingWriter.attach(name) as other:
        other._record[L.W_IN_PUBLISH] = 1  # as if stopped mid-publish
        with pytest.raises(ParticipantStalled):
            RingReader.attach(name)
        assert w.readers == 0
        assert not any(r[L.R_STATE] == L.STATE_ACTIVE for r in w._p.views.readers)
        other._record[L.W_IN_PUBLISH] = 0
        with RingReader.attach(name):
            assert w.readers == 1


def test_a_join_interrupted_while_it_builds_its_publisher_gives_its_record_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The creator joins at its first write; Ctrl-C while that join builds the writer's C
    object leaves no writer record behind, so the next write joins with one record, and
    its close ends the stream (not WriterGone)."""
    name = unique_name()
    build = _writer._publisher

    def interrupted(*args: Any) -> Any:
        raise KeyboardInterrupt

    with RingWriter.create(name, SMALL, np.uint8, slots=4) as w:
        monkeypatch.setattr(_writer, "_publisher", interrupted)
        with pytest.raises(KeyboardInterrupt):
            w.write(np.zeros(SMALL, np.uint8), WAIT)
        monkeypatch.setattr(_writer, "_publisher", build)
        assert not any(r[L.W_STATE] == L.STATE_ACTIVE for r in w._p.views.writers)
        w.write(np.zeros(SMALL, np.uint8), WAIT)
        assert sum(r[L.W_STATE] == L.STATE_ACTIVE for r in w._p.views.writers) == 1


def test_the_header_lock_taken_as_ctrl_c_lands_is_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C handled just as the header lock's fcntl returned (taken): the lock is let go,
    so other processes do not wait for it until this handle closes, and this handle's
    next call takes it again at once."""
    name = unique_name()
    take = _sys.try_lock_range

    def taken_then_interrupted(fd: int, byte: int) -> bool:
        if not take(fd, byte):
            return False
        raise KeyboardInterrupt

    with RingWriter.create(name, SMALL, np.uint8, slots=4) as w, RingReader.attach(name) as r:
        monkeypatch.setattr(_lock, "try_lock_range", taken_then_interrupted)
        with pytest.raises(KeyboardInterrupt):
            w._p.lock.acquire(0.0)
        monkeypatch.undo()
        assert not range_is_locked(r._p.segment.fd, L.LOCK_HEADER)
        w._p.lock.acquire(0.0)
        w._p.lock.release()


def test_the_header_lock_released_as_ctrl_c_lands_is_released_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = unique_name()
    unlock = _sys.unlock_range

    def unlocked_then_interrupted(fd: int, byte: int) -> None:
        unlock(fd, byte)
        raise KeyboardInterrupt

    with RingWriter.create(name, SMALL, np.uint8, slots=4) as w:
        w._p.lock.acquire(0.0)
        monkeypatch.setattr(_lock, "unlock_range", unlocked_then_interrupted)
        with pytest.raises(KeyboardInterrupt):
            w._p.lock.release()
        monkeypatch.undo()
        w._p.lock.acquire(0.0)  # the thread lock was let go too: no wait for ever
        w._p.lock.release()


def _open_on(fd: int, inode: int) -> bool:
    """Whether descriptor `fd` is open on the file with `inode`."""
    try:
        return os.fstat(fd).st_ino == inode
    except OSError:
        return False


def test_a_child_forked_while_a_handle_is_built_keeps_no_ring_descriptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fork() while another thread of the parent builds a handle (here, deterministically,
    from inside the build, once the segment is open): the child closes the descriptor,
    whose locks would say the parent is alive for as long as the child lives."""
    name = unique_name()
    make = _ring.Participant
    in_child: list[int] = []

    def forking(segment: _segment.Segment) -> _ring.Participant:
        fd = segment.fd  # its OFD locks (its mappings' descriptors hold none)
        pid = os.fork()
        if pid == 0:
            os._exit(int(_open_on(fd, segment.inode)))
        in_child.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        return make(segment)

    with RingWriter.create(name, SMALL, np.uint8):
        monkeypatch.setattr(_ring, "Participant", forking)
        with RingReader.attach(name):
            pass
    assert in_child == [0]
