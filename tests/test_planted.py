"""Entries planted in /dev/shm by another local user (issue 17, findings 3 and 4).

* Finding 3: a FIFO named shmring.*, a symbolic link to it and one to /etc/passwd made
  `shmring ls` and `gc` block forever in open(). They are listed as "not-a-ring", left alone
  by gc, attaching to them raises IncompatibleRing, and creating a ring of their name
  RingExists (so does a planted directory or socket).
* Finding 4: a sparse file with a valid header declaring 2**22 slots cost `ls` 53 s and
  5.3 GiB. A header outside create's limits (one table, L.LIMITS) is refused, a file with
  fewer allocated bytes than its size is broken, and listing or attaching to a legal ring of
  2**20 slots costs no object per slot (the children run with a 1 GiB address-space limit).
* A ring truncated by its owner under an observer (`shmring ls` as root died of SIGBUS
  reading its mapping): observers read rings with pread, and a short read is a broken entry.
* Names that would forge output (a newline, an escape sequence, bytes that are not UTF-8):
  ls, top and gc print them escaped.
* Real subprocesses (`python -m shmring`), real files in /dev/shm, each removed in `finally`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers import SMALL, WAIT, seg_path, unique_name

import shmring
from shmring import IncompatibleRing, RingExists, RingReader, RingWriter
from shmring import _layout as L

ADDRESS_SPACE = 1 << 30  # RLIMIT_AS of the children: a listing may not need more
PROMPT = 10.0  # seconds: a listing of a few planted entries is done well within this
GIANT_SLOTS = (1 << 22, 1 << 24)  # what the issue planted: beyond create's 2**20


def run_limited(code: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run Python `code` in a child limited to ADDRESS_SPACE; its result and wall time."""
    prologue = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE},) * 2)\n"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", prologue + code],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},  # its thread buffers count in RLIMIT_AS
    )
    return proc, time.monotonic() - started


def cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`shmring ARGS` in a limited child."""
    return run_limited(f"import sys\nfrom shmring._cli import main\nsys.exit(main({list(args)!r}))")


def geometry(**changes: Any) -> L.Geometry:
    fields: dict[str, Any] = dict(
        shape=SMALL,
        dtype=np.dtype(np.uint8),
        slots=8,
        buffers=8,
        policy=L.POLICY_BLOCK,
        max_readers=4,
        max_writers=2,
        meta_size=0,
        creator_pid=os.getpid(),
    )
    return L.Geometry(**{**fields, **changes})


def forged(base: L.Geometry, **fields: int) -> bytes:
    """`base`'s header with `fields` overwritten, checksum recomputed: what a forger writes."""
    values = dict(zip(L._FIXED_FIELDS, L._FIXED.unpack_from(base.pack()), strict=True))
    body = L._FIXED.pack(*{**values, **fields}.values()).ljust(L.CHECKSUM_OFFSET, b"\0")
    return body + zlib.crc32(body).to_bytes(8, "little")


@contextlib.contextmanager
def planted(header: bytes, size: int, allocated: bool = False) -> Iterator[str]:
    """A /dev/shm/shmring.NAME of `size` bytes, of which only the header is written: sparse
    (one page allocated) unless `allocated`, as create makes rings; removed at exit."""
    name = unique_name("plant")
    fd = os.open(seg_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.pwrite(fd, header, 0)
            if allocated:
                os.posix_fallocate(fd, 0, size)
            else:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
        yield name
    finally:
        os.unlink(seg_path(name))


# ---- finding 3: FIFOs and symbolic links named shmring.* ---------------------------------


@contextlib.contextmanager
def fifo_and_links() -> Iterator[dict[str, str]]:
    """A FIFO, a symbolic link to it and one to /etc/passwd, named shmring.*: name -> kind."""
    base = unique_name("plantfifo")
    entries = {f"{base}-fifo": "a fifo", f"{base}-link": "a symbolic link"}
    entries[f"{base}-passwd"] = "a symbolic link"
    try:
        os.mkfifo(seg_path(f"{base}-fifo"), 0o600)
        os.symlink(seg_path(f"{base}-fifo"), seg_path(f"{base}-link"))
        os.symlink("/etc/passwd", seg_path(f"{base}-passwd"))
        yield entries
    finally:
        for name in entries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(seg_path(name))


def test_ls_and_gc_return_at_once_on_fifos_and_links_and_leave_them() -> None:
    with fifo_and_links() as entries:
        pattern = next(iter(entries)).rsplit("-", 1)[0] + "-*"
        ls, ls_took = cli("ls", "--no-rate", pattern)
        gc, gc_took = cli("gc", pattern)
        for name in entries:
            assert os.path.lexists(seg_path(name)), f"gc removed {name}, which is not a ring"
    assert ls.returncode == 0 and gc.returncode == 0, ls.stderr + gc.stderr
    assert ls_took < PROMPT and gc_took < PROMPT
    for name, kind in entries.items():
        assert f"{name}  BROKEN not-a-ring" in ls.stdout
        assert f"{seg_path(name)} is {kind}, not a ring" in ls.stdout
    assert gc.stdout == "no stale rings\n"  # what it did: nothing; not-a-ring is never removed


@pytest.mark.parametrize(
    "attach",
    [
        lambda name: RingReader.attach(name),
        lambda name: RingWriter.attach(name),
        shmring.inspect_ring,
    ],
    ids=["reader", "writer", "inspect"],
)
def test_attaching_to_a_fifo_or_link_raises_incompatible_ring(attach: Any) -> None:
    with fifo_and_links() as entries:
        for name, kind in entries.items():
            with pytest.raises(IncompatibleRing, match=f"is {kind}, not a ring"):
                attach(name)


def test_create_over_a_planted_non_file_raises_ring_exists_and_leaves_it() -> None:
    """create's reclaim opens what holds the name as attach does: RingExists naming what it
    is and what to do, never a raw OSError (ELOOP, EISDIR, ENXIO)."""
    base = unique_name("plantother")
    others = {f"{base}-dir": "a directory", f"{base}-socket": "a socket"}
    os.mkdir(seg_path(f"{base}-dir"))
    listening = socket.socket(socket.AF_UNIX)
    try:
        listening.bind(seg_path(f"{base}-socket"))
        with fifo_and_links() as entries:
            for name, kind in {**entries, **others}.items():
                with pytest.raises(RingExists) as refused:
                    RingWriter.create(name, SMALL, np.uint8)
                message = str(refused.value)
                assert f"cannot create ring {name!r}: {seg_path(name)} is {kind}" in message
                assert "choose another ring name" in message
                assert os.path.lexists(seg_path(name))
    finally:
        listening.close()
        os.rmdir(seg_path(f"{base}-dir"))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(seg_path(f"{base}-socket"))


def test_rm_removes_a_planted_fifo_or_link_and_says_what_a_directory_is() -> None:
    """`shmring rm NAME` of a planted entry (docs/BAD_INPUT.md): a FIFO or a symbolic link
    goes (not what a link points to); a directory stays, with a line saying what to do."""
    with fifo_and_links() as entries:
        for name in entries:
            done, _ = cli("rm", name)
            assert done.returncode == 0 and done.stdout == f"removed {name}\n", done.stderr
            assert not os.path.lexists(seg_path(name))
    assert os.path.isfile("/etc/passwd")
    name = unique_name("plantdir")
    os.mkdir(seg_path(name))
    try:
        for force in ((), ("--force",)):
            done, _ = cli("rm", *force, name)
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            assert f"{seg_path(name)} is a directory, not a ring" in done.stderr
            assert "remove it by hand" in done.stderr
            assert os.path.isdir(seg_path(name))
    finally:
        os.rmdir(seg_path(name))


# ---- finding 4: create's limits, sparse files, lazy views -----------------------------------

TOO_LARGE = {  # field: a header one past create's limit there
    "slots": forged(geometry(), slots=L.MAX_SLOTS + 1, buffers=L.MAX_SLOTS + 1),
    "buffers": forged(geometry(), buffers=8 + L.MAX_SPARE_BUFFERS + 1),
    "max_readers": forged(geometry(), max_readers=L.MAX_READERS + 1),
    "max_writers": forged(geometry(), max_writers=L.MAX_WRITERS + 1),
    "meta_size": forged(geometry(), meta_size=L.MAX_META + 1),
    "ndim": forged(geometry(), ndim=L.MAX_NDIM + 1),
    "shape": geometry(shape=(L.MAX_DIM + 1,)).pack(),
    "the limit of": geometry(shape=(L.MAX_DIM,), slots=16, buffers=16).pack(),  # total size
}


@pytest.mark.parametrize("field", sorted(TOO_LARGE))
def test_unpack_refuses_what_create_would_refuse(field: str) -> None:
    with pytest.raises(IncompatibleRing, match=field):
        L.Geometry.unpack(TOO_LARGE[field], "forged")


def test_unpack_accepts_create_limits_and_create_refuses_one_more() -> None:
    most = geometry(  # spare buffers: overwrite rings only
        slots=L.MAX_SLOTS, buffers=L.MAX_SLOTS + L.MAX_SPARE_BUFFERS, policy=L.POLICY_OVERWRITE
    )
    assert L.Geometry.unpack(most.pack(), "most") == most
    name = unique_name("plantlimit")
    cases: list[tuple[dict[str, Any], int]] = [
        ({"slots": L.MAX_SLOTS + 1}, L.MAX_SLOTS),
        ({"policy": "overwrite", "spare_buffers": L.MAX_SPARE_BUFFERS + 1}, L.MAX_SPARE_BUFFERS),
        ({"max_readers": L.MAX_READERS + 1}, L.MAX_READERS),
        ({"max_writers": L.MAX_WRITERS + 1}, L.MAX_WRITERS),
        ({"meta_size": L.MAX_META + 1}, L.MAX_META),
        ({"shape": (L.MAX_DIM + 1,)}, L.MAX_DIM),
        ({"shape": (1,) * (L.MAX_NDIM + 1)}, L.MAX_NDIM),
    ]
    for arguments, limit in cases:
        with pytest.raises(ValueError, match=str(limit)):
            RingWriter.create(name, **{"shape": SMALL, "dtype": np.uint8, **arguments})
    assert not os.path.lexists(seg_path(name))


@pytest.mark.parametrize(
    "policy, buffers, allowed",
    [
        (L.POLICY_BLOCK, 10, "[8, 8]"),
        (L.POLICY_BLOCK, 6, "[8, 8]"),
        (L.POLICY_OVERWRITE, 7, "[8, "),
    ],
)
def test_buffers_the_format_does_not_define_are_refused(
    policy: int, buffers: int, allowed: str
) -> None:
    """A block ring has one buffer per slot (each descriptor position owns one); an
    overwrite ring from `slots` to `slots` + MAX_SPARE_BUFFERS (docs/FORMAT.md, "Fixed
    header"). The C reader checks the same (test_c_reader.py)."""
    planted_geometry = geometry(policy=policy, buffers=buffers)
    with planted(planted_geometry.pack(), planted_geometry.segment_bytes) as name:
        for attach in (RingReader.attach, RingWriter.attach, shmring.inspect_ring):
            with pytest.raises(
                IncompatibleRing, match=re.escape(f"buffers={buffers} is outside {allowed}")
            ):
                attach(name)


def test_create_leaves_a_ring_of_another_format_version_alone() -> None:
    """A ring of another major format version may be in use by that version's programs
    (whose creator lock may mean something else): `create` of its name refuses, as `gc`
    and `rm` without --force do, and the file stays as it was."""
    header = bytearray(geometry().pack())
    struct.pack_into("<H", header, 8, L.VERSION_MAJOR - 1)
    struct.pack_into("<Q", header, L.CHECKSUM_OFFSET, zlib.crc32(header[: L.CHECKSUM_OFFSET]))
    with planted(bytes(header), geometry().segment_bytes) as name:
        before = os.stat(seg_path(name))
        with pytest.raises(RingExists, match=f"format version {L.VERSION_MAJOR - 1}"):
            RingWriter.create(name, SMALL, np.uint8)
        after = os.stat(seg_path(name))
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_created_ring_is_fully_allocated() -> None:
    """The premise of refusing sparse files: create's posix_fallocate allocates every page
    (tmpfs counts st_blocks for them)."""
    name = unique_name("plantfull")
    with RingWriter.create(name, (1000, 3), np.uint8, slots=5, meta_size=24):
        info = os.stat(seg_path(name))
        assert info.st_blocks * 512 >= info.st_size > 5 * 3000


@pytest.mark.parametrize("slots", [*GIANT_SLOTS, L.MAX_SLOTS])
def test_a_planted_sparse_ring_is_listed_broken_promptly(slots: int) -> None:
    """2**22 and 2**24 slots are over create's limit; 2**20 is legal but sparse."""
    giant = geometry(slots=slots, buffers=slots)
    with planted(giant.pack(), giant.segment_bytes) as name:
        ls, took = cli("ls", "--no-rate", name)
        reason = "allocated" if slots <= L.MAX_SLOTS else f"slots={slots} is outside"
        for attach in (RingReader.attach, RingWriter.attach, shmring.inspect_ring):
            with pytest.raises(IncompatibleRing, match=reason):
                attach(name)
    assert ls.returncode == 0, ls.stderr
    assert took < PROMPT, f"ls took {took:.1f} s"
    assert f"{name}  BROKEN damaged" in ls.stdout and reason in ls.stdout, ls.stdout


def test_listing_and_attaching_a_legal_big_ring_cost_nothing_per_slot() -> None:
    """A ring of 2**20 slots (200 MiB): `ls` built ~1.2 GiB of per-slot views before, and an
    attach 0.9 GiB; in 1 GiB of address space both now work, promptly."""
    name = unique_name("plantbig")
    with RingWriter.create(name, SMALL, np.uint8, slots=L.MAX_SLOTS) as writer:
        writer.write(np.ones(SMALL, np.uint8))
        ls, ls_took = cli("ls", "--no-rate", name)
        attach, attach_took = run_limited(
            "import shmring\n"
            f"with shmring.RingReader.attach({name!r}, start='oldest') as reader:\n"
            "    with reader.read(5.0) as frame:\n"
            "        print(frame.seq, int(frame.array.sum()))\n"
        )
    assert ls.returncode == 0, ls.stderr
    assert ls.stdout.splitlines()[1].split()[:5] == [name, "64", "uint8", "block", "1048576"]
    assert attach.returncode == 0, attach.stderr
    assert attach.stdout == "0 64\n"
    assert ls_took < PROMPT and attach_took < PROMPT, (ls_took, attach_took)


def test_views_make_rows_on_first_use_and_read_as_lists() -> None:
    name = unique_name("plantrows")
    with RingWriter.create(name, SMALL, np.uint8, slots=4, meta_size=8) as writer:
        writer.write(np.ones(SMALL, np.uint8), meta=b"abc")
        views = writer._p.views
        fresh = L.Views(views._geometry, writer._p.segment.header, writer._p.segment.data)
        try:
            assert not dict(fresh.descriptors) and "buffers" not in fresh.__dict__
            assert len(fresh.descriptors) == 4 and len(fresh.descriptor_meta) == 4
            assert [row[L.D_SEQ] for row in fresh.descriptors] == [0, L.NONE, L.NONE, L.NONE]
            assert bytes(fresh.descriptor_meta[0][:3]) == b"abc"
            assert fresh.descriptors[0] is fresh.descriptors[0]  # made once, then kept
            with pytest.raises(IndexError):
                _ = fresh.descriptors[4]
            assert len(fresh.buffers) == 4 and fresh.buffers[0].sum() == 64
        finally:
            fresh.release()


# ---- a ring truncated under an observer ------------------------------------------------------

OBSERVERS = (  # every command that reads a ring without taking part
    ["ls", "--no-rate"],
    ["top", "--iterations", "1"],
    ["inspect"],
    ["gc", "--dry-run"],
)


def cli_truncating(path: str, size: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`shmring ARGS` in a limited child that truncates the ring file at `path` to `size`
    bytes after it opened and checked it, right before reading it (_inspect._snapshot, the
    reading step): what the ring's owner can do at any moment."""
    return run_limited(
        "import os, sys\n"
        "from shmring import _inspect\n"
        "from shmring._cli import main\n"
        "read = _inspect._snapshot\n"
        "def truncate_first(*args, **kwargs):\n"
        f"    os.truncate({path!r}, {size})\n"
        "    return read(*args, **kwargs)\n"
        "_inspect._snapshot = truncate_first\n"
        f"sys.exit(main({list(args)!r}))\n"
    )[0]


@pytest.mark.parametrize("when", ["before the open", "between the checks and the reads"])
def test_a_ring_truncated_under_an_observer_is_listed_broken(when: str) -> None:
    """Before an observer opens a ring, its size check finds the truncation; after, its
    reads come short (a mapping would be a SIGBUS). Either way the ring is a broken entry,
    or an error for inspect, and the observer lives."""
    ring = geometry(slots=64, buffers=64)  # its tables lie beyond the first page
    with planted(ring.pack(), ring.segment_bytes, allocated=True) as name:
        path = seg_path(name)
        results: dict[str, subprocess.CompletedProcess[str]] = {}
        for command in OBSERVERS:
            if when == "before the open":
                os.truncate(path, L.PAGE)
                results[command[0]] = cli(*command, name)[0]
            else:
                results[command[0]] = cli_truncating(path, L.PAGE, *command, name)
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, ring.segment_bytes)  # whole again, for the next
            finally:
                os.close(fd)
    for observer, proc in results.items():
        assert proc.returncode == (1 if observer == "inspect" else 0), (observer, proc)
    for listing in ("ls", "top"):
        assert f"{name}  BROKEN damaged (4.0 KiB): ring {name!r}: " in results[listing].stdout
        assert "truncated" in results[listing].stdout
    error = results["inspect"].stderr
    assert error.startswith(f"shmring inspect: ring {name!r}: ") and "truncated" in error
    assert results["gc"].stdout.startswith(f"would remove {name}: broken (ring {name!r}: ")


# ---- names that would forge output -----------------------------------------------------------

FORGING = {  # the rest of a planted name, and how it is printed
    "newline and escape": (b"\nfake-cam  block ok\x1b[8m", "\\nfake-cam  block ok\\x1b[8m"),
    "not UTF-8": (b"\xff\\xff", "\\xff\\\\xff"),
}


@pytest.mark.parametrize("rest", FORGING.values(), ids=FORGING.keys())
def test_names_that_would_forge_output_are_printed_escaped(rest: tuple[bytes, str]) -> None:
    """Anyone can plant /dev/shm/shmring.<any bytes>; ls, top and gc print its name escaped
    (a ring's magic makes it a damaged ring, which gc would remove)."""
    tag = unique_name("plantname")
    path = os.fsencode(seg_path(tag)) + rest[0]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, L.MAGIC + struct.pack("<H", L.VERSION_MAJOR) + bytes(4086))
    finally:
        os.close(fd)
    listings = [command for command in OBSERVERS if command[0] != "inspect"]  # no patterns
    try:
        outputs = {command[0]: cli(*command, f"{tag}*")[0] for command in listings}
    finally:
        os.unlink(path)
    printed = tag + rest[1]
    for observer, proc in outputs.items():
        assert proc.returncode == 0, (observer, proc)
        assert "\x1b" not in proc.stdout and "\nfake" not in proc.stdout, (observer, proc.stdout)
    for listing in ("ls", "top"):
        assert f"\n{printed}  BROKEN damaged (4.0 KiB): ring name " in outputs[listing].stdout
    assert outputs["gc"].stdout.startswith(f"would remove {printed}: broken (ring name ")
