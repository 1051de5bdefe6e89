# The `shmring record` and `shmring replay` commands (they attach as a reader and as a
# writer, as `bridge` does; the CLI's other commands only observe). They parse arguments,
# call shmring.record / shmring.replay (_recording.py) and print one summary line; progress
# is drawn on stderr when it is a terminal, and --quiet silences both.
#
# Exit codes as the rest of the CLI (_cli.py): 0 done (Ctrl-C and SIGTERM stop cleanly and
# count as done), 1 failed with one line on stderr saying what to do, 2 a usage error.

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from ._cli import Refused, human_bytes, non_negative, positive, ring_name
from ._errors import RingNotFound
from ._recording import COLORS, COMPRESSIONS, record, replay

Command = Callable[[argparse.Namespace], int]
AddCommand = Callable[[str, Command, str], argparse.ArgumentParser]


def cmd_record(args: argparse.Namespace) -> int:
    logging.basicConfig(format="shmring record: %(message)s")  # a stalled ring's warning
    try:
        result = record(
            args.ring,
            args.file,
            frames=args.frames,
            seconds=args.seconds,
            compression=args.compression,
            start=args.start,
            group=args.group,
            color=args.color,
            timeout=args.timeout,
            crc=args.crc,
            progress=not args.quiet,
        )
    except ValueError as exc:
        raise Refused(str(exc)) from None
    except RingNotFound:
        waited = f"within {args.timeout:g} s" if args.timeout else "(--timeout 0: no wait)"
        raise Refused(
            f"no ring named {args.ring!r} {waited}; start its writer first, or wait for it "
            "with --timeout SECONDS"
        ) from None
    if not args.quiet and result.ended == "stop request" and not result.frames and not result.bytes:
        # no file: stopped before the ring appeared
        print(f"nothing recorded: stopped before ring {args.ring} appeared")
    elif not args.quiet:
        print(
            f"recorded {result.frames} frames ({human_bytes(result.bytes)}) from "
            f"{args.ring} to {result.path} in {result.seconds:.1f} s; ended by "
            f"{result.ended}" + (f"; {result.dropped} frames lost" if result.dropped else "")
        )
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    logging.basicConfig(format="shmring replay: %(message)s")
    try:
        result = replay(
            args.file,
            args.ring,
            speed=None if args.as_fast_as_possible else args.speed,
            loop=args.loop,
            wait_readers=args.wait_readers,
            slots=args.slots,
            policy=args.policy,
            timeout=args.timeout,
            recover=args.recover,
            progress=not args.quiet,
        )
    except ValueError as exc:
        raise Refused(str(exc)) from None
    if not args.quiet:
        print(
            f"replayed {result.frames} frames from {args.file} into {args.ring} in "
            f"{result.seconds:.1f} s ({result.passes} complete "
            f"pass{'' if result.passes == 1 else 'es'}); ended by "
            f"{result.ended}"
        )
    return 0


def add_record_commands(command: AddCommand) -> None:
    """Register `record` and `replay` with the CLI's `command` (see _cli.build_parser)."""
    rec = command("record", cmd_record, "record a ring's frames into an MCAP file")
    rec.add_argument("ring", type=ring_name, metavar="RING")
    rec.add_argument("file", metavar="FILE.mcap")
    rec.add_argument("--frames", type=positive(int), help="stop after this many frames")
    rec.add_argument("--seconds", type=positive(float), help="stop after this many seconds")
    rec.add_argument(
        "--compression", choices=COMPRESSIONS, default="none", help="per chunk (default none)"
    )
    rec.add_argument(
        "--start",
        choices=("latest", "oldest"),
        default="latest",
        help="begin with the newest frame (default) or the oldest still in the ring",
    )
    rec.add_argument("--group", help="join this reader group instead of being its own")
    rec.add_argument(
        "--color",
        choices=COLORS,
        default="rgb8",
        help="channel order of H×W×3 uint8 frames, for viewers (default rgb8)",
    )
    rec.add_argument(
        "--timeout",
        type=non_negative(float),
        default=0.0,
        help="seconds to wait for the ring to appear (default 0)",
    )
    rec.add_argument(
        "--crc",
        action="store_true",
        help="give each chunk a CRC, to detect damage at rest (slower: a pass over every byte)",
    )
    quiet(rec)

    rep = command("replay", cmd_replay, "write a recording's frames into a ring")
    rep.add_argument("file", metavar="FILE.mcap")
    rep.add_argument("ring", type=ring_name, metavar="RING")
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=positive(float),
        default=1.0,
        help="play at this multiple of the recorded pace (default 1)",
    )
    pace.add_argument(
        "--as-fast-as-possible", action="store_true", help="write the frames back to back"
    )
    rep.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    rep.add_argument(
        "--wait-readers",
        type=non_negative(int),
        default=0,
        metavar="N",
        help="start once N readers are attached",
    )
    rep.add_argument(
        "--slots", type=positive(int), help="slots of a ring created here (default: recorded)"
    )
    rep.add_argument(
        "--policy",
        choices=("block", "overwrite"),
        help="policy of a ring created here (default: recorded)",
    )
    rep.add_argument(
        "--timeout",
        type=positive(float),
        help="seconds to wait for readers and for room for a frame (default: no limit)",
    )
    rep.add_argument(
        "--recover",
        action="store_true",
        help="replay a truncated recording up to its last complete chunk",
    )
    quiet(rep)


def quiet(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--quiet", action="store_true", help="print neither progress nor summary")
