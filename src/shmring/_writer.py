# RingWriter: create or attach to a ring and publish frames into it.
#
# Rules: `write` copies once; `claim` hands out the buffer itself. A frame is published
# when its descriptor's D_SEQ word is written, after everything else about it. The
# exclusive-mode fast path (one writer on the ring) runs without the header lock, for
# write() and claim() in C (_publisher.c); every other path takes it. See _ring.py for the theory,
# docs/FORMAT.md for the bytes.

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from math import prod
from time import monotonic_ns
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import DTypeLike

from . import _layout as L
from ._async import AsyncWriting
from ._errors import (
    HandleInUse,
    ParticipantStalled,
    RingCorrupted,
    RingExists,
    RingFull,
    RingNotFound,
    RingTimeout,
)
from ._fastpath import (
    PUBLISH_ALONE,
    PUBLISH_CORRUPTED,
    PUBLISH_FALLBACK,
    PUBLISH_STALLED,
    Claim,
    Publisher,
    load_word,
)
from ._ring import CLOSE_LIMIT, Participant, RingHandle, left_without_lock, participant_of
from ._segment import Segment, checked_huge_pages, checked_mode, validate_name
from ._sys import (
    BARRIER_REGISTERED,
    LAST_LEVEL_CACHE_BYTES,
    MEMBARRIER_AVAILABLE,
    futex_wait,
)
from ._timing import (
    DEFAULT_SPIN,
    STALLED_FIRST_PAUSE,
    STALLED_LAST_PAUSE,
    Liveness,
    Sleeps,
    checked_spin,
    deadline_from,
    remaining,
)

EAGER_RECLAIM_BYTES = 256 * 1024  # frames this large reclaim at every write (see __init__)
# ... unless all the buffers together fit in a quarter of the last-level cache (which the
# source frame, the reader and other tenants share), and never more than 2 MiB, a core's
# own cache: VMs may report the host's cache, and a writer that takes its buffers in turn
# copies into cold ones; one reclaim too many costs far less (docs/performance.md,
# "Buffer reuse"). Unknown cache: 0, always.
CACHED_POOL_BYTES = min((LAST_LEVEL_CACHE_BYTES or 0) // 4, 2 * 1024 * 1024)
# With several writers each position of the ring keeps its own buffer (_publisher.c, "shared
# mode"), so a copy goes into the buffer written `slots` frames before: once the buffers
# outgrow half the last-level cache, a cold one, which a copy first reads line by line. Such
# copies stream past the cache instead (non-temporal stores: docs/performance.md, "Fan-in:
# streamed copies"). Unknown cache: 0, never.
STREAMED_POOL_BYTES = (LAST_LEVEL_CACHE_BYTES or 0) // 2
HOT_BUFFER_BYTES = 512 * 1024  # frames this large wait for their one reader (see there)
HOT_BUFFER_WAIT = 200e-6  # the longest such wait, in seconds
HOT_BUFFER_BACKOFF = 32  # writes that skip the wait after one that gave up
# An overwrite ring's buffers beyond its slots, by default: room for two more held frames or
# open claims than the slots leave (docs/API.md, "Overwrite").
OVERWRITE_SPARE_BUFFERS = 2
_SECONDS = (int, float)  # timeout types write()'s fast path accepts without a call
_NDARRAY = np.ndarray  # one global lookup in write()'s fast path, not a global and an attribute
# The default meta: only it takes the fast paths (a test of identity: `not meta` let 0, None
# or "" through, unchecked, as no metadata). Any other empty bytes takes the checked path.
_NO_META = b""


class RingWriter(AsyncWriting, RingHandle):
    """Publishes frames into a ring. `create` makes (and owns) a ring; `attach` joins one."""

    _record: memoryview  # this handle's writer record, from _join on
    _publisher: Publisher  # the C fast paths, from _join on
    _publish_fast: Callable[..., int]
    _claim_buffer_fast: Callable[[], int]
    _new_claim: Callable[..., Claim]

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        shape: int | Sequence[int],
        dtype: DTypeLike,
        *,
        slots: int = 8,
        policy: str = "block",
        max_readers: int = 8,
        max_writers: int = 4,
        meta_size: int = 0,
        mode: int = 0o600,
        spin: float = DEFAULT_SPIN,
        spare_buffers: int | None = None,
        huge_pages: bool | Literal["auto"] = "auto",
    ) -> RingWriter:
        """Create ring `name` and become its owner (the segment is unlinked when the owner
        closes, exits, or is garbage-collected). The owner joins as a writer at its first
        write() or claim(), not before (see _join).

        `spare_buffers` (overwrite policy only): buffers beyond `slots` for frames readers
        hold and writers' open claims (default OVERWRITE_SPARE_BUFFERS). `huge_pages`: True,
        False, or "auto" (frames of 2 MiB or more in a ring of at most 128 MiB of buffers);
        docs/API.md."""
        validate_name(name)
        if not isinstance(policy, str):
            raise TypeError(f"policy must be 'block' or 'overwrite', got {policy!r}")
        if policy not in L.POLICIES:
            raise ValueError(f"policy must be 'block' or 'overwrite', got {policy!r}")
        checked_shape = L.checked_shape(shape)
        slots = L.positive_int(slots, "slots", *L.LIMITS["slots"])
        max_readers = L.positive_int(max_readers, "max_readers", *L.LIMITS["max_readers"])
        max_writers = L.positive_int(max_writers, "max_writers", *L.LIMITS["max_writers"])
        meta_size = L.positive_int(meta_size, "meta_size", *L.LIMITS["meta_size"])
        mode = checked_mode(mode)
        huge = checked_huge_pages(huge_pages)
        checked_spin(spin)
        buffers = slots + _checked_spare_buffers(policy, slots, spare_buffers)
        geometry = L.Geometry(
            shape=checked_shape,
            dtype=L.checked_dtype(dtype),
            slots=slots,
            buffers=buffers,
            policy=L.POLICIES[policy],
            max_readers=max_readers,
            max_writers=max_writers,
            meta_size=meta_size,
            creator_pid=os.getpid(),
            created_ns=time.time_ns(),
        )
        with participant_of(Segment.create(name, geometry, mode, huge), owner=True) as p:
            return cls(p, owner=True, spin=spin)

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        timeout: float | None = 0.0,
        spin: float = DEFAULT_SPIN,
        shape: int | Sequence[int] | None = None,
        dtype: DTypeLike | None = None,
        owner: int | str | None = None,
    ) -> RingWriter:
        """Join ring `name` as one more writer (waiting up to `timeout` s for it to exist).

        With `shape` and/or `dtype`, a ring of another geometry raises IncompatibleRing
        (e.g. a stale ring left from before a resolution change). `owner`: the user (uid or
        name) the ring must belong to; by default, this process's user or root, else
        UntrustedRing."""
        validate_name(name)
        checked_spin(spin)
        deadline = deadline_from(timeout)
        segment = Segment.attach(
            name, timeout, writable_data=True, shape=shape, dtype=dtype, owner=owner
        )
        with participant_of(segment, owner=False) as p:
            return cls(p, owner=False, spin=spin, deadline=deadline)

    def __init__(
        self, participant: Participant, owner: bool, spin: float, deadline: float | None = None
    ) -> None:
        p = self._p = participant
        g = p.geometry
        self._owner = owner
        self._spin = spin
        self._lock = p.lock  # tests use it to die while holding the header lock
        self._control = p.control
        self._buffers = p.views.buffers
        self._slots = g.slots
        self._nbuffers = g.buffers
        self._shape = g.shape
        self._dtype = g.dtype
        self._meta_size = g.meta_size
        self._block = g.policy == L.POLICY_BLOCK
        self._fast_path = False  # until this handle has joined as a writer: see _join
        # Large frames in a pool too big to stay in cache: reclaim at every write, so the
        # writer reuses the buffer a reader has just released (still in cache) instead of
        # cycling through all of them (docs/performance.md, "Buffer reuse").
        self._reclaim_eagerly = (
            g.buffer_bytes >= EAGER_RECLAIM_BYTES and g.buffers * g.buffer_bytes > CACHED_POOL_BYTES
        )
        self._stream_copies = 0 < STREAMED_POOL_BYTES < g.slots * g.buffer_bytes
        self._awaits_hot_buffer = self._block and g.buffer_bytes >= HOT_BUFFER_BYTES and spin > 0
        self._hot_wait_skips = 0
        self._membership = _Membership()
        self._joined = False
        self._stranded = -1  # a claimed buffer a timed-out publish kept (see _publish)
        self._publishing_claim = False  # a Claim's publish is under way (_claim_publishing)
        p.on_truncation = weakref.WeakMethod(self._stop_fast_paths)
        self._taking_thread = 0  # the thread whose write or claim takes a buffer in Python
        if not owner:
            self._join(deadline)  # an attached writer writes; the creator joins at its first frame
        self._leave_at(_close_writer, self._membership, owner)

    def _join(self, deadline: float | None = None) -> None:
        """Become one of the ring's writers: take a writer record (from here on readers wait
        for this handle's frames, and its close() can end the stream) and the fast path.

        Owning a ring is not writing to it: a creator that never writes (a supervisor that
        starts the writer and reader processes) takes no record, so it neither puts the ring
        in shared mode nor keeps the stream open nor uses up max_writers."""
        p = self._p
        p.check_usable()
        with p.lock.until(deadline):
            index = p.take_record(p.views.writers, L.LOCK_WRITER_BASE, "writer")
            record = p.views.writers[index]
            record[L.W_CLAIMED] = L.NONE
            record[L.W_CLAIMED_SEQ] = L.NONE
            record[L.W_IN_PUBLISH] = 0
            record[L.W_SLEEPING] = 0
            record[L.W_EXPEDITED] = int(BARRIER_REGISTERED)
            stream = p.control[L.C_FLAGS] & (L.F_CLOSED | L.F_STARTED)
            p.control[L.C_FLAGS] = (p.control[L.C_FLAGS] & ~L.F_CLOSED) | L.F_STARTED
            p.recount()
            try:
                if not MEMBARRIER_AVAILABLE or p.control[L.C_WRITERS] > 1:
                    p.enter_shared_mode(deadline)  # may time out on a stopped writer
                else:
                    p.leave_shared_mode()  # alone: the writers before it have left
                publisher = _publisher(p, record, self._reclaim_eagerly, self._stream_copies)
            except BaseException:
                # Not joined: give the record back, or each retry of a write would take
                # one more until RingFull (an attached handle's close would free it; a
                # creator's stays open).
                flags = p.control[L.C_FLAGS] & ~(L.F_CLOSED | L.F_STARTED)
                p.control[L.C_FLAGS] = flags | stream
                p.free_record(record, L.LOCK_WRITER_BASE + index)
                p.recount()
                raise
        membership = self._membership
        membership.index, membership.record, membership.publisher = index, record, publisher
        self._record = record
        self._publisher = publisher
        self._joined = True
        self._publish_fast = publisher.publish
        self._claim_buffer_fast = publisher.claim_buffer
        self._new_claim = publisher.claim
        self._fast_path = not p.truncated  # (another handle may have found it meanwhile)

    # ---- publishing ----------------------------------------------------------------------
    def write(
        self,
        frame: np.ndarray,
        timeout: float | None = None,
        *,
        timestamp_ns: int | None = None,
        meta: bytes = _NO_META,
    ) -> int:
        """Copy `frame` into the ring and publish it; returns its sequence number.

        Blocks (block policy) while a reader group would lose a frame, up to `timeout`."""
        if (
            self._fast_path
            and meta is _NO_META
            and (timeout is None or (timeout.__class__ in _SECONDS and timeout >= 0))
            and type(frame) is _NDARRAY
            and frame.shape == self._shape
            and frame.dtype is self._dtype
        ):
            # The common case, in C (_publisher.c): a ring-shaped frame without metadata,
            # stamped now or with the caller's int. It falls back (a negative result) when
            # anything else holds.
            if self._awaits_hot_buffer:
                self._await_hot_buffer()
            seq: int = (
                self._publish_fast(frame)
                if timestamp_ns is None
                else self._publish_fast(frame, timestamp_ns)
            )
            if seq >= 0:
                return seq
            if seq == PUBLISH_CORRUPTED:
                raise self._corrupted_free_list()
            if seq == PUBLISH_STALLED:  # the buffer it filled is still claimed: fill it again
                self._strand(self._publisher.stalled)
        return self._write(frame, timeout, timestamp_ns, meta)

    def _stop_fast_paths(self) -> None:
        """The ring was found truncated (Participant.check_size): write(), claim() and skip()
        take the checked paths, which raise RingCorrupted before touching the mapping (its
        lost pages fault: SIGBUS), and the C object's steps (an open claim's) touch nothing."""
        self._fast_path = False
        if self._joined:
            with contextlib.suppress(HandleInUse):  # found inside it: it goes on raising
                self._publisher.close()

    def _corrupted_free_list(self) -> RingCorrupted:
        """What the C fast path's PUBLISH_CORRUPTED means."""
        return RingCorrupted.header_overwritten(
            self._p.name,
            "invalid shared state (a free buffer index, or the next sequence number to claim, "
            "out of range)",
        )

    def _await_hot_buffer(self) -> None:
        """Give the ring's one reader a moment to release the frame just published, so
        that this frame is copied into that buffer, still in cache: a copy into a cold
        buffer reads every line before overwriting it (unless glibc streams the copy:
        docs/OPERATIONS.md, "Large frames"). It pays from HOT_BUFFER_BYTES on when a single
        reader, polling, releases within microseconds; with several readers (fan-out,
        groups) waiting for the last of them held the writer back (docs/performance.md,
        "Hot buffer"). A reader that keeps its frame longer than HOT_BUFFER_WAIT makes the
        next HOT_BUFFER_BACKOFF writes skip the wait, so a slow consumer costs the writer
        at most HOT_BUFFER_WAIT / HOT_BUFFER_BACKOFF per frame."""
        if self._hot_wait_skips:
            self._hot_wait_skips -= 1
            return
        behind = self._publisher.behind  # in C: head, then every group's release (acquire)
        if (
            load_word(self._control, L.C_READERS) != 1
            or not behind()
            or not self._p.spinning_pays()
        ):
            return
        give_up = time.monotonic() + HOT_BUFFER_WAIT
        while behind():
            if time.monotonic() > give_up:
                self._hot_wait_skips = HOT_BUFFER_BACKOFF
                return

    def _write(
        self, frame: np.ndarray, timeout: float | None, timestamp_ns: int | None, meta: bytes
    ) -> int:
        """write() for every case: validation, shared mode, overwrite, waiting for space."""
        self._p.calls += 1
        try:
            if self._p.closing or self._p.closed:
                self._raise_closed()
            outer = self._begin_taking()
            try:
                return self._write_counted(frame, timeout, timestamp_ns, meta)
            finally:
                self._taking_thread = outer
        finally:
            self._p.calls -= 1

    def _begin_taking(self) -> int:
        """Before a write, claim or skip that takes its buffer in Python, and fills, opens
        or publishes it: another thread's meanwhile raises HandleInUse. Until published,
        the buffer is claimed in this writer's record, where the other thread's step would
        take it for a strand of its own and publish it too (two frames in one buffer, and
        the ring's free list broken for every process). The thread that was taking before
        (0, or this one: a signal handler's write); the caller restores it in a `finally`
        right after."""
        me, outer = threading.get_ident(), self._taking_thread
        if outer not in (0, me):
            raise HandleInUse(
                f"ring {self._p.name!r}: write(), claim() or skip() while another thread's "
                "on the same writer is under way; give each thread its own RingWriter "
                "(RingWriter.attach), or serialize the calls"
            )
        self._taking_thread = me
        return outer

    def _write_counted(
        self, frame: np.ndarray, timeout: float | None, timestamp_ns: int | None, meta: bytes
    ) -> int:
        deadline = deadline_from(timeout)
        timestamp_ns, meta = self._checked_stamp_and_meta(timestamp_ns, meta)
        try:
            shape = frame.shape
        except AttributeError:
            raise TypeError(
                f"write() takes a numpy.ndarray, got {type(frame).__name__}; "
                "wrap it with np.asarray first"
            ) from None
        own_shape = None
        if shape != self._shape or frame.dtype != self._dtype:
            own_shape = self._check_frame(frame.shape, frame.dtype)
        buffer = self._take_buffer(deadline)
        try:
            if own_shape is None:
                self._buffers[buffer][...] = frame
            else:
                self._p.views.buffer_view(self._p.geometry, buffer, own_shape)[...] = frame
        except BaseException:
            self._abandon(buffer, deadline)
            raise
        return self._publish(
            buffer,
            own_shape,
            time.monotonic_ns() if timestamp_ns is None else timestamp_ns,
            meta,
            deadline,
        )

    def _checked_stamp_and_meta(
        self, timestamp_ns: object, meta: object
    ) -> tuple[int | None, bytes]:
        if timestamp_ns is not None:
            if isinstance(timestamp_ns, bool) or not isinstance(timestamp_ns, (int, np.integer)):
                raise TypeError(
                    f"timestamp_ns must be None or an integer (nanoseconds), got {timestamp_ns!r}"
                )
            if not 0 <= int(timestamp_ns) < 1 << 64:
                raise ValueError(f"timestamp_ns must be in [0, 2**64), got {timestamp_ns}")
        if not isinstance(meta, (bytes, bytearray, memoryview)):
            raise TypeError(f"meta must be bytes, got {type(meta).__name__}")
        meta = bytes(meta)
        if len(meta) > self._meta_size:
            raise ValueError(
                f"ring {self._p.name!r}: meta is {len(meta)} bytes but the ring keeps "
                f"{self._meta_size} per frame; create it with a larger meta_size"
            )
        return None if timestamp_ns is None else int(timestamp_ns), meta

    def claim(
        self,
        timeout: float | None = None,
        *,
        shape: Sequence[int] | None = None,
        timestamp_ns: int | None = None,
        meta: bytes = _NO_META,
    ) -> Claim:
        """Claim a buffer to fill in place (zero copies); see Claim."""
        if self._fast_path and shape is None and timestamp_ns is None and meta is _NO_META:
            # The common case: taken and published in C (Claim, _publisher.c).
            if timeout is None:
                return self._new_claim(self)
            deadline_from(timeout)  # validate now, not at __enter__
            return self._new_claim(self, timeout)
        if self._p.closed:
            self._p.check_usable()
        own_shape = None
        if shape is not None:
            own_shape = self._check_frame(L.checked_shape(shape), self._dtype)
        timestamp_ns, meta = self._checked_stamp_and_meta(timestamp_ns, meta)
        deadline_from(timeout)  # validate now, not at __enter__
        return Claim(self, timeout, own_shape, timestamp_ns, meta)

    def _check_frame(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[int, ...] | None:
        """Validate a frame that is not exactly ring-shaped; returns its own shape."""
        if dtype != self._dtype:
            scalar = getattr(np, self._dtype.name, None)  # np.float32, or none that says it all
            named = scalar is not None and np.dtype(scalar) == self._dtype  # (not '>f4')
            raise ValueError(
                f"ring {self._p.name!r} carries dtype {self._dtype}, got a frame of dtype "
                f"{dtype}; convert it with frame.astype("
                f"{f'np.{self._dtype.name}' if named else 'writer.dtype'})"
            )
        if len(shape) != len(self._shape) or any(
            got > limit for got, limit in zip(shape, self._shape, strict=True)
        ):
            raise ValueError(
                f"ring {self._p.name!r} takes frames of up to shape {self._shape}; got shape "
                f"{shape}. A frame needs the same number of dimensions and each dimension "
                "no larger than the ring's"
            )
        if shape == self._shape:
            return None
        if prod(shape) == 0:
            raise ValueError(f"ring {self._p.name!r}: an empty frame {shape} has no data")
        return tuple(shape)

    def _enter_claim(self, claim: Claim) -> np.ndarray:
        """Claim.__enter__'s general path (_publisher.c): take a buffer, waiting up to the
        claim's timeout; the writable slot."""
        timeout = claim._timeout
        claim._deadline = deadline = None if timeout is None else deadline_from(timeout)
        outer = self._begin_taking()
        try:
            claim._buffer = buffer = self._take_buffer(deadline)
            shape = claim._shape
            slot = (
                self._buffers[buffer]
                if shape is None
                else self._p.views.buffer_view(self._p.geometry, buffer, shape)
            )
            self._publisher.open_claim(claim)  # until it leaves: refuse a write or another claim
        finally:
            self._taking_thread = outer
        return slot

    def _exit_claim(self, claim: Claim, failed: bool) -> int | None:
        """Claim.__exit__'s general path: publish the claimed buffer (its sequence number),
        or give it back unpublished when the with block raised (`failed`)."""
        if failed:
            self._abandon(claim._buffer, claim._deadline)
            return None
        stamp = claim._timestamp_ns
        timestamp = monotonic_ns() if stamp is None else stamp
        with self._claim_publishing():
            return self._publish(
                claim._buffer, claim._shape, timestamp, claim._meta, claim._deadline
            )

    def _take_buffer(self, deadline: float | None) -> int:
        if self._fast_path:
            buffer: int = self._claim_buffer_fast()
            if buffer >= 0:
                return buffer
        self._p.calls += 1
        try:
            if self._p.closing or self._p.closed:
                self._raise_closed()
            if not self._joined:
                self._join(deadline)
            if self._publisher.claim_open:
                raise self._second_claim(
                    "is open (its with block has not ended, in this thread or another)",
                    "leave that with block first",
                )
            if self._publishing_claim:
                raise self._second_claim(
                    "is still publishing (it waits for the header lock or a position, in "
                    "another task or thread)",
                    "let it finish first",
                )
            kept = load_word(self._record, L.W_CLAIMED)
            if kept != self._stranded:
                # The record says which claim is this writer's: none (a strand published
                # since, by a step cut short after it published), or one whose Claim was
                # gone before it could publish (Ctrl-C as the claim returned, or before
                # __exit__), which the C steps fell back for, lest a new claim replace it.
                self._stranded = -1 if kept == L.NONE else self._checked_buffer(kept)
            if self._stranded >= 0:  # still claimed by this writer: fill it again
                return self._unstrand()
            buffer = self._take_buffer_exclusive(deadline)
            if buffer < 0 and self._block and self._spin:
                buffer = self._poll_for_space(deadline)
            if buffer >= 0:
                return buffer
            return self._wait_for_buffer(deadline)
        finally:
            self._p.calls -= 1

    @contextlib.contextmanager
    def _claim_publishing(self) -> Iterator[None]:
        """Around a Claim's publish, which may wait (and an async one's tries, between which
        other tasks run): its buffer stays claimed in the record meanwhile, so another
        write or claim is refused rather than adopting it (_take_buffer)."""
        outer = self._publishing_claim
        self._publishing_claim = True
        try:
            yield
        finally:
            self._publishing_claim = outer

    def _second_claim(self, state: str, remedy: str) -> HandleInUse:
        """The refusal of a write or claim while this writer's one claim `state`."""
        return HandleInUse(
            f"ring {self._p.name!r}: write(), claim() or skip() while a claim on the same writer "
            f"{state}: a writer holds one claim at a time; {remedy}, or give each thread or "
            "task its own RingWriter (RingWriter.attach)"
        )

    def _checked_buffer(self, buffer: int) -> int:
        """`buffer`, read from this writer's record; RingCorrupted if out of range."""
        if buffer >= self._nbuffers:
            raise RingCorrupted.header_overwritten(
                self._p.name, f"this writer's record claims buffer {buffer} of {self._nbuffers}"
            )
        return buffer

    def _poll_for_space(self, deadline: float | None) -> int:
        """Poll for a free slot for up to `spin` seconds; the buffer, or -1 (then sleep).

        Readers release frames microseconds apart when they keep up; catching that by
        polling is far cheaper than a futex sleep and wake-up. A writer polls while
        every busy participant can have a CPU of its own (spinning_pays); when not, it
        polls only if several writers share the ring, yielding the CPU before each look
        (sched_yield), so that it runs only when no other process wants its CPU.

        Several writers that sleep for space wake together and one of them finds the space
        freed; the others sleep again, and the reader spends its time waking them. One
        writer polling so beside group readers takes their CPU, hence not with one writer
        (figures: docs/performance.md, "Fan-in: writers waiting for space")."""
        yields = not self._p.spinning_pays()
        if yields and load_word(self._control, L.C_WRITERS) < 2:
            return -1
        spin_until = time.monotonic() + self._spin
        buffer = -1
        while buffer < 0 and time.monotonic() < spin_until:
            if yields:
                os.sched_yield()
            buffer = self._take_buffer_exclusive(deadline)
        return buffer

    def _take_buffer_exclusive(self, deadline: float | None) -> int:
        """Take a buffer without the lock (in C, _publisher.c): in exclusive mode, or in
        shared mode under the block policy (sequenced); -1 if none, or if the ring is in
        shared mode under the overwrite policy, or closed."""
        buffer: int = self._claim_buffer_fast()
        if buffer == PUBLISH_ALONE:  # the other writers left: back to exclusive mode
            with self._p.lock.until(deadline):
                self._p.leave_shared_mode()
            buffer = self._claim_buffer_fast()
        if buffer == PUBLISH_CORRUPTED:
            raise self._corrupted_free_list()
        return buffer

    def _wait_for_buffer(self, deadline: float | None) -> int:
        p, control, publisher = self._p, self._control, self._publisher
        # An awaitable write's tries (_async.py) run counted: the count is theirs to end.
        waiting = counted_before = load_word(self._record, L.W_SLEEPING) == 1
        liveness, sleeps = Liveness(), Sleeps()
        try:
            while True:
                observed = load_word(control, L.C_SPACE)
                if self._block:  # exclusive, or sequenced: no lock
                    buffer = self._take_buffer_exclusive(deadline)
                else:
                    with p.lock.until(deadline):
                        buffer = self._publisher.claim_buffer_locked()
                        if buffer == PUBLISH_ALONE:  # sequenced, the others gone: switch back
                            p.leave_shared_mode()
                            buffer = self._publisher.claim_buffer_locked()
                        # Dead readers' pins and dead writers' claims count until reaped.
                        if buffer == PUBLISH_FALLBACK and p.reap_dead():
                            buffer = self._publisher.claim_buffer_locked()
                if buffer >= 0:
                    return buffer
                if buffer == PUBLISH_CORRUPTED:
                    raise self._corrupted_free_list()
                if not self._block:
                    raise self._all_buffers_held()
                if not waiting:
                    # Counted (in C: it asks to be woken when half the ring is free), then
                    # look again. Forged head or tail: nothing counted (check_counters raises).
                    if publisher.count_sleeper() == PUBLISH_CORRUPTED:
                        p.check_counters()
                        continue  # (they changed meanwhile: not forged after all)
                    waiting = True
                    continue
                if liveness.due():
                    p.check_size()
                    p.check_counters()
                    if p.dead_participant_blocks():
                        with p.lock.until(deadline):
                            p.reap_dead()
                        continue
                wait = sleeps.next(deadline)
                if wait <= 0:
                    claim = p.unpublished_claim()
                    raise RingTimeout(
                        f"ring {p.name!r}: no free slot within the timeout; "
                        + (
                            claim
                            or "every slot holds a frame some reader group has not released "
                            f"(block policy); `shmring inspect {p.name}` shows which reader or "
                            "group lags"
                        )
                    )
                futex_wait(p.space_address, observed, wait)
                p.check_size()  # truncated while we slept: raise before a look faults
        finally:
            if waiting and not counted_before and not p.truncated:
                publisher.uncount_sleeper()

    def _all_buffers_held(self) -> RingFull:
        return RingFull(
            f"ring {self._p.name!r}: all {self._nbuffers} buffers hold frames readers keep or "
            "other writers' claims, so there is none to write into; create the ring with a "
            "larger spare_buffers, or have readers release frames sooner"
        )

    def skip(self, count: int = 1, timeout: float | None = None) -> int:
        """Publish a gap: readers count `count` frames (1 to 2**32 - 1) as dropped, in order
        with the frames around it, as if they had been written and lost (e.g. frames a
        bridge lost on its link). One descriptor stands for all of them; it takes a slot
        like a frame, so it waits for space (block policy) up to `timeout`. Returns its
        sequence number."""
        count = L.positive_int(count, "count", 1, L.MAX_SKIP_COUNT)
        self._p.check_usable()
        deadline = deadline_from(timeout)
        outer = self._begin_taking()
        try:
            buffer = self._take_buffer(deadline)
            publish, timestamp_ns = self._publisher.publish_skip, monotonic_ns()
            seq: int = publish(buffer, count, timestamp_ns, False)
            return self._published(
                seq, buffer, deadline, lambda locked: publish(buffer, count, timestamp_ns, locked)
            )
        finally:
            self._taking_thread = outer

    def _publish(
        self,
        buffer: int,
        own_shape: tuple[int, ...] | None,
        timestamp_ns: int,
        meta: bytes,
        deadline: float | None,
    ) -> int:
        describe = self._publisher.publish_described
        seq: int = describe(buffer, timestamp_ns, own_shape, meta, False)
        if seq >= 0:  # no closure on the way of every frame
            return seq
        return self._published(
            seq,
            buffer,
            deadline,
            lambda locked: describe(buffer, timestamp_ns, own_shape, meta, locked),
        )

    def _published(
        self, seq: int, buffer: int, deadline: float | None, step: Callable[[bool], int]
    ) -> int:
        """The number a publishing step on claimed `buffer` returned lock-free (`seq`), or in
        shared mode (a negative `seq`) what the same step, `step(locked)`, returns under the
        header lock.

        PUBLISH_STALLED: in a sequenced overwrite ring, the frame's position stayed held by
        another writer, or head waits for a number another writer holds; that writer may
        have died there, or be stopped (SIGSTOP). The buffer and the frame's number stay
        this writer's; dead writers are reaped (which repairs what they left), then the
        step runs again, lock-free, up to the deadline."""
        self._p.calls += 1
        try:
            if self._p.closing or self._p.closed:
                self._raise_closed()
            return self._published_counted(seq, buffer, deadline, step)
        finally:
            self._p.calls -= 1

    def _published_counted(
        self, seq: int, buffer: int, deadline: float | None, step: Callable[[bool], int]
    ) -> int:
        while True:
            seq = self._published_unlocked(seq, buffer, deadline, step)
            if seq >= 0:
                return seq
            # Shared mode: the same step, one writer at a time; a repair there may sequence
            # the ring, whose step may then stall as the lock-free one does.
            seq = self._locked_step(buffer, deadline, lambda: step(True))
            if seq == PUBLISH_STALLED:
                continue
            if seq < 0:
                raise RingCorrupted.header_overwritten(
                    self._p.name, "head is not a sequence number"
                )
            return seq

    def _published_unlocked(
        self, seq: int, buffer: int, deadline: float | None, step: Callable[[bool], int]
    ) -> int:
        """`seq`, or what the lock-free step returns once no other writer stalls it."""
        pause = STALLED_FIRST_PAUSE
        while seq == PUBLISH_STALLED:
            p = self._p
            p.check_counters()  # a forged next number must not hold the writer for ever
            if p.dead_participant_blocks():
                self._locked_step(buffer, deadline, self._reap)
            seq = step(False)
            if seq == PUBLISH_STALLED:
                left = remaining(deadline)
                if left <= 0:
                    self._strand(buffer)  # still claimed: the next write fills it again
                    raise ParticipantStalled(
                        f"ring {p.name!r}: another writer holds back the frames published "
                        "after its own (is it stopped?); no frame published within the timeout"
                    )
                try:
                    time.sleep(min(pause, left))
                except BaseException:  # (Ctrl-C): still claimed, as after a timeout
                    self._strand(buffer)
                    raise
                pause = min(pause * 2, STALLED_LAST_PAUSE)
        return seq

    def _reap(self) -> int:
        self._p.reap_dead()
        return 0

    def _locked_step(self, buffer: int, deadline: float | None, step: Callable[[], int]) -> int:
        """Run `step` on claimed `buffer` under the header lock (shared mode). Should the
        wait for the lock time out, the buffer stays claimed by this writer (W_CLAIMED): its
        next write or claim fills it again (_take_buffer), and leaving the ring gives it
        back, so a stopped lock holder cannot make it leak."""
        try:
            with self._p.lock.until(deadline):
                return step()
        except BaseException:  # a timeout, or Ctrl-C in the wait: the buffer is still ours
            self._strand(buffer)
            raise

    def _strand(self, buffer: int) -> None:
        """Keep claimed `buffer` (a publish timed out or was interrupted) for this writer's
        next write or claim to fill: write() takes the general path until then, since the
        C fast path would claim another buffer and leave this one claimed for good."""
        self._stranded = buffer
        self._fast_path = False

    def _unstrand(self) -> int:
        """The stranded buffer, no longer stranded (-1: none); the fast path again."""
        buffer, self._stranded = self._stranded, -1
        if buffer >= 0 and self._joined and not self._p.closed and not self._p.truncated:
            self._fast_path = True
        return buffer

    def _abandon(self, buffer: int, deadline: float | None) -> None:
        """Give a claimed buffer back unpublished."""
        self._p.calls += 1
        try:
            if self._p.closing or self._p.closed:
                self._raise_closed()
            result = self._publisher.abandon_claimed(buffer, False)
            if result == PUBLISH_FALLBACK:  # shared mode: the same step, one writer at a time
                result = self._locked_step(
                    buffer, deadline, lambda: self._publisher.abandon_claimed(buffer, True)
                )
        finally:
            self._p.calls -= 1
        if result == PUBLISH_CORRUPTED:
            raise self._corrupted_free_list()

    def wait_for_readers(self, count: int = 1, timeout: float | None = None) -> int:
        """Wait until at least `count` readers are attached; returns how many are.

        Under the block policy, frames published while no reader is attached are not kept
        for readers that join later, so a producer that must not lose its first frames
        waits for its consumers first."""
        L.positive_int(count, "count", 1, self._p.geometry.max_readers)
        deadline = deadline_from(timeout)
        control = self._control
        self._p.calls += 1
        try:
            if self._p.closing or self._p.closed:
                self._raise_closed()
            sleeps = Sleeps()
            while True:
                self._p.check_size()  # first and after each sleep: a truncated ring raises
                observed = load_word(control, L.C_MEMBERSHIP)
                attached = load_word(control, L.C_READERS)
                if attached >= count:  # counting a reader killed since, until it is reaped
                    attached = self._p.live_readers()
                    if attached >= count:
                        return attached
                wait = sleeps.next(deadline)
                if wait <= 0:
                    raise RingTimeout(
                        f"ring {self._p.name!r}: {attached} of {count} readers attached "
                        "within the timeout"
                    )
                futex_wait(self._p.membership_address, observed, wait)
        finally:
            self._p.calls -= 1

    @property
    def readers(self) -> int:
        """Readers attached now (alive: a reader killed is no longer counted)."""
        self._p.check_usable()
        return self._p.live_readers()

    # ---- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        if (
            self._joined
            and self._publisher.claim_open
            and not self._p.calls  # (else: "under way")
            and not self._p.closed
        ):
            raise HandleInUse(
                f"ring {self._p.name!r}: close() while a claim on this writer is open (its "
                "with block has not ended, in this thread or another); nothing was closed. "
                "Leave the with block first"
            )
        if self._joined:
            self._close_in_c(self._publisher.close)  # it raises if a write() is in it
        else:
            self._refuse_close_in_call()
        self._fast_path = False  # before leaving: write() must take the checked path
        super().close()

    def _forget_after_fork(self) -> None:
        self._fast_path = False  # it takes no lock and checks nothing: not in a child
        if self._joined:
            self._publisher.forget()
        super()._forget_after_fork()

    def __reduce__(self) -> tuple[Any, ...]:
        self._p.check_usable()  # a closed handle would attach to whatever has its name now
        return (_attach_writer, (self._p.name, self._p.segment.owner_uid, self._spin))

    def __repr__(self) -> str:
        state = "closed" if self._p.closed else ("owner" if self._owner else "attached")
        return (
            f"<RingWriter {self._p.name!r} {state} shape={self._shape} dtype={self._dtype} "
            f"slots={self._slots} policy={self.policy!r}>"
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def policy(self) -> str:
        return "block" if self._block else "overwrite"


class FramesOf(Protocol):
    """The frames and limits of a ring to create like another (a recording's, a bridge
    sender's)."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> DTypeLike: ...
    @property
    def max_readers(self) -> int: ...
    @property
    def max_writers(self) -> int: ...
    @property
    def meta_size(self) -> int: ...


def create_like(name: str, like: FramesOf, slots: int, policy: str) -> RingWriter:
    """Create ring `name` with the frames and limits of `like`, `slots` and `policy`."""
    return RingWriter.create(
        name,
        like.shape,
        like.dtype,
        slots=slots,
        policy=policy,
        max_readers=like.max_readers,
        max_writers=like.max_writers,
        meta_size=like.meta_size,
    )


def created_or_attached(
    create: Callable[[], RingWriter], attach: Callable[[], RingWriter]
) -> RingWriter:
    """`create()`, or `attach()` if the ring exists; again if it was removed in between (its
    owner closed it meanwhile: `attach` raised RingNotFound)."""
    while True:
        try:
            return create()
        except RingExists:
            pass
        try:
            return attach()
        except RingNotFound:
            continue


def _checked_spare_buffers(policy: str, slots: int, spare_buffers: object) -> int:
    """How many buffers beyond `slots` a new ring gets (create's arguments, checked)."""
    if policy == "block":
        if spare_buffers not in (None, 0):
            raise ValueError(
                "spare_buffers is for overwrite rings; a block ring's writers wait for "
                "readers instead (leave it out)"
            )
        return 0
    if slots < 2:
        raise ValueError(
            f"overwrite policy needs slots >= 2 (one frame to read while the next is "
            f"written), got slots={slots}"
        )
    if spare_buffers is None:
        return OVERWRITE_SPARE_BUFFERS
    return L.positive_int(spare_buffers, "spare_buffers", *L.LIMITS["spare_buffers"])


def _attach_writer(name: str, owner: int, spin: float) -> RingWriter:
    return RingWriter.attach(name, owner=owner, spin=spin)


def _publisher(
    p: Participant, record: memoryview, reclaim_eagerly: bool, stream_copies: bool = False
) -> Publisher:
    """write()'s and claim()'s fast path over this handle's views (_publisher.c)."""
    return Publisher(**publisher_arguments(p, record, reclaim_eagerly, stream_copies))


def publisher_arguments(
    p: Participant, record: memoryview, reclaim_eagerly: bool, stream_copies: bool = False
) -> dict[str, Any]:
    """Publisher's keyword arguments: this handle's views and the ring's geometry."""
    g, views = p.geometry, p.views
    return dict(
        p.c_arguments(),
        data=p.segment.data,
        record=record,
        freelist=views.freelist,
        reader_records=views.reader_table,
        group_records=views.group_table,
        frame_bytes=g.buffer_bytes,
        buffer_stride=g.buffer_stride,
        nbuffers=g.buffers,
        max_readers=g.max_readers,
        reclaim_eagerly=reclaim_eagerly,
        stream_copies=stream_copies,
        exclusive_when_alone=MEMBARRIER_AVAILABLE,
        overwrite=g.policy == L.POLICY_OVERWRITE,
        pin_table=views.pin_table if views.pins else None,
        views=views.buffers,
        meta_size=g.meta_size,
        ndim=len(g.shape),
        name=p.name,
    )


class _Membership:
    """What a writer handle holds as a writer once it has joined (see RingWriter._join);
    the finalizer's view of it, since the finalizer must not reference the handle."""

    __slots__ = ("index", "publisher", "record")

    def __init__(self) -> None:
        self.index = -1
        self.record: memoryview | None = None
        self.publisher: Publisher | None = None


def _close_writer(p: Participant, membership: _Membership, owner: bool) -> None:
    """Leave the ring (also run by the finalizer at garbage collection and interpreter exit)."""
    in_use = not p.begin_closing()  # interpreter exit beside a daemon thread's call (RingHandle)
    if membership.publisher is not None and not in_use:
        try:
            membership.publisher.close()  # its exports would keep the mappings alive
        except RuntimeError:  # interpreter exit while a daemon thread's write() copies
            in_use = True
    if in_use:
        if owner and not p.closed and p.pid == os.getpid():
            p.segment.unlink()  # the mappings stay the thread's until the process ends
        return
    if p.closed or p.pid != os.getpid():
        return
    try:
        if owner:  # first: a reader told the stream ended finds the name gone
            with contextlib.suppress(OSError):  # (the finally's unlink says why)
                p.segment.unlink()
        p.check_size()  # a truncated ring: touch nothing, unlink and close (RingCorrupted)
        with p.lock.until(time.monotonic() + CLOSE_LIMIT):
            if membership.record is not None:
                _leave_as_writer(p, membership.record, membership.index)
            elif owner:
                _end_unwritten_stream(p)
            if not owner:
                p.unlink_if_orphaned()
        p.wake_readers()
    except RingTimeout as exc:
        raise left_without_lock(p, "writer") from exc
    finally:
        try:
            if owner:  # even when the header is damaged: the creator must not leak the name
                p.segment.unlink()
        finally:
            p.close()


def _leave_as_writer(p: Participant, record: memoryview, index: int) -> None:
    """Under the lock: give up the writer record; the last writer out ends the stream."""
    if record[L.W_TOKEN] == p.token:
        # A buffer claimed, or a number kept from a stalled publish (its claim given back
        # since): left unplaced, that number would stop head for the writers that go on.
        abandoned_claim = record[L.W_CLAIMED] != L.NONE or record[L.W_CLAIMED_SEQ] != L.NONE
        record[L.W_CLAIMED] = L.NONE
        p.free_record(record, L.LOCK_WRITER_BASE + index)
        if abandoned_claim:  # its buffer (or claimed number) goes back
            p.repair_buffers()  # safe: under the lock, and we were not mid-publish
    p.reap_dead()  # a writer that died before us must not keep the stream from ending
    p.recount()
    if p.control[L.C_WRITERS] == 0:
        p.control[L.C_FLAGS] |= L.F_CLOSED


def _end_unwritten_stream(p: Participant) -> None:
    """Under the lock, for a creator that never wrote: if no writer ever joined, closing the
    ring ends its stream (its readers would otherwise wait for frames nobody can send)."""
    p.reap_dead()
    if p.control[L.C_WRITERS] == 0 and not p.control[L.C_FLAGS] & L.F_STARTED:
        p.control[L.C_FLAGS] |= L.F_CLOSED
