# Looking inside rings without taking part: the figures behind `shmring ls/inspect/top`.
#
# Rules: an observer never registers as a reader or writer, never takes the header lock
# (a snapshot may be a few microseconds inconsistent; that is the price of never blocking a
# pipeline), and treats every byte it reads as untrusted: damage shows up as a
# `problems` entry, never as an exception from the middle of a listing. Its plain reads of a
# live ring are the display-only exception to the core's rule (shmring/__init__.py): they
# store nothing and decide nothing, so a stale word only shows a figure a moment old.
#   - An observer never maps a ring: it reads the control block, the tables and what it shows
#     of the descriptors into its own memory (pread), a bounded piece at a time. A ring's
#     owner can truncate the file at any moment, and touching a mapping's lost pages is a
#     SIGBUS no process can catch; a short read is a BrokenRing instead.
#   - Any local user can put anything named shmring.* into /dev/shm. Entries are opened
#     only through _segment.open_regular (no symbolic link followed, no FIFO or device
#     opened, no open that waits); anything but a regular file is listed as "not-a-ring"
#     and never garbage-collected, and so are files without the shmring magic.
#   - A listing costs nothing per slot: list_rings() leaves `slot_states` empty (a legal
#     ring has up to 2**20 slots); inspect_ring() fills it, from strided columns of the
#     descriptor table, not one object per descriptor.

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import _layout as L
from ._errors import IncompatibleRing, RingExists, RingNotFound, ShmringError
from ._segment import (
    PREFIX,
    SHM_DIR,
    TEMP_PREFIX,
    Segment,
    open_regular,
    remove_abandoned_temp,
    segment_path,
    temp_abandoned,
    validate_name,
)
from ._sys import range_is_locked, try_lock_range

MAX_SLOT_PROBLEMS = 8  # slots with a buffer out of range listed one by one; then a count
SLOT_WORDS = L.D_TIMESTAMP + 1  # what a snapshot shows of a descriptor: seq, buffer, flags, time
READ_BYTES = 1 << 20  # descriptors are read at most this many bytes at a time


@dataclass
class WriterInfo:
    index: int
    pid: int
    alive: bool
    claimed_buffer: int | None


@dataclass
class ReaderInfo:
    index: int
    pid: int
    alive: bool
    group: str | None
    next_seq: int | None  # solo readers: the oldest frame it still needs
    lag: int | None  # frames published that it has not released
    dropped: int
    held_buffers: tuple[int, ...]  # overwrite policy: the buffers it pins (frames it holds)


@dataclass
class GroupInfo:
    name: str
    cursor: int
    members: int
    lag: int


@dataclass
class SlotInfo:
    position: int
    seq: int | None
    buffer: int | None
    state: str  # "empty", "queued", "released", "evicted", "writing"
    timestamp_ns: int | None


@dataclass
class RingInfo:
    """A snapshot of one ring's header, in readable form."""

    name: str
    path: str
    size_bytes: int
    shape: tuple[int, ...]
    dtype: str
    policy: str
    slots: int
    max_readers: int
    max_writers: int
    meta_size: int
    format_version: str
    created_ns: int
    creator_pid: int
    creator_alive: bool
    published: int  # frames published so far (= head)
    tail: int
    free_buffers: int
    writer_mode: str
    closed: bool
    writers: list[WriterInfo] = field(default_factory=list)
    readers: list[ReaderInfo] = field(default_factory=list)
    groups: list[GroupInfo] = field(default_factory=list)
    slot_states: list[SlotInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    snapshot_ns: int = 0  # CLOCK_MONOTONIC time of the snapshot, for rates

    @property
    def stale(self) -> bool:
        """The creator and every writer are dead: nobody will publish or unlink it."""
        return not self.creator_alive and not any(w.alive for w in self.writers)

    @property
    def live_participants(self) -> int:
        return sum(w.alive for w in self.writers) + sum(r.alive for r in self.readers)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stale"] = self.stale
        return data


@dataclass
class BrokenRing:
    """A /dev/shm/shmring.* entry that could not be read as a ring.

    kind: "not-a-ring" (no shmring magic, or not a regular file at all: a FIFO, a symbolic
    link, a directory; somebody else's file, never garbage-collected),
    "unreadable" (no permission), "other-version" (a ring of another major format version:
    its liveness locks may sit elsewhere, so it is never garbage-collected), "damaged" (a
    ring's header or size is wrong), or "abandoned-creation" (the temporary file of a create
    that died half-way)."""

    name: str
    path: str
    size_bytes: int
    error: str
    kind: str = "damaged"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def inspect_ring(name: str) -> RingInfo:
    """Snapshot ring `name` (RingNotFound, IncompatibleRing, PermissionError if unreadable)."""
    return _inspect(name, slot_states=True)


def inspect_segment(segment: Segment) -> RingInfo:
    """Snapshot the ring a handle has open: the ring the handle uses, even if its name was
    removed or given to a newer ring since it attached. Through a description of its own
    (/proc/self/fd), since a lock query through the handle's would not see the handle's
    own locks (its liveness byte, a creator's lock), and report it dead."""
    fd = os.open(f"/proc/self/fd/{segment.fd}", os.O_RDWR | os.O_CLOEXEC)
    try:
        return _snapshot(segment.name, fd, segment.geometry, with_states=True)
    finally:
        os.close(fd)


def _inspect(name: str, slot_states: bool) -> RingInfo:
    validate_name(name)
    fd, geometry = Segment.open_file(name)
    try:
        return _snapshot(name, fd, geometry, with_states=slot_states)
    finally:
        os.close(fd)


def list_rings(select: Callable[[str], bool] | None = None) -> list[RingInfo | BrokenRing]:
    """Every shmring.* entry on this machine (whose name `select` accepts, if given: the
    others are not opened), sorted by name: a RingInfo per ring (with `slot_states` left
    empty: inspect_ring fills it), a BrokenRing per entry that is not a readable ring.
    Other files in /dev/shm are ignored."""
    found: list[RingInfo | BrokenRing] = []
    try:
        entries = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return found
    for entry in entries:
        if not entry.startswith(PREFIX):
            continue
        name = entry[len(PREFIX) :]
        if select is not None and not select(name):
            continue
        path = os.path.join(SHM_DIR, entry)
        try:
            found.append(_inspect(name, slot_states=False))
        except FileNotFoundError:
            continue  # removed while we listed
        except (ShmringError, OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                size = os.lstat(path).st_size
                found.append(BrokenRing(name, path, size, str(exc), _broken_kind(path, exc)))
    return found


def remove_ring(name: str, force: bool = False) -> None:
    """Unlink ring `name`. Refuses (RingExists) while a writer or reader is alive, unless
    `force`: their mappings stay valid, but nobody new can attach. RingNotFound if there is
    no such ring."""
    unlink_ring(name, force, how_to_force="pass force=True")


def unlink_ring(name: str, force: bool, how_to_force: str) -> None:
    """remove_ring, whose refusals end with `how_to_force` (the CLI names its --force).

    Without force, a ring (readable or damaged) is unlinked only if no creator, writer or
    reader holds its liveness lock, looked at on the very file unlinked (_unlink_unheld): a
    check by name, then an unlink by name, could remove a ring created meanwhile."""
    validate_name(name)
    path = segment_path(name)
    try:
        if force or not _has_liveness_locks(name, how_to_force):
            os.unlink(path)
        elif not _unlink_unheld(path, readers_too=True):
            raise RingExists(
                f"ring {name!r} is in use (its creator, a writer or a reader holds it, or it "
                f"was created again meanwhile); close them first or {how_to_force}"
            )
    except FileNotFoundError:
        raise RingNotFound(f"no ring named {name!r} (already removed?)") from None
    except IsADirectoryError:
        raise IsADirectoryError(
            errno.EISDIR,
            f"{path} is a directory, not a ring (shmring never makes one): remove it by hand "
            "once you know whose it is",
        ) from None


def _has_liveness_locks(name: str, how_to_force: str) -> bool:
    """Whether entry `name` is a file whose liveness locks say who uses it: a ring this
    version reads (RingExists at once if its snapshot shows it in use), a damaged one, or a
    regular file that is no ring (a live ring whose magic was overwritten keeps its
    participants' locks); not an entry that is no regular file. RingExists for a ring of
    another format version, whose locks may mean something else, and for a file we may not
    open, whose locks we cannot look at."""
    try:
        info = inspect_ring(name)
    except FileNotFoundError:
        raise
    except (ShmringError, OSError) as exc:
        kind = _broken_kind(segment_path(name), exc)
        if kind == "other-version":
            raise RingExists(
                f"ring {name!r} was made by a shmring with another format version ({exc}); "
                "programs of that version may be using it: stop them, then "
                f"{how_to_force}"
            ) from None
        if kind == "unreadable":
            raise RingExists(
                f"cannot tell whether ring {name!r} is in use: {exc}. If nobody uses it, "
                f"{how_to_force}"
            ) from None
        return kind == "damaged" or stat.S_ISREG(os.lstat(segment_path(name)).st_mode)
    if info.live_participants or info.creator_alive:
        raise RingExists(
            f"ring {name!r} is in use (live participants: {info.live_participants}, "
            f"creator {'alive' if info.creator_alive else 'dead'}); close them first or "
            f"{how_to_force}"
        )
    return True


def stale_rings() -> list[RingInfo | BrokenRing]:
    """Rings nobody will clean up: creator and every writer dead (or unreadable), plus
    leftover temporary files of creations that died half-way."""
    stale: list[RingInfo | BrokenRing] = [
        ring
        for ring in list_rings()
        if (
            ring.kind == "damaged" and not _in_use(ring.path)
            if isinstance(ring, BrokenRing)
            else ring.stale
        )
    ]
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(SHM_DIR):
            if entry.startswith(TEMP_PREFIX) and temp_abandoned(entry):
                path = os.path.join(SHM_DIR, entry)
                with contextlib.suppress(OSError):
                    info = os.lstat(path)
                    if stat.S_ISREG(info.st_mode):  # create makes regular files only
                        stale.append(
                            BrokenRing(
                                entry,
                                path,
                                info.st_size,
                                "abandoned creation",
                                "abandoned-creation",
                            )
                        )
    return stale


def _broken_kind(path: str, exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "unreadable"
    try:
        fd = open_regular(path, os.O_RDONLY)
    except ShmringError:
        return "not-a-ring"  # not a regular file
    except OSError:
        return "unreadable"
    try:
        start = os.pread(fd, L.VERSION_END, 0)
    except OSError:
        return "unreadable"
    finally:
        os.close(fd)
    if start[: len(L.MAGIC)] != L.MAGIC:
        return "not-a-ring"
    if len(start) == L.VERSION_END and L.version_major_of(start) != L.VERSION_MAJOR:
        return "other-version"
    return "damaged"


def remove_if_stale(entry: RingInfo | BrokenRing) -> bool:
    """Unlink an entry `stale_rings` returned, unless it came back to life meanwhile (safe
    against a concurrent `create` of the same name: _unlink_unheld)."""
    if isinstance(entry, BrokenRing) and entry.kind == "abandoned-creation":
        return remove_abandoned_temp(entry.name, any_owner=True)
    if isinstance(entry, BrokenRing) and entry.kind != "damaged":
        return False
    try:
        return _unlink_unheld(entry.path, readers_too=False)
    except FileNotFoundError:
        return True  # somebody else removed it
    except ShmringError:
        return False  # replaced by something that is not a regular file: not ours


def _unlink_unheld(path: str, readers_too: bool) -> bool:
    """Unlink the ring file at `path` unless its creator or a writer (or, `readers_too`, a
    reader) holds its liveness lock on it; whether it did. FileNotFoundError if it is gone.

    The check and the unlink are made safe against a concurrent `create` of the same name
    the way create's own reclaim is: taking the dead creator's lock on the file proves the
    creator dead and keeps a reclaimer out, and the inode must still be the one checked."""
    fd = open_regular(path, os.O_RDWR)
    try:
        if not try_lock_range(fd, L.LOCK_CREATOR) or range_is_locked(
            fd, L.LOCK_WRITER_BASE, L.MAX_WRITERS
        ):
            return False
        if readers_too and range_is_locked(fd, L.LOCK_READER_BASE, L.MAX_READERS):
            return False
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def _in_use(path: str) -> bool:
    """Whether a creator or writer still holds its liveness lock on the file at `path`."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except (OSError, ShmringError):
        return True  # cannot tell: leave it alone
    try:
        return range_is_locked(fd, L.LOCK_CREATOR) or range_is_locked(
            fd, L.LOCK_WRITER_BASE, L.MAX_WRITERS
        )
    finally:
        os.close(fd)


def _snapshot(name: str, fd: int, g: L.Geometry, with_states: bool) -> RingInfo:
    """Read ring `name` (open as `fd`, its file checked against `g`) and describe it."""
    with _copied_views(fd, name, g) as views:
        return _describe(name, fd, g, views, _slot_words(fd, name, g), with_states)


@contextlib.contextmanager
def _copied_views(fd: int, name: str, g: L.Geometry) -> Iterator[L.Views]:
    """Views of a private copy of the ring's control block and its reader, group, writer
    and pin tables and free list; the descriptor table is left unread (_slot_words)."""
    copy = mmap.mmap(-1, g.data_offset, mmap.MAP_PRIVATE)  # pages never written cost nothing
    try:
        for start, stop in (
            (L.CONTROL_OFFSET, g.descriptors_offset),
            (g.readers_offset, g.freelist_offset + g.buffers * 8),
        ):
            copy[start:stop] = _read(fd, name, stop - start, start)
        views = L.Views(g, copy, memoryview(b""))  # no frame buffers: never looked at
        try:
            yield views
        finally:
            views.release()
    finally:
        copy.close()


def _slot_words(fd: int, name: str, g: L.Geometry) -> np.ndarray:
    """The first SLOT_WORDS words of every descriptor, one row per slot. Read READ_BYTES at
    a time, and one descriptor at a time once one is a page or more: a legal table holds up
    to 64 GiB of metadata, which must cost neither that memory nor that copying."""
    words = np.empty((g.slots, SLOT_WORDS), np.uint64)
    per_read = 1 if g.descriptor_bytes >= L.PAGE else READ_BYTES // g.descriptor_bytes
    for first in range(0, g.slots, per_read):
        count = min(per_read, g.slots - first)
        size = (count - 1) * g.descriptor_bytes + SLOT_WORDS * 8
        piece = _read(fd, name, size, g.descriptors_offset + first * g.descriptor_bytes)
        strides = (g.descriptor_bytes, 8)
        words[first : first + count] = np.ndarray((count, SLOT_WORDS), np.uint64, piece, 0, strides)
    return words


def _read(fd: int, name: str, size: int, offset: int) -> bytes:
    """`size` bytes of the ring from `offset`; IncompatibleRing if fewer are there (a regular
    file reads short only at its end, and this one was whole when opened: truncated since)."""
    data = os.pread(fd, size, offset)
    if len(data) < size:
        raise IncompatibleRing(
            f"ring {name!r}: its file ends at byte {offset + len(data):,}, inside its header, "
            "though it was whole when opened: it was truncated while being read. Remove it "
            "(shmring rm) and create it again"
        )
    return data


def _describe(
    ring: str, fd: int, g: L.Geometry, views: L.Views, slot_words: np.ndarray, with_states: bool
) -> RingInfo:
    control = views.control
    head, tail = control[L.C_HEAD], control[L.C_TAIL]
    problems = []
    if tail > head or head - tail > g.slots:
        problems.append(f"head {head} and tail {tail} are inconsistent")

    def alive(byte: int) -> bool:
        return range_is_locked(fd, byte)

    writers = [
        WriterInfo(
            index=i,
            pid=int(w[L.W_PID]),
            alive=alive(L.LOCK_WRITER_BASE + i),
            claimed_buffer=None if w[L.W_CLAIMED] == L.NONE else int(w[L.W_CLAIMED]),
        )
        for i, w in enumerate(views.writers)
        if w[L.W_STATE] == L.STATE_ACTIVE
    ]
    group_names: dict[int, str] = {}
    groups = []
    for i, record in enumerate(views.groups):
        active = record[L.G_STATE] == L.STATE_ACTIVE
        if not active and not any(views.group_names[i]):
            continue  # never used
        name = bytes(views.group_names[i]).rstrip(b"\0").decode("utf-8", "replace")
        cursor = int(record[L.G_CURSOR])
        members = int(record[L.G_MEMBERS]) if active else 0  # free: kept for its next member
        if active:
            group_names[i] = name
        groups.append(GroupInfo(name, cursor, members, max(head - cursor, 0)))
    readers = []
    for i, record in enumerate(views.readers):
        if record[L.R_STATE] != L.STATE_ACTIVE:
            continue
        group_index = record[L.R_GROUP]
        group = None
        if group_index != L.NONE:
            group = group_names.get(group_index)
            if group is None:
                problems.append(f"reader {i} names group {group_index}, which is not active")
        release = record[L.R_RELEASE]
        solo = group_index == L.NONE
        readers.append(
            ReaderInfo(
                index=i,
                pid=int(record[L.R_PID]),
                alive=alive(L.LOCK_READER_BASE + i),
                group=group,
                next_seq=int(release) if solo and release != L.NONE else None,
                lag=max(head - release, 0) if solo and release != L.NONE else None,
                dropped=int(record[L.R_DROPPED]),
                held_buffers=_held_buffers(i, record, views, g, problems),
            )
        )
    slot_states = _slot_states(slot_words, g, head, tail, problems, with_states)
    policy = "block" if g.policy == L.POLICY_BLOCK else "overwrite"
    return RingInfo(
        name=ring,
        path=segment_path(ring),
        size_bytes=g.segment_bytes,
        shape=g.shape,
        dtype=str(g.dtype),
        policy=policy,
        slots=g.slots,
        max_readers=g.max_readers,
        max_writers=g.max_writers,
        meta_size=g.meta_size,
        format_version=f"{L.VERSION_MAJOR}.{g.version_minor}",
        created_ns=g.created_ns,
        creator_pid=g.creator_pid,
        creator_alive=alive(L.LOCK_CREATOR),
        published=int(head),
        tail=int(tail),
        free_buffers=_free_buffers(control, views, g, readers),
        writer_mode="exclusive" if control[L.C_WRITER_MODE] == L.MODE_EXCLUSIVE else "shared",
        closed=bool(control[L.C_FLAGS] & L.F_CLOSED),
        writers=writers,
        readers=readers,
        groups=groups,
        slot_states=slot_states,
        problems=problems,
        snapshot_ns=time.monotonic_ns(),
    )


def _slot_states(
    table: np.ndarray, g: L.Geometry, head: int, tail: int, problems: list[str], with_states: bool
) -> list[SlotInfo]:
    """Each descriptor's state (if `with_states`), and a problem per descriptor naming a
    buffer out of range: from columns of `table` (_slot_words), no object per slot unless
    the states are asked for."""
    seqs, flags, buffers = table[:, L.D_SEQ], table[:, L.D_FLAGS], table[:, L.D_BUFFER]
    bad = np.flatnonzero((seqs != L.NONE) & (buffers >= g.buffers))
    problems += [
        f"slot {position} names buffer {buffers[position]}, out of range"
        for position in bad[:MAX_SLOT_PROBLEMS].tolist()
    ]
    if len(bad) > MAX_SLOT_PROBLEMS:
        problems.append(f"{len(bad) - MAX_SLOT_PROBLEMS} more slots name buffers out of range")
    if not with_states:
        return []
    states = []
    columns = (seqs.tolist(), flags.tolist(), buffers.tolist(), table[:, L.D_TIMESTAMP].tolist())
    for position, (seq, flag, buffer, timestamp) in enumerate(zip(*columns, strict=True)):
        if seq == L.NONE:
            states.append(SlotInfo(position, None, None, "empty", None))
            continue
        if seq & L.SEQ_BUSY:  # a writer of a sequenced overwrite ring is rewriting it
            states.append(SlotInfo(position, seq & ~L.SEQ_BUSY, buffer, "writing", timestamp))
            continue
        if flag & L.DF_EVICTED:
            state = "evicted"
        elif tail <= seq < head:
            state = "queued"
        else:
            state = "released"
        states.append(SlotInfo(position, seq, buffer, state, timestamp))
    return states


def _held_buffers(
    index: int, record: memoryview, views: L.Views, g: L.Geometry, problems: list[str]
) -> tuple[int, ...]:
    """The buffers reader `index` pins (overwrite policy): its R_PINNED word, then its pin
    line up to the line's top (at most PINS_PER_LINE words, as writers scan it)."""
    words = [record[L.R_PINNED]]
    if views.pins:
        line = views.pins[index]
        words += line[L.PIN_HELD : L.PIN_HELD + min(line[L.PIN_TOP], L.PINS_PER_LINE)]
    held = []
    for word in words:
        if word == L.NONE:
            continue
        if word >= g.buffers:
            problems.append(f"reader {index} pins buffer {word}, out of range")
        else:
            held.append(int(word))
    return tuple(held)


def _free_buffers(
    control: memoryview, views: L.Views, g: L.Geometry, readers: list[ReaderInfo]
) -> int:
    """Buffers no frame, claim or write holds: the free list's; in a sequenced ring (several
    writers) those of the positions nobody has claimed (block policy) or the pool's
    (overwrite policy: its entries that name a buffer). Under the overwrite policy a free
    buffer a reader still holds (its frame left the window) is not free: writers skip it."""
    if control[L.C_WRITER_MODE] == L.MODE_SHARED and control[L.C_FLAGS] & L.F_SEQUENCED:
        if g.policy == L.POLICY_BLOCK:
            return int(control[L.C_TAIL] + g.slots - control[L.C_NEXT_SEQ])
        free = [entry for entry in views.freelist if entry != L.NONE]
    else:
        free = list(views.freelist[: control[L.C_FREE_COUNT]])  # (a slice stops at the end)
    held = {buffer for reader in readers for buffer in reader.held_buffers}
    return sum(1 for buffer in free if buffer not in held)
