# The `shmring` command: ls, inspect, top, rm and gc for the rings in /dev/shm (and record
# and replay, which _record_cli.py adds and which the rules below do not cover).
#
# Rules:
#   - Observe only. Every figure comes from the observer API (_inspect.py), which never
#     registers as a reader or writer and never takes a ring's header lock, so pointing this
#     tool at a live pipeline cannot block or slow it. Its only writes are unlinks (rm, gc);
#     gc re-reads a ring just before unlinking it and keeps it if it came back to life.
#   - Rates are differences between two snapshots of the same ring (same name and creation
#     time) over the monotonic time between them. MB/s counts full-size frames
#     (prod(shape) × itemsize), an upper bound when writers publish smaller frames.
#   - Exit codes: 0 done; 1 refused or failed, with one line per failure on stderr saying
#     what to do; 2 a usage error (argparse).
#   - Text is for people; --json (RingInfo.to_dict() plus rates) is for scripts.
#   - Any local user can name a file in /dev/shm anything: a name read from there is printed
#     through `shown`, so that it cannot forge lines of output or drive the terminal.
#   - gc run by a user other than root leaves other users' entries alone, and says so: in
#     /dev/shm (a sticky directory) only a file's owner or root may remove it.

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import itertools
import json
import math
import os
import select
import shutil
import signal
import sys
import termios
import time
import tty
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from math import prod
from types import FrameType, TracebackType
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from . import __version__
from ._errors import ShmringError
from ._inspect import (
    BrokenRing,
    GroupInfo,
    ReaderInfo,
    RingInfo,
    SlotInfo,
    WriterInfo,
    inspect_ring,
    list_rings,
    remove_if_stale,
    stale_rings,
    unlink_ring,
)
from ._segment import PREFIX, SHM_DIR, segment_path, user_label, validate_name

RATE_WINDOW = 0.2  # seconds between the two snapshots that measure rates
Listing = list[RingInfo | BrokenRing]
T = TypeVar("T")
N = TypeVar("N", int, float)


class Refused(Exception):
    """An operation this tool will not or could not do; the message says what to do."""


# ---- snapshots and rates -------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    frames_per_s: float
    bytes_per_s: float
    drops_per_s: float


@dataclass(frozen=True)
class Row:
    """One ring as shown by ls and top: its snapshot, and its rates if measured."""

    info: RingInfo
    rate: Rate | None

    def to_dict(self) -> dict[str, Any]:
        rates = asdict(self.rate) if self.rate else {f.name: None for f in fields(Rate)}
        return {**self.info.to_dict(), **rates}


def snapshot(patterns: Sequence[str]) -> Listing:
    """Every ring (or broken entry) whose name matches one of `patterns` (all if none)."""
    return list_rings(lambda name: matches(name, patterns))


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Patterns match the ring name, or its /dev/shm file name (shmring.NAME) or path."""
    files = (name, PREFIX + name, segment_path(name))
    return not patterns or any(
        fnmatch.fnmatchcase(file, pattern) for pattern in patterns for file in files
    )


def rows(listing: Listing, earlier: Listing) -> list[Row]:
    """The rings of `listing`, with rates measured against the `earlier` snapshot."""
    before = {ring.name: ring for ring in earlier if isinstance(ring, RingInfo)}
    return [
        Row(ring, measure(before.get(ring.name), ring))
        for ring in listing
        if isinstance(ring, RingInfo)
    ]


def measure(before: RingInfo | None, after: RingInfo) -> Rate | None:
    """Rates between two snapshots; None if there is no earlier one of this same ring."""
    if before is None or identity(before) != identity(after):
        return None
    seconds = (after.snapshot_ns - before.snapshot_ns) / 1e9
    if seconds <= 0:
        return None
    frames = (after.published - before.published) / seconds
    drops = max(total_drops(after) - total_drops(before), 0) / seconds
    return Rate(frames, frames * frame_bytes(after), drops)


def identity(info: RingInfo) -> tuple[int, int]:
    """Tells a ring from a later one created under the same name."""
    return info.created_ns, info.creator_pid


def frame_bytes(info: RingInfo) -> int:
    return prod(info.shape) * np.dtype(info.dtype).itemsize


def total_drops(info: RingInfo) -> int:
    return sum(reader.dropped for reader in info.readers)


def max_lag(info: RingInfo) -> int | None:
    lags = [group.lag for group in info.groups if group.members]  # (none: it holds nothing)
    lags += [reader.lag for reader in info.readers if reader.lag is not None]
    return max(lags, default=None)


# ---- words -------------------------------------------------------------------------------


def human_bytes(count: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while count >= 1024 and power < len(units) - 1:
        count /= 1024
        power += 1
    return f"{count:.0f} B" if power == 0 else f"{count:.1f} {units[power]}"


def human_duration(ns: int) -> str:
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    if ns < 3600 * 1_000_000_000:
        return f"{ns / 1e9:.1f} s"
    return f"{ns / 3600e9:.1f} h"


def shown(name: str) -> str:
    """`name` (read from /dev/shm) safe to print: bytes that are not UTF-8 as \\xNN, other
    characters a terminal would act on (newline, escape, ...) as Python writes them (\\n,
    \\x1b), and backslashes doubled, so that no escaped form can be faked."""
    text = os.fsencode(name).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def optional(value: int | None) -> str:
    return "-" if value is None else str(value)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def alive_text(alive: bool) -> str:
    return "alive" if alive else "dead"


def headcount(participants: Sequence[WriterInfo] | Sequence[ReaderInfo]) -> str:
    """'2', or '1+1 dead' when some registered participants have died."""
    alive = sum(p.alive for p in participants)
    dead = len(participants) - alive
    return f"{alive}+{dead} dead" if dead else str(alive)


def status(info: RingInfo) -> str:
    flags = [
        flag
        for flag, present in (
            ("STALE", info.stale),
            ("DAMAGED", bool(info.problems)),
            ("closed", info.closed),
        )
        if present
    ]
    return ",".join(flags) or "ok"


def describe_writer(writer: WriterInfo) -> str:
    claim = "idle" if writer.claimed_buffer is None else f"claims buffer {writer.claimed_buffer}"
    return f"writer {writer.index} (pid {writer.pid}, {alive_text(writer.alive)}): {claim}"


def describe_reader(reader: ReaderInfo) -> str:
    who = f"reader {reader.index} (pid {reader.pid}, {alive_text(reader.alive)})"
    if reader.group is None:
        what = f"next seq {optional(reader.next_seq)}, lag {optional(reader.lag)}"
    else:
        what = f"in group {reader.group!r}"
    buffers = ", ".join(map(str, reader.held_buffers))
    noun = "buffers" if len(reader.held_buffers) > 1 else "buffer"
    held = f", holds {noun} {buffers}" if buffers else ""
    return f"{who}: {what}, dropped {reader.dropped}{held}"


def describe_group(group: GroupInfo) -> str:
    if not group.members:
        return f"group {group.name!r}: no members; the next one goes on from cursor {group.cursor}"
    members = plural(group.members, "member")
    return f"group {group.name!r}: {members}, cursor {group.cursor}, lag {group.lag}"


def participant_lines(info: RingInfo) -> list[str]:
    """What ls and top print under a ring: its groups and readers with their lag, and any
    damage the snapshot found."""
    return [
        *(describe_group(group) for group in info.groups),
        *(describe_reader(reader) for reader in info.readers),
        *(f"problem: {problem}" for problem in info.problems),
    ]


# ---- tables ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column(Generic[T]):
    title: str
    cell: Callable[[T], str]
    numeric: bool = False  # right-aligned


def render(columns: Sequence[Column[T]], items: Sequence[T]) -> list[str]:
    """A header line and one line per item, columns padded to their widest cell."""
    table = [[c.title for c in columns], *([c.cell(item) for c in columns] for item in items)]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return [
        "  ".join(
            cell.rjust(width) if column.numeric else cell.ljust(width)
            for cell, width, column in zip(line, widths, columns, strict=True)
        ).rstrip()
        for line in table
    ]


def rate_column(title: str, pick: Callable[[Rate], float], scale: float = 1.0) -> Column[Row]:
    def cell(row: Row) -> str:
        return "-" if row.rate is None else f"{pick(row.rate) / scale:.1f}"

    return Column(title, cell, numeric=True)


NAME = Column[Row]("NAME", lambda row: row.info.name)
POLICY = Column[Row]("POLICY", lambda row: row.info.policy)
WRITERS = Column[Row]("WRITERS", lambda row: headcount(row.info.writers))
READERS = Column[Row]("READERS", lambda row: headcount(row.info.readers))
PUBLISHED = Column[Row]("PUBLISHED", lambda row: str(row.info.published), numeric=True)
FRAMES_PER_S = rate_column("FRAMES/S", lambda rate: rate.frames_per_s)
STATUS = Column[Row]("STATUS", lambda row: status(row.info))

LS_COLUMNS = [
    NAME,
    Column[Row]("SHAPE", lambda row: shape_text(row.info.shape)),
    Column[Row]("DTYPE", lambda row: row.info.dtype),
    POLICY,
    Column[Row]("SLOTS", lambda row: str(row.info.slots), numeric=True),
    Column[Row]("SIZE", lambda row: human_bytes(row.info.size_bytes), numeric=True),
    WRITERS,
    READERS,
    PUBLISHED,
    FRAMES_PER_S,
    Column[Row](
        "CREATOR", lambda row: f"pid {row.info.creator_pid} {alive_text(row.info.creator_alive)}"
    ),
    STATUS,
]

TOP_COLUMNS = [
    NAME,
    POLICY,
    PUBLISHED,
    FRAMES_PER_S,
    rate_column("MB/S", lambda rate: rate.bytes_per_s, scale=1e6),
    WRITERS,
    READERS,
    Column[Row]("MAX LAG", lambda row: optional(max_lag(row.info)), numeric=True),
    Column[Row]("DROPS", lambda row: str(total_drops(row.info)), numeric=True),
    rate_column("DROPS/S", lambda rate: rate.drops_per_s),
    STATUS,
]


def ring_table(
    columns: Sequence[Column[Row]], listing: Listing, earlier: Listing, patterns: Sequence[str]
) -> list[str]:
    """ls and top: one line per ring with its participants below it, then broken entries."""
    ring_rows = rows(listing, earlier)
    broken = [ring for ring in listing if isinstance(ring, BrokenRing)]
    if not ring_rows and not broken:
        matching = f" matching {' '.join(patterns)}" if patterns else ""
        return [f"no shmring rings in {SHM_DIR}{matching}"]
    table = render(columns, ring_rows)
    lines = table[:1]
    for line, row in zip(table[1:], ring_rows, strict=True):
        lines += [line, *(f"  {detail}" for detail in participant_lines(row.info))]
    lines += [
        f"{shown(b.name)}  BROKEN {b.kind} ({human_bytes(b.size_bytes)}): {b.error}" for b in broken
    ]
    if any(row.info.stale for row in ring_rows) or broken:
        lines.append(
            "`shmring gc` removes STALE rings and damaged ones nobody uses; "
            "files that are not rings are left alone"
        )
    return lines


# ---- inspect -----------------------------------------------------------------------------


def slot_columns(now_ns: int) -> list[Column[SlotInfo]]:
    def age(slot: SlotInfo) -> str:
        if slot.timestamp_ns is None:
            return "-"
        if slot.timestamp_ns > now_ns:  # the writer passed its own clock's stamp
            return f"t={slot.timestamp_ns}"
        return human_duration(now_ns - slot.timestamp_ns)

    return [
        Column("POSITION", lambda slot: str(slot.position), numeric=True),
        Column("SEQ", lambda slot: optional(slot.seq), numeric=True),
        Column("BUFFER", lambda slot: optional(slot.buffer), numeric=True),
        Column("STATE", lambda slot: slot.state),
        Column("AGE", age, numeric=True),
    ]


def section(title: str, lines: Sequence[str]) -> list[str]:
    return [f"{title} ({len(lines)})", *(f"  {line}" for line in lines or ["none"])]


def inspect_lines(info: RingInfo) -> list[str]:
    created = datetime.fromtimestamp(info.created_ns / 1e9).astimezone()
    facts = [
        ("format version", info.format_version),
        ("size", f"{human_bytes(info.size_bytes)} ({info.size_bytes:,} bytes)"),
        ("frame", f"up to {shape_text(info.shape)} {info.dtype} ({frame_bytes(info):,} bytes)"),
        ("policy", info.policy),
        ("slots", str(info.slots)),
        ("max readers", str(info.max_readers)),
        ("max writers", str(info.max_writers)),
        ("meta size", f"{info.meta_size} bytes per frame"),
        ("created", f"{created:%Y-%m-%d %H:%M:%S %z} by pid {info.creator_pid}"),
        ("creator", alive_text(info.creator_alive)),
        ("status", status(info)),
        ("head", f"{info.published} (frames published = the next sequence number)"),
        ("tail", f"{info.tail} (every frame before it is gone)"),
        ("in the ring", f"{plural(info.published - info.tail, 'frame')} (head - tail)"),
        ("free buffers", str(info.free_buffers)),
        ("writer mode", info.writer_mode),
        ("stream", "closed by every writer" if info.closed else "open"),
    ]
    width = max(len(label) for label, _ in facts)
    return [
        f"ring {info.name} ({info.path})",
        *(f"  {label.ljust(width)}  {value}" for label, value in facts),
        *section("writers", [describe_writer(writer) for writer in info.writers]),
        *section("readers", [describe_reader(reader) for reader in info.readers]),
        *section("groups", [describe_group(group) for group in info.groups]),
        f"slots ({info.slots})",
        *(f"  {line}" for line in render(slot_columns(info.snapshot_ns), info.slot_states)),
        *section("problems", info.problems),
    ]


# ---- top displays ------------------------------------------------------------------------


class Display(Protocol):
    hint: str

    def show(self, lines: list[str]) -> None: ...

    def wait(self, seconds: float) -> bool:
        """Pause between refreshes; True if the user asked to quit."""
        ...


class Lines:
    """Prints each refresh as a block of lines: for pipes, logs and tests."""

    hint = "Ctrl-C quits"

    def show(self, lines: list[str]) -> None:
        sys.stdout.write("\n".join(lines) + "\n\n")
        sys.stdout.flush()

    def wait(self, seconds: float) -> bool:
        time.sleep(seconds)
        return False


class Terminal:
    """Redraws in place on the terminal's alternate screen; `q` quits. The terminal is put
    in cbreak mode (keys arrive unbuffered, Ctrl-C still interrupts) and restored on exit."""

    hint = "q or Ctrl-C quits"

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(self.fd)

    def __enter__(self) -> Terminal:
        tty.setcbreak(self.fd)
        sys.stdout.write("\x1b[?1049h\x1b[?25l")  # alternate screen, hide the cursor
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            sys.stdout.write("\x1b[?25h\x1b[?1049l")
            sys.stdout.flush()
        finally:  # a terminal gone (EIO, EPIPE) must not leave the settings changed
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def show(self, lines: list[str]) -> None:
        width, height = shutil.get_terminal_size()
        body = "".join(f"{line[:width]}\x1b[K\n" for line in lines[: height - 1])
        sys.stdout.write(f"\x1b[H{body}\x1b[J")  # home, lines clearing their rest, clear below
        sys.stdout.flush()

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.fd], [], [], left)[0]:
                keys = os.read(self.fd, 64)
                if not keys or b"q" in keys.lower():
                    return True
        return False


def run_top(display: Display, args: argparse.Namespace) -> None:
    earlier = snapshot(args.patterns)
    if display.wait(RATE_WINDOW):
        return
    for iteration in itertools.count(1):
        listing = snapshot(args.patterns)
        rings = plural(sum(isinstance(ring, RingInfo) for ring in listing), "ring")
        header = (
            f"shmring top  {time.strftime('%H:%M:%S')}  {rings}  "
            f"every {args.interval:g} s  {display.hint}"
        )
        display.show([header, *ring_table(TOP_COLUMNS, listing, earlier, args.patterns)])
        earlier = listing
        if iteration == args.iterations or display.wait(args.interval):
            return


# ---- commands ----------------------------------------------------------------------------


@contextlib.contextmanager
def ring_errors(name: str) -> Iterator[None]:
    """Turn a missing or forbidden ring into a message that says what to do."""
    try:
        yield
    except FileNotFoundError:
        raise Refused(f"no ring named {name!r}; `shmring ls` lists the rings here") from None
    except PermissionError:
        raise Refused(
            f"not permitted to open or remove {name!r}: it belongs to another user; "
            "run as that user or as root"
        ) from None


def emit_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def cmd_ls(args: argparse.Namespace) -> int:
    earlier: Listing = []
    listing = snapshot(args.patterns)
    if not args.no_rate:
        earlier = listing
        time.sleep(RATE_WINDOW)
        listing = snapshot(args.patterns)
    if args.json:
        emit_json(
            {
                "rings": [row.to_dict() for row in rows(listing, earlier)],
                "broken": [ring.to_dict() for ring in listing if isinstance(ring, BrokenRing)],
            }
        )
    else:
        print("\n".join(ring_table(LS_COLUMNS, listing, earlier, args.patterns)))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    with ring_errors(args.name):
        info = inspect_ring(args.name)
    if args.json:
        emit_json(info.to_dict())
    else:
        print("\n".join(inspect_lines(info)))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    # Ctrl-C is how one leaves top, and SIGTERM (a service manager's stop) as cleanly.
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            # A screen redrawn in place is left (with all it showed) at exit: a run of
            # --iterations prints its blocks, to stay on the terminal.
            if args.iterations is None and sys.stdin.isatty() and sys.stdout.isatty():
                with Terminal() as terminal:
                    run_top(terminal, args)
            else:
                run_top(Lines(), args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_rm(args: argparse.Namespace) -> int:
    with ring_errors(args.name):
        unlink_ring(args.name, args.force, how_to_force=f"use `shmring rm --force {args.name}`")
    print(f"removed {args.name}")
    return 0


def why_stale(ring: RingInfo | BrokenRing) -> str:
    if isinstance(ring, BrokenRing):
        return f"broken ({ring.error})"
    return (
        f"creator pid {ring.creator_pid} and every writer dead, "
        f"{plural(ring.published, 'frame')} published, {human_bytes(ring.size_bytes)}"
    )


def others_owner(ring: RingInfo | BrokenRing) -> int | None:
    """The user owning `ring`'s file, if this process may not remove it: another user's,
    and this process is not root. None otherwise (or if the file is gone)."""
    if os.geteuid() == 0:
        return None
    try:
        owner = os.lstat(ring.path).st_uid
    except FileNotFoundError:
        return None  # remove_if_stale finds it gone
    return None if owner == os.geteuid() else owner


def cmd_gc(args: argparse.Namespace) -> int:
    garbage = [ring for ring in stale_rings() if matches(ring.name, args.patterns)]
    if not garbage:
        print("no stale rings")
    failures = 0
    for ring in garbage:
        name = shown(ring.name)
        owner = others_owner(ring)
        if owner is not None:
            whose = user_label(owner)
            print(f"leaving {name}: it belongs to {whose}; that user or root can remove it")
            continue
        if args.dry_run:
            print(f"would remove {name}: {why_stale(ring)}")
            continue
        try:
            with ring_errors(ring.name):
                removed = remove_if_stale(ring)
        except (Refused, ShmringError, OSError) as exc:
            report(args, f"cannot remove {name}: {exc}")
            failures += 1
            continue
        print(
            f"removed {name}: {why_stale(ring)}" if removed else f"kept {name}: it is in use again"
        )
    return 1 if failures else 0


# ---- arguments and main ------------------------------------------------------------------


def ring_name(text: str) -> str:
    """A ring's name, also given as its file in /dev/shm: shmring.NAME or its path."""
    name = text
    if os.path.dirname(text) == SHM_DIR and os.path.basename(text).startswith(PREFIX):
        name = os.path.basename(text)[len(PREFIX) :]
    elif text.startswith(PREFIX) and not os.path.lexists(segment_path(text)):
        name = text[len(PREFIX) :]  # the file name, unless a ring is really named so
    try:
        return validate_name(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc}; a ring's file /dev/shm/{PREFIX}NAME is accepted too"
        ) from None


def _checked(
    convert: Callable[[str], N], accept: Callable[[N], bool], expected: str
) -> Callable[[str], N]:
    def parse(text: str) -> N:
        with contextlib.suppress(ValueError):
            value = convert(text)
            if math.isfinite(value) and accept(value):  # (not inf, nan)
                return value
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")

    return parse


def positive(convert: Callable[[str], N]) -> Callable[[str], N]:
    return _checked(convert, lambda value: value > 0, "a positive number")


def non_negative(convert: Callable[[str], N]) -> Callable[[str], N]:
    return _checked(convert, lambda value: value >= 0, "0 or more")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmring",
        description="Observe and clean up shmring rings (/dev/shm/shmring.*). Apart from "
        "record, replay and bridge, which read or write the ring they work on, the tool only "
        "reads rings: it never attaches as a reader or writer and never takes a ring's lock.",
    )
    parser.add_argument("--version", action="version", version=f"shmring {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace], int], summary: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.set_defaults(run=run)
        return sub

    def patterns(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument(
            "patterns",
            nargs="*",
            metavar="NAME",
            help=f"only {what} whose name matches one of these shell patterns, e.g. 'cam*'",
        )

    ls = command("ls", cmd_ls, "list every ring on this machine")
    patterns(ls, "rings")
    ls.add_argument("--json", action="store_true", help="print JSON for scripts")
    ls.add_argument(
        "--no-rate",
        action="store_true",
        help=f"do not measure frames/s (which takes two snapshots {RATE_WINDOW} s apart)",
    )

    inspect = command("inspect", cmd_inspect, "show everything in one ring's header")
    inspect.add_argument("name", type=ring_name, metavar="NAME")
    inspect.add_argument("--json", action="store_true", help="print JSON for scripts")

    top = command("top", cmd_top, "live view of frames/s, MB/s, reader lag and drops")
    patterns(top, "rings")
    top.add_argument(
        "--interval", type=positive(float), default=1.0, help="seconds between refreshes"
    )
    top.add_argument(
        "--iterations", type=positive(int), help="print this many refreshes, then exit"
    )

    rm = command("rm", cmd_rm, "remove a ring (refused while a participant is alive)")
    rm.add_argument("name", type=ring_name, metavar="NAME")
    rm.add_argument(
        "--force",
        action="store_true",
        help="remove it even though processes use it (their mappings stay valid; nobody "
        "new can attach)",
    )

    gc = command("gc", cmd_gc, "remove stale rings (creator and every writer dead)")
    patterns(gc, "stale rings")
    gc.add_argument("--dry-run", action="store_true", help="list them, remove nothing")

    from ._record_cli import add_record_commands  # it imports this module's helpers

    add_record_commands(command)

    from ._bridge_cli import add_bridge_command  # likewise

    add_bridge_command(commands)
    return parser


def report(args: argparse.Namespace, message: str) -> None:
    print(f"shmring {args.command}: {' '.join(message.split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def show_warning(message: Warning | str, *_: object, **__: object) -> None:
        report(args, f"warning: {message}")  # one line, not Python's file:line form

    warnings.showwarning = show_warning
    try:
        return int(args.run(args))
    except BrokenPipeError:  # `shmring ls | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (Refused, ShmringError, OSError) as exc:
        report(args, str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
