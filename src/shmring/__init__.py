"""shmring: stream NumPy frames between processes through one shared-memory ring buffer.

Writers copy a frame in once (`write`) or fill a claimed slot in place (`claim`); readers
get read-only views with no copy. Any process attaches by name; the ring survives SIGKILL
of any participant. See README.md and docs/API.md.

Rule of the core: Python touches shared memory only while holding the header lock (joining,
leaving, repair); every lock-free access lives in the C core, shmring._fastpath, with its
memory ordering named there (acquire loads, release stores, seq_cst read-modify-writes and
fences): publishing, claiming sequence numbers, taking and reclaiming buffers, pinning,
group cursors, taking, describing and releasing frames, counting and waking sleepers.
Without the lock, Python reads only (1) the geometry, fixed at create and never written
again; (2) single words through _fastpath.load_word, an acquire load: a futex word's value
before a sleep, the end-of-stream flags, counts and liveness marks it decides a wait, a poll
or a locked repair by; (3) in `shmring inspect` (_inspect.py), a monitor's racy snapshot of
a live ring, which stores nothing, takes no lock so as never to stall a pipeline, and
reports what is inconsistent as a problem. Under the lock too, a word that lock-free steps
store meanwhile (a descriptor's D_SEQ and flags, a writer's claimed number and publish
bracket) is read through load_word. Each lock-free step exists once, in C: where
Python runs one under the lock (the reclaim, settle), it calls the C step.
"""

from ._async import AsyncClaim
from ._bridge import BridgeReceiver, BridgeSender, BridgeStats
from ._bridge_wire import BridgeError
from ._errors import (
    EndOfStream,
    HandleClosed,
    HandleInUse,
    IncompatibleRing,
    NotARecording,
    ParticipantStalled,
    RecordExtraMissing,
    RecordingDiskFull,
    RecordingError,
    RecordingTruncated,
    RingCorrupted,
    RingExists,
    RingFull,
    RingNotFound,
    RingTimeout,
    ShmringError,
    StaleRingWarning,
    UntrustedRing,
    WriterGone,
)
from ._fastpath import Claim
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
    remove_ring,
    stale_rings,
)
from ._reader import Frame, RingReader
from ._recording import (
    RecordedFrame,
    RecordedRing,
    RecordResult,
    ReplayResult,
    read_recording,
    record,
    replay,
)
from ._writer import RingWriter

__all__ = [
    "AsyncClaim",
    "BridgeError",
    "BridgeReceiver",
    "BridgeSender",
    "BridgeStats",
    "BrokenRing",
    "Claim",
    "EndOfStream",
    "Frame",
    "GroupInfo",
    "HandleClosed",
    "HandleInUse",
    "IncompatibleRing",
    "NotARecording",
    "ParticipantStalled",
    "ReaderInfo",
    "RecordExtraMissing",
    "RecordResult",
    "RecordedFrame",
    "RecordedRing",
    "RecordingDiskFull",
    "RecordingError",
    "RecordingTruncated",
    "ReplayResult",
    "RingCorrupted",
    "RingExists",
    "RingFull",
    "RingInfo",
    "RingNotFound",
    "RingReader",
    "RingTimeout",
    "RingWriter",
    "ShmringError",
    "SlotInfo",
    "StaleRingWarning",
    "UntrustedRing",
    "WriterGone",
    "WriterInfo",
    "inspect_ring",
    "list_rings",
    "read_recording",
    "record",
    "remove_if_stale",
    "remove_ring",
    "replay",
    "stale_rings",
]

__version__ = "0.1.0"
