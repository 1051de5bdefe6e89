# A ring's shared-memory segment: naming, atomic creation, attaching, unlinking.
#
# Rules:
#   - A ring named N lives in the tmpfs file /dev/shm/shmring.N (what shm_open would use),
#     opened directly so that no multiprocessing resource tracker ever learns about it: on
#     Python < 3.13 the tracker unlinks segments that an *attaching* process registered.
#   - Creation is atomic: the segment is built and initialised under a private temporary
#     name, its creator takes the creator lock, and only then is it linked under its real
#     name (link(2) fails if the name exists). An attacher therefore never sees a half-made
#     ring, and a ring whose creator lock is free has a dead creator (stale).
#   - Pages are reserved at creation (posix_fallocate), so a ring larger than /dev/shm's free
#     space fails at create with ENOSPC instead of a SIGBUS on first touch. The converse is
#     checked at attach: a file with fewer allocated bytes than its size (sparse: planted,
#     not created) is refused before it is mapped.
#   - /dev/shm is writable by every local user: an entry under a ring's name is opened only
#     if it is a regular file, never through a symbolic link, never with an open that waits
#     (open_regular; a FIFO's open would block ls and gc forever).
#   - The header (everything before the frame buffers) is mapped read-write by everyone; the
#     buffers are mapped read-only by readers, so their views cannot be written.
#   - The buffers are mapped at an address congruent to their file offset modulo the huge
#     page size (2 MiB), and a ring whose frames are at least that large asks the kernel to
#     back them with huge pages (MADV_COLLAPSE; the creator's call moves the pages, ~2 ms per
#     MiB here, later ones only map them; inspecting a ring never asks, since asking can
#     move pages under a live stream). /dev/shm gives 4 KiB pages by default, and copying a
#     1920x1080x3 frame into a ring buffer ran 4-7 % faster on huge ones (docs/OPERATIONS.md,
#     "Huge pages"). Best effort: a kernel that refuses leaves the 4 KiB pages, which work
#     the same.

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import secrets
import stat
import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike

from . import _layout as L
from ._errors import IncompatibleRing, RingExists, RingNotFound, warn_stale_ring
from ._sys import (
    HUGE_PAGE_BYTES,
    collapse_to_huge_pages,
    map_shared_at,
    range_is_locked,
    reserve_address_space,
    try_lock_range,
)
from ._timing import deadline_from

SHM_DIR = "/dev/shm"
PREFIX = "shmring."
TEMP_PREFIX = ".shmring-tmp-"
_ATTACH_POLL = 0.01  # how often attach(timeout=...) looks for a ring that is not there yet
MAX_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def validate_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"ring name must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError("ring name is empty; pass a short name such as 'cam0'")
    if len(name) > MAX_NAME:
        raise ValueError(f"ring name {name!r} is {len(name)} characters; the limit is {MAX_NAME}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"ring name {name!r} has characters shmring does not allow: use letters, digits, "
            "'_', '-' and '.', not starting with '.' or '-' (no '/')"
        )
    return name


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, PREFIX + name)


def free_bytes() -> int:
    stats = os.statvfs(SHM_DIR)
    return stats.f_bavail * stats.f_frsize


class Segment:
    """One open, mapped ring segment.

    `fd` is this handle's own open file description and is used for OFD locks only. The
    mappings are made through a second description, closed at once: a mapping keeps its
    file description alive, and with it any lock taken through it, so mapping through `fd`
    would let a forked child's inherited mappings keep a dead parent's locks held."""

    def __init__(
        self,
        name: str,
        fd: int,
        geometry: L.Geometry,
        writable_data: bool,
        huge_pages: bool = True,
    ) -> None:
        self.name = name
        self.fd = fd
        self.geometry = geometry
        self.inode = os.fstat(fd).st_ino
        map_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        try:
            self.header = mmap.mmap(map_fd, geometry.data_offset)
            try:
                self._data_mapping, self.data = _map_data(
                    map_fd, geometry, writable_data, huge_pages
                )
            except BaseException:
                self.header.close()
                raise
        finally:
            os.close(map_fd)

    # ---- create ------------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, geometry: L.Geometry, mode: int) -> Segment:
        size = geometry.segment_bytes
        available = free_bytes()
        if size > available:
            raise _no_space(name, size, available)
        geometry.check_size()  # a /dev/shm larger than the limit: what unpack would refuse
        temp = os.path.join(SHM_DIR, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)  # exact mode, whatever the umask
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise _no_space(name, size, free_bytes()) from None
                raise
            os.pwrite(fd, geometry.pack(), 0)
            segment = cls(name, fd, geometry, writable_data=True)
            try:
                _initialise(segment)
                if not try_lock_range(fd, L.LOCK_CREATOR):
                    raise OSError(errno.EAGAIN, "could not take the creator lock of a new ring")
                _link_claiming_stale(temp, name)
            except BaseException:
                segment.close()
                raise
            return segment
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    # ---- attach ------------------------------------------------------------------------
    @classmethod
    def open(cls, name: str, writable_data: bool, huge_pages: bool = True) -> Segment:
        """Open and map ring `name`. `huge_pages=False` never asks for huge pages, which can
        move the buffers' pages: for looking at a ring, not taking part in it."""
        path = segment_path(name)
        try:
            fd = open_regular(path, os.O_RDWR)
        except FileNotFoundError:
            raise RingNotFound(
                f"no ring named {name!r} ({path} does not exist); create it with "
                "RingWriter.create, or pass timeout= to attach to wait for it"
            ) from None
        except PermissionError:
            raise PermissionError(
                errno.EACCES,
                f"no permission to open ring {name!r} ({path}); it was created by another user "
                "with a mode that excludes you: create it with mode=0o660 and a shared group, "
                "or run as that user",
            ) from None
        try:
            geometry = L.Geometry.unpack(os.pread(fd, L.FIXED_HEADER_BYTES, 0), name)
            info = os.fstat(fd)
            if info.st_size != geometry.segment_bytes:
                raise IncompatibleRing(
                    f"ring {name!r}: segment is {info.st_size} bytes but its header describes "
                    f"{geometry.segment_bytes}; it was truncated or resized. Remove it "
                    "(shmring rm) and create it again"
                )
            if info.st_blocks * 512 < info.st_size:  # tmpfs counts pages, so whole pages
                raise IncompatibleRing(
                    f"ring {name!r}: only {info.st_blocks * 512:,} of its {info.st_size:,} "
                    "bytes are allocated, and create allocates every page: the file was "
                    "made or punched by something else (a planted file?). Remove it "
                    "(shmring rm) and create the ring again"
                )
            return cls(name, fd, geometry, writable_data, huge_pages)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(
        cls,
        name: str,
        timeout: float | None,
        writable_data: bool,
        shape: int | Sequence[int] | None = None,
        dtype: DTypeLike | None = None,
    ) -> Segment:
        """Open ring `name`, waiting up to `timeout` seconds for it to appear, and check
        that it has the geometry the caller expects (if it said)."""
        deadline = deadline_from(timeout)
        while True:
            try:
                segment = cls.open(name, writable_data)
                break
            except RingNotFound:
                left = _ATTACH_POLL if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(_ATTACH_POLL, left))
        try:
            _check_expected(segment.geometry, name, shape, dtype)
        except BaseException:
            segment.close()
            raise
        return segment

    # ---- lifecycle ---------------------------------------------------------------------
    def creator_alive(self) -> bool:
        return range_is_locked(self.fd, L.LOCK_CREATOR)

    def unlink(self) -> None:
        """Remove the name, if it still names this segment (not a newer ring)."""
        path = segment_path(self.name)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == self.inode:
                os.unlink(path)

    def close(self) -> None:
        """Unmap and close the descriptor, which drops every OFD lock this handle holds.

        A NumPy view the user still holds keeps its mapping alive (BufferError); the mapping
        then goes away with the last view and this object, never earlier."""
        with contextlib.suppress(BufferError):
            self.data.release()
        for mapping in (self.header, self._data_mapping):
            with contextlib.suppress(BufferError):
                mapping.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1


def open_regular(path: str, flags: int) -> int:
    """Open `path` (a name found in /dev/shm, which any local user can fill) as a ring
    file: never through a symbolic link, never waiting (a FIFO's open would block until a
    writer came), and only a regular file (looked at before the open, so that no device is
    ever opened, and checked on the open file). IncompatibleRing names what the entry is
    instead; FileNotFoundError and PermissionError come through."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise IncompatibleRing(_not_a_ring(path, _file_kind(mode)))
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IncompatibleRing(_not_a_ring(path, "a symbolic link")) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise IncompatibleRing(_not_a_ring(path, _file_kind(mode)))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _file_kind(mode: int) -> str:
    """What a stat mode says a file is, in words ("a fifo", "a directory", ...)."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def _not_a_ring(path: str, kind: str) -> str:
    return (
        f"{path} is {kind}, not a ring (rings are regular files); shmring never made it. "
        "Remove it by hand if it is yours, or choose another ring name"
    )


def _map_data(
    map_fd: int, geometry: L.Geometry, writable: bool, huge_pages: bool
) -> tuple[mmap.mmap, memoryview]:
    """Map the frame buffers [data_offset, segment_bytes) so that huge pages can back them;
    returns the mapping (to close) and a view of exactly the buffers.

    A huge page maps a 2 MiB-aligned range of the file at a 2 MiB-aligned address, which
    mmap() does not choose by itself here; so an anonymous reservation one huge page larger
    takes the address space (no memory), and the file is mapped over it at the right place.
    Closing the reservation unmaps both."""
    length = geometry.segment_bytes - geometry.data_offset
    reservation = reserve_address_space(length + HUGE_PAGE_BYTES, writable)
    try:
        base = np.frombuffer(reservation, np.uint8, 1).ctypes.data  # touches no page
        skip = (geometry.data_offset - base) % HUGE_PAGE_BYTES
        map_shared_at(base + skip, length, writable, map_fd, geometry.data_offset)
        if huge_pages and geometry.buffer_bytes >= HUGE_PAGE_BYTES:
            first = -geometry.data_offset % HUGE_PAGE_BYTES  # into the buffers
            whole_pages = (length - first) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
            collapse_to_huge_pages(base + skip + first, whole_pages)
        view = memoryview(reservation)[skip : skip + length]  # read-only unless writable
    except BaseException:
        reservation.close()
        raise
    return reservation, view


def _check_expected(
    geometry: L.Geometry,
    name: str,
    shape: int | Sequence[int] | None,
    dtype: DTypeLike | None,
) -> None:
    if shape is not None:
        expected = L.checked_shape(shape)
        if expected != geometry.shape:
            raise IncompatibleRing(
                f"ring {name!r} has shape {geometry.shape}, expected {expected}; a ring "
                "left from an earlier run? Remove it (shmring rm) or attach without shape="
            )
    if dtype is not None and L.checked_dtype(dtype) != geometry.dtype:
        raise IncompatibleRing(
            f"ring {name!r} has dtype {geometry.dtype}, expected {np.dtype(dtype)}"
        )


def _no_space(name: str, size: int, available: int) -> OSError:
    return OSError(
        errno.ENOSPC,
        f"cannot create ring {name!r}: it needs {size:,} bytes of {SHM_DIR} but only "
        f"{available:,} are free. Use fewer or smaller slots, remove stale rings "
        "(shmring gc), or enlarge /dev/shm (Docker: --shm-size)",
    )


def _initialise(segment: Segment) -> None:
    views = L.Views(segment.geometry, segment.header, segment.data)
    try:
        g = segment.geometry
        for descriptor in views.descriptors:
            descriptor[L.D_SEQ] = L.NONE
        for record in views.readers:
            record[L.R_PINNED] = L.NONE
        for record in views.writers:
            record[L.W_CLAIMED] = L.NONE
        # Highest index last: the free list is a stack, so buffer 0 is handed out first.
        for index in range(g.buffers):
            views.freelist[index] = g.buffers - 1 - index
        views.control[L.C_FREE_COUNT] = g.buffers
    finally:
        views.release()


def _link_claiming_stale(temp: str, name: str) -> None:
    path = segment_path(name)
    try:
        os.link(temp, path)
        return
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:  # removed meanwhile: the name is free now
        os.link(temp, path)
        return
    try:
        magic = os.pread(fd, len(L.MAGIC), 0)
        if magic != L.MAGIC:
            raise RingExists(
                f"{path} exists and is not a shmring ring; choose another name or remove it"
            )
        # Taking the creator lock proves the creator is dead, and keeps a second reclaimer
        # from unlinking a ring that this one is about to link.
        if not try_lock_range(fd, L.LOCK_CREATOR):
            raise RingExists(
                f"ring {name!r} already exists and its creator is alive; attach to it, close "
                "it first, or choose another name"
            )
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise RingExists(f"ring {name!r} was re-created while this process was creating it")
        warn_stale_ring(
            f"ring {name!r}: its creator died without unlinking it; reclaiming the name"
        )
        os.unlink(path)
        os.link(temp, path)
    finally:
        os.close(fd)
