# Linux primitives the ring is built from: futexes, byte-range OFD locks, memory fences.
#
# Rules: nothing here knows the ring's layout; callers pass byte addresses and offsets.
# Every wait takes a timeout, and every primitive is one whose state the kernel owns or
# repairs when a process dies:
#   - futex wait/wake on a 32-bit word inside the shared mapping (no FUTEX_PRIVATE flag: the
#     word is shared between processes). A SIGKILLed sleeper leaves nothing behind.
#   - open-file-description (OFD) locks on byte ranges of the segment file: the kernel drops
#     them when the last descriptor of the holder's open file closes, i.e. when it dies. They
#     live in the kernel, not in the segment, so no bytes a buggy process scribbles can wedge
#     them. Each handle opens the file itself, so two handles never share a lock owner.
#   - membarrier(): forces a barrier on every CPU (GLOBAL: slow, an RCU grace period); the
#     slow side of the asymmetric Dekker pair whose fast side (the exclusive writer's
#     in_publish) has no fence.
#   - Every process that imports this module registers for MEMBARRIER_CMD_GLOBAL_EXPEDITED,
#     so that a writer joining the ring quiesces the others in microseconds (W_EXPEDITED).
#     The per-frame pairs (publish, then look for sleeping readers; release, then look for
#     sleeping writers) do not use it: their fast sides fence, in C (_publisher.c, _taker.c).
#   - atomic_add32: an atomic add on a shared u32, done by the kernel (FUTEX_WAKE_OP).
#   - precise_futex_wait: a futex wait whose timeout ends on time (timer slack lowered for
#     the wait), for readers that nap until a frame is due (_pacing.py).
#   - MonotonicTimer: a timerfd (CLOCK_MONOTONIC, time.monotonic()'s clock) armed at an
#     absolute time, for an asyncio reader's nap: the event loop watches the descriptor, so
#     the kernel wakes the loop's own thread on time (a timerfd's expiry has no timer slack;
#     the loop's own timeouts are rounded up to milliseconds).
#   - map_shared_at / collapse_to_huge_pages: place a file mapping at an address of the
#     caller's choosing (inside address space it already owns) and ask the kernel to back it
#     with huge pages now. Collapsing is best effort: it reports failure, never raises.
#   - keep_freed_memory: glibc's allocator keeps up to the given bytes of freed memory in the
#     process (mallopt M_TRIM_THRESHOLD and M_MMAP_THRESHOLD, which also ends their dynamic
#     adjustment) instead of handing it back to the kernel and faulting it in again on the
#     next allocation of that size. Best effort: False where the C library has no mallopt
#     (glibc's accepts any value for these two).
#   - Machine facts read once at import: HUGE_PAGE_BYTES, LAST_LEVEL_CACHE_BYTES (sysfs).

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
_SYS_MEMBARRIER = {"x86_64": 324, "aarch64": 283}
_MACHINE = os.uname().machine
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_MEMBARRIER_CMD_QUERY = 0
_MEMBARRIER_CMD_GLOBAL = 1
_MEMBARRIER_CMD_GLOBAL_EXPEDITED = 1 << 1
_MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED = 1 << 2
_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_GLIBC_MMAP_THRESHOLD_MAX = 32 << 20  # the most glibc picks itself (64-bit, dynamic threshold)
_F_OFD_GETLK = 36
_F_OFD_SETLK = 37
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux; l_pid must be 0 for OFD


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _futex_syscall_number() -> int:
    try:
        return _SYS_FUTEX[_MACHINE]
    except KeyError:
        raise ImportError(f"shmring supports Linux on x86_64 and aarch64, not {_MACHINE}") from None


_SYS_FUTEX_NR = _futex_syscall_number()
_SYS_MEMBARRIER_NR = _SYS_MEMBARRIER.get(_MACHINE, -1)


def address_of(buffer: object, offset: int) -> int:
    """Address of byte `offset` of a writable buffer (the mapping must outlive its use)."""
    holder = ctypes.c_char.from_buffer(buffer, offset)  # type: ignore[arg-type]
    address = ctypes.addressof(holder)
    del holder  # drop the buffer export at once, or the mmap could never close
    return address


def futex_wait(address: int, expected: int, timeout: float) -> None:
    """Sleep while the u32 at `address` equals `expected`, at most `timeout` seconds.

    Returns on wake-up, value change, timeout or signal alike: callers re-check their
    condition, so the reason does not matter."""
    seconds = int(timeout)
    spec = _Timespec(seconds, int((timeout - seconds) * 1e9))
    _syscall(
        _SYS_FUTEX_NR,
        ctypes.c_void_p(address),
        _FUTEX_WAIT,
        ctypes.c_uint32(expected & 0xFFFFFFFF),
        ctypes.byref(spec),
        None,
        0,
    )


_PR_SET_TIMERSLACK = 29
_PR_GET_TIMERSLACK = 30
_NAP_SLACK_NS = 1000
_prctl = _libc.prctl


def precise_futex_wait(address: int, expected: int, timeout: float) -> None:
    """futex_wait for a nap that must end on time: Linux lets an ordinary thread's timed
    sleep end up to its timer slack (50 µs by default) late, so the calling thread's slack
    is 1 µs during the wait and restored after it."""
    slack = _prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)
    _prctl(_PR_SET_TIMERSLACK, _NAP_SLACK_NS, 0, 0, 0)
    try:
        futex_wait(address, expected, timeout)
    finally:
        _prctl(_PR_SET_TIMERSLACK, slack, 0, 0, 0)


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1
_timerfd_create = _libc.timerfd_create
_timerfd_settime = _libc.timerfd_settime


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class MonotonicTimer:
    """A one-shot timerfd: its descriptor becomes readable at the time given to arm()."""

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        fd = int(_timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def arm(self, when: float) -> None:
        """Expire at time.monotonic() `when` (at once if that has passed); forgets an expiry
        not yet read."""
        seconds = int(when)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(seconds, int((when - seconds) * 1e9)))
        if _timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def clear(self) -> None:
        """Consume an expiry, so the descriptor is no longer readable."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


_MAP_FIXED = 0x10  # these two are not in Python 3.11's mmap module
_MAP_NORESERVE = 0x4000
_MADV_COLLAPSE = 25  # Linux >= 6.1; an older kernel answers EINVAL
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_madvise = _libc.madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _huge_page_bytes() -> int:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 2 * 1024 * 1024  # x86_64, and aarch64 with 4 KiB pages


HUGE_PAGE_BYTES = _huge_page_bytes()


_CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"
_SIZE_UNITS = {"K": 1024, "M": 1024 * 1024}


def _last_level_cache_bytes() -> int | None:
    """The largest CPU cache the kernel reports for CPU 0 (sysfs: "32768K"), or None."""
    sizes = []
    try:
        for entry in os.listdir(_CACHE_DIR):
            if entry.startswith("index"):
                with open(os.path.join(_CACHE_DIR, entry, "size")) as f:
                    text = f.read().strip()
                sizes.append(int(text[:-1]) * _SIZE_UNITS[text[-1]])
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return max(sizes, default=None)


LAST_LEVEL_CACHE_BYTES = _last_level_cache_bytes()


def keep_freed_memory(nbytes: int) -> bool:
    """Let this process keep up to `nbytes` of freed heap, and allocate blocks up to that
    size (at most 32 MiB) from it rather than by mmap: see the module's rules."""
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is None:
        return False
    mmap_threshold = min(nbytes, _GLIBC_MMAP_THRESHOLD_MAX)
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and mallopt(_M_TRIM_THRESHOLD, nbytes))


def reserve_address_space(length: int, writable: bool) -> mmap.mmap:
    """A private anonymous mapping that no page backs (nothing may touch it): address space
    for map_shared_at to place file mappings in. Its buffer is read-only unless `writable`;
    a read-only one is PROT_NONE, which no overcommit policy charges for, while a writable
    one is charged under vm.overcommit_memory=2 (strict accounting ignores MAP_NORESERVE)."""
    prot = mmap.PROT_READ | mmap.PROT_WRITE if writable else 0  # 0: a read-only buffer
    return mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE, prot=prot)


def map_shared_at(address: int, length: int, writable: bool, fd: int, offset: int) -> None:
    """Map `length` bytes of file `fd` from `offset`, shared, at exactly `address`
    (MAP_FIXED: it replaces whatever was mapped there, so the caller must own that range)."""
    prot = mmap.PROT_READ | mmap.PROT_WRITE if writable else mmap.PROT_READ
    if _mmap(address, length, prot, mmap.MAP_SHARED | _MAP_FIXED, fd, offset) != address:
        raise OSError(ctypes.get_errno(), "mmap(MAP_FIXED) of the ring's buffers failed")


def collapse_to_huge_pages(address: int, length: int) -> bool:
    """Ask the kernel to back [address, address + length), 2 MiB-aligned, with huge pages
    now (MADV_COLLAPSE), copying what is there. Works on tmpfs files whatever /dev/shm's
    mount says, unless THP is off system-wide ("deny"); False if the kernel would not (too
    old, no huge page free)."""
    return int(_madvise(address, length, _MADV_COLLAPSE)) == 0


def futex_wake(address: int) -> None:
    """Wake every sleeper on the u32 at `address`."""
    _syscall(_SYS_FUTEX_NR, ctypes.c_void_p(address), _FUTEX_WAKE, 0x7FFFFFFF, None, None, 0)


_FUTEX_WAKE_OP = 5
_FUTEX_OP_ADD = 1


def atomic_add32(address: int, delta: int) -> None:
    """Atomically add `delta` (-2048..2047) to the u32 at `address`.

    Python has no atomic read-modify-write on shared memory; FUTEX_WAKE_OP performs one in
    the kernel (and wakes nobody here). Being a system call, it is also a full barrier."""
    op = (_FUTEX_OP_ADD << 28) | ((delta & 0xFFF) << 12)
    address_arg = ctypes.c_void_p(address)
    if _syscall(_SYS_FUTEX_NR, address_arg, _FUTEX_WAKE_OP, 0, None, address_arg, op) < 0:
        raise OSError(ctypes.get_errno(), "futex(FUTEX_WAKE_OP) failed")


def _membarrier_commands() -> int:
    if _SYS_MEMBARRIER_NR < 0:
        return 0
    return max(0, int(_syscall(_SYS_MEMBARRIER_NR, _MEMBARRIER_CMD_QUERY, 0, 0)))


def _register_expedited() -> bool:
    """Ask the kernel to include this process in GLOBAL_EXPEDITED barriers."""
    return int(_syscall(_SYS_MEMBARRIER_NR, _MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0)) == 0


_COMMANDS = _membarrier_commands()
MEMBARRIER_AVAILABLE = bool(_COMMANDS & _MEMBARRIER_CMD_GLOBAL)
_EXPEDITED = (
    bool(_COMMANDS & _MEMBARRIER_CMD_GLOBAL_EXPEDITED)
    and bool(_COMMANDS & _MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)
    and _register_expedited()
)
if _EXPEDITED:
    # A child gets a new address space; register it too (idempotent if it was inherited).
    os.register_at_fork(after_in_child=_register_expedited)

# Whether this process takes part in expedited barriers: writers say so in their record, so a
# joiner can quiesce them in microseconds instead of the plain command's grace period.
BARRIER_REGISTERED = _EXPEDITED


def membarrier(expedited: bool) -> None:
    """Make every thread that may run a lock-free step execute a full barrier before this
    returns. `expedited` only when every process concerned registered (BARRIER_REGISTERED):
    the expedited command reaches just those; the plain GLOBAL one reaches everybody, at the
    cost of an RCU grace period (milliseconds)."""
    command = _MEMBARRIER_CMD_GLOBAL_EXPEDITED if expedited else _MEMBARRIER_CMD_GLOBAL
    if _syscall(_SYS_MEMBARRIER_NR, command, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"membarrier({command}) failed")


def try_lock_range(fd: int, start: int) -> bool:
    """Take an exclusive OFD lock on byte `start` of `fd` without waiting."""
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def unlock_range(fd: int, start: int) -> None:
    fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, start, 1, 0))


def range_is_locked(fd: int, start: int, length: int = 1) -> bool:
    """Whether another open file description holds a write lock on any of `length` bytes
    from `start`. Used as a liveness test: a participant write-locks its byte for as long as
    it lives. Asking with a read lock makes other read locks invisible: anyone who can read
    the file can take those, so they prove nothing."""
    request = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, start, length, 0)
    answer = fcntl.fcntl(fd, _F_OFD_GETLK, request)
    return bool(_FLOCK.unpack(answer)[0] != fcntl.F_UNLCK)
