"""A creator SIGKILLed inside `create` leaves nothing in /dev/shm (issue 17, finding 6).

`create` builds the ring in a file with no name (O_TMPFILE) and names it only when it is
complete, so a kill before that frees the file with the dead process's descriptors. The
child creating a ring stops itself (SIGSTOP) at a chosen step of create: the nameless file
just opened, or fully allocated, initialised and about to be named; the test finds that
file among the child's open files in /proc and kills the child. Where O_TMPFILE is missing,
create falls back to a temporary name, and every create removes such files of dead
creators: the last test plants some.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import SHM_DIR, SMALL, WAIT, seg_path, unique_name, wait_for_state

from shmring import RingWriter
from shmring import _layout as L
from shmring._segment import TEMP_PREFIX
from shmring._sys import try_lock_range

FRAME = 1024 * 1024
SLOTS = 4
# The child stops itself before the step that follows the state the test kills it in.
STOP_BEFORE = {"opened": "os.posix_fallocate", "allocated": "_segment._link_claiming_stale"}
CREATE = """
import os, signal, sys, numpy as np, shmring
from shmring import _segment
module, attribute = sys.argv[2].split(".")
owner = {"os": os, "_segment": _segment}[module]
step = getattr(owner, attribute)
def stopped_first(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGSTOP)
    return step(*args, **kwargs)
setattr(owner, attribute, stopped_first)
"""
CREATE += f"shmring.RingWriter.create(sys.argv[1], ({FRAME},), np.uint8, slots={SLOTS})\n"


def _nameless_file(pid: int) -> Path | None:
    """The child's descriptor of a /dev/shm file that has no ring name yet, if any."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith(SHM_DIR + "/") and not target.startswith(seg_path("")):
            return fd
    return None


@pytest.mark.parametrize("state", ["opened", "allocated"])
def test_a_kill_inside_create_leaves_nothing(state: str) -> None:
    name = unique_name("ck")
    child = subprocess.Popen([sys.executable, "-c", CREATE, name, STOP_BEFORE[state]])
    try:
        wait_for_state(child.pid, "T")
        fd = _nameless_file(child.pid)
        assert fd is not None, "the stopped child holds no unnamed ring file"
        info = os.stat(fd)
        assert (info.st_blocks * 512 >= FRAME * SLOTS) == (state == "allocated"), info
        child.kill()
        assert child.wait(WAIT) == -9
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(WAIT)
    assert info.st_nlink == 0  # it had no name: nothing to remove
    assert not os.path.exists(seg_path(name))
    left = [
        e for e in os.listdir(SHM_DIR) if os.lstat(os.path.join(SHM_DIR, e)).st_ino == info.st_ino
    ]
    assert not left, f"the killed creator's file is still in {SHM_DIR}: {left}"
    assert not [e for e in os.listdir(SHM_DIR) if e.startswith(f"{TEMP_PREFIX}{child.pid}-")]


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        check=True,
        timeout=WAIT,
    )
    return int(done.stdout)


@contextlib.contextmanager
def planted_temps(token: str, **pids: int) -> Iterator[dict[str, str]]:
    """Creation temporary files, one per keyword (its name and the pid in its file name),
    each 4 KiB; "locked" has its creator lock held (a creator in another pid namespace,
    whose pid means nothing here). Yields their paths; removed at exit."""
    planted = {
        what: os.path.join(SHM_DIR, f"{TEMP_PREFIX}{pid}-{what}{token}")
        for what, pid in pids.items()
    }
    fds = {}
    try:
        for what, path in planted.items():
            fds[what] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fds[what], bytes(4096))
        if "locked" in fds:
            assert try_lock_range(fds["locked"], L.LOCK_CREATOR)
        yield planted
    finally:
        for what, path in planted.items():
            if what in fds:
                os.close(fds[what])
            if os.path.exists(path):
                os.unlink(path)


def test_create_removes_temp_files_that_dead_creators_left() -> None:
    """A temporary file of the fallback is abandoned when its creator's pid is gone and its
    creator lock is free; create then removes it, and leaves every other one alone."""
    dead = _dead_pid()
    with planted_temps(unique_name("ck"), abandoned=dead, live=os.getpid(), locked=dead) as planted:
        with RingWriter.create(unique_name("ck"), SMALL, np.uint8):
            pass
        assert not os.path.exists(planted["abandoned"])
        assert os.path.exists(planted["live"])
        assert os.path.exists(planted["locked"])


def test_gc_removes_only_temp_files_whose_creator_lock_is_free() -> None:
    """`shmring gc` judges a creation's temporary file as create does: its pid gone *and*
    its creator lock free. A pid from another pid namespace (containers sharing /dev/shm)
    names no process here, while that creator holds the lock: its file is left alone."""
    dead = _dead_pid()
    token = unique_name("gc")
    with planted_temps(token, abandoned=dead, locked=dead) as planted:
        pattern = f"*{token}"
        listed = subprocess.run(
            [sys.executable, "-m", "shmring", "gc", "--dry-run", pattern],
            capture_output=True, text=True, timeout=WAIT, check=True,
        ).stdout  # fmt: skip
        assert os.path.basename(planted["abandoned"]) in listed, listed
        assert os.path.basename(planted["locked"]) not in listed, listed
        subprocess.run([sys.executable, "-m", "shmring", "gc", pattern], timeout=WAIT, check=True)
        assert not os.path.exists(planted["abandoned"])
        assert os.path.exists(planted["locked"])
