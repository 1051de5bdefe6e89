"""`shmring record` / `shmring replay`: real writer processes, real rings, real MCAP files.

* Writers run in spawned processes (`write_pattern` below) and stamp every frame with a
  pattern (helpers.Pattern), a known timestamp and known metadata, so a frame read back
  anywhere is verified byte for byte.
* The recorder and the replayer run as the real CLI (`python -m shmring ...`) in
  subprocesses; recordings are checked with `mcap`'s own reader and the protobuf decoders.
* Nothing sleeps to synchronise: children answer over pipes; a recorder's progress is
  seen in its file's size, polled with a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import multiprocessing as mp
import os
import pty
import re
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from foxglove_schemas_protobuf.RawImage_pb2 import RawImage
from helpers import (
    STARTED_PIDS,
    VGA,
    WAIT,
    Child,
    Pattern,
    end_started,
    hold_next_position,
    make_tag,
    readable_within,
    seg_path,
    split_tag,
    unique_name,
    variable_shape,
)
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Channel, Chunk, Message
from mcap.stream_reader import StreamReader
from mcap.writer import Writer
from mcap_protobuf.decoder import DecoderFactory

import shmring
from shmring import EndOfStream, RingReader, RingWriter, _record, _replay
from shmring._cli import human_bytes
from shmring._recording import StallNotice

SHAPE = (48, 64, 3)
COUNT = 500
STAMP0 = 10**12
STEP_NS = 4_000_000  # 4 ms between recorded timestamps: 500 frames span ~2 s
META_SIZE = 16
CHUNK = 1 << 20  # the recorder's default chunk size


def meta_of(n: int) -> bytes:
    return f"frame-{n}".encode()


def stamp_of(n: int) -> int:
    return STAMP0 + n * STEP_NS


# ------------------------------------------------------------------ processes


def write_pattern(
    conn: Connection, name: str, shape: Sequence[int], count: int, variable: bool
) -> None:
    """Create ring `name`, wait for a reader, write `count` pattern frames (or until told
    "stop"), close, report how many."""
    pat = Pattern(shape)
    with RingWriter.create(name, tuple(shape), np.uint8, meta_size=META_SIZE) as writer:
        conn.send("created")
        writer.wait_for_readers(1, WAIT)
        n = 0
        while n < count and not conn.poll():
            frame = pat.make(make_tag(0, n), variable_shape(n, shape) if variable else None)
            writer.write(frame, WAIT, timestamp_ns=stamp_of(n), meta=meta_of(n))
            n += 1
    conn.send(n)


class Writer_:
    """A spawned write_pattern process."""

    def __init__(self, name: str, shape: Sequence[int], count: int, variable: bool = False):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=write_pattern, args=(child, name, shape, count, variable), daemon=True
        )
        self.proc.start()
        child.close()
        STARTED_PIDS.add(int(self.proc.pid or 0))
        self.expect("created")

    def expect(self, want: object) -> Any:
        assert self.conn.poll(WAIT), "writer sent nothing"
        got = self.conn.recv()
        assert want is None or got == want, got
        return got

    def finish(self, stop: bool = False) -> int:
        if stop:
            self.conn.send("stop")
        written = int(self.expect(None))
        self.proc.join(WAIT)
        assert self.proc.exitcode == 0, self.proc.exitcode
        return written

    def __enter__(self) -> Writer_:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.exitcode is None:
            self.proc.kill()
        self.proc.join(WAIT)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shmring", *args]


def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cli(*args), capture_output=True, text=True, timeout=WAIT, check=False)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    if code == 1:
        assert proc.stderr.count("\n") == 1, f"not one line: {proc.stderr!r}"
    return proc


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _end_started_processes() -> Iterator[None]:
    """Each CLI process a test started (start) is killed and reaped after it, if a failed
    step left it running."""
    yield
    end_started(_STARTED)


def start(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.Popen(cli(*args), text=True, **kwargs)
    STARTED_PIDS.add(proc.pid)
    _STARTED.append(proc)
    return proc


def wait_for_size(path: Path, size: int) -> None:
    deadline = time.monotonic() + WAIT
    while not (path.exists() and path.stat().st_size >= size):
        assert time.monotonic() < deadline, f"{path} never reached {size} bytes"
        time.sleep(0.01)  # polling a condition with a deadline, not synchronising


def record(name: str, path: Path, count: int, *extra: str, variable: bool = True) -> None:
    """Record `count` frames of a fresh writer process with the CLI."""
    with Writer_(name, SHAPE, count, variable=variable) as writer:
        proc = run("record", name, str(path), "--frames", str(count), *extra)
        assert f"recorded {count} frames" in proc.stdout, proc.stdout
        assert proc.stderr == "", proc.stderr  # not a terminal: no progress
        assert writer.finish() == count


def collect(name: str) -> list[tuple[int, int, int, bytes, tuple[int, ...], float]]:
    """(tag, seq, timestamp, meta, shape, arrival) of every frame until end of stream."""
    pat = Pattern(SHAPE)
    got: list[tuple[int, int, int, bytes, tuple[int, ...], float]] = []
    with RingReader.attach(name, timeout=WAIT, start="oldest") as reader:
        while True:
            try:
                frame = reader.read(WAIT)
            except EndOfStream:
                return got
            with frame:
                arrival = time.monotonic()
                got.append(
                    (
                        pat.check(frame.array),
                        frame.seq,
                        frame.timestamp_ns,
                        frame.meta,
                        frame.array.shape,
                        arrival,
                    )
                )


def expected(count: int) -> list[tuple[int, int, int, bytes, tuple[int, ...]]]:
    return [
        (make_tag(0, n), n, stamp_of(n), meta_of(n), variable_shape(n, SHAPE)) for n in range(count)
    ]


# ------------------------------------------------------------------ the recording


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """500 verified frames of variable shape, with metadata, recorded with zstd."""
    path = tmp_path_factory.mktemp("rec") / "frames.mcap"
    record(unique_name("rec"), path, COUNT, "--compression", "zstd")
    return path


def test_round_trip_identical_frames(recording: Path) -> None:
    ring = unique_name("rep")
    replayer = start("replay", str(recording), ring, "--as-fast-as-possible", "--wait-readers", "1")
    got = collect(ring)
    out, err = replayer.communicate(timeout=WAIT)
    assert replayer.returncode == 0, err
    assert f"replayed {COUNT} frames" in out and err == ""
    assert [g[:5] for g in got] == expected(COUNT)
    assert not os.path.exists(seg_path(ring))


def test_speed_one_keeps_spacing(recording: Path) -> None:
    ring = unique_name("rep")
    replayer = start("replay", str(recording), ring, "--speed", "1", "--wait-readers", "1")
    got = collect(ring)
    assert replayer.wait(WAIT) == 0
    assert [g[2] for g in got] == [stamp_of(n) for n in range(COUNT)]
    span = got[-1][5] - got[0][5]
    want = (COUNT - 1) * STEP_NS / 1e9
    assert abs(span - want) <= 0.1 * want, (span, want)
    gaps = np.diff([g[5] for g in got])
    assert abs(float(np.median(gaps)) - STEP_NS / 1e9) <= 0.1 * STEP_NS / 1e9, np.median(gaps)


def test_mcap_reader_decodes_frames_and_images(recording: Path) -> None:
    pat = Pattern(SHAPE)
    frames: list[Any] = []
    images: list[Any] = []
    with open(recording, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        assert summary is not None and summary.chunk_indexes  # indexed, chunked
        assert {c.compression for c in summary.chunk_indexes} == {"zstd"}
        metadata = {m.name: m.metadata for m in reader.iter_metadata()}
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            assert schema is not None
            (images if schema.name == "foxglove.RawImage" else frames).append(
                (channel.topic, message, decoded)
            )
    ring = metadata["shmring.ring"]
    assert (ring["shape"], ring["dtype"], ring["policy"], ring["meta_size"]) == (
        "[48, 64, 3]",
        "|u1",
        "block",
        str(META_SIZE),
    )
    assert metadata["shmring.end"]["frames"] == str(COUNT)
    assert len(frames) == len(images) == COUNT
    for n, ((_, message, frame), (topic, _, image)) in enumerate(zip(frames, images, strict=True)):
        assert topic.endswith("/image") and image.DESCRIPTOR.full_name == "foxglove.RawImage"
        shape = variable_shape(n, SHAPE)
        assert (frame.seq, frame.timestamp_ns, tuple(frame.shape), frame.meta) == (
            n,
            stamp_of(n),
            shape,
            meta_of(n),
        )
        # the writer (foxglove-sdk) sets publish_time to log_time and counts each channel's
        # messages from 1; the frame's own sequence number and timestamp are checked above
        assert message.publish_time == message.log_time and message.sequence == n + 1
        assert (image.height, image.width, image.encoding, image.step) == (
            shape[0],
            shape[1],
            "rgb8",
            shape[1] * 3,
        )
        pixels = np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 3)
        assert pat.check(pixels) == make_tag(0, n)


def test_progress_only_on_a_terminal(recording: Path) -> None:
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        replayer = start(
            "replay", str(recording), unique_name("rep"), "--as-fast-as-possible",
            stderr=secondary,
        )  # fmt: skip
        os.close(secondary)
        replayer.communicate(timeout=WAIT)
        screen = b""
        while True:
            try:
                chunk = os.read(main, 1 << 16)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(main)
    assert replayer.returncode == 0
    text = screen.decode(errors="replace")
    assert "replaying" in text and f"{COUNT}/{COUNT}" in text and "MB" in text, text
    quiet = run("replay", str(recording), unique_name("rep"), "--as-fast-as-possible", "--quiet")
    assert quiet.stdout == quiet.stderr == ""


def test_a_terminal_that_goes_away_ends_the_progress_not_the_recording(tmp_path: Path) -> None:
    """Progress is drawn on a terminal that then closes, so that the bar's writes fail
    (EIO): the recording goes on to its end and leaves a complete file."""
    name, path = unique_name("tty"), tmp_path / "tty.mcap"
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    with Writer_(name, SHAPE, 10**9) as writer:
        try:
            recorder = start("record", name, str(path), "--seconds", "2", stderr=secondary)
            os.close(secondary)
            screen, deadline = b"", time.monotonic() + WAIT
            while b"recording" not in screen:  # the bar is drawn: the terminal works
                assert readable_within(main, deadline), f"no progress bar: {screen!r}"
                screen += os.read(main, 1 << 16)
        finally:
            os.close(main)  # the terminal goes away; the bar's next redraws fail
        out, _ = recorder.communicate(timeout=WAIT)
        writer.finish(stop=True)
    assert recorder.returncode == 0
    assert "ended by time limit" in out, out
    with shmring.read_recording(str(path)) as rec:  # complete: no recover needed
        assert rec.frame_count == len(list(rec.frames())) > 0


# ------------------------------------------------------------------ crashes and stops


def recovered(path: Path) -> tuple[list[int], int]:
    """What mcap's own reader recovers from a file cut short: the tags of the complete
    frames (every image verified), and the offset where the readable records end."""
    pat = Pattern(VGA)
    tags: list[int] = []
    topics: dict[int, str] = {}
    end = 0
    with open(path, "rb") as f:
        try:
            for record in StreamReader(f, validate_crcs=True).records:
                end = f.tell()
                if isinstance(record, Channel):
                    topics[record.id] = record.topic
                if isinstance(record, Message) and topics[record.channel_id].endswith("/image"):
                    image = RawImage.FromString(record.data)
                    pixels = np.frombuffer(image.data, np.uint8).reshape(VGA)
                    tags.append(pat.check(pixels))
        except (McapError, ValueError):
            pass
    return tags, end


def complete_chunk_end(path: Path) -> tuple[int, int]:
    """(complete chunks, offset just past the last one), by mcap's reader."""
    chunks = end = 0
    with open(path, "rb") as f:
        try:
            for record in StreamReader(f, emit_chunks=True, validate_crcs=True).records:
                if isinstance(record, Chunk):
                    chunks += 1
                    end = f.tell()
        except (McapError, ValueError):
            pass
    return chunks, end


def test_sigkilled_recorder_leaves_every_complete_chunk(tmp_path: Path) -> None:
    name, path = unique_name("kill"), tmp_path / "killed.mcap"
    with Writer_(name, VGA, 10_000) as writer:
        recorder = start("record", name, str(path))
        wait_for_size(path, 8 * CHUNK)
        recorder.kill()
        recorder.wait(WAIT)
        written = writer.finish(stop=True)  # the dead reader no longer holds it back
    tags, _ = recovered(path)
    chunks, end = complete_chunk_end(path)
    assert chunks >= 4
    # every frame up to the last complete chunk (two VGA frames fill a 1 MiB chunk), in
    # order from the first, none torn; what is left after that chunk is less than a chunk
    assert tags == [make_tag(0, n) for n in range(len(tags))]
    assert 2 * chunks - 1 <= len(tags) <= 2 * chunks < written
    assert path.stat().st_size - end < 2 * CHUNK + 4096
    # replay refuses the file, or reads the same frames with --recover
    failed = run("replay", str(path), unique_name("rep"), code=1)
    assert "ends without its index" in failed.stderr and "--recover" in failed.stderr
    with shmring.read_recording(str(path), recover=True) as rec:
        assert rec.frame_count is None
        assert [Pattern(VGA).check(f.array) for f in rec.frames()] == tags


def test_a_slow_stream_loses_at_most_a_second_to_a_sigkill(tmp_path: Path) -> None:
    """Small frames at 50 per second fill a 1 MiB chunk in hours: a killed recorder lost
    everything. A chunk now ends after 1 s too (CHUNK_SECONDS)."""
    name, path = unique_name("slow"), tmp_path / "slow.mcap"
    period, count = 0.02, 150  # 3 s of frames
    with RingWriter.create(name, (4,), np.uint8) as writer:
        recorder = start("record", name, str(path), "--timeout", str(WAIT))
        writer.wait_for_readers(1, WAIT)
        for n in range(count):
            writer.write(np.full(4, n % 256, np.uint8), WAIT)
            time.sleep(period)  # the stream's pace, not a synchronisation
        recorder.kill()
        recorder.wait(WAIT)
    with shmring.read_recording(str(path), recover=True) as rec:
        values = [int(frame.array[0]) for frame in rec.frames()]
    assert values == list(range(len(values)))  # in order from the first, none torn
    # all but the last second or so (the chunk being written), and with a margin for a
    # slow machine: at least half of the frames
    assert len(values) >= count // 2, len(values)


def recovered_frames(path: Path) -> int:
    with shmring.read_recording(str(path), recover=True) as rec:
        return sum(1 for _ in rec.frames())


def test_the_frames_before_a_pause_reach_the_file_while_it_lasts(tmp_path: Path) -> None:
    """A chunk ended only when a frame came: the frames before a pause stayed in the open
    chunk for as long as the pause lasted, lost to a SIGKILL meanwhile."""
    name, path = unique_name("pause"), tmp_path / "paused.mcap"
    with RingWriter.create(name, (4,), np.uint8) as writer:
        recorder = start("record", name, str(path), "--timeout", str(WAIT))
        writer.wait_for_readers(1, WAIT)
        for n in range(5):
            writer.write(np.full(4, n, np.uint8), WAIT)
        deadline = time.monotonic() + WAIT
        while not (path.exists() and recovered_frames(path) == 5):  # (the stream paused)
            assert time.monotonic() < deadline, "the frames before the pause stayed unwritten"
            time.sleep(0.05)  # polling a condition with a deadline, not synchronising
        recorder.kill()
        recorder.wait(WAIT)
    assert recovered_frames(path) == 5


def chunk_crcs(path: Path) -> list[int]:
    """Every chunk's uncompressed CRC, each checked by mcap's reader (0: none written)."""
    with open(path, "rb") as f:
        reader = StreamReader(f, emit_chunks=True, validate_crcs=True)
        return [r.uncompressed_crc for r in reader.records if isinstance(r, Chunk)]


def test_chunk_crcs_only_with_crc(tmp_path: Path) -> None:
    plain, checked = tmp_path / "plain.mcap", tmp_path / "crc.mcap"
    record(unique_name("nocrc"), plain, 300, variable=False)
    record(unique_name("crc"), checked, 300, "--crc", variable=False)
    assert set(chunk_crcs(plain)) == {0}
    crcs = chunk_crcs(checked)
    assert crcs and 0 not in crcs
    with shmring.read_recording(str(checked)) as rec:
        assert [Pattern(SHAPE).check(f.array) for f in rec.frames()] == [
            make_tag(0, n) for n in range(300)
        ]


def test_ctrl_c_finishes_the_file(tmp_path: Path) -> None:
    name, path = unique_name("int"), tmp_path / "stopped.mcap"
    with Writer_(name, SHAPE, 100_000) as writer:
        recorder = start("record", name, str(path), "--compression", "lz4")
        wait_for_size(path, 2 * CHUNK)
        recorder.send_signal(signal.SIGINT)
        out, err = recorder.communicate(timeout=WAIT)
        writer.finish(stop=True)
    assert recorder.returncode == 0, err
    assert "ended by stop request" in out
    with shmring.read_recording(str(path)) as rec:  # complete: no recover needed
        frames = list(rec.frames())
        assert rec.frame_count == len(frames) > 200
    assert [f.meta for f in frames] == [meta_of(n) for n in range(len(frames))]


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (/proc: SigCgt)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_waiting_for_the_ring_ends_cleanly(tmp_path: Path, signum: int) -> None:
    """`record --timeout` waits for a ring that is not there yet; Ctrl-C or SIGTERM then
    ends it as any stop does (exit 0), with no file, saying nothing was recorded."""
    name, path = unique_name("absent"), tmp_path / "never.mcap"
    recorder = start("record", name, str(path), "--timeout", "60")
    deadline = time.monotonic() + WAIT
    while not catches(recorder.pid, signal.SIGTERM):  # its stop request is set up: it waits
        assert time.monotonic() < deadline, "the recorder never set up its stop request"
        time.sleep(0.01)  # polling a condition with a deadline, not synchronising
    recorder.send_signal(signum)
    out, err = recorder.communicate(timeout=WAIT)
    assert recorder.returncode == 0, err
    assert out == f"nothing recorded: stopped before ring {name} appeared\n", out
    assert not path.exists()


def test_no_ring_within_the_timeout_names_the_option() -> None:
    name = unique_name("absent")
    proc = run("record", name, "never.mcap", "--timeout", "0.2", code=1)
    assert f"no ring named {name!r} within 0.2 s" in proc.stderr
    assert "--timeout SECONDS" in proc.stderr, proc.stderr
    run("record", name, "never.mcap", "--timeout", "-1", code=2)


def test_replay_reclaims_a_stale_ring_with_a_one_line_warning(recording: Path) -> None:
    """A ring whose creator was SIGKILLed is reclaimed by the replay that creates its name;
    the CLI says so in one line (not Python's two-line warning form)."""
    name = unique_name("stale")
    with Child("spawn", "create_exit", name=name, write=True) as child:
        child.expect("ready")
        child.kill()
        child.wait_dead()
    proc = run("replay", str(recording), name, "--as-fast-as-possible", "--quiet")
    assert proc.stderr == (
        f"shmring replay: warning: ring {name!r}: its creator died without unlinking it; "
        "reclaiming the name\n"
    )


# ------------------------------------------------------------------ bad input


def test_not_mcap(tmp_path: Path) -> None:
    ring = unique_name("bad")
    text, empty, foreign = tmp_path / "notes.txt", tmp_path / "empty.mcap", tmp_path / "x.mcap"
    text.write_text("hello, not a recording\n")
    empty.write_bytes(b"")
    with open(foreign, "wb") as f:  # valid MCAP, but not shmring's
        mcap = Writer(f)
        mcap.start()
        mcap.add_message(mcap.register_channel("/x", "json", 0), 1, b"{}", 1)
        mcap.finish()  # type: ignore[no-untyped-call]
    for path, words in (
        (text, "is not an MCAP file"),
        (empty, "is not an MCAP file"),
        (foreign, "not a shmring recording"),
    ):
        with pytest.raises(shmring.NotARecording, match=words):
            shmring.replay(str(path), ring)
        assert words in run("replay", str(path), ring, code=1).stderr
    assert not os.path.exists(seg_path(ring))


def test_a_ring_removed_as_replay_finds_it_is_created_anew(
    recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ring exists when replay tries to create it, and its owner removes it before
    replay looks at it: replay creates it after all. It raised RingNotFound, which told the
    user to create the ring replay creates."""
    name = unique_name("vanish")
    owner = RingWriter.create(name, SHAPE, np.uint8, meta_size=META_SIZE)
    inspect = shmring.inspect_ring

    def removed_first(ring: str) -> shmring.RingInfo:
        owner.close()
        return inspect(ring)

    monkeypatch.setattr(_replay, "inspect_ring", removed_first)
    assert shmring.replay(str(recording), name, speed=None).frames == COUNT
    assert owner.closed and not os.path.exists(seg_path(name))


def test_replay_into_a_ring_whose_reader_stops_times_out_saying_where_to_look(
    recording: Path,
) -> None:
    """Under block, a reader that never reads holds the replay back: RingTimeout after the
    timeout, naming the recording's frame and how to find the reader (shmring inspect)."""
    name = unique_name("stuck")
    with (
        RingWriter.create(name, SHAPE, np.uint8, meta_size=META_SIZE, slots=4),
        RingReader.attach(name),
        pytest.raises(shmring.RingTimeout, match=f"shmring inspect {name}") as stuck,
    ):
        shmring.replay(str(recording), name, speed=None, timeout=0.3)
    assert "no room for the recording's frame" in str(stuck.value)


def test_a_file_cut_inside_its_first_records_says_nothing_can_be_replayed(
    recording: Path, tmp_path: Path
) -> None:
    """Cut inside the ring's metadata (what --recover cannot help): a NotARecording that
    says so, not a bare unpack error."""
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(recording.read_bytes()[:100])
    with pytest.raises(shmring.NotARecording, match="no frame of it can be replayed"):
        shmring.replay(str(cut), unique_name("cut"), recover=True)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits until something opens it for writing: a recording
    is opened without waiting, and only a regular file is read."""
    fifo = tmp_path / "pipe.mcap"
    os.mkfifo(fifo)
    ring = unique_name("fifo")
    assert "is a fifo, not a recording" in run("replay", str(fifo), ring, code=1).stderr
    assert not os.path.exists(seg_path(ring))


def test_truncated_file(recording: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mcap"
    data = recording.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    ring = unique_name("cut")
    with pytest.raises(shmring.RecordingTruncated, match="--recover"):
        shmring.replay(str(cut), ring)
    assert not os.path.exists(seg_path(ring))
    with shmring.read_recording(str(cut), recover=True) as rec:
        got = [
            (Pattern(SHAPE).check(f.array), f.seq, f.timestamp_ns, f.meta, f.array.shape)
            for f in rec.frames()
        ]
    assert 0 < len(got) < COUNT
    assert got == expected(len(got))


def test_a_replay_held_back_by_a_stalled_writer_raises_what_held_it(
    recording: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Replay into an overwrite ring whose writers sequence their frames, one of them
    holding a position (forged, as if it were stopped in its publish step): the replay's
    writes go on until their number falls on that position, then wait; the stall is logged
    once, and at `timeout` the replay raises the ParticipantStalled that held it."""
    ring, slots = unique_name("stall"), 4
    frame = np.zeros(SHAPE, np.uint8)
    with (
        RingWriter.create(
            ring, SHAPE, np.uint8, policy="overwrite", slots=slots, meta_size=META_SIZE
        ) as w,
        RingWriter.attach(ring) as other,
    ):
        w.write(frame)
        other.write(frame)
        hold_next_position(w, slots)  # as if `other` were stopped there
        started = time.monotonic()
        with (
            caplog.at_level(logging.WARNING, "shmring.replay"),
            pytest.raises(shmring.ParticipantStalled, match="holds back"),
        ):
            shmring.replay(str(recording), ring, speed=None, timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 0.5 + 2.0
        stalls = [r for r in caplog.records if r.name == "shmring.replay"]
        assert len(stalls) == 1 and "holds back" in stalls[0].getMessage(), stalls


def test_a_stall_is_logged_once_until_something_else_happens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """StallNotice, which record and replay share: one warning per stall; a step that went
    through, or a wait for a plain reason (no frame, no room), ends the stall."""
    notice = StallNotice(logging.getLogger("shmring.record"))
    stalled = shmring.ParticipantStalled("process 1 holds it")
    with caplog.at_level(logging.WARNING, "shmring.record"):
        notice.stall(stalled)
        notice.stall(stalled)
        assert len(caplog.records) == 1
        notice.clear()
        notice.stall(stalled)
    assert [r.getMessage() for r in caplog.records] == ["process 1 holds it; waiting for it"] * 2


@pytest.mark.parametrize("shape, meta_size", [((32, 32), META_SIZE), (SHAPE, 0)])
def test_geometry_mismatch(recording: Path, shape: tuple[int, ...], meta_size: int) -> None:
    name = unique_name("geo")
    with (
        RingWriter.create(name, shape, np.uint8, meta_size=meta_size) as owner,
        RingReader.attach(name, start="oldest") as reader,
    ):
        failed = run("replay", str(recording), name, code=1)
        assert "cannot replay" in failed.stderr and name in failed.stderr
        assert "without shape=" not in failed.stderr  # no advice for another API
        with pytest.raises(shmring.IncompatibleRing):
            shmring.replay(str(recording), name)
        # nothing left locked or attached, and the stream (no writer yet) did not end
        assert {w.pid for w in shmring.inspect_ring(name).writers} <= {os.getpid()}
        with pytest.raises(shmring.RingTimeout):
            reader.read(0)
        owner.write(np.ones(shape, np.uint8), 1.0)
        with reader.read(1.0) as frame:
            assert frame.array.shape == shape


def test_recording_leaves_the_sdk_logger_as_it_was(tmp_path: Path) -> None:
    """The recorder raises the SDK's write-failure logger to WARNING while it records (the
    SDK reports failed writes there), and gives the program back the level it had."""
    logger = logging.getLogger("foxglove.log_sink_set")
    logger.setLevel(logging.ERROR)
    try:
        name = unique_name("log")
        with RingWriter.create(name, SHAPE, np.uint8, meta_size=META_SIZE):
            shmring.record(name, str(tmp_path / "none.mcap"), seconds=0.05)
        assert logger.level == logging.ERROR
    finally:
        logger.setLevel(logging.NOTSET)


def test_a_ring_whose_writer_removes_it_right_after_the_attach_is_recorded_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer writes its few frames and closes (removing the name) between the
    recorder's attach and its look at the ring's header: every frame is recorded. The header
    was read by name, which raised RingNotFound ("no ring named ...") for a ring attached."""
    name, path = unique_name("gone"), tmp_path / "gone.mcap"
    pat = Pattern(SHAPE)
    writer = RingWriter.create(name, SHAPE, np.uint8, meta_size=META_SIZE)
    attach = _record._attach

    def attached_then_writer_done(*args: Any) -> RingReader | None:
        reader = attach(*args)
        for n in range(3):
            writer.write(pat.make(make_tag(0, n)), WAIT, timestamp_ns=stamp_of(n), meta=meta_of(n))
        writer.close()
        assert not os.path.exists(seg_path(name))
        return reader

    monkeypatch.setattr(_record, "_attach", attached_then_writer_done)
    result = shmring.record(name, str(path), seconds=WAIT)
    assert (result.frames, result.ended) == (3, "end of stream"), result
    with shmring.read_recording(str(path)) as done:
        assert [f.seq for f in done.frames()] == [0, 1, 2]


def test_a_recorder_that_fails_after_opening_its_file_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step after the file's open fails (declaring the image channel): the file is closed
    at once, not whenever the exception and its frames are freed, and finished (summary,
    metadata), as at any end but a failed write."""
    declare = _record._channel

    def image_refused(context: Any, topic: str, message_class: Any) -> Any:
        if topic.endswith("/image"):
            raise RuntimeError("declaring the channel failed")
        return declare(context, topic, message_class)

    monkeypatch.setattr(_record, "_channel", image_refused)
    name, path = unique_name("nochan"), tmp_path / "nochan.mcap"
    with (
        RingWriter.create(name, SHAPE, np.uint8, meta_size=META_SIZE),
        pytest.raises(RuntimeError, match="declaring the channel failed") as caught,
    ):
        shmring.record(name, str(path), seconds=WAIT)
    assert caught.value.__traceback__ is not None  # still held, with the recorder's frames
    target = os.path.realpath(path)
    held = [
        fd
        for fd in os.listdir("/proc/self/fd")
        if os.path.realpath(f"/proc/self/fd/{fd}") == target
    ]
    assert held == [], f"the file is still open (fds {held})"
    with open(path, "rb") as f:
        reader = make_reader(f)
        assert reader.get_summary() is not None
        assert [m.name for m in reader.iter_metadata()] == ["shmring.ring"]


def test_looping_over_a_recording_without_frames_ends(tmp_path: Path) -> None:
    """A recording stopped before its first frame is a valid file of no frame; replaying
    it with --loop makes one pass and ends (it must not read the file over and over)."""
    path, source = tmp_path / "empty.mcap", unique_name("empty")
    with RingWriter.create(source, SHAPE, np.uint8, meta_size=META_SIZE):
        assert "recorded 0 frames" in run("record", source, str(path), "--seconds", "0.1").stdout
    name = unique_name("loop")
    done = run("replay", str(path), name, "--loop", "--as-fast-as-possible", "--wait-readers", "0")
    assert "replayed 0 frames" in done.stdout, done.stdout
    assert not os.path.exists(seg_path(name))


def test_disk_full_dev_full() -> None:
    name = unique_name("full")
    with Writer_(name, SHAPE, 100_000) as writer:
        failed = run("record", name, "/dev/full", code=1)
        assert "disk full" in failed.stderr and "nothing of it was complete" in failed.stderr
        assert writer.finish(stop=True) > 0  # the ring is not held: the writer went on
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # a device is neither cut nor removed


def on_small_tmpfs(
    tmp_path: Path, size: str, command: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run `command`, "{mount}" in it replaced, with a tmpfs of `size` mounted at {mount} in a
    private mount namespace (so nothing outlives it); {mount}/f.mcap is copied out to
    tmp_path/full.mcap before the namespace goes away. Skips if no tmpfs can be mounted."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    mount = tmp_path / "mnt"
    mount.mkdir()
    argv = " ".join(shlex.quote(arg.replace("{mount}", str(mount))) for arg in command)
    script = (
        f"mount -t tmpfs -o size={size} none {mount} || exit 77; {argv}; code=$?; "
        f"cp {mount}/f.mcap {tmp_path / 'full.mcap'}; exit $code"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    if proc.returncode == 77 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    return proc


def test_disk_full_tmpfs(tmp_path: Path) -> None:
    """A 3 MiB disk fills up mid-recording."""
    name, copy = unique_name("fill"), tmp_path / "full.mcap"
    with Writer_(name, VGA, 100_000) as writer:
        proc = on_small_tmpfs(tmp_path, "3m", cli("record", name, "{mount}/f.mcap"))
        writer.finish(stop=True)
    assert proc.returncode == 1 and "disk full" in proc.stderr, proc.stderr
    tags, end = recovered(copy)
    assert tags == [make_tag(0, n) for n in range(len(tags))] and len(tags) >= 2
    assert end == copy.stat().st_size  # cut back to the last complete record
    with shmring.read_recording(str(copy), recover=True) as rec:
        assert len(list(rec.frames())) == len(tags)


def test_disk_full_inside_a_chunk_raises_at_that_frame(tmp_path: Path) -> None:
    """A write that fails inside a chunk (foxglove-sdk's Channel.log only logs it) ends the
    recording at that frame, not at the chunk's end: with chunks of 1 GiB, nothing else
    would stop it before its 200th frame of 64 KiB on a disk of 1 MiB."""
    name = unique_name("fillchunk")
    code = (
        "import sys, shmring\n"
        "try:\n"
        f"    shmring.record({name!r}, '{{mount}}/f.mcap', frames=200, chunk_size=1 << 30,"
        f" start='oldest', timeout={WAIT})\n"
        "except shmring.RecordingDiskFull as exc:\n"
        "    sys.exit(str(exc))\n"
    )
    with Writer_(name, (256, 256), 200) as writer:
        proc = on_small_tmpfs(tmp_path, "1m", [sys.executable, "-c", code])
        writer.finish()  # its reader gone, it wrote the rest
    taken = re.search(r"disk full writing \S+ after (\d+) frames", proc.stderr)
    assert proc.returncode == 1 and taken, proc.stderr
    assert int(taken.group(1)) <= 16  # 1 MiB holds 15 frames and the file's header
    assert "its last complete chunk (0 frames)" in proc.stderr
    assert (tmp_path / "full.mcap").stat().st_size < 4096  # the header and metadata


@pytest.mark.parametrize("there_before", [False, True], ids=["created", "there-before"])
def test_a_full_disk_removes_only_a_file_the_recording_created(
    tmp_path: Path, there_before: bool
) -> None:
    """The disk is full before the file's start is written: a file the recording created is
    removed; one that was there before (empty, so that the SDK's truncation frees no room)
    is kept, cut back to its last complete chunk: none."""
    name = unique_name("fillfirst")
    code = (
        "import errno, sys, numpy as np, shmring\n"
        "if sys.argv[1] == 'there-before':\n"
        "    open('{mount}/f.mcap', 'wb').close()\n"
        "with open('{mount}/filler', 'wb', buffering=0) as filler:\n"
        "    try:\n"
        "        while True:\n"
        "            filler.write(bytes(4096))\n"
        "    except OSError as full:\n"
        "        assert full.errno == errno.ENOSPC, full\n"
        f"with shmring.RingWriter.create({name!r}, (4,), np.uint8):\n"
        "    try:\n"
        f"        shmring.record({name!r}, '{{mount}}/f.mcap', seconds={WAIT})\n"
        "    except shmring.RecordingDiskFull as exc:\n"
        "        sys.exit(str(exc))\n"
    )
    mode = "there-before" if there_before else "created"
    proc = on_small_tmpfs(tmp_path, "64k", [sys.executable, "-c", code, mode])
    assert proc.returncode == 1 and "nothing of it was complete" in proc.stderr, proc.stderr
    copy = tmp_path / "full.mcap"  # what the path held after the recording
    if there_before:
        assert "removed" not in proc.stderr and copy.read_bytes() == b"", proc.stderr
    else:
        assert "; it was removed" in proc.stderr and not copy.exists(), proc.stderr


@pytest.mark.parametrize(
    "failure",
    [
        PermissionError(errno.EACCES, "Permission denied"),  # as another user's file
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("FoxgloveError: the SDK's own"),  # (what _writing would probe for)
    ],
    ids=["EACCES", "ENOSPC", "SDK-error"],
)
def test_a_file_that_cannot_be_opened_is_left_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """A file at the path that the SDK cannot open (another user's, say; the tests run as
    root, so its open is made to fail) is neither removed nor written to: the open's error
    is raised (the SDK's own error as an OSError)."""
    path = tmp_path / "theirs.mcap"
    before = b"someone else's file\n" * 1000
    path.write_bytes(before)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise failure

    monkeypatch.setattr(_record, "open_mcap", refuse)
    name = unique_name("theirs")
    with (
        RingWriter.create(name, SHAPE, np.uint8, meta_size=META_SIZE),
        pytest.raises(OSError) as caught,
    ):
        shmring.record(name, str(path), seconds=WAIT)
    assert path.read_bytes() == before
    assert failure in (caught.value, caught.value.__cause__)


def test_missing_extra_names_it() -> None:
    code = (
        "import sys; sys.modules['mcap'] = None; from shmring._cli import main; "
        "sys.exit(main(['record', 'nothing', '/nonexistent/x.mcap']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert proc.returncode == 1
    assert "pip install 'shmring[record]'" in proc.stderr, proc.stderr


def test_no_tags_lost_in_order(recording: Path) -> None:
    """read_recording gives the original ring's sequence numbers and the recorder's times."""
    with shmring.read_recording(str(recording)) as rec:
        frames = list(rec.frames())
        assert rec.frame_count == COUNT and rec.ring.image_encoding == "rgb8"
    assert [f.seq for f in frames] == list(range(COUNT))
    assert all(f.dropped == 0 for f in frames)
    assert [split_tag(Pattern(SHAPE).check(f.array))[1] for f in frames] == list(range(COUNT))
    log_times = [f.log_time_ns for f in frames]
    assert log_times == sorted(log_times)


@pytest.mark.parametrize(
    ("where", "error"),
    [("missing/x.mcap", FileNotFoundError), (".", IsADirectoryError)],
    ids=["no-such-directory", "a-directory"],
)
def test_a_path_that_cannot_be_recorded_to_is_named(
    tmp_path: Path, where: str, error: type[OSError]
) -> None:
    """The SDK's open error names neither the file nor what to do (nor its errno)."""
    path = tmp_path / where
    name = unique_name("recpath")
    with RingWriter.create(name, SHAPE, np.uint8), pytest.raises(error) as refused:
        shmring.record(name, str(path), seconds=WAIT)
    assert f"cannot record to {path}" in str(refused.value)
    assert "existing directory you may write to" in str(refused.value)


# ------------------------------------------------------------------ where a recording goes


@pytest.mark.parametrize("kind", ["fifo", "terminal"])
def test_a_path_that_cannot_seek_is_refused_before_the_ring_is_held(
    tmp_path: Path, kind: str
) -> None:
    """A FIFO (opening it waited for a reader, deaf to Ctrl-C and SIGTERM, while the ring's
    writer was held back) or a terminal (the failure probe wrote 1 MiB of zeros into it):
    refused at once, naming the path (before the recorder attaches)."""
    name = unique_name("seekless")
    if kind == "fifo":
        path = str(tmp_path / "f.mcap")
        os.mkfifo(path)
        controller = terminal = -1
    else:
        controller, terminal = os.openpty()
        path = os.ttyname(terminal)
    try:
        with RingWriter.create(name, SHAPE, np.uint8):  # (a FIFO hung: `run` times out)
            failed = run("record", name, path, "--timeout", str(WAIT), code=1)
            assert f"cannot record to {path}" in failed.stderr and "not a file" in failed.stderr
        if kind == "terminal":
            os.set_blocking(controller, False)
            with contextlib.suppress(BlockingIOError):
                assert os.read(controller, 1 << 16) == b""  # nothing was written to it
    finally:
        for fd in (controller, terminal):
            if fd >= 0:
                os.close(fd)


def test_a_seekable_device_takes_a_recording_and_its_summary_says_so(tmp_path: Path) -> None:
    name = unique_name("devnull")
    with Writer_(name, SHAPE, 5) as writer:
        proc = run("record", name, "/dev/null", "--frames", "5")
        assert writer.finish() == 5
    assert "recorded 5 frames (0 B)" in proc.stdout, proc.stdout  # not "stopped before"


def test_a_recording_moved_while_it_runs_ends_cleanly_and_counts_its_bytes(
    tmp_path: Path,
) -> None:
    """Log rotation: the file renamed under the recorder. Its sizes follow the open file,
    not the path (the path's size raised FileNotFoundError once it was gone)."""
    name, path, moved = unique_name("moved"), tmp_path / "r.mcap", tmp_path / "moved.mcap"
    with Writer_(name, SHAPE, 10**9) as writer:
        recorder = start("record", name, str(path), "--timeout", str(WAIT))
        wait_for_size(path, 2 * CHUNK)  # a few chunks in
        path.rename(moved)
        wait_for_size(moved, 4 * CHUNK)  # chunks finished since, in the moved file
        recorder.send_signal(signal.SIGINT)
        out, err = recorder.communicate(timeout=WAIT)
        assert recorder.returncode == 0, err
        writer.finish(stop=True)
    assert not path.exists()
    with shmring.read_recording(str(moved)) as done:
        frames = sum(1 for _ in done.frames())
    assert f"recorded {frames} frames ({human_bytes(moved.stat().st_size)})" in out, out


def record_three(path: Path, interval: float) -> None:
    """Record three 4-byte frames (values 0, 1, 2; stamped `interval` s apart, from 0) into
    `path`, with shmring.record in a spawned process."""
    name = unique_name("three")
    with RingWriter.create(name, (4,), np.uint8) as writer:
        recorder = mp.get_context("spawn").Process(
            target=shmring.record, args=(name, str(path)), kwargs={"frames": 3, "timeout": WAIT}
        )
        recorder.start()
        writer.wait_for_readers(1, WAIT)
        for n in range(3):
            writer.write(np.full(4, n, np.uint8), WAIT, timestamp_ns=int(n * interval * 1e9))
        recorder.join(WAIT)
    assert recorder.exitcode == 0


def test_every_damaged_word_is_a_typed_error_or_frames(tmp_path: Path) -> None:
    """Each 8-byte word of a small recording overwritten with all ones (a length of 2**64 -
    1 among them: OverflowError inside mcap's reader, raised raw before): replaying it
    either reads frames or raises NotARecording / RecordingTruncated, with and without
    recover, and never another exception."""
    path = tmp_path / "small.mcap"
    record_three(path, 0.0)
    clean = path.read_bytes()
    damaged = tmp_path / "damaged.mcap"
    outcomes: set[str] = set()
    for offset in range(8, len(clean) - 8, 8):  # (the magic at each end: NotARecording)
        damaged.write_bytes(clean[:offset] + b"\xff" * 8 + clean[offset + 8 :])
        for recover in (False, True):
            try:
                with shmring.read_recording(str(damaged), recover=recover) as recording:
                    frames = list(recording.frames())
                outcomes.add(f"{len(frames)} frames")
            except (shmring.NotARecording, shmring.RecordingTruncated) as exc:
                outcomes.add(type(exc).__name__)
    assert "NotARecording" in outcomes and "3 frames" in outcomes, outcomes


def test_replay_and_record_check_their_timeout_first(recording: Path) -> None:
    """A NaN timeout waited for ever (no comparison with it is true), -1 counted as 0."""
    bad_timeouts: list[tuple[Any, type[Exception]]] = [
        (math.nan, ValueError),
        (-1.0, ValueError),
        ("1", TypeError),
    ]
    for bad, error in bad_timeouts:
        with pytest.raises(error, match="timeout"):
            shmring.replay(str(recording), unique_name("rt"), timeout=bad, wait_readers=1)
        with pytest.raises(error, match="timeout"):
            shmring.record(unique_name("rt"), str(recording) + ".x", timeout=bad)


def test_a_loop_keeps_the_pace_across_its_wrap(tmp_path: Path) -> None:
    """A pass's first frame came right after the last one (each pass was paced from its own
    first frame): a loop of a short recording ran faster than recorded. Now it comes the
    recording's mean interval later."""
    path, interval = tmp_path / "three.mcap", 0.1
    record_three(path, interval)
    ring = unique_name("loopr")
    replayer = start("replay", str(path), ring, "--loop", "--wait-readers", "1")
    arrivals = []
    with RingReader.attach(ring, timeout=WAIT) as reader:
        for _ in range(9):  # three passes: two wraps
            with reader.read(WAIT) as frame:
                arrivals.append((int(frame.array[0]), time.monotonic()))
    replayer.send_signal(signal.SIGINT)
    assert replayer.wait(WAIT) == 0
    assert [value for value, _ in arrivals] == [0, 1, 2] * 3
    wraps = [arrivals[i + 1][1] - arrivals[i][1] for i in (2, 5)]
    assert min(wraps) >= interval / 4, wraps  # (about 0 before; late frames shorten it)


@pytest.mark.parametrize(
    ("call", "arguments", "error", "words"),
    [
        ("record", {"frames": "10"}, TypeError, "frames must be an integer"),
        ("record", {"frames": 2.5}, TypeError, "frames must be an integer"),
        ("record", {"frames": True}, TypeError, "frames must be an integer"),
        ("record", {"frames": 0}, ValueError, "frames must be between 1"),
        ("record", {"seconds": "1"}, TypeError, "seconds must be a number"),
        ("record", {"seconds": math.inf}, ValueError, "seconds must be a positive number"),
        ("record", {"chunk_size": 1.5}, TypeError, "chunk_size must be an integer"),
        ("record", {"chunk_size": 1 << 40}, ValueError, "chunk_size must be between"),
        ("replay", {"speed": 0}, ValueError, "speed must be a positive number"),
        ("replay", {"speed": "1"}, TypeError, "speed must be a number"),
        ("replay", {"wait_readers": "1"}, TypeError, "wait_readers must be an integer"),
        ("replay", {"wait_readers": -1}, ValueError, "wait_readers must be between 0"),
    ],
)
def test_the_api_names_a_bad_argument(
    tmp_path: Path, call: str, arguments: dict[str, Any], error: type[Exception], words: str
) -> None:
    """Checked before anything is opened or attached (raw comparison errors before, or
    values taken: frames=2.5 recorded 3 frames, frames=True 1)."""
    with pytest.raises(error, match=words):
        if call == "record":
            shmring.record(unique_name("arg"), str(tmp_path / "x.mcap"), **arguments)
        else:
            shmring.replay(str(tmp_path / "missing.mcap"), unique_name("arg"), **arguments)
