# `python -m bench.record`: how fast `shmring record` writes a ring into an MCAP file, and
# how fast `shmring replay --as-fast-as-possible` writes one back into a ring, each against
# a baseline measured in the same run (docs/performance.md, "Recording and replay").
#
# Cells, for 640×480×3 and 1920×1080×3 uint8 frames of random bytes (incompressible: the
# worst case for zstd):
#   - plain: a buffered `file.write` loop of the same frame bytes into a file in the same
#     directory: the ceiling of the page cache; "+ fsync" adds the time to get them onto
#     the disk (os.fsync at the end), the disk's ceiling.
#   - via bytes: each frame copied into a new bytes object, which is written: the floor of a
#     writer that takes its messages as bytes, as foxglove-sdk's Channel.log does (one
#     copy more than plain).
#   - from the ring: a writer process publishes the frames (as for record); this process
#     reads each and writes it with `file.write` straight from shared memory: no MCAP, no
#     `bytes`. The floor of any recorder of a ring (its frames come from another core), and
#     the most a recorder that wrote frames from the ring itself (writev) could reach.
#   - record: a writer process publishes the frames as fast as the ring lets it (block
#     policy); this process records them with shmring.record (no compression; with chunk
#     CRCs; zstd), then fsyncs the file. frames/s and MB/s of frame bytes, ÷ plain (page
#     cache, and both with fsync).
#   - keep-up: a writer process publishes 1920×1080×3 frames at 30 frames/s into an
#     overwrite ring for a few seconds; the recorder must get all of them (none dropped).
#   - replay: a reader process drains the ring and times its first frame to its last;
#     shmring.replay(speed=None) of the recorded file against a write() loop of the same
#     frames from memory into a ring of the same geometry (8 slots, block) and reader.
# Medians over --repeats runs per cell; nothing is pinned to a CPU (2 cores, 2 processes).
# Each plain, chunked and record run starts after os.sync(), with no dirty pages left by the
# last, and after touching and freeing as much memory as it will write (recycle_pages): on
# the development VM a page touched for the first time after a while costs ~4x one recycled
# at once (the host backs guest pages lazily and takes freed ones back), which made a cell's
# figure depend on what ran before it, by up to 4x (docs/performance.md).

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

import shmring
from bench.cpu import machine_info
from shmring import EndOfStream, RingReader, RingWriter

SIZES = {"640×480×3": (480, 640, 3), "1920×1080×3": (1080, 1920, 3)}
BYTES_PER_SIZE = 400e6  # frame bytes per cell (~430 VGA frames, ~64 1080p frames)
KEEP_UP_FPS = 30
WAIT = 30.0
Timed = tuple[float, float]  # seconds written, and seconds until on the disk
Rate = tuple[float, float]  # frames/s, MB/s
T = TypeVar("T")


def frames_for(shape: tuple[int, ...]) -> int:
    return max(20, int(BYTES_PER_SIZE // np.prod(shape)))


def sources(shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, shape, np.uint8) for _ in range(4)]


# ---- processes ---------------------------------------------------------------------------


def publish(
    name: str, shape: tuple[int, ...], count: int, fps: float, policy: str, ready: Connection
) -> None:
    """Create ring `name`, say so, wait for one reader, write `count` frames (paced at `fps`
    if non-zero), close."""
    frames = sources(shape)
    with RingWriter.create(name, shape, np.uint8, policy=policy, slots=16) as writer:
        ready.send("created")
        writer.wait_for_readers(1, WAIT)
        start = time.monotonic()
        for n in range(count):
            if fps:
                time.sleep(max(0.0, start + n / fps - time.monotonic()))
            writer.write(frames[n % len(frames)], WAIT)


def drain(name: str, done: Connection) -> None:
    """Read ring `name` (waiting for it) to the end of the stream; report the count and the
    seconds from the first frame to the last (startup and attaching are not counted)."""
    count = 0
    first = last = 0.0
    with RingReader.attach(name, timeout=WAIT, start="oldest") as reader:
        try:
            while True:
                with reader.read(WAIT):
                    last = time.perf_counter()
                    first = first or last
                    count += 1
        except EndOfStream:
            done.send((count, last - first))


def spawn(target: Callable[..., None], *args: object) -> mp.process.BaseProcess:
    process = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    return process


def spawn_writer(*args: object) -> mp.process.BaseProcess:
    """A publish() process whose ring exists: its start-up is not timed."""
    ours, theirs = mp.get_context("spawn").Pipe()
    process = spawn(publish, *args, theirs)
    if not ours.poll(WAIT):
        raise RuntimeError("the writer process did not create its ring")
    ours.recv()
    return process


def joined(process: mp.process.BaseProcess) -> None:
    process.join(WAIT)
    if process.exitcode != 0:
        raise RuntimeError(f"{process.name} exited with {process.exitcode}")


# ---- cells ------------------------------------------------------------------------------


def fsynced(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def plain(path: Path, shape: tuple[int, ...], count: int) -> tuple[float, float]:
    """Seconds to write `count` frames with file.write, and to have them on the disk."""
    frames = [frame.tobytes() for frame in sources(shape)]

    def write_frames(f: BinaryIO) -> None:
        for n in range(count):
            f.write(frames[n % len(frames)])

    return timed_write(path, count * len(frames[0]), write_frames)


def via_bytes(path: Path, shape: tuple[int, ...], count: int) -> tuple[float, float]:
    """As plain, but each frame is first copied into a new bytes object, which is written:
    the floor of a writer whose API takes bytes (foxglove-sdk's Channel.log)."""
    frames = sources(shape)

    def write_frames(f: BinaryIO) -> None:
        for n in range(count):
            f.write(frames[n % len(frames)].tobytes())

    return timed_write(path, count * frames[0].nbytes, write_frames)


def recycle_pages(nbytes: int) -> None:
    """Touch `nbytes` of memory and free it: the page cache of the run that follows gets
    pages the machine has just used (see the header)."""
    np.ones(nbytes // 8 + 1)


def timed_write(
    path: Path, nbytes: int, write_frames: Callable[[BinaryIO], None]
) -> tuple[float, float]:
    """Seconds `write_frames` takes to write `nbytes` into `path`, and to have them on the
    disk."""
    os.sync()  # every cell starts with no dirty pages waiting for the disk
    recycle_pages(nbytes)
    start = time.perf_counter()
    with open(path, "wb") as f:
        write_frames(f)
    written = time.perf_counter()
    fsynced(path)
    synced = time.perf_counter()
    path.unlink()
    return written - start, synced - start


def from_writer(
    path: Path, shape: tuple[int, ...], count: int, consume: Callable[[str], T]
) -> tuple[float, float, T]:
    """Seconds `consume(ring)` takes to turn `count` frames of a writer process into the
    file `path`, and to have it on the disk; what `consume` returned."""
    name = f"benchrec{os.getpid()}"
    path.unlink(missing_ok=True)  # as plain: ext4 flushes a file truncated and rewritten on close
    writer = spawn_writer(name, shape, count, 0.0, "block")
    os.sync()
    recycle_pages(count * int(np.prod(shape)))
    start = time.perf_counter()
    result = consume(name)
    written = time.perf_counter()
    fsynced(path)
    synced = time.perf_counter()
    joined(writer)
    return written - start, synced - start, result


def from_ring(path: Path, shape: tuple[int, ...], count: int) -> Timed:
    """Read each frame and file.write it from shared memory (see the header)."""

    def write_frames(name: str) -> None:
        with (
            RingReader.attach(name, timeout=WAIT, start="oldest") as reader,
            open(path, "wb") as f,
        ):
            for _ in range(count):
                with reader.read(WAIT) as frame:
                    f.write(frame.array.data)  # a memoryview of shared memory

    written, synced, _ = from_writer(path, shape, count, write_frames)
    path.unlink()
    return written, synced


def record(
    path: Path, shape: tuple[int, ...], count: int, compression: str, crc: bool = False
) -> tuple[float, float, int]:
    """Seconds to record `count` frames of a writer process, with the fsync; file bytes."""

    def recorded(name: str) -> shmring.RecordResult:
        return shmring.record(
            name,
            str(path),
            frames=count,
            compression=compression,
            crc=crc,
            start="oldest",
            timeout=WAIT,
        )

    written, synced, result = from_writer(path, shape, count, recorded)
    if result.frames != count:
        raise RuntimeError(f"recorded {result.frames} of {count} frames")
    verify_recording(path, shape, count)
    return written, synced, result.bytes


def verify_recording(path: Path, shape: tuple[int, ...], count: int) -> None:
    """Untimed: the recording holds the writer's frames, whole, in order, each once."""
    frames = sources(shape)
    with shmring.read_recording(str(path)) as recording:
        seqs = []
        for frame in recording.frames():
            if not np.array_equal(frame.array, frames[frame.seq % len(frames)]):
                raise RuntimeError(f"recorded frame {frame.seq} differs from the one written")
            seqs.append(frame.seq)
    if seqs != list(range(count)):
        raise RuntimeError(f"recorded frames out of order or repeated: {seqs[:10]}...")


def keep_up(path: Path, shape: tuple[int, ...], seconds: float) -> tuple[int, int, int]:
    """(frames published, recorded, dropped) recording a paced overwrite ring."""
    name = f"benchkeep{os.getpid()}"
    count = int(seconds * KEEP_UP_FPS)
    writer = spawn_writer(name, shape, count, KEEP_UP_FPS, "overwrite")
    result = shmring.record(name, str(path), start="oldest", timeout=WAIT)
    joined(writer)
    path.unlink()
    return count, result.frames, result.dropped


def drained(reader: mp.process.BaseProcess, done: Connection, count: int) -> float:
    """Frames/s the reader process got, between its first frame and its last."""
    got, seconds = done.recv() if done.poll(WAIT) else (-1, 0.0)
    joined(reader)
    if got != count:
        raise RuntimeError(f"read {got} of {count} frames")
    return (count - 1) / seconds


def replay_rate(path: Path, count: int) -> float:
    name = f"benchrep{os.getpid()}"
    ours, theirs = mp.get_context("spawn").Pipe()
    reader = spawn(drain, name, theirs)
    shmring.replay(str(path), name, speed=None, wait_readers=1, timeout=WAIT)
    return drained(reader, ours, count)


def write_rate(shape: tuple[int, ...], count: int) -> float:
    """A write() loop of the same frames from memory, into the same kind of ring."""
    name = f"benchwrite{os.getpid()}"
    frames = sources(shape)
    ours, theirs = mp.get_context("spawn").Pipe()
    with RingWriter.create(name, shape, np.uint8) as writer:
        reader = spawn(drain, name, theirs)
        writer.wait_for_readers(1, WAIT)
        for n in range(count):
            writer.write(frames[n % len(frames)], WAIT)
    return drained(reader, ours, count)


# ---- report -----------------------------------------------------------------------------


def rate(count: int, seconds: list[float], nbytes: int) -> tuple[float, float]:
    """Median frames/s and MB/s of frame bytes."""
    fps = count / statistics.median(seconds)
    return fps, fps * nbytes / 1e6


def row(label: str, cell: str, got: Rate, synced: Rate, base: Rate, base_synced: Rate) -> str:
    """A table row: the cell's rates and its ratios to the plain write's."""
    return (
        f"| {label} | {cell} | {got[0]:.0f} | {got[1]:.0f} | {got[0] / base[0]:.2f}× | "
        f"{synced[0]:.0f} | {synced[0] / base_synced[0]:.2f}× |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--keep-up-seconds", type=float, default=4.0)
    parser.add_argument("--dir", default=None, help="where the files go (default: TMPDIR)")
    args = parser.parse_args(argv)
    info = machine_info()
    print(
        f"# python -m bench.record --repeats {args.repeats}  "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {info['git_commit']})"
    )
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-record-") as tmp:
        directory = Path(tmp)
        stat = os.statvfs(directory)
        print(
            f"# files in {directory} ({stat.f_bavail * stat.f_frsize / 2**30:.0f} GiB free); "
            f"{info['cpu']}, {info['cpus']} CPUs, Python {info['python']}, "
            f"numpy {info['versions']['numpy']}; frames of random bytes"
        )
        print()
        print(
            "| size | cell | frames/s | MB/s | ÷ plain write | with fsync: frames/s | "
            "÷ plain write + fsync |"
        )
        print("|---|---|---|---|---|---|---|")
        replays: list[str] = []
        for label, shape in SIZES.items():
            count, nbytes = frames_for(shape), int(np.prod(shape))
            path = directory / "frames.mcap"
            runs = [plain(directory / "plain.bin", shape, count) for _ in range(args.repeats)]
            base, base_synced = (rate(count, [r[i] for r in runs], nbytes) for i in (0, 1))
            print(
                f"| {label} | plain `file.write` ({count} frames) | {base[0]:.0f} | "
                f"{base[1]:.0f} | 1.00× | {base_synced[0]:.0f} | 1.00× |"
            )
            floors: tuple[tuple[str, Callable[[Path, tuple[int, ...], int], Timed]], ...] = (
                ("copy into a new `bytes`, `file.write` each", via_bytes),
                ("read from the ring, `file.write` each (no MCAP)", from_ring),
            )
            for cell, measure in floors:
                runs = [measure(directory / "floor.bin", shape, count) for _ in range(args.repeats)]
                got, synced = (rate(count, [r[i] for r in runs], nbytes) for i in (0, 1))
                print(row(label, cell, got, synced, base, base_synced))
            for compression, crc in (("none", False), ("none", True), ("zstd", False)):
                results = [
                    record(path, shape, count, compression, crc) for _ in range(args.repeats)
                ]
                got, synced = (rate(count, [r[i] for r in results], nbytes) for i in (0, 1))
                ratio = results[-1][2] / (count * nbytes)
                cell = f"`shmring record`, {compression}" + (", chunk CRCs" if crc else "")
                cell += f" (file {ratio:.2f}× the frame bytes)"
                print(row(label, cell, got, synced, base, base_synced))
            record(path, shape, count, "none")  # the file replayed below
            replayed = statistics.median(replay_rate(path, count) for _ in range(args.repeats))
            written = statistics.median(write_rate(shape, count) for _ in range(args.repeats))
            path.unlink()
            replays.append(
                f"| {label} | {replayed:.0f} | {written:.0f} | {replayed / written:.2f}× |"
            )
        print()
        print("| size | replay --as-fast-as-possible, frames/s | write() from memory | ÷ |")
        print("|---|---|---|---|")
        print("\n".join(replays))
        published, recorded, dropped = keep_up(
            directory / "keep.mcap", SIZES["1920×1080×3"], args.keep_up_seconds
        )
        print()
        print(
            f"keep-up: 1920×1080×3 at {KEEP_UP_FPS} frames/s into an overwrite ring for "
            f"{args.keep_up_seconds:g} s: {published} published, {recorded} recorded, "
            f"{dropped} dropped"
        )


if __name__ == "__main__":
    main()
