# The bytes of one bridge sample: what `shmring bridge send` publishes on its Zenoh key and
# `shmring bridge recv` decodes (docs/API.md, "Bridging rings across hosts", has the table).
#
# Rules:
#   - One sample is one Zenoh payload: a fixed 204-byte little-endian header, then the
#     frame's metadata bytes, then the frame's bytes in C order. Nothing else is sent: the
#     ring's geometry and policy ride in every header, so a receiver that joins late, or
#     a sender that restarts, needs no handshake.
#   - Everything a sample says is checked before it is used (magic, version, kind, dtype,
#     dimensions against the ring's, lengths against the payload's size); a sample that
#     fails any check raises MalformedSample and is counted and skipped by the receiver,
#     which never trusts a sample to size an allocation or an index.
#   - `stream` identifies the source ring (its creation time): a change of stream tells the
#     receiver that sequence numbers started again, and is not a gap. Within a stream the
#     frames lost before a sample are its jump in `seq` (less one) plus its `lost`: frames
#     lost in the source ring that took no number there (one skip stands for many, e.g. in
#     a ring that itself receives a bridge's frames) or that the sender took but did not
#     send.
#   - Pure functions of bytes: no Zenoh and no ring here, so this is testable on its own.
#   - Per frame, only `seq`, `timestamp_ns` and `lost` change in a steady stream (ring-shaped
#     frames without metadata). FrameEncoder keeps one sample's bytes and rewrites just those
#     fields and the frame; Decoder compares a sample's other header bytes and its size with
#     the last one it checked and, when equal, reuses that one's checks and objects, which
#     depend on nothing else (figures: docs/performance.md, the bridge at 64 KiB).

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import prod
from typing import Any, NamedTuple

import numpy as np

from ._errors import ShmringError
from ._layout import LIMITS

MAGIC = b"SRBR"
VERSION = 2  # 2: `lost`
KIND_FRAME = 0
KIND_END = 1  # the source stream ended (every writer closed, or died: FLAG_WRITER_GONE)
FLAG_LATEST = 1  # the sender runs --latest (Zenoh congestion control drop)
FLAG_OVERWRITE = 2  # the source ring's policy is overwrite (else block)
FLAG_WRITER_GONE = 4  # KIND_END: the writers died instead of closing the stream
MAX_NDIM = 8  # docs/API.md: frames have up to 8 dimensions
DTYPE_BYTES = 16

# magic, version, kind, flags, stream, seq, timestamp_ns, lost, slots, meta_size,
# max_readers, max_writers, ndim, meta_len, dtype, frame shape (8 dims), ring shape (8 dims)
HEADER = struct.Struct(f"<4sBBHQQQQIIHHB3xI{DTYPE_BYTES}s{MAX_NDIM}Q{MAX_NDIM}Q")
HEADER_SIZE = HEADER.size
SEQ_STAMP = struct.Struct("<QQQ")  # seq, timestamp_ns, lost: what changes frame to frame
SEQ_OFFSET = struct.calcsize("<4sBBHQ")  # where they are: after magic ... stream
REST_OFFSET = SEQ_OFFSET + SEQ_STAMP.size  # the rest of the header: the same frame to frame


class BridgeError(ShmringError):
    """A bridge could not do what it was asked: Zenoh is not installed, a session could not
    open (a bad endpoint, a port in use, an unreadable config), or no endpoint was given."""


class MalformedSample(BridgeError, ValueError):
    """A bridge sample that does not decode (another program on the key, a newer version,
    damaged bytes); the receiver counts it and skips it."""


@dataclass(frozen=True)
class Geometry:
    """What a receiver needs to create a matching ring, as the sender's ring has it."""

    shape: tuple[int, ...]
    dtype: str  # numpy's dtype.str, e.g. "|u1", "<f4"
    slots: int
    policy: str  # "block" or "overwrite"
    max_readers: int
    max_writers: int
    meta_size: int

    def describe(self) -> str:
        shape = "x".join(str(d) for d in self.shape)
        return f"{shape} {np.dtype(self.dtype).name}, meta_size {self.meta_size}"


class Sample(NamedTuple):
    """A decoded sample; `data` is the frame (empty for an end-of-stream sample). A tuple:
    built per frame, it costs a fraction of a frozen dataclass."""

    kind: int
    flags: int
    stream: int
    seq: int
    timestamp_ns: int
    lost: int  # frames lost just before this one that the jump in `seq` does not show
    geometry: Geometry
    shape: tuple[int, ...]
    meta: bytes
    data: memoryview


def encode_header(
    *,
    kind: int,
    flags: int,
    stream: int,
    seq: int,
    timestamp_ns: int,
    geometry: Geometry,
    shape: tuple[int, ...],
    meta_len: int,
    lost: int = 0,
) -> bytes:
    """The fixed header; the caller appends the metadata and the frame's bytes."""
    ndim = len(geometry.shape)
    pad = (0,) * (MAX_NDIM - ndim)
    return HEADER.pack(
        MAGIC,
        VERSION,
        kind,
        flags | (FLAG_OVERWRITE if geometry.policy == "overwrite" else 0),
        stream,
        seq,
        timestamp_ns,
        lost,
        geometry.slots,
        geometry.meta_size,
        geometry.max_readers,
        geometry.max_writers,
        ndim,
        meta_len,
        geometry.dtype.encode("ascii"),
        *shape,
        *pad,
        *geometry.shape,
        *pad,
    )


def decode(payload: bytes) -> Sample:
    """Decode and check one sample; MalformedSample says what is wrong with it."""
    if len(payload) < HEADER_SIZE:
        raise MalformedSample(f"{len(payload)} bytes, shorter than the {HEADER_SIZE}-byte header")
    fields = HEADER.unpack_from(payload)
    magic, version, kind, flags, stream, seq, timestamp_ns, lost = fields[:8]
    slots, meta_size, max_readers, max_writers, ndim, meta_len, dtype_text = fields[8:15]
    if magic != MAGIC:
        raise MalformedSample(f"magic {magic!r} is not {MAGIC!r}: not a shmring bridge sample")
    if version != VERSION:
        raise MalformedSample(f"wire version {version}, this shmring reads {VERSION}")
    if kind not in (KIND_FRAME, KIND_END):
        raise MalformedSample(f"unknown sample kind {kind}")
    if not 1 <= ndim <= MAX_NDIM:
        raise MalformedSample(f"{ndim} dimensions (1 to {MAX_NDIM} allowed)")
    dims: tuple[Any, ...] = fields[15:]
    shape = tuple(int(d) for d in dims[:ndim])
    ring_shape = tuple(int(d) for d in dims[MAX_NDIM : MAX_NDIM + ndim])
    dtype = _dtype(dtype_text)
    for what, value in (
        ("slots", slots),
        ("max_readers", max_readers),
        ("max_writers", max_writers),
        ("meta_size", meta_size),
    ):
        low, high = LIMITS[what]
        if not low <= value <= high:
            raise MalformedSample(f"{what} {value} is outside [{low}, {high}]")
    low, high = LIMITS["dimension"]
    if any(not low <= d <= high for d in ring_shape) or any(
        not 1 <= d <= r for d, r in zip(shape, ring_shape, strict=True)
    ):
        raise MalformedSample(f"frame shape {shape} does not fit the ring's shape {ring_shape}")
    most = LIMITS["segment_bytes"][1]
    if prod(ring_shape) * dtype.itemsize * slots > most:
        raise MalformedSample(
            f"{slots} frames of {ring_shape} {dtype} take more than a ring's {most} bytes"
        )
    if meta_len > meta_size:
        raise MalformedSample(f"{meta_len} bytes of metadata, the ring holds {meta_size}")
    size = prod(shape) * dtype.itemsize if kind == KIND_FRAME else 0
    if len(payload) != HEADER_SIZE + meta_len + size:
        raise MalformedSample(
            f"{len(payload)} bytes; header, {meta_len} bytes of metadata and a frame of "
            f"{size} bytes make {HEADER_SIZE + meta_len + size}"
        )
    geometry = Geometry(
        shape=ring_shape,
        dtype=dtype.str,
        slots=slots,
        policy="overwrite" if flags & FLAG_OVERWRITE else "block",
        max_readers=max_readers,
        max_writers=max_writers,
        meta_size=meta_size,
    )
    view = memoryview(payload)
    start = HEADER_SIZE + meta_len
    return Sample(
        kind=kind,
        flags=flags,
        stream=stream,
        seq=seq,
        timestamp_ns=timestamp_ns,
        lost=lost,
        geometry=geometry,
        shape=shape,
        meta=bytes(view[HEADER_SIZE:start]),
        data=view[start:],
    )


class FrameEncoder:
    """The samples of one stream's frames. A ring-shaped frame without metadata is written
    into one buffer, reused: encode() returns that buffer, valid until the next encode()
    (zenoh copies it in put()). Other frames get bytes of their own."""

    __slots__ = ("_buffer", "_flags", "_frame", "_geometry", "_stream")

    def __init__(self, *, flags: int, stream: int, geometry: Geometry) -> None:
        self._flags, self._stream, self._geometry = flags, stream, geometry
        header = self._header(0, 0, geometry.shape, 0)
        size = prod(geometry.shape) * np.dtype(geometry.dtype).itemsize
        self._buffer = bytearray(header) + bytearray(size)
        self._frame = memoryview(self._buffer)[HEADER_SIZE:]

    def _header(
        self, seq: int, timestamp_ns: int, shape: tuple[int, ...], meta_len: int, lost: int = 0
    ) -> bytes:
        return encode_header(
            kind=KIND_FRAME,
            flags=self._flags,
            stream=self._stream,
            seq=seq,
            timestamp_ns=timestamp_ns,
            geometry=self._geometry,
            shape=shape,
            meta_len=meta_len,
            lost=lost,
        )

    def encode(
        self,
        seq: int,
        timestamp_ns: int,
        shape: tuple[int, ...],
        meta: bytes,
        data: memoryview,
        lost: int = 0,
    ) -> bytes | bytearray:
        """One frame's sample; `data` is the frame's bytes in C order (format "B")."""
        if meta or shape != self._geometry.shape:
            header = self._header(seq, timestamp_ns, shape, len(meta), lost)
            return b"".join((header, meta, data))
        buffer = self._buffer
        SEQ_STAMP.pack_into(buffer, SEQ_OFFSET, seq, timestamp_ns, lost)
        self._frame[:] = data
        return buffer


class Decoder:
    """decode() for one subscriber's samples: a sample of the last checked one's size whose
    header differs from it at most in `seq`, `timestamp_ns` and `lost` is that sample with
    those changed (every check depends on the rest only)."""

    __slots__ = ("_head", "_last", "_rest", "_size", "_start")

    def __init__(self) -> None:
        self._last: Sample | None = None
        self._size = -1
        self._start = HEADER_SIZE
        self._head = self._rest = b""

    def decode(self, payload: bytes) -> Sample:
        last = self._last
        if (
            last is not None
            and len(payload) == self._size
            and payload[REST_OFFSET:HEADER_SIZE] == self._rest
            and payload[:SEQ_OFFSET] == self._head
        ):
            seq, timestamp_ns, lost = SEQ_STAMP.unpack_from(payload, SEQ_OFFSET)
            start = self._start
            return Sample(
                last.kind,
                last.flags,
                last.stream,
                seq,
                timestamp_ns,
                lost,
                last.geometry,
                last.shape,
                payload[HEADER_SIZE:start],
                memoryview(payload)[start:],
            )
        sample = decode(payload)  # raises before anything is remembered
        self._last, self._size = sample, len(payload)
        self._start = len(payload) - len(sample.data)
        self._head, self._rest = payload[:SEQ_OFFSET], payload[REST_OFFSET:HEADER_SIZE]
        return sample


def _dtype(text: bytes) -> np.dtype[Any]:
    try:
        dtype = np.dtype(text.rstrip(b"\0").decode("ascii"))
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise MalformedSample(f"dtype {text!r} is not a NumPy dtype") from exc
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise MalformedSample(f"dtype {dtype} is not a plain NumPy dtype")
    if dtype.itemsize == 0:
        raise MalformedSample(f"dtype {dtype} has no size")
    return dtype
