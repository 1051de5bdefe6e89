# How a ring is laid out in an MCAP file (docs/API.md, "Recording and replay"): shared by the
# recorder (_record.py) and the reader (_replay.py).
#
# Theory of operation:
#   - One Metadata record named "shmring.ring", written right after the header, holds the
#     ring's geometry and policy; a second, "shmring.end", written when a recording is
#     finished, says how many frames it holds and why it stopped.
#   - Every frame is a protobuf message `shmring.Frame` (schema below, defined here in code,
#     stored in the file like any protobuf schema) on topic /shmring/RING/frames: sequence
#     number, timestamp, shape, dtype, metadata bytes, frames lost before it, and the pixels.
#   - Image-shaped frames (uint8, H×W, H×W×1 or H×W×3) keep their pixels in a
#     `foxglove.RawImage` message on topic /shmring/RING/image, which Foxglove shows as
#     an image, instead of in `Frame.data`: the bytes are stored once. That message
#     follows its Frame message directly (same MCAP log time), and
#     `Frame.image_topic` names its topic; a Frame whose image message is missing (the file
#     was cut there) is not a complete frame.
#   - MCAP fields: log_time, and publish_time with it, is when the recorder took the frame
#     (time.time_ns(): Foxglove shows wall-clock times); sequence counts each channel's
#     messages from 1 (the writer, foxglove-sdk, sets both). The frame's own sequence
#     number and timestamp are in its Frame message.
#   - The large bytes field of each message (Frame.data, RawImage.data) is appended to the
#     protobuf encoding of the other fields by hand (field key and length, then the bytes
#     copied once from shared memory): protobuf defines a message's encoding as the
#     concatenation of its fields' encodings, and the library would copy the pixels three
#     times (to bytes, into the message, out of it). Everything else is the protobuf
#     library's own encoding; the tests decode both with it.

from __future__ import annotations

import json
from math import prod
from typing import Any

import numpy as np
from foxglove_schemas_protobuf.RawImage_pb2 import RawImage
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from . import __version__
from ._recording import RecordedRing

FORMAT_VERSION = "1"
RING_METADATA = "shmring.ring"
END_METADATA = "shmring.end"
PROTOBUF = "protobuf"  # MCAP's well-known message and schema encoding names
LIBRARY = f"shmring {__version__}"
_F = descriptor_pb2.FieldDescriptorProto

# (name, protobuf type, repeated) of shmring.Frame's fields, numbered from 1; data is last.
FRAME_FIELDS = (
    ("seq", _F.TYPE_UINT64, False),
    ("timestamp_ns", _F.TYPE_UINT64, False),
    ("shape", _F.TYPE_UINT64, True),
    ("dtype", _F.TYPE_STRING, False),  # numpy's dtype.str, e.g. "|u1", "<f4"
    ("meta", _F.TYPE_BYTES, False),
    ("dropped", _F.TYPE_UINT64, False),
    ("image_topic", _F.TYPE_STRING, False),  # where the pixels are; "" if in `data`
    ("data", _F.TYPE_BYTES, False),  # the frame's bytes in C order
)
FRAME_DATA_FIELD = len(FRAME_FIELDS)
_WIRE_LENGTH_DELIMITED = 2


def _frame_message_class() -> Any:
    """The protobuf class of shmring.Frame, built from FRAME_FIELDS."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="shmring/frame.proto", package="shmring", syntax="proto3"
    )
    message = proto.message_type.add(name="Frame")
    for number, (name, kind, repeated) in enumerate(FRAME_FIELDS, 1):
        label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
        message.field.add(name=name, number=number, type=kind, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("shmring.Frame"))


Frame: Any = _frame_message_class()
Image: Any = RawImage


def frames_topic(ring: str) -> str:
    return f"/shmring/{ring}/frames"


def image_topic(ring: str) -> str:
    return f"/shmring/{ring}/image"


def image_encoding(shape: tuple[int, ...], dtype: np.dtype[Any], color: str) -> str:
    """The RawImage encoding of frames of this ring shape, "" if they are not images."""
    if dtype != np.uint8:
        return ""
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        return "mono8"
    if len(shape) == 3 and shape[2] == 3:
        return color
    return ""


def frame_bytes(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    return prod(shape) * dtype.itemsize


def with_bytes_field(encoded: bytes, field_number: int, array: np.ndarray) -> bytes:
    """`encoded` (a message's other fields) followed by bytes field `field_number` holding
    `array`'s bytes in C order: one copy of the array."""
    key = _varint(field_number << 3 | _WIRE_LENGTH_DELIMITED) + _varint(array.nbytes)
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)  # no copy if contiguous
    return b"".join((encoded, key, flat.data))


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def ring_metadata(ring: RecordedRing) -> dict[str, str]:
    return {
        "format_version": FORMAT_VERSION,
        "recorded_by": LIBRARY,
        "ring": ring.name,
        "shape": json.dumps(list(ring.shape)),
        "dtype": ring.dtype.str,
        "policy": ring.policy,
        "slots": str(ring.slots),
        "max_readers": str(ring.max_readers),
        "max_writers": str(ring.max_writers),
        "meta_size": str(ring.meta_size),
        "image_encoding": ring.image_encoding,
        "frames_topic": frames_topic(ring.name),
        "image_topic": image_topic(ring.name) if ring.image_encoding else "",
    }


def ring_from_metadata(data: dict[str, str]) -> RecordedRing:
    """The inverse of ring_metadata; KeyError/ValueError/TypeError if it is not one."""
    if data["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"recording format version {data['format_version']!r}; this shmring reads "
            f"version {FORMAT_VERSION}"
        )
    shape = tuple(int(size) for size in json.loads(data["shape"]))
    return RecordedRing(
        name=data["ring"],
        shape=shape,
        dtype=np.dtype(data["dtype"]),
        policy=data["policy"],
        slots=int(data["slots"]),
        max_readers=int(data["max_readers"]),
        max_writers=int(data["max_writers"]),
        meta_size=int(data["meta_size"]),
        image_encoding=data["image_encoding"],
    )
