"""The `shmring` command line, run as a real subprocess (`python -m shmring`) on real rings.

* Rings are made here with RingWriter.create / RingReader.attach; a stale ring is made by a
  child that creates it and is SIGKILLed. Every name is unique to the test, every ring is
  gone when the test ends, and `gc` is always given this test's names, so rings of
  concurrent sessions on the machine are never touched.
* Nothing sleeps to synchronise: children answer messages, subprocesses have timeouts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers import SMALL, WAIT, Child, Waiter, seg_path, unique_name

from shmring import RingReader, RingWriter
from shmring import _layout as L
from shmring._cli import Terminal


def shmring(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """Run the CLI; check its exit code (and, for a failure, its one-line message)."""
    proc = subprocess.run(
        [sys.executable, "-m", "shmring", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert proc.returncode == code, (
        f"shmring {' '.join(args)} exited {proc.returncode}, expected {code}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    if code == 1:
        assert proc.stderr.count("\n") == 1, f"not one line: {proc.stderr!r}"
    return proc


def as_json(*args: str) -> Any:
    return json.loads(shmring(*args, "--json").stdout)


def pick(record: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: record[key] for key in keys}


def line_of(output: str, name: str) -> str:
    """The line of a listing that starts with ring `name`."""
    found = [line for line in output.splitlines() if line.split(maxsplit=1)[:1] == [name]]
    assert len(found) == 1, f"{name} listed {len(found)} times:\n{output}"
    return found[0]


@pytest.fixture
def prefix() -> str:
    """Names of this test's rings start with it: `gc` and `ls` are given f"{prefix}*"."""
    return unique_name("cli")


@pytest.fixture
def stale(prefix: str) -> Iterator[str]:
    """A ring whose creator (its only writer) was SIGKILLed."""
    name = f"{prefix}_stale"
    with Child("spawn", "create_exit", name=name, write=True) as child:
        child.expect("ready")
        child.kill()
        child.wait_dead()
    assert os.path.exists(seg_path(name))
    yield name
    with contextlib.suppress(FileNotFoundError):
        os.unlink(seg_path(name))


@pytest.fixture
def junk(prefix: str) -> Iterator[str]:
    """A file named like a ring that is not one."""
    name = f"{prefix}_junk"
    with open(seg_path(name), "xb") as f:
        f.write(bytes(range(256)) * 16)
    yield name
    with contextlib.suppress(FileNotFoundError):
        os.unlink(seg_path(name))


def test_ls_lists_rings_with_readers_and_marks_stale(prefix: str, stale: str) -> None:
    with (
        RingWriter.create(f"{prefix}_live", (4, 8, 3), np.uint8, slots=4) as w,
        RingReader.attach(w.name, start="oldest") as solo,
        RingReader.attach(w.name, group="workers"),
    ):
        for _ in range(3):
            w.write(np.zeros((4, 8, 3), np.uint8))
        with solo.read(WAIT):
            pass

        out = shmring("ls", "--no-rate").stdout
        live = line_of(out, w.name).split()
        assert live[1:5] == ["4x8x3", "uint8", "block", "4"]
        assert live[-8:] == ["1", "2", "3", "-", "pid", str(os.getpid()), "alive", "ok"]
        assert "  group 'workers': 1 member, cursor 0, lag 3" in out
        assert f"  reader 0 (pid {os.getpid()}, alive): next seq 1, lag 2, dropped 0" in out
        dead = line_of(out, stale)
        assert "  0+1 dead  " in dead and dead.split()[-2:] == ["dead", "STALE"]
        assert "`shmring gc` removes STALE rings" in out

        listing = as_json("ls", f"{prefix}*")
    rings = {ring["name"]: ring for ring in listing["rings"]}
    assert set(rings) == {w.name, stale} and listing["broken"] == []
    assert rings[w.name]["stale"] is False and rings[w.name]["creator_alive"] is True
    assert rings[w.name]["published"] == 3 and rings[w.name]["frames_per_s"] == 0.0
    assert rings[stale]["stale"] is True and rings[stale]["creator_alive"] is False
    assert [writer["alive"] for writer in rings[stale]["writers"]] == [False]


def test_inspect_shows_the_header(prefix: str) -> None:
    with (
        RingWriter.create(prefix, SMALL, np.uint8, slots=4) as w,
        RingReader.attach(w.name, start="oldest") as solo,
        RingReader.attach(w.name, group="workers", start="oldest") as worker,
    ):
        for _ in range(3):
            w.write(np.zeros(SMALL, np.uint8))
        for reader in (solo, worker):
            with reader.read(WAIT):
                pass

        info = as_json("inspect", w.name)
        text = shmring("inspect", w.name).stdout
    assert pick(info, "format_version", "shape", "dtype", "policy", "slots", "meta_size") == {
        "format_version": f"{L.VERSION_MAJOR}.{L.VERSION_MINOR}",
        "shape": [64],
        "dtype": "uint8",
        "policy": "block",
        "slots": 4,
        "meta_size": 0,
    }
    assert pick(info, "published", "tail", "closed", "stale", "creator_pid", "creator_alive") == {
        "published": 3,
        "tail": 0,
        "closed": False,
        "stale": False,
        "creator_pid": os.getpid(),
        "creator_alive": True,
    }
    assert [pick(x, "pid", "alive") for x in info["writers"]] == [
        {"pid": os.getpid(), "alive": True}
    ]
    readers = [pick(x, "group", "next_seq", "lag", "dropped") for x in info["readers"]]
    assert readers == [
        {"group": None, "next_seq": 1, "lag": 2, "dropped": 0},
        {"group": "workers", "next_seq": None, "lag": None, "dropped": 0},
    ]
    assert info["groups"] == [{"name": "workers", "cursor": 1, "members": 1, "lag": 2}]
    assert [s["state"] for s in info["slot_states"]] == ["queued"] * 3 + ["empty"]
    assert [s["seq"] for s in info["slot_states"]] == [0, 1, 2, None]
    assert info["problems"] == []

    assert f"ring {prefix} ({seg_path(prefix)})" in text
    for want in (
        f"format version  {L.VERSION_MAJOR}.{L.VERSION_MINOR}",
        "head            3",
        "tail            0",
    ):
        assert want in text
    assert "  group 'workers': 1 member, cursor 1, lag 2" in text
    assert "slots (4)\n  POSITION  SEQ  BUFFER  STATE  " in text


def test_inspect_and_rm_explain_what_is_wrong(prefix: str) -> None:
    for command in ("inspect", "rm"):
        err = shmring(command, prefix, code=1).stderr
        assert f"no ring named {prefix!r}" in err and "shmring ls" in err
        shmring(command, "no/slash", code=2)


def test_rm_refuses_a_live_ring_and_force_removes_it(prefix: str) -> None:
    with RingWriter.create(prefix, SMALL, np.uint8) as w:
        err = shmring("rm", w.name, code=1).stderr
        assert "in use" in err and f"`shmring rm --force {w.name}`" in err
        assert "force=True" not in err
        assert os.path.exists(seg_path(w.name))

        assert shmring("rm", "--force", w.name).stdout == f"removed {w.name}\n"
        assert not os.path.exists(seg_path(w.name))
        w.write(np.zeros(SMALL, np.uint8))  # its mapping stays valid


@contextlib.contextmanager
def header_damaged(name: str, offset: int = L.CHECKSUM_OFFSET) -> Iterator[None]:
    """Ring `name` with the byte at `offset` of its fixed header flipped (by default its
    checksum: a damaged ring; 0, its magic: no ring at all), put right at exit."""
    with open(seg_path(name), "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
        f.flush()
        try:
            yield
        finally:
            f.seek(offset)
            f.write(byte)


@pytest.mark.parametrize(("damage", "offset"), [("damaged", L.CHECKSUM_OFFSET), ("not-a-ring", 0)])
@pytest.mark.parametrize("holder", ["creator", "reader"])
def test_rm_refuses_a_damaged_ring_that_is_in_use(
    prefix: str, stale: str, holder: str, damage: str, offset: int
) -> None:
    """A damaged ring has no snapshot to show who uses it; its liveness locks do. So do
    those of a live ring whose magic was overwritten (rm removed it: "no ring")."""
    with contextlib.ExitStack() as stack:
        if holder == "creator":
            name = stack.enter_context(RingWriter.create(prefix, SMALL, np.uint8)).name
        else:  # the only participant left of a ring whose creator died
            name = stack.enter_context(RingReader.attach(stale)).name
        with header_damaged(name, offset):
            assert as_json("ls", "--no-rate", name)["broken"][0]["kind"] == damage
            err = shmring("rm", name, code=1).stderr
            assert f"ring {name!r} is in use (its creator, a writer or a reader holds it" in err
            assert os.path.exists(seg_path(name))


def created_again_between(
    stale: str, module: str, step: str, command: str
) -> subprocess.CompletedProcess[str]:
    """Run `shmring COMMAND STALE` in a child in which, right after the command's call of
    `shmring.MODULE.STEP` (its look at the ring), a new pipeline creates ring `stale` again;
    it prints whether the name exists afterwards."""
    child = (
        "import os, sys, warnings\n"
        "import numpy as np\n"
        f"from shmring import RingWriter, _cli, {module} as looked\n"
        "warnings.simplefilter('ignore')  # create's StaleRingWarning\n"
        f"step = looked.{step}\n"
        "created = []\n"
        "def then_created_again(*args):\n"
        "    found = step(*args)\n"
        f"    created.append(RingWriter.create({stale!r}, (64,), np.uint8))\n"
        "    return found\n"
        f"looked.{step} = then_created_again\n"
        f"code = _cli.main([{command!r}, {stale!r}])\n"
        f"print('exists' if os.path.exists({seg_path(stale)!r}) else 'unlinked')\n"
        "created[0].close()\n"
        "sys.exit(code)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=WAIT, check=False
    )


def test_rm_leaves_a_ring_created_under_the_name_after_its_check(stale: str) -> None:
    """`rm` sees a stale ring; before it unlinks, a new pipeline's create reclaims the name.
    The new ring keeps its name."""
    proc = created_again_between(stale, "_inspect", "inspect_ring", "rm")
    assert (proc.returncode, proc.stdout) == (1, "exists\n"), proc
    assert f"ring {stale!r} is in use (its creator, a writer or a reader holds it" in proc.stderr


def test_gc_keeps_a_ring_created_under_the_name_after_it_listed_it(stale: str) -> None:
    """`gc` lists a stale ring; before it removes it, a new pipeline's create reclaims the
    name. gc keeps the new ring and says so."""
    proc = created_again_between(stale, "_cli", "stale_rings", "gc")
    assert (proc.returncode, proc.stdout) == (0, f"kept {stale}: it is in use again\nexists\n")


def test_rings_are_named_by_their_dev_shm_files_too(prefix: str, stale: str) -> None:
    """`shmring.NAME` (what `ls /dev/shm` shows) and its path name the ring NAME."""
    with RingWriter.create(prefix, SMALL, np.uint8) as w:
        w.write(np.zeros(SMALL, np.uint8))
        for given in (f"shmring.{w.name}", seg_path(w.name)):
            assert as_json("inspect", given)["name"] == w.name
            assert "1 frame (head - tail)" in shmring("inspect", given).stdout
        assert line_of(shmring("ls", "--no-rate", f"shmring.{prefix}").stdout, w.name)
        err = shmring("inspect", "/tmp/shmring.x", code=2).stderr
        assert "/dev/shm/shmring.NAME is accepted too" in err
    # Counts agree with their nouns (the stale ring's creator wrote one frame).
    out = shmring("gc", "--dry-run", f"shmring.{stale}").stdout
    assert out.startswith(f"would remove {stale}: creator pid ") and "1 frame published" in out
    assert shmring("rm", seg_path(stale)).stdout == f"removed {stale}\n"
    assert not os.path.exists(seg_path(stale))
    assert "no ring named" in shmring("rm", f"shmring.{stale}", code=1).stderr


def test_gc_dry_run_lists_stale_rings_then_gc_removes_them(prefix: str, stale: str) -> None:
    with RingWriter.create(f"{prefix}_live", SMALL, np.uint8) as live:
        out = shmring("gc", "--dry-run", f"{prefix}*").stdout
        assert out.startswith(f"would remove {stale}: creator pid ") and out.count("\n") == 1
        assert os.path.exists(seg_path(stale))

        out = shmring("gc", f"{prefix}*").stdout
        assert out.startswith(f"removed {stale}: creator pid ") and out.count("\n") == 1
        assert not os.path.exists(seg_path(stale))
        assert os.path.exists(seg_path(live.name))
        assert shmring("gc", f"{prefix}*").stdout == "no stale rings\n"


def test_a_file_that_is_not_a_ring_is_reported_broken(junk: str) -> None:
    out = shmring("ls", "--no-rate").stdout
    assert line_of(out, junk).startswith(
        f"{junk}  BROKEN not-a-ring (4.0 KiB): ring {junk!r}: bad magic"
    )
    broken = as_json("ls", "--no-rate", junk)["broken"]
    assert [(b["name"], b["path"], b["size_bytes"]) for b in broken] == [
        (junk, seg_path(junk), 4096)
    ]
    assert [b["kind"] for b in broken] == ["not-a-ring"]
    assert "not a shmring ring" in shmring("inspect", junk, code=1).stderr
    # Somebody else's file under our prefix: gc leaves it alone.
    assert shmring("gc", junk).stdout == "no stale rings\n"
    assert os.path.exists(seg_path(junk))


def test_inspect_reports_the_rings_own_minor_format_version(prefix: str) -> None:
    """A ring of a later minor version (which this version reads) is reported as what it
    is, not as this library's version."""
    with RingWriter.create(prefix, SMALL, np.uint8) as w, open(seg_path(w.name), "r+b") as f:
        header = bytearray(f.read(L.FIXED_HEADER_BYTES))
        struct.pack_into("<H", header, 10, L.VERSION_MINOR + 1)  # after magic and major
        struct.pack_into("<Q", header, L.CHECKSUM_OFFSET, zlib.crc32(header[: L.CHECKSUM_OFFSET]))
        f.seek(0)
        f.write(header)
        f.flush()
        version = as_json("inspect", w.name)["format_version"]
        assert version == f"{L.VERSION_MAJOR}.{L.VERSION_MINOR + 1}"


def test_a_ring_of_another_format_version_is_reported_and_kept(prefix: str) -> None:
    """A ring made by a shmring with another major format version is nothing this version
    can read, but it may be in use by programs of that version: reported, never collected."""
    name = f"{prefix}_v{L.VERSION_MAJOR + 1}"
    with open(seg_path(name), "xb") as f:
        f.write(L.MAGIC + struct.pack("<H", L.VERSION_MAJOR + 1) + bytes(4096 - 10))
    try:
        broken = as_json("ls", "--no-rate", name)["broken"]
        assert [(b["name"], b["kind"]) for b in broken] == [(name, "other-version")]
        assert "format version" in broken[0]["error"]
        assert "format version" in shmring("inspect", name, code=1).stderr
        assert shmring("gc", name).stdout == "no stale rings\n"
        assert "--force" in shmring("rm", name, code=1).stderr
        assert os.path.exists(seg_path(name))
        assert shmring("rm", "--force", name).stdout == f"removed {name}\n"
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(seg_path(name))


def test_top_prints_refreshes_without_a_terminal(prefix: str) -> None:
    with RingWriter.create(prefix, SMALL, np.uint8) as w:
        w.write(np.zeros(SMALL, np.uint8))
        out = shmring("top", "--iterations", "2", "--interval", "0.05", w.name).stdout
    blocks = out.split("\n\n")
    assert len(blocks) == 3 and blocks[2] == ""
    for block in blocks[:2]:
        header, columns, ring = block.splitlines()
        assert header.startswith("shmring top") and "1 ring " in header
        assert columns.split()[:4] == ["NAME", "POLICY", "PUBLISHED", "FRAMES/S"]
        assert ring.split()[:4] == [w.name, "block", "1", "0.0"]


def read_ready(fd: int, timeout: float) -> bytes:
    """What the terminal has for us within `timeout`: b"" if nothing, or once its other
    side is closed (EIO)."""
    if not select.select([fd], [], [], timeout)[0]:
        return b""
    try:
        return os.read(fd, 1 << 16)
    except OSError:
        return b""


@contextlib.contextmanager
def top_on_a_terminal(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`shmring top ARGS` on a pseudo-terminal: the process and the terminal's controller
    side, both ended on the way out."""
    controller, terminal = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmring", "top", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    try:
        yield proc, controller
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        os.close(controller)


def test_top_iterations_on_a_terminal_leaves_its_blocks_on_it(prefix: str) -> None:
    """The redrawn screen is an alternate one, left at exit: `--iterations` drew there and
    left the user back at the prompt having seen nothing. It prints its blocks instead."""
    seen = b""
    with (
        RingWriter.create(prefix, SMALL, np.uint8) as w,
        top_on_a_terminal("--iterations", "1", w.name) as (proc, controller),
    ):
        assert proc.wait(WAIT) == 0
        while chunk := read_ready(controller, 0.1):
            seen += chunk
    assert b"\x1b[?1049h" not in seen and w.name.encode() in seen, seen


@pytest.mark.parametrize("quit_by", ["q", "SIGINT", "SIGTERM"])
def test_top_on_a_terminal_quits_on_q_ctrl_c_and_sigterm(prefix: str, quit_by: str) -> None:
    """OPERATIONS.md: Ctrl-C and SIGTERM stop top cleanly (exit 0), as q does; the terminal
    is left as it was."""
    seen, asked = b"", False
    with (
        RingWriter.create(prefix, SMALL, np.uint8) as w,
        top_on_a_terminal("--interval", "0.05", w.name) as (proc, controller),
    ):
        deadline = time.monotonic() + WAIT
        while proc.poll() is None and time.monotonic() < deadline:
            seen += read_ready(controller, 0.1)
            if not asked and b"q or Ctrl-C quits" in seen:
                if quit_by == "q":
                    os.write(controller, b"q")
                else:
                    proc.send_signal(getattr(signal, quit_by))
                asked = True
        while chunk := read_ready(controller, 0):
            seen += chunk
        assert asked and proc.wait(WAIT) == 0, seen
    assert seen.startswith(b"\x1b[?1049h")  # drawn on the alternate screen...
    assert w.name.encode() in seen
    assert seen.rstrip().endswith(b"\x1b[?1049l")  # ...which is left on exit


class _GoneTerminal:
    """stdout of a terminal that went away: every write fails."""

    def write(self, text: str) -> int:
        raise OSError(errno.EIO, "the terminal went away")

    def flush(self) -> None:
        raise OSError(errno.EIO, "the terminal went away")


def test_top_restores_the_terminal_settings_when_its_last_write_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    controller, terminal = os.openpty()
    try:
        with open(terminal, closefd=False) as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            before = termios.tcgetattr(terminal)
            with pytest.raises(OSError), Terminal():
                assert termios.tcgetattr(terminal) != before  # cbreak
                monkeypatch.setattr(sys, "stdout", _GoneTerminal())
            assert termios.tcgetattr(terminal) == before
    finally:
        os.close(terminal)
        os.close(controller)


def test_observing_does_not_block_a_streaming_writer(prefix: str) -> None:
    stop = threading.Event()
    published = [0]
    with RingWriter.create(prefix, SMALL, np.uint8) as w:
        frame = np.zeros(SMALL, np.uint8)

        def stream() -> None:
            while not stop.is_set():
                published[0] = w.write(frame, WAIT) + 1

        streamer = Waiter(stream)
        streamer.start()
        try:
            before = published[0]
            listing = as_json("ls", w.name)  # two snapshots 0.2 s apart
            info = as_json("inspect", w.name)
            after = published[0]
        finally:
            stop.set()
            streamer.finish()
    assert streamer.exc is None, streamer.exc
    [ring] = listing["rings"]
    assert ring["frames_per_s"] > 0  # the writer published while ls was looking
    assert before <= ring["published"] <= info["published"] <= after
    assert after > before


def test_usage_errors_exit_2() -> None:
    shmring(code=2)
    shmring("frobnicate", code=2)
    shmring("top", "--iterations", "0", code=2)
    assert "ls" in shmring("--help").stdout


def test_numbers_that_are_not_finite_are_usage_errors() -> None:
    for value in ("inf", "nan", "1e400"):
        proc = shmring("top", "--interval", value, "--iterations", "1", code=2)
        assert "expected a positive number" in proc.stderr, proc.stderr
