# Chaos: SIGKILL participants of one ring at random moments while a steady stream goes on:
# `python -m stress.chaos` (`make chaos`).
#
# A steady writer (the ring's creator) and a steady reader are never killed. Victims attach
# beside them, a few at a time, each in one role (inside write, inside claim, holding a
# claim, writing and publishing gaps with skip(), reading, iterating, holding a frame,
# holding several frames and releasing them out of order, in a reader group, holding the
# header lock as a writer or as a reader, attaching and closing in a loop, taking SIGINTs and
# carrying on, or creating a ring of their own of 16-128 MiB), and are SIGKILLed a random
# few milliseconds into it. The steady writer publishes a gap now and then too. Under the
# overwrite policy a reader holds several frames through its pin line, and a second writer
# makes a block ring sequenced, so kills land in the multi-writer and overwrite paths.
# --seed fixes the order of the roles, each victim's kill time and its SIGINTs (one random
# generator each, drawn in spawn order), and every violation names the seed and the victim.
#
# Invariants, checked as it runs: every wait is bounded (a stall of STALL seconds anywhere
# is a deadlock, and no steady write may take over MAX_WRITE_STALL); the steady reader gets
# no torn frame, every sequence number once and in order, each writer's frames in order and
# once, each steady frame under the number its write returned, and, under the block policy,
# every steady frame (lossless); a frame a victim holds never changes while held; a victim
# that takes a SIGINT does a frame after it (within RESUME_LIMIT, before the next signal);
# the reader's dropped count adds up: every number it passed over counts at least one, and
# what it counted beyond them (a skip of k counts k) equals what the skips made stand for (at
# most that under the overwrite policy, whose lapped readers count a skip as one; a victim
# killed inside skip() may have published its gap or not); a look from outside
# (inspect_ring) finds no problem but what a live snapshot may show (a joining reader's
# group: Chaos.joining); dead participants are reclaimed (a probe's attach finds no dead
# record and no problem left, attaching never fails for want of a record, and no reader
# but the steady one pins a buffer); a creator killed inside create leaves nothing in
# /dev/shm, and one killed after naming its ring leaves a stale ring that the next create
# reclaims; at the end the ring's name, the steady processes' file descriptors and every
# child process are gone, and whatever the run left in /dev/shm (even when it failed) is
# removed.
#
# Processes come from a forkserver (stress.forkserver), so a victim costs a fork, not an
# interpreter start. Then the kill-point sweep (stress/killpoints.py) kills a victim at
# every line of each call, deterministically.

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import random
import re
import signal
import sys
import time
import traceback
import warnings
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext
from typing import Any, Literal

import numpy as np

import shmring
from shmring import Frame, RingReader, RingTimeout, RingWriter
from shmring import _layout as L

from . import (
    SHM_DIR,
    STEADY,
    StreamCheck,
    check_next,
    forkserver,
    killpoints,
    make_tag,
    open_fds,
    ring_name,
    segment_path,
    shm_entries,
    stamp,
    untied,
    verify,
)

# uint64 words: 4 KiB frames, long enough to tear if anything could. CHAOS_FRAME_WORDS in the
# environment sets another size (read at import, so victims forked from the server see it):
# 65536 (512 KiB) takes the writers' cache-reuse paths (the reclaim at every write, the wait
# for the hot buffer, overwrite's newest-first eviction: docs/performance.md); 524288 (4 MiB,
# the most) also the streamed copies of several writers where 8 such buffers outgrow half
# the last-level cache (_writer.STREAMED_POOL_BYTES).
SHAPE = (int(os.environ.get("CHAOS_FRAME_WORDS", "512")),)
DTYPE = np.uint64
SLOTS = 8  # either policy (overwrite works with any slots >= 2)
MAX_READERS = 8
MAX_WRITERS = 6
# Overwrite: spares enough for every reader to hold its most while every writer has a buffer,
# so no reader's read and no writer's write ever meets RingFull (the sizing rule), however
# many frames live and dead victims hold; a pin a dead reader leaves is checked by inspect.
SPARE_BUFFERS = MAX_READERS * L.MAX_PINS + MAX_WRITERS
HOLD_SPAN = SLOTS // 2  # block policy: a victim's held frames span at most this many numbers
HOLD_WAIT = 1.0  # block policy: a holder that waits this long releases its oldest frame
SKIP_COUNTS = (1, 2, 3, 7, 1000, L.MAX_SKIP_COUNT)  # gaps victims publish with skip()
STEADY_SKIP_EVERY = 97  # the steady writer publishes a gap after every this many frames
STALL = 10.0  # no bounded wait may come close to this
START_LIMIT = 10.0  # a victim that has not reported ready by then is hung
KILL_WINDOW = 0.03  # victims are killed up to this long after reporting ready
# A SIGINT victim must have done a frame this soon after a SIGINT: a write may wait for
# space (block policy) while a dead participant holds the ring back (MAX_WRITE_STALL).
RESUME_LIMIT = 5.0
# A dead participant may hold the steady writer back until it is reclaimed: within a second
# (README), plus scheduling slack on a busy machine.
MAX_WRITE_STALL = 2.0
CREATE_FRAME = 16 * 1024 * 1024  # create victims make rings of 1-8 such uint8 frames
PROGRESS_EVERY = 256  # frames between the steady processes' progress reports
INSPECT_EVERY = 10  # kills between looks at the ring from outside (shmring.inspect_ring)
# How shmring/_inspect.py words a reader record that names a free group (Chaos.joining).
NAMES_FREE_GROUP = re.compile(r"reader (\d+) names group \d+, which is not active")


# ---- victims (each runs in its own forked process) -------------------------------------------
@contextmanager
def no_sigint() -> Iterator[None]:
    """Keep SIGINT from landing in the middle of a message on the pipe."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def report(conn: Connection, *message: object) -> None:
    with no_sigint():
        conn.send(message)


def await_kill() -> None:
    """Sleep until SIGKILLed (SIGINTs blocked)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    while True:
        time.sleep(60)


def writer_loop(writer: RingWriter, writer_id: int, use_claim: bool) -> None:
    frame = np.empty(SHAPE, DTYPE)
    n = 0
    while True:
        if use_claim:
            with writer.claim(STALL) as slot:
                stamp(slot, make_tag(writer_id, n))
        else:
            stamp(frame, make_tag(writer_id, n))
            writer.write(frame, STALL)
        n += 1


def reader_step(reader: RingReader) -> Callable[[], None]:
    """One frame taken and checked a call: read() and latest() in turn. latest() passes
    frames over (under overwrite its release word then says NONE, and writers may evict what
    it passed first: docs/FORMAT.md)."""
    takes = itertools.cycle((reader.read, reader.latest))

    def step() -> None:
        with next(takes)(STALL) as frame:
            verify(frame.array)

    return step


def reader_loop(reader: RingReader) -> None:
    step = reader_step(reader)
    while True:
        step()


def v_write(conn: Connection, name: str, writer_id: int) -> None:
    writer = RingWriter.attach(name)
    report(conn, "ready")
    writer_loop(writer, writer_id, use_claim=False)


def v_claim(conn: Connection, name: str, writer_id: int) -> None:
    writer = RingWriter.attach(name)
    report(conn, "ready")
    writer_loop(writer, writer_id, use_claim=True)


def v_hold_claim(conn: Connection, name: str, writer_id: int) -> None:
    writer = RingWriter.attach(name)
    with writer.claim(STALL) as slot:
        stamp(slot, make_tag(writer_id, 0))
        report(conn, "ready")
        await_kill()


def write_or_claim(writer: RingWriter, frame: np.ndarray, tag: int, claim: bool) -> None:
    """Publish a frame stamped `tag`: filled in a claimed slot, or written from `frame`."""
    if claim:
        with writer.claim(STALL) as slot:
            stamp(slot, tag)
    else:
        stamp(frame, tag)
        writer.write(frame, STALL)


def v_skip(conn: Connection, name: str, writer_id: int) -> None:
    """Write (or claim) a frame, publish a gap, and again. Each gap is announced before
    skip() and confirmed after it, so the orchestrator knows what the gaps stood for. Ready
    (the kill clock starts) after the first gap, so every victim publishes one: a slow
    first write under load would otherwise leave a short run with no victim gap at all."""
    writer = RingWriter.attach(name)
    rng = random.Random(writer_id)
    frame = np.empty(SHAPE, DTYPE)
    for n in range(1 << 30):
        write_or_claim(writer, frame, make_tag(writer_id, n), claim=bool(n % 2))
        count = rng.choice(SKIP_COUNTS)
        report(conn, "skip", count)
        writer.skip(count, STALL)
        report(conn, "skipped", count)
        if n == 0:
            report(conn, "ready")


def v_read(conn: Connection, name: str, writer_id: int) -> None:
    reader = RingReader.attach(name)
    report(conn, "ready")
    reader_loop(reader)


def v_iterate(conn: Connection, name: str, writer_id: int) -> None:
    reader = RingReader.attach(name)
    report(conn, "ready")
    for frame in reader:
        verify(frame.array)


def v_hold_frame(conn: Connection, name: str, writer_id: int) -> None:
    reader = RingReader.attach(name)
    with reader.read(STALL) as frame:
        verify(frame.array)
        report(conn, "ready")
        await_kill()


def v_hold_frames(conn: Connection, name: str, writer_id: int) -> None:
    """Hold several frames at once, then go on releasing one of them (any one: out of
    order) and reading the next, checking that no held frame changes while held. Overwrite:
    up to MAX_PINS frames, pinned through the reader's pin line. Block: two or three frames
    spanning at most HOLD_SPAN numbers (a holder's oldest frame holds the writers back), and
    one that waits HOLD_WAIT (the numbers up to a full ring were all gaps) lets its oldest go."""
    rng = random.Random(writer_id)
    block = shmring.inspect_ring(name).policy == "block"
    reader = RingReader.attach(name)
    held: list[tuple[Frame, int]] = []  # in the order read: oldest first

    def take() -> None:
        while True:
            try:
                frame = reader.read(HOLD_WAIT if block else STALL)
            except RingTimeout:
                if not block or not held:
                    raise
                held.pop(0)[0].release()
                continue
            held.append((frame, verify(frame.array)))
            return

    for _ in range(rng.randint(2, 3 if block else L.MAX_PINS)):
        take()
    report(conn, "ready", len(held))
    while True:
        for frame, tag in held:
            if verify(frame.array) != tag:
                raise AssertionError(f"held frame {frame.seq} changed from tag {tag:#x}")
        span = held[-1][0].seq - held[0][0].seq + 2  # with the next frame, at the least
        at = 0 if block and span > HOLD_SPAN else rng.randrange(len(held))
        held.pop(at)[0].release()
        take()


def v_group(conn: Connection, name: str, writer_id: int) -> None:
    reader = RingReader.attach(name, group="victims")
    report(conn, "ready")
    reader_loop(reader)


def v_lock_writer(conn: Connection, name: str, writer_id: int) -> None:
    writer = RingWriter.attach(name)
    writer._lock.acquire(STALL)  # private test hook: die holding the header lock
    report(conn, "ready")
    await_kill()


def v_lock_reader(conn: Connection, name: str, writer_id: int) -> None:
    reader = RingReader.attach(name)
    reader._lock.acquire(STALL)  # private test hook: die holding the header lock
    report(conn, "ready")
    await_kill()


def v_attach(conn: Connection, name: str, writer_id: int) -> None:
    """Attach and close in a loop: killed inside attach or close."""
    report(conn, "ready")
    while True:
        RingReader.attach(name).close()
        RingWriter.attach(name).close()


def survive_sigints(conn: Connection, step: Callable[[], None]) -> None:
    """Report ready, then run `step` (one frame) for ever, as an application that handles
    Ctrl-C and carries on would (SIGINTs come once the victim is ready). Once a step is done
    after a SIGINT, report ("resumed", frames done so far): the orchestrator sends the next
    signal only then, so each interrupt must be followed by progress.

    The handler disarms itself before raising, and the loop arms it only inside the `try`,
    so a SIGINT that lands while another is being handled, between two steps or before the
    loop starts is counted but does not raise: the next step done answers it all the same."""
    armed = False
    interrupts = 0

    def interrupt(signum: int, frame: object) -> None:
        nonlocal armed, interrupts
        interrupts += 1
        if armed:
            armed = False
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    report(conn, "ready")
    done = answered = 0
    while True:
        try:
            armed = True
            step()
            armed = False
        except KeyboardInterrupt:
            continue
        done += 1
        if answered < interrupts:
            answered = interrupts
            report(conn, "resumed", done)


def v_sigint_write(conn: Connection, name: str, writer_id: int) -> None:
    """Keep writing (write and claim in turn) through SIGINTs."""
    writer = RingWriter.attach(name)
    frame = np.empty(SHAPE, DTYPE)
    counter = iter(range(1 << 30))  # a number is never reused, written or not

    def step() -> None:
        n = next(counter)
        write_or_claim(writer, frame, make_tag(writer_id, n), claim=bool(n % 2))

    survive_sigints(conn, step)


def v_sigint_read(conn: Connection, name: str, writer_id: int) -> None:
    survive_sigints(conn, reader_step(RingReader.attach(name)))


def own_ring(name: str, writer_id: int) -> str:
    """The name of the ring a create victim makes beside the steady ring `name`."""
    return f"{name}c{writer_id}"


def v_create(conn: Connection, name: str, writer_id: int) -> None:
    """Create a ring of its own, of any size and huge_pages choice: killed inside create
    (reserving pages, moving them to huge pages, naming the ring) or just after it."""
    rng = random.Random(writer_id)
    choices: list[bool | Literal["auto"]] = [False, "auto", True]
    slots, huge_pages = rng.randint(1, 8), rng.choice(choices)
    report(conn, "ready")
    writer = RingWriter.create(
        own_ring(name, writer_id), (CREATE_FRAME,), np.uint8, slots=slots, huge_pages=huge_pages
    )
    report(conn, "created")
    await_kill()
    writer.close()  # never reached


ROLES: dict[str, Callable[[Connection, str, int], None]] = {
    "write": v_write,
    "claim": v_claim,
    "hold_claim": v_hold_claim,
    "skip": v_skip,
    "read": v_read,
    "iterate": v_iterate,
    "hold_frame": v_hold_frame,
    "hold_frames": v_hold_frames,
    "group": v_group,
    "lock_writer": v_lock_writer,
    "lock_reader": v_lock_reader,
    "attach": v_attach,
    "sigint_write": v_sigint_write,
    "sigint_read": v_sigint_read,
    "create": v_create,
}
SIGINT_ROLES = ("sigint_write", "sigint_read")


def victim(conn: Connection, name: str, role: str, writer_id: int) -> None:
    try:
        ROLES[role](conn, name, writer_id)
    except BaseException:
        report(conn, "violation", f"victim {role} failed:\n{traceback.format_exc()}")
        await_kill()


# ---- the steady pair --------------------------------------------------------------------------
def steady_writer(conn: Connection, name: str, policy: str) -> None:
    fds = open_fds()
    writer = RingWriter.create(
        name,
        SHAPE,
        DTYPE,
        slots=SLOTS,
        policy=policy,
        max_readers=MAX_READERS,
        max_writers=MAX_WRITERS,
        spare_buffers=SPARE_BUFFERS if policy == "overwrite" else None,
    )
    conn.send(("created",))
    frame = np.empty(SHAPE, DTYPE)
    written, worst, skips, skip_excess = 0, 0.0, 0, 0
    seqs = array("q")  # the sequence number each write returned, by frame counter

    def write() -> None:
        nonlocal written, worst
        stamp(frame, make_tag(STEADY, written))
        started = time.monotonic()
        seqs.append(writer.write(frame, STALL))
        worst = max(worst, time.monotonic() - started)
        written += 1

    try:
        if not conn.poll(STALL) or conn.recv() != "go":  # the steady reader is attached
            raise RuntimeError("no go from the orchestrator")
        while not conn.poll():
            if written % STEADY_SKIP_EVERY == STEADY_SKIP_EVERY - 1:  # a frame follows
                count = SKIP_COUNTS[skips % len(SKIP_COUNTS)]
                writer.skip(count, STALL)
                skips, skip_excess = skips + 1, skip_excess + count - 1
            write()
            if written % PROGRESS_EVERY == 0:
                conn.send(("progress", written, worst))
        write()  # after every victim died: a gap a victim published last is counted
    except Exception:
        conn.send(("violation", f"steady writer failed:\n{traceback.format_exc()}"))
        conn.recv()
    writer.close()
    summary = {"written": written, "worst_write_s": worst, "skips": skips, "seqs": seqs}
    conn.send(("done", {**summary, "skip_excess": skip_excess, "fds": [fds, open_fds()]}))


def steady_reader(conn: Connection, name: str, policy: str) -> None:
    fds = open_fds()
    reader = RingReader.attach(name, start="oldest", timeout=STALL)
    conn.send(("attached",))
    check = StreamCheck(lossless=policy == "block", tie=True)
    try:
        while check_next(reader, check, STALL):
            if check.frames % PROGRESS_EVERY == 0:
                conn.send(("progress", check.frames))
    except Exception:
        check.fail(f"steady reader failed:\n{traceback.format_exc()}")
    reader.close()
    done = {**check.to_json(), "fds": [fds, open_fds()], "steady_seqs": check.steady_seqs}
    conn.send(("done", done))


# ---- the orchestrator -------------------------------------------------------------------------
@dataclass
class Victim:
    id: int  # its writer id: victims are numbered in the order spawned
    role: str
    process: Any  # multiprocessing.Process from the forkserver context
    conn: Connection
    started: float
    delay: float  # its first strike comes this long after it is ready (attach: started)
    pauses: list[float]  # SIGINT roles: one SIGINT each, then this pause once it resumed
    ready: bool = False
    kill_at: float | None = None  # its next strike (SIGINT or SIGKILL)
    resume_by: float | None = None  # after a SIGINT: its "resumed" is due by then
    sigints: int = 0  # SIGINTs sent
    frames: int = 0  # frames done, as it last reported after a SIGINT
    own_ring: str | None = None  # the ring a create victim makes
    skipping: int = 0  # the count of a skip() announced and not yet confirmed

    def __str__(self) -> str:
        after = "its start" if self.role == "attach" else "ready"
        sigints = f", {len(self.pauses)} SIGINTs before its SIGKILL" if self.pauses else ""
        struck = f"struck {self.delay * 1e3:.1f} ms after {after}"
        return f"victim {self.id} ({self.role}, {struck}{sigints})"


@dataclass
class Stats:
    policy: str
    seed: int
    kills: dict[str, int] = field(default_factory=dict)  # role -> SIGKILLs
    sigints: int = 0
    violations: list[str] = field(default_factory=list)
    max_dead_records: int = 0
    creates: dict[str, int] = field(default_factory=dict)  # "inside", "named": where killed
    skips: int = 0  # victims' skip() calls that returned
    skip_excess: int = 0  # what their gaps stood for beyond their numbers: sum of count - 1
    skips_killed: int = 0  # victims killed inside skip(): published or not
    skip_excess_killed: int = 0  # what those would stand for beyond their numbers
    pins_seen: int = 0  # most frames the readers of the ring held at once (overwrite)
    held: dict[int, int] = field(default_factory=dict)  # frames a holder held -> holders
    writer: dict[str, Any] = field(default_factory=dict)
    reader: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def violation(self, what: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(f"seed {self.seed}: {what}")


class Chaos:
    def __init__(
        self, ctx: ForkServerContext, policy: str, concurrency: int, seed: int, roles: list[str]
    ) -> None:
        self.ctx = ctx
        self.role_set = roles
        self.policy = policy
        self.concurrency = concurrency
        # One generator a purpose, drawn from in spawn order (which the roles' order fixes),
        # so that message timing cannot shift one draw onto another: --seed replays them.
        self.role_rng, self.kill_rng, self.sigint_rng = (
            random.Random(f"{seed}:{purpose}") for purpose in ("roles", "kills", "sigints")
        )
        self.name = ring_name("ch")
        self.stats = Stats(policy, seed)
        self.victims: list[Victim] = []
        self.next_writer_id = STEADY + 1  # victims' writer ids count up from here
        self.roles: list[str] = []  # this round of role_set, in random order
        self.recent: list[str] = []  # the last victims killed
        self.progress_at = time.monotonic()
        self.temp_prefixes: list[str] = []
        self.steady: dict[Connection, str] = {}  # the steady pair's pipes
        self.steady_reader_pid = 0

    def start(
        self, target: Callable[..., None], *args: object, duplex: bool = True
    ) -> tuple[Any, Connection]:
        ours, theirs = self.ctx.Pipe(duplex)
        process = self.ctx.Process(target=target, args=(theirs, *args), daemon=True)
        process.start()
        theirs.close()
        return process, ours

    def run(self, kills: int) -> Stats:
        started = time.monotonic()
        writer, writer_conn = self.start(steady_writer, self.name, self.policy)
        self.temp_prefixes = [f".shmring-tmp-{writer.pid}-"]  # the creator's temp file
        self.expect(writer_conn, "created")
        reader, reader_conn = self.start(steady_reader, self.name, self.policy)
        self.steady_reader_pid = reader.pid
        self.expect(reader_conn, "attached")
        writer_conn.send("go")
        self.steady = {writer_conn: "writer", reader_conn: "reader"}
        inspected = 0
        try:
            while sum(self.stats.kills.values()) < kills and not self.stats.violations:
                self.step()
                if sum(self.stats.kills.values()) >= inspected + INSPECT_EVERY:
                    inspected = sum(self.stats.kills.values())
                    self.inspect()
        finally:
            for v in list(self.victims):
                self.kill(v)
        self.check_reclaimed()
        writer_conn.send("stop")
        self.stats.writer = self.final(writer_conn)
        self.stats.reader = self.final(reader_conn)
        self.check_tied()
        for process in (writer, reader):
            process.join(STALL)
            if process.exitcode != 0:
                self.stats.violation(f"steady process exit code {process.exitcode}")
        self.check_final()
        self.stats.seconds = time.monotonic() - started
        return self.stats

    def step(self) -> None:
        while len(self.victims) < self.concurrency:
            self.spawn()
        now = time.monotonic()
        due = [v.kill_at for v in self.victims if v.kill_at is not None]
        timeout = max(0.0, min([*due, now + 0.1]) - now)
        conns = [v.conn for v in self.victims] + list(self.steady)
        for conn in wait(conns, timeout):
            self.receive(conn)  # type: ignore[arg-type]
        now = time.monotonic()
        for v in list(self.victims):
            if v.kill_at is not None and v.kill_at <= now:
                self.strike(v)
            elif v.resume_by is not None and now > v.resume_by:
                self.stats.violation(
                    f"{v}: no frame done within {RESUME_LIMIT} s of SIGINT {v.sigints} "
                    f"({v.frames} done before)"
                )
                self.kill(v)
            elif not v.ready and now - v.started > START_LIMIT:
                self.stats.violation(f"{v} did not start within {START_LIMIT} s")
                self.kill(v)
            elif v.process.exitcode is not None:
                self.stats.violation(f"{v} exited by itself ({v.process.exitcode})")
                self.victims.remove(v)
        if now - self.progress_at > STALL:
            self.stats.violation(f"the steady stream made no progress for {STALL} s")

    def spawn(self) -> None:
        if not self.roles:
            self.roles = list(self.role_set)
            self.role_rng.shuffle(self.roles)
        role = self.roles.pop()
        writer_id = self.next_writer_id
        self.next_writer_id += 1
        delay = self.kill_rng.uniform(0.005 if role == "attach" else 0.0, KILL_WINDOW)
        pauses = []
        if role in SIGINT_ROLES:
            count = self.sigint_rng.randint(1, 4)
            pauses = [self.sigint_rng.uniform(0.0, KILL_WINDOW / 3) for _ in range(count)]
        process, conn = self.start(victim, self.name, role, writer_id, duplex=False)
        v = Victim(writer_id, role, process, conn, time.monotonic(), delay, pauses)
        if role == "create":
            v.own_ring = own_ring(self.name, writer_id)
            self.temp_prefixes.append(f".shmring-tmp-{process.pid}-")
        if role == "attach":  # it attaches and closes from its start on: struck from then
            v.kill_at = v.started + delay
        self.victims.append(v)

    def receive(self, conn: Connection) -> bool:
        """Handle one message; False at end of file (the sender died)."""
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return False
        kind = message[0]
        if kind == "violation":
            steady = conn in self.steady
            self.stats.violation(message[1] if steady else f"{self.victim_of(conn)}: {message[1]}")
        elif kind == "progress":
            self.progress_at = time.monotonic()
        elif kind == "ready":
            if len(message) > 1:  # frames a holder holds
                self.stats.held[message[1]] = self.stats.held.get(message[1], 0) + 1
            v = self.victim_of(conn)
            v.ready = True
            if v.kill_at is None:
                v.kill_at = time.monotonic() + v.delay
        elif kind == "resumed":  # a SIGINT victim did a frame after its last SIGINT
            v = self.victim_of(conn)
            v.frames, v.resume_by = message[1], None
            v.kill_at = time.monotonic() + v.pauses[v.sigints - 1]
        elif kind == "skip":
            self.victim_of(conn).skipping = message[1]
        elif kind == "skipped":
            self.victim_of(conn).skipping = 0
            self.stats.skips += 1
            self.stats.skip_excess += message[1] - 1
        return True

    def victim_of(self, conn: Connection) -> Victim:
        return next(v for v in self.victims if v.conn is conn)

    def strike(self, v: Victim) -> None:
        """SIGINT a few times (the SIGINT roles: the next one once the victim reported a frame
        done after the last, within RESUME_LIMIT), then SIGKILL."""
        if v.sigints < len(v.pauses):
            v.sigints += 1
            self.stats.sigints += 1
            os.kill(v.process.pid, signal.SIGINT)
            v.kill_at, v.resume_by = None, time.monotonic() + RESUME_LIMIT
            return
        self.kill(v)

    def kill(self, v: Victim) -> None:
        os.kill(v.process.pid, signal.SIGKILL)
        v.process.join(STALL)
        if v.process.exitcode != -signal.SIGKILL:
            self.stats.violation(f"{v} ended with {v.process.exitcode}, not SIGKILL")
        self.drain(v.conn)
        v.conn.close()
        self.victims.remove(v)
        if v.skipping:
            self.stats.skips_killed += 1
            self.stats.skip_excess_killed += v.skipping - 1
        if v.own_ring is not None:
            self.check_killed_creation(v, v.own_ring)
        self.stats.kills[v.role] = self.stats.kills.get(v.role, 0) + 1
        self.recent = [*self.recent[-9:], str(v)]

    def check_killed_creation(self, v: Victim, name: str) -> None:
        """A creator killed before naming its ring leaves nothing (temp files are checked
        at the end); one killed after leaves a stale ring, which the next create reclaims."""
        where = "named" if os.path.lexists(segment_path(name)) else "inside"
        self.stats.creates[where] = self.stats.creates.get(where, 0) + 1
        if where == "inside":
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", shmring.StaleRingWarning)
                RingWriter.create(name, (8,), np.uint8).close()
        except shmring.ShmringError as exc:
            self.stats.violation(f"the ring of killed {v} was not reclaimed: {exc!r}")
        if os.path.lexists(segment_path(name)):
            self.stats.violation(f"ring {name} of {v} outlived the create that reclaimed it")

    def drain(self, conn: Connection) -> None:
        """Messages a victim sent before it died (a violation it found, say)."""
        while conn.poll(0) and self.receive(conn):
            pass

    def expect(self, conn: Connection, kind: str) -> Any:
        if not conn.poll(STALL):
            raise RuntimeError(f"no {kind!r} message within {STALL} s")
        message = conn.recv()
        if message[0] != kind:
            raise RuntimeError(f"expected {kind!r}, got {message!r}")
        return message

    def final(self, conn: Connection) -> dict[str, Any]:
        deadline = time.monotonic() + STALL
        while time.monotonic() < deadline and conn.poll(max(0.0, deadline - time.monotonic())):
            message = conn.recv()
            if message[0] == "done":
                done: dict[str, Any] = message[1]
                return done
            if message[0] == "violation":
                self.stats.violation(message[1])
                conn.send("stop")
        self.stats.violation("a steady process did not finish")
        return {}

    def inspect(self) -> None:
        """Look at the ring as an observer: dead records pending, and whether head and tail
        are still consistent (read in that order, a snapshot cannot show more frames in
        flight than there are; seeing it means the ring lost track of a buffer)."""
        info = shmring.inspect_ring(self.name)
        dead = len(dead_participants(info))
        self.stats.max_dead_records = max(self.stats.max_dead_records, dead)
        pinned = sum(len(r.held_buffers) for r in info.readers)
        self.stats.pins_seen = max(self.stats.pins_seen, pinned)
        for problem in info.problems:
            if not self.joining(problem, info):
                self.stats.violation(f"inspect: {problem}; last victims killed: {self.recent}")
        if info.published - info.tail > info.slots:
            self.stats.violation(
                f"{info.published - info.tail} frames in flight in {info.slots} slots "
                f"(head {info.published}, tail {info.tail}); last victims killed: {self.recent}"
            )

    def joining(self, problem: str, info: shmring.RingInfo) -> bool:
        """Whether `problem` is one a live snapshot may show: a reader record naming a free
        group. A record is active (take_record) before its join sets its group word, and
        the group table is read after the reader table, so a record reaped in between shows
        it too. Never a member that joined and still runs: a group victim that is ready."""
        found = NAMES_FREE_GROUP.fullmatch(problem)
        if found is None:
            return False
        pid = next((r.pid for r in info.readers if r.index == int(found[1])), None)
        return pid not in {v.process.pid for v in self.victims if v.role == "group" and v.ready}

    def check_reclaimed(self) -> None:
        """Every victim is dead: a new participant's attach must find no dead record, the
        ring no problem, and no reader but the steady one (its current frame) a pin."""
        try:
            with RingReader.attach(self.name), RingWriter.attach(self.name):
                info = shmring.inspect_ring(self.name)
        except shmring.ShmringError as exc:
            self.stats.violation(f"after the kills, a new participant cannot attach: {exc!r}")
            return
        for problem in info.problems:
            self.stats.violation(f"after the kills, inspect: {problem}")
        dead = dead_participants(info)
        if dead:
            self.stats.violation(f"dead participants not reclaimed: {dead}")
        pins = [(r.pid, r.held_buffers) for r in info.readers if r.held_buffers]
        steady = [held for pid, held in pins if pid == self.steady_reader_pid]
        if len(steady) < len(pins) or sum(map(len, steady)) > 1:
            self.stats.violation(
                f"after the kills, readers (pid, buffers) pin {pins}; the steady reader is "
                f"pid {self.steady_reader_pid}"
            )
        if info.live_participants != 4:  # steady writer and reader, the two probes
            self.stats.violation(f"{info.live_participants} live participants, expected 4")

    def check_tied(self) -> None:
        """Each steady frame read came under the number its write returned. Those numbers (a
        few a frame) leave the summaries here (a steady process that did not finish is
        reported already)."""
        steady_seqs = self.stats.reader.pop("steady_seqs", None)
        returned = self.stats.writer.pop("seqs", None)
        if steady_seqs is not None and returned is not None:
            for violation in untied(steady_seqs, returned):
                self.stats.violation(f"steady reader: {violation}")

    def check_final(self) -> None:
        reader, writer = self.stats.reader, self.stats.writer
        for violation in reader.get("violations", []):
            self.stats.violation(f"steady reader: {violation}")
        if self.policy == "block" and reader.get("steady") != writer.get("written"):
            self.stats.violation(
                f"lossless stream: {writer.get('written')} steady frames written, "
                f"{reader.get('steady')} read"
            )
        self.check_dropped(reader.get("excess", 0), writer.get("skip_excess", 0))
        if writer.get("worst_write_s", 0.0) > MAX_WRITE_STALL:
            self.stats.violation(
                f"a steady write took {writer['worst_write_s']:.2f} s (> {MAX_WRITE_STALL} s)"
            )
        for who, summary in (("writer", writer), ("reader", reader)):
            before, after = summary.get("fds", [0, 0])
            if after != before:
                self.stats.violation(f"steady {who}: {before} fds before, {after} after")
        if os.path.lexists(segment_path(self.name)):
            self.stats.violation("the ring's segment outlived its creator's close")

    def check_dropped(self, excess: int, steady_excess: int) -> None:
        """What the steady reader counted dropped beyond the numbers it passed over against
        what the gaps published stand for beyond theirs: the steady writer's (exact), the
        victims' that returned (exact) and those of victims killed inside skip() (each may
        have been published whole, as a hole of one, or not at all). Block policy: every
        gap is counted whole; overwrite: a gap the reader was lapped past counts one."""
        s = self.stats
        low = steady_excess + s.skip_excess
        high = low + s.skip_excess_killed
        if excess > high or (self.policy == "block" and excess < low):
            s.violation(
                f"dropped frames beyond the numbers passed over: {excess:,}, the gaps stood "
                f"for {low:,} (up to {high:,} with the gaps of victims killed inside skip)"
            )

    def remove_leftovers(self) -> list[str]:
        """Remove what this run made and left in /dev/shm (its rings are all named after the
        steady one, and its creators' temporary files after their pids); their names."""
        ours = (f"shmring.{self.name}", *self.temp_prefixes)
        left = sorted(e for e in shm_entries() if e.startswith(ours))
        for entry in left:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, entry))
        return left


def dead_participants(info: shmring.RingInfo) -> list[shmring.WriterInfo | shmring.ReaderInfo]:
    """Records of participants that died and were not reclaimed yet."""
    participants: list[shmring.WriterInfo | shmring.ReaderInfo] = [*info.writers, *info.readers]
    return [p for p in participants if not p.alive]


def run(kills: int, policy: str, concurrency: int, seed: int, roles: list[str]) -> Stats:
    chaos = Chaos(forkserver("stress.chaos"), policy, concurrency, seed, roles)
    try:
        stats = chaos.run(kills)
    except Exception:
        # Report it like any violation, and clean up after ourselves: the children are
        # ours, and with the steady writer killed nobody else would unlink the rings.
        chaos.stats.violation(f"the harness failed:\n{traceback.format_exc()}")
        for child in mp.active_children():
            child.kill()
            child.join(STALL)
        chaos.remove_leftovers()
        return chaos.stats
    left = chaos.remove_leftovers()
    if left:
        stats.violation(f"left in {SHM_DIR} (removed now): {left}")
    if mp.active_children():
        stats.violation(f"child processes left: {mp.active_children()}")
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.chaos", description=__doc__)
    parser.add_argument("--kills", type=int, default=1000, help="SIGKILLs per policy")
    parser.add_argument("--policy", choices=("block", "overwrite", "both"), default="both")
    parser.add_argument("--concurrency", type=int, default=3, help="victims alive at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--roles", default=",".join(ROLES), help=f"victim roles (default: all of {list(ROLES)})"
    )
    parser.add_argument(
        "--sweep-stride",
        type=int,
        default=1,
        help="kill-point sweep: kill at every N-th line (0: no sweep; see stress.killpoints)",
    )
    parser.add_argument("--stops", type=int, default=50, help="SIGSTOPs of a lock holder")
    parser.add_argument("--truncations", type=int, default=20, help="rings truncated live")
    parser.add_argument("--json", action="store_true", help="print JSON summary lines")
    args = parser.parse_args(argv)
    policies = ("block", "overwrite") if args.policy == "both" else (args.policy,)
    roles = args.roles.split(",")
    if not set(roles) <= set(ROLES):
        parser.error(f"unknown roles {sorted(set(roles) - set(ROLES))}")
    failed = False
    for policy in policies:
        stats = run(args.kills, policy, args.concurrency, args.seed, roles)
        failed = failed or bool(stats.violations)
        if args.json:
            print(json.dumps(asdict(stats)), flush=True)
        else:
            print_stats(stats)
    if args.stops:
        stopped = stop_chaos(args.stops, args.seed)
        failed = failed or any(stopped.get(key) for key in ("hung", "late", "leaked", "problems"))
        # Text, also with --json: its lines are one per kill run (tests/test_chaos.py).
        print(f"== stopped lock holder: {json.dumps(stopped)}", flush=True)
    if args.truncations:
        truncated = truncate_chaos(args.truncations, args.seed)
        failed = failed or bool(truncated["problems"])
        print(f"== truncated rings (SIGBUS: docs/BAD_INPUT.md): {json.dumps(truncated)}")
    if args.sweep_stride:
        swept = killpoints.sweep(args.sweep_stride)
        failed = failed or bool(swept.violations)
        if args.json:
            print(json.dumps({"sweep": asdict(swept)}), flush=True)
        else:
            print_sweep(swept)
    return 1 if failed else 0


def print_sweep(swept: killpoints.Sweep) -> None:
    total = sum(swept.points.values())
    print(f"== kill-point sweep: {total:,} SIGKILLs at chosen lines in {swept.seconds:.0f} s")
    for scenario, count in swept.points.items():
        print(f"  {count:6,}  {scenario}")
    if swept.violations:
        print(f"VIOLATIONS ({len(swept.violations)}):")
        for violation in swept.violations[:50]:
            print(f"  - {violation}")
    else:
        print("  after every kill the ring worked for the survivor, and nothing was left")


def print_stats(stats: Stats) -> None:
    total = sum(stats.kills.values())
    print(f"== chaos, {stats.policy} policy: {total:,} SIGKILLs in {stats.seconds:.0f} s")
    for role, count in sorted(stats.kills.items()):
        print(f"  {count:6,}  killed in role {role}")
    print(f"  {stats.sigints:6,}  SIGINTs delivered to running victims before their SIGKILL")
    reader, writer = stats.reader, stats.writer
    print(
        f"  steady stream: {writer.get('written', 0):,} frames written, "
        f"{reader.get('frames', 0):,} read ({reader.get('steady', 0):,} steady, "
        f"{reader.get('dropped', 0):,} dropped), longest write "
        f"{writer.get('worst_write_s', 0.0) * 1e3:.0f} ms"
    )
    low = writer.get("skip_excess", 0) + stats.skip_excess
    print(
        f"  gaps: steady writer {writer.get('skips', 0):,} skips, victims {stats.skips:,} "
        f"returned and {stats.skips_killed:,} killed inside skip(); dropped beyond the "
        f"numbers passed over: {reader.get('excess', 0):,} (the gaps stood for {low:,} "
        f"to {low + stats.skip_excess_killed:,})"
    )
    print(f"  most dead records seen at once: {stats.max_dead_records}")
    held = ", ".join(f"{count} x {frames}" for frames, count in sorted(stats.held.items()))
    print(f"  holders of several frames (holders x frames each): {held or 'none'}")
    if stats.policy == "overwrite":
        print(f"  most frames readers pinned at once (inspect): {stats.pins_seen}")
    creates = stats.creates
    print(
        f"  creators killed: {creates.get('inside', 0):,} inside create (nothing left in "
        f"/dev/shm), {creates.get('named', 0):,} after naming the ring (stale, reclaimed)"
    )
    if stats.violations:
        print(f"VIOLATIONS ({len(stats.violations)}):")
        for violation in stats.violations:
            print(f"  - {violation}")
    else:
        print("  invariants held: no deadlock, no torn, duplicated, reordered or lost frame")


if __name__ == "__main__":
    from stress.chaos import main as package_main  # see stress.forkserver

    sys.exit(package_main())


# ---- issue 17: a stopped lock holder, a truncated ring ------------------------------------
# Not SIGKILLs: a participant SIGSTOPped at random moments (often inside the header lock) for
# random times (each SIGSTOP must leave it stopped, state T: one sent to a process that died
# would test nothing), while another one's timed calls must each return within its timeout
# plus LOCK_FLOOR plus slack; and rings truncated to 0 at random moments under a live writer
# and reader, counting who died of SIGBUS (the hot paths check no size: docs/BAD_INPUT.md).
# Each must end by SIGBUS or by the errors a truncated ring raises, within STALL; a writer
# killed by SIGBUS never closed, so its ring stays, and must be removable by name (remove_ring,
# as `shmring rm` does: nobody holds it); any other ring left behind is a leak.

STOP_SLACK = 1.0  # scheduling slack on top of max(timeout, LOCK_FLOOR) for a timed call
STOP_TIMEOUT = 0.2


def _stopper(name: str) -> None:
    """Write and hold the header lock in turns, until killed (SIGSTOPped meanwhile)."""
    writer = RingWriter.attach(name, timeout=STALL)
    frame = np.zeros(SHAPE, DTYPE)
    while True:
        with contextlib.suppress(shmring.RingTimeout):
            writer.write(frame, STALL)
        writer._lock.acquire(STALL)
        time.sleep(random.random() * 2e-3)  # holding the lock: a stop may land here
        writer._lock.release()


def _timed_caller(conn: Connection, name: str) -> None:
    """Timed calls that take the header lock until told to stop; report their count,
    timeouts and the slowest."""
    from shmring._lock import LOCK_FLOOR

    writer = RingWriter.attach(name, timeout=STALL)
    member = RingReader.attach(name, group="g", timeout=STALL)
    conn.send("attached")
    frame = np.zeros(SHAPE, DTYPE)
    late, timeouts, worst, calls = 0, 0, 0.0, 0
    while not conn.poll():
        n = calls = calls + 1
        start = time.monotonic()
        try:
            if n % 2:
                writer.write(frame, STOP_TIMEOUT)
            else:
                member.read(STOP_TIMEOUT).release()
        except shmring.RingTimeout:
            timeouts += 1
        elapsed = time.monotonic() - start
        worst = max(worst, elapsed)
        late += elapsed > max(STOP_TIMEOUT, LOCK_FLOOR) + STOP_SLACK
    for handle in (member, writer):
        with contextlib.suppress(shmring.RingTimeout):
            handle.close()
    conn.send({"calls": calls, "timeouts": timeouts, "late": late, "worst_s": worst})


def process_state(pid: int) -> str:
    """The state letter in /proc/PID/stat ("T": stopped; "Z": dead, not reaped), or "gone"."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def await_stopped(pid: int) -> str:
    """The state of a process just sent SIGSTOP, once it is "T", or as it is after a second."""
    deadline = time.monotonic() + 1.0
    while (state := process_state(pid)) != "T" and time.monotonic() < deadline:
        time.sleep(1e-3)
    return state


def stop_chaos(stops: int, seed: int) -> dict[str, Any]:
    """SIGSTOP a lock-taking writer `stops` times at random moments for random times."""
    rng = random.Random(seed)
    ctx = mp.get_context("fork")
    name = ring_name("stop")
    owner = RingWriter.create(
        name, SHAPE, DTYPE, slots=4, policy="overwrite", max_writers=3, max_readers=2
    )
    parent, child = ctx.Pipe()
    caller = ctx.Process(target=_timed_caller, args=(child, name), daemon=True)
    caller.start()
    stopper = ctx.Process(target=_stopper, args=(name,), daemon=True)
    stopped_for = 0.0
    problems: list[str] = []
    try:
        # Attached first: a lock holder that takes the lock back within microseconds of
        # each release (the stopper) can keep a waiter's polls out for its whole timeout.
        attached = parent.poll(STALL) and parent.recv() == "attached"
        if attached:
            stopper.start()
        for n in range(stops if attached else 0):
            time.sleep(rng.random() * 0.05)
            os.kill(stopper.pid or 0, signal.SIGSTOP)
            state = await_stopped(stopper.pid or 0)
            if state != "T":
                problems.append(f"seed {seed}: after SIGSTOP {n + 1}, the lock holder is {state!r}")
                break
            pause = rng.choice((0.01, 0.1, 0.5, 1.5)) * rng.random()
            stopped_for += pause
            time.sleep(pause)
            os.kill(stopper.pid or 0, signal.SIGCONT)
        parent.send("stop")
        result: dict[str, Any] = (
            parent.recv() if attached and parent.poll(STALL * 10) else {"hung": True}
        )
    finally:
        for process in (stopper, caller):
            if process.pid is not None:  # (the stopper starts once the caller attached)
                process.kill()
                process.join(STALL)
        with contextlib.suppress(shmring.RingTimeout):
            owner.close()
    result.update(stops=stops, stopped_s=round(stopped_for, 1))
    result["leaked"] = os.path.lexists(segment_path(name))
    return {**result, "problems": problems}


def _truncated_writer(name: str) -> None:
    with contextlib.suppress(shmring.RingCorrupted):
        writer = RingWriter.create(name, SHAPE, DTYPE, slots=4)
        try:
            while True:
                writer.write(np.zeros(SHAPE, DTYPE), 1.0)
        finally:
            writer.close()  # unlinks even when it raises


def _truncated_reader(name: str) -> None:
    # IncompatibleRing and RingNotFound: truncated (then unlinked by its writer) before the
    # reader attached.
    quiet = contextlib.suppress(
        shmring.RingCorrupted, shmring.RingTimeout, shmring.IncompatibleRing, shmring.RingNotFound
    )
    with quiet, RingReader.attach(name, timeout=STALL) as reader:
        while True:
            reader.read(1.0).release()


def truncate_chaos(rounds: int, seed: int) -> dict[str, Any]:
    """Truncate a live ring to 0 at a random moment, `rounds` times; count the outcomes, and
    what does not add up (a hang, another ending, a leak) as problems."""
    rng = random.Random(seed)
    ctx = mp.get_context("fork")
    outcomes = {"writer_sigbus": 0, "reader_sigbus": 0, "writer_raised": 0, "reader_raised": 0}
    problems: list[str] = []
    left_by_sigbus = 0
    for round_ in range(rounds):
        name = ring_name(f"trunc{round_}")
        where = f"seed {seed}, round {round_}"
        writer = ctx.Process(target=_truncated_writer, args=(name,), daemon=True)
        writer.start()
        while not os.path.lexists(segment_path(name)) and writer.is_alive():
            time.sleep(1e-3)
        reader = ctx.Process(target=_truncated_reader, args=(name,), daemon=True)
        reader.start()
        time.sleep(rng.random() * 0.2)
        with contextlib.suppress(FileNotFoundError):
            os.truncate(segment_path(name), 0)
        for role, process in (("writer", writer), ("reader", reader)):
            process.join(STALL)
            if process.exitcode is None:
                process.kill()
                process.join(STALL)
                problems.append(f"{where}: the {role} hung ({STALL} s)")
            elif process.exitcode in (0, -signal.SIGBUS):  # 0: it raised what it may raise
                outcomes[f"{role}_{'raised' if process.exitcode == 0 else 'sigbus'}"] += 1
            else:
                problems.append(f"{where}: the {role} ended with {process.exitcode}")
        if not os.path.lexists(segment_path(name)):
            continue
        if writer.exitcode != -signal.SIGBUS:
            problems.append(f"{where}: the ring outlived its writer ({writer.exitcode})")
            os.unlink(segment_path(name))
            continue
        left_by_sigbus += 1
        try:
            shmring.remove_ring(name)
        except shmring.ShmringError as exc:
            problems.append(f"{where}: the ring its writer left at its SIGBUS: {exc!r}")
            os.unlink(segment_path(name))
    return {"rounds": rounds, **outcomes, "left_by_sigbus": left_by_sigbus, "problems": problems}
