"""shmring: stream NumPy frames between processes through one shared-memory ring buffer.

Writers copy a frame in once (`write`) or fill a claimed slot in place (`claim`); readers
get read-only views with no copy. Any process attaches by name; the ring survives SIGKILL
of any participant. See README.md and docs/API.md.

Rule of the core: Python touches a ring's shared words under the header lock (joining,
leaving, repair), and the lock-free steps live in the C core (shmring._fastpath: publishing,
claiming sequence numbers, taking buffers, pinning, group cursors, taking frames). Left in
Python so far: a reader's own release word and waiter count, stored lock-free, and the
reclaim fallback that reports a damaged ring.
"""

from ._async import AsyncClaim
from ._bridge import BridgeReceiver, BridgeSender, BridgeStats
from ._bridge_wire import BridgeError
from ._errors import (
    EndOfStream,
    IncompatibleRing,
    NotARecording,
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
from ._writer import Claim, RingWriter

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
    "IncompatibleRing",
    "NotARecording",
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
