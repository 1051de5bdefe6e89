# The exceptions shmring raises, and its one warning.
#
# Rules: every error about a ring (missing, taken, incompatible, corrupted, a timeout, the
# end of a stream) is a subclass of ShmringError and, where Python has a matching built-in
# (FileNotFoundError, FileExistsError, EOFError, TimeoutError), of that too, so code that
# already catches the built-in keeps working. Messages name the ring, what was wrong, and
# what to do about it. Misuse of a handle (two threads at once, a claim out of turn) is
# HandleInUse, a ShmringError and a RuntimeError, as Python's conventions have it. Not
# ShmringErrors: bad arguments (ValueError, TypeError) and errors the OS reports (OSError:
# ENOSPC when /dev/shm is full, PermissionError). docs/OPERATIONS.md lists them.
#
# A warning names the user's line that caused it, not a line inside shmring: the stack level
# is counted at run time, past every frame of this package.

from __future__ import annotations

import os
import sys
import warnings


class ShmringError(Exception):
    """Base class of every error shmring raises."""


class RingNotFound(ShmringError, FileNotFoundError):
    """No ring of that name exists (or it was already unlinked)."""


class RingExists(ShmringError, FileExistsError):
    """`create` was asked for a name that a live ring already holds."""


class UntrustedRing(ShmringError, PermissionError):
    """The ring's segment file belongs to a user this process was not told to trust
    (`attach(..., owner=...)`): whoever owns it can inject frames and read the ones written.
    docs/OPERATIONS.md, "Trust model"."""


class IncompatibleRing(ShmringError):
    """The segment is not a shmring ring this version can read (magic, version, checksum,
    geometry), or its geometry differs from what the caller expected."""


class RingCorrupted(ShmringError):
    """Shared state read from the ring failed validation in a process already using it.

    Any process that attaches maps the header writable, so a buggy one can scribble on it;
    shmring checks what it reads instead of trusting it."""

    @classmethod
    def header_overwritten(cls, ring: str, found: str) -> RingCorrupted:
        """What `found` in ring `ring`'s shared state means, and the one remedy (the C core
        raises it through this too: _publisher.c, corrupted)."""
        return cls(f"ring {ring!r}: {found}; the header was overwritten: {recreate(ring)}")


class WriterGone(ShmringError):
    """Every writer of the ring died without closing the stream."""


class EndOfStream(ShmringError, EOFError):
    """Every writer closed the stream and this reader has taken every frame."""


class RingTimeout(ShmringError, TimeoutError):
    """A bounded wait passed its timeout."""


def recreate(ring: str) -> str:
    """What to do with a damaged ring."""
    return f"remove the ring (shmring rm --force {ring}) and create it again"


class HandleClosed(ShmringError):
    """A call on a handle that is closed, or being closed by another thread: attach again."""


class HandleInUse(ShmringError, RuntimeError):
    """A handle used by two threads or tasks at once, or out of turn (a second claim while one
    is open, close() while a call or a claim is under way): give each thread or task its own
    handle, or let the first call finish."""


class ParticipantStalled(RingTimeout):
    """The wait passed its timeout because another participant, alive but not running (SIGSTOP,
    a debugger, Ctrl-Z), held the header lock or a step the others wait for; the message
    names it where it can. Resume it (kill -CONT) or see `shmring inspect`."""


class RingFull(ShmringError):
    """All reader (or writer) records of the ring are taken by live participants."""


class StaleRingWarning(UserWarning):
    """`create` reclaimed a ring whose creator had died without unlinking it."""


def warn_stale_ring(message: str) -> None:
    """Warn StaleRingWarning, attributed to the first caller outside the shmring package."""
    package = os.path.dirname(__file__) + os.sep
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, StaleRingWarning, stacklevel=level)


class RecordingError(ShmringError):
    """A recording (`shmring record` / `replay`, an MCAP file) could not be written or read."""


class NotARecording(RecordingError):
    """The file is not MCAP, not a shmring recording, or its contents fail validation."""


class RecordingTruncated(RecordingError, EOFError):
    """The recording ends without its index: its recorder was killed or ran out of disk.
    Its complete chunks can still be read (`recover=True`, `shmring replay --recover`)."""


class RecordingDiskFull(RecordingError, OSError):
    """The disk filled up, or a quota ran out, while recording (ENOSPC, EDQUOT). The file was
    cut back to its last complete chunk: it has no index, so read it with `recover=True`."""


class RecordExtraMissing(ShmringError, ImportError):
    """Recording and replay need the optional packages of `shmring[record]`."""
