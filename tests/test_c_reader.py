"""examples/c_reader: a C reader written from docs/FORMAT.md reads what Python writes.

The C reader is built here with `make` and `cc` (into a temporary directory), once as is
and once with -fsanitize=address,undefined, and run as its own process against Python
writers in other processes (`sys.executable -c WRITER`). The writer reports the FNV-1a
hash of every frame it published; the C reader's lines must carry the same. The layout
header it includes (src/shmring/shmring_layout.h) has its constants and offsets checked
against FORMAT.md's tables and _layout.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
from helpers import (
    SMALL,
    STARTED_PIDS,
    WAIT,
    FdChan,
    Pattern,
    end_started,
    expect,
    format_md_table,
    make_tag,
    seg_path,
    unique_name,
)

import shmring
from shmring import _layout as L
from shmring._sys import _F_OFD_SETLK, _FLOCK, try_lock_range, unlock_range

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "c_reader"
LAYOUT_H = ROOT / "src" / "shmring" / "shmring_layout.h"
SANITIZE = "-fsanitize=address,undefined"
SANITIZER_CFLAGS = f"-O1 -g {SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all"
EXIT_REFUSED, EXIT_END, EXIT_GONE = 3, 4, 5
NOBODY = 65534  # uid of `nobody`
DETECT_WITHIN = 1.0  # issue 21: a dead writer or reader is noticed within 1 s
LINE = re.compile(r"seq=(\d+) bytes=(\d+) fnv1a64=([0-9a-f]{16})")

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None or shutil.which("make") is None,
    reason="building the C reader needs cc and make",
)

# What the Python writer scripts below share: their configuration, messages and hash.
PRELUDE = r"""
import json, sys
import numpy as np
import shmring

cfg = json.loads(sys.argv[1])

def send(message):
    print(json.dumps(message), flush=True)

def fnv1a64(data):
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value
"""

# A Python writer in its own process: creates the ring, waits for its readers, publishes
# `count` frames of random bytes (own shapes and metadata when `variable`), reports
# [seq, bytes, fnv1a64] for each, then does what `then` says.
WRITER = (
    PRELUDE
    + r"""
shape, dtype = tuple(cfg["shape"]), np.dtype(cfg["dtype"])
w = shmring.RingWriter.create(
    cfg["name"], shape, dtype, slots=cfg["slots"], policy=cfg["policy"],
    max_readers=cfg["max_readers"], max_writers=1, meta_size=cfg["meta_size"],
)
send("ready")
w.wait_for_readers(cfg["readers"], timeout=30)
rng = np.random.default_rng(7)

def frame(n):
    own = cfg["variable"] and n % 3 == 1
    frame_shape = tuple(max(1, d - 1 - n % 2) for d in shape) if own else shape
    size = int(np.prod(frame_shape)) * dtype.itemsize
    return rng.integers(0, 256, size, np.uint8).view(dtype).reshape(frame_shape)

hashes = []
for n in range(cfg["count"]):
    data = frame(n)
    meta = b"m%d" % n if cfg["meta_size"] and n % 2 else b""
    seq = w.write(data, 30, meta=meta)
    hashes.append([seq, data.nbytes, f"{fnv1a64(data.tobytes()):016x}"])
send({"hashes": hashes})
if cfg["then"] == "until_blocked":
    try:
        while True:
            w.write(frame(0), 0.5)
    except shmring.RingTimeout:
        send("blocked")
    w.write(frame(0), 30)
    send("unblocked")
elif cfg["then"] == "wait":
    sys.stdin.readline()  # "close" (or SIGKILL here)
w.close()
send("closed")
"""
)

# A Python process the test drives step by step (one JSON command a line on stdin): it
# creates the ring (or, with create false, attaches to it as one more writer), then writes
# frames of 64 random bytes, attaches a second writer in the same process, gives back a
# claim of that second writer (a skip, the ring being sequenced), publishes a gap of
# GAP frames (RingWriter.skip), holds a claim of its own (to be killed holding it), or closes
# everything.
GAP = 1000  # the frames a STEPPED writer's "gap" stands for
STEPPED = (
    PRELUDE
    + f"GAP = {GAP}\n"
    + r"""
if cfg["create"]:
    w = shmring.RingWriter.create(
        cfg["name"], (64,), np.uint8, slots=8, max_writers=3, policy=cfg["policy"]
    )
else:
    w = shmring.RingWriter.attach(cfg["name"], timeout=30)
send("ready")
rng = np.random.default_rng(11)
second = None
for line in sys.stdin:
    command = json.loads(line)
    if command == "close":
        break
    if command == "wait_for_reader":
        w.wait_for_readers(1, timeout=30)
        send("joined")
    elif command == "write":
        data = rng.integers(0, 256, 64, np.uint8)
        send({"frame": [w.write(data, 30), data.nbytes, f"{fnv1a64(data.tobytes()):016x}"]})
    elif command == "attach":
        second = shmring.RingWriter.attach(cfg["name"], timeout=30)
        send("attached")
    elif command == "abandon":
        try:
            with second.claim(30):
                raise KeyError("abandoned")
        except KeyError:
            send("abandoned")
    elif command == "gap":
        send({"gap": w.skip(GAP, 30)})
    elif command == "hold":
        w.claim(30).__enter__()
        send("holding")
if second is not None:
    second.close()
w.close()
send("closed")
"""
)


@dataclass
class Child:
    """A Python script in its own process (`sys.executable -c`) and its message channel."""

    proc: subprocess.Popen[bytes]
    chan: FdChan = field(init=False)

    def __post_init__(self) -> None:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.chan = FdChan(self.proc.stdout.fileno(), self.proc.stdin.fileno())
        expect(self.chan, "ready")


@dataclass
class Writer(Child):
    """A WRITER process."""

    name: str = ""

    def hashes(self) -> list[tuple[int, int, str]]:
        return [tuple(row) for row in expect(self.chan, "hashes")["hashes"]]

    def finish(self) -> None:
        """Let a writer in `then="wait"` close its ring, and check that it exited cleanly."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.chan.send("close")
        assert self.proc.wait(WAIT) == 0


class Stepped(Child):
    """A STEPPED process."""

    def step(self, command: str, reply: str) -> Any:
        self.chan.send(command)
        return expect(self.chan, reply)

    def write(self) -> tuple[int, int, str]:
        seq, size, digest = self.step("write", "frame")["frame"]
        return seq, size, digest

    def finish(self) -> None:
        self.step("close", "closed")
        assert self.proc.wait(WAIT) == 0


@pytest.fixture
def start_child() -> Iterator[Callable[[str, dict[str, Any]], subprocess.Popen[bytes]]]:
    """Start a script with its configuration; every process started is gone afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(script: str, config: dict[str, Any]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        STARTED_PIDS.add(proc.pid)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def start_writer(start_child: Any) -> Callable[..., Writer]:
    def start(
        count: int,
        readers: int = 1,
        then: str = "close",
        shape: tuple[int, ...] = (64,),
        dtype: str = "u1",
        slots: int = 8,
        policy: str = "block",
        variable: bool = False,
        meta_size: int = 0,
    ) -> Writer:
        name = unique_name("cread")
        config = dict(
            name=name, count=count, readers=readers, then=then, shape=shape, dtype=dtype,
            slots=slots, policy=policy, variable=variable, meta_size=meta_size,
            max_readers=max(readers, 2),
        )  # fmt: skip
        return Writer(start_child(WRITER, config), name)

    return start


@pytest.fixture
def start_stepped(start_child: Any) -> Callable[..., Stepped]:
    def start(name: str, create: bool = True, policy: str = "block") -> Stepped:
        return Stepped(start_child(STEPPED, dict(name=name, create=create, policy=policy)))

    return start


def _build(directory: Path, cflags: str, ldflags: str = "") -> Path:
    subprocess.run(
        ["make", "-s", "-C", str(EXAMPLE), f"BUILD={directory}", f"CFLAGS={cflags}"]
        + ([f"LDFLAGS={ldflags}"] if ldflags else []),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return directory / "shmring-read"


@pytest.fixture(scope="module")
def c_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("c_reader"), "-O2 -g -Werror")


@pytest.fixture(scope="module")
def sanitized_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C reader built with ASan and UBSan; skipped where their runtime is missing."""
    directory = tmp_path_factory.mktemp("c_reader_asan")
    probe = directory / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    built = subprocess.run(
        ["cc", SANITIZE, "-o", str(directory / "probe"), str(probe)], capture_output=True
    )
    if built.returncode != 0 or subprocess.run([str(directory / "probe")]).returncode != 0:
        pytest.skip("the address/undefined sanitizer runtime is not installed")
    return _build(directory, SANITIZER_CFLAGS + " -Werror", SANITIZE)


@pytest.fixture(params=["plain", "sanitized"])
def any_reader(request: pytest.FixtureRequest) -> Path:
    return Path(
        request.getfixturevalue("c_reader" if request.param == "plain" else "sanitized_reader")
    )


_READERS: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _end_started_readers() -> Iterator[None]:
    """Each shmring-read a test started (_start) is killed and reaped after it, if a failed
    step left it running."""
    yield
    end_started(_READERS)


def _start(
    binary: Path, name: str, count: int, *options: str, **popen: Any
) -> subprocess.Popen[str]:
    popen.setdefault("stdout", subprocess.PIPE)
    proc = subprocess.Popen(
        [str(binary), *options, name, str(count)], stderr=subprocess.PIPE, text=True, **popen
    )
    STARTED_PIDS.add(proc.pid)
    _READERS.append(proc)
    return proc


def _run(proc: subprocess.Popen[str], timeout: float = WAIT) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"shmring-read did not exit in {timeout} s; stderr: {err}") from None
    assert "Sanitizer" not in err and "runtime error" not in err, err
    return proc.returncode, out, err


def _lines(out: str) -> list[tuple[int, int, str]]:
    rows = []
    for line in out.splitlines():
        match = LINE.fullmatch(line)
        assert match, f"not a frame line: {line!r}"
        rows.append((int(match[1]), int(match[2]), match[3]))
    return rows


def _fnv1a64(data: bytes) -> str:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until `condition()` holds: what another process does, seen from here."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        time.sleep(0.005)


def _word(name: str, offset: int) -> int:
    """The u64 at `offset` in ring `name`'s segment file, as it is now."""
    with open(seg_path(name), "rb") as f:
        value: int = struct.unpack("<Q", os.pread(f.fileno(), 8, offset))[0]
    return value


def _geometry_of(name: str) -> L.Geometry:
    with open(seg_path(name), "rb") as f:
        return L.Geometry.unpack(f.read(L.FIXED_HEADER_BYTES), name)


def _control(name: str, word: int) -> int:
    return _word(name, L.control_word_offset(word))


def _set_control(name: str, word: int, value: int) -> None:
    with open(seg_path(name), "r+b") as f:
        os.pwrite(f.fileno(), struct.pack("<Q", value), L.control_word_offset(word))


def _reader_word(name: str, index: int, word: int) -> int:
    return _word(name, _geometry_of(name).readers_offset + index * L.CACHE_LINE + 8 * word)


def _descriptor(name: str, seq: int) -> tuple[int, int]:
    """Frame `seq`'s descriptor as the segment file holds it now: (seq, flags)."""
    g = _geometry_of(name)
    offset = g.descriptors_offset + seq % g.slots * g.descriptor_bytes
    return _word(name, offset + 8 * L.D_SEQ), _word(name, offset + 8 * L.D_FLAGS)


# ---- reading what Python writes ----------------------------------------------------------


def test_reads_a_thousand_frames_with_pythons_hashes(c_reader: Path, start_writer: Any) -> None:
    writer = start_writer(count=1000)
    reader = _start(c_reader, writer.name, 1000)
    published = writer.hashes()
    code, out, err = _run(reader)
    assert code == 0, err
    assert _lines(out) == published
    assert [seq for seq, _, _ in published] == list(range(1000))
    writer.finish()


def test_own_shapes_metadata_and_sanitizers(sanitized_reader: Path, start_writer: Any) -> None:
    writer = start_writer(
        count=200, shape=(6, 5), dtype="<u2", slots=4, variable=True, meta_size=16
    )
    reader = _start(sanitized_reader, writer.name, 200)
    published = writer.hashes()
    code, out, err = _run(reader)
    assert code == 0, err
    assert _lines(out) == published
    assert {size for _, size, _ in published} == {60, 40, 24}  # ring-shaped and two own
    writer.finish()


def test_beside_a_python_reader_both_get_every_frame(c_reader: Path, start_writer: Any) -> None:
    writer = start_writer(count=500, readers=2, shape=(16,), dtype="<f4")
    with shmring.RingReader.attach(writer.name, timeout=WAIT) as python_reader:
        reader = _start(c_reader, writer.name, 500)
        got = []
        for _ in range(500):
            with python_reader.read(WAIT) as frame:
                got.append((frame.seq, frame.array.nbytes, _fnv1a64(frame.array.tobytes())))
        code, out, err = _run(reader)
    published = writer.hashes()
    assert code == 0, err
    assert _lines(out) == published == got
    writer.finish()


def test_overwrite_ring(any_reader: Path, start_writer: Any) -> None:
    writer = start_writer(count=300, then="wait", slots=8, policy="overwrite")
    reader = _start(any_reader, writer.name, 5)
    published = {row[0]: row for row in writer.hashes()}
    code, out, err = _run(reader)
    assert code == 0, err
    lines = _lines(out)
    assert len(lines) == 5 and all(published[line[0]] == line for line in lines)
    assert [line[0] for line in lines] == sorted({line[0] for line in lines})
    writer.finish()


def test_overwrite_ring_of_two_writers(c_reader: Path) -> None:
    """Two writer processes sequence their frames into one overwrite ring, without the lock;
    the C reader takes frames lock-free, passing over positions that later numbers took or
    that a writer owns: every frame it prints is one a writer wrote, whole, each writer's in
    order, numbers increasing."""
    name, pat, count = unique_name("cow2"), Pattern(SMALL), 20_000
    frames = {
        _fnv1a64(pat.make(make_tag(writer_id, n)).tobytes()): (writer_id, n)
        for writer_id in (0, 1)
        for n in range(count)
    }
    with shmring.RingWriter.create(name, SMALL, np.uint8, policy="overwrite"):
        writers = [
            helpers.Child("spawn", "tagged_overwrite_writer", name=name, writer_id=i, count=count)
            for i in (0, 1)
        ]
        try:
            for writer in writers:
                writer.expect("ready")
            reader = _start(c_reader, name, 100)
            _until(lambda: len(shmring.inspect_ring(name).readers) == 1, "the C reader joined")
            assert shmring.inspect_ring(name).writer_mode == "shared"
            for writer in writers:
                writer.send("go")
            for writer in writers:
                writer.expect("seqs")
                writer.send("close")  # the end of the stream, if it took fewer than 100
            code, out, err = _run(reader)
        finally:
            for writer in writers:
                writer.close()
    assert code in (0, EXIT_END), err
    lines = _lines(out)
    assert lines and all(nbytes == len(pat.make(0).tobytes()) for _, nbytes, _ in lines)
    taken = [frames[digest] for _, _, digest in lines]  # KeyError: a torn frame
    for writer_id in (0, 1):
        numbers = [n for w, n in taken if w == writer_id]
        assert numbers == sorted(set(numbers))
    assert [seq for seq, _, _ in lines] == sorted({seq for seq, _, _ in lines})


def test_overwrite_frames_are_taken_without_the_header_lock(
    c_reader: Path, start_stepped: Any
) -> None:
    """The pin is a hazard pointer: the reader takes frames while another process holds the
    header lock (it needs the lock only to join and leave)."""
    name = unique_name("cpin")
    writer = start_stepped(name, policy="overwrite")
    reader = _start(c_reader, name, 6)
    writer.step("wait_for_reader", "joined")
    published = [writer.write()]  # the creator joins as a writer (that takes the lock)
    fd = os.open(seg_path(name), os.O_RDWR | os.O_CLOEXEC)
    try:
        assert try_lock_range(fd, L.LOCK_HEADER)
        published += [writer.write() for _ in range(5)]  # the lone writer takes no lock
        (info,) = shmring.inspect_ring(name).readers
        _until(lambda: _reader_word(name, info.index, L.R_RELEASE) == 6, "six frames taken")
        assert reader.poll() is None  # done reading, waiting for the lock to leave
        unlock_range(fd, L.LOCK_HEADER)
    finally:
        os.close(fd)
    code, out, err = _run(reader)
    assert code == 0, err
    assert _lines(out) == published
    writer.finish()


# ---- ends: end of stream, a dead writer, a dead reader, Ctrl-C ---------------------------


def test_end_of_stream_before_count(c_reader: Path, start_writer: Any) -> None:
    writer = start_writer(count=3)
    reader = _start(c_reader, writer.name, 10)
    published = writer.hashes()
    writer.finish()
    code, out, err = _run(reader)
    assert code == EXIT_END, err
    assert "end of stream" in err
    assert _lines(out) == published


def test_writer_killed_reported_within_1s_beside_python(c_reader: Path, start_writer: Any) -> None:
    writer = start_writer(count=3, readers=2, then="wait")
    with shmring.RingReader.attach(writer.name, timeout=WAIT) as python_reader:
        reader = _start(c_reader, writer.name, 10)
        published = writer.hashes()
        writer.proc.kill()
        killed = time.monotonic()
        code, out, err = _run(reader)
        noticed = time.monotonic() - killed
        assert code == EXIT_GONE, err
        assert "every writer died" in err
        assert noticed < DETECT_WITHIN, f"noticed after {noticed:.2f} s"
        assert _lines(out) == published
        for seq, _, _ in published:
            with python_reader.read(WAIT) as frame:
                assert frame.seq == seq
        with pytest.raises(shmring.WriterGone):
            python_reader.read(WAIT)


def test_last_one_out_unlinks_an_orphaned_ring(c_reader: Path, start_writer: Any) -> None:
    writer = start_writer(count=1, then="wait")
    reader = _start(c_reader, writer.name, 2)
    writer.hashes()
    writer.proc.kill()
    code, _, err = _run(reader)
    assert code == EXIT_GONE, err
    assert not os.path.exists(seg_path(writer.name))  # its creator is dead: the reader unlinked


def test_a_read_lock_does_not_keep_a_dead_writer_alive(c_reader: Path, start_writer: Any) -> None:
    """Liveness asks for write locks only: a read lock, which anyone who can read the file can
    take, on a dead writer's byte does not keep the C reader waiting for it."""
    writer = start_writer(count=1, then="wait")
    reader = _start(c_reader, writer.name, 2)
    writer.hashes()
    (joined,) = shmring.inspect_ring(writer.name).writers
    reader.send_signal(signal.SIGSTOP)  # so that it looks only once the read lock is there
    writer.proc.kill()
    writer.proc.wait(WAIT)
    fd = os.open(seg_path(writer.name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        byte = L.LOCK_WRITER_BASE + joined.index
        fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, byte, 1, 0))
        reader.send_signal(signal.SIGCONT)
        code, _, err = _run(reader)
    finally:
        os.close(fd)
    assert code == EXIT_GONE, err


def test_reader_killed_holding_a_frame_frees_the_writer_within_1s(
    c_reader: Path, start_writer: Any
) -> None:
    writer = start_writer(count=0, then="until_blocked", slots=4)
    # The reader writes each frame's line while it holds the frame: with its stdout a small
    # pipe nobody reads, it stops inside a frame, and the block writer fills the ring.
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
        reader = _start(c_reader, writer.name, 1 << 40, stdout=write_end)
        os.close(write_end)
        write_end = -1
        writer.hashes()
        expect(writer.chan, "blocked")
        (held,) = shmring.inspect_ring(writer.name).readers
        assert held.pid == reader.pid and held.alive and held.lag == 4
        reader.kill()
        killed = time.monotonic()
        expect(writer.chan, "unblocked")
        assert time.monotonic() - killed < DETECT_WITHIN
        reader.wait(WAIT)
        writer.finish()
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_sigint_leaves_the_ring(c_reader: Path, start_writer: Any) -> None:
    writer = start_writer(count=0, then="wait")
    reader = _start(c_reader, writer.name, 5)
    writer.hashes()  # sent once the reader joined
    reader.send_signal(signal.SIGINT)
    code, out, err = _run(reader)
    assert code == 128 + signal.SIGINT, err
    assert "interrupted" in err and out == ""
    assert shmring.inspect_ring(writer.name).readers == []  # left, not merely dead
    assert _control(writer.name, L.C_READER_WAITERS) == 0
    writer.finish()


def test_a_closed_stdout_never_gets_the_ring(c_reader: Path, start_writer: Any) -> None:
    """With fd 1 closed by the caller, the ring's file was opened as fd 1, and the frame
    lines were written into its header: the writer then died with RingCorrupted. Now the
    standard descriptors a caller closed are opened on /dev/null, and the ring stays sound
    (the same code keeps fd 0 and 2 from the ring)."""
    writer = start_writer(count=200)
    reader = subprocess.Popen(
        ["sh", "-c", 'exec "$0" "$@" >&-', str(c_reader), writer.name, "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED_PIDS.add(reader.pid)
    _READERS.append(reader)
    code, out, err = _run(reader)
    assert (code, out) == (0, ""), err
    assert len(writer.hashes()) == 200
    writer.finish()  # (RingCorrupted before: the lines were in its header)


def test_a_ring_truncated_while_the_reader_sleeps_is_reported_not_a_bus_error(
    c_reader: Path, start_stepped: Any
) -> None:
    """Truncated to nothing while the reader slept on the futex: its next look at the
    control block faulted (SIGBUS, exit 135). The size is checked after every wake-up."""
    name = unique_name("ctrunc")
    stepped = start_stepped(name)
    reader = _start(c_reader, name, 5)
    _until(lambda: _control(name, L.C_READER_WAITERS) == 1, "the reader counts itself")
    helpers.wait_until_process_asleep_in_futex(reader.pid)  # (then in its sleep)
    os.truncate(seg_path(name), 0)
    code, _, err = _run(reader)
    assert code == 6 and "no longer" in err, (code, err)
    stepped.proc.kill()
    stepped.proc.wait(WAIT)
    os.unlink(seg_path(name))  # (a ring cut to nothing: nobody can close it any more)


# ---- several writers: a sequenced ring, skips ---------------------------------------------


def test_a_claim_given_back_is_skipped_and_counted_dropped(
    sanitized_reader: Path, start_stepped: Any
) -> None:
    name = unique_name("cskip")
    writer = start_stepped(name)
    reader = _start(sanitized_reader, name, 5)
    writer.step("wait_for_reader", "joined")
    published = [writer.write()]  # the creator joins as a writer: exclusive mode
    writer.step("attach", "attached")  # a second writer: the ring is sequenced
    assert _control(name, L.C_FLAGS) & L.F_SEQUENCED
    published.append(writer.write())
    writer.step("abandon", "abandoned")  # number 2: published as a skip
    published += [writer.write(), writer.write()]
    assert [seq for seq, _, _ in published] == [0, 1, 3, 4]
    assert _descriptor(name, 2) == (2, L.DF_SKIP)
    _until(lambda: shmring.inspect_ring(name).readers[0].dropped == 1, "the skip counted")
    writer.finish()  # the last writer out ends the stream
    code, out, err = _run(reader)
    assert code == EXIT_END, err
    assert _lines(out) == published


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_a_gap_counts_its_frames_dropped(c_reader: Path, start_stepped: Any, policy: str) -> None:
    """A gap a writer published (RingWriter.skip): one skip descriptor carrying its count
    (since 2.2), which the C reader counts as that many dropped frames."""
    name = unique_name("cgap")
    writer = start_stepped(name, policy=policy)
    reader = _start(c_reader, name, 3)
    writer.step("wait_for_reader", "joined")
    published = [writer.write()]
    gap = writer.step("gap", "gap")["gap"]
    published.append(writer.write())
    assert (published[0][0], gap, published[1][0]) == (0, 1, 2)
    assert _descriptor(name, gap) == (gap, L.DF_SKIP | GAP << L.SKIP_COUNT_SHIFT)
    _until(lambda: shmring.inspect_ring(name).readers[0].dropped == GAP, "the gap counted")
    published.append(writer.write())  # the reader's third frame: it exits
    code, out, err = _run(reader)
    assert code == 0, err
    assert _lines(out) == published
    writer.finish()


def test_a_writer_killed_holding_a_number_is_settled_by_the_c_reader(
    c_reader: Path, start_stepped: Any
) -> None:
    name = unique_name("csettle")
    writer = start_stepped(name)
    reader = _start(c_reader, name, 3)
    writer.step("wait_for_reader", "joined")
    published = [writer.write()]
    holder = start_stepped(name, create=False)  # joins: the ring is sequenced
    holder.step("hold", "holding")  # claims number 1 and never publishes it
    assert _control(name, L.C_FLAGS) & L.F_SEQUENCED
    published += [writer.write(), writer.write()]
    assert [seq for seq, _, _ in published] == [0, 2, 3]
    assert _control(name, L.C_HEAD) == 1  # head waits at the claimed number
    holder.proc.kill()
    killed = time.monotonic()
    code, out, err = _run(reader)  # nobody else looks: the C reader repairs
    noticed = time.monotonic() - killed
    assert code == 0, err
    assert noticed < DETECT_WITHIN, f"settled after {noticed:.2f} s"
    assert _lines(out) == published
    assert _descriptor(name, 1) == (1, L.DF_SKIP)
    assert _control(name, L.C_HEAD) == 4
    writer.finish()


def test_an_interrupted_switch_is_left_to_shmring(c_reader: Path, start_stepped: Any) -> None:
    """A block ring in shared mode without SEQUENCED, and a lock holder that died (as if a
    writer died switching the ring to shared mode): the C reader, repairing, changes nothing
    and keeps the lock's mark; the Python writer's next frame finishes the repair."""
    name = unique_name("cswitch")
    writer = start_stepped(name)
    reader = _start(c_reader, name, 2)
    writer.step("wait_for_reader", "joined")
    published = [writer.write()]
    free_count = _control(name, L.C_FREE_COUNT)
    dead_token = 12345
    _set_control(name, L.C_WRITER_MODE, L.MODE_SHARED)
    _set_control(name, L.C_LOCK_OWNER, dead_token)  # the header lock's byte is free
    _until(lambda: _control(name, L.C_LOCK_OWNER) != dead_token, "the C reader repaired")
    assert _control(name, L.C_LOCK_OWNER) != 0  # its mark left for shmring to repair
    assert _control(name, L.C_WRITER_MODE) == L.MODE_SHARED
    assert not _control(name, L.C_FLAGS) & L.F_SEQUENCED
    assert _control(name, L.C_FREE_COUNT) == free_count
    published.append(writer.write())  # the writer repairs: one writer, exclusive again
    code, out, err = _run(reader)
    assert code == 0, err
    assert _lines(out) == published
    assert _control(name, L.C_WRITER_MODE) == L.MODE_EXCLUSIVE
    assert _control(name, L.C_LOCK_OWNER) == 0
    writer.finish()


@pytest.mark.parametrize("end", ["close", "kill"])
def test_a_creator_that_never_wrote(c_reader: Path, start_stepped: Any, end: str) -> None:
    """Not a writer until it writes: closing ends the stream; dying leaves nobody to end it."""
    name = unique_name("ccreator")
    creator = start_stepped(name)
    reader = _start(c_reader, name, 1)
    creator.step("wait_for_reader", "joined")
    assert not _control(name, L.C_FLAGS) & L.F_STARTED
    if end == "close":
        creator.finish()
        code, out, err = _run(reader)
        assert code == EXIT_END and "end of stream" in err and out == "", err
        return
    creator.proc.kill()
    killed = time.monotonic()
    code, out, err = _run(reader)
    assert code == EXIT_GONE and "creator died" in err and out == "", err
    assert time.monotonic() - killed < DETECT_WITHIN
    assert not os.path.exists(seg_path(name))  # the last one out unlinked it


# ---- refusing what it cannot read --------------------------------------------------------


def _geometry(**changes: Any) -> L.Geometry:
    fields: dict[str, Any] = dict(
        shape=(4, 4),
        dtype=np.dtype(np.uint8),
        slots=4,
        buffers=4,
        policy=L.POLICY_BLOCK,
        max_readers=2,
        max_writers=1,
        meta_size=0,
    )
    fields.update(changes)
    return L.Geometry(**fields)


def _resealed(header: bytearray) -> bytes:
    struct.pack_into("<Q", header, L.CHECKSUM_OFFSET, zlib.crc32(header[: L.CHECKSUM_OFFSET]))
    return bytes(header)


def _patched(offset: int, fmt: str, value: Any, seal: bool = True) -> bytes:
    header = bytearray(_geometry().pack())
    struct.pack_into(fmt, header, offset, value)
    return _resealed(header) if seal else bytes(header)


VALID_SIZE = _geometry().segment_bytes
REFUSALS = {
    "older_version": (
        _patched(8, "<H", L.VERSION_MAJOR - 1),
        VALID_SIZE,
        f"format version {L.VERSION_MAJOR - 1}.{L.VERSION_MINOR}",
    ),
    "newer_version": (
        _patched(8, "<H", L.VERSION_MAJOR + 1),
        VALID_SIZE,
        f"format version {L.VERSION_MAJOR + 1}.{L.VERSION_MINOR}",
    ),
    "magic": (_patched(0, "8s", b"NOTARING"), VALID_SIZE, "bad magic"),
    "checksum": (_patched(28, "<I", 5, seal=False), VALID_SIZE, "checksum mismatch"),
    "offset": (_patched(208, "<Q", 1 << 40), VALID_SIZE, "data_offset"),
    "ndim": (_patched(48, "<I", 9), VALID_SIZE, "ndim 9"),
    "dtype": (_patched(56, "16s", b"|O8"), VALID_SIZE, "dtype '|O8'"),
    "short": (_geometry().pack()[:100], 100, "smaller than a shmring header"),
    "truncated": (_geometry().pack(), VALID_SIZE - 64, "truncated or resized"),
    "sparse": (
        _geometry().pack(),
        VALID_SIZE,
        f"only 4096 of its {VALID_SIZE} bytes are allocated",
    ),
    "block_buffers": (
        _geometry(buffers=6).pack(),
        _geometry(buffers=6).segment_bytes,
        "not 6 buffers and 4 slots",
    ),
    "block_fewer_buffers": (
        _geometry(buffers=2).pack(),
        _geometry(buffers=2).segment_bytes,
        "not 2 buffers and 4 slots",
    ),
    "overwrite_fewer_buffers": (
        _geometry(buffers=3, policy=L.POLICY_OVERWRITE).pack(),
        _geometry(buffers=3, policy=L.POLICY_OVERWRITE).segment_bytes,
        "not 3 buffers and 4 slots",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refuses_other_versions_and_geometries(any_reader: Path, case: str) -> None:
    header, size, message = REFUSALS[case]
    name = unique_name("crefuse")
    path = seg_path(name)
    with open(path, "wb") as f:
        f.write(header[:size])
        f.truncate(size)
    try:
        code, out, err = _run(_start(any_reader, name, 1))
    finally:
        os.unlink(path)
    assert code == EXIT_REFUSED, err
    assert message in err and out == ""


def test_refuses_a_fifo_planted_under_the_name_without_blocking(c_reader: Path) -> None:
    """POSIX leaves an O_RDWR open of a FIFO undefined (Linux does not block it; a system
    may): the reader opens without blocking and refuses what is not a regular file, saying
    so."""
    name = unique_name("cfifo")
    os.mkfifo(seg_path(name), 0o600)
    try:
        code, out, err = _run(_start(c_reader, name, 1))
    finally:
        os.unlink(seg_path(name))
    assert code == EXIT_REFUSED and out == "", err
    assert "is not a regular file" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a ring to another user")
def test_refuses_another_users_ring_unless_told_its_owner(
    c_reader: Path, start_writer: Any
) -> None:
    writer = start_writer(count=2)
    os.chown(seg_path(writer.name), NOBODY, -1)  # as if nobody had planted it
    code, out, err = _run(_start(c_reader, writer.name, 2))
    assert code == EXIT_REFUSED and out == "", err
    assert f"belongs to uid {NOBODY}" in err and f"pass --owner {NOBODY}" in err
    for owner in ("0", str(os.geteuid())):  # --owner trusts that one user only
        code, _, err = _run(_start(c_reader, writer.name, 2, "--owner", owner))
        assert code == EXIT_REFUSED and f"belongs to uid {NOBODY}" in err
    reader = _start(c_reader, writer.name, 2, "--no-hash", "--owner", str(NOBODY))
    published = writer.hashes()
    code, out, err = _run(reader)
    assert code == 0, err
    assert out.splitlines() == [f"seq={seq} bytes={size}" for seq, size, _ in published]


def test_refuses_a_missing_ring_and_bad_arguments(c_reader: Path) -> None:
    code, _, err = _run(_start(c_reader, unique_name("absent"), 1))
    assert code == EXIT_REFUSED and "does not exist" in err
    for argv in (
        ["only-a-name"],
        ["../x", "1"],
        ["name", "0"],
        ["name", "-3"],
        ["name", "x"],
        ["--owner", "name", "1"],
        ["--owner", "-1", "name", "1"],
        ["--owner"],
        ["--hash", "name", "1"],
    ):
        code, _, err = _run(
            subprocess.Popen([str(c_reader), *argv], stderr=subprocess.PIPE, text=True)
        )
        assert code == 2 and "usage: shmring-read" in err


# ---- one layout: the C header, FORMAT.md and _layout.py agree ----------------------------


def _c_constants() -> dict[str, str]:
    text = LAYOUT_H.read_text()
    return dict(re.findall(r"^#define SHMRING_(\w+) (.+?)\s*(?:/\*.*)?$", text, re.MULTILINE))


def _c_offsets() -> dict[str, dict[str, int]]:
    text = LAYOUT_H.read_text()
    offsets: dict[str, dict[str, int]] = {}
    pattern = r"_Static_assert\(offsetof\(struct shmring_(\w+), (\w+)\) == (\d+),"
    for struct_name, member, offset in re.findall(pattern, text):
        offsets.setdefault(struct_name, {})[member] = int(offset)
    return offsets


def test_layout_header_constants_match_layout_py() -> None:
    c = _c_constants()
    magic = "".join(f"\\x{b:02x}" if b >= 0x80 else chr(b) for b in L.MAGIC)
    assert c["MAGIC"] == f'"{magic}"'
    expected = {
        "VERSION_MAJOR": L.VERSION_MAJOR, "VERSION_MINOR": L.VERSION_MINOR,
        "FIXED_HEADER_BYTES": L.FIXED_HEADER_BYTES, "CHECKSUM_OFFSET": L.CHECKSUM_OFFSET,
        "CONTROL_OFFSET": L.CONTROL_OFFSET, "CONTROL_BYTES": L.CONTROL_BYTES,
        "DESCRIPTORS_OFFSET": L.CONTROL_OFFSET + L.CONTROL_BYTES, "CACHE_LINE": L.CACHE_LINE,
        "RECORD_BYTES": L.RECORD_WORDS * 8, "MAX_NDIM": L.MAX_NDIM,
        "MAX_READERS": L.MAX_READERS, "MAX_WRITERS": L.MAX_WRITERS, "MAX_META": L.MAX_META,
        "MAX_GROUP_NAME": L.MAX_GROUP_NAME, "POLICY_BLOCK": L.POLICY_BLOCK,
        "POLICY_OVERWRITE": L.POLICY_OVERWRITE, "F_CLOSED": L.F_CLOSED,
        "F_STARTED": L.F_STARTED, "F_SEQUENCED": L.F_SEQUENCED, "DF_SKIP": L.DF_SKIP,
        "MODE_EXCLUSIVE": L.MODE_EXCLUSIVE, "MODE_SHARED": L.MODE_SHARED,
        "D_META_BYTE_OFFSET": L.D_META_BYTE_OFFSET, "DF_EVICTED": L.DF_EVICTED,
        "DF_OWN_SHAPE": L.DF_OWN_SHAPE, "META_LEN_SHIFT": L.META_LEN_SHIFT,
        "STATE_FREE": L.STATE_FREE, "STATE_ACTIVE": L.STATE_ACTIVE,
        "LOCK_HEADER": L.LOCK_HEADER, "LOCK_CREATOR": L.LOCK_CREATOR,
        "LOCK_WRITER_BASE": L.LOCK_WRITER_BASE, "LOCK_READER_BASE": L.LOCK_READER_BASE,
        "MAX_NAME": 64,
    }  # fmt: skip
    for key, value in expected.items():
        assert int(c[key]) == value, key
    assert c["NONE"] == "UINT64_MAX" and L.NONE == (1 << 64) - 1
    assert c["SEQ_LIMIT"] == "((uint64_t)1 << 62)" and L.SEQ_LIMIT == 1 << 62


def test_layout_header_offsets_match_layout_py() -> None:
    offsets = _c_offsets()
    geometry = _geometry(shape=(3, 5, 7), slots=6, buffers=5, max_readers=9, meta_size=24)
    geometry = L.Geometry(**{**geometry.__dict__, "creator_pid": 4321, "created_ns": 987})
    packed = geometry.pack()
    sizes = {"magic": "8s", "version_major": "<H", "version_minor": "<H", "dtype": "16s"}
    u32 = "header_bytes policy slots buffers max_readers max_writers meta_size ndim itemsize"
    values = {
        "magic": L.MAGIC, "version_major": L.VERSION_MAJOR, "version_minor": L.VERSION_MINOR,
        "dtype": geometry.dtype.str.encode().ljust(16, b"\0"), "header_bytes": 256,
        "policy": geometry.policy, "slots": 6, "buffers": 5, "max_readers": 9,
        "max_writers": 1, "meta_size": 24, "ndim": 3, "itemsize": 1, "shape": 3,
        "reserved": 0, "checksum": zlib.crc32(packed[: L.CHECKSUM_OFFSET]),
        "creator_pid": 4321, "created_ns": 987, "control_offset": L.CONTROL_OFFSET,
    }  # fmt: skip
    derived = (
        "segment_bytes buffer_bytes buffer_stride descriptors_offset descriptor_bytes "
        "readers_offset groups_offset writers_offset freelist_offset data_offset pins_offset"
    )
    for member in derived.split():
        values[member] = getattr(geometry, member)
    assert set(offsets["header"]) == set(values)
    for member, offset in offsets["header"].items():
        fmt = sizes.get(member, "<I" if member in u32.split() else "<Q")
        assert struct.unpack_from(fmt, packed, offset)[0] == values[member], member
    prefixes = {
        "control": "C_", "descriptor": "D_", "reader": "R_", "group": "G_", "writer": "W_",
        "pin_line": "PIN_",
    }  # fmt: skip
    for struct_name, prefix in prefixes.items():
        for member, offset in offsets[struct_name].items():
            if prefix + member.upper() == "G_NAME":
                assert offset == L.G_NAME_BYTE_OFFSET
            else:
                assert offset == 8 * getattr(L, prefix + member.upper()), member


def test_layout_header_offsets_match_format_md() -> None:
    offsets = _c_offsets()
    fixed = {row[3]: int(row[0]) for row in format_md_table("## Fixed header")}
    assert fixed == offsets["header"]
    control = {row[2]: int(row[1]) for row in format_md_table("## Control block")}
    assert control == {m: L.CONTROL_OFFSET + o for m, o in offsets["control"].items()}
    descriptor = {row[2]: int(row[1]) for row in format_md_table("## Descriptor")}
    assert descriptor == {**offsets["descriptor"], "meta": L.D_META_BYTE_OFFSET}
    for struct_name in ("reader", "group", "writer", "pin_line"):
        title = "Pin line" if struct_name == "pin_line" else f"{struct_name.capitalize()} record"
        rows = format_md_table(f"### {title}")
        documented = {row[1]: 8 * int(row[0].split("–")[0]) for row in rows}
        assert documented == offsets[struct_name], struct_name
