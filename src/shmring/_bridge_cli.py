# `shmring bridge send|recv`: the bridges of _bridge.py as commands.
#
# Rules:
#   - add_bridge_command() is the only entry point: _cli.build_parser calls it, and the rest
#     of the `shmring` tool (which only observes rings) is untouched by it.
#   - A bridge runs until SIGINT or SIGTERM (heard while its Zenoh session opens too: a
#     config may make that wait for a peer for ever), then leaves its rings and its session and
#     exits 0 within a second. A failure (a bad endpoint, an incompatible local ring) exits 1
#     through _cli.main with one line saying what to do.
#   - Once a second, unless --quiet, one progress line on stdout: frames/s and MB/s over the
#     last second, then the totals and the link (Zenoh peers connected, the endpoints while
#     none is, what the bridge waits for); the last line, once the bridge closed, its
#     final totals. Warnings (gaps, malformed samples) go to stderr through `logging`.

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from ._bridge import BridgeReceiver, BridgeSender, BridgeStats, _Bridge
from ._cli import non_negative, plural, positive, ring_name

PROGRESS_INTERVAL = 1.0  # seconds between progress lines


def add_bridge_command(commands: Any) -> None:
    """Add `bridge send` and `bridge recv` to the `shmring` parser's subcommands."""
    summary = "bridge a ring to other hosts over Eclipse Zenoh (needs shmring[bridge])"
    bridge = commands.add_parser("bridge", help=summary, description=summary)
    ends = bridge.add_subparsers(dest="end", required=True, metavar="{send,recv}")

    send = ends.add_parser(
        "send",
        help="publish every frame of a local ring on a Zenoh key",
        description="Attach to local ring RING as a reader of its own group and publish "
        "every frame, with its sequence number, timestamp, metadata and the ring's "
        "geometry, on Zenoh key KEY.",
    )
    send.add_argument(
        "--latest",
        action="store_true",
        help="congestion control drop: never slow the ring's writer; receivers get the "
        "newest frames and count the rest as dropped (default: lossless, backpressure)",
    )
    send.add_argument(
        "--wait-receivers",
        type=non_negative(int),
        default=1,
        metavar="N",
        help="while fewer than N receivers are there, take no frame from the ring (lossless), "
        "or take and drop them (--latest)",
    )
    send.set_defaults(run=cmd_send)

    recv = ends.add_parser(
        "recv",
        help="write the frames published on a Zenoh key into a local ring",
        description="Subscribe to Zenoh key KEY and write every frame into local ring LOCAL, "
        "created with the sender's geometry and removed when this command exits.",
    )
    recv.add_argument(
        "--as", dest="local", type=ring_name, metavar="LOCAL", help="local ring name (RING)"
    )
    recv.add_argument("--slots", type=positive(int), help="slots of the local ring (the sender's)")
    recv.add_argument(
        "--policy",
        choices=("block", "overwrite"),
        help="policy of the local ring (default: the sender's; overwrite under --latest)",
    )
    recv.add_argument(
        "--wait-readers",
        type=non_negative(int),
        default=0,
        metavar="N",
        help="hold the first frame of each stream until N readers attached to the local ring",
    )
    recv.set_defaults(run=cmd_recv)

    for end in (send, recv):
        end.add_argument("ring", type=ring_name, metavar="RING")
        end.add_argument(
            "--key", type=key_expression, help="Zenoh key expression (default shmring/RING)"
        )
        end.add_argument(
            "--listen",
            action="append",
            default=[],
            metavar="EP",
            help="Zenoh endpoint to listen on, e.g. tcp/127.0.0.1:7447 (repeatable)",
        )
        end.add_argument(
            "--connect",
            action="append",
            default=[],
            metavar="EP",
            help="Zenoh endpoint to connect to, e.g. tcp/192.0.2.7:7447 (repeatable)",
        )
        end.add_argument(
            "--config", metavar="FILE", help="Zenoh JSON5 config (TLS, routers, access control)"
        )
        end.add_argument("--quiet", action="store_true", help="no progress lines")


def key_expression(text: str) -> str:
    """A --key: Zenoh checks the rest when the bridge declares it (BridgeError)."""
    if not text.strip("/"):
        raise argparse.ArgumentTypeError(f"expected a Zenoh key expression, got {text!r}")
    return text


def cmd_send(args: argparse.Namespace) -> int:
    return run_bridge(
        args,
        lambda: BridgeSender(
            args.ring,
            key=args.key,
            listen=args.listen,
            connect=args.connect,
            config=args.config,
            latest=args.latest,
            wait_receivers=args.wait_receivers,
        ),
    )


def cmd_recv(args: argparse.Namespace) -> int:
    return run_bridge(
        args,
        lambda: BridgeReceiver(
            args.ring,
            key=args.key,
            local=args.local,
            listen=args.listen,
            connect=args.connect,
            config=args.config,
            slots=args.slots,
            policy=args.policy,
            wait_readers=args.wait_readers,
        ),
    )


def run_bridge(args: argparse.Namespace, make: Callable[[], _Bridge]) -> int:
    """Run a bridge until SIGINT/SIGTERM (exit 0) or its failure (raised)."""
    logging.basicConfig(format="shmring bridge: %(message)s", level=logging.INFO)
    # A failure is reported once, as the exit's one-line error, not logged as well.
    logging.getLogger("shmring.bridge").addFilter(
        lambda record: not getattr(record, "bridge_failed", False)
    )
    stop = threading.Event()
    starting = True

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal starting
        stop.set()
        if starting:  # the constructor may wait for Zenoh for ever: it is interrupted
            starting = False  # once: a second signal only sets `stop`
            raise _StoppedStarting

    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
        bridge = make()
        starting = False
    except _StoppedStarting:  # (what it had opened, it closed: _Bridge's constructor)
        if not args.quiet:
            print(progress(args, BridgeStats(), BridgeStats(), 0.0, "stopped"), flush=True)
        return 0
    with bridge:
        earlier, since = bridge.stats(), time.monotonic()
        while not stop.is_set():
            if bridge.wait(min(0.1, PROGRESS_INTERVAL)):
                break
            now = time.monotonic()
            if now - since >= PROGRESS_INTERVAL:
                current = bridge.stats()
                if not args.quiet:
                    print(progress(args, earlier, current, now - since), flush=True)
                earlier, since = current, now
    if not args.quiet:  # after close(): its thread sends no frame more (a put that Zenoh
        # blocks, see below, is abandoned at exit: that frame is neither sent nor counted)
        print(progress(args, earlier, bridge.stats(), 0.0, "stopped"), flush=True)
    if bridge.closing:
        # Its thread waits for Zenoh to give up a blocked put (up to 5 s): exit now, as a
        # killed sender would (the ring reaps its reader; the peers see the link close).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


class _StoppedStarting(BaseException):
    """SIGINT or SIGTERM while the bridge was being made (not an Exception: no handler of
    the constructor's may take it for a failure of its own)."""


def progress(
    args: argparse.Namespace,
    before: BridgeStats,
    now: BridgeStats,
    seconds: float,
    state: str | None = None,
) -> str:
    """One line: rates over `seconds` (none if 0), totals, link, state."""
    rates = ""
    if seconds > 0:
        mbps = (now.bytes - before.bytes) / seconds / 1e6
        rates = f"{(now.frames - before.frames) / seconds:.1f} frames/s, {mbps:.1f} MB/s, "
    counts = f"{now.frames} frames, {now.dropped} dropped"
    if args.end == "recv":
        counts += f", {now.malformed} malformed, {now.rejected} rejected"
    link = f"link {'up' if now.peers else 'down'} ({plural(now.peers, 'peer')}"
    if args.end == "send":
        link += f", {plural(now.receivers, 'receiver')}"
    if not now.peers and state is None:
        link += unreached(args)
    return f"bridge {args.end} {args.ring}: {rates}{counts}; {link}), {state or now.state}"


def unreached(args: argparse.Namespace) -> str:
    """Where the link is waited for: a wrong port looks like a peer not started yet."""
    if args.connect:
        return f"; no peer at {', '.join(args.connect)} yet"
    if args.listen:
        return f"; no peer connected to {', '.join(args.listen)} yet"
    return ""
