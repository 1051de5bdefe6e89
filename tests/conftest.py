"""Suite-wide fixtures: no test may leave a shmring segment behind in /dev/shm.

The autouse fixture ``no_leaked_segments`` snapshots /dev/shm/shmring.* and
/dev/shm/.shmring-tmp-* before each test, and fails the test if new entries are left after
it, removing them so that later tests are not affected.

Other sessions (developers, fuzzers, CI jobs) may use rings on the same machine at the same
time, and their entries must be neither blamed nor removed. So a new entry counts as this
test's when it is provably ours: its creator (the header's creator_pid, or the pid in a
temp file's name) is this process, a process it started, or a running descendant; or its
name carries this process's pid (``helpers.unique_name``). Entries a live foreign process
maps or has open are never ours. In strict mode (``SHMRING_TEST_STRICT_LEAKS=1``, or a CI
run with no other test session on the machine) every other new entry counts too.

The fixture ``sched_yields`` counts the ``os.sched_yield`` calls of this process (readers and
writers that poll yielding the CPU).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import re
import stat
import sys
from collections.abc import Generator, Iterator

import pytest

pytest_plugins = ["pytester"]

SHM_DIR = "/dev/shm"
PREFIXES = ("shmring.", ".shmring-tmp-")
CREATOR_PID_OFFSET = 216  # docs/FORMAT.md: u64 creator_pid in the fixed header
SESSIONS_LOCK = "/tmp/shmring-test-sessions.lock"


def shm_entries() -> set[str]:
    """Names of shmring segments and creation temp files currently in /dev/shm."""
    try:
        return {e for e in os.listdir(SHM_DIR) if e.startswith(PREFIXES)}
    except FileNotFoundError:  # pragma: no cover - no /dev/shm at all
        return set()


# ------------------------------------------------------------------ other test sessions

_session_fd: int | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    """Hold a shared lock for the whole session, so others can tell we are running."""
    global _session_fd
    _session_fd = os.open(SESSIONS_LOCK, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    fcntl.flock(_session_fd, fcntl.LOCK_SH)


def other_sessions_running() -> bool:
    """Another test session holds the sessions lock, or any pytest we did not start runs
    (one using an older copy of this file does not take the lock)."""
    if _session_fd is not None:
        try:
            fcntl.flock(_session_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(_session_fd, fcntl.LOCK_SH)
    ancestors: set[int] = set()
    pid = os.getpid()
    while pid > 1 and len(ancestors) < 64:
        try:
            pid = _ppid(pid)
        except (OSError, ValueError, IndexError):
            break
        ancestors.add(pid)
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in ancestors and not is_ours(int(d)):
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if b"pytest" in f.read():
                        return True
            except OSError:
                continue
    return False


# ------------------------------------------------------------------ who holds / made it


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def is_ours(pid: int) -> bool:
    """True for this process and its running descendants."""
    me = os.getpid()
    for _ in range(64):
        if pid == me:
            return True
        if pid <= 1:
            return False
        try:
            pid = _ppid(pid)
        except (OSError, ValueError, IndexError):
            return False
    return False


def holders(path: str) -> Iterator[int]:
    """Pids that map or have open the file at ``path``, matched by inode: a ring's
    creator opened it under a temporary name, so /proc shows that name, not ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    ino, dev = st.st_ino, (os.major(st.st_dev), os.minor(st.st_dev))
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    fields = line.split(maxsplit=5)
                    if len(fields) >= 5 and fields[4] == str(ino):
                        major, minor = (int(x, 16) for x in fields[3].split(":"))
                        if (major, minor) == dev:
                            yield pid
                            break
                else:
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        with contextlib.suppress(OSError):
                            fst = os.stat(f"/proc/{pid}/fd/{fd}")
                            if (fst.st_ino, fst.st_dev) == (ino, st.st_dev):
                                yield pid
                                break
        except OSError:
            continue


def creator_pid(entry: str) -> int | None:
    """The header's creator pid; None for anything but a regular file (a FIFO named
    shmring.* that a test planted must not block this open: O_NONBLOCK, no links)."""
    try:
        fd = os.open(os.path.join(SHM_DIR, entry), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        pid = int.from_bytes(os.pread(fd, 8, CREATOR_PID_OFFSET), "little")
    finally:
        os.close(fd)
    return pid if 0 < pid < 1 << 22 else None


def describe(entry: str) -> str:
    pid = creator_pid(entry)
    if pid is None:
        return entry
    state = "running" if os.path.exists(f"/proc/{pid}") else "exited"
    return f"{entry} (creator pid {pid}, {state})"


def _pid_in_temp_name(entry: str) -> int | None:
    m = re.fullmatch(r"\.shmring-tmp-(\d+)-.*", entry)
    return int(m.group(1)) if m else None


def _started_pids() -> set[int]:
    helpers = sys.modules.get("helpers")
    return set(getattr(helpers, "STARTED_PIDS", ()))


def provably_ours(entry: str) -> bool:
    me = os.getpid()
    if re.search(rf"(?<!\d){me}(?!\d)", entry):
        return True
    started = _started_pids()
    for pid in (creator_pid(entry), _pid_in_temp_name(entry)):
        if pid is None:
            continue
        if pid == me or pid in started or (os.path.exists(f"/proc/{pid}") and is_ours(pid)):
            return True
    return False


def strict_mode() -> bool:
    if os.environ.get("SHMRING_TEST_STRICT_LEAKS") == "1":
        return True
    ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
    return ci and not other_sessions_running()


def belongs_to_this_session(entry: str, strict: bool) -> bool:
    path = os.path.join(SHM_DIR, entry)
    if any(not is_ours(pid) for pid in holders(path)):
        return False  # a live process of another session uses it
    return provably_ours(entry) or strict


# ------------------------------------------------------------------ the fixture


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


@pytest.fixture(autouse=True)
def no_leaked_segments(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test that leaves a new /dev/shm/shmring.* or .shmring-tmp-* entry behind;
    remove such entries afterwards so later tests are not affected."""
    before = shm_entries()
    yield
    gc.collect()  # rings only reachable from reference cycles are finalised now
    new = [e for e in sorted(shm_entries() - before) if os.path.lexists(os.path.join(SHM_DIR, e))]
    if not new:
        return
    strict = strict_mode()
    leaked = [e for e in new if belongs_to_this_session(e, strict)]
    details = [describe(e) for e in leaked]
    for e in leaked:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, e))
    call = getattr(request.node, "rep_call", None)
    if leaked and (call is None or call.passed):
        pytest.fail(f"test left shared-memory entries in {SHM_DIR}: {details}", pytrace=False)


class YieldCount:
    """How many times this process called os.sched_yield since the fixture (or a reset)."""

    count = 0


@pytest.fixture
def sched_yields(monkeypatch: pytest.MonkeyPatch) -> YieldCount:
    """Count os.sched_yield calls (the real yield still runs); set `count` to 0 to restart."""
    counted = YieldCount()
    real_yield = os.sched_yield

    def counted_yield() -> None:
        counted.count += 1
        real_yield()

    monkeypatch.setattr(os, "sched_yield", counted_yield)
    return counted
