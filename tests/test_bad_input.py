# Every row of docs/BAD_INPUT.md, run: the documented exception and message, and afterwards a
# ring that still works.
#
# The rows are parsed from the markdown tables, so the page and this test cannot drift: a
# row added to the page is tested, a row whose behaviour changed fails here. After each row
# the ring must be healthy: a new reader attaches at once (a writer left inside a publish
# step would stall it for seconds), frames go through, and no buffer went missing.
from __future__ import annotations

import builtins
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import unique_name

import shmring
from shmring import RingReader, RingTimeout, RingWriter

DOC = Path(__file__).resolve().parent.parent / "docs" / "BAD_INPUT.md"
HEADER = "| call | bad input | raises | message says |"
ROW = re.compile(
    r"^\|\s*`(?P<call>[^`]+)`\s*\|\s*(?P<what>[^|]+?)\s*\|\s*`(?P<raises>\w+)`\s*\|"
    r"\s*(?P<message>[^|]*?)\s*\|$"
)
SHAPE = (4, 8)
SLOTS = 4


@dataclass(frozen=True)
class Row:
    section: str
    call: str
    what: str
    raises: str  # an exception's name, or "nothing"
    message: str  # text the exception's message contains ("" for accepted input)


def parse_rows(text: str) -> list[Row]:
    """The rows of every table whose header is HEADER, with the section they are under."""
    rows: list[Row] = []
    section, in_table = "", False
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if line.strip() == HEADER:
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        if not in_table or line.startswith("|---"):
            continue
        match = ROW.match(line.strip())
        assert match, f"{DOC.name}: cannot parse table row {line!r}"
        message = match["message"]
        quoted = message.startswith('"') and message.endswith('"')
        rows.append(
            Row(
                section,
                match["call"],
                match["what"],
                match["raises"],
                message[1:-1] if quoted else "",
            )
        )
    return rows


ROWS = parse_rows(DOC.read_text())


def test_the_page_covers_every_public_call() -> None:
    calls = " ".join(row.call for row in ROWS)
    for needle in (
        "RingWriter.create(",
        "RingWriter.attach(",
        "RingReader.attach(",
        "W.write(",
        "W.claim(",
        "W.wait_for_readers(",
        "R.read(",
        "R.latest(",
        "iter(",
        ".release()",
        "inspect_ring(",
        "remove_ring(",
    ):
        assert needle in calls, f"{DOC.name} has no row calling {needle}"
    assert len(ROWS) >= 100


@dataclass
class Ring:
    name: str
    writer: RingWriter
    reader: RingReader


@pytest.fixture
def ring() -> Iterator[Ring]:
    name = unique_name("bi")
    writer = RingWriter.create(name, SHAPE, np.uint8, slots=SLOTS, meta_size=8)
    writer._join()  # a writer from the start: another writer's close must not end the stream
    reader = RingReader.attach(name)
    try:
        yield Ring(name, writer, reader)
    finally:
        reader.close()
        writer.close()


def namespace(ring: Ring) -> dict[str, Any]:
    def publish(claim: shmring.Claim) -> shmring.Claim:
        with claim as slot:
            slot[...] = 1
        return claim

    def leave(claim: shmring.Claim) -> shmring.Claim:
        claim.__exit__(None, None, None)
        return claim

    def roundtrip(frame: np.ndarray) -> shmring.Frame:
        drain(ring.reader)
        ring.writer.write(frame, 1.0)
        with ring.reader.read(1.0) as got:
            assert got.array.tobytes() == np.ascontiguousarray(frame).tobytes()
        return got

    def closed(handle: Any) -> Any:
        handle.close()
        return handle

    return {
        "np": np,
        "shmring": shmring,
        "RingWriter": RingWriter,
        "RingReader": RingReader,
        "NAME": unique_name("bn"),
        "RING": ring.name,
        "W": ring.writer,
        "R": ring.reader,
        "FRAME": np.zeros(SHAPE, np.uint8),
        "NAN": float("nan"),
        "publish": publish,
        "leave": leave,
        "roundtrip": roundtrip,
        "closed": closed,
    }


def drain(reader: RingReader) -> None:
    while True:
        try:
            reader.read(0.0).release()
        except RingTimeout:
            return


def assert_healthy(ring: Ring) -> None:
    """A new reader attaches at once, frames flow to both readers, no buffer is lost."""
    started = time.monotonic()
    fresh = RingReader.attach(ring.name, start="latest")
    assert time.monotonic() - started < 1.0, "attaching a reader stalled"
    with fresh:
        readers = [r for r in (ring.reader, fresh) if not r.closed]
        for r in readers:
            drain(r)
        for n in range(SLOTS + 2):
            ring.writer.write(np.full(SHAPE, n, np.uint8), 1.0)
            for r in readers:
                with r.read(1.0) as frame:
                    assert int(frame.array[0, 0]) == n
    info = shmring.inspect_ring(ring.name)
    queued = sum(slot.state == "queued" for slot in info.slot_states)
    claimed = sum(w.claimed_buffer is not None for w in info.writers)
    assert info.free_buffers + queued + claimed == SLOTS, f"a buffer went missing: {info}"


def exception_type(name: str) -> type[BaseException]:
    found = getattr(shmring, name, None) or getattr(builtins, name)
    assert isinstance(found, type) and issubclass(found, BaseException), name
    return found


@pytest.mark.parametrize("row", ROWS, ids=[f"{row.section.split()[0]}: {row.what}" for row in ROWS])
def test_bad_input(ring: Ring, row: Row) -> None:
    names = namespace(ring)
    if row.raises == "nothing":
        eval(row.call, names)
    else:
        with pytest.raises(exception_type(row.raises)) as caught:
            eval(row.call, names)
        assert row.message in str(caught.value), (
            f"{row.call}: message {str(caught.value)!r} does not say {row.message!r}"
        )
    if not ring.writer.closed:
        assert_healthy(ring)
