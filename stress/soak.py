# Soak: stream for a long time with readers joining and leaving, and prove that nothing
# grows: `python -m stress.soak [--minutes 10]` (`make soak`).
#
# One ring streams for the whole run. Its writer (the creator) publishes paced frames by
# write and by claim, full-size and smaller, with and without metadata; a steady reader
# checks every one (no loss, no tearing, nothing twice or out of order). Meanwhile:
#   - a churn process attaches and closes readers in a loop (alone and in groups, from the
#     oldest or the latest frame), now and then a writer, and now and then creates and
#     removes a side ring;
#   - short-lived reader processes join and leave: most close, some exit without closing,
#     some are SIGKILLed.
#
# Every sample (once a minute by default) each long-lived process reports its RSS and open
# file descriptors, taken at a quiet moment (the churn between iterations, after a garbage
# collection), and the run counts its entries in /dev/shm. The run fails (exit 1) if, from
# the first sample to the last, a file descriptor count or the /dev/shm count grew at all
# (the churn's side ring aside: it comes and goes within a round, and may exist at a sample),
# an RSS grew by more than RSS_SLACK, or the stream broke.

from __future__ import annotations

import argparse
import gc
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import Any

import numpy as np

from shmring import RingReader, RingTimeout, RingWriter

from . import (
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
ROLES = ("writer", "reader", "churn", "soak")  # the processes measured


# ---- the long-lived processes -----------------------------------------------------------------
def sample(**extra: Any) -> dict[str, Any]:
    """This process's footprint at a quiet moment."""
    gc.collect()
    return {"rss_kib": rss_kib(), "fds": open_fds(), **extra}


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
            meta = written.to_bytes(8, "little") if written % 5 == 0 else b""
            if written % 4 == 1:
                with ring.claim(STALL, meta=meta) as slot:
                    stamp(slot, tag)
            else:
                size = SHAPE[0] // 2 if written % 4 == 3 else SHAPE[0]
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


def steady_reader(conn: Connection, name: str) -> None:
    reader = RingReader.attach(name, start="oldest", timeout=STALL)
    conn.send(("attached",))
    check = StreamCheck(lossless=True)
    serve = Serve(conn, lambda: sample(frames=check.frames))
    try:
        while serve.running() and check_next(reader, check, STALL):
            pass
    except Exception:
        serve.fail("steady reader")
    reader.close()
    if check.excess:  # nobody publishes a gap here: each number passed over counts one
        check.fail(f"dropped {check.excess} frames beyond the numbers passed over")
    conn.send(("done", check.to_json()))


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
    kill_at: float | None


@dataclass
class Soak:
    ctx: ForkServerContext
    seed: int
    name: str = field(default_factory=lambda: ring_name(f"sk{os.getpid()}x"))
    violations: list[str] = field(default_factory=list)
    joined: int = 0
    left: dict[str, int] = field(default_factory=lambda: {"close": 0, "exit": 0, "kill": 0})
    samples: list[dict[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.joiners: list[Joiner] = []
        self.procs: dict[str, tuple[Any, Connection]] = {}

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
            message = conn.recv()
            if message[0] == kind:
                return message[1] if len(message) > 1 else None
            if message[0] == "violation":
                self.violations.append(message[1])
        raise RuntimeError(f"{role}: no {kind!r} within {STALL} s")

    def run(self, minutes: float, interval: float, rate: float) -> None:
        self.start("writer", writer, self.name, rate)
        self.expect("writer", "created")
        self.start("reader", steady_reader, self.name)
        self.expect("reader", "attached")
        self.procs["writer"][1].send("go")
        self.start("churn", churn, self.name, f"{self.name}side", self.seed)
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
        if not self.samples or time.monotonic() >= next_sample - interval / 2:
            self.sample(len(self.samples) + 1)
        self.finish()

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
        self.joiners.append(Joiner(process, ours, kill_at))
        self.joined += 1
        self.left[leave] += 1

    def tend_joiners(self) -> None:
        for j in list(self.joiners):
            if j.kill_at is not None and time.monotonic() >= j.kill_at and j.process.is_alive():
                os.kill(j.process.pid, signal.SIGKILL)
                j.kill_at = None
            if j.process.exitcode is not None:
                while j.conn.poll():
                    try:
                        self.violations.append(j.conn.recv()[1])
                    except EOFError:
                        break
                j.process.join()
                j.conn.close()
                self.joiners.remove(j)

    def sample(self, number: int) -> None:
        """Measure every process at a quiet moment: no short-lived reader running (their
        pipes would count as this process's fds), the churn between two rounds."""
        self.wait_joiners_gone()
        taken: dict[str, dict[str, Any]] = {}
        for role in ("writer", "reader", "churn"):
            self.procs[role][1].send("measure")
        for role in ("writer", "reader", "churn"):
            taken[role] = self.expect(role, "sample")
        gc.collect()
        taken["soak"] = {"rss_kib": rss_kib(), "fds": open_fds()}
        ours = self.our_entries()
        side = [e for e in ours if e.startswith(f"shmring.{self.name}side")]
        taken["shm"] = {"ours": len(ours) - len(side), "side": len(side), "all": len(shm_entries())}
        self.samples.append(taken)
        mib = {role: taken[role]["rss_kib"] / 1024 for role in ROLES}
        print(
            f"sample {number}: {taken['writer']['written']:,} frames, "
            f"{self.joined} readers joined; RSS MiB "
            + " ".join(f"{role} {value:.1f}" for role, value in mib.items())
            + "; fds "
            + " ".join(f"{role} {taken[role]['fds']}" for role in mib)
            + f"; /dev/shm ours {taken['shm']['ours']} + side {taken['shm']['side']} "
            + f"(all {taken['shm']['all']})",
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
        the steady reader drains to the end of the stream."""
        for j in self.joiners:
            if j.process.is_alive():
                os.kill(j.process.pid, signal.SIGKILL)
        self.wait_joiners_gone()
        self.procs["churn"][1].send("stop")
        self.procs["churn"][0].join(STALL)
        self.procs["writer"][1].send("stop")
        self.written = self.expect("writer", "done")["written"]
        self.reader_done = self.expect("reader", "done")
        for role, (process, _) in self.procs.items():
            process.join(STALL)
            if process.exitcode != 0:
                self.violations.append(f"{role} exited with {process.exitcode}")

    def verdict(self) -> list[str]:
        """Everything that grew or broke (empty: flat and whole)."""
        problems = list(self.violations)
        problems += [f"stream: {v}" for v in self.reader_done.get("violations", [])]
        if self.reader_done.get("steady") != self.written:
            problems.append(f"{self.written} frames written, {self.reader_done.get('steady')} read")
        first, last = self.samples[0], self.samples[-1]
        for role in ROLES:
            if last[role]["fds"] > first[role]["fds"]:
                problems.append(f"{role}: fds grew {first[role]['fds']} -> {last[role]['fds']}")
            grown = last[role]["rss_kib"] - first[role]["rss_kib"]
            if grown > max(RSS_SLACK_KIB, first[role]["rss_kib"] // 10):
                problems.append(f"{role}: RSS grew by {grown / 1024:.1f} MiB")
        if any(s["shm"]["ours"] != 1 for s in self.samples):
            problems.append(f"/dev/shm entries of ours: {[s['shm']['ours'] for s in self.samples]}")
        # The churn makes and removes a side ring within one round, and it goes on with its
        # rounds while the others are measured: one may exist at a sample, never two.
        if any(s["shm"]["side"] > 1 for s in self.samples):
            problems.append(f"side rings left: {[s['shm']['side'] for s in self.samples]}")
        if os.path.lexists(segment_path(self.name)):
            problems.append("the ring outlived its creator")
        return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--rate", type=float, default=RATE, help="frames per second")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    soak = Soak(forkserver("stress.soak"), args.seed)
    started = time.monotonic()
    soak.run(args.minutes, args.interval, args.rate)
    problems = soak.verdict()
    print(
        f"soak: {time.monotonic() - started:.0f} s, {soak.written:,} frames streamed and checked,"
        f" {soak.joined} short-lived readers (left by close {soak.left['close']}, exit "
        f"{soak.left['exit']}, SIGKILL {soak.left['kill']}), "
        f"{soak.samples[-1]['churn']['rounds']:,} churn rounds"
    )
    if problems:
        print("GREW OR BROKE:\n" + "\n".join(f"  - {p}" for p in problems))
        return 1
    print("flat: RSS, open fds and /dev/shm entries did not grow; the stream stayed whole")
    return 0


if __name__ == "__main__":
    from stress.soak import main as package_main  # see stress.forkserver

    sys.exit(package_main())
