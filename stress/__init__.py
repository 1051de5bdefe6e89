# Long-running hardening harnesses for shmring: `python -m stress.chaos`, `stress.fuzz`,
# `stress.soak` (also `make chaos`, `make fuzz`, `make soak`).
#
# This module holds what they share: unique ring names, the /dev/shm and /proc probes that
# prove nothing leaks, a frame pattern that makes a torn frame detectable, and StreamCheck,
# which a steady reader applies to every frame. Every frame is uint64 words `SALT ^ tag`,
# where the tag packs the writer's id and its own frame counter; word 0 of SALT is 0, so word
# 0 is the tag itself and a frame mixing two writes (or stale bytes) fails the comparison.
# A writer learns a frame's sequence number only when its write returns, too late to stamp
# it in: a StreamCheck made with `tie` keeps the number each STEADY frame came with, and
# `untied` compares them with the numbers the steady writer's writes returned.

from __future__ import annotations

import multiprocessing as mp
import os
import uuid
import warnings
from array import array
from dataclasses import asdict, dataclass, field
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

import numpy as np

from shmring import EndOfStream, Frame, RingReader

# `python -m stress.<harness>` makes multiprocessing re-run the harness module as
# __mp_main__ in each child, after the forkserver already imported it under its package name,
# and runpy warns about that. Nothing runs at import, so it is harmless; the forkserver
# imports this package, and its children inherit the filter.
warnings.filterwarnings("ignore", r"'stress\.\w+' found in sys\.modules", RuntimeWarning)

ROOT = Path(__file__).resolve().parent.parent
SHM_DIR = "/dev/shm"
SHM_PREFIXES = ("shmring.", ".shmring-tmp-")
COUNTER_BITS = 40
STEADY = 1  # writer id of the stream a steady reader checks for loss

_SALT = np.random.default_rng(0x5EED).integers(0, 2**63, 1 << 19, dtype=np.uint64)
_SALT[0] = 0


class TornFrame(AssertionError):
    """A frame's words do not all belong to one write."""


def forkserver(module: str) -> ForkServerContext:
    """A multiprocessing context whose children fork from a server that imported `module`
    (and with it numpy and shmring): a child costs a fork, not an interpreter start.

    A harness's process bodies must pickle under the module's package name: its
    `if __name__ == "__main__"` block runs the package's copy of the module, not __main__."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([module])
    return ctx


def ring_name(tag: str) -> str:
    """A ring name unique to this process and call (letters, digits and '_' only)."""
    return f"{tag}{os.getpid()}_{uuid.uuid4().hex[:6]}"


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, "shmring." + name)


def shm_entries() -> set[str]:
    """shmring segments and creation temp files currently in /dev/shm."""
    return {e for e in os.listdir(SHM_DIR) if e.startswith(SHM_PREFIXES)}


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    """Resident memory now (VmRSS) or at its peak (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def make_tag(writer: int, counter: int) -> int:
    return (writer << COUNTER_BITS) | counter


def split_tag(tag: int) -> tuple[int, int]:
    return tag >> COUNTER_BITS, tag & ((1 << COUNTER_BITS) - 1)


def stamp(out: np.ndarray, tag: int) -> None:
    """Fill a C-contiguous uint64 frame (at most 2**19 words) with the pattern of `tag`."""
    flat = out.reshape(-1)
    np.bitwise_xor(_SALT[: flat.size], np.uint64(tag), out=flat)


def verify(frame: np.ndarray) -> int:
    """The tag of a uint64 frame made by `stamp`; TornFrame if any word disagrees."""
    flat = frame.reshape(-1)
    tag = int(flat[0])
    if not np.array_equal(flat ^ _SALT[: flat.size], np.full(flat.size, tag, np.uint64)):
        raise TornFrame(f"frame with tag {tag:#x} mixes words of different writes")
    return tag


@dataclass
class StreamCheck:
    """What a steady reader verifies, frame by frame: the pattern (no torn frame), sequence
    numbers (each once, in order; gaps only as reported drops), each writer's counters (in
    order, once) and, when `lossless`, every frame of the STEADY writer. With `tie`, it keeps
    each STEADY frame's counter and sequence number in `steady_seqs` (pairs, flat), for
    `untied`; to_json leaves them out."""

    lossless: bool
    tie: bool = False
    frames: int = 0
    steady: int = 0
    dropped: int = 0
    excess: int = 0  # dropped beyond the numbers passed over: a skip of k stands for k frames
    next_seq: int = 0
    violations: list[str] = field(default_factory=list)
    last: dict[int, int] = field(default_factory=dict)  # writer id -> last counter
    steady_seqs: array[int] = field(default_factory=lambda: array("q"))

    def take(self, frame: Frame) -> None:
        self.frames += 1
        # Every number passed over counts at least one dropped frame: one lost (overwrite),
        # a number a dead writer claimed (published as a skip of one), or a skip of k frames,
        # which counts k (one, when an overwrite reader is lapped past it). The k - 1 beyond
        # its number add up in `excess`, which the harness checks against the skips made.
        passed = frame.seq - self.next_seq
        if passed < 0 or frame.dropped < passed:
            self.fail(f"frame seq {frame.seq} after {self.next_seq - 1}, dropped {frame.dropped}")
        else:
            self.excess += frame.dropped - passed
        self.dropped += frame.dropped
        self.next_seq = frame.seq + 1
        try:
            writer, counter = split_tag(verify(frame.array))
        except AssertionError as exc:
            self.fail(f"frame seq {frame.seq}: {exc}")
            return
        last = self.last.get(writer, -1)
        if counter <= last:
            self.fail(f"writer {writer}: frame {counter} after {last} (duplicate or reordered)")
        elif writer == STEADY and self.lossless and counter != last + 1:
            self.fail(f"steady writer: frame {counter} after {last}: lost frames")
        self.last[writer] = counter
        self.steady += writer == STEADY
        if self.tie and writer == STEADY:
            self.steady_seqs.extend((counter, frame.seq))

    def fail(self, what: str) -> None:
        if len(self.violations) < 20:
            self.violations.append(what)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["last"] = {str(writer): counter for writer, counter in self.last.items()}
        del data["steady_seqs"]  # two numbers a frame: sent apart, where asked for
        return data


def untied(steady_seqs: array[int], returned: array[int]) -> list[str]:
    """STEADY frames that came with another sequence number than their write returned:
    `steady_seqs` as a StreamCheck with `tie` kept them (counter, seq pairs), `returned`
    the steady writer's results by counter (shorter if its last writes did not return)."""
    counters, seqs = np.frombuffer(steady_seqs, np.int64).reshape(-1, 2).T
    expected = np.append(np.frombuffer(returned, np.int64), -1)  # -1: for a write not returned
    wanted = expected[np.minimum(counters, expected.size - 1)]
    bad = np.flatnonzero(seqs != wanted).tolist()
    return [
        f"steady frame {counters[i]} came as seq {seqs[i]}; its write returned "
        + (str(wanted[i]) if wanted[i] >= 0 else "nothing")
        for i in bad[:10]
    ] + [f"and {len(bad) - 10} more steady frames so"] * (len(bad) > 10)


def check_next(reader: RingReader, check: StreamCheck, timeout: float) -> bool:
    """Read and check the next frame; False at end of stream. (No frame outlives the call:
    its view would keep a closed reader's mapping, and file descriptor, open.)"""
    try:
        frame = reader.read(timeout)
    except EndOfStream:
        return False
    with frame:
        check.take(frame)
    return True
