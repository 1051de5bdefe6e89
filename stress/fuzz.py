# Fuzzing a live ring's shared memory: `python -m stress.fuzz` (`make fuzz`).
#
# Any process that attaches maps the header writable, so the library must treat every byte
# of it as untrusted. A case creates a ring, streams a few frames, then overwrites part of
# it (the fixed header, the control block, the lock-owner word, descriptors, reader, group or
# writer records, the pin table, the free list, or frame data) with random or boundary values
# (some forge a skip descriptor's count or a reader's pins on purpose), or cuts the file
# short / grows it. The stream before the damage may hold gaps (RingWriter.skip), and the
# owner's reader may hold several frames across it (overwrite: pins in its pin line), which
# it releases out of order. A fresh process then inspects, attaches, writes and reads, has the
# ring damaged again under it and goes on; the owner keeps writing, reading, iterating, and
# closes. Some cases also plant a forged ring beside it (`plant`, issue 17 finding 4): a
# valid header on a sparse file, with a legal geometry, one past create's limits, or a pin
# table offset the geometry does not imply; the fresh process must find it refused
# (IncompatibleRing) by inspect, attach and a listing, promptly and without memory out of
# proportion.
#
# Pass: every call works or raises a ShmringError subclass; no process dies by a signal, nor
# exits but with status 0 when its stdin closes; no step waits past its bound (the timeout
# it passes, plus LOCK_FLOOR, plus STEP_SLACK; close: CLOSE_LIMIT); no worker's memory peaks
# out of proportion (GIANT_KIB); the owner's close still unlinks the segment and returns its
# file descriptors; every case asked for is run. Anything else is a failure, reported with
# the case's seed (`python -m stress.fuzz --replay SEED` re-runs it and prints the
# traceback); a harness error in a case is one too, and the case's ring (its name chosen by
# the driver) is removed whatever failed.
#
# Layout: a case is plain data (`Case`: `Case.random(seed)` here, a Hypothesis strategy in
# tests/test_fuzz.py). A `Lane` is two long-lived workers (`python -m stress.fuzz --worker`):
# the owner, which creates, damages and keeps using the ring, and the prober, which attaches
# afresh for each case. Running many cases per worker, in several lanes at once, keeps
# 100,000 cases within minutes; a worker that crashes or hangs is recorded and replaced.

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import IO, Any, TypeVar

import numpy as np

import shmring
from shmring import Frame, IncompatibleRing, RingReader, RingTimeout, RingWriter, ShmringError
from shmring import _layout as L
from shmring._lock import LOCK_FLOOR
from shmring._ring import CLOSE_LIMIT

from . import ROOT, open_fds, ring_name, rss_kib, segment_path

T = TypeVar("T")

# ---- what a case is made of ------------------------------------------------------------------
POLICIES = ("block", "overwrite")
BLOCK_SLOTS = (1, 2, 3, 4, 8)
OVERWRITE_SLOTS = (2, 4, 8, 9, 16)  # any slots >= 2 (and 2 spare buffers)
MAX_READERS = 4
MAX_WRITERS = 3
SHAPES = ((16,), (4, 4), (3, 5, 2), (1, 1, 1, 1, 1, 1, 1, 2), (5000,))
DTYPES = ("uint8", "int16", "float32", "<u8")
META_SIZES = (0, 8, 24)
GROUPS = (None, "g", "h")
REGIONS = tuple(
    "fixed control lock descriptors readers groups writers pins freelist header data".split()
)
# Boundary values for one aligned u64 word: counts and indices just past a table, sign and
# width edges (2**64 - 1 is the format's NONE).
SMALL_WORDS = (0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 63, 64, 255, 4096)
EDGE_WORDS = (2**31, 2**32 - 1, 2**32, 2**40, 2**63, 2**64 - 2, 2**64 - 1)
WORDS = SMALL_WORDS + EDGE_WORDS
RESIZES = tuple(
    "empty tiny fixed control before-data data short long page-more double".split()
)  # how the file is resized: see Layout.resized
# Forged rings planted beside a case's ring: "sparse" declares a legal geometry on a sparse
# file; "pins_offset" a pin table where the geometry has none or another; the others put one
# field (or the total size) past create's limits (L.LIMITS).
PLANTS = (
    "sparse slots buffers max_readers max_writers meta_size ndim dimension total pins_offset"
).split()
# Forged on purpose (FORGED_SHARE of the patches): a skip descriptor's count, and the words
# that say which buffers a reader holds (R_PINNED, its pin line's top and held words).
FORGED_SHARE = 0.1
SKIP_COUNTS = (0, 1, 2, 1000, L.MAX_SKIP_COUNT)  # a gap's count, also one a skip() publishes
PIN_WORDS = (0, 1, 2, 3, 7, 8, 9, 17, 2**32, 2**33, 2**64 - 2, L.NONE)  # tops and buffers
(DESCRIPTOR_BYTES,) = {  # the same for every meta size a case uses
    L.Geometry((1,), np.dtype("u1"), 1, 1, 0, 1, 1, meta).descriptor_bytes for meta in META_SIZES
}
PLANT_SHARE = 0.05  # of the cases
CALL_TIMEOUT = 30.0  # a worker silent this long is hung (the longest legal wait is ~5 s)
EXIT_LIMIT = 5.0  # a worker whose stdin closed exits within this, or is killed
SLOW = 2.0  # a step taking longer is counted as slow (bounded, but worth a look)
STEP_SLACK = 2.0  # scheduling slack of a busy machine, past a step's timeout and LOCK_FLOOR
GIANT_KIB = 512 * 1024  # a worker whose peak RSS passes this allocated out of proportion


@dataclass(frozen=True)
class Patch:
    """Bytes written at `offset` (taken modulo the region's length) inside `region`."""

    region: str
    offset: int
    data: bytes

    @classmethod
    def word(cls, region: str, index: int, value: int) -> Patch:
        """One aligned u64 (`index` counts words from the region's start)."""
        return cls(region, 8 * index, struct.pack("<Q", value))

    @classmethod
    def forged(cls, rng: random.Random) -> Patch:
        """A skip descriptor with a count (any descriptor, published or not, other flags or
        not), or a reader's pin words (R_PINNED, or its pin line's top or held words)."""
        kind = rng.choice(("skip", "pinned", "pin_line"))
        if kind == "skip":
            flags = L.DF_SKIP | rng.choice((0, L.DF_EVICTED, L.DF_OWN_SHAPE))
            value = flags | rng.choice(SKIP_COUNTS) << L.SKIP_COUNT_SHIFT
            words = DESCRIPTOR_BYTES // 8
            return cls.word("descriptors", rng.randrange(16) * words + L.D_FLAGS, value)
        line = rng.randrange(MAX_READERS) * L.RECORD_WORDS
        if kind == "pinned":
            return cls.word("readers", line + L.R_PINNED, rng.choice(PIN_WORDS))
        return cls.word("pins", line + rng.randrange(L.RECORD_WORDS), rng.choice(PIN_WORDS))

    @classmethod
    def random(cls, rng: random.Random) -> Patch:
        if rng.random() < FORGED_SHARE:
            return cls.forged(rng)
        region = rng.choice(REGIONS)
        kind = rng.random()
        if kind < 0.6:
            value = rng.choice(WORDS) if rng.random() < 0.8 else rng.getrandbits(64)
            return cls.word(region, rng.randrange(64), value)
        if kind < 0.85:
            return cls(region, rng.randrange(4096), rng.randbytes(rng.randint(1, 32)))
        return cls(region, rng.randrange(4096), rng.choice((b"\0", b"\xff")) * rng.randint(8, 64))


@dataclass(frozen=True)
class Case:
    """One fuzz case: a ring, how it is used before the damage, and the damage."""

    seed: int
    policy: str
    shape: tuple[int, ...]
    dtype: str
    slots: int
    meta_size: int
    group: str | None  # the owner-side reader's group
    fresh_group: str | None  # the fresh process's reader's group
    written: int  # frames published before the damage
    variable: bool  # every other frame smaller than the ring's shape
    held: int  # frames the owner-side reader holds across the damage (the first ones)
    second_writer: bool  # the owner also attaches a second writer (shared writer mode)
    patches: tuple[Patch, ...]
    resize: str | None  # the file's size while the fresh process attaches (then restored)
    late_patches: tuple[Patch, ...] = ()  # applied while the fresh process is attached
    plant: str | None = None  # a forged ring planted beside it (PLANTS)
    skips: bool = False  # every third number every writer publishes is a gap (skip)

    @classmethod
    def random(cls, seed: int) -> Case:
        rng = random.Random(seed)
        policy = rng.choice(POLICIES)
        count = rng.choice((1, 1, 1, 2, 3, 5))
        return cls(
            seed=seed,
            policy=policy,
            shape=rng.choice(SHAPES),
            dtype=rng.choice(DTYPES),
            slots=rng.choice(BLOCK_SLOTS if policy == "block" else OVERWRITE_SLOTS),
            meta_size=rng.choice(META_SIZES),
            group=rng.choice(GROUPS),
            fresh_group=rng.choice(GROUPS),
            written=rng.randint(0, 20),
            variable=rng.random() < 0.3,
            held=rng.choice((0, 0, 0, 1, 1, 2, 3, L.MAX_PINS)),
            second_writer=rng.random() < 0.3,
            patches=tuple(Patch.random(rng) for _ in range(count)),
            resize=rng.choice(RESIZES) if rng.random() < 0.08 else None,
            late_patches=tuple(Patch.random(rng) for _ in range(rng.choice((0, 0, 1, 2)))),
            plant=rng.choice(PLANTS) if rng.random() < PLANT_SHARE else None,
            skips=rng.random() < 0.3,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("patches", "late_patches"):
            data[key] = [[p.region, p.offset, p.data.hex()] for p in getattr(self, key)]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Case:
        fields = dict(data)
        fields["shape"] = tuple(data["shape"])
        for key in ("patches", "late_patches"):
            fields[key] = tuple(Patch(r, o, bytes.fromhex(d)) for r, o, d in data[key])
        return cls(**fields)


# ---- the segment's layout, read from its fixed header (docs/FORMAT.md) -----------------------
@dataclass(frozen=True)
class Layout:
    segment_bytes: int
    descriptors: int
    readers: int
    groups: int
    writers: int
    freelist: int
    data: int
    pins: int  # 0: no pin table (block rings)

    @classmethod
    def read(cls, path: str) -> Layout:
        with open(path, "rb") as f:
            header = dict(zip(L._FIXED_FIELDS, L._FIXED.unpack(f.read(L._FIXED.size)), strict=True))
        names = "segment_bytes descriptors readers groups writers freelist data pins".split()
        return cls(*(header[n if n == "segment_bytes" else f"{n}_offset"] for n in names))

    def region(self, name: str) -> tuple[int, int]:
        """[start, stop) of a region in bytes."""
        return {
            "fixed": (0, 256),
            "control": (256, 512),
            "lock": (256 + 8 * 8, 256 + 9 * 8),  # C_LOCK_OWNER
            "descriptors": (self.descriptors, self.readers),
            "readers": (self.readers, self.groups),
            "groups": (self.groups, self.writers),
            "writers": (self.writers, self.pins or self.freelist),
            "pins": (self.pins, self.freelist) if self.pins else (0, 0),
            "freelist": (self.freelist, self.data),
            "header": (0, self.data),
            "data": (self.data, self.segment_bytes),
        }[name]

    def resized(self, how: str) -> int:
        return {
            "empty": 0,
            "tiny": 10,
            "fixed": 256,
            "control": 512,
            "before-data": self.data - 1,
            "data": self.data,
            "short": self.segment_bytes - 1,
            "long": self.segment_bytes + 1,
            "page-more": self.segment_bytes + 4096,
            "double": 2 * self.segment_bytes,
        }[how]


def apply_patches(path: str, layout: Layout, patches: Iterable[Patch]) -> None:
    """Write the patches through the file, as any attached process could."""
    fd = os.open(path, os.O_RDWR)
    try:
        for patch in patches:
            start, stop = layout.region(patch.region)
            if start == stop:  # a region this ring has not (block rings: pins)
                continue
            offset = start + patch.offset % (stop - start)
            os.pwrite(fd, patch.data[: stop - offset], offset)
    finally:
        os.close(fd)


# ---- running steps and recording what they raised ----------------------------------------------
class BadFrame(AssertionError):
    """A frame whose view does not fit the ring's shape or dtype."""


@dataclass
class Steps:
    """Outcome of every step of a case: "ok", a ShmringError subclass name, or a failure;
    the slow steps, and those that took longer than their bound (`late`)."""

    outcomes: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    slow: dict[str, float] = field(default_factory=dict)
    late: list[str] = field(default_factory=list)

    def run(self, step: str, call: Callable[[], T], timeout: float = 0.0) -> T | None:
        """Run one step, whose waits are bounded by `timeout` (the longest it passes to a
        call) and LOCK_FLOOR; its result, or None when it raised."""
        started = time.monotonic()
        try:
            result = call()
        except ShmringError as exc:
            self.outcomes[step] = type(exc).__name__
            return None
        except Exception as exc:
            self.outcomes[step] = f"untyped {type(exc).__name__}"
            self.failures.append(f"{step}: {traceback.format_exc(limit=-6)}")
            return None
        else:
            self.outcomes[step] = "ok"
            return result
        finally:
            elapsed = time.monotonic() - started
            if elapsed > SLOW:
                self.slow[step] = round(elapsed, 2)
            bound = timeout + LOCK_FLOOR + STEP_SLACK
            if elapsed > bound:
                self.late.append(f"{step} took {elapsed:.1f} s, past its bound of {bound:.0f} s")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def check_frame(frame: Frame, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    array = frame.array
    if (
        array.dtype != dtype
        or array.ndim != len(shape)
        or any(not 1 <= got <= limit for got, limit in zip(array.shape, shape, strict=True))
    ):
        raise BadFrame(f"frame {frame.seq}: view {array.shape} {array.dtype} in a {shape} ring")
    array.sum()  # touch every byte of the view


def drain(reader: RingReader, limit: int) -> int:
    """Read (and release) frames until none is ready; their count."""
    count = 0
    while count < limit:
        try:
            frame = reader.read(0.0)
        except RingTimeout:
            break
        with frame:
            check_frame(frame, reader.shape, reader.dtype)
        count += 1
    return count


def write_some(writer: RingWriter, count: int, case: Case) -> int:
    """Publish up to `count` frames without waiting (every third number a gap, with
    `case.skips`); how many went in."""
    for n in range(count):
        try:
            if case.skips and n % 3 == 2:
                writer.skip(SKIP_COUNTS[n % len(SKIP_COUNTS)] or 1, 0.0)
            else:
                frame = frame_for(writer, n, case.variable)
                writer.write(frame, 0.0, meta=meta_for(n, case.meta_size))
        except RingTimeout:
            return n
    return count


def hold_some(reader: RingReader, count: int) -> list[Frame]:
    """Read and keep up to `count` frames without waiting (fewer when none is ready, or when
    the ring has no room for more: RingFull)."""
    held: list[Frame] = []
    with contextlib.suppress(RingTimeout, shmring.RingFull):
        while len(held) < count:
            held.append(reader.read(0.0))
    return held


def frame_for(writer: RingWriter, n: int, variable: bool) -> np.ndarray:
    shape = writer.shape
    if variable and n % 2:
        shape = tuple(max(1, d // 2) for d in shape)
    return np.full(shape, n % 100, writer.dtype)


def meta_for(n: int, meta_size: int) -> bytes:
    return bytes([n % 256]) * min(meta_size, n % 9)


# ---- the two sides of a case (run inside workers) ----------------------------------------------
class Owner:
    """The ring's creator: streams, damages the ring, then keeps using it and closes."""

    def __init__(self, case: Case, name: str) -> None:
        self.case = case
        self.name = name
        self.path = segment_path(self.name)
        self.fds = open_fds()
        self.writers: list[RingWriter] = []
        self.reader: RingReader | None = None
        self.held: list[Frame] = []

    def setup(self) -> dict[str, Any]:
        case = self.case
        writer = RingWriter.create(
            self.name,
            case.shape,
            case.dtype,
            slots=case.slots,
            policy=case.policy,
            max_readers=MAX_READERS,
            max_writers=MAX_WRITERS,
            meta_size=case.meta_size,
            spin=0,
        )
        self.writers.append(writer)
        self.reader = RingReader.attach(self.name, group=case.group, start="oldest", spin=0)
        if case.second_writer:
            self.writers.append(RingWriter.attach(self.name, spin=0))
        held = min(case.held, case.written)
        write_some(writer, held, case)
        self.held = hold_some(self.reader, held)
        write_some(writer, case.written - held, case)
        layout = Layout.read(self.path)
        apply_patches(self.path, layout, case.patches)
        if case.plant is not None:
            plant(self.path + "-plant", case.plant, random.Random(case.seed))
        return {"name": self.name, "layout": asdict(layout)}

    def resume(self) -> dict[str, Any]:
        steps = Steps()
        self._keep_using(steps)
        self.writers.clear()
        self.reader = None
        leaked = os.path.lexists(self.path)
        if leaked:
            os.unlink(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path + "-plant")
        gc.collect()  # a closed handle's mapping lives until its last view is collected
        return {
            "steps": steps.as_json(),
            "leaked_segment": leaked,
            "fds_before": self.fds,
            "fds_after": open_fds(),
            "peak_rss_kib": rss_kib(field="VmHWM"),
        }

    def _keep_using(self, steps: Steps) -> None:
        """Write, claim, read, inspect, close the writers, iterate to the end, close."""
        case, reader = self.case, self.reader
        assert reader is not None
        if self.held:
            random.Random(case.seed).shuffle(self.held)  # released out of order
            for frame in self.held:
                steps.run("owner_release", frame.release)
            self.held = []  # their arrays would keep the reader's mapping (and fd) open
        for n, writer in enumerate(self.writers):
            steps.run(f"owner_write{n}", partial(write_some, writer, 3, case))
        steps.run("owner_claim", self._claim)
        steps.run("owner_read", partial(drain, reader, 3 * case.slots))
        steps.run("owner_latest", self._latest)
        steps.run("owner_inspect", partial(shmring.inspect_ring, self.name))
        for n, writer in reversed(list(enumerate(self.writers))):
            steps.run(f"owner_close_writer{n}", writer.close, CLOSE_LIMIT)
        steps.run("owner_iterate", self._iterate)
        steps.run("owner_close_reader", reader.close, CLOSE_LIMIT)

    def _claim(self) -> int | None:
        claim = self.writers[0].claim(0.0)
        try:
            with claim as slot:
                slot[...] = 7
        except RingTimeout:
            return None
        return claim.seq

    def _latest(self) -> int | None:
        assert self.reader is not None
        try:
            frame = self.reader.latest(0.0)
        except RingTimeout:
            return None
        check_frame(frame, self.reader.shape, self.reader.dtype)
        frame.release()
        return frame.seq

    def _iterate(self) -> int:
        """Every writer is closed: iteration must end (EndOfStream or WriterGone) promptly."""
        assert self.reader is not None
        limit = 3 * self.case.slots + 10
        count = 0
        for frame in self.reader:
            check_frame(frame, self.reader.shape, self.reader.dtype)
            count += 1
            if count > limit:
                raise AssertionError(f"iteration returned {count} frames from {limit} slots")
        return count


def probe(case: Case, name: str, layout: Layout) -> dict[str, Any]:
    """A fresh process: inspect, attach, write, read (file resized meanwhile); then, still
    attached, damage the ring again (`late_patches`), write, read and close.

    The writer attaches first: the ring is then in shared writer mode, so the reader's
    attach skips the membarrier() (~13 ms, and machine-wide the fuzzer's bottleneck) that
    joining an exclusive-mode ring costs; the owner's reader covers that path."""
    steps = Steps()
    path = segment_path(name)
    if case.resize is not None:
        os.truncate(path, layout.resized(case.resize))
    try:
        steps.run("inspect", partial(shmring.inspect_ring, name))
        writer = steps.run("attach_writer", partial(RingWriter.attach, name, spin=0))
        reader = steps.run(
            "attach_reader",
            partial(RingReader.attach, name, group=case.fresh_group, start="oldest", spin=0),
        )
    finally:
        if case.resize is not None:
            os.truncate(path, layout.segment_bytes)
    for phase in ("", "late_"):
        if phase:
            apply_patches(path, layout, case.late_patches)
        if writer is not None:
            steps.run(f"{phase}write", partial(write_some, writer, 3, case))
        if reader is not None:
            steps.run(f"{phase}read", partial(drain, reader, 3 * case.slots))
    if reader is not None:
        steps.run("close_reader", reader.close, CLOSE_LIMIT)
    if writer is not None:
        steps.run("close_writer", writer.close, CLOSE_LIMIT)
    if case.plant is not None:
        probe_plant(steps, name + "-plant")
    return {"steps": steps.as_json(), "peak_rss_kib": rss_kib(field="VmHWM")}


def plant(path: str, kind: str, rng: random.Random) -> None:
    """Write a forged ring at `path`: a header with a valid checksum on a sparse file of
    the size it declares (capped at 1 TiB; one page is really written). A forged pin table
    offset comes on a small ring written whole: nothing but that offset is wrong with it."""
    slots = rng.choice((1 << 16, L.MAX_SLOTS))
    fields = dict(
        shape=rng.choice(((64,), (480, 640, 3))),
        dtype=np.dtype(np.uint8),
        slots=slots,
        buffers=slots,
        policy=L.POLICY_BLOCK,
        max_readers=4,
        max_writers=2,
        meta_size=0,
        creator_pid=os.getpid(),
    )
    past = {  # one past the limit, the 2**22 and 2**24, and the field's maximum
        "slots": (L.MAX_SLOTS + 1, 1 << 22, 1 << 24, 2**32 - 1),
        "buffers": (slots + L.MAX_SPARE_BUFFERS + 1, slots - 1, 2**32 - 1),
        "max_readers": (L.MAX_READERS + 1, 2**32 - 1),
        "max_writers": (L.MAX_WRITERS + 1, 2**32 - 1),
        "meta_size": (L.MAX_META + 1, 2**32 - 1),
    }
    forged: dict[str, int] = {}
    if kind in past:
        value = rng.choice(past[kind])
        fields[kind] = value
        if kind == "slots":
            fields["buffers"] = value
    elif kind == "ndim":
        forged["ndim"] = rng.choice((0, L.MAX_NDIM + 1))
    elif kind == "dimension":
        fields["shape"] = (L.MAX_DIM + 1,)
    elif kind == "total":
        fields["shape"], fields["slots"], fields["buffers"] = (L.MAX_DIM,), 16, 16
    elif kind == "pins_offset":
        policy = rng.choice((L.POLICY_BLOCK, L.POLICY_OVERWRITE))
        fields.update(shape=(64,), slots=2, buffers=2 + 2 * policy, policy=policy)
    geometry = L.Geometry(**fields)  # type: ignore[arg-type]
    if kind == "pins_offset":
        real = geometry.pins_offset
        forged["pins_offset"] = rng.choice([v for v in (0, 64, real + 64, 2**63) if v != real])
    header = geometry.pack()
    if forged:
        values = dict(zip(L._FIXED_FIELDS, L._FIXED.unpack_from(header), strict=True))
        body = L._FIXED.pack(*{**values, **forged}.values()).ljust(L.CHECKSUM_OFFSET, b"\0")
        header = body + struct.pack("<Q", zlib.crc32(body))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        whole = kind == "pins_offset"
        os.pwrite(fd, header.ljust(geometry.segment_bytes, b"\0") if whole else header, 0)
        os.ftruncate(fd, min(geometry.segment_bytes, 1 << 40))
    finally:
        os.close(fd)


def probe_plant(steps: Steps, path: str) -> None:
    """Inspect, attach to and list the forged ring at `path`: each must refuse it with
    IncompatibleRing (the outcome the counts show; every forgery PLANTS makes is refused so),
    and list it as broken."""
    name = os.path.basename(path).removeprefix("shmring.")

    def refused(call: Callable[[str], object]) -> None:
        try:
            call(name)
        except IncompatibleRing:
            raise
        except ShmringError as exc:
            raise AssertionError(f"a forged ring was refused with {exc!r}") from exc
        raise AssertionError(f"a forged ring was accepted by {call}")

    steps.run("plant_inspect", partial(refused, shmring.inspect_ring))
    steps.run("plant_attach_reader", partial(refused, partial(RingReader.attach, spin=0)))
    steps.run("plant_attach_writer", partial(refused, partial(RingWriter.attach, spin=0)))

    def listed_broken() -> None:
        listing = shmring.list_rings(lambda entry: entry == name)
        if [type(ring).__name__ for ring in listing] != ["BrokenRing"]:
            raise AssertionError(f"the forged ring was listed as {listing}")

    steps.run("plant_list", listed_broken)


def worker_main() -> int:
    """Serve requests (one JSON object per line on stdin) until stdin closes."""
    faulthandler.enable()  # a crash prints the Python stack to stderr
    owner: Owner | None = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "setup":
                owner = Owner(Case.from_json(request["case"]), request["name"])
                reply = owner.setup()
            elif request["op"] == "resume":
                assert owner is not None
                reply = owner.resume()
            else:
                case = Case.from_json(request["case"])
                reply = probe(case, request["name"], Layout(**request["layout"]))
        except Exception:
            reply = {"harness_error": traceback.format_exc()}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


# ---- the driver: lanes of worker pairs ---------------------------------------------------------
class WorkerFailed(Exception):
    def __init__(self, role: str, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.role = role  # of the worker that failed
        self.kind = kind
        self.detail = detail


class Worker:
    """One `python -m stress.fuzz --worker` process, asked one request at a time."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _release)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stress.fuzz", "--worker"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        self._buffer = b""

    def call(self, request: dict[str, Any], timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
            if not ready:
                raise WorkerFailed(
                    self.role, "hang", f"{self.role} silent for {timeout} s; {self.tail()}"
                )
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise self._died()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _died(self, when: str = "") -> WorkerFailed:
        code = self.proc.wait(CALL_TIMEOUT)
        if code < 0:
            detail = f"{self.role} killed by {signal.Signals(-code).name}{when}"
            return WorkerFailed(self.role, "crash", detail)
        return WorkerFailed(
            self.role, "died", f"{self.role} exited with {code}{when}; {self.tail()}"
        )

    def tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> WorkerFailed | None:
        """Close stdin, so that the worker exits; wait EXIT_LIMIT for it, and kill it only
        then. What went wrong, unless it exited by itself with status 0 (a crash at exit
        shows here)."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(EXIT_LIMIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(CALL_TIMEOUT)
            failed: WorkerFailed | None = WorkerFailed(
                self.role,
                "hang",
                f"{self.role} still running {EXIT_LIMIT} s after its stdin closed",
            )
        else:
            failed = self._died(" at exit") if self.proc.returncode else None
        self._release()
        return failed

    def kill(self) -> None:
        """End a worker that failed (what it did is recorded already), and reap it."""
        self.proc.kill()
        self.proc.wait(CALL_TIMEOUT)
        self._release()

    def _release(self) -> None:
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.stderr.close()


@dataclass
class CaseResult:
    case: Case
    steps: dict[str, str] = field(default_factory=dict)
    slow: dict[str, float] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, detail)


class Lane:
    """An owner worker and a prober worker, running cases one after another."""

    def __init__(self) -> None:
        self.owner = Worker("owner")
        self.prober = Worker("prober")
        self.last_seed = -1  # of the case run last: a worker's exit may be its doing

    def run(self, case: Case) -> CaseResult:
        """Run `case`. A worker that fails (crash, hang, exit) or the harness's own error is
        one of its problems, and the lane goes on with fresh workers; the ring is removed,
        whatever failed (its name is chosen here, so it is known)."""
        result = CaseResult(case)
        name = ring_name("fz")
        self.last_seed = case.seed
        try:
            self._run(case, name, result)
        except WorkerFailed as failure:
            result.problems.append((failure.kind, failure.detail))
            result.problems += self._restart(failure.role)
        except Exception:  # a reply it cannot read, say: the workers' state is unknown
            result.problems.append(("harness", traceback.format_exc()))
            result.problems += self._restart()
        finally:
            for path in (segment_path(name), segment_path(name) + "-plant"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # the owner did not get to close, or died first
        return result

    def _run(self, case: Case, name: str, result: CaseResult) -> None:
        setup = self.owner.call({"op": "setup", "case": case.to_json(), "name": name})
        if "harness_error" in setup:
            result.problems.append(("harness", setup["harness_error"]))
            result.problems += self._restart()
            return
        for role, reply in (
            ("probe", self.prober.call({**setup, "op": "probe", "case": case.to_json()})),
            ("owner", self.owner.call({"op": "resume"})),
        ):
            if "harness_error" in reply:
                result.problems.append(("harness", f"{role}: {reply['harness_error']}"))
                continue
            self._record(result, reply)

    @staticmethod
    def _record(result: CaseResult, reply: dict[str, Any]) -> None:
        steps = reply["steps"]
        result.steps.update(steps["outcomes"])
        result.slow.update(steps["slow"])
        result.problems.extend(("untyped", failure) for failure in steps["failures"])
        result.problems.extend(("late", late) for late in steps["late"])
        if reply.get("leaked_segment"):
            result.problems.append(("leak", "the owner's close left the segment in /dev/shm"))
        if reply["peak_rss_kib"] > GIANT_KIB:
            result.problems.append(("giant", f"peak RSS {reply['peak_rss_kib'] // 1024} MiB"))
        if reply.get("fds_after", 0) > reply.get("fds_before", 0):
            result.problems.append(
                ("leak", f"owner fds {reply['fds_before']} -> {reply['fds_after']}")
            )

    def _restart(self, failed: str | None = None) -> list[tuple[str, str]]:
        """Fresh workers; the worker that `failed` is killed (its failure is recorded), the
        other one closed: what went wrong as it exited."""
        problems = self.close(failed)
        self.owner = Worker("owner")
        self.prober = Worker("prober")
        return problems

    def close(self, failed: str | None = None) -> list[tuple[str, str]]:
        """Close both workers (kill the one that `failed`); what went wrong as they exited."""
        problems = []
        for worker in (self.owner, self.prober):
            if worker.role == failed:
                worker.kill()
            elif (exit_failure := worker.stop()) is not None:
                problems.append((exit_failure.kind, exit_failure.detail))
        return problems


@dataclass
class Summary:
    cases: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "step outcome" -> count
    problems: Counter[str] = field(default_factory=Counter)  # kind -> count
    # step -> [how many were slow, the slowest's seconds, its seed]
    slow: dict[str, list[float]] = field(default_factory=dict)
    # one entry per distinct failure: its count, the first seeds, the first full detail
    signatures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, result: CaseResult) -> None:
        self.cases += 1
        self.outcomes.update(f"{step:20} {outcome}" for step, outcome in result.steps.items())
        for step, seconds in result.slow.items():
            slow = self.slow.setdefault(step, [0, 0.0, result.case.seed])
            slow[0] += 1
            if seconds > slow[1]:
                slow[1:] = [seconds, result.case.seed]
        for kind, detail in result.problems:
            self.problem(kind, detail, result.case.seed)

    def problem(self, kind: str, detail: str, seed: int) -> None:
        self.problems[kind] += 1
        entry = self.signatures.setdefault(
            signature(kind, detail), {"count": 0, "seeds": [], "detail": detail}
        )
        entry["count"] += 1
        if len(entry["seeds"]) < 5 and seed not in entry["seeds"]:
            entry["seeds"].append(seed)

    def report(self) -> str:
        lines = [f"{self.cases:,} cases; outcome of each step:"]
        lines += [f"  {count:9,}  {key}" for key, count in sorted(self.outcomes.items())]
        lines.append(f"slow steps (bounded, > {SLOW:.0f} s): {'none' if not self.slow else ''}")
        for step, (count, seconds, seed) in sorted(self.slow.items()):
            lines.append(f"  {int(count):9,}  {step:20} slowest {seconds:.1f} s (seed {seed})")
        lines.append(f"problems: {dict(self.problems) or 'none'}")
        for key, entry in sorted(self.signatures.items(), key=lambda kv: -kv[1]["count"]):
            lines.append(f"--- {entry['count']} x {key} (seeds {entry['seeds']})")
            lines.append(entry["detail"].rstrip())
        return "\n".join(lines)


def signature(kind: str, detail: str) -> str:
    """What makes two failures the same bug: the kind, the innermost library line and the
    exception (the same bug shows up in many steps, through different harness frames)."""
    lines = detail.strip().splitlines()
    if kind != "untyped" or len(lines) < 2:
        return f"{kind}: {lines[0] if lines else ''}"
    library = [line.strip() for line in lines if "/shmring/" in line]
    where = library[-1].split("/shmring/", 1)[1] if library else "?"
    return f"{kind}: {lines[-1]} at {where}"


def run_cases(
    cases: Iterable[Case], lanes: int, progress: Callable[[Summary], None] | None = None
) -> Summary:
    """Run cases over `lanes` worker pairs in parallel."""
    summary = Summary()
    source: Iterator[Case] = iter(cases)
    lock = threading.Lock()

    def lane_loop() -> None:
        lane = Lane()
        try:
            while True:
                with lock:
                    case = next(source, None)
                if case is None:
                    return
                result = lane.run(case)
                with lock:
                    summary.add(result)
                    if progress is not None:
                        progress(summary)
        finally:
            problems = lane.close()  # seen with the seed of the case its workers ran last
            with lock:
                for kind, detail in problems:
                    summary.problem(kind, detail, lane.last_seed)

    threads = [threading.Thread(target=lane_loop) for _ in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.fuzz", description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case")
    parser.add_argument("--lanes", type=int, default=12, help="worker pairs run in parallel")
    parser.add_argument("--replay", type=int, nargs="*", help="re-run these seeds, verbosely")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    if args.replay:
        return replay(args.replay)
    started = time.monotonic()
    last = [started]

    def progress(summary: Summary) -> None:
        now = time.monotonic()
        if now - last[0] >= 30:
            last[0] = now
            rate = summary.cases / (now - started)
            print(
                f"{summary.cases:,} cases, {rate:.0f}/s, problems {dict(summary.problems)}",
                flush=True,
            )

    cases = (Case.random(seed) for seed in range(args.seed, args.seed + args.cases))
    summary = run_cases(cases, args.lanes, progress)
    print(summary.report())
    print(f"{summary.cases:,} cases in {time.monotonic() - started:.0f} s")
    if summary.cases != args.cases:  # a lane that died took its cases with it
        print(f"RAN {summary.cases:,} CASES OF {args.cases:,}: a lane died (its traceback above)")
        return 1
    return 1 if summary.problems else 0


def replay(seeds: list[int]) -> int:
    lane = Lane()
    failed = 0
    try:
        for seed in seeds:
            case = Case.random(seed)
            result = lane.run(case)
            print(f"seed {seed}: {case}")
            for step, outcome in result.steps.items():
                print(f"  {step:20} {outcome}")
            for kind, detail in result.problems:
                failed += 1
                print(f"  PROBLEM {kind}: {detail}")
    finally:
        for kind, detail in lane.close():
            failed += 1
            print(f"  PROBLEM as the workers exited, {kind}: {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
