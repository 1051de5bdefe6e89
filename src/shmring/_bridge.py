# Bridges: extend a ring across hosts over Eclipse Zenoh (the `bridge` extra).
#
# BridgeSender reads a local ring as a reader of its own group and publishes every frame on a
# Zenoh key; BridgeReceiver subscribes to that key and writes every frame into a local ring
# it creates with the sender's geometry. Programs on either side use rings as usual.
#
# Rules:
#   - The wire format is _bridge_wire.py's; Zenoh carries it. Lossless (default): reliable,
#     congestion control `block`, and the sender takes no frame from its ring while no
#     receiver matches its key, so a slow or absent receiver holds back the ring's writer
#     through the `block` policy instead of losing frames. Latest (`latest=True`):
#     congestion control `drop`; the receiver's ring defaults to `overwrite`.
#   - Gaps: every sample carries the source ring's sequence number. A receiver counts a jump
#     in it (a sender restarted, the link dropped, Zenoh dropped under `latest`) as dropped
#     frames in its stats, logs it, and publishes it into the local ring as one gap
#     (RingWriter.skip), which its readers count in `dropped` like frames lost locally; a
#     frame is never written torn or twice.
#   - A stream's end (its ring closed, or its writers died) reaches receivers as an END
#     sample, and they close their rings (whose readers drain and get EndOfStream). The
#     sender stays attached: a writer that joins that ring again starts the next stream, none
#     of whose frames it misses; a ring removed or replaced is attached to anew.
#   - Never a hang: every wait of the bridge's own is a slice of at most POLL seconds that
#     re-checks the stop flag, and close() does not wait for a put that Zenoh blocks
#     (lossless, a stalled link). Nothing ends such a put before Zenoh gives up on the link
#     (`wait_before_close`, 5 s by default; closing the session waits for it too), so the
#     sender's thread closes its session itself once the put returns (`closing`), and at
#     interpreter exit the process waits for that (_finish_closing); `bridge send` exits at
#     once instead. So close() returns within about a second whatever the peers do (a
#     stopped participant of the local ring that holds its header lock adds the ring's own
#     close limits: up to ~4 s, then ParticipantStalled).
#   - Zenoh calls the bridges' callbacks on its own threads (_on_zenoh_thread): its default,
#     a non-daemon Python thread per subscriber that ends only with the session, kept a
#     program that never closed its bridges from exiting. A bridge left open closes at
#     interpreter exit, after the program's threads have ended (_close_left_open).
#   - /dev/shm: Zenoh's own shared-memory transport is always turned off. It adds a
#     `<number>.zenoh` file to /dev/shm that a SIGKILLed session leaves behind, and the
#     frames are in shared memory already; a receiver removes the ring it created at close.
#   - Nothing listens on a port unless asked: with no --config the endpoints are exactly the
#     ones given, multicast scouting is off, and a config file that names no listen
#     endpoints gets none (Zenoh's default would listen on every interface).
#   - Zenoh is imported when a bridge is made, so `import shmring` works without the extra.
#   - A constructor that fails once the session is open (a Zenoh error, a `key` of the wrong
#     type, Ctrl-C) closes it, and a ring a first frame made, before raising: else they, and
#     the ports the session listens on, would live as long as the exception (a caller's log,
#     a retry loop).
#
# Copies per frame: sender, ring → the sample's buffer (header + metadata + frame, reused
# frame after frame: _bridge_wire.FrameEncoder) → Zenoh's buffer (zenoh-python 1.10 copies
# any bytes or bytearray it is given); receiver, Zenoh's buffer → bytes
# (the abi3 wheel has no buffer protocol on ZBytes) → the ring's slot. Two on each side:
# docs/API.md ("Copies") says why the binding allows no fewer.

from __future__ import annotations

import atexit
import importlib
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from math import prod
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from . import _sys
from ._bridge_wire import (
    FLAG_LATEST,
    FLAG_WRITER_GONE,
    KIND_END,
    BridgeError,
    Decoder,
    FrameEncoder,
    Geometry,
    MalformedSample,
    Sample,
    encode_header,
)
from ._errors import (
    EndOfStream,
    IncompatibleRing,
    RingExists,
    RingNotFound,
    RingTimeout,
    WriterGone,
)
from ._inspect import RingInfo, inspect_ring, inspect_segment
from ._layout import LIMITS, MAX_READERS, MAX_SKIP_COUNT, positive_int
from ._reader import RingReader
from ._segment import validate_name
from ._writer import RingWriter, create_like, created_or_attached

if TYPE_CHECKING:
    import zenoh

POLL = 0.1  # seconds: the longest slice of any wait (stop flag re-checked after each)
OPENING_NOTICE = 1.0  # seconds a session may take to open before the bridge says so
LOG = logging.getLogger("shmring.bridge")
WARN_EVERY = 1.0  # seconds: at most one warning of each kind (samples skipped, frames lost)
RETRY = {"period_init_ms": 200, "period_max_ms": 1000, "period_increase_factor": 2}
# A lossless sender's queue of batches (of up to 64 KiB) for data, Zenoh's default 2 unless a
# config file sets it: with 2, put() blocked while the link thread sent (docs/performance.md,
# "64 KiB: where the time went"). Not under --latest: there a longer queue would hold older
# frames before any is dropped.
DATA_QUEUE, LOSSLESS_QUEUE = "transport/link/tx/queue/size/data", 8
# A receiver frees every sample's bytes (and Zenoh its buffers) as the next arrives; by
# default glibc hands freed memory beyond 128 KiB back to the kernel and faults it in again
# for the next samples (docs/performance.md, "Bridge: the receiver's page faults"). Kept
# instead, up to this much per allocator arena.
KEEP_FREED_BYTES = 64 << 20
# The sender's reader never polls: it sleeps until the writer wakes it. Its process runs
# Zenoh's threads, which need a CPU the moment it takes a frame, beside the processes on
# either side of the ring and the link; polling (or napping, then polling, on a steady
# stream) took it from them (docs/performance.md, "Bridge: the sender's reader sleeps").
SENDER_SPIN = 0.0
# Senders' threads that close their sessions themselves (BridgeSender._close_session), and how
# long interpreter exit waits for each: past Zenoh's wait_before_close, with a margin.
_CLOSING: set[threading.Thread] = set()
CLOSING_LIMIT = 10.0


_OPEN: weakref.WeakSet[_Bridge] = weakref.WeakSet()  # bridges whose close() has not begun


@atexit.register
def _finish_closing() -> None:
    """Wait for the senders' threads still in a put Zenoh blocks: one that got its put back
    while the interpreter finalized would abort the process ("exception not rethrown")."""
    for thread in list(_CLOSING):
        thread.join(CLOSING_LIMIT)


@atexit.register  # (after _finish_closing: atexit runs the last registered first)
def _close_left_open() -> None:
    """Close every bridge the program left open, once its threads have ended (module
    rules): its session then ends before the interpreter does."""
    for bridge in list(_OPEN):
        try:
            bridge.close()
        except Exception as exc:  # the others still close; the program is ending anyway
            LOG.warning("%s: closing it at exit failed: %s", bridge._what, exc)


def _on_zenoh_thread(callback: Callable[[Any], None]) -> Any:
    """`callback`, to be run by Zenoh on its own thread. Zenoh's default hands samples to a
    non-daemon Python thread that ends only with the session (a program that never closed
    its bridge never exited) through a queue of 256 samples (a receiver whose local reader
    was slow took 256 frames into memory before the link felt it: 1.6 GB at 1080p, lost at
    close). `indirect` is marked unstable in zenoh-python 1.10."""
    return _zenoh().handlers.Callback(callback, indirect=False)


def _zenoh() -> ModuleType:
    try:
        return importlib.import_module("zenoh")
    except ImportError:
        raise BridgeError(
            "bridges need Eclipse Zenoh: pip install 'shmring[bridge]' (eclipse-zenoh)"
        ) from None


def default_key(ring: str) -> str:
    return f"shmring/{ring}"


def _checked_key(key: object, ring: str) -> str:
    """`key`, or the default for `ring` if None; TypeError or ValueError naming it."""
    if key is None:
        return default_key(ring)
    if not isinstance(key, str):
        raise TypeError(f"key must be a Zenoh key expression (a str) or None, got {key!r}")
    if not key:
        raise ValueError("key must not be empty: give a Zenoh key, or None for shmring/RING")
    return key


def _checked_flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return value


def receiver_token(key: str, zid: str) -> str:
    """The liveliness token by which a receiver of `key` tells senders it is there."""
    return f"{key}/@shmring-receiver/{zid}"


def zenoh_config(
    listen: Sequence[str] = (),
    connect: Sequence[str] = (),
    config: str | None = None,
    *,
    lossless_sender: bool = False,
) -> zenoh.Config:
    """The Zenoh configuration of a bridge: `config` (a JSON5 file) if given, then the
    endpoints, then the rules at the top of this module (and LOSSLESS_QUEUE)."""
    z = _zenoh()
    for what, endpoints in (("listen", listen), ("connect", connect)):
        if isinstance(endpoints, str):  # a sequence of one-letter endpoints otherwise
            raise TypeError(
                f"{what} takes a list of endpoints, got the str {endpoints!r}: pass "
                f"{what}=[{endpoints!r}]"
            )
    for what, endpoints in (("listen", listen), ("connect", connect)):
        for endpoint in endpoints:
            _check_endpoint(endpoint, what)
    if config is None and not listen and not connect:
        raise BridgeError(
            "no Zenoh endpoint: give listen endpoints (--listen, e.g. tcp/127.0.0.1:7447) "
            "on one side and connect endpoints (--connect) to them on the other, or a "
            "config file (--config)"
        )
    try:
        cfg: zenoh.Config = z.Config.from_file(config) if config is not None else z.Config()
    except z.ZError as exc:
        raise BridgeError(f"cannot read the Zenoh config file {config!r}: {_said(exc)}") from None
    try:
        settings: dict[str, object] = {"transport/shared_memory/enabled": False}
        if config is None:
            settings.update(
                {"mode": "peer", "scouting/multicast/enabled": False, "connect/retry": RETRY}
            )
        if listen or cfg.get_json("listen/endpoints") == z.Config().get_json("listen/endpoints"):
            settings["listen/endpoints"] = list(listen)
        if connect:
            settings["connect/endpoints"] = list(connect)
        if lossless_sender and cfg.get_json(DATA_QUEUE) == z.Config().get_json(DATA_QUEUE):
            settings[DATA_QUEUE] = LOSSLESS_QUEUE
        for key, value in settings.items():
            cfg.insert_json5(key, json.dumps(value))
    except z.ZError as exc:
        raise BridgeError(f"bad Zenoh configuration: {_said(exc)}") from None
    if lossless_sender:
        _refuse_unreliable_links(cfg)
    return cfg


# Zenoh endpoints: PROTOCOL/ADDRESS[?metadata][#config]; these protocols' addresses are
# HOST:PORT. Zenoh accepts a connect endpoint it can never reach (no port, port 0, a port
# past 65535) and retries it for ever.
_PORTED_PROTOCOLS = ("tcp", "udp", "tls", "quic", "ws")
_HOST_PORT = re.compile(r"(?P<host>[^?#]*):(?P<port>[^:?#]*)(?:[?#].*)?")


def _check_endpoint(endpoint: object, what: str) -> None:
    if not isinstance(endpoint, str):
        raise TypeError(f"{what} endpoints are str, got {endpoint!r}")
    protocol, _, address = endpoint.partition("/")
    if protocol not in _PORTED_PROTOCOLS:
        return
    parts = _HOST_PORT.fullmatch(address)
    if parts is None or not parts["port"].isdigit():
        wrong = "has no port"
    elif not parts["host"]:
        wrong = "has no host"
    elif not int(parts["port"]) <= 65535 or (what == "connect" and int(parts["port"]) == 0):
        wrong = f"has port {parts['port']}, which no peer listens on"
    else:
        return
    raise BridgeError(
        f"the {what} endpoint {endpoint!r} {wrong}: write {protocol}/HOST:PORT, PORT 1-65535, "
        f"e.g. {protocol}/127.0.0.1:7447"
    )


def _refuse_unreliable_links(cfg: zenoh.Config) -> None:
    """A lossless sender's links must be reliable: Zenoh's udp/ links drop what the network
    drops (a bridge over one lost frames, counted only as gaps by its receivers)."""
    for what in ("listen", "connect"):
        unreliable = [e for e in _endpoints(cfg, what) if e.startswith("udp/")]
        if unreliable:
            raise BridgeError(
                f"a lossless bridge cannot {what} on {', '.join(unreliable)}: udp/ links drop "
                "what the network drops; use tcp/, tls/, quic/ or unixsock-stream/, or "
                "--latest (latest=True), which may lose frames anyway"
            )


def _endpoints(cfg: zenoh.Config, what: str) -> list[str]:
    """The `what` ("listen" or "connect") endpoints of a Zenoh config."""
    endpoints = json.loads(cfg.get_json(f"{what}/endpoints"))
    if isinstance(endpoints, dict):  # (per mode: {"peer": [...], ...})
        endpoints = [e for mode in endpoints.values() for e in mode]
    return [e for e in endpoints if isinstance(e, str)]


def _said(error: Exception) -> str:
    """What a Zenoh error says, without the Rust source locations it appends."""
    return re.sub(r" at /\S+\.rs:\d+\.?", "", str(error))


def _open_session(
    listen: Sequence[str], connect: Sequence[str], config: str | None, lossless_sender: bool
) -> Any:
    """Open the bridge's Zenoh session, waiting for it in slices of POLL while a thread of
    its own opens it: zenoh.open waits for a peer for ever under some configs (a client's
    connect timeout_ms -1), and a signal's handler (Ctrl-C, the CLI's SIGTERM) runs only
    between slices. An exception in the wait abandons the opening (_Opening)."""
    z = _zenoh()
    cfg = zenoh_config(listen, connect, config, lossless_sender=lossless_sender)
    opening = _Opening(z, cfg)
    try:
        opening.start()  # (in the try: a signal once its thread runs abandons it)
        told_at = time.monotonic() + OPENING_NOTICE
        while not opening.done.wait(POLL):
            if time.monotonic() >= told_at:  # once: what it waits for, on the CLI's stderr
                told_at = float("inf")
                LOG.info(
                    "the Zenoh session has not opened after %g s: its config waits for a "
                    "peer or router to answer (connect endpoints: %s)",
                    OPENING_NOTICE,
                    ", ".join(_endpoints(cfg, "connect")) or "none",
                )
        return opening.session()
    except BaseException:
        opening.abandon()
        raise


class _Opening:
    """zenoh.open(config) on a daemon thread: a session it opens after its caller gave up
    (abandon) is closed there, not left open for the rest of the process."""

    def __init__(self, z: ModuleType, config: zenoh.Config) -> None:
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self._session: Any = None
        self._error: Exception | None = None
        self._z = z
        self._thread = threading.Thread(
            target=self._open, args=(config,), name="shmring-bridge-open", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _open(self, config: zenoh.Config) -> None:
        try:
            session = self._z.open(config)
        except Exception as exc:  # (ZError) raised in the caller's thread: session()
            self._error = exc
            session = None
        with self._lock:
            abandoned, self._session = self._abandoned, session
        if abandoned and session is not None:
            session.close()
        self.done.set()

    def session(self) -> Any:
        """The open session, once `done`; or the failure, as a BridgeError."""
        if self._error is not None:
            if not isinstance(self._error, self._z.ZError):
                raise self._error
            raise BridgeError(
                f"cannot open a Zenoh session: {_said(self._error)}; check the --listen/"
                "--connect endpoints (a port in use, an address this host does not have) and "
                "the --config file"
            ) from None
        return self._session

    def abandon(self) -> None:
        """The caller gives up: close the session if it is open, else when it opens."""
        with self._lock:
            self._abandoned = True
            session, self._session = self._session, None
        if session is not None:
            session.close()


@dataclass(frozen=True)
class BridgeStats:
    """Counters of one bridge since it started; `state` says what it is doing now."""

    frames: int = 0  # frames sent (sender) or written into the local ring (receiver)
    bytes: int = 0  # their frame bytes (metadata and headers not counted)
    dropped: int = 0  # receiver: gaps in the stream; sender: frames its ring dropped, and
    # (latest) frames it took while too few receivers were there
    malformed: int = 0  # receiver: samples that did not decode, skipped
    rejected: int = 0  # receiver: samples of another geometry or repeated, skipped
    peers: int = 0  # Zenoh peers and routers connected now
    receivers: int = 0  # sender: receivers subscribed to its key now
    state: str = "starting"


@dataclass
class _Counters:
    """BridgeStats as the one thread that counts (worker or Zenoh callback) updates them."""

    frames: int = 0
    bytes: int = 0
    dropped: int = 0
    malformed: int = 0
    rejected: int = 0
    receivers: int = 0
    state: str = "starting"


class _Bridge:
    """What both ends share: a Zenoh session, a worker, stats, close within a second."""

    _what = "bridge"

    def __init__(
        self,
        listen: Sequence[str],
        connect: Sequence[str],
        config: str | None,
        lossless_sender: bool = False,
    ):
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._n = _Counters()
        self._closed = False
        self._peers_at_close: int | None = None  # close()'s snapshot, once it took one
        self._session: Any = None
        try:  # (from the session's open on: a signal anywhere after it is cleaned up too)
            self._session = _open_session(listen, connect, config, lossless_sender)
            _OPEN.add(self)
            self._start()
        except BaseException:
            self._closed = True  # a thread or callback already running stops, unlogged
            _OPEN.discard(self)
            self._stop.set()
            if self._session is not None:
                try:
                    self._session.close()
                finally:
                    self._leave_rings()
            raise

    def _start(self) -> None:
        """The rest of the constructor, once the session is open: declarations, threads. A
        failure closes the session, and leaves what its callbacks took, before it is raised."""
        raise NotImplementedError

    def _leave_rings(self) -> None:
        """Leave the rings the session's callbacks attached to or created (a receiver's)."""

    def stats(self) -> BridgeStats:
        """The counters now; after close(), final, with the peers connected as it closed."""
        peers = self._peers() if self._peers_at_close is None else self._peers_at_close
        return BridgeStats(**asdict(self._n), peers=peers)

    def _peers(self) -> int:
        info = self._session.info
        return len(list(info.peers_zid())) + len(list(info.routers_zid()))

    def _fail(self, exc: BaseException) -> None:
        if self._closed:  # a step cut short by close() (e.g. a put the session's close ended)
            LOG.debug("%s: %s while closing", self._what, exc)
            return
        LOG.error("%s failed: %s", self._what, exc, extra={"bridge_failed": True})
        self._error = exc
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` s; True once the bridge stopped. Re-raises what stopped it."""
        self._stop.wait(timeout)
        if self._error is not None:
            raise self._error
        return self._stop.is_set()

    def close(self) -> None:
        """Stop, leave the rings (a receiver removes the ring it created) and the session."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        self._stop.set()
        try:
            self._shutdown()
        finally:
            try:
                self._peers_at_close = self._peers()  # what stats() says from now on
            finally:
                self._close_session()

    def _shutdown(self) -> None:
        raise NotImplementedError

    def _close_session(self) -> None:
        self._session.close()

    @property
    def closing(self) -> bool:
        """After close(): the bridge's thread has yet to close its Zenoh session (a sender
        whose put Zenoh blocks; see BridgeSender)."""
        return False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class BridgeSender(_Bridge):
    """Publishes every frame of local ring `ring` on Zenoh key `key` (default
    "shmring/RING") from a background thread, until close(). Waits for the ring to exist;
    after its stream ends it stays attached (a writer that joins again starts the next
    stream) until the ring is removed or replaced. Lossless (not `latest`), it
    takes no frame from the ring while fewer than `wait_receivers` receivers are there."""

    def __init__(
        self,
        ring: str,
        *,
        key: str | None = None,
        listen: Sequence[str] = (),
        connect: Sequence[str] = (),
        config: str | None = None,
        latest: bool = False,
        wait_receivers: int = 1,
    ) -> None:
        self.ring = validate_name(ring)
        self.key = _checked_key(key, ring)
        self.latest = _checked_flag(latest, "latest")
        self.wait_receivers = positive_int(wait_receivers, "wait_receivers", 0, MAX_READERS)
        self._receivers: set[str] = set()
        self._what = f"bridge send {ring}"
        super().__init__(listen, connect, config, lossless_sender=not latest)

    def _start(self) -> None:
        z = _zenoh()
        try:
            self._publisher = self._session.declare_publisher(
                self.key,
                congestion_control=z.CongestionControl.DROP
                if self.latest
                else z.CongestionControl.BLOCK,
                reliability=z.Reliability.RELIABLE,
            )
            self._tokens = self._session.liveliness().declare_subscriber(
                receiver_token(self.key, "*"), _on_zenoh_thread(self._on_token), history=True
            )
        except z.ZError as exc:
            raise BridgeError(f"cannot publish on key {self.key!r}: {_said(exc)}") from None
        self._handoff = threading.Lock()  # who closes the session: see _close_session
        self._thread_done = self._thread_closes_session = False
        self._thread = threading.Thread(target=self._run, name=self._what, daemon=True)
        self._thread.start()

    def _on_token(self, sample: zenoh.Sample) -> None:
        """Zenoh's callback: a receiver appeared (PUT) or left (DELETE)."""
        token = str(sample.key_expr)
        if sample.kind == _zenoh().SampleKind.PUT:
            self._receivers.add(token)
        else:
            self._receivers.discard(token)
        self._n.receivers = len(self._receivers)

    def _ready(self) -> bool:
        """Enough receivers are there to send a frame to. Until then a lossless sender takes
        no frame; a latest one takes them and counts them as dropped."""
        return len(self._receivers) >= self.wait_receivers and bool(
            self._publisher.matching_status.matching
        )

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                attached = self._attach()
                if attached is None:
                    continue
                reader, info = attached
                with reader:
                    self._pump(reader, info)
        except BaseException as exc:  # reported by wait(); the thread must not die silently
            self._fail(exc)
        finally:
            with self._handoff:
                self._thread_done = True
                closes_session = self._thread_closes_session
            if closes_session:
                try:
                    self._session.close()
                finally:
                    _CLOSING.discard(self._thread)

    def _attach(self) -> tuple[RingReader, RingInfo] | None:
        """The ring as a reader of its own group, and its header; None to try again."""
        self._n.state = f"waiting for ring {self.ring}"
        try:
            reader = RingReader.attach(self.ring, start="latest", timeout=POLL, spin=SENDER_SPIN)
        except (RingNotFound, RingTimeout):
            return None
        try:
            info = inspect_segment(reader._p.segment)  # (its writer may have removed the name)
        except BaseException:
            reader.close()
            raise
        LOG.info("%s: attached to ring %s (%s)", self._what, self.ring, _describe(info))
        return reader, info

    def _pump(self, reader: RingReader, info: RingInfo) -> None:
        """Forward frames until the ring is removed or replaced, or the bridge stops. When
        its stream ends (or its writers die), receivers are told, and the reader stays: a
        writer that joins the ring again (a supervisor's ring, its writer restarted) starts
        the next stream, every frame of it forwarded."""
        geometry = geometry_of(info)
        flags = FLAG_LATEST if self.latest else 0
        encoder = FrameEncoder(flags=flags, stream=info.created_ns, geometry=geometry)
        put = self._publisher.put
        taken = -1  # the ring's number of the last frame taken (sent or not)
        unsent = 0  # frames lost since the last one sent that numbers do not show (the wire's
        # `lost`): a skip in the ring stands for many frames; frames taken but not sent
        ended = False  # the stream ended: receivers were told
        n = self._n
        while not self._stop.is_set():
            ready = self._ready()
            if not ready and not self.latest:
                wanted = self.wait_receivers
                n.state = f"waiting for {wanted} receiver{'s' if wanted != 1 else ''}"
                self._stop.wait(POLL / 10)
                continue
            n.state = "sending" if ready else "dropping: too few receivers"
            try:
                frame = reader.read(timeout=POLL)
            except RingTimeout:
                continue
            except (EndOfStream, WriterGone) as end:
                if not ended:
                    gone = FLAG_WRITER_GONE if isinstance(end, WriterGone) else 0
                    header = encode_header(
                        kind=KIND_END,
                        flags=flags | gone,
                        stream=info.created_ns,
                        seq=taken + 1,
                        timestamp_ns=time.monotonic_ns(),
                        geometry=geometry,
                        shape=geometry.shape,
                        meta_len=0,
                        lost=unsent,
                    )
                    z = _zenoh()
                    self._session.put(
                        self.key, header, congestion_control=z.CongestionControl.BLOCK
                    )
                    LOG.info("%s: stream of ring %s ended (%s)", self._what, self.ring, end)
                    ended, unsent = True, 0
                if self._replaced(info):
                    return
                n.state = f"stream ended; waiting for a writer of ring {self.ring}"
                self._stop.wait(POLL)
                continue
            ended = False
            with frame:
                n.dropped += frame.dropped + (not ready)
                if taken >= 0:  # (before the first frame: not this sender's stream)
                    unsent += max(frame.dropped - (frame.seq - taken - 1), 0)
                taken = frame.seq
                if not ready:
                    continue
                array = frame.array
                size = array.nbytes
                payload = encoder.encode(
                    taken, frame.timestamp_ns, array.shape, frame.meta, _bytes(array), unsent
                )
                unsent = 0
            put(payload)  # the frame is back in the ring: its bytes are in the payload
            n.frames += 1
            n.bytes += size

    def _replaced(self, info: RingInfo) -> bool:
        """Whether ring `info` was removed, or another ring now has its name."""
        try:
            return inspect_ring(self.ring).created_ns != info.created_ns
        except RingNotFound:
            return True

    def _shutdown(self) -> None:
        self._thread.join(2 * POLL)
        if self._thread.is_alive():  # in a put Zenoh blocks, which holds the publisher
            return  # (undeclaring it would raise): closing the session undeclares all
        self._tokens.undeclare()
        self._publisher.undeclare()

    def _close_session(self) -> None:
        """Close the session, unless the thread is still in a put that Zenoh blocks
        (lossless, receivers behind). Nothing ends that put before Zenoh gives up on the
        link (`wait_before_close`, 5 s by default), and closing the session waits for it;
        so the thread closes the session itself when its put returns, and leaves the ring
        then. close() returns meanwhile, and a process that exits leaves at once."""
        with self._handoff:
            if not self._thread_done:
                self._thread_closes_session = True
                _CLOSING.add(self._thread)
                return
        self._session.close()

    @property
    def closing(self) -> bool:
        return self._thread in _CLOSING


def _bytes(array: np.ndarray) -> memoryview:
    """A frame's bytes in C order: a view of the ring's buffer (the copy is the encoder's)."""
    data = array.data if array.flags.c_contiguous else np.ascontiguousarray(array).data
    return data.cast("B")


def geometry_of(info: RingInfo) -> Geometry:
    return Geometry(
        shape=info.shape,
        dtype=np.dtype(info.dtype).str,
        slots=info.slots,
        policy=info.policy,
        max_readers=info.max_readers,
        max_writers=info.max_writers,
        meta_size=info.meta_size,
    )


def _describe(info: RingInfo) -> str:
    shape = "x".join(str(d) for d in info.shape)
    return f"{shape} {info.dtype}, {info.policy}, {info.slots} slots"


class _NotCreated(Exception):
    """The receiver could not create its local ring (the cause says why)."""


class BridgeReceiver(_Bridge):
    """Subscribes to Zenoh key `key` (default "shmring/RING") and writes every frame into
    local ring `local` (default `ring`), created on the first frame with the sender's
    geometry (`slots`, `policy` override it) and removed at close(). A ring of that name that
    already exists is used if its geometry matches (and left at close), else the receiver
    fails with IncompatibleRing (raised by wait()). With `wait_readers`, the first frame of
    each stream waits until that many readers attached to the local ring. Unless
    `keep_freed_memory=False`, the process's allocator keeps up to KEEP_FREED_BYTES of the
    memory it frees (_sys.keep_freed_memory) for the samples to come."""

    def __init__(
        self,
        ring: str,
        *,
        key: str | None = None,
        local: str | None = None,
        listen: Sequence[str] = (),
        connect: Sequence[str] = (),
        config: str | None = None,
        slots: int | None = None,
        policy: str | None = None,
        wait_readers: int = 0,
        keep_freed_memory: bool = True,
    ) -> None:
        self.ring = validate_name(ring)
        self.local = validate_name(local or ring)
        if policy not in (None, "block", "overwrite"):
            raise ValueError(f"policy must be 'block' or 'overwrite', got {policy!r}")
        self.key = _checked_key(key, ring)
        self._slots = None if slots is None else positive_int(slots, "slots", *LIMITS["slots"])
        self._policy = policy
        self._wait_readers = positive_int(wait_readers, "wait_readers", 0, MAX_READERS)
        self._what = f"bridge recv {self.local}"
        self._lock = threading.Lock()  # the sample handler vs close()
        self._writer: RingWriter | None = None
        self._geometry: Geometry | None = None
        self._stream: int | None = None
        self._last: int | None = None
        self._decode = Decoder().decode
        self._warnings = _Warnings()
        self._keep_freed_memory = keep_freed_memory
        super().__init__(listen, connect, config)

    def _start(self) -> None:
        self._n.state = "waiting for a sender"
        z = _zenoh()
        try:
            # A write that waits for space stops Zenoh's receiving thread, hence the link
            # and the sender.
            self._subscriber = self._session.declare_subscriber(
                self.key, _on_zenoh_thread(self._on_sample)
            )
            self._token = self._session.liveliness().declare_token(
                receiver_token(self.key, str(self._session.zid()))
            )
        except z.ZError as exc:
            raise BridgeError(f"cannot subscribe to key {self.key!r}: {_said(exc)}") from None
        if self._keep_freed_memory:  # process-wide: only once this receiver is there
            _sys.keep_freed_memory(KEEP_FREED_BYTES)

    def _on_sample(self, sample: zenoh.Sample) -> None:
        """Zenoh's receiving thread. Blocking here (a full `block` ring) backpressures."""
        with self._lock:
            if self._stop.is_set():
                return
            try:
                self._handle(self._decode(sample.payload.to_bytes()))
            except MalformedSample as exc:
                self._n.malformed += 1
                self._warnings.warn(
                    "malformed",
                    "%s: skipped a malformed sample on %s: %s",
                    self._what,
                    self.key,
                    exc,
                )
            except BaseException as exc:
                self._fail(exc)

    def _handle(self, sample: Sample) -> None:
        if sample.kind == KIND_END:
            if self._writer is not None and sample.stream == self._stream:
                self._publish_gap(self._writer, sample)
                self._close_ring()
                self._n.state = "stream ended; waiting for a sender"
                if sample.flags & FLAG_WRITER_GONE:  # there, readers got WriterGone
                    LOG.warning(
                        "%s: the writers of ring %s died on the sending host; the local "
                        "ring's readers get EndOfStream",
                        self._what,
                        self.ring,
                    )
            return
        writer = self._ring_for(sample)
        if writer is None:
            return
        if sample.stream != self._stream:
            self._stream, self._last = sample.stream, None
        elif self._last is not None and sample.seq <= self._last:
            self._n.rejected += 1  # written already: a restarted sender repeats its first
            return
        self._publish_gap(writer, sample)
        self._last = sample.seq
        count = prod(sample.shape)
        array = np.frombuffer(sample.data, writer.dtype, count).reshape(sample.shape)
        meta = sample.meta
        if self._blocking(
            lambda: writer.write(array, POLL, timestamp_ns=sample.timestamp_ns, meta=meta)
        ):
            n = self._n
            n.frames += 1
            n.bytes += array.nbytes
            n.state = "receiving"

    def _blocking(self, step: Callable[[], object]) -> bool:
        """Run `step` (a write into the local ring, waiting up to POLL) until it goes
        through (True) or the bridge stops (False)."""
        while not self._stop.is_set():
            try:
                step()
            except RingTimeout:
                continue
            return True
        return False

    def _publish_gap(self, writer: RingWriter, sample: Sample) -> None:
        """Frames of the stream lost before `sample` (the link, a sender restart, drops under
        --latest, or in the source ring: the sample's `lost`): counted, and published into
        the local ring as one gap (RingWriter.skip), so that its readers count them in
        `dropped` too."""
        seq = sample.seq
        if self._last is None:
            return
        lost = max(seq - self._last - 1, 0) + sample.lost
        if lost == 0:
            return
        self._n.dropped += lost
        gap = min(lost, MAX_SKIP_COUNT)  # more only from a damaged sample: 2**32 - 1 at most
        self._blocking(lambda: writer.skip(gap, POLL))
        self._warnings.warn(
            "lost",
            "%s: %d frames lost between seq %d and %d (link or sender restarted, dropped "
            "under --latest, or lost in the sending ring)",
            self._what,
            lost,
            self._last,
            seq,
        )

    def _ring_for(self, sample: Sample) -> RingWriter | None:
        """The local ring for this sample's geometry: created on first use."""
        geometry = sample.geometry
        if self._writer is not None:
            if geometry is self._geometry or _same_frames(geometry, self._geometry):
                return self._writer
            self._n.rejected += 1
            self._warnings.warn(
                "geometry",
                "%s: skipped a frame of %s: the local ring holds %s; the sender's ring "
                "changed geometry mid-stream (restart bridge recv to follow it)",
                self._what,
                geometry.describe(),
                self._geometry.describe() if self._geometry else "?",
            )
            return None
        policy = self._policy or ("overwrite" if sample.flags & FLAG_LATEST else geometry.policy)
        slots = self._slots or geometry.slots
        if policy == "overwrite":
            slots = max(slots, 2)  # (a block ring of 1 slot received as latest frames)
        try:
            writer = created_or_attached(
                lambda: self._create_local(geometry, slots, policy),
                lambda: self._attach_existing(geometry),
            )
        except _NotCreated as exc:  # (a ring that exists but does not fit stops the bridge)
            self._n.rejected += 1
            self._warnings.warn(
                "create",
                "%s: skipped a frame of %s: %s",
                self._what,
                geometry.describe(),
                exc.__cause__,
            )
            return None
        LOG.info("%s: ring %s ready (%s, %s)", self._what, self.local, geometry.describe(), policy)
        self._writer, self._geometry = writer, geometry
        while writer.readers < self._wait_readers and not self._stop.is_set():
            wanted = self._wait_readers
            self._n.state = f"waiting for {wanted} local reader{'s' if wanted != 1 else ''}"
            try:
                writer.wait_for_readers(self._wait_readers, POLL)
            except RingTimeout:
                continue
        return writer

    def _create_local(self, geometry: Geometry, slots: int, policy: str) -> RingWriter:
        try:
            return create_like(self.local, geometry, slots, policy)
        except RingExists:
            raise
        except (ValueError, OSError) as exc:  # no room in /dev/shm, ...: this frame is lost
            raise _NotCreated from exc

    def _attach_existing(self, geometry: Geometry) -> RingWriter:
        mine = geometry_of(inspect_ring(self.local))
        if not _same_frames(geometry, mine):
            raise IncompatibleRing(
                f"local ring {self.local!r} exists with {mine.describe()}, but the sender's "
                f"ring has {geometry.describe()}: remove it (shmring rm {self.local}) or "
                "receive into another name (--as)"
            )
        return RingWriter.attach(self.local, shape=geometry.shape, dtype=geometry.dtype)

    def _close_ring(self) -> None:
        if self._writer is not None:
            self._writer.close()  # readers drain it, then get EndOfStream; unlinked if ours
        self._writer, self._geometry, self._stream, self._last = None, None, None, None

    def _shutdown(self) -> None:
        try:
            self._token.undeclare()
            self._subscriber.undeclare()
        finally:
            self._leave_rings()

    def _leave_rings(self) -> None:
        with self._lock:  # a running handler notices the stop flag within POLL
            self._close_ring()


class _Warnings:
    """Warnings of the receiver's callback, each kind at most once per WARN_EVERY seconds
    (a sender whose ring changed geometry, or a link that drops, would log at the frame
    rate); a warning says how many of its kind were held back since the last one."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}  # kind -> (when logged, held back)

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        logged, held = self._last.get(kind, (now - WARN_EVERY, 0))
        if now - logged < WARN_EVERY:
            self._last[kind] = (logged, held + 1)
            return
        if held:
            message += f" (and {held} more since the last such warning)"
        LOG.warning(message, *args)
        self._last[kind] = (now, 0)


def _same_frames(a: Geometry, b: Geometry | None) -> bool:
    """Frames of `a` fit a ring of `b` (slots and policy may differ)."""
    return b is not None and (a.shape, a.dtype, a.meta_size) == (b.shape, b.dtype, b.meta_size)
