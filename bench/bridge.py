# `python -m bench.bridge`: ring → `shmring bridge` → ring over Zenoh on 127.0.0.1, against
# raw zenoh-python put → subscriber (the bridge's ceiling), pyzmq PUSH/PULL over TCP with
# copy=False, and imagezmq (REQ/REP over TCP), all measured in the same run.
#
# Rules:
#   - Real processes ("spawn"), one per role. The bridge is four: a writer, the sender bridge
#     (BridgeSender), the receiver bridge (BridgeReceiver), a reader of the received ring;
#     each peer is two: a producer and a consumer. Every endpoint is on 127.0.0.1.
#   - Every frame carries its index in its first 8 bytes and a CLOCK_MONOTONIC stamp in the
#     next 8; the consumer checks the indices arrive in order with none missing.
#   - Throughput: frames flat out, frames/s from the consumer's first to its last frame.
#     Latency: frames paced PACE_S apart (slower than any peer's flat-out rate), one-way
#     (the consumer's clock minus the stamp), p50/p99.
#   - CPU per side: the parent reads /proc/PID/stat (user + system) of every process at the
#     start and end of the throughput window; "send side" is writer + sender bridge (or the
#     producer), "recv side" receiver bridge + reader (or the consumer).
#   - Ratios are taken within this run only.
#   - Raw Zenoh's sessions are configured as the bridge's (shmring._bridge.zenoh_config, the
#     publisher as a lossless sender): the same transport settings, so it stays the ceiling.
#   - `--copies` measures instead, in this process, what each copy the bridge makes of a frame
#     costs: the one the design wants per side (a NumPy copy of the frame's bytes) and the
#     two the binding adds (`ZBytes(bytearray)` on the sender, `ZBytes.to_bytes()` on the
#     receiver; docs/API.md, "Copies"). Medians of COPY_REPEATS timings of a loop each.
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from importlib.util import find_spec
from multiprocessing.connection import Connection
from statistics import quantiles
from typing import Any

import numpy as np

from bench.cpu import machine_info
from bench.frames import FrameSize, make_source

WAIT = 60.0  # the longest any step may take
LATENCY_FRAMES = 60
SIZES = {"64KiB": (65536,), "640x480x3": (480, 640, 3), "1920x1080x3": (1080, 1920, 3)}
PACE_S = {"64KiB": 0.01, "640x480x3": 0.02, "1920x1080x3": 0.05}  # slower than any peer
TICK = os.sysconf("SC_CLK_TCK")
COPY_REPEATS = 7
COPY_BYTES = 200e6  # bytes each timed loop copies


@dataclass(frozen=True)
class Run:
    shape: tuple[int, ...]
    count: int
    pace: float  # seconds between frames; 0: flat out
    port: int
    name: str  # ring name / key suffix, unique to the run


def stamp(frame: np.ndarray, index: int) -> None:
    """The frame's index and send time in its first 16 bytes, its index in its last 8."""
    flat = frame.reshape(-1).view(np.uint8)
    flat[:16] = np.array([index, time.monotonic_ns()], np.uint64).view(np.uint8)
    flat[-8:] = np.array([index], np.uint64).view(np.uint8)


def unstamp(buffer: Any) -> tuple[int, int]:
    """(index, send time) of a frame stamp() stamped; a torn frame (head and tail from
    different frames) raises."""
    index, stamped = np.frombuffer(buffer, np.uint64, 2)
    (tail,) = np.frombuffer(buffer, np.uint64, 1, offset=len(memoryview(buffer).cast("B")) - 8)
    if tail != index:
        raise AssertionError(f"frame {index} came with the tail of frame {tail}: torn")
    return int(index), int(stamped)


class Tally:
    """What a consumer saw: order checked, arrival span, one-way latencies."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.next = 0
        self.first = self.last = 0
        self.latencies: list[int] = []

    def take(self, buffer: Any) -> bool:
        """Account one frame; True once all have come."""
        now = time.monotonic_ns()
        index, stamped = unstamp(buffer)
        if index != self.next:
            raise AssertionError(f"frame {index} came, {self.next} expected")
        self.next += 1
        self.first = self.first or now
        self.last = now
        self.latencies.append(now - stamped)
        return self.next == self.run.count

    def report(self) -> dict[str, float]:
        seconds = (self.last - self.first) / 1e9
        us = quantiles([ns / 1e3 for ns in self.latencies], n=100)
        return {"fps": (self.run.count - 1) / seconds, "p50": us[49], "p99": us[98]}


def produce(
    conn: Connection,
    run: Run,
    send: Callable[[np.ndarray, int], object],
    pool: int = 1,
    reuse: Callable[[int], None] = lambda slot: None,
) -> None:
    """The producer's loop, after its transport is ready: wait for go, send, report.
    Frames come from a pool of `pool` used in turn; `reuse(slot)` returns once the
    transport is done with that one, `send(frame, slot)` sends it."""
    frames = [make_source(FrameSize("bridge", run.shape)) for _ in range(pool)]  # every page
    conn.send("ready")
    assert conn.recv() == "go"
    for index in range(run.count):
        slot = index % pool
        reuse(slot)
        stamp(frames[slot], index)
        send(frames[slot], slot)
        if run.pace:
            time.sleep(run.pace)
    conn.send("sent")
    conn.poll(WAIT)  # keep the transport up until the consumer has everything


# ---- shmring bridge -------------------------------------------------------------------------


def bridge_writer(conn: Connection, run: Run) -> None:
    import shmring

    with shmring.RingWriter.create(run.name, run.shape, np.uint8) as w:
        w.wait_for_readers(1, timeout=WAIT)  # the sender bridge
        produce(conn, run, lambda frame, _: w.write(frame, WAIT))


def bridge_end(conn: Connection, run: Run, end: str) -> None:
    import shmring

    ep = f"tcp/127.0.0.1:{run.port}"
    bridge: Any = (
        shmring.BridgeSender(run.name, listen=[ep])
        if end == "send"
        else shmring.BridgeReceiver(run.name, local=f"{run.name}-far", connect=[ep], wait_readers=1)
    )
    with bridge:
        conn.send("ready")
        conn.poll(WAIT)


def bridge_reader(conn: Connection, run: Run) -> None:
    import shmring

    tally = Tally(run)
    conn.send("ready")  # the far ring appears with the first frame, held until we attach
    with shmring.RingReader.attach(f"{run.name}-far", timeout=WAIT, start="oldest") as r:
        for frame in r:
            if tally.take(frame.array):
                break
    conn.send(tally.report())


# ---- raw zenoh-python ----------------------------------------------------------------------


def zenoh_session(run: Run, role: str) -> Any:
    """A session configured as the bridge's end of the same role (the same Zenoh settings:
    the bridge's ceiling)."""
    import zenoh

    from shmring._bridge import zenoh_config

    ep = [f"tcp/127.0.0.1:{run.port}"]
    if role == "pub":
        return zenoh.open(zenoh_config(listen=ep, lossless_sender=True))
    return zenoh.open(zenoh_config(connect=ep))


def zenoh_producer(conn: Connection, run: Run) -> None:
    import zenoh

    with zenoh_session(run, "pub") as session:
        pub = session.declare_publisher(run.name, congestion_control=zenoh.CongestionControl.BLOCK)
        while not pub.matching_status.matching:
            time.sleep(0.01)  # polls Zenoh's route table; bounded by the consumer's WAIT
        produce(conn, run, lambda frame, _: pub.put(frame.tobytes()))


def zenoh_consumer(conn: Connection, run: Run) -> None:
    tally = Tally(run)
    done = mp.get_context("spawn").Event()

    def on_sample(sample: Any) -> None:
        if tally.take(sample.payload.to_bytes()):
            done.set()

    with zenoh_session(run, "sub") as session:
        session.declare_subscriber(run.name, on_sample)
        conn.send("ready")
        assert done.wait(WAIT), "raw zenoh: frames missing"
    conn.send(tally.report())


# ---- pyzmq and imagezmq ------------------------------------------------------------------


def zmq_producer(conn: Connection, run: Run) -> None:
    import zmq

    trackers: dict[int, Any] = {}

    def reuse(slot: int) -> None:  # zero-copy: a frame is in use until ZeroMQ wrote it
        if slot in trackers:
            trackers[slot].wait(WAIT)

    def send(frame: np.ndarray, slot: int) -> None:
        trackers[slot] = sock.send(frame.data, 0, copy=False, track=True)

    with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as sock:
        sock.connect(f"tcp://127.0.0.1:{run.port}")
        produce(conn, run, send, pool=16, reuse=reuse)


def zmq_consumer(conn: Connection, run: Run) -> None:
    import zmq

    tally = Tally(run)
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as sock:
        sock.bind(f"tcp://127.0.0.1:{run.port}")
        conn.send("ready")
        while not tally.take(sock.recv(copy=False).buffer):
            pass
    conn.send(tally.report())


def imagezmq_producer(conn: Connection, run: Run) -> None:
    import imagezmq

    sender = imagezmq.ImageSender(connect_to=f"tcp://127.0.0.1:{run.port}")
    try:
        produce(conn, run, lambda frame, _: sender.send_image("bench", frame))
    finally:
        sender.close()


def imagezmq_consumer(conn: Connection, run: Run) -> None:
    import imagezmq

    tally = Tally(run)
    hub = imagezmq.ImageHub(open_port=f"tcp://127.0.0.1:{run.port}")
    conn.send("ready")
    try:
        while True:
            _, image = hub.recv_image()
            hub.send_reply(b"OK")
            if tally.take(image):
                break
    finally:
        hub.close()
    conn.send(tally.report())


# ---- running cells -------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    target: Callable[..., None]
    side: str  # "send" or "recv": whose CPU it counts as
    extra: tuple[Any, ...] = ()


TRANSPORTS: dict[str, list[Role]] = {
    "shmring bridge": [
        Role(bridge_end, "recv", ("recv",)),
        Role(bridge_end, "send", ("send",)),
        Role(bridge_writer, "send"),
        Role(bridge_reader, "recv"),
    ],
    "raw zenoh put→sub": [Role(zenoh_consumer, "recv"), Role(zenoh_producer, "send")],
    "pyzmq PUSH/PULL tcp": [Role(zmq_consumer, "recv"), Role(zmq_producer, "send")],
    "imagezmq (REQ/REP)": [Role(imagezmq_consumer, "recv"), Role(imagezmq_producer, "send")],
}
NEEDS = {  # the module each transport imports: a peer not installed is skipped, not run
    "shmring bridge": "zenoh",
    "raw zenoh put→sub": "zenoh",
    "pyzmq PUSH/PULL tcp": "zmq",
    "imagezmq (REQ/REP)": "imagezmq",
}
PRODUCERS = (bridge_writer, zenoh_producer, zmq_producer, imagezmq_producer)
CONSUMERS = (bridge_reader, zenoh_consumer, zmq_consumer, imagezmq_consumer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


@contextlib.contextmanager
def started(roles: list[Role], run: Run) -> Iterator[list[tuple[Role, Any, Connection]]]:
    ctx = mp.get_context("spawn")
    procs: list[tuple[Role, Any, Connection]] = []
    try:
        for role in roles:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=role.target, args=(theirs, run, *role.extra), daemon=True)
            proc.start()
            procs.append((role, proc, mine))
        yield procs
    finally:
        for _, _, conn in procs:
            with contextlib.suppress(OSError):
                conn.send("stop")
        for _, proc, _ in procs:
            proc.join(5)
            if proc.exitcode is None:
                proc.kill()
                proc.join(5)


def message(conn: Connection) -> Any:
    if not conn.poll(WAIT):
        raise TimeoutError(f"no message in {WAIT} s")
    return conn.recv()


def run_cell(transport: str, run: Run) -> dict[str, float]:
    roles = TRANSPORTS[transport]
    with started(roles, run) as procs:
        by_target = {role.target: conn for role, _, conn in procs}
        producer = next(by_target[t] for t in PRODUCERS if t in by_target)
        consumer = next(by_target[t] for t in CONSUMERS if t in by_target)
        for role, _, conn in procs:
            if role.target not in PRODUCERS:
                assert message(conn) == "ready"
        assert message(producer) == "ready"
        before = {proc.pid: cpu_seconds(proc.pid) for _, proc, _ in procs}
        start = time.monotonic()
        producer.send("go")
        result: dict[str, float] = message(consumer)
        wall = time.monotonic() - start
        for side in ("send", "recv"):
            result[f"cpu_{side}"] = (
                sum(
                    cpu_seconds(proc.pid) - before[proc.pid]
                    for role, proc, _ in procs
                    if role.side == side
                )
                / wall
            )
    return result


def counts(shape: tuple[int, ...], seconds: float) -> int:
    """Frames for about `seconds` of flat-out streaming at ~1 GB/s, within [200, 20000]."""
    return max(200, min(20000, int(seconds * 1e9 / int(np.prod(shape)))))


def table(results: dict[tuple[str, str], dict[str, float]]) -> list[str]:
    lines = [
        "| size | transport | frames/s | MB/s | latency p50 / p99 µs | CPU send / recv side |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for size, shape in SIZES.items():
        for transport in TRANSPORTS:
            r = results.get((size, transport))
            if r is None:
                continue
            mb = r["fps"] * int(np.prod(shape)) / 1e6
            lines.append(
                f"| {size} | {transport} | {r['fps']:,.0f} | {mb:,.0f} | "
                f"{r['p50']:,.0f} / {r['p99']:,.0f} | {r['cpu_send']:.2f} / {r['cpu_recv']:.2f} |"
            )
    lines += [
        "",
        "| size | bridge ÷ raw zenoh frames/s | ÷ pyzmq | ÷ imagezmq | latency p50 ÷ raw zenoh |",
        "|---|---:|---:|---:|---:|",
    ]
    peers = [("raw zenoh put→sub", "fps"), ("pyzmq PUSH/PULL tcp", "fps")]
    peers += [("imagezmq (REQ/REP)", "fps"), ("raw zenoh put→sub", "p50")]
    for size in SIZES:
        if (size, "shmring bridge") in results:
            cells = [ratio(results, size, peer, key) for peer, key in peers]
            lines.append(f"| {size} | {' | '.join(cells)} |")
    return lines


def ratio(results: dict[tuple[str, str], dict[str, float]], size: str, peer: str, key: str) -> str:
    bridge, other = results.get((size, "shmring bridge")), results.get((size, peer))
    return f"{bridge[key] / other[key]:.2f}×" if bridge and other else "-"


def per_copy_us(step: Callable[[], object], count: int) -> float:
    """Median over COPY_REPEATS loops of `count` calls of `step`: µs per call."""
    times = []
    for _ in range(COPY_REPEATS):
        start = time.perf_counter()
        for _ in range(count):
            step()
        times.append((time.perf_counter() - start) / count * 1e6)
    return sorted(times)[COPY_REPEATS // 2]


def binding_copies(sizes: list[str]) -> list[str]:
    """A table of what each copy of a frame costs in this process, per size."""
    import zenoh

    lines = [
        "| size | one copy (NumPy) µs | sender: `ZBytes(bytearray)` µs | "
        "receiver: `to_bytes()` µs | a binding copy ÷ one copy (mean of the two) |",
        "|---|---:|---:|---:|---:|",
    ]
    for size in sizes:
        nbytes = int(np.prod(SIZES[size]))
        source = np.random.default_rng(0).integers(0, 256, nbytes, np.uint8)
        target = np.empty_like(source)
        sample = bytearray(source.tobytes())
        payload = zenoh.ZBytes(sample)
        count = max(20, int(COPY_BYTES / nbytes))
        one = per_copy_us(partial(np.copyto, target, source), count)
        into = per_copy_us(partial(zenoh.ZBytes, sample), count)
        out = per_copy_us(payload.to_bytes, count)
        lines.append(
            f"| {size} | {one:,.1f} | {into:,.1f} | {out:,.1f} | {(into + out) / (2 * one):.2f}× |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bridge", description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.5, help="flat-out time per cell")
    parser.add_argument(
        "--transports", nargs="*", choices=list(TRANSPORTS), default=list(TRANSPORTS)
    )
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES), default=list(SIZES))
    parser.add_argument(
        "--copies", action="store_true", help="measure what each copy of a frame costs instead"
    )
    args = parser.parse_args(argv)
    info = machine_info()
    print(f"# bench.bridge {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# {info['cpu']}, {info['cpus']} CPUs, Python {info['python']}", end=", ")
    print(f"commit {info['git_commit']}, zenoh {metadata.version('eclipse-zenoh')}")
    if args.copies:
        print("\n".join(binding_copies(args.sizes)))
        return 0
    results: dict[tuple[str, str], dict[str, float]] = {}
    transports = []
    for transport in args.transports:
        if find_spec(NEEDS[transport]) is None:
            print(f"# {transport}: skipped, {NEEDS[transport]} is not installed (the bench extra)")
        else:
            transports.append(transport)
    for size in args.sizes:
        shape = SIZES[size]
        for transport in transports:
            tag = f"bb{os.getpid()}_{len(results)}"
            flat = Run(shape, counts(shape, args.seconds), 0.0, free_port(), tag)
            paced = Run(shape, LATENCY_FRAMES, PACE_S[size], free_port(), tag + "p")
            result = run_cell(transport, flat)
            latency = run_cell(transport, paced)
            result.update(p50=latency["p50"], p99=latency["p99"])
            results[(size, transport)] = result
            print(f"# {size} {transport}: {result['fps']:,.0f} frames/s", flush=True)
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
