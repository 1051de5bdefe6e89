"""Shared helpers for the shmring test suite.

* ``Pattern``: deterministic frame contents that encode a tag (writer id + counter), a
  checksum and a body, so a reader can verify order, loss, duplication and tearing.
* ``Child``: a child process (multiprocessing ``spawn`` / ``fork`` or an unrelated
  ``python`` started with ``subprocess.Popen``) running one of the ``CHILD_FUNCS`` below,
  talking to the test over a message channel. Every wait on it is bounded.

Nothing here sleeps to synchronise: children and tests exchange messages.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import IO, Any, Protocol

import numpy as np

from shmring import EndOfStream, RingReader, RingWriter, _writer
from shmring import _layout as L

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
CHILD_SCRIPT = os.path.join(TESTS_DIR, "children", "child.py")
SHM_DIR = "/dev/shm"

#: Upper bound for any single wait that succeeds promptly when things work.
WAIT = 30.0
#: Scheduling slack allowed on top of a documented latency bound (2 busy cores).
SLACK = 0.5

VGA = (480, 640, 3)
SMALL = (64,)


FORMAT_MD = os.path.join(os.path.dirname(TESTS_DIR), "docs", "FORMAT.md")
OPERATIONS_MD = os.path.join(os.path.dirname(TESTS_DIR), "docs", "OPERATIONS.md")


def hold_next_position(writer: RingWriter, slots: int) -> int:
    """In a ring whose writers sequence their frames: forge the next number as taken by a
    writer that holds its position (D_SEQ = number | SEQ_BUSY), as if it were stopped
    inside its publish step. Returns that number."""
    control, descriptors = writer._control, writer._p.views.descriptors
    held: int = control[L.C_NEXT_SEQ]
    descriptors[held % slots][L.D_SEQ] = held | L.SEQ_BUSY
    control[L.C_NEXT_SEQ] = held + 1
    return held


@contextmanager
def writer_held_back(name: str, slots: int) -> Iterator[tuple[RingWriter, int]]:
    """An overwrite ring (SMALL frames) whose two writers sequence their frames, the second
    one forged as stopped while it holds the next number's position (hold_next_position);
    the first has written up to the number that falls on that position, so its next
    publish waits. Yields (the first writer, the held number)."""
    with (
        RingWriter.create(name, SMALL, np.uint8, policy="overwrite", slots=slots) as writer,
        RingWriter.attach(name) as other,
    ):
        writer.write(np.zeros(SMALL, np.uint8))
        other.write(np.zeros(SMALL, np.uint8))
        held = hold_next_position(writer, slots)
        for _ in range(slots - 1):
            writer.write(np.ones(SMALL, np.uint8), WAIT)
        yield writer, held


def let_go_position(writer: RingWriter, held: int, slots: int) -> None:
    """The forged holder of `held` places its number (as a skip) and leaves its step."""
    descriptors = writer._p.views.descriptors
    descriptors[held % slots][L.D_FLAGS] = L.DF_SKIP
    descriptors[held % slots][L.D_SEQ] = held


def reinit_refused(made: Any, arguments: dict[str, Any], key: str, reentering: object) -> str:
    """Call made.__init__ with `arguments`, `key` replaced by `reentering` (whose hook calls
    __init__ again): the RuntimeError's message, "" if none. (Not pytest.raises: its
    traceback would keep the call's arguments, and the references counted.)"""
    try:
        made.__init__(**{**arguments, key: reentering})
    except RuntimeError as exc:
        return str(exc)
    return ""


LOOP_BOUND = 0.05  # issue 19: a waiting awaitable call blocks the loop no longer than this


def assert_loop_kept_running(gaps: Sequence[float]) -> None:
    """A 1 ms ticker's gaps show the loop ran throughout: no gap past LOOP_BOUND but one (a
    scheduling hiccup of a loaded machine), and none ten times as long (a blocking wait)."""
    longest = sorted(gaps)[-3:]
    assert len(gaps) > 100, f"the ticker ticked {len(gaps)} times"
    assert sum(gap > LOOP_BOUND for gap in gaps) <= 1, f"the loop was blocked: {longest}"
    assert max(gaps) < 10 * LOOP_BOUND, f"the loop was blocked: {longest}"


def format_md_table(heading: str, doc: str = FORMAT_MD) -> list[list[str]]:
    """Rows of the first markdown table after the first occurrence of `heading` in `doc`
    (docs/FORMAT.md unless given; cells stripped; header and separator rows removed)."""
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(heading) :]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def end_started(processes: list[subprocess.Popen[str]], timeout: float = WAIT) -> None:
    """Kill each process in `processes` that still runs, reap it and close its pipes,
    emptying the list: an autouse fixture's step after each test, for what a failed step
    left running."""
    while processes:
        process = processes.pop()
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=timeout)


def unique_name(tag: str = "t") -> str:
    """A ring name unique to this test run: ``[A-Za-z0-9_.-]``, well under 64 chars."""
    return f"{tag}{os.getpid()}_{uuid.uuid4().hex[:8]}"


def seg_path(name: str) -> str:
    return os.path.join(SHM_DIR, "shmring." + name)


def segment_file_id(name: str) -> tuple[int, int]:
    """(inode, device) of ring `name`'s file, for ``mapped_here`` after it is unlinked."""
    st = os.stat(seg_path(name))
    return st.st_ino, st.st_dev


def mapped_here(file_id: tuple[int, int]) -> bool:
    """Whether this process maps the file `file_id` (``segment_file_id``). Matched by inode
    and device, as conftest.holders does: the creator maps a ring before it has its name, so
    /proc/self/maps shows a temporary name there ("/dev/shm/#INODE (deleted)"), not
    "shmring.NAME"."""
    ino, dev = file_id
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) >= 5 and fields[4] == str(ino):
                major, minor = (int(x, 16) for x in fields[3].split(":"))
                if os.makedev(major, minor) == dev:
                    return True
    return False


# --------------------------------------------------------------------------- patterns

HEAD = 16  # tag (u64) + checksum (u64)
TAIL = 8  # tag (u64) again: a torn frame has head != tail
N_VARIANTS = 7


def increasing(xs: Sequence[int]) -> bool:
    """Strictly increasing."""
    return all(b > a for a, b in itertools.pairwise(xs))


def make_tag(writer: int, n: int) -> int:
    return (writer << 48) | n


def split_tag(tag: int) -> tuple[int, int]:
    return tag >> 48, tag & ((1 << 48) - 1)


class Pattern:
    """Frames of uint8 laid out as ``[tag][crc32(body)][body][tag]``.

    The body is a prefix of one of ``N_VARIANTS`` pseudo-random byte strings chosen by the
    tag, so consecutive frames differ everywhere and a frame mixing two writes (tearing),
    a stale slot (duplication) or a wrong stride/shape is detected byte for byte.
    """

    def __init__(self, shape: Sequence[int], seed: int = 1234) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.size = int(np.prod(self.shape))
        assert self.size >= HEAD + TAIL, "frame too small for the pattern"
        rng = np.random.default_rng(seed)
        base = rng.integers(0, 256, self.size, dtype=np.uint8)
        self._base = [(base + np.uint8(31 * k)).astype(np.uint8) for k in range(N_VARIANTS)]
        self._body: dict[tuple[int, int], bytes] = {}
        self._crc: dict[tuple[int, int], int] = {}
        self._scratch = np.empty(self.size, np.uint8)

    def _key(self, tag: int, n: int) -> tuple[int, int]:
        w, c = split_tag(tag)
        return ((c * 3 + w) % N_VARIANTS, n)

    def _expected(self, key: tuple[int, int]) -> tuple[bytes, int]:
        body = self._body.get(key)
        if body is None:
            k, n = key
            body = self._base[k][HEAD : n - TAIL].tobytes()
            self._body[key] = body
            self._crc[key] = zlib.crc32(body)
        return body, self._crc[key]

    def fill(self, out: np.ndarray, tag: int) -> None:
        """Write the frame for ``tag`` into ``out`` (any shape, C-contiguous uint8)."""
        flat = out.reshape(-1)
        assert np.shares_memory(flat, out), "fill target must be C-contiguous"
        n = flat.size
        key = self._key(tag, n)
        _, crc = self._expected(key)
        flat[HEAD : n - TAIL] = self._base[key[0]][HEAD : n - TAIL]
        hdr = np.frombuffer(struct.pack("<QQ", tag, crc), np.uint8)
        flat[:HEAD] = hdr
        flat[n - TAIL :] = hdr[:TAIL]

    def make(self, tag: int, shape: Sequence[int] | None = None) -> np.ndarray:
        """The frame for ``tag`` in a scratch buffer (reused by the next call)."""
        shape = self.shape if shape is None else tuple(shape)
        out = self._scratch[: int(np.prod(shape))].reshape(shape)
        self.fill(out, tag)
        return out

    def check(self, arr: np.ndarray) -> int:
        """Verify a frame's bytes; return its tag. Raises AssertionError on any damage."""
        assert arr.dtype == np.uint8, arr.dtype
        data = arr.tobytes()  # one snapshot copy; C order whatever the strides
        n = len(data)
        assert n >= HEAD + TAIL, f"frame of {n} bytes is too small"
        tag, crc = struct.unpack_from("<QQ", data, 0)
        (tail,) = struct.unpack_from("<Q", data, n - TAIL)
        assert tag == tail, f"torn frame: head tag {tag:#x} != tail tag {tail:#x}"
        body, want_crc = self._expected(self._key(tag, n))
        assert crc == want_crc, f"frame {tag:#x}: checksum {crc:#x} != {want_crc:#x}"
        assert data.startswith(body, HEAD), f"frame {tag:#x}: body differs from its pattern"
        return int(tag)


def variable_shape(n: int, full: Sequence[int]) -> tuple[int, ...]:
    """A deterministic shape <= ``full`` (same ndim) for frame ``n`` of a variable stream."""
    if len(full) == 1:
        choices = [full[0], 24, full[0] // 2 + 8, 25]
        return (max(24, min(full[0], choices[n % 4])),)
    h, w = full[0], full[1]
    rest = tuple(full[2:])
    options = [
        (h, w),
        (1, max(8, -(-24 // int(np.prod(rest or (1,)))))),
        (h // 2 + 1, w),
        (h, w // 3 + 1),
        (7, 13 if w >= 13 else w),
    ]
    hh, ww = options[n % len(options)]
    return (min(h, hh), min(w, ww), *rest)


# --------------------------------------------------------------------------- channels


class Chan(Protocol):
    def send(self, msg: Any) -> None: ...

    def recv(self, timeout: float = WAIT) -> Any: ...


class ConnChan:
    """Channel over a multiprocessing Connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, msg: Any) -> None:
        self.conn.send(msg)

    def recv(self, timeout: float = WAIT) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"no message within {timeout} s")
        return self.conn.recv()


class FdChan:
    """Newline-delimited JSON over a pair of file descriptors (Popen pipes, stdio)."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self._buf = b""

    def send(self, msg: Any) -> None:
        data = (json.dumps(msg) + "\n").encode()
        while data:
            data = data[os.write(self.wfd, data) :]

    def recv(self, timeout: float = WAIT) -> Any:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no message within {timeout} s")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if ready:
                chunk = os.read(self.rfd, 1 << 16)
                if not chunk:
                    raise EOFError("channel closed")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)


def expect(chan: Chan, want: str, timeout: float = WAIT) -> Any:
    msg = chan.recv(timeout)
    if msg == want or (isinstance(msg, dict) and want in msg):
        return msg
    raise AssertionError(f"expected {want!r}, got {msg!r}")


# --------------------------------------------------------------------------- children


def _mp_entry(func: str, conn: Connection, kwargs: dict[str, Any]) -> None:
    chan = ConnChan(conn)
    try:
        CHILD_FUNCS[func](chan, **kwargs)
    except BaseException:
        chan.send({"error": traceback.format_exc()})
        raise SystemExit(1) from None


def popen_main(argv: Sequence[str]) -> int:
    """Entry point of tests/children/child.py (an unrelated ``python`` process)."""
    func, kwargs = argv[0], json.loads(argv[1])
    chan = FdChan(0, 1)
    try:
        CHILD_FUNCS[func](chan, **kwargs)
    except BaseException:
        chan.send({"error": traceback.format_exc()})
        return 1
    return 0


def readable_within(fd: int, deadline: float) -> bool:
    """Whether `fd` has something to read (or its end) before `deadline` (monotonic)."""
    left = deadline - time.monotonic()
    return left > 0 and bool(select.select([fd], [], [], left)[0])


def readline_within(stream: IO[str], timeout: float = WAIT) -> str:
    """The next line of a child's pipe, with its newline ("" once the child closed it), or
    an AssertionError after `timeout` s instead of blocking for ever. Read a byte at a time
    from the descriptor, so nothing after the line is taken from the pipe: a later
    communicate() gets the rest. (Never mix with the stream's own buffered reads.)"""
    fd, deadline, line = stream.fileno(), time.monotonic() + timeout, b""
    while not line.endswith(b"\n"):
        if not readable_within(fd, deadline):
            raise AssertionError(f"no whole line within {timeout} s (got {line!r})")
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line.decode(errors="replace")


def process_state(pid: int) -> str:
    """Process `pid`'s state letter (/proc/PID/stat: R running, S sleeping, T stopped...)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2]


def wait_for_state(pid: int, states: str, timeout: float = WAIT) -> None:
    """Wait (bounded) until process `pid` is in one of `states` (e.g. "S": asleep)."""
    give_up = time.monotonic() + timeout
    while process_state(pid) not in states:
        assert time.monotonic() < give_up, f"process {pid} never reached state {states}"
        time.sleep(0.005)  # polling a /proc state: no event to wait on


def wait_pid_exit(pid: int, timeout: float = WAIT) -> None:
    """Wait (bounded) until process ``pid`` has exited (any process; nothing is reaped)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"process {pid} still alive after {timeout} s"
    finally:
        os.close(fd)


@contextmanager
def forked(target: Callable[..., None], *args: Any) -> Iterator[tuple[Connection, BaseProcess]]:
    """A fork()ed child running `target(conn, *args)` (forked, so that a child which drops
    root imports nothing afterwards), with our end of its pipe. Reaped on exit, killed if it
    did not end; it must have exited with 0."""
    ctx = mp.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=target, args=(theirs, *args), daemon=True)
    child.start()
    theirs.close()
    try:
        yield ours, child
    finally:
        child.join(WAIT)
        if child.exitcode is None:
            child.kill()
            child.join(WAIT)
    assert child.exitcode == 0


class ChildError(AssertionError):
    pass


#: Pids of every child started through ``Child`` (conftest's leak check reads it).
STARTED_PIDS: set[int] = set()


class Child:
    """A child process running ``CHILD_FUNCS[func](chan, **kwargs)``.

    ``kind`` is ``"spawn"``, ``"fork"`` or ``"popen"`` (an unrelated ``python`` program:
    kwargs must then be JSON). Use as a context manager: on exit the child is killed if
    still running, and always reaped.
    """

    def __init__(self, kind: str, func: str, **kwargs: Any) -> None:
        self.kind = kind
        self.func = func
        self._proc: Any
        self._stderr: Any = None
        if kind == "popen":
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
            self._proc = subprocess.Popen(
                [sys.executable, CHILD_SCRIPT, func, json.dumps(kwargs)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                cwd=TESTS_DIR,
            )
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self.chan: Chan = FdChan(self._proc.stdout.fileno(), self._proc.stdin.fileno())
        else:
            ctx: Any = mp.get_context(kind)  # "spawn" or "fork": both have Process
            parent, child = ctx.Pipe()
            self._proc = ctx.Process(target=_mp_entry, args=(func, child, kwargs), daemon=True)
            self._proc.start()
            child.close()
            self.chan = ConnChan(parent)
        STARTED_PIDS.add(self.pid)

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    def send(self, msg: Any) -> None:
        self.chan.send(msg)

    def recv(self, timeout: float = WAIT) -> Any:
        try:
            msg = self.chan.recv(timeout)
        except (EOFError, OSError, TimeoutError) as e:
            raise ChildError(f"{self.func} child: {e!r}; stderr: {self.stderr()}") from e
        if isinstance(msg, dict) and "error" in msg:
            raise ChildError(f"{self.func} child failed:\n{msg['error']}")
        return msg

    def expect(self, want: str, timeout: float = WAIT) -> Any:
        msg = self.recv(timeout)
        if msg == want or (isinstance(msg, dict) and want in msg):
            return msg
        raise AssertionError(f"{self.func} child: expected {want!r}, got {msg!r}")

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def wait_dead(self, timeout: float = WAIT) -> None:
        """Wait (bounded) until the child has exited, WITHOUT reaping it: it stays a
        zombie, which every survivor must treat as dead."""
        wait_pid_exit(self.pid, timeout)

    def join(self, timeout: float = WAIT) -> int:
        """Wait (bounded) for the child to exit; return its exit code (-N for signal N)."""
        if self.kind == "popen":
            try:
                return int(self._proc.wait(timeout))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{self.func} child did not exit in {timeout} s") from None
        self._proc.join(timeout)
        code = self._proc.exitcode
        assert code is not None, f"{self.func} child did not exit in {timeout} s"
        return int(code)

    def stderr(self) -> str:
        if self._stderr is None:
            return "<not captured>"
        self._stderr.seek(0)
        return str(self._stderr.read().decode(errors="replace"))

    def close(self) -> None:
        try:
            if self.kind == "popen":
                if self._proc.poll() is None:
                    self._proc.kill()
                self._proc.wait(WAIT)
                for f in (self._proc.stdin, self._proc.stdout):
                    if f is not None:
                        f.close()
            else:
                if self._proc.exitcode is None:
                    self._proc.kill()
                self._proc.join(WAIT)
        finally:
            if self._stderr is not None:
                self._stderr.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def finish(child: Child, timeout: float = WAIT) -> Any:
    """Receive a child's final report and check it exited cleanly."""
    report = child.recv(timeout)
    code = child.join(timeout)
    assert code == 0, f"{child.func} child exit code {code}; stderr: {child.stderr()}"
    return report


class Waiter(threading.Thread):
    """Run ``fn`` in a thread; record its result or exception and when it finished."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.exc: BaseException | None = None
        self.t_end: float | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:
            self.exc = e
        finally:
            self.t_end = time.monotonic()

    def finish(self, timeout: float = WAIT) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"waiting thread still blocked after {timeout} s"


SYS_FUTEX = 202  # x86_64
_FUTEX_CMD = 0x7F  # the command bits of futex(2)'s op (without PRIVATE/CLOCK_REALTIME)
_FUTEX_WAITS = {0, 9}  # FUTEX_WAIT, FUTEX_WAIT_BITSET


def started_thread(run: Callable[[], None]) -> threading.Thread:
    """A thread running `run`, returned once it has started (its native id is known)."""
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + WAIT
    while thread.native_id is None and time.monotonic() < deadline:
        time.sleep(0.001)  # bounded poll for the thread to start
    return thread


def wait_until_asleep_in_futex(thread: threading.Thread, timeout: float = WAIT) -> None:
    """Return once `thread` (started) of this process sleeps in futex(2) waiting."""
    _wait_in_futex(f"/proc/self/task/{thread.native_id}/syscall", timeout)


def wait_until_process_asleep_in_futex(pid: int, timeout: float = WAIT) -> None:
    """Return once the main thread of process `pid` sleeps in futex(2) waiting."""
    _wait_in_futex(f"/proc/{pid}/syscall", timeout)


def _wait_in_futex(path: str, timeout: float) -> None:
    """Bounded poll of a thread's /proc syscall file until it shows a futex wait, not the
    FUTEX_WAKE_OP with which a reader counts itself as a sleeper."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path) as f:
            call = f.read().split()
        if call[0] == str(SYS_FUTEX) and int(call[2], 16) & _FUTEX_CMD in _FUTEX_WAITS:
            return
        time.sleep(0.001)  # bounded poll for the thread to block
    raise AssertionError(f"{path}: never slept in futex()")


def bounded(fn: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Run a call that has no timeout of its own (e.g. iterating a reader) in a thread and
    fail if it has not returned after ``timeout`` s, instead of hanging the suite."""
    waiter = Waiter(fn)
    waiter.start()
    waiter.finish(timeout)
    if waiter.exc is not None:
        raise waiter.exc
    return waiter.result


# ----------------------------------------------------------------- child functions
# Each takes the channel first; kwargs are JSON-able (popen) or picklable (spawn/fork).


def _open_writer(
    name: str, shape: Sequence[int], create: bool, policy: str, slots: int, writer: Any
) -> RingWriter:
    if writer is not None:
        return writer  # type: ignore[no-any-return]
    if create:
        return RingWriter.create(name, tuple(shape), np.uint8, slots=slots, policy=policy)
    return RingWriter.attach(name, timeout=WAIT)


def child_stream_writer(
    chan: Chan,
    name: str = "",
    shape: Sequence[int] = SMALL,
    count: int = 1000,
    api: str = "write",
    create: bool = True,
    writer_id: int = 0,
    policy: str = "block",
    slots: int = 8,
    variable: bool = False,
    wait_go: bool = True,
    writer: Any = None,
    interval: float = 0.0,
    stream_copies: bool = False,
) -> None:
    """Write ``count`` pattern frames (tags writer_id/0..count-1), close, report seqs.
    ``interval``: seconds between frames, for a steady stream like a camera's.
    ``stream_copies``: copy with non-temporal stores in shared mode whatever the ring's
    size (_writer.STREAMED_POOL_BYTES); the report says whether the fast path did."""
    pat = Pattern(shape)
    if stream_copies:
        _writer.STREAMED_POOL_BYTES = 1
    w = _open_writer(name, shape, create, policy, slots, writer)
    chan.send("ready")
    if wait_go:
        expect(chan, "go")
    seqs: list[int] = []
    for n in range(count):
        tag = make_tag(writer_id, n)
        fshape = variable_shape(n, shape) if variable else None
        use_claim = api == "claim" or (api == "mixed" and n % 2 == 1)
        if use_claim:
            c = w.claim(WAIT, shape=fshape)
            with c as slot:
                pat.fill(slot, tag)
            assert c.seq is not None  # set when the claim was published
            seqs.append(c.seq)
        else:
            seqs.append(w.write(pat.make(tag, fshape), WAIT))
        if interval:
            time.sleep(interval)  # the stream's own pace, not a synchronisation
    streamed = bool(w._publisher.stream_copies)
    w.close()
    assert increasing(seqs), "write() seqs not increasing"
    chan.send({"seqs": seqs, "streamed": streamed})


@dataclass
class Received:
    """What a reader got: per frame its tag (verified pattern), seq, dropped and shape."""

    tags: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    drops: list[int] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    dropped: int = 0  # the reader's total at the end

    def take(self, frame: Any, pat: Pattern) -> None:
        self.tags.append(pat.check(frame.array))
        self.seqs.append(int(frame.seq))
        self.drops.append(int(frame.dropped))
        self.shapes.append(tuple(frame.array.shape))

    def as_dict(self) -> dict[str, Any]:
        return {
            "tags": self.tags,
            "seqs": self.seqs,
            "drops": self.drops,
            "shapes": [list(s) for s in self.shapes],
            "dropped": self.dropped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Received:
        return cls(d["tags"], d["seqs"], d["drops"], [tuple(s) for s in d["shapes"]], d["dropped"])


def collect(
    r: RingReader,
    pat: Pattern,
    method: str = "read",
    limit: int | None = None,
    pause: Callable[[], None] | None = None,
    timeout: float = WAIT,
) -> Received:
    """Read (verifying every frame) until end of stream, or ``limit`` frames.

    ``method``: ``"read"`` (read with a timeout), ``"iter"`` (``for frame in r``: blocks
    without a timeout, so only for children or already-closed streams) or ``"latest"``.
    ``pause`` is called once, after the first frame.
    """
    got = Received()
    if method == "iter":
        for frame in r:
            got.take(frame, pat)
            if pause is not None and len(got.tags) == 1:
                pause()
            if limit is not None and len(got.tags) >= limit:
                break
    else:
        get = r.read if method == "read" else r.latest
        while limit is None or len(got.tags) < limit:
            try:
                frame = get(timeout)
            except EndOfStream:
                break
            with frame:
                got.take(frame, pat)
            if pause is not None and len(got.tags) == 1:
                pause()
    got.dropped = int(r.dropped)
    return got


def child_stream_reader(
    chan: Chan,
    name: str = "",
    shape: Sequence[int] | None = None,
    group: str | None = None,
    start: str = "oldest",
    reader: Any = None,
    pause_after_first: bool = False,
    method: str = "iter",
) -> None:
    """Attach, report ready, read until end of stream verifying every frame, report.
    ``shape``: the frames' pattern shape, by default the ring's frame shape."""
    r = reader if reader is not None else RingReader.attach(name, group=group, start=start)
    pat = Pattern(r.shape if shape is None else shape)
    chan.send("ready")

    def pause() -> None:
        chan.send("first")
        expect(chan, "continue")

    got = collect(r, pat, method, pause=pause if pause_after_first else None)
    r.close()
    chan.send({"got": got.as_dict()})


def child_try_create(chan: Chan, name: str = "", shape: Sequence[int] = SMALL) -> None:
    """Try to create a ring; report the exception type (or None)."""
    try:
        w = RingWriter.create(name, tuple(shape), np.uint8)
    except Exception as e:
        chan.send({"error_type": type(e).__name__, "file_exists": isinstance(e, FileExistsError)})
        return
    w.close()
    chan.send({"error_type": None})


def child_hold_reader(
    chan: Chan, name: str = "", shape: Sequence[int] | None = None, group: str | None = None
) -> None:
    """Attach, report, read one frame and hold it until told to release (or killed)."""
    r = RingReader.attach(name, group=group, start="oldest", timeout=WAIT)
    pat = Pattern(r.shape if shape is None else shape)
    chan.send("ready")
    frame = r.read(WAIT)
    tag = pat.check(frame.array)
    chan.send({"holding": frame.seq, "tag": tag})
    expect(chan, "release")
    frame.release()
    r.close()
    chan.send("done")


def child_hold_frames(chan: Chan, name: str = "", count: int = 1) -> None:
    """Attach (oldest first), read `count` frames, report their seqs, and hold every one of
    them (none released) until killed."""
    r = RingReader.attach(name, start="oldest", timeout=WAIT)
    frames = [r.read(WAIT) for _ in range(count)]
    chan.send([frame.seq for frame in frames])
    expect(chan, "never sent", timeout=3600)


def _stay_until_told(chan: Chan, busy: bool) -> None:
    """Return when told to leave; meanwhile idle (blocked on the channel) or busy (burning
    a CPU, as a process with work of its own does)."""
    if not busy:
        expect(chan, "leave")
        return
    done = threading.Event()

    def leave_when_told() -> None:
        expect(chan, "leave")
        done.set()

    threading.Thread(target=leave_when_told).start()
    while not done.is_set():
        pass  # a runnable process, all the time


def child_attached_reader(chan: Chan, name: str = "", busy: bool = False) -> None:
    """Attach a reader and stay attached, idle or busy, until told to leave."""
    with RingReader.attach(name, timeout=WAIT):
        chan.send("ready")
        _stay_until_told(chan, busy)
    chan.send("done")


def child_busy_outsider(chan: Chan) -> None:
    """Burn a CPU until told to leave, attached to no ring: another program on the machine."""
    chan.send("ready")
    _stay_until_told(chan, busy=True)
    chan.send("done")


def child_lock_holder(
    chan: Chan,
    name: str = "",
    shape: Sequence[int] = SMALL,
    create: bool = True,
    mode: str = "lock",
    frames: int = 3,
    policy: str = "block",
    slots: int = 8,
) -> None:
    """Create/attach a writer, write ``frames`` frames, then hold the header lock or a
    claim (``mode``) or nothing (``"none"``) and wait to be SIGKILLed."""
    pat = Pattern(shape)
    w = _open_writer(name, shape, create, policy, slots, None)
    chan.send("ready")
    expect(chan, "go")
    for n in range(frames):
        w.write(pat.make(make_tag(9, n)), WAIT)
    chan.send("wrote")
    expect(chan, "hold")
    if mode == "lock":
        w._lock.acquire(5.0)  # raises RingTimeout if it cannot take the header lock
        chan.send("holding")
        chan.recv(WAIT)  # killed here
    elif mode == "claim":
        with w.claim(5.0) as slot:
            slot[...] = 0xAB
            chan.send("holding")
            chan.recv(WAIT)  # killed here
    else:
        chan.send("holding")
        chan.recv(WAIT)
    raise AssertionError("lock holder was not killed")


def _linger(conn: Connection, parents_end: Connection) -> None:
    """A forked grandchild that does nothing until its parent's end of the pipe closes."""
    parents_end.close()
    conn.poll(WAIT)


def child_fork_then_hold(chan: Chan, name: str = "", shape: Sequence[int] = SMALL) -> None:
    """Create a ring, write 2 frames, fork a grandchild that outlives us, wait to be killed.

    The grandchild inherited the creator's descriptors: they must not keep the dead
    creator looking alive."""
    pat = Pattern(shape)
    w = RingWriter.create(name, tuple(shape), np.uint8)
    chan.send("ready")
    expect(chan, "go")
    for n in range(2):
        w.write(pat.make(make_tag(9, n)), WAIT)
    ctx = mp.get_context("fork")
    keep, give = ctx.Pipe()
    grandchild = ctx.Process(target=_linger, args=(give, keep), daemon=False)
    grandchild.start()
    _KEEP.extend([keep, grandchild])
    chan.send({"grandchild": grandchild.pid})
    chan.recv(WAIT)  # killed here
    raise AssertionError("not killed")


# Module-level references keep objects alive until interpreter exit on purpose.
_KEEP: list[Any] = []


def child_attach_exit(
    chan: Chan, name: str = "", shape: Sequence[int] = SMALL, close: bool = True
) -> None:
    """Attach a reader and a writer by name, read one frame, write one, exit.

    With ``close=False`` nothing is closed: interpreter exit / GC must clean up quietly
    without touching the segment (the creator owns it).
    """
    pat = Pattern(shape)
    r = RingReader.attach(name, start="oldest", timeout=WAIT)
    w = RingWriter.attach(name, timeout=WAIT)
    with r.read(WAIT) as frame:
        tag = pat.check(frame.array)
    seq = w.write(pat.make(make_tag(5, 0)), WAIT)
    if close:
        w.close()
        r.close()
    else:
        _KEEP.extend([r, w])
    chan.send({"tag": tag, "seq": seq})


def child_create_exit(
    chan: Chan,
    name: str = "",
    shape: Sequence[int] = SMALL,
    how: str = "close",
    write: bool = False,
) -> None:
    """Create a ring (and with ``write``, write a frame: the creator then is a writer too),
    report, wait for "exit", then leave by ``how``: ``close`` (explicit), ``with`` (context
    exit), ``gc`` (drop the last reference), ``exit`` (keep a reference: interpreter exit)."""
    if how == "with":
        with RingWriter.create(name, tuple(shape), np.uint8) as w:
            chan.send({"ready": w.name})
            expect(chan, "exit")
        chan.send({"bye": os.path.exists(seg_path(name))})
        return
    w = RingWriter.create(name, tuple(shape), np.uint8)
    if write:
        w.write(np.zeros(tuple(shape), np.uint8))
    chan.send({"ready": w.name})
    expect(chan, "exit")
    if how == "close":
        w.close()
    elif how == "gc":
        del w
        import gc

        gc.collect()
    else:
        _KEEP.append(w)
    chan.send({"bye": os.path.exists(seg_path(name))})


def child_attach_when_created(chan: Chan, name: str = "") -> None:
    """Attach as a reader with a generous timeout before the ring exists."""
    chan.send("ready")
    r = RingReader.attach(name, start="oldest", timeout=WAIT)
    chan.send("attached")
    with r.read(WAIT) as frame:
        first = int(frame.array[0])
    r.close()
    chan.send({"first": first})


def child_overwrite_writer(
    chan: Chan, name: str = "", shape: Sequence[int] = SMALL, count: int = 1000
) -> None:
    """Attach as a writer to an overwrite ring and write ``count`` frames without blocking."""
    pat = Pattern(shape)
    w = RingWriter.attach(name, timeout=WAIT)
    chan.send("ready")
    expect(chan, "go")
    seqs = [w.write(pat.make(make_tag(1, n)), 0.0) for n in range(count)]
    w.close()
    chan.send({"seqs": [seqs[0], seqs[-1]]})


def child_tagged_overwrite_writer(
    chan: Chan, name: str = "", writer_id: int = 0, count: int = 1000
) -> None:
    """Attach as a writer to an overwrite ring, write ``count`` tagged frames (writer_id/n),
    report the first and last seq, and close when told to. (Overwrite writes never wait for
    readers; the timeout bounds a wait for another writer preempted inside its publish.)"""
    pat = Pattern(SMALL)
    w = RingWriter.attach(name, timeout=WAIT)
    chan.send("ready")
    expect(chan, "go")
    seqs = [w.write(pat.make(make_tag(writer_id, n)), WAIT) for n in range(count)]
    chan.send({"seqs": [seqs[0], seqs[-1]], "increasing": increasing(seqs)})
    expect(chan, "close")
    w.close()
    chan.send("closed")


def data_address(reader_or_writer: Any) -> int:
    """Where a handle's frame buffers are mapped in this process."""
    return int(np.frombuffer(reader_or_writer._p.segment.data, np.uint8).ctypes.data)


def huge_mapped_kib(address: int) -> int:
    """ShmemPmdMapped of this process's mapping that contains `address`: how much of it
    is mapped with huge pages (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                start, end = (int(x, 16) for x in first.split("-"))
                inside = start <= address < end
            elif inside and first == "ShmemPmdMapped:":
                return int(line.split()[1])
    raise AssertionError(f"no mapping contains {address:#x}")


def child_report_huge_pages(chan: Chan, name: str = "") -> None:
    """Attach a reader and report how its frame buffers are mapped, holding a frame."""
    with RingReader.attach(name, start="oldest", timeout=WAIT) as r, r.read(WAIT) as frame:
        address = data_address(r)
        chan.send(
            {
                "address": address,
                "data_offset": r._p.geometry.data_offset,
                "huge_kib": huge_mapped_kib(address),
                "first": int(frame.array.flat[0]),
            }
        )


CHILD_FUNCS: dict[str, Callable[..., None]] = {
    "report_huge_pages": child_report_huge_pages,
    "stream_writer": child_stream_writer,
    "stream_reader": child_stream_reader,
    "hold_reader": child_hold_reader,
    "hold_frames": child_hold_frames,
    "attached_reader": child_attached_reader,
    "busy_outsider": child_busy_outsider,
    "lock_holder": child_lock_holder,
    "tagged_overwrite_writer": child_tagged_overwrite_writer,
    "attach_exit": child_attach_exit,
    "create_exit": child_create_exit,
    "attach_when_created": child_attach_when_created,
    "overwrite_writer": child_overwrite_writer,
    "try_create": child_try_create,
    "fork_then_hold": child_fork_then_hold,
}
