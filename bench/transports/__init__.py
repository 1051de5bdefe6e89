# The transport plug-in contract and the registry of transports.
#
# Rules: a transport is a Transport subclass in its own module, registered below by name; it
# lists the topologies (bench/cell.py) it takes part in and reads cell.topology to wire itself
# (who creates the channel, how many producers, whether consumers share the work). The
# parent calls prepare() (create what must exist before the children start, e.g. OS handles that
# only pass at spawn time; return a picklable endpoint) and cleanup() (always, even after a kill).
# Each child calls open_producer() or open_consumer() with that endpoint. A Producer's send(seq,
# t_ns) stamps and publishes one frame (copy-in transports stamp their source frame and copy it;
# zero-copy ones stamp the slot in place); a Consumer's frames yield each received frame as a uint8
# ndarray of the cell's shape — what a NumPy consumer works with — and hold it until the next one
# is asked for. Modules import their peer library at the top: a module that fails to import is a
# transport reported as skipped, with the ImportError as the reason.
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from bench.cell import Cell
from bench.frames import Frame

Topologies = frozenset[str]


def _nothing() -> None:
    return None


class Producer:
    """A cell's sending end, made of closures so the per-frame call does no attribute lookups."""

    def __init__(
        self,
        send: Callable[[int, int], None],
        close: Callable[[], None] = _nothing,
        start: Callable[[int], None] | None = None,
    ) -> None:
        self.send = send
        self.close = close
        # start(consumers): called once every process has opened its end, before the first frame.
        self.start = start or (lambda consumers: None)


class Consumer:
    """A cell's receiving end. close() must first close the frames generator."""

    def __init__(self, frames: Iterator[Frame], close: Callable[[], None] = _nothing) -> None:
        self.frames = frames
        self.close = close


class Transport:
    name: ClassVar[str]
    # "shmring", "peer", "limit" (in-process copy), "alone" (shmring's writer with no reader
    # process), "floor" (the kernel's wake-up floor) or "wake" (a blocked shmring reader,
    # measured beside the floors)
    kind: ClassVar[str] = "peer"
    topologies: ClassVar[Topologies] = frozenset()  # the topologies it takes part in
    spinning_reader: ClassVar[bool] = False  # the reader burns a core instead of blocking
    # It may drop any frame by design (PUB/SUB): its losses are reported, not a failure, and
    # its PHASE_END is re-sent until acknowledged (topologies with one producer only).
    drops: ClassVar[bool] = False
    # Every frame its writer sends becomes visible to a reader (False: a frame may be discarded
    # inside the writer's process, so its writer frames/s is not ranked against the others').
    writes_reach_reader: ClassVar[bool] = True
    # Its writer copies every frame into the channel, write()'s job (False: it fills the slot or
    # loaned sample in place, claim's job). A peer ranks only against the shmring way doing the
    # same job (bench/analysis.py).
    copies: ClassVar[bool] = True

    # Parent side.
    def prepare(self, cell: Cell, ctx: Any) -> Any:
        """Create what must exist before the children start; return the picklable endpoint."""
        return None

    def cleanup(self) -> None:
        """Remove what prepare() created; runs after the children are gone (or killed)."""

    # Child side.
    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        raise NotImplementedError

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        raise NotImplementedError


class OneWayPipe(Transport):
    """Base of the transports that move frames through one multiprocessing.Pipe: the
    endpoint is its (receive end, send end) pair, closed in the parent after the run."""

    def prepare(self, cell: Cell, ctx: Any) -> Any:
        self._ends = ctx.Pipe(duplex=False)  # (receive end, send end)
        return self._ends

    def cleanup(self) -> None:
        for end in self._ends:
            end.close()


# name -> "module:Class"; the order is the order of tables and plots.
REGISTRY: dict[str, str] = {
    "shmring-write": "bench.transports.shmring:Write",
    "shmring-claim": "bench.transports.shmring:Claim",
    "shmring-spin": "bench.transports.shmring:SpinningReader",
    "shmring-sleep": "bench.transports.shmring:SleepingReader",
    "shmring-latest": "bench.transports.shmring:Latest",
    "shmring-write-alone": "bench.transports.shmring:WriteAlone",
    "shmring-overwrite-alone": "bench.transports.shmring:OverwriteAlone",
    "shmring-overwrite-lagging": "bench.transports.shmring:OverwriteLagging",
    "textbook-ring": "bench.transports.textbook:TextbookRing",
    "textbook-latest": "bench.transports.textbook:TextbookLatest",
    "mp-queue": "bench.transports.mpqueue:MpQueue",
    "mp-pipe": "bench.transports.mppipe:MpPipe",
    "faster-fifo": "bench.transports.fasterfifo:FasterFifo",
    "pyzmq": "bench.transports.pyzmq:PushPull",
    "pyzmq-pubsub": "bench.transports.pyzmq:PubSub",
    "pyzmq-conflate": "bench.transports.pyzmq:Conflate",
    "iceoryx2-poll": "bench.transports.iox2:Polling",
    "iceoryx2-event": "bench.transports.iox2:EventWait",
    "iceoryx2-loan": "bench.transports.iox2:Loan",
    "iceoryx2-loan-poll": "bench.transports.iox2:LoanPolling",
    "iceoryx2-latest": "bench.transports.iox2:Latest",
    "memcpy-hot": "bench.transports.memcpy:CacheHot",
    "memcpy-ring": "bench.transports.memcpy:StrictRing",
    "floor-futex": "bench.transports.floor:Futex",
    "floor-pipe": "bench.transports.floor:Pipe",
}


def load(name: str) -> type[Transport]:
    """The transport class; ImportError (with the peer's own message) when it is unavailable."""
    module_name, _, class_name = REGISTRY[name].partition(":")
    cls: type[Transport] = getattr(importlib.import_module(module_name), class_name)
    return cls


def skip_reason(name: str) -> str | None:
    """None when the transport imports, else why not (reported, never silently dropped)."""
    try:
        load(name)
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
