# A ring's shared-memory segment: naming, atomic creation, attaching, unlinking.
#
# Rules:
#   - A ring named N lives in the tmpfs file /dev/shm/shmring.N (what shm_open would use),
#     opened directly so that no multiprocessing resource tracker ever learns about it: on
#     Python < 3.13 the tracker unlinks segments that an *attaching* process registered.
#   - Creation is atomic: the segment is built and initialised as a file with no name
#     (O_TMPFILE), its creator takes the creator lock, and only then is it linked under its
#     real name (linkat through /proc/self/fd; it fails if the name exists). An attacher
#     therefore never sees a half-made ring, a ring whose creator lock is free has a dead
#     creator (stale), and a creator killed before the link leaves nothing: the kernel frees
#     a nameless file with its last descriptor. Where /dev/shm has no O_TMPFILE, the file is
#     made under a private temporary name instead, and every create first removes the
#     temporary files of this user whose creating process is dead.
#   - Trust: a ring's owner (the segment file's uid) and whoever may write the file can feed
#     it frames and read what is written. Attaching checks the owner before reading a byte:
#     by default it must be this process's effective user or root, else UntrustedRing;
#     `owner=` names the one user to trust instead. `create` never takes over a name whose
#     file another user owns (RingExists names that user). Observers (inspect, ls) read any
#     ring they can open, never mapping it (open_file; _inspect.py says why). A user who
#     could read the file but not write it could still lock its bytes, so `create` refuses
#     modes that allow that (checked_mode), and only write locks count as alive
#     (range_is_locked). docs/OPERATIONS.md, "Trust model".
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
#     page size (2 MiB), so that huge pages can back them. The creator decides whether they
#     do (`huge_pages=`: by default, frames of at least 2 MiB in a ring of at most
#     AUTO_HUGE_PAGES_LIMIT bytes of buffers, since moving pages costs milliseconds per MiB)
#     and records it in the control flags (F_HUGE_PAGES); every participant whose ring has
#     the flag asks the kernel (MADV_COLLAPSE: the creator's call moves the pages, later ones
#     only map them), and no other ever does; inspecting a ring never asks, since asking can
#     move pages under a live stream. Best effort: a kernel that refuses leaves the 4 KiB
#     pages, which work the same. docs/OPERATIONS.md, "Huge pages", has what each costs.

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import pwd
import re
import secrets
import stat
import struct
import time
import weakref
from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike

from . import _layout as L
from ._errors import IncompatibleRing, RingExists, RingNotFound, UntrustedRing, warn_stale_ring
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
AUTO_HUGE_PAGES_LIMIT = 128 * 1024 * 1024  # huge_pages="auto": buffers of at most this many bytes
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)  # open(O_TMPFILE) unsupported
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


def checked_owner(owner: object) -> frozenset[int]:
    """The uids whose rings `attach(..., owner=owner)` trusts: None, this process's effective
    user and root (who can do anything to it anyway); a uid or a user name, that user."""
    if owner is None:
        return frozenset({os.geteuid(), 0})
    if isinstance(owner, str):
        try:
            return frozenset({pwd.getpwnam(owner).pw_uid})
        except KeyError:
            raise ValueError(
                f"owner={owner!r} is not a user of this machine; pass a user name or a uid"
            ) from None
    if isinstance(owner, bool) or not isinstance(owner, int):
        raise TypeError(f"owner must be None, a user name or a uid, got {owner!r}")
    if owner < 0:
        raise ValueError(f"owner must be a uid (0 or more), got {owner}")
    return frozenset({owner})


def user_label(uid: int) -> str:
    """'alice (uid 1000)', or 'uid 1000' for a uid with no user name."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def checked_mode(mode: object) -> int:
    """`mode=` of create: permission bits that let neither the group nor others read the
    file without writing it. Such a user cannot attach (every participant maps the header
    writable), yet could take read locks on its lock bytes and stall the ring."""
    mode = L.positive_int(mode, "mode", 0, 0o777)
    for who, bits in (("its group", mode >> 3 & 0o6), ("other users", mode & 0o6)):
        if bits == 0o4:
            raise ValueError(
                f"mode {mode:#o} lets {who} read the ring but not write it: they could not "
                "attach (every participant maps the header writable), but could lock bytes "
                "of the file and stall the ring. Use 0o600 (this user only), 0o660 (its "
                "group too) or 0o666 (every local user)"
            )
    return mode


def checked_huge_pages(choice: object) -> bool | str:
    """`huge_pages=` of create: True, False or "auto"."""
    if isinstance(choice, bool):
        return choice
    if isinstance(choice, str):
        if choice == "auto":
            return choice
        raise ValueError(f"huge_pages must be 'auto', True or False, got {choice!r}")
    raise TypeError(f"huge_pages must be 'auto', True or False, got {choice!r}")


def temp_owner_alive(entry: str) -> bool:
    """Whether the process that made creation temporary file `entry` may still be running."""
    pid_text = entry[len(TEMP_PREFIX) :].split("-", 1)[0]
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def never_appeared(name: str, timeout: float) -> RingNotFound:
    """What an attach that waited `timeout` s for ring `name` in vain raises (a blocking
    attach, or an awaited one)."""
    return RingNotFound(
        f"no ring named {name!r} appeared within {timeout:g} s ({segment_path(name)}); "
        "start its creator (RingWriter.create) first, or wait longer"
    )


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
        huge_pages: bool | None = None,
    ) -> None:
        """`huge_pages`: whether to ask for huge pages; None, if the ring's creator did."""
        self.name = name
        self.fd = fd
        _open_segments.add(self)  # at once: a fork() from here on closes fd in the child
        self.geometry = geometry
        info = os.fstat(fd)
        self.inode, self.owner_uid = info.st_ino, info.st_uid
        map_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        try:
            self.header = mmap.mmap(map_fd, geometry.data_offset)
            if huge_pages is None:
                huge_pages = _creator_chose_huge_pages(self.header)
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
    def create(cls, name: str, geometry: L.Geometry, mode: int, huge_pages: bool | str) -> Segment:
        """Make ring `name`; `huge_pages` is create's choice (checked_huge_pages)."""
        size = geometry.segment_bytes
        available = free_bytes()
        if size > available:
            raise _no_space(name, size, available)
        geometry.check_size()  # a /dev/shm larger than the limit: what unpack would refuse
        _reclaim_abandoned_temps()
        fd, temp = _new_file()
        segment: Segment | None = None
        try:
            os.fchmod(fd, mode)  # exact mode, whatever the umask
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise _no_space(name, size, free_bytes()) from None
                raise
            os.pwrite(fd, geometry.pack(), 0)
            huge = _wants_huge_pages(huge_pages, geometry)
            segment = cls(name, fd, geometry, writable_data=True, huge_pages=huge)
            _initialise(segment, huge)
            if not try_lock_range(fd, L.LOCK_CREATOR):
                raise OSError(errno.EAGAIN, "could not take the creator lock of a new ring")
            _link_claiming_stale(f"/proc/self/fd/{fd}" if temp is None else temp, name)
            return segment
        except BaseException:
            if segment is None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            else:  # it owns fd: closed once, here (a second close could hit a reused number)
                with contextlib.suppress(OSError):
                    segment.unlink()  # the name, if it was linked (to this segment) already
                segment.close()
            raise
        finally:
            if temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)

    # ---- attach ------------------------------------------------------------------------
    @classmethod
    def open(cls, name: str, writable_data: bool, owners: frozenset[int] | None = None) -> Segment:
        """Open, check (open_file) and map ring `name`, asking for huge pages if its creator
        did."""
        fd, geometry = cls.open_file(name, owners)
        try:
            return cls(name, fd, geometry, writable_data)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def open_file(name: str, owners: frozenset[int] | None = None) -> tuple[int, L.Geometry]:
        """Open ring `name`'s file and check its header and size, mapping nothing: its
        descriptor and geometry. `owners`: the uids trusted to own it (checked_owner); None,
        any."""
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
            if owners is not None:
                _check_owner(fd, name, owners)
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
            return fd, geometry
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
        owner: int | str | None = None,
    ) -> Segment:
        """Open ring `name`, waiting up to `timeout` seconds for it to appear, and check
        that it belongs to `owner` (checked_owner) and has the geometry the caller expects
        (if it said)."""
        owners = checked_owner(owner)
        deadline = deadline_from(timeout)
        while True:
            try:
                segment = cls.open(name, writable_data, owners=owners)
                break
            except RingNotFound:
                left = _ATTACH_POLL if deadline is None else deadline - time.monotonic()
                if left <= 0 and timeout:
                    raise never_appeared(name, timeout) from None
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
        """Remove the name, if it still names this segment (not a newer ring). Another
        user's ring may not be ours to remove (sticky /dev/shm: EPERM); it is then left,
        stale, to its owner or root (shmring gc)."""
        path = segment_path(self.name)
        try:
            if os.lstat(path).st_ino == self.inode:  # a link put at the name is not ours
                os.unlink(path)
        except FileNotFoundError:
            pass
        except PermissionError:
            if self.owner_uid == os.geteuid():
                raise

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
        _open_segments.discard(self)


# Segments open in this process. A forked child inherits their descriptors, whose OFD locks
# say that the parent (creator, writer, reader) is alive: the child closes them at once,
# whatever it was doing, also while a thread of the parent was building a handle.
_open_segments: weakref.WeakSet[Segment] = weakref.WeakSet()


def _close_inherited_descriptors() -> None:
    for segment in list(_open_segments):
        with contextlib.suppress(OSError):
            os.close(segment.fd)
        segment.fd = -1
    _open_segments.clear()


os.register_at_fork(after_in_child=_close_inherited_descriptors)


def open_regular(path: str, flags: int) -> int:
    """Open `path` (a name found in /dev/shm, which any local user can fill) as a ring
    file: never through a symbolic link, never waiting (a FIFO's open would block until a
    writer came), and only a regular file (looked at before the open, so that no device is
    ever opened, and checked on the open file). IncompatibleRing names what the entry is
    instead; FileNotFoundError and PermissionError come through."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise IncompatibleRing(_not_a_ring(path, file_kind(mode)))
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IncompatibleRing(_not_a_ring(path, "a symbolic link")) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise IncompatibleRing(_not_a_ring(path, file_kind(mode)))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def file_kind(mode: int) -> str:
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
        first = -geometry.data_offset % HUGE_PAGE_BYTES  # into the buffers
        whole_pages = (length - first) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
        if huge_pages and whole_pages > 0:
            collapse_to_huge_pages(base + skip + first, whole_pages)
        view = memoryview(reservation)[skip : skip + length]  # read-only unless writable
    except BaseException:
        reservation.close()
        raise
    return reservation, view


def _wants_huge_pages(choice: bool | str, geometry: L.Geometry) -> bool:
    if choice == "auto":
        buffers = geometry.segment_bytes - geometry.data_offset
        return geometry.buffer_bytes >= HUGE_PAGE_BYTES and buffers <= AUTO_HUGE_PAGES_LIMIT
    return bool(choice)


def _creator_chose_huge_pages(header: mmap.mmap) -> bool:
    offset = L.control_word_offset(L.C_FLAGS)
    return bool(int.from_bytes(header[offset : offset + 8], "little") & L.F_HUGE_PAGES)


def _check_owner(fd: int, name: str, owners: frozenset[int]) -> None:
    uid = os.fstat(fd).st_uid
    if uid not in owners:
        trusted = " or ".join(user_label(owner) for owner in sorted(owners))
        raise UntrustedRing(
            f"ring {name!r} ({segment_path(name)}) belongs to {user_label(uid)}, not to "
            f"{trusted}: its owner can feed you frames and read the ones written. If you trust "
            f"that user, attach with owner={uid}; if not, have it removed (by that user or "
            f"root: shmring rm {name}) and create the ring again"
        )


def _new_file() -> tuple[int, str | None]:
    """A new, empty file in /dev/shm for a ring: nameless (O_TMPFILE) where the kernel can,
    else under a temporary name (returned) whose creator lock is taken at once, so that
    _reclaim_abandoned_temps can tell a live creation from one that died. Mode 0600 until
    the caller sets the ring's: with the umask, another mode could let other users open
    it read-only meanwhile (checked_mode says why that matters)."""
    mode = 0o600
    try:
        return os.open(SHM_DIR, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode), None
    except OSError as exc:
        if exc.errno not in _NO_TMPFILE:
            raise
    temp = os.path.join(SHM_DIR, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try_lock_range(fd, L.LOCK_CREATOR)  # a new file: nobody else can hold it
    return fd, temp


def _reclaim_abandoned_temps() -> None:
    """Remove this user's creation temporary files whose creator is dead."""
    for entry in os.listdir(SHM_DIR):
        if entry.startswith(TEMP_PREFIX):
            remove_abandoned_temp(entry, any_owner=False)


def _open_temp(entry: str, flags: int) -> int:
    """Creation temporary file `entry`, opened, if the pid in its name is gone (-1 if that
    process may still run); OSError if it cannot be opened."""
    if temp_owner_alive(entry):
        return -1
    path = os.path.join(SHM_DIR, entry)
    return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)


def temp_abandoned(entry: str) -> bool:
    """Whether creation temporary file `entry` was left by a creator that died: its pid is
    gone and its creator lock is free (a creator in another pid namespace, whose pid means
    nothing here, holds its lock)."""
    try:
        fd = _open_temp(entry, os.O_RDONLY)
    except OSError:
        return False  # gone meanwhile, or not ours to open
    if fd < 0:
        return False
    try:
        return not range_is_locked(fd, L.LOCK_CREATOR)
    finally:
        os.close(fd)


def remove_abandoned_temp(entry: str, any_owner: bool) -> bool:
    """Remove creation temporary file `entry` (this user's, unless `any_owner`) if its
    creator died: its pid is gone and its creator lock free, which taking it proves (and
    keeps a second reclaimer out). Whether it was removed."""
    try:
        fd = _open_temp(entry, os.O_RDWR)
    except FileNotFoundError:
        return True  # somebody else removed it
    except OSError:
        return False  # another user's, or not a file
    if fd < 0:
        return False
    path = os.path.join(SHM_DIR, entry)
    try:
        info = os.fstat(fd)
        if (
            (any_owner or info.st_uid == os.geteuid())
            and stat.S_ISREG(info.st_mode)
            and try_lock_range(fd, L.LOCK_CREATOR)
        ):
            os.unlink(path)
            return True
        return False
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


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
            f"ring {name!r} has dtype {geometry.dtype}, expected {np.dtype(dtype)}; a ring "
            "left from an earlier run? Remove it (shmring rm) or attach without dtype="
        )


def _no_space(name: str, size: int, available: int) -> OSError:
    return OSError(
        errno.ENOSPC,
        f"cannot create ring {name!r}: it needs {size:,} bytes of {SHM_DIR} but only "
        f"{available:,} are free. Use fewer or smaller slots, remove stale rings "
        "(shmring gc), or enlarge /dev/shm (Docker: --shm-size)",
    )


def _initialise(segment: Segment, huge_pages: bool) -> None:
    views = L.Views(segment.geometry, segment.header, segment.data)
    try:
        g = segment.geometry
        views.control[L.C_FLAGS] = L.F_HUGE_PAGES if huge_pages else 0
        for descriptor in views.descriptors:
            descriptor[L.D_SEQ] = L.NONE
        for record in views.readers:
            record[L.R_PINNED] = L.NONE
        for line in views.pins:  # overwrite rings
            L.clear_pin_line(line)
        for record in views.writers:
            record[L.W_CLAIMED] = L.NONE
        # Highest index last: the free list is a stack, so buffer 0 is handed out first.
        for index in range(g.buffers):
            views.freelist[index] = g.buffers - 1 - index
        views.control[L.C_FREE_COUNT] = g.buffers
    finally:
        views.release()


def _link(source: str, path: str) -> None:
    """Give file `source` (a path, or /proc/self/fd/N of a nameless file) the name `path`.
    linkat(AT_SYMLINK_FOLLOW), which os.link calls only when given a directory fd."""
    directory = os.open(SHM_DIR, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(source, path, dst_dir_fd=directory, follow_symlinks=True)
    finally:
        os.close(directory)


def _taken_by_another_user(name: str, uid: int) -> RingExists:
    return RingExists(
        f"cannot create ring {name!r}: {segment_path(name)} already exists and belongs to "
        f"another user, {user_label(uid)}; that user controls the name. Choose another name, "
        f"or have it removed (by that user or root: shmring rm {name}) if it should not be there"
    )


def _link_claiming_stale(source: str, name: str) -> None:
    path = segment_path(name)
    try:
        _link(source, path)
        return
    except FileExistsError:
        pass
    try:
        fd = open_regular(path, os.O_RDWR)
    except FileNotFoundError:  # removed meanwhile: the name is free now
        _link(source, path)
        return
    except PermissionError:  # another user's file that we may not open
        raise _taken_by_another_user(name, os.lstat(path).st_uid) from None
    except IncompatibleRing as exc:  # a link, directory, fifo or socket planted there
        raise RingExists(f"cannot create ring {name!r}: {exc}") from None
    try:
        uid = os.fstat(fd).st_uid
        if uid != os.geteuid():
            raise _taken_by_another_user(name, uid)
        start = os.pread(fd, len(L.MAGIC) + 2, 0)
        if start[: len(L.MAGIC)] != L.MAGIC:
            raise RingExists(
                f"{path} exists and is not a shmring ring; choose another name or remove it"
            )
        (major,) = struct.unpack_from("<H", start.ljust(len(L.MAGIC) + 2, b"\0"), len(L.MAGIC))
        if major != L.VERSION_MAJOR:  # its creator lock may mean something else there
            raise RingExists(
                f"ring {name!r} exists, made by a shmring of format version {major}, whose "
                "programs may be using it; stop them and remove it (shmring rm --force "
                f"{name}), or choose another name"
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
        _link(source, path)
    finally:
        os.close(fd)
