# Soak: stream for a long time with readers joining and leaving, and prove that nothing
# grows: `python -m stress.soak [--minutes 10]` (`make soak`).
#
# One ring streams for the whole run. Its writer (the creator) publishes paced frames by
# write and by claim, full-size and smaller, with and without metadata; a steady reader
# checks every one (no loss, no tearing, nothing twice or out of order), and so does an
# asyncio reader (`async for`), which every CANCEL_EVERY frames also starts a read and
# cancels it while it waits (by asyncio.wait_for's timeout, or task.cancel()) and goes on: a
# cancelled read must take nothing, and one that got its frame first is checked as well. A
# Zenoh bridge pair on 127.0.0.1 carries the stream on: a sender (BridgeSender, a reader of
# its own group on the ring) and a receiver (BridgeReceiver, which writes a ring of another
# name), whose far reader checks every frame as the steady reader does, and besides what the
# bridge must preserve: each frame's shape, metadata and timestamp. The ring is lossless
# (block policy), so the bridge may publish no gap. Meanwhile:
#   - a churn process attaches and closes readers in a loop (alone and in groups, from the
#     oldest or the latest frame), now and then a writer, and now and then creates and
#     removes a side ring;
#   - short-lived reader processes join and leave: most close, some exit without closing,
#     some are SIGKILLed; each must exit with status 0, or die of the SIGKILL it was sent.
#
# Every sample (a baseline right after start-up, then once a minute by default, and one at
# the end: at least two) each long-lived process (writer, steady, asyncio and far readers,
# churn, both bridges, and this one) reports its RSS and open file descriptors, taken at a
# quiet moment (the churn between iterations; the readers between two frames; after a
# garbage collection), and the run counts its entries in /dev/shm. The run fails (exit 1)
# if, from the baseline to the last sample, a file descriptor count or the /dev/shm count
# grew at all (the churn's side ring aside: it comes and goes within a round, and may exist
# at a sample), an RSS grew by more than RSS_SLACK (from the sample after the baseline, if
# there are three or more: the baseline precedes the warm-up), the stream broke on either
# side of the bridge, a process reported a violation (the churn's last ones come with its
# final report) or exited otherwise, or a ring or a Zenoh file was left in /dev/shm at the
# end.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import Any

import numpy as np

from shmring import (
    BridgeReceiver,
    BridgeSender,
    EndOfStream,
    Frame,
    RingReader,
    RingTimeout,
    RingWriter,
)

from . import (
    SHM_DIR,
    STEADY,
    StreamCheck,
    check_next,
    forkserver,
    make_tag,
    open_fds,
    ring_name,
    rss_kib,
    segment_path,
    shm_entries,
    split_tag,
    stamp,
    verify,
)

SHAPE = (8192,)  # uint64 words: 64 KiB frames
DTYPE = np.uint64
SLOTS = 16
RATE = 1000  # frames per second from the writer
STALL = 10.0  # no bounded wait may come close to this
CHURN = 2  # writer id of the churn process's frames
JOIN_EVERY = 0.5  # seconds between short-lived readers
RSS_SLACK_KIB = 8 * 1024  # allowed RSS growth, or 10% if that is more
CANCEL_EVERY = 200  # frames between the asyncio reader's cancelled reads
# Seconds: asyncio.wait_for's timeout on such a read. The loop waits whole milliseconds, the
# frame period, so the frame often comes first there ("raced"); task.cancel() does not wait.
CANCEL_AFTER = 0.2e-3
# The long-lived processes: the ring's writer, its steady and asyncio readers, the churn,
# the bridge's sender and receiver, and the reader of the received ring ("far").
LIVE = ("writer", "reader", "async", "churn", "send", "recv", "far")
ROLES = (*LIVE, "soak")  # the processes measured


# ---- the long-lived processes -----------------------------------------------------------------
def sample(**extra: Any) -> dict[str, Any]:
    """This process's footprint at a quiet moment (threads: shown, not judged)."""
    gc.collect()
    threads = len(os.listdir("/proc/self/task"))
    return {"rss_kib": rss_kib(), "fds": open_fds(), "threads": threads, **extra}


class Serve:
    """The orchestrator's requests ("measure", "stop") between a process's own steps."""

    def __init__(self, conn: Connection, measure: Callable[[], dict[str, Any]]) -> None:
        self.conn = conn
        self.measure = measure

    def running(self) -> bool:
        while self.conn.poll():
            if self.conn.recv() == "stop":
                return False
            self.conn.send(("sample", self.measure()))
        return True

    def fail(self, what: str) -> None:
        self.conn.send(("violation", f"{what}:\n{traceback.format_exc()}"))


def writer(conn: Connection, name: str, rate: float) -> None:
    ring = RingWriter.create(name, SHAPE, DTYPE, slots=SLOTS, max_readers=16, meta_size=16)
    conn.send(("created",))
    if conn.recv() != "go":  # the steady reader is attached: it must get every frame
        raise RuntimeError("expected go")
    written = 0
    serve = Serve(conn, lambda: sample(written=written))
    frame = np.empty(SHAPE, DTYPE)
    started = time.monotonic()
    try:
        while serve.running():
            tag = make_tag(STEADY, written)
            size, meta, by_claim = steady_form(written)
            if by_claim:
                with ring.claim(STALL, meta=meta) as slot:
                    stamp(slot, tag)
            else:
                stamp(frame[:size], tag)
                ring.write(frame[:size], STALL, meta=meta)
            written += 1
            ahead = started + written / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    except Exception:
        serve.fail("writer")
        serve.running()
    ring.close()
    conn.send(("done", {"written": written}))


def steady_form(counter: int) -> tuple[int, bytes, bool]:
    """How the writer publishes its frame `counter`: its length in words, its metadata, and
    whether by claim (full-size) rather than by write."""
    meta = counter.to_bytes(8, "little") if counter % 5 == 0 else b""
    if counter % 4 == 1:
        return SHAPE[0], meta, True
    return (SHAPE[0] // 2 if counter % 4 == 3 else SHAPE[0]), meta, False


@dataclass
class BridgedCheck(StreamCheck):
    """StreamCheck, and what the bridge carries besides the words: each frame's shape, dtype
    and metadata as its writer made them (steady_form; the churn's are full-size, without
    metadata) and its timestamp: the source ring's, on this host's clock, so in order for
    each writer and not later than now."""

    stamps: dict[int, int] = field(default_factory=dict)  # writer id -> last timestamp_ns

    def take(self, frame: Frame) -> None:
        super().take(frame)
        array = frame.array
        writer, counter = split_tag(int(array.reshape(-1)[0])) if array.size else (-1, -1)
        words, meta = steady_form(counter)[:2] if writer == STEADY else (SHAPE[0], b"")
        if array.shape != (words,) or array.dtype != DTYPE or frame.meta != meta:
            self.fail(
                f"frame seq {frame.seq} (writer {writer}, frame {counter}): {array.shape} "
                f"{array.dtype}, meta {frame.meta!r}; expected ({words},) "
                f"{np.dtype(DTYPE)}, {meta!r}"
            )
        last = self.stamps.get(writer, 0)
        if not last <= frame.timestamp_ns <= time.monotonic_ns():
            self.fail(
                f"frame seq {frame.seq} (writer {writer}, frame {counter}): timestamp "
                f"{frame.timestamp_ns} after {last}, now {time.monotonic_ns()}"
            )
        self.stamps[writer] = frame.timestamp_ns


def steady_reader(conn: Connection, name: str, bridged: bool = False) -> None:
    """Checks every frame of ring `name`: the soak's ring, or (`bridged`) the received one."""
    reader = RingReader.attach(name, start="oldest", timeout=STALL)
    conn.send(("attached",))
    check = BridgedCheck(lossless=True) if bridged else StreamCheck(lossless=True)
    serve = Serve(conn, lambda: sample(frames=check.frames))
    try:
        while serve.running() and check_next(reader, check, STALL):
            pass
    except Exception:
        serve.fail("far reader" if bridged else "steady reader")
    report_end(conn, reader, check)


def report_end(conn: Connection, reader: RingReader, check: StreamCheck, **extra: int) -> None:
    """A checking reader at the end of the stream: close, judge the skips, report."""
    reader.close()
    if check.excess:  # nobody publishes a gap here: each number passed over counts one
        check.fail(f"dropped {check.excess} frames beyond the numbers passed over")
    conn.send(("done", {**check.to_json(), **extra}))


def async_reader(conn: Connection, name: str) -> None:
    asyncio.run(read_async(conn, name))


async def read_async(conn: Connection, name: str) -> None:
    """The steady reader's checks, on `async for`; every CANCEL_EVERY frames a read that is
    cancelled while it waits ("cancelled": it must take nothing) or, if its frame came first,
    is checked ("raced")."""
    reader = await RingReader.aattach(name, start="oldest", timeout=STALL)
    conn.send(("attached",))
    check = StreamCheck(lossless=True)
    cuts = {"cancelled": 0, "raced": 0, "by_timeout": 0}  # by_timeout: of those cancelled
    serve = Serve(conn, lambda: sample(frames=check.frames, **cuts))
    try:
        await check_async(reader, check, serve, cuts)
    except Exception:
        serve.fail("async reader")
    report_end(conn, reader, check, **cuts)


async def check_async(
    reader: RingReader, check: StreamCheck, serve: Serve, cuts: dict[str, int]
) -> None:
    """Until the end of the stream (or "stop"). No frame outlives the call (see check_next)."""
    steps = 0
    try:
        async for frame in reader:
            check.take(frame)
            steps += 1
            if steps % CANCEL_EVERY == 0:
                by_timeout = steps // CANCEL_EVERY % 2 == 1
                got = await cancelled_read(reader, by_timeout)
                if got is None:
                    cuts["cancelled"] += 1
                    cuts["by_timeout"] += by_timeout
                else:
                    cuts["raced"] += 1
                    with got:
                        check.take(got)
            if not serve.running():
                break
    except EndOfStream:  # in a cancelled read: `async for` itself just ends
        pass


async def cancelled_read(reader: RingReader, by_timeout: bool) -> Frame | None:
    """A read cancelled while it waits (None), by asyncio.wait_for's timeout or by
    task.cancel() once it started; or the frame it took before the cancellation landed."""
    if by_timeout:
        try:
            return await asyncio.wait_for(reader.aread(STALL), CANCEL_AFTER)
        except TimeoutError as exc:
            if isinstance(exc, RingTimeout):  # the read's own timeout: a stall
                raise
            return None
    task = asyncio.create_task(reader.aread(STALL))
    await asyncio.sleep(0)  # the read starts: it takes a frame published already, or waits
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
        return None


def bridge_sender(conn: Connection, name: str, endpoint: str) -> None:
    """Bridges ring `name` (a reader of its own group) to Zenoh, listening on `endpoint`."""
    with BridgeSender(name, listen=[endpoint]) as bridge:
        conn.send(("listening",))
        deadline = time.monotonic() + STALL
        # "sending": attached to the ring (at its next frame), and the receiver is there.
        while bridge.stats().state != "sending":
            if bridge.wait(0.01) or time.monotonic() > deadline:
                raise RuntimeError(f"bridge sender: {bridge.stats().state!r} after {STALL} s")
        conn.send(("attached",))
        stats = serve_bridge(conn, bridge, "bridge sender")
    conn.send(("done", stats))


def bridge_receiver(conn: Connection, name: str, local: str, endpoint: str) -> None:
    """Writes what the sender of ring `name` sends into ring `local` (created on the first
    frame, held until the far reader attached), connecting to `endpoint`."""
    with BridgeReceiver(name, local=local, connect=[endpoint], wait_readers=1) as bridge:
        conn.send(("listening",))
        stats = serve_bridge(conn, bridge, "bridge receiver")
    conn.send(("done", stats))  # sent once closed: the received ring is removed by then


def serve_bridge(conn: Connection, bridge: BridgeSender | BridgeReceiver, what: str) -> Any:
    """Answer samples until "stop"; a bridge that stops by itself is a violation. Its last
    counters (BridgeStats)."""
    serve = Serve(conn, lambda: sample(**asdict(bridge.stats())))
    stopped = False
    while serve.running():
        if stopped:
            time.sleep(0.05)
            continue
        try:
            if bridge.wait(0.05):
                raise RuntimeError(f"{what} stopped by itself: {bridge.stats().state!r}")
        except Exception:
            stopped = True
            serve.fail(what)
    return asdict(bridge.stats())


def churn(conn: Connection, name: str, side_tag: str, seed: int) -> None:
    """Readers (and now and then a writer, or a side ring) come and go in one process."""
    rng = random.Random(seed)
    rounds = written = 0
    serve = Serve(conn, lambda: sample(rounds=rounds))
    frame = np.empty(SHAPE, DTYPE)
    try:
        while serve.running():
            rounds += 1
            group = rng.choice([None, None, "a", "b"])
            start = rng.choice(["latest", "oldest"])
            with RingReader.attach(name, group=group, start=start) as reader:
                for _ in range(rng.randint(1, 30)):
                    with reader.read(STALL) as got:
                        verify(got.array)
            if rounds % 25 == 0:
                with RingWriter.attach(name) as extra:
                    for _ in range(2):
                        stamp(frame, make_tag(CHURN, written))
                        extra.write(frame, STALL)
                        written += 1
            if rounds % 10 == 0:
                side_ring(ring_name(side_tag))
    except Exception:
        serve.fail("churn")
        while serve.running():
            time.sleep(0.1)
    conn.send(("done", {"rounds": rounds}))


def side_ring(name: str) -> None:
    with (
        RingWriter.create(name, (64,), np.uint8, slots=2) as side,
        RingReader.attach(name) as reader,
    ):
        side.write(np.ones(64, np.uint8), STALL)
        reader.read(STALL).release()


def joiner(conn: Connection, name: str, seconds: float, leave: str, group: str | None) -> None:
    """A short-lived reader: reads for `seconds`, then closes, or just exits (`leave`)."""
    try:
        reader = RingReader.attach(name, group=group)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with reader.read(0.2) as frame:
                    verify(frame.array)
            except RingTimeout:
                continue  # a group member may get no frame for a while
        if leave == "close":
            reader.close()
    except Exception:
        conn.send(("violation", f"joiner:\n{traceback.format_exc()}"))
    os._exit(0)  # "exit" leaves without closing: no finalizer, as after a crash


# ---- the orchestrator -------------------------------------------------------------------------
@dataclass
class Joiner:
    process: Any
    conn: Connection
    leave: str
    kill_at: float | None
    killed: bool = False  # SIGKILLed on purpose: -SIGKILL is then its expected end


@dataclass
class Soak:
    ctx: ForkServerContext
    seed: int
    name: str = field(default_factory=lambda: ring_name(f"sk{os.getpid()}x"))
    violations: list[str] = field(default_factory=list)
    joined: int = 0
    left: dict[str, int] = field(default_factory=lambda: {"close": 0, "exit": 0, "kill": 0})
    samples: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> its final report

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.joiners: list[Joiner] = []
        self.procs: dict[str, tuple[Any, Connection]] = {}
        self.rx = f"{self.name}rx"  # the ring the bridge's receiver writes
        self.zenoh_before = zenoh_files()

    def start(self, role: str, target: Callable[..., None], *args: object) -> Connection:
        ours, theirs = self.ctx.Pipe()
        process = self.ctx.Process(target=target, args=(theirs, *args), daemon=True)
        process.start()
        theirs.close()
        self.procs[role] = (process, ours)
        return ours

    def expect(self, role: str, kind: str) -> Any:
        conn = self.procs[role][1]
        deadline = time.monotonic() + STALL
        while conn.poll(max(0.0, deadline - time.monotonic())):
            try:
                message = conn.recv()
            except EOFError:  # it died: say so, and what went wrong before
                break
            if message[0] == kind:
                return message[1] if len(message) > 1 else None
            if message[0] == "violation":
                self.violations.append(message[1])
        raise RuntimeError(
            f"{role}: no {kind!r} within {STALL} s (exit code {self.procs[role][0].exitcode})"
            + "".join(f"\n{v}" for v in self.violations)
        )

    def run(self, minutes: float, interval: float, rate: float) -> None:
        self.start("writer", writer, self.name, rate)
        self.expect("writer", "created")
        self.start("reader", steady_reader, self.name)
        self.expect("reader", "attached")
        self.start("async", async_reader, self.name)
        self.expect("async", "attached")
        self.start_bridge()
        self.procs["writer"][1].send("go")
        self.expect("far", "attached")
        self.start("churn", churn, self.name, f"{self.name}side", self.seed)
        self.sample(1)  # the baseline: every process is up and the stream flows
        end = time.monotonic() + 60 * minutes
        next_sample = time.monotonic() + interval
        next_join = time.monotonic()
        while time.monotonic() < end and not self.violations:
            now = time.monotonic()
            if now >= next_join:
                self.join()
                next_join = now + JOIN_EVERY
            self.tend_joiners()
            if now >= next_sample:
                self.sample(len(self.samples) + 1)
                next_sample += interval
            time.sleep(0.05)
        # A last sample, unless one was just taken; always a second one after the baseline.
        if len(self.samples) < 2 or time.monotonic() >= next_sample - interval / 2:
            self.sample(len(self.samples) + 1)
        self.finish()

    def start_bridge(self) -> None:
        """The sender (listening) and the receiver (connecting), until the sender is attached
        to the ring and sees the receiver: every frame from the first on goes across. The far
        reader attaches once the first frame made the received ring (the receiver holds that
        frame until it has)."""
        endpoint = free_endpoint()
        self.start("send", bridge_sender, self.name, endpoint)
        self.expect("send", "listening")
        self.start("recv", bridge_receiver, self.name, self.rx, endpoint)
        self.expect("recv", "listening")
        self.expect("send", "attached")
        self.start("far", steady_reader, self.rx, True)

    def join(self) -> None:
        leave = self.rng.choice(["close"] * 7 + ["exit"] * 2 + ["kill"])
        seconds = self.rng.uniform(0.1, 1.5)
        ours, theirs = self.ctx.Pipe(duplex=False)
        group = self.rng.choice([None, None, "a", "b"])
        process = self.ctx.Process(
            target=joiner, args=(theirs, self.name, seconds, leave, group), daemon=True
        )
        process.start()
        theirs.close()
        kill_at = time.monotonic() + self.rng.uniform(0.05, seconds) if leave == "kill" else None
        self.joiners.append(Joiner(process, ours, leave, kill_at))
        self.joined += 1
        self.left[leave] += 1

    def tend_joiners(self) -> None:
        for j in list(self.joiners):
            if j.kill_at is not None and time.monotonic() >= j.kill_at and j.process.is_alive():
                self.kill_joiner(j)
            if j.process.exitcode is not None:
                while j.conn.poll():
                    try:
                        self.violations.append(j.conn.recv()[1])
                    except EOFError:
                        break
                j.process.join()
                j.conn.close()
                self.joiners.remove(j)
                # Killed on purpose, it may still have ended by itself just before.
                expected = (0, -signal.SIGKILL) if j.killed else (0,)
                if j.process.exitcode not in expected:
                    self.violations.append(
                        f"a short-lived reader ({j.leave}) exited with {j.process.exitcode}"
                    )

    def kill_joiner(self, j: Joiner) -> None:
        os.kill(j.process.pid, signal.SIGKILL)
        j.kill_at, j.killed = None, True

    def sample(self, number: int) -> None:
        """Measure every process at a quiet moment: no short-lived reader running (their
        pipes would count as this process's fds), the churn between two rounds."""
        self.wait_joiners_gone()
        taken: dict[str, dict[str, Any]] = {}
        for role in LIVE:
            self.procs[role][1].send("measure")
        for role in LIVE:
            taken[role] = self.expect(role, "sample")
        taken["soak"] = sample()
        ours = self.our_entries()
        side = [e for e in ours if e.startswith(f"shmring.{self.name}side")]
        rx = [e for e in ours if e == f"shmring.{self.rx}"]
        taken["shm"] = {
            "ours": len(ours) - len(side) - len(rx),
            "rx": len(rx),
            "side": len(side),
            "all": len(shm_entries()),
        }
        self.samples.append(taken)
        mib = {role: taken[role]["rss_kib"] / 1024 for role in ROLES}
        print(
            f"sample {number}: {taken['writer']['written']:,} frames, "
            f"{self.joined} readers joined; RSS MiB "
            + " ".join(f"{role} {value:.1f}" for role, value in mib.items())
            + "; fds "
            + " ".join(f"{role} {taken[role]['fds']}" for role in mib)
            + f"; /dev/shm ours {taken['shm']['ours']} + received {taken['shm']['rx']} + side "
            + f"{taken['shm']['side']} (all {taken['shm']['all']}); bridged "
            + f"{taken['far']['frames']:,}, async reads cancelled {taken['async']['cancelled']}",
            flush=True,
        )

    def wait_joiners_gone(self) -> None:
        deadline = time.monotonic() + STALL
        while self.joiners and time.monotonic() < deadline:
            self.tend_joiners()
            time.sleep(0.01)
        if self.joiners:
            self.violations.append(f"{len(self.joiners)} short-lived readers did not finish")

    def our_entries(self) -> list[str]:
        """Our rings (all named after this process) and our creators' temp files."""
        pids = {str(process.pid) for process, _ in self.procs.values()}
        return [
            e
            for e in shm_entries()
            if e.startswith(f"shmring.sk{os.getpid()}x")
            or (e.startswith(".shmring-tmp-") and e.split("-")[2] in pids)
        ]

    def finish(self) -> None:
        """Joiners go, then the churn (it reads, so before the stream ends), then the writer:
        the steady and asyncio readers drain to the end of the stream, and so does the far
        reader once the sender saw the end and sent it across. Then the bridges."""
        for j in self.joiners:
            if j.process.is_alive():
                self.kill_joiner(j)
        self.wait_joiners_gone()
        self.procs["churn"][1].send("stop")
        self.done["churn"] = self.expect("churn", "done")  # with what it reported last
        self.procs["writer"][1].send("stop")
        self.written = self.expect("writer", "done")["written"]
        for role in ("reader", "async", "far"):
            self.done[role] = self.expect(role, "done")
        for role in ("send", "recv"):
            self.procs[role][1].send("stop")
            self.done[role] = self.expect(role, "done")
        for role, (process, _) in self.procs.items():
            process.join(STALL)
            if process.exitcode is None:
                process.kill()
                process.join(STALL)
                self.violations.append(f"{role} did not exit within {STALL} s: killed")
            elif process.exitcode != 0:
                self.violations.append(f"{role} exited with {process.exitcode}")

    def close(self) -> None:
        """However the run ended (an exception cuts it short): kill what still runs, and
        remove what it left in /dev/shm, as a violation."""
        for j in self.joiners:
            j.process.kill()
            j.process.join(STALL)
        for process, _ in self.procs.values():
            if process.exitcode is None:
                process.kill()
                process.join(STALL)
        left = sorted(self.our_entries())
        if left:
            self.violations.append(f"left in {SHM_DIR} (removed now): {left}")
        for entry in left:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, entry))

    def verdict(self) -> list[str]:
        """Everything that grew or broke (empty: flat and whole)."""
        problems = list(self.violations)
        done = self.done
        for role in ("reader", "async", "far"):
            problems += [f"{role}: stream: {v}" for v in done[role].get("violations", [])]
            if done[role].get("steady") != self.written:
                problems.append(
                    f"{role}: {self.written} frames written, {done[role].get('steady')} read"
                )
        # Every frame of the ring (the churn's too) reached the far reader, and no gap.
        frames = done["reader"]["frames"]
        got = {"async": done["async"]["frames"]}
        got |= {"far": done["far"]["frames"], "send": done["send"]["frames"]}
        got |= {"recv": done["recv"]["frames"]}
        problems += [
            f"{r}: {n:,} frames, the ring had {frames:,}" for r, n in got.items() if n != frames
        ]
        lost = {"far": done["far"]["dropped"]} | {
            f"{r} {k}": done[r][k]
            for r, keys in (("send", ["dropped"]), ("recv", ["dropped", "malformed", "rejected"]))
            for k in keys
        }
        problems += [f"{what}: {n}" for what, n in lost.items() if n]
        tries = done["async"]["cancelled"] + done["async"]["raced"]
        if tries >= 10 and not done["async"]["cancelled"]:
            problems.append(f"async: none of {tries} reads was cancelled while it waited")
        first, last = self.samples[0], self.samples[-1]
        # RSS from the first sample past the baseline, when there is one before the last: the
        # baseline, taken right after start-up, lacks the warm-up (the allocator's and
        # Zenoh's first pools, a few MiB in the first seconds), which is no leak.
        settled = self.samples[1] if len(self.samples) > 2 else first
        for role in ROLES:
            if last[role]["fds"] > first[role]["fds"]:
                problems.append(f"{role}: fds grew {first[role]['fds']} -> {last[role]['fds']}")
            grown = last[role]["rss_kib"] - settled[role]["rss_kib"]
            if grown > max(RSS_SLACK_KIB, settled[role]["rss_kib"] // 10):
                problems.append(f"{role}: RSS grew by {grown / 1024:.1f} MiB")
        if any(s["shm"]["ours"] != 1 for s in self.samples):
            problems.append(f"/dev/shm entries of ours: {[s['shm']['ours'] for s in self.samples]}")
        # The churn makes and removes a side ring within one round, and it goes on with its
        # rounds while the others are measured: one may exist at a sample, never two.
        if any(s["shm"]["side"] > 1 for s in self.samples):
            problems.append(f"side rings left: {[s['shm']['side'] for s in self.samples]}")
        if any(s["shm"]["rx"] != 1 for s in self.samples):
            problems.append(f"received rings: {[s['shm']['rx'] for s in self.samples]}")
        if os.path.lexists(segment_path(self.name)):
            problems.append("the ring outlived its creator")
        if os.path.lexists(segment_path(self.rx)):
            problems.append("the received ring outlived the receiver")
        if zenoh_files() - self.zenoh_before:
            problems.append(f"Zenoh left {sorted(zenoh_files() - self.zenoh_before)}")
        return problems


def free_endpoint() -> str:
    """A TCP endpoint on 127.0.0.1 with a port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp/127.0.0.1:{s.getsockname()[1]}"


def zenoh_files() -> set[str]:
    """Zenoh's shared-memory files (its transport is off in bridges: there must be none)."""
    return {e for e in os.listdir(SHM_DIR) if e.endswith(".zenoh")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--rate", type=float, default=RATE, help="frames per second")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    soak = Soak(forkserver("stress.soak"), args.seed)
    started = time.monotonic()
    try:
        soak.run(args.minutes, args.interval, args.rate)
    finally:
        soak.close()
    problems = soak.verdict()
    a = soak.done["async"]
    print(
        f"soak: {time.monotonic() - started:.0f} s, {soak.written:,} frames streamed and checked,"
        f" {soak.joined} short-lived readers (left by close {soak.left['close']}, exit "
        f"{soak.left['exit']}, SIGKILL {soak.left['kill']}), "
        f"{soak.samples[-1]['churn']['rounds']:,} churn rounds; {soak.done['far']['frames']:,} "
        f"frames bridged; async reads cancelled while waiting {a['cancelled']} ("
        f"{a['by_timeout']} by wait_for's timeout), got their frame first {a['raced']}"
    )
    first, last = soak.samples[0], soak.samples[-1]
    print(f"first -> last of {len(soak.samples)} samples:")
    for role in ROLES:
        f, la = first[role], last[role]
        print(
            f"  {role:6} RSS {f['rss_kib'] / 1024:6.1f} -> {la['rss_kib'] / 1024:6.1f} MiB "
            f"({(la['rss_kib'] - f['rss_kib']) / 1024:+.1f}), fds {f['fds']} -> {la['fds']}, "
            f"threads {f['threads']} -> {la['threads']}"
        )
    if problems:
        print("GREW OR BROKE:\n" + "\n".join(f"  - {p}" for p in problems))
        return 1
    print("flat: RSS, open fds and /dev/shm entries did not grow; the stream stayed whole")
    return 0


if __name__ == "__main__":
    from stress.soak import main as package_main  # see stress.forkserver

    sys.exit(package_main())
