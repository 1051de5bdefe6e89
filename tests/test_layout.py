"""The layout module and docs/FORMAT.md describe the same bytes; header fields round-trip;
OPERATIONS.md sizes rings as create makes them."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import OPERATIONS_MD, seg_path, unique_name
from helpers import format_md_table as _table_after

import shmring
from shmring import _layout as L


def test_fixed_header_offsets_match_format_md() -> None:
    rows = _table_after("## Fixed header")
    documented = {row[3]: (int(row[0]), int(row[1])) for row in rows}
    offset = 0
    codes = re.findall(r"(\d*)([a-zA-Z])", L._FIXED.format.lstrip("<"))
    sizes: list[int] = []
    for count, code in codes:
        if code == "s":
            sizes.append(int(count))
        else:
            sizes.extend([struct.calcsize("<" + code)] * int(count or 1))
    code_offsets = {}
    for name, size in zip(L._FIXED_FIELDS, sizes, strict=True):
        code_offsets[name] = (offset, size)
        offset += size
    assert documented["magic"] == code_offsets["magic"]
    assert documented["dtype"] == code_offsets["dtype"]
    assert documented["shape"] == (code_offsets["s0"][0], 8 * L.MAX_NDIM)
    assert documented["reserved"] == code_offsets["reserved1"]
    assert documented["checksum"] == (L.CHECKSUM_OFFSET, 8)
    for name, place in code_offsets.items():
        if (name[0] == "s" and name[1:].isdigit()) or name.startswith("reserved"):
            continue
        assert documented[name] == place, name
    assert offset == L.CHECKSUM_OFFSET


@pytest.mark.parametrize(
    ("heading", "prefix"),
    [("## Control block", "C_"), ("## Descriptor", "D_")],
)
def test_word_tables_match_format_md(heading: str, prefix: str) -> None:
    rows = _table_after(heading)
    for row in rows:
        word, byte, name = row[0], row[1], row[2]
        if word == "—":  # the meta bytes of a descriptor
            assert int(byte) == L.D_META_BYTE_OFFSET
            continue
        first_word = int(word.split("–")[0])
        constant = getattr(L, prefix + name.upper())
        assert constant == first_word, name
        base = L.CONTROL_OFFSET if prefix == "C_" else 0
        assert int(byte) == base + 8 * first_word, name


def test_record_and_lock_constants_match_format_md() -> None:
    readers = {row[1]: int(row[0]) for row in _table_after("Reader record")}
    for name, word in readers.items():
        assert getattr(L, "R_" + name.upper()) == word
    pins = {row[1]: row[0] for row in _table_after("### Pin line")}
    assert pins == {"top": str(L.PIN_TOP), "held": f"{L.PIN_HELD}–{L.PINS_PER_LINE}"}
    locks = {row[1]: row[0] for row in _table_after("## Locks and liveness")}
    assert locks["the header lock, while updating shared state"] == str(L.LOCK_HEADER)
    assert locks["the creator, for its whole life (free ⇒ the ring is stale)"] == str(
        L.LOCK_CREATOR
    )
    assert locks["the writer in writer record i, for its whole life"] == (
        f"{L.LOCK_WRITER_BASE} + i"
    )
    assert locks["the reader in reader record i, for its whole life"] == (
        f"{L.LOCK_READER_BASE} + i"
    )


def _geometry(**changes: object) -> L.Geometry:
    fields: dict[str, object] = dict(
        shape=(480, 640, 3),
        dtype=np.dtype(np.uint8),
        slots=5,
        buffers=5,
        policy=L.POLICY_OVERWRITE,
        max_readers=3,
        max_writers=2,
        meta_size=40,
        creator_pid=4242,
        created_ns=123456789,
    )
    fields.update(changes)
    return L.Geometry(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "geometry",
    [
        _geometry(),
        _geometry(shape=(7,), dtype=np.dtype("<f8"), slots=1, buffers=1, meta_size=0),
        _geometry(shape=(2, 3, 4, 5, 6, 7, 8, 9), dtype=np.dtype("<i2"), policy=L.POLICY_BLOCK),
    ],
)
def test_fixed_header_round_trips_every_field(geometry: L.Geometry) -> None:
    packed = geometry.pack()
    assert len(packed) == L.FIXED_HEADER_BYTES
    assert packed[:8] == L.MAGIC
    assert struct.unpack_from("<Q", packed, L.CHECKSUM_OFFSET)[0] == zlib.crc32(packed[:248])
    assert L.Geometry.unpack(packed, "x") == geometry
    assert geometry.data_offset % L.PAGE == 0
    assert geometry.descriptors_offset % 64 == 0 and geometry.descriptor_bytes % 64 == 0
    assert geometry.buffer_stride % 64 == 0 and geometry.buffer_stride >= geometry.buffer_bytes


def test_unpack_rejects_each_kind_of_damage() -> None:
    packed = bytearray(_geometry().pack())
    with pytest.raises(shmring.IncompatibleRing, match="smaller than a shmring header"):
        L.Geometry.unpack(bytes(packed[:100]), "x")
    bad_magic = b"NOTARING" + bytes(packed[8:])
    with pytest.raises(shmring.IncompatibleRing, match="bad magic"):
        L.Geometry.unpack(bad_magic, "x")
    future = bytearray(packed)
    struct.pack_into("<H", future, 8, L.VERSION_MAJOR + 1)
    with pytest.raises(shmring.IncompatibleRing, match=f"format version {L.VERSION_MAJOR + 1}"):
        L.Geometry.unpack(bytes(future), "x")
    flipped = bytearray(packed)
    flipped[30] ^= 1
    with pytest.raises(shmring.IncompatibleRing, match="checksum"):
        L.Geometry.unpack(bytes(flipped), "x")
    wrong_offset = bytearray(packed)
    struct.pack_into("<Q", wrong_offset, 208, 4096 * 1000)  # data_offset
    body = bytes(wrong_offset[: L.CHECKSUM_OFFSET])
    struct.pack_into("<Q", wrong_offset, L.CHECKSUM_OFFSET, zlib.crc32(body))
    with pytest.raises(shmring.IncompatibleRing, match="data_offset"):
        L.Geometry.unpack(bytes(wrong_offset), "x")


def test_live_segment_header_fields_round_trip() -> None:
    ring_name = unique_name("layout")
    with shmring.RingWriter.create(
        ring_name, shape=(4, 6), dtype=np.float32, slots=3, meta_size=16, max_readers=2
    ) as writer:
        raw = Path("/dev/shm", "shmring." + ring_name).read_bytes()
        geometry = L.Geometry.unpack(raw[: L.FIXED_HEADER_BYTES], ring_name)
        assert geometry.shape == (4, 6)
        assert geometry.dtype == np.float32
        assert (geometry.slots, geometry.meta_size, geometry.max_readers) == (3, 16, 2)
        assert len(raw) == geometry.segment_bytes
        seq = writer.write(np.ones((4, 6), np.float32), meta=b"hello", timestamp_ns=77)
        raw = Path("/dev/shm", "shmring." + ring_name).read_bytes()
        word = struct.Struct("<Q")
        assert word.unpack_from(raw, L.CONTROL_OFFSET + 8 * L.C_HEAD)[0] == seq + 1
        descriptor = geometry.descriptors_offset + (seq % 3) * geometry.descriptor_bytes
        assert word.unpack_from(raw, descriptor + 8 * L.D_SEQ)[0] == seq
        assert word.unpack_from(raw, descriptor + 8 * L.D_TIMESTAMP)[0] == 77
        assert word.unpack_from(raw, descriptor + 8 * L.D_FLAGS)[0] == 5 << 32  # meta length
        meta_at = descriptor + L.D_META_BYTE_OFFSET
        assert raw[meta_at : meta_at + 5] == b"hello"
        buffer = word.unpack_from(raw, descriptor + 8 * L.D_BUFFER)[0]
        start = geometry.buffer_offset(buffer)
        frame = np.frombuffer(raw[start : start + geometry.buffer_bytes], np.float32)
        assert frame.tolist() == [1.0] * 24


def test_sizing_table_in_operations_md_is_what_create_makes() -> None:
    """Each ring of docs/OPERATIONS.md's sizing table, created: its file has the size given."""
    rows = _table_after("## Sizing /dev/shm", OPERATIONS_MD)
    assert any("overwrite" in row[0] for row in rows)
    for ring, frame, size in rows:
        found = re.fullmatch(
            r"(\d+) slots of (\d+)×(\d+)×3 `uint8`(, `policy=\"overwrite\"`)?", ring
        )
        assert found, ring
        slots, width, height = (int(found[i]) for i in (1, 2, 3))
        policy = "overwrite" if found[4] else "block"
        assert int(frame.split()[0].replace(",", "")) == width * height * 3, ring
        with shmring.RingWriter.create(
            unique_name("size"), (height, width, 3), np.uint8, slots=slots, policy=policy
        ) as w:
            assert Path(seg_path(w.name)).stat().st_size == int(size.split()[0].replace(",", ""))
