# The binary layout of a ring segment: the one module that knows offsets.
#
# docs/FORMAT.md describes the same layout for programs in other languages; this module
# mirrors it exactly, and no other module computes an offset. C takes it from
# shmring_layout.h, generated from this module's constants and comments (_layout_header.py:
# run `python -m shmring._layout_header` after changing one). Everything is little-endian.
#
# A segment is: a fixed header (geometry, written once by the creator and protected by a
# CRC-32), a control block (the shared counters, one 64-byte cache line per group of words
# that the same party writes), the descriptor table (one record per queued frame), the
# reader, group and writer tables (one 64-byte record each), the free-buffer list, and,
# page-aligned, the frame buffers. Every mutable field is an unsigned 64-bit word so that
# one `memoryview.cast("Q")` per region serves all of them; the code elsewhere indexes those
# views with the field constants below.
#
# Nothing read from shared memory is trusted: `Geometry.unpack` checks magic, version,
# checksum, create's limits (LIMITS, the one table both use) and that the stored offsets
# equal the ones recomputed from the geometry.

from __future__ import annotations

import mmap
import operator
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from math import prod

import numpy as np

from ._errors import IncompatibleRing

MAGIC = b"\x93SHMRING"
VERSION_MAJOR = 3  # 3: several writers of an overwrite ring take no lock per frame either
VERSION_MINOR = 0

CACHE_LINE = 64
PAGE = mmap.PAGESIZE
MAX_NDIM = 8
MAX_READERS = 1024
MAX_WRITERS = 1024
MAX_META = 65536
MAX_GROUP_NAME = 32
MAX_SLOTS = 1 << 20
MAX_SPARE_BUFFERS = 1 << 20  # overwrite rings: buffers beyond `slots`
MAX_DIM = 1 << 40  # any one dimension of a frame's shape
MAX_SEGMENT_BYTES = 1 << 44  # 16 TiB: far beyond any /dev/shm, within what mmap can map
# The limits of `create`'s arguments, which `Geometry.unpack` enforces too (a header outside
# them was not made by create: a ring declaring 2**24 slots on a sparse file must not cost
# the reader gigabytes). One table, so the two cannot drift apart.
LIMITS: dict[str, tuple[int, int]] = {
    "slots": (1, MAX_SLOTS),
    "spare_buffers": (0, MAX_SPARE_BUFFERS),
    "max_readers": (1, MAX_READERS),
    "max_writers": (1, MAX_WRITERS),
    "meta_size": (0, MAX_META),
    "ndim": (1, MAX_NDIM),
    "dimension": (1, MAX_DIM),
    "segment_bytes": (1, MAX_SEGMENT_BYTES),
}
NONE = 0xFFFF_FFFF_FFFF_FFFF  # "no value" in any u64 field (e.g. a descriptor never written)
U64_MASK = NONE
SEQ_LIMIT = 1 << 62  # sequence numbers beyond this can only come from a damaged header
# A descriptor's D_SEQ while a writer of a sequenced overwrite ring owns its position (the
# number it writes there, or the frame it evicts, | SEQ_BUSY): readers pass it by.
SEQ_BUSY = 1 << 63

if sys.byteorder != "little":  # the views below use native order
    raise ImportError("shmring's segment format is little-endian; this host is big-endian")

# ---- fixed header: bytes 0..255, written once at create ---------------------------------
FIXED_HEADER_BYTES = 256
_FIXED = struct.Struct("<8s2HIQ8I16s8Q14Q")
_FIXED_FIELDS = (
    "magic version_major version_minor header_bytes segment_bytes "
    "policy slots buffers max_readers max_writers meta_size ndim itemsize dtype "
    "s0 s1 s2 s3 s4 s5 s6 s7 buffer_bytes buffer_stride control_offset descriptors_offset "
    "descriptor_bytes readers_offset groups_offset writers_offset freelist_offset "
    "data_offset creator_pid created_ns pins_offset reserved1"
).split()
VERSION_END = 10  # magic (8 bytes), then version_major (u16): all any version must keep
CHECKSUM_OFFSET = FIXED_HEADER_BYTES - 8  # CRC-32 of bytes [0, CHECKSUM_OFFSET) as u64
assert _FIXED.size <= CHECKSUM_OFFSET


def version_major_of(start: bytes) -> int:
    """The major format version in the first VERSION_END bytes of a segment."""
    major: int = struct.unpack_from("<H", start, len(MAGIC))[0]
    return major


POLICY_BLOCK = 0
POLICY_OVERWRITE = 1
POLICIES = {"block": POLICY_BLOCK, "overwrite": POLICY_OVERWRITE}

# ---- control block: 4 cache lines of u64 words at CONTROL_OFFSET -------------------------
CONTROL_OFFSET = FIXED_HEADER_BYTES
CONTROL_BYTES = 4 * CACHE_LINE
# line 0: written by the writer on every frame
C_HEAD = 0  # frames published so far == the next sequence number
C_TAIL = 1  # every frame with seq < tail is released by all groups and its buffer reused
C_FREE_COUNT = 2  # number of valid entries at the start of the free-buffer list
C_NEXT_SEQ = 3  # sequenced (shared mode): the next sequence number a writer may claim
# A reclaim (in C only: _publisher.c, shmring_reclaim) stores the free list entries, then
# tail, then free count, release stores in that order, with no signal handler between them:
# a reader that loads free count and then tail (acquire) never sees a freed buffer both in
# the window and on the free list, and a kill between the two stores leaves it in neither
# (out of use until a repair rebuilds the list), never in both (freed twice by the next).
# line 1: written under the header lock
C_LOCK_OWNER = 8  # token of the header-lock holder; non-zero at acquire => holder died
C_FLAGS = 9  # F_* bits below
C_WRITER_MODE = 10  # MODE_EXCLUSIVE or MODE_SHARED
C_WRITERS = 11  # registered writer records
C_READERS = 12  # registered reader records
C_MEMBERSHIP = 13  # bumped whenever reader or group records change state
# line 2: wake-up words
C_READER_WAITERS = 16  # readers asleep (or about to sleep) on head; atomic u32 adds
C_WRITER_WAITERS = 17  # writers asleep (or about to sleep) on space; atomic u32 adds
C_SPACE = 18  # bumped when space may have been freed; futex word = low 32 bits
C_SPACE_WANTED = 19  # a sleeping writer wants waking once a release reaches this seq
C_FRAMES = 20  # bumped when readers are woken (a frame, or the stream closed); futex word
CONTROL_WORDS = CONTROL_BYTES // 8

F_CLOSED = 1  # the stream ended (see docs/API.md, "End of stream"): readers drain, then stop
F_STARTED = 2  # a writer has joined: from now on no live writer and no F_CLOSED = writers died
F_SEQUENCED = 4  # shared mode: writers claim numbers (C_NEXT_SEQ) without the lock
F_HUGE_PAGES = 8  # set at create: the creator asked for huge pages, so participants ask too
MODE_EXCLUSIVE = 0  # one writer: it publishes without the lock
MODE_SHARED = 1  # several writers: they sequence frames lock-free (F_SEQUENCED)

# ---- descriptor: one per queued frame -----------------------------------------------------
DESCRIPTORS_OFFSET = CONTROL_OFFSET + CONTROL_BYTES  # the table follows the control block
D_SEQ = 0  # sequence number of the frame here; NONE until first published
D_BUFFER = 1  # index of the buffer holding the frame
D_FLAGS = 2  # DF_* bits in the low 32 bits; bytes of user metadata in the high 32
D_TIMESTAMP = 3  # nanoseconds, CLOCK_MONOTONIC unless the writer passed its own
D_SHAPE = 5  # 8 words: the frame's own shape (valid with DF_OWN_SHAPE)
D_META_BYTE_OFFSET = (D_SHAPE + MAX_NDIM) * 8  # user metadata bytes start here
DF_EVICTED = 1  # overwrite policy: the writer took this frame's buffer; readers skip it
DF_OWN_SHAPE = 2  # the frame is smaller than the ring's shape: D_SHAPE holds its own
DF_SKIP = 4  # no frame: a claim abandoned, or its writer died; readers skip it (dropped)
META_LEN_SHIFT = 32  # D_FLAGS >> META_LEN_SHIFT = bytes of user metadata
# A skip's count (since 2.2): D_FLAGS >> SKIP_COUNT_SHIFT on a DF_SKIP descriptor = frames it
# stands for (0, as before 2.2: one), so that one descriptor publishes a gap of many frames
SKIP_COUNT_SHIFT = 32
MAX_SKIP_COUNT = 0xFFFF_FFFF  # the most frames one skip descriptor stands for


def skip_count(flags: int) -> int:
    """The frames a DF_SKIP descriptor whose D_FLAGS word is `flags` stands for. (C has it
    as shmring_skip_count in shmring_layout.h: _layout_header.SKIP_COUNT.)"""
    return flags >> SKIP_COUNT_SHIFT or 1


# ---- reader record (64 bytes) -------------------------------------------------------------
R_STATE = 0  # STATE_FREE / STATE_ACTIVE
R_TOKEN = 1  # random non-zero id of the owning handle
R_PID = 2
R_GROUP = 3  # index into the group table, or NONE for a reader that is its own group
R_RELEASE = 4  # frames with seq < release are released by this reader (NONE: holds nothing)
R_DROPPED = 5  # frames this reader lost (overwrite policy, skips, latest())
R_SLEEPING = 6  # 1 while counted in C_READER_WAITERS: a reaper of a dead sleeper uncounts it
R_PINNED = 7  # overwrite policy: a buffer this reader holds (its first pin), or NONE

# ---- pin line (64 bytes, overwrite rings, since 2.3): a reader's pins beyond R_PINNED ----
# One line per reader record, same index, in the pin table right before the free list.
PIN_TOP = 0  # writers scan words PIN_HELD .. PIN_HELD + top - 1 (never more than PINS_PER_LINE)
PIN_HELD = 1  # words 1..7: buffers this reader holds beyond R_PINNED, each or NONE
PINS_PER_LINE = 7
MAX_PINS = 1 + PINS_PER_LINE  # frames one overwrite reader may hold at once

# ---- group record (64 bytes): readers sharing one cursor ---------------------------------
G_STATE = 0
G_CURSOR = 1  # next sequence number to hand to a member
G_MEMBERS = 2
G_NAME = 3  # words 3..6: the group name, UTF-8, NUL padded (MAX_GROUP_NAME bytes)
G_NAME_BYTE_OFFSET = G_NAME * 8

# ---- writer record (64 bytes) -------------------------------------------------------------
W_STATE = 0
W_TOKEN = 1
W_PID = 2
W_IN_PUBLISH = 3  # 1 while the writer is inside a lock-free step (exclusive or sequenced)
W_CLAIMED = 4  # buffer index this writer has claimed, or NONE
W_SLEEPING = 5  # 1 while counted in C_WRITER_WAITERS: a reaper of a dead sleeper uncounts it
W_CLAIMED_SEQ = 6  # sequenced: the sequence number it claims (or kept), or NONE
W_EXPEDITED = 7  # 1: its process registered for MEMBARRIER_CMD_GLOBAL_EXPEDITED (since 2.1)

RECORD_WORDS = CACHE_LINE // 8
STATE_FREE = 0
STATE_ACTIVE = 1

# ---- byte-range locks (kernel OFD locks on the segment file, not bytes in it) ------------
LOCK_HEADER = 0
LOCK_CREATOR = 1
LOCK_WRITER_BASE = 4096
LOCK_READER_BASE = 8192


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Geometry:
    """Everything fixed at create time, and the offsets it implies."""

    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]
    slots: int
    buffers: int
    policy: int
    max_readers: int
    max_writers: int
    meta_size: int
    creator_pid: int = 0
    created_ns: int = 0
    version_minor: int = VERSION_MINOR  # the ring's, read from its header (pack writes ours)

    @property
    def buffer_bytes(self) -> int:
        return prod(self.shape) * self.dtype.itemsize

    @property
    def buffer_stride(self) -> int:
        # Big frames start on a page so that copies run on aligned, whole pages.
        align = PAGE if self.buffer_bytes >= PAGE else CACHE_LINE
        return _round_up(max(self.buffer_bytes, 1), align)

    @property
    def descriptor_bytes(self) -> int:
        return _round_up(D_META_BYTE_OFFSET + self.meta_size, CACHE_LINE)

    @property
    def descriptors_offset(self) -> int:
        return DESCRIPTORS_OFFSET

    @property
    def readers_offset(self) -> int:
        return self.descriptors_offset + self.slots * self.descriptor_bytes

    @property
    def groups_offset(self) -> int:
        return self.readers_offset + self.max_readers * CACHE_LINE

    @property
    def writers_offset(self) -> int:
        return self.groups_offset + self.max_readers * CACHE_LINE

    @property
    def pins_offset(self) -> int:
        """The pin table (overwrite rings): one line per reader, before the free list; 0
        for block rings, which have none."""
        if self.policy != POLICY_OVERWRITE:
            return 0
        return self.writers_offset + self.max_writers * CACHE_LINE

    @property
    def freelist_offset(self) -> int:
        pins = self.max_readers * CACHE_LINE if self.policy == POLICY_OVERWRITE else 0
        return self.writers_offset + self.max_writers * CACHE_LINE + pins

    @property
    def data_offset(self) -> int:
        return _round_up(self.freelist_offset + self.buffers * 8, PAGE)

    @property
    def segment_bytes(self) -> int:
        return self.data_offset + self.buffers * self.buffer_stride

    def buffer_offset(self, index: int) -> int:
        return self.data_offset + index * self.buffer_stride

    def check_size(self) -> None:
        """ValueError if the segment passes LIMITS' total size (create's and unpack's check)."""
        low, high = LIMITS["segment_bytes"]
        if not low <= self.segment_bytes <= high:
            raise ValueError(
                f"the ring would be {self.segment_bytes:,} bytes, over the limit of {high:,}; "
                "use fewer slots or smaller frames"
            )

    def pack(self) -> bytes:
        """The fixed header, checksum included."""
        dims = list(self.shape) + [0] * (MAX_NDIM - len(self.shape))
        body = _FIXED.pack(
            MAGIC,
            VERSION_MAJOR,
            VERSION_MINOR,
            FIXED_HEADER_BYTES,
            self.segment_bytes,
            self.policy,
            self.slots,
            self.buffers,
            self.max_readers,
            self.max_writers,
            self.meta_size,
            len(self.shape),
            self.dtype.itemsize,
            self.dtype.str.encode("ascii"),
            *dims,
            self.buffer_bytes,
            self.buffer_stride,
            CONTROL_OFFSET,
            self.descriptors_offset,
            self.descriptor_bytes,
            self.readers_offset,
            self.groups_offset,
            self.writers_offset,
            self.freelist_offset,
            self.data_offset,
            self.creator_pid,
            self.created_ns,
            self.pins_offset,
            0,
        )
        body = body.ljust(CHECKSUM_OFFSET, b"\0")
        return body + struct.pack("<Q", zlib.crc32(body))

    @classmethod
    def unpack(cls, header: bytes, name: str) -> Geometry:
        """Parse and validate a fixed header; IncompatibleRing names what is wrong."""
        if len(header) < FIXED_HEADER_BYTES:
            raise IncompatibleRing(
                f"ring {name!r}: segment is {len(header)} bytes, smaller than a shmring "
                f"header ({FIXED_HEADER_BYTES}); it is not a shmring ring or is truncated"
            )
        if header[:8] != MAGIC:
            raise IncompatibleRing(
                f"ring {name!r}: bad magic {header[:8]!r} (expected {MAGIC!r}); "
                "the segment is not a shmring ring"
            )
        fields = dict(zip(_FIXED_FIELDS, _FIXED.unpack_from(header), strict=True))
        if fields["version_major"] != VERSION_MAJOR:
            raise IncompatibleRing(
                f"ring {name!r}: format version {fields['version_major']}."
                f"{fields['version_minor']}, this shmring reads {VERSION_MAJOR}.x; "
                "use the same shmring version on both sides"
            )
        (checksum,) = struct.unpack_from("<Q", header, CHECKSUM_OFFSET)
        if checksum != zlib.crc32(header[:CHECKSUM_OFFSET]):
            raise IncompatibleRing(
                f"ring {name!r}: header checksum mismatch; the header was overwritten. "
                "Remove the ring (shmring rm) and create it again"
            )
        try:
            return cls._from_fields(fields, name)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise IncompatibleRing(f"ring {name!r}: invalid header: {exc}") from None

    @classmethod
    def _from_fields(cls, f: dict[str, object], name: str) -> Geometry:
        def number(key: str, low: int, high: int) -> int:
            value = f[key]
            assert isinstance(value, int)
            if not low <= value <= high:
                raise ValueError(f"{key}={value} is outside [{low}, {high}]")
            return value

        ndim = number("ndim", *LIMITS["ndim"])
        dims = [f[f"s{i}"] for i in range(MAX_NDIM)]
        shape = tuple(int(d) for d in dims[:ndim])  # type: ignore[call-overload]
        low, high = LIMITS["dimension"]
        if any(d < low or d > high for d in shape) or any(dims[ndim:]):
            raise ValueError(f"shape {dims} is not valid for ndim {ndim}")
        raw_dtype = f["dtype"]
        assert isinstance(raw_dtype, bytes)
        dtype = checked_dtype(raw_dtype.rstrip(b"\0").decode("ascii"))
        slots = number("slots", *LIMITS["slots"])
        policy = number("policy", 0, 1)
        # A block ring's descriptor positions each own a buffer; overwrite adds spares.
        low, high = LIMITS["spare_buffers"] if policy == POLICY_OVERWRITE else (0, 0)
        geometry = cls(
            shape=shape,
            dtype=dtype,
            slots=slots,
            buffers=number("buffers", slots + low, slots + high),
            policy=policy,
            max_readers=number("max_readers", *LIMITS["max_readers"]),
            max_writers=number("max_writers", *LIMITS["max_writers"]),
            meta_size=number("meta_size", *LIMITS["meta_size"]),
            creator_pid=number("creator_pid", 0, 1 << 32),
            created_ns=number("created_ns", 0, (1 << 64) - 1),
            version_minor=number("version_minor", 0, (1 << 16) - 1),
        )
        geometry.check_size()
        expected = {
            "header_bytes": FIXED_HEADER_BYTES,
            "itemsize": dtype.itemsize,
            "segment_bytes": geometry.segment_bytes,
            "buffer_bytes": geometry.buffer_bytes,
            "buffer_stride": geometry.buffer_stride,
            "control_offset": CONTROL_OFFSET,
            "descriptors_offset": geometry.descriptors_offset,
            "descriptor_bytes": geometry.descriptor_bytes,
            "readers_offset": geometry.readers_offset,
            "groups_offset": geometry.groups_offset,
            "writers_offset": geometry.writers_offset,
            "freelist_offset": geometry.freelist_offset,
            "data_offset": geometry.data_offset,
            "pins_offset": geometry.pins_offset,
        }
        for key, value in expected.items():
            if f[key] != value:
                raise ValueError(f"{key}={f[key]} but the geometry implies {value}")
        return geometry


def positive_int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value}")
    return int(value)


def checked_shape(shape: object) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or isinstance(shape, (str, bytes)):
        raise TypeError(f"shape must be a tuple of positive integers, got {shape!r}")
    low, high = LIMITS["ndim"]
    if not low <= len(shape) <= high:
        raise ValueError(f"shape must have {low} to {high} dimensions, got {shape!r}")
    return tuple(positive_int(d, "every dimension of shape", *LIMITS["dimension"]) for d in shape)


def checked_dtype(spec: object) -> np.dtype[np.generic]:
    """A dtype a ring can carry: plain numbers or bytes, no objects, no structure."""
    try:
        dtype: np.dtype[np.generic] = np.dtype(spec)  # type: ignore[call-overload]
    except TypeError as exc:
        raise ValueError(f"dtype {spec!r} is not a NumPy dtype: {exc}") from None
    if dtype.kind not in "biufcSUVmM" or dtype.hasobject or dtype.names or dtype.subdtype:
        raise ValueError(
            f"dtype {dtype} cannot live in shared memory: use a plain numeric dtype "
            "(e.g. np.uint8, np.float32)"
        )
    if dtype.itemsize == 0:
        raise ValueError(f"dtype {dtype} has no size; give it one (e.g. 'S16')")
    return dtype


class Rows(dict[int, memoryview]):
    """The rows of one per-slot table (each descriptor's words, or its metadata bytes), each
    made on first use and kept: a ring of 2**20 slots costs no object per slot until that
    slot is looked at, and a row looked at again is a dict hit, as fast as a list's. It reads
    as the list it replaces: `rows[i]` (IndexError out of range), `len`, and iteration over
    every row, in order."""

    def __init__(self, table: memoryview, count: int, stride: int, width: int, words: bool):
        """Row i is table[i * stride : i * stride + width] (as u64 words if `words`)."""
        super().__init__()
        self._table, self._count = table, count
        self._stride, self._width, self._words = stride, width, words

    def __missing__(self, index: int) -> memoryview:
        index = operator.index(index)
        if not 0 <= index < self._count:
            raise IndexError(f"row {index} of a table of {self._count}")
        offset = index * self._stride
        row = self._table[offset : offset + self._width]
        return self.setdefault(index, row.cast("Q") if self._words else row)  # one per index

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[memoryview]:  # type: ignore[override]
        return (self[index] for index in range(self._count))

    def release(self) -> None:
        """Release every row made, and the table: the mapping can close (as with any
        view, not while the caller still holds a row)."""
        for row in self.values():
            row.release()
        self.clear()
        self._table.release()


class Views:
    """Typed windows onto one mapped segment. Built once per handle; indexing these with
    the field constants above is the whole hot path's contact with the layout (the C
    extension is handed these views, Participant.c_arguments, and compiles the constants in
    from shmring_layout.h).

    What there is one of per slot or buffer is made lazily (Rows, and `buffers` at first
    use), so that looking at a ring (`shmring ls`) costs nothing per slot."""

    def __init__(self, geometry: Geometry, header: mmap.mmap, data: memoryview) -> None:
        g = self._geometry = geometry
        whole = memoryview(header)
        self.control = whole[CONTROL_OFFSET : CONTROL_OFFSET + CONTROL_BYTES].cast("Q")
        rows = whole[g.descriptors_offset : g.readers_offset]
        self.descriptors = Rows(rows, g.slots, g.descriptor_bytes, g.descriptor_bytes, True)
        # Every descriptor, one view: how the C extension takes them (_fastpath.c).
        self.descriptor_table = whole[g.descriptors_offset : g.readers_offset].cast("Q")
        rows = whole[g.descriptors_offset + D_META_BYTE_OFFSET : g.readers_offset]
        self.descriptor_meta = Rows(rows, g.slots, g.descriptor_bytes, g.meta_size, False)
        self.readers = _records(whole, g.readers_offset, g.max_readers)
        self.groups = _records(whole, g.groups_offset, g.max_readers)
        # Every reader record, then every group record, one view each (CACHE_LINE apart):
        # the reclaim in C scans them (_publisher.c, shmring_reclaim).
        self.reader_table = whole[g.readers_offset : g.groups_offset].cast("Q")
        self.group_table = whole[g.groups_offset : g.writers_offset].cast("Q")
        self.group_names = [
            whole[o + G_NAME_BYTE_OFFSET : o + G_NAME_BYTE_OFFSET + MAX_GROUP_NAME]
            for o in range(g.groups_offset, g.writers_offset, CACHE_LINE)
        ]
        self.writers = _records(whole, g.writers_offset, g.max_writers)
        # Overwrite rings: every reader's pin line, one view (for C), and one per reader.
        pins = g.max_readers * CACHE_LINE if g.pins_offset else 0
        self.pin_table = whole[g.pins_offset : g.pins_offset + pins].cast("Q")
        self.pins = _records(whole, g.pins_offset, g.max_readers) if pins else []
        self.freelist = whole[g.freelist_offset : g.freelist_offset + g.buffers * 8].cast("Q")
        self.data = data

    @cached_property
    def buffers(self) -> list[np.ndarray]:
        """One array per frame buffer, made at first use (a list: _taker.c indexes it).

        `data` maps [data_offset, segment_bytes): buffer i starts at i * buffer_stride. One
        strided array over all of them, split by list(), makes them far faster than one
        np.frombuffer each (a ring may have 2**20 buffers). Their base is an
        np.frombuffer array, which holds an export of `data` (np.ndarray(buffer=) keeps a
        reference but no export): the mapping cannot close while one of them lives."""
        g = self._geometry
        raw = np.frombuffer(self.data, np.uint8)
        first = np.ndarray(g.shape, g.dtype, buffer=raw)  # for its (C order) strides
        strides = (g.buffer_stride, *first.strides)
        return list(np.ndarray((g.buffers, *g.shape), g.dtype, buffer=raw, strides=strides))

    def buffer_view(self, geometry: Geometry, index: int, shape: tuple[int, ...]) -> np.ndarray:
        """A buffer seen with a frame's own (smaller) shape."""
        return np.frombuffer(
            self.data,
            geometry.dtype,
            prod(shape),
            index * geometry.buffer_stride,
        ).reshape(shape)

    def release(self) -> None:
        """Drop every export so the mmaps can close (views the user holds keep theirs)."""
        for view in (self.control, self.freelist, self.descriptor_table):
            view.release()
        self.reader_table.release()
        self.group_table.release()
        self.pin_table.release()
        self.descriptors.release()
        self.descriptor_meta.release()
        for view in (*self.readers, *self.groups, *self.writers, *self.pins, *self.group_names):
            view.release()
        if "buffers" in self.__dict__:  # made (cached_property)
            self.buffers.clear()


def _records(whole: memoryview, offset: int, count: int) -> list[memoryview]:
    return [
        whole[o : o + CACHE_LINE].cast("Q")
        for o in range(offset, offset + count * CACHE_LINE, CACHE_LINE)
    ]


def control_word_offset(word: int) -> int:
    """Byte offset of control word `word` (for futex and atomic operations, which take
    addresses; their 32-bit value is the word's low half, little-endian)."""
    return CONTROL_OFFSET + word * 8


def clear_pin_line(line: memoryview) -> None:
    """Empty a reader's pin line (at create, and when a reader takes the record, under the
    header lock: a reaped reader's pins must not outlive it)."""
    line[PIN_HELD : PIN_HELD + PINS_PER_LINE] = array("Q", [NONE] * PINS_PER_LINE)
    line[PIN_TOP] = 0
