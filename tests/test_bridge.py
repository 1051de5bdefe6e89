"""`shmring bridge send/recv` over real Zenoh sessions on 127.0.0.1 (multicast scouting off,
explicit endpoints on ports the kernel picked), between real processes.

* The ring writer and the readers are spawned children; the bridges are `python -m shmring
  bridge ...` subprocesses. Frames carry a verified pattern, their index as metadata and a
  timestamp derived from the index, so order, loss, tearing, metadata and timestamps are all
  checked at the far end.
* Nothing sleeps to synchronise: children send messages, the lossless sender waits for its
  receivers (Zenoh liveliness), `recv --wait-readers 1` holds the first frame until the
  test's reader attached, and the end of the source stream travels to the far ring (its
  readers get EndOfStream). Every wait is bounded.
* No segment may be left in /dev/shm: conftest checks rings; `no_zenoh_files` checks that
  no Zenoh session left its `<number>.zenoh` file.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pytest
from helpers import (
    SHM_DIR,
    SLACK,
    STARTED_PIDS,
    VGA,
    WAIT,
    Pattern,
    make_tag,
    seg_path,
    split_tag,
    unique_name,
)

zenoh = pytest.importorskip("zenoh")

from shmring import (  # noqa: E402 (after the skip: the bridge extra may be absent)
    BridgeError,
    BridgeReceiver,
    BridgeSender,
    EndOfStream,
    IncompatibleRing,
    RingInfo,
    RingReader,
    RingTimeout,
    RingWriter,
    _bridge,
    inspect_ring,
)

META_SIZE = 16
EXIT_BOUND = 1.0  # the promise: SIGINT/SIGTERM → exit 0 within 1 s


def stamp(n: int) -> int:
    """The timestamp the writer gives frame n (not the clock: so it can be checked)."""
    return 1_000_000_007 * (n + 1)


# ---------------------------------------------------------------- spawned children


def writer_child(
    conn: Connection,
    name: str,
    count: int,
    interval: float,
    policy: str = "block",
    skip_at: int = -1,
    skip: int = 0,
    reattached_at: int = -1,
) -> None:
    """Create ring `name`, wait for the sender bridge to attach, write `count` frames (and,
    before frame `skip_at`, a gap standing for `skip` frames; before frame `reattached_at`,
    wait for a live reader again: a sender restarted after a kill)."""
    pat = Pattern(VGA)
    with RingWriter.create(name, VGA, np.uint8, policy=policy, meta_size=META_SIZE) as w:
        conn.send("ready")
        w.wait_for_readers(1, timeout=WAIT)
        start = time.monotonic()
        longest = 0.0
        for n in range(count):
            if n == skip_at:
                w.skip(skip, WAIT)
            if n == reattached_at:
                w.wait_for_readers(1, timeout=WAIT)
            t = time.monotonic()
            w.write(pat.make(make_tag(0, n)), WAIT, timestamp_ns=stamp(n), meta=b"%d" % n)
            longest = max(longest, time.monotonic() - t)
            if interval:
                time.sleep(interval)  # the stream's own pace (a camera's), not a synchronisation
        conn.send({"longest": longest, "seconds": time.monotonic() - start})


def reader_child(conn: Connection, name: str, delay: float = 0.0, notify_at: int = 0) -> None:
    """Attach to ring `name` once it exists; read and verify until end of stream."""
    pat = Pattern(VGA)
    with RingReader.attach(name, timeout=WAIT, start="oldest") as r:
        got: list[list[int]] = []  # per frame: index, index from meta, timestamp, arrival ns
        while True:
            try:
                frame = r.read(WAIT)
            except EndOfStream:
                break
            with frame:
                n = split_tag(pat.check(frame.array))[1]
                got.append([n, int(frame.meta), frame.timestamp_ns, time.monotonic_ns()])
            if len(got) == notify_at:
                conn.send("halfway")
            if delay:
                time.sleep(delay)  # a slow consumer, on purpose
        conn.send({"got": got, "dropped": r.dropped})


class Spawned:
    """A spawned child running one of the functions above, with a message pipe."""

    def __init__(self, target: Any, **kwargs: Any) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child,), kwargs=kwargs, daemon=True)
        self.proc.start()
        child.close()
        STARTED_PIDS.add(int(self.proc.pid or 0))

    def recv(self, timeout: float = WAIT) -> Any:
        assert self.conn.poll(timeout), f"no message from {self.proc.name} in {timeout} s"
        return self.conn.recv()

    def finish(self) -> Any:
        report = self.recv()
        self.proc.join(WAIT)
        assert self.proc.exitcode == 0, f"child exit code {self.proc.exitcode}"
        return report

    def close(self) -> None:
        if self.proc.exitcode is None:
            self.proc.kill()
        self.proc.join(WAIT)


# ---------------------------------------------------------------- bridge processes

TOTALS = re.compile(
    r"(?P<frames>\d+) frames, (?P<dropped>\d+) dropped"
    r"(?:, (?P<malformed>\d+) malformed, (?P<rejected>\d+) rejected)?"
)


class Bridge:
    """`python -m shmring bridge ARGS...` with its output in temporary files."""

    def __init__(self, *args: str) -> None:
        self.out = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.err = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shmring", "bridge", *args], stdout=self.out, stderr=self.err
        )
        STARTED_PIDS.add(self.proc.pid)

    def text(self, which: str = "out") -> str:
        f = self.out if which == "out" else self.err
        f.seek(0)
        return f.read().decode(errors="replace")

    def wait_for_output(self, text: str) -> None:
        """Until `text` is in its output (a progress line comes once a second)."""
        deadline = time.monotonic() + WAIT
        while text not in self.text():
            assert time.monotonic() < deadline, f"never printed {text!r}:\n{self.text()}"
            time.sleep(0.05)  # polling a condition with a deadline, not synchronising

    def stop(self, signum: int = signal.SIGTERM) -> dict[str, int]:
        """Signal it; check it exits 0 within the bound; its final totals."""
        start = time.monotonic()
        self.proc.send_signal(signum)
        code = self.proc.wait(WAIT)
        elapsed = time.monotonic() - start
        assert code == 0, f"bridge exited {code}:\n{self.text()}\n{self.text('err')}"
        assert elapsed < EXIT_BOUND + SLACK, f"bridge took {elapsed:.2f} s to exit after {signum}"
        return self.totals()

    def totals(self) -> dict[str, int]:
        last = self.text().strip().splitlines()[-1]
        assert "stopped" in last, last
        found = TOTALS.search(last)
        assert found, last
        return {k: int(v) for k, v in found.groupdict().items() if v is not None}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        self.out.close()
        self.err.close()


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    """Children and bridges to kill if a test fails half-way."""
    started: list[Any] = []
    yield started
    for thing in reversed(started):
        thing.close()


@pytest.fixture(autouse=True)
def no_zenoh_files() -> Iterator[None]:
    """Zenoh's shared-memory transport (off in bridges) would leave <number>.zenoh files."""
    before = {e for e in os.listdir(SHM_DIR) if e.endswith(".zenoh")}
    yield
    after = {e for e in os.listdir(SHM_DIR) if e.endswith(".zenoh")}
    assert not after - before, f"Zenoh left {sorted(after - before)} in {SHM_DIR}"


def endpoint() -> str:
    """A TCP endpoint on 127.0.0.1 with a port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp/127.0.0.1:{s.getsockname()[1]}"


def start(cleanup: list[Any], thing: Any) -> Any:
    cleanup.append(thing)
    return thing


def check_frames(got: list[list[int]], expected: list[int]) -> None:
    """Every frame verified in the child; here: which ones, their metadata and stamps."""
    assert [g[0] for g in got] == expected
    assert [g[1] for g in got] == expected, "metadata changed on the way"
    assert [g[2] for g in got] == [stamp(n) for n in expected], "timestamps changed"


# ---------------------------------------------------------------- tests


def test_lossless_pipeline_1000_vga_frames(cleanup: list[Any]) -> None:
    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    recv = start(cleanup, Bridge("recv", src, "--as", dst, "--connect", ep, "--wait-readers", "1"))
    send = start(cleanup, Bridge("send", src, "--listen", ep))
    writer = start(cleanup, Spawned(writer_child, name=src, count=1000, interval=0.0))
    assert writer.recv() == "ready"
    reader = start(cleanup, Spawned(reader_child, name=dst))
    writer.finish()
    report = reader.finish()
    check_frames(report["got"], list(range(1000)))
    assert report["dropped"] == 0
    send.wait_for_output("frames/s")  # its once-a-second line, which the transfer may beat
    # the sender first: its last line, printed as it stops, counts the receiver still there
    assert send.stop(signal.SIGTERM) == {"frames": 1000, "dropped": 0}
    assert recv.stop(signal.SIGINT) == {"frames": 1000, "dropped": 0, "malformed": 0, "rejected": 0}
    assert "1 receiver" in send.text().splitlines()[-1]


def test_a_stopped_senders_last_line_counts_every_frame_it_sent(cleanup: list[Any]) -> None:
    """SIGTERM lands while frames stream: the sender's last line comes after its thread
    stopped, so it counts the frame that thread was sending then (it used to be printed
    before, one short of what the receiver got)."""
    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    recv = start(
        cleanup, Bridge("recv", src, "--as", dst, "--connect", ep, "--policy", "overwrite")
    )
    send = start(cleanup, Bridge("send", src, "--listen", ep))
    streaming, done = threading.Event(), threading.Event()
    with RingWriter.create(src, (64,), np.uint8) as writer:

        def stream() -> None:  # flat out, until the test is done
            frame = np.zeros(64, np.uint8)
            writer.wait_for_readers(1, timeout=WAIT)
            for n in itertools.count():
                if done.is_set():
                    return
                writer.write(frame, WAIT)  # (once the sender left, nobody keeps them)
                if n == 20_000:
                    streaming.set()

        thread = threading.Thread(target=stream)
        thread.start()
        try:
            assert streaming.wait(WAIT), "the sender never took 20,000 frames"
            sent = send.stop(signal.SIGTERM)["frames"]
        finally:
            done.set()
            thread.join(WAIT)
    assert sent > 20_000
    recv.wait_for_output(f" {sent} frames, 0 dropped")  # every sample in flight arrived
    assert recv.stop()["frames"] == sent


def test_a_link_that_is_down_names_the_endpoints_it_waits_on(cleanup: list[Any]) -> None:
    """A wrong port must not look like a peer that has not started yet."""
    ring, ep = unique_name("bs"), endpoint()  # nothing listens there
    recv = start(cleanup, Bridge("recv", ring, "--connect", ep))
    send = start(cleanup, Bridge("send", ring, "--listen", endpoint()))
    recv.wait_for_output(f"link down (0 peers; no peer at {ep} yet), waiting for a sender")
    send.wait_for_output("link down (0 peers, 0 receivers; no peer connected to tcp/127.0.0.1:")
    recv.stop()
    assert recv.text().splitlines()[-1].endswith("link down (0 peers), stopped")


def test_sigint_ends_bridges_that_zenoh_or_the_local_ring_holds_up(cleanup: list[Any]) -> None:
    """A lossless pipeline whose far reader takes no frame: the receiver waits to write into
    its full ring, Zenoh backpressures the sender, whose put then blocks until Zenoh gives
    up on the link (5 s). SIGINT still ends each bridge, exit 0 within 1 s, and the source
    ring's writer goes on once the sender is gone (its reader is reaped)."""
    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    frame = np.zeros(VGA, np.uint8)
    with RingWriter.create(src, VGA, np.uint8, slots=4) as writer:
        recv = start(
            cleanup, Bridge("recv", src, "--as", dst, "--connect", ep, "--wait-readers", "1")
        )
        send = start(cleanup, Bridge("send", src, "--listen", ep))
        writer.write(frame, WAIT)  # the receiver creates its ring, and waits for a reader
        with RingReader.attach(dst, timeout=WAIT):  # which never reads
            deadline = time.monotonic() + WAIT
            with pytest.raises(RingTimeout):
                while time.monotonic() < deadline:  # fill both rings and everything between
                    writer.write(frame, 1.0)  # until the sender takes no frame for 1 s
            send.stop(signal.SIGINT)
            recv.stop(signal.SIGINT)
        writer.write(frame, WAIT)


def caught_signals(pid: int) -> int:
    """The signals process `pid` has handlers for (SigCgt, bit n-1 for signal n)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1], 16) for line in status if line.startswith("SigCgt:"))


def client_of_nobody(tmp_path: Any) -> str:
    """A Zenoh config whose session opens only once a router answers at a free port: for
    ever (connect timeout_ms -1)."""
    config = tmp_path / "client.json5"
    config.write_text(
        f'{{mode: "client", connect: {{endpoints: ["{endpoint()}"], timeout_ms: -1}}}}'
    )
    return str(config)


@pytest.mark.parametrize("end, signum", [("send", signal.SIGTERM), ("recv", signal.SIGINT)])
def test_a_bridge_whose_session_never_opens_still_ends_on_a_signal(
    tmp_path: Any, cleanup: list[Any], end: str, signum: int
) -> None:
    """zenoh.open waited for the router in the main thread, where no signal handler ran:
    only SIGKILL ended the bridge. Once its handlers are in place (before the session
    opens), a signal ends it as it ends a running bridge."""
    bridge = start(cleanup, Bridge(end, unique_name("bs"), "--config", client_of_nobody(tmp_path)))
    deadline = time.monotonic() + WAIT
    while not caught_signals(bridge.proc.pid) & 1 << signal.SIGTERM - 1:
        assert time.monotonic() < deadline, "the bridge never set its SIGTERM handler"
        time.sleep(0.01)  # polling a condition with a deadline, not synchronising
    if end == "send":  # what it waits for, once, after a second
        while "has not opened after 1 s" not in bridge.text("err"):
            assert time.monotonic() < deadline, f"no notice: {bridge.text('err')!r}"
            time.sleep(0.05)  # polling a condition with a deadline, not synchronising
        assert "connect endpoints: tcp/127.0.0.1:" in bridge.text("err")
    totals = bridge.stop(signum)
    assert totals["frames"] == 0
    assert "link down (0 peers" in bridge.text().splitlines()[-1]


INTERRUPTED_OPENING = """
import os, signal, sys, threading, time
from shmring import BridgeSender

def interrupt_once_opening():
    main = threading.main_thread().ident
    while True:  # until the main thread is in _open_session: then Ctrl-C
        frame = sys._current_frames().get(main)
        while frame is not None and frame.f_code.co_name != "_open_session":
            frame = frame.f_back
        if frame is not None:
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.001)

threading.Thread(target=interrupt_once_opening, daemon=True).start()
try:
    BridgeSender(sys.argv[1], config=sys.argv[2])
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_interrupts_a_bridge_whose_session_never_opens(tmp_path: Any) -> None:
    """The API: Ctrl-C while a constructor waits for its session to open (the program
    interrupts itself once its main thread is in there) raises KeyboardInterrupt."""
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_OPENING, unique_name("bs"), client_of_nobody(tmp_path)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "interrupted\n"), done.stderr


CLOSED_WHILE_BLOCKED = """
import sys, time, numpy as np
from shmring import BridgeReceiver, BridgeSender, RingReader, RingTimeout, RingWriter
src, dst, ep, config = sys.argv[1:]
frame = np.zeros((480, 640, 3), np.uint8)
writer = RingWriter.create(src, frame.shape, np.uint8, slots=4)
receiver = BridgeReceiver(src, local=dst, connect=[ep], wait_readers=1)
sender = BridgeSender(src, listen=[ep], config=config)
writer.write(frame, 10.0)
reader = RingReader.attach(dst, timeout=10.0)  # it never reads
try:
    while True:
        writer.write(frame, 0.3)  # until the sender takes no frame for 0.3 s
except RingTimeout:
    pass
start = time.monotonic()
sender.close()
print(sender.closing, time.monotonic() - start < 1.0, flush=True)
receiver.close()
reader.close()
writer.close()
"""


def test_a_program_that_closes_a_blocked_sender_exits_cleanly(tmp_path: Any) -> None:
    """The API: close() of a sender whose put Zenoh blocks returns at once, its thread
    still closing (`closing`); the program then ends, and its exit waits for that thread
    (Zenoh gives the put up after wait_before_close, 2 s in this config) instead of
    aborting under it."""
    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    config = tmp_path / "sender.json5"
    config.write_text(
        '{mode: "peer", scouting: {multicast: {enabled: false}}, transport: {link: {tx: '
        "{queue: {congestion_control: {block: {wait_before_close: 2000000}}}}}}}"
    )
    done = subprocess.run(
        [sys.executable, "-c", CLOSED_WHILE_BLOCKED, src, dst, ep, str(config)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"], done.stdout
    assert not os.path.exists(seg_path(src)) and not os.path.exists(seg_path(dst))


LEFT_OPEN = """
import sys, numpy as np
from shmring import BridgeReceiver, BridgeSender, RingReader, RingWriter
src, dst, ep, how = sys.argv[1:]
writer = RingWriter.create(src, (64,), np.uint8)
sender = BridgeSender(src, listen=[ep])
receiver = BridgeReceiver(src, local=dst, connect=[ep], wait_readers=1)
writer.write(np.full(64, 7, np.uint8), 10.0)
reader = RingReader.attach(dst, timeout=10.0)
frame = reader.read(10.0)
print(int(frame.array[0]), flush=True)
frame.release()
if how == "raise":
    raise SystemExit("failed")  # the program ends with the bridges and rings open
"""


@pytest.mark.parametrize("how", ["return", "raise"])
def test_a_program_that_leaves_bridges_open_exits(how: str) -> None:
    """zenoh-python runs a subscriber's callbacks on a non-daemon thread that ends only with
    its session: a program that never closed its bridges waited for it at exit for ever.
    They close before that join; the receiver's ring goes with it."""
    src, dst, ep = unique_name("os"), unique_name("od"), endpoint()
    done = subprocess.run(
        [sys.executable, "-c", LEFT_OPEN, src, dst, ep, how],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0 if how == "return" else 1, "7\n"), done.stderr
    assert not os.path.exists(seg_path(src)) and not os.path.exists(seg_path(dst))


LEFT_OPEN_BY_A_THREAD = """
import sys, threading, numpy as np
from shmring import BridgeReceiver, BridgeSender, RingWriter
src, dst, ep = sys.argv[1:]
writer = RingWriter.create(src, (64,), np.uint8)
made = threading.Event()

def work():
    sender = BridgeSender(src, listen=[ep])
    BridgeReceiver(src, local=dst, connect=[ep])
    made.set()
    print("stopped under its thread:", sender.wait(1.0), flush=True)  # main has returned

threading.Thread(target=work).start()  # (not a daemon)
made.wait(10.0)
"""


def test_a_bridge_left_open_by_a_thread_closes_after_that_thread() -> None:
    """Closed at exit, but not under a thread that still uses it: once it has ended."""
    src, dst, ep = unique_name("ts"), unique_name("td"), endpoint()
    done = subprocess.run(
        [sys.executable, "-c", LEFT_OPEN_BY_A_THREAD, src, dst, ep],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "stopped under its thread: False\n"), done
    assert not os.path.exists(seg_path(src)) and not os.path.exists(seg_path(dst))


def test_a_reader_that_does_not_read_holds_the_writer_back_within_a_few_frames() -> None:
    """Lossless: a receiver's full ring stops Zenoh's receiving thread, hence the link, the
    sender and the writer. Zenoh's default callback queued samples for a Python thread
    without bound: ~256 frames went into the receiver's memory first."""
    src, dst, ep = unique_name("hs"), unique_name("hd"), endpoint()
    frame = np.zeros((1 << 20,), np.uint8)
    with (
        RingWriter.create(src, frame.shape, np.uint8, slots=4) as writer,
        BridgeReceiver(src, local=dst, connect=[ep], slots=2, wait_readers=1),
        BridgeSender(src, listen=[ep]),
    ):
        writer.write(frame, WAIT)  # its ring is made on this frame, which waits for a reader
        written = 1
        stuck = RingReader.attach(dst, timeout=WAIT)  # never reads
        with stuck, contextlib.suppress(RingTimeout):
            while written < 400:
                writer.write(frame, 2.0)
                written += 1
        assert written < 64, written  # (its ring, Zenoh's queues and the sockets)


def test_wrong_arguments_are_refused_when_the_bridge_is_made() -> None:
    """They failed later in the bridge's thread (a str for a number), or did the wrong thing
    (latest="no" turned latest on, slots=0 took the sender's)."""
    ep = endpoint()
    cases: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: BridgeSender("r", listen=[ep], wait_receivers="1"), TypeError, "wait_receivers"),  # type: ignore[arg-type]
        (lambda: BridgeSender("r", listen=[ep], wait_receivers=-1), ValueError, "wait_receivers"),
        (lambda: BridgeSender("r", listen=[ep], latest="no"), TypeError, "latest"),  # type: ignore[arg-type]
        (lambda: BridgeSender("r", listen=[ep], key=""), ValueError, "key"),
        (lambda: BridgeReceiver("r", connect=[ep], slots="4"), TypeError, "slots"),  # type: ignore[arg-type]
        (lambda: BridgeReceiver("r", connect=[ep], slots=0), ValueError, "slots"),
        (lambda: BridgeReceiver("r", connect=[ep], wait_readers="1"), TypeError, "wait_readers"),  # type: ignore[arg-type]
        (lambda: BridgeSender("r", listen=["udp/127.0.0.1:1"]), BridgeError, "udp/"),
    ]
    for make, error, words in cases:
        with pytest.raises(error, match=words):
            make()
    BridgeSender("r", listen=["udp/127.0.0.1:0"], latest=True).close()  # may lose frames


def test_two_receivers_both_get_every_frame(cleanup: list[Any]) -> None:
    src, ep = unique_name("bs"), endpoint()
    dsts = [unique_name("bd"), unique_name("bd")]
    send = start(cleanup, Bridge("send", src, "--listen", ep, "--wait-receivers", "2"))
    recvs = [
        start(cleanup, Bridge("recv", src, "--as", d, "--connect", ep, "--wait-readers", "1"))
        for d in dsts
    ]
    writer = start(cleanup, Spawned(writer_child, name=src, count=200, interval=0.0))
    assert writer.recv() == "ready"
    readers = [start(cleanup, Spawned(reader_child, name=d)) for d in dsts]
    writer.finish()
    for reader in readers:
        check_frames(reader.finish()["got"], list(range(200)))
    for recv in recvs:
        assert recv.stop()["frames"] == 200
    assert send.stop()["frames"] == 200


def test_latest_slow_reader_never_slows_the_writer(cleanup: list[Any]) -> None:
    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    count, interval = 200, 0.005
    recv = start(cleanup, Bridge("recv", src, "--as", dst, "--connect", ep, "--wait-readers", "1"))
    send = start(cleanup, Bridge("send", src, "--listen", ep, "--latest"))
    writer = start(cleanup, Spawned(writer_child, name=src, count=count, interval=interval))
    assert writer.recv() == "ready"
    reader = start(cleanup, Spawned(reader_child, name=dst, delay=0.03))
    timing = writer.finish()
    report = reader.finish()
    got = [g[0] for g in report["got"]]
    assert got == sorted(set(got)), "out of order or repeated"
    check_frames(report["got"], got)
    assert len(got) < count / 2, "the reader was not slow: this test tested nothing"
    totals, sent = recv.stop(), send.stop()
    # Every frame written is received, or counted as dropped: by the sender while no
    # receiver was there, by the link (a gap), or by the local overwrite ring.
    assert sent["frames"] + sent["dropped"] == count
    assert totals["frames"] + totals["dropped"] == sent["frames"]
    # The reader counts the frames the overwrite ring dropped and the link's gaps, which the
    # receiver published into the ring; a gap the slow reader was lapped past counts one.
    assert totals["frames"] <= len(got) + report["dropped"] <= sent["frames"]
    # Never slowed: no write waited for the slow reader (it would wait ~30 ms per frame).
    assert timing["longest"] < 0.25, timing
    assert timing["seconds"] < count * interval * 1.5 + 1.0, timing


def test_sender_killed_and_restarted(cleanup: list[Any]) -> None:
    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    recv = start(cleanup, Bridge("recv", src, "--as", dst, "--connect", ep, "--wait-readers", "1"))
    send = start(cleanup, Bridge("send", src, "--listen", ep))
    writer = start(
        cleanup, Spawned(writer_child, name=src, count=1500, interval=0.002, reattached_at=1400)
    )
    assert writer.recv() == "ready"
    reader = start(cleanup, Spawned(reader_child, name=dst, notify_at=100))
    assert reader.recv() == "halfway"
    send.proc.kill()
    send.proc.wait(WAIT)
    start(cleanup, Bridge("send", src, "--listen", ep))
    writer.finish()
    report = reader.finish()  # the same reader, the same handle, to the end of the stream
    got = [g[0] for g in report["got"]]
    assert got == sorted(set(got)), "out of order or repeated"
    check_frames(report["got"], got)
    missing = sorted(set(range(got[0], 1500)) - set(got))
    assert missing, "no gap: the kill came too late to test anything"
    assert got[-1] == 1499, "frames did not come back after the restart"
    # The receiving ring's reader saw the gap: counted as dropped (what `shmring inspect`
    # shows), so that received + dropped is every frame the writer sent.
    assert report["dropped"] == len(missing), "the gap was not counted in the ring's dropped"
    assert len(got) + report["dropped"] == 1500 - got[0]
    assert recv.stop()["dropped"] == len(missing), "the gap was not counted by the receiver"
    gap = max(b[3] - a[3] for a, b in zip(report["got"], report["got"][1:], strict=False))
    assert gap < 5e9, f"frames came back only after {gap / 1e9:.1f} s"


def test_a_gap_the_source_ring_holds_as_one_skip_is_counted_whole(cleanup: list[Any]) -> None:
    """A gap of 5 frames that the source ring holds under one number (a skip, as a ring a
    bridge receives into holds a gap of its link) reaches the far ring as 5 dropped frames,
    so received + dropped stays true along a chain of bridges."""
    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    recv = start(cleanup, Bridge("recv", src, "--as", dst, "--listen", ep, "--wait-readers", "1"))
    start(cleanup, Bridge("send", src, "--connect", ep))
    writer = start(
        cleanup, Spawned(writer_child, name=src, count=20, interval=0.0, skip_at=10, skip=5)
    )
    assert writer.recv() == "ready"
    reader = start(cleanup, Spawned(reader_child, name=dst))
    writer.finish()
    report = reader.finish()
    check_frames(report["got"], list(range(20)))  # the gap is no frame
    assert report["dropped"] == 5
    assert recv.stop()["dropped"] == 5


def test_sender_follows_a_ring_whose_writer_comes_back(cleanup: list[Any]) -> None:
    """The supervisor wiring: the ring's owner never writes; a writer attaches, writes and
    leaves (the far ring's readers get EndOfStream), then another writer attaches to the
    same ring. The sender, still attached, forwards the new stream, every frame of it, into
    a new far ring."""
    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    pat = Pattern(VGA)
    with RingWriter.create(src, VGA, np.uint8, meta_size=META_SIZE):  # the owner
        recv = start(
            cleanup, Bridge("recv", src, "--as", dst, "--listen", ep, "--wait-readers", "1")
        )
        start(cleanup, Bridge("send", src, "--connect", ep))
        for _ in range(2):
            reader = start(cleanup, Spawned(reader_child, name=dst))
            with RingWriter.attach(src) as w:
                w.wait_for_readers(1, timeout=WAIT)  # the sender's reader
                for n in range(5):
                    w.write(pat.make(make_tag(0, n)), WAIT, timestamp_ns=stamp(n), meta=b"%d" % n)
            check_frames(reader.finish()["got"], list(range(5)))
        assert recv.stop()["frames"] == 10


def test_a_ring_removed_right_after_the_senders_attach_is_forwarded_whole(
    cleanup: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer writes its few frames and closes (removing the name) between the sender's
    attach and its look at the ring's header: every frame is forwarded. The header was read
    by name; the sender, finding no ring, left its reader and the frames in it."""
    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    pat = Pattern(VGA)
    start(cleanup, Bridge("recv", src, "--as", dst, "--listen", ep, "--wait-readers", "1"))
    reader = start(cleanup, Spawned(reader_child, name=dst))
    writer = RingWriter.create(src, VGA, np.uint8, meta_size=META_SIZE)
    attach = RingReader.attach

    def attached_then_writer_done(*args: Any, **kwargs: Any) -> RingReader:
        attached = attach(*args, **kwargs)
        if not writer.closed:
            for n in range(5):
                writer.write(pat.make(make_tag(0, n)), WAIT, timestamp_ns=stamp(n), meta=b"%d" % n)
            writer.close()
        return attached

    monkeypatch.setattr(RingReader, "attach", attached_then_writer_done)
    with BridgeSender(src, connect=[ep]):
        check_frames(reader.finish()["got"], list(range(5)))


def test_garbage_samples_are_counted_and_skipped(cleanup: list[Any]) -> None:
    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    recv = start(cleanup, Bridge("recv", src, "--as", dst, "--listen", ep, "--wait-readers", "1"))
    config = zenoh.Config.from_json5(
        '{mode: "peer", scouting: {multicast: {enabled: false}}, listen: {endpoints: []},'
        f' connect: {{endpoints: ["{ep}"]}}, transport: {{shared_memory: {{enabled: false}}}}}}'
    )
    with zenoh.open(config) as session:
        matched = threading.Event()
        publisher = session.declare_publisher(f"shmring/{src}")
        listener = publisher.declare_matching_listener(
            lambda status: matched.set() if status.matching else None
        )
        assert matched.wait(WAIT), "the receiver never subscribed"
        publisher.put(b"not a frame at all")
        publisher.put(b"SRBR" + bytes(300))  # the right magic, nonsense after it
        for sample in impossible_samples():  # well-formed, but no ring could hold them
            publisher.put(sample)
        publisher.put(too_large_here())
        listener.undeclare()
        publisher.undeclare()
    start(cleanup, Bridge("send", src, "--connect", ep))
    writer = start(cleanup, Spawned(writer_child, name=src, count=50, interval=0.0))
    assert writer.recv() == "ready"
    reader = start(cleanup, Spawned(reader_child, name=dst))
    writer.finish()
    check_frames(reader.finish()["got"], list(range(50)))
    malformed = 2 + len(impossible_samples())
    assert recv.stop() == {"frames": 50, "dropped": 0, "malformed": malformed, "rejected": 1}
    # One warning per second at most: the others are counted, not logged one by one.
    assert 1 <= recv.text("err").count("malformed sample") < malformed
    assert "cannot create ring" in recv.text("err")  # the frame /dev/shm has no room for


def frame_sample(geometry: Any, shape: tuple[int, ...]) -> bytes:
    """A well-formed frame sample of zeros, in a ring of `geometry` (_bridge_wire.Geometry)."""
    from shmring._bridge_wire import KIND_FRAME, encode_header

    frame = bytes(int(np.prod(shape)) * np.dtype(geometry.dtype).itemsize)
    fields = dict(kind=KIND_FRAME, flags=0, stream=1, seq=0, timestamp_ns=1, meta_len=0)
    return encode_header(geometry=geometry, shape=shape, **fields) + frame


def impossible_samples() -> list[bytes]:
    """Headers that decode field by field, of frames no ring can hold: a frame with a
    dimension of 0, rings past create's limits or the format's largest segment."""
    from shmring._bridge_wire import Geometry
    from shmring._layout import MAX_READERS, MAX_SLOTS

    return [
        frame_sample(Geometry((4, 8), "|u1", 8, "block", 8, 4, 0), (0, 8)),
        frame_sample(Geometry((4, 8), "|u1", MAX_SLOTS + 1, "block", 8, 4, 0), (4, 8)),
        frame_sample(Geometry((4, 8), "|u1", 8, "block", MAX_READERS + 1, 4, 0), (4, 8)),
        frame_sample(Geometry((1 << 30, 1 << 30), "|u1", 8, "block", 8, 4, 0), (1, 1)),
    ]


def too_large_here() -> bytes:
    """A frame of a ring of 8 TiB: within the format's limits, beyond this /dev/shm."""
    from shmring._bridge_wire import Geometry
    from shmring._layout import MAX_SLOTS

    return frame_sample(Geometry((1 << 23,), "|u1", MAX_SLOTS, "block", 8, 4, 0), (1,))


def test_local_ring_of_another_geometry_is_incompatible(cleanup: list[Any]) -> None:
    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    with contextlib.ExitStack() as stack:
        stack.enter_context(RingWriter.create(dst, (64,), np.uint8))  # in the way
        recv = start(cleanup, Bridge("recv", src, "--as", dst, "--connect", ep))
        receiver = stack.enter_context(BridgeReceiver(src, local=dst, connect=[ep]))
        stack.enter_context(BridgeSender(src, listen=[ep], wait_receivers=2))
        source = stack.enter_context(RingWriter.create(src, VGA, np.uint8))
        source.wait_for_readers(1, timeout=WAIT)
        source.write(np.zeros(VGA, np.uint8), WAIT)
        with pytest.raises(IncompatibleRing, match="exists with 64 uint8"):
            receiver.wait(WAIT)
        assert recv.proc.wait(WAIT) == 1
        assert recv.text("err").count("exists with 64 uint8") == 1  # said once, at exit


def test_bad_arguments_get_one_line_without_zenohs_source_paths() -> None:
    ring = unique_name("bs")
    for args, code, said in (
        (["--config", "/nonexistent.json5"], 1, "cannot read the Zenoh config file"),
        (["--listen", "bogus"], 1, "Endpoints must be of the form"),
        (["--connect", "tcp/nonsense"], 1, "endpoint 'tcp/nonsense' has no port"),
        (["--connect", "tcp/127.0.0.1:0"], 1, "has port 0, which no peer listens on"),
        (["--connect", "tcp/localhost:99999"], 1, "has port 99999, which no peer listens on"),
        (["--connect", "tcp/:7447"], 1, "endpoint 'tcp/:7447' has no host"),
        (["--listen", "tcp/127.0.0.1:0", "--key", ""], 2, "expected a Zenoh key expression"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "shmring", "bridge", "send", ring, *args],
            capture_output=True, text=True, timeout=WAIT, check=False,
        )  # fmt: skip
        assert done.returncode == code, (args, done.stderr)
        assert said in done.stderr and ".rs:" not in done.stderr, done.stderr
        if code == 1:
            assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize("bridge", [BridgeSender, BridgeReceiver])
def test_an_endpoint_given_as_a_str_is_refused_naming_the_list_to_pass(bridge: Any) -> None:
    """A str is a sequence too: its letters went to Zenoh as endpoints ("... form ...: t")."""
    with pytest.raises(TypeError, match=r"listen=\['tcp/127.0.0.1:7447'\]"):
        bridge(unique_name("bs"), listen="tcp/127.0.0.1:7447")


class InterruptedAdding(weakref.WeakSet[Any]):
    """The set of open bridges, with Ctrl-C arriving as a bridge is added to it."""

    def add(self, item: Any) -> None:
        super().add(item)
        raise KeyboardInterrupt


def refuse_token(key: str, zid: str) -> str:
    raise KeyboardInterrupt  # Ctrl-C at a constructor's last Zenoh step


@pytest.mark.parametrize(
    "bridge, failure",
    [
        (BridgeSender, "key"),
        (BridgeSender, "token"),
        (BridgeSender, "thread"),
        (BridgeSender, "register"),
        (BridgeReceiver, "key"),
        (BridgeReceiver, "token"),
        (BridgeReceiver, "register"),
    ],
)
def test_a_constructor_that_fails_after_opening_its_session_closes_it(
    monkeypatch: pytest.MonkeyPatch, bridge: Any, failure: str
) -> None:
    """A bridge's constructor fails, once its session listens, on what is no Zenoh error (a
    key that is no string, Ctrl-C, a thread that cannot start): the session is closed
    before the exception is raised, so its port is free while the exception is still held
    (a caller's log, a retry loop)."""
    ep = endpoint()
    kwargs: dict[str, Any] = {"listen": [ep]}
    if bridge is BridgeReceiver:
        kwargs["keep_freed_memory"] = False  # (the test process's allocator left alone)
    if failure == "key":
        kwargs["key"] = 123
    elif failure == "token":
        monkeypatch.setattr(_bridge, "receiver_token", refuse_token)
    elif failure == "register":  # Ctrl-C right after the session opened
        monkeypatch.setattr(_bridge, "_OPEN", InterruptedAdding())
    else:
        start = threading.Thread.start

        def refuse_the_senders(thread: threading.Thread) -> None:
            if thread.name.startswith("bridge send"):  # (Zenoh starts callback threads too)
                raise RuntimeError("can't start new thread")
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", refuse_the_senders)
    expected = {"key": TypeError, "thread": RuntimeError}.get(failure, KeyboardInterrupt)
    with pytest.raises(expected) as caught:
        bridge(unique_name("bf"), **kwargs)
    assert not list(_bridge._OPEN), "left for the exit to close, half made"
    monkeypatch.undo()
    assert caught.value.__traceback__ is not None  # held, with the constructor's frames
    with socket.socket() as s:
        s.bind(("127.0.0.1", int(ep.rsplit(":", 1)[1])))  # EADDRINUSE while it listens


def test_a_receiver_that_fails_after_a_frame_made_its_ring_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frame arrives as soon as the receiver subscribed and makes its local ring; the
    constructor's next step then fails (Ctrl-C): the ring is removed before the exception
    is raised, not whenever it is freed."""
    from shmring._bridge_wire import Geometry

    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()

    def token_once_the_ring_is_there(key: str, zid: str) -> str:
        deadline = time.monotonic() + WAIT
        while not os.path.exists(seg_path(dst)):
            assert time.monotonic() < deadline, "no frame made the ring"
            time.sleep(0.01)  # polling a condition with a deadline, not synchronising
        raise KeyboardInterrupt

    monkeypatch.setattr(_bridge, "receiver_token", token_once_the_ring_is_there)
    config = zenoh.Config.from_json5(
        '{mode: "peer", scouting: {multicast: {enabled: false}}, connect: {endpoints: []},'
        f' listen: {{endpoints: ["{ep}"]}}, transport: {{shared_memory: {{enabled: false}}}}}}'
    )
    sample = frame_sample(Geometry((4, 8), "|u1", 4, "block", 8, 4, 0), (4, 8))
    with zenoh.open(config) as session:
        publisher = session.declare_publisher(f"shmring/{src}")
        matched = threading.Event()
        listener = publisher.declare_matching_listener(
            lambda status: matched.set() if status.matching else None
        )
        putter = threading.Thread(target=lambda: matched.wait(WAIT) and publisher.put(sample))
        putter.start()
        with pytest.raises(KeyboardInterrupt) as caught:
            BridgeReceiver(src, local=dst, connect=[ep], keep_freed_memory=False)
        putter.join(WAIT)
        assert caught.value.__traceback__ is not None  # held, with the receiver in its frames
        assert not os.path.exists(seg_path(dst))
        listener.undeclare()
        publisher.undeclare()


def test_a_local_ring_removed_as_the_receiver_finds_it_is_created_anew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The local ring exists when the first frame comes (create: RingExists), and its owner
    removes it before the receiver looks at it: the receiver creates it after all. Its
    RingNotFound stopped the bridge."""
    from shmring._bridge_wire import Geometry

    src, dst, ep = unique_name("bs"), unique_name("bd"), endpoint()
    owner = RingWriter.create(dst, (4, 8), np.uint8)
    inspect = inspect_ring

    def removed_first(ring: str) -> RingInfo:
        owner.close()
        return inspect(ring)

    monkeypatch.setattr(_bridge, "inspect_ring", removed_first)
    config = zenoh.Config.from_json5(
        '{mode: "peer", scouting: {multicast: {enabled: false}}, connect: {endpoints: []},'
        f' listen: {{endpoints: ["{ep}"]}}, transport: {{shared_memory: {{enabled: false}}}}}}'
    )
    sample = frame_sample(Geometry((4, 8), "|u1", 4, "block", 8, 4, 0), (4, 8))
    with (
        zenoh.open(config) as session,
        BridgeReceiver(src, local=dst, connect=[ep], keep_freed_memory=False) as receiver,
    ):
        publisher = session.declare_publisher(f"shmring/{src}")
        deadline = time.monotonic() + WAIT
        while not publisher.matching_status.matching:
            assert time.monotonic() < deadline, "the receiver never subscribed"
            time.sleep(0.01)  # polling a condition with a deadline, not synchronising
        publisher.put(sample)
        while receiver.stats().frames < 1:
            assert not receiver.wait(0.01), "the receiver stopped"
            assert time.monotonic() < deadline, "the frame never arrived"
        assert owner.closed and os.path.exists(seg_path(dst))
        publisher.undeclare()
    assert not os.path.exists(seg_path(dst))  # created by the receiver, removed at its close


# A receiver's threads in miniature: one allocates, fills and frees a few blocks of 1 MiB,
# round after round, in a process with a BridgeReceiver (connecting to argv[3], where nobody
# listens; argv[2]: "keep" with keep_freed_memory, "default" without, "refused" with it but
# a policy no ring has, so that the constructor raises). Prints the page faults the rounds
# took in that thread, after three rounds that let glibc settle in its arena.
FREED_MEMORY_CHILD = """
import contextlib, ctypes, sys, threading
from shmring import BridgeReceiver

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
BLOCK, BLOCKS, ROUNDS = 1 << 20, 4, 50


def faults():  # this thread's own (Zenoh's threads fault pages too)
    with open("/proc/thread-self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def churn(count):
    for _ in range(count):
        blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
        for block in blocks:
            libc.memset(block, 1, BLOCK)
        for block in reversed(blocks):
            libc.free(block)


def rounds(out):
    churn(3)  # first, in this thread's arena, to let glibc settle its thresholds
    start = faults()
    churn(ROUNDS)
    out.append(faults() - start)


def receiver(mode):
    try:
        return BridgeReceiver(
            sys.argv[1],
            connect=[sys.argv[3]],
            keep_freed_memory=mode != "default",
            policy="bogus" if mode == "refused" else None,
        )
    except ValueError:
        assert mode == "refused"
        return contextlib.nullcontext()


with receiver(sys.argv[2]):
    out = []
    thread = threading.Thread(target=rounds, args=(out,))
    thread.start()
    thread.join()
print(out[-1])
"""


ROUND_PAGES = 50 * 4 * 256  # every page of every round of FREED_MEMORY_CHILD


def freed_memory_faults(mode: str) -> int:
    """The page faults of FREED_MEMORY_CHILD's rounds, its receiver made as `mode` says."""
    done = subprocess.run(
        [sys.executable, "-c", FREED_MEMORY_CHILD, unique_name("fm"), mode, endpoint()],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    return int(done.stdout.split()[-1])


def test_a_receivers_process_keeps_the_memory_it_frees() -> None:
    """With glibc's defaults, a thread that frees 4 MiB of blocks and allocates them again
    gets fresh pages each round (a fault per 4 KiB page); in a process with a
    BridgeReceiver (keep_freed_memory, the default) it gets its own pages back."""
    kept, default = freed_memory_faults("keep"), freed_memory_faults("default")
    assert kept < 256, f"{kept} page faults over 50 rounds with the memory kept"
    assert default > ROUND_PAGES // 4, f"only {default} page faults with glibc's defaults"


def test_a_receiver_refused_for_its_arguments_leaves_the_allocator_alone() -> None:
    """keep_freed_memory holds for the whole process: a receiver whose arguments are refused
    (a policy no ring has) raises before it sets it, and the process keeps glibc's ways."""
    refused = freed_memory_faults("refused")
    assert refused > ROUND_PAGES // 4, f"only {refused} page faults: the allocator was set"


def test_wire_reuses_checks_only_when_just_seq_and_timestamp_changed() -> None:
    """FrameEncoder's reused buffer and Decoder's reused checks give exactly what the plain
    encode_header + decode give, and a sample that differs anywhere else is checked again."""
    from shmring._bridge_wire import (
        HEADER_SIZE,
        KIND_FRAME,
        SEQ_OFFSET,
        Decoder,
        FrameEncoder,
        Geometry,
        MalformedSample,
        decode,
        encode_header,
    )

    geometry = Geometry((4, 8), "<f4", 8, "block", 8, 4, META_SIZE)
    frame = np.arange(32, dtype=np.float32).reshape(4, 8)
    encoder, decoder = FrameEncoder(flags=0, stream=7, geometry=geometry), Decoder()

    def plain(seq: int, shape: tuple[int, ...], meta: bytes) -> bytes:
        header = encode_header(
            kind=KIND_FRAME,
            flags=0,
            stream=7,
            seq=seq,
            timestamp_ns=stamp(seq),
            geometry=geometry,
            shape=shape,
            meta_len=len(meta),
        )
        return header + meta + frame[: shape[0], : shape[1]].tobytes()

    cases = [(0, (4, 8), b""), (1, (4, 8), b""), (2, (4, 8), b"meta"), (3, (2, 8), b"")]
    cases += [(4, (4, 8), b""), (5, (4, 8), b"")]
    for seq, shape, meta in cases:
        data = np.ascontiguousarray(frame[: shape[0], : shape[1]]).data.cast("B")
        payload = bytes(encoder.encode(seq, stamp(seq), shape, meta, data))
        assert payload == plain(seq, shape, meta)
        assert decoder.decode(payload) == decode(payload)
        assert decoder.decode(payload).seq == seq

    good = plain(6, (4, 8), b"")
    assert decoder.decode(good).timestamp_ns == stamp(6)
    data = frame.data.cast("B")
    for lost in (3, 0):  # `lost` changes frame to frame: rewritten in place, decoded as such
        payload = bytes(encoder.encode(7, stamp(7), (4, 8), b"", data, lost))
        assert decoder.decode(payload).lost == decode(payload).lost == lost
    assert decode(bytes(encoder.encode(8, stamp(8), (2, 8), b"m", data[:64], 9))).lost == 9
    # The ring shape's first dimension (the header ends with the ring shape, 8 x 8 bytes) = 0.
    no_ring = good[: HEADER_SIZE - 64] + bytes(8) + good[HEADER_SIZE - 56 :]
    bad_magic = b"XXXX" + good[4:]
    for bad in (no_ring, bad_magic, good[:-4], good + bytes(4)):
        with pytest.raises(MalformedSample):
            decoder.decode(bad)
    assert decoder.decode(good[:SEQ_OFFSET] + bytes(16) + good[SEQ_OFFSET + 16 :]).seq == 0
