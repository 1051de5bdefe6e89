"""A creator SIGKILLed inside `create` leaves nothing in /dev/shm (issue 17, finding 6).

`create` builds the ring in a file with no name (O_TMPFILE) and names it only when it is
complete, so a kill before that frees the file with the dead process's descriptors. The
child creates a 256 MiB ring with huge pages (moving them takes a while after the pages
are allocated); the test watches the child's open files in /proc and kills it at a chosen
state of that nameless file: just opened, or fully allocated. Where O_TMPFILE is missing,
create falls back to a temporary name, and every create removes such files of dead
creators: the last test plants some.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import SHM_DIR, SMALL, WAIT, seg_path, unique_name

from shmring import RingWriter
from shmring import _layout as L
from shmring._segment import TEMP_PREFIX
from shmring._sys import try_lock_range

FRAME = 64 * 1024 * 1024
SLOTS = 4  # 256 MiB of buffers
CREATE = (
    "import sys, numpy as np, shmring\n"
    f"shmring.RingWriter.create(sys.argv[1], ({FRAME},), np.uint8, slots={SLOTS}, "
    "huge_pages=True)\n"
)


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


def _watch(child: subprocess.Popen[bytes], allocated: bool) -> os.stat_result:
    """Wait (bounded) until the child holds the ring's file unnamed (and, if `allocated`,
    with every page reserved); return the file's stat."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert child.poll() is None, "the child finished create before it could be killed"
        fd = _nameless_file(child.pid)
        if fd is not None:
            try:
                info = os.stat(fd)
            except FileNotFoundError:
                continue
            if not allocated or info.st_blocks * 512 >= FRAME * SLOTS:
                return info
    raise AssertionError(f"the child never held an unnamed ring file in {WAIT} s")


@pytest.mark.parametrize("state", ["opened", "allocated"])
def test_a_kill_inside_create_leaves_nothing(state: str) -> None:
    name = unique_name("ck")
    child = subprocess.Popen([sys.executable, "-c", CREATE, name])
    try:
        info = _watch(child, allocated=state == "allocated")
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
