# RingReader and Frame: take frames out of a ring as read-only views, no copies.
#
# Rules: a frame a reader holds is never modified. Under the block policy that is because
# writers reuse a buffer only after every group released its frame (R_RELEASE / G_CURSOR);
# under the overwrite policy because the reader pins the buffer (R_PINNED, or a word of its
# pin line: up to MAX_PINS frames at once) as a hazard pointer, in C (_taker.c): it stores
# the pin, then looks at the frame again, while writers mark a frame evicted before they look
# at the pins. Every pin is stored and cleared in C; Python only clears a reader's pin line
# when it takes the record, under the header lock. A reader that is its own group reads
# without the lock; group members (shared cursor) take it. Either policy: frames from read()
# stay held until released; iteration and latest() release the frame they returned last
# when they return the next (an overwrite reader before it takes the next: one pin less).

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
from numpy.typing import DTypeLike

from . import _layout as L
from ._async import AsyncReading
from ._errors import (
    EndOfStream,
    HandleInUse,
    RingCorrupted,
    RingFull,
    RingTimeout,
    WriterGone,
)
from ._fastpath import TAKE_NO_PIN, TAKE_NO_ROOM, FrameBase, Taker, load_word
from ._pacing import Pacer
from ._ring import (
    CLOSE_LIMIT,
    Participant,
    RingHandle,
    left_without_lock,
    participant_of,
    uncount_sleeper,
)
from ._segment import Segment, validate_name
from ._sys import futex_wait, precise_futex_wait
from ._timing import DEFAULT_SPIN, POLL_SLICE, Liveness, Sleeps, checked_spin, deadline_from

_STARTS = ("latest", "oldest")

# What a wait waits for: a frame it takes, or the sequence number of a published frame that
# the caller takes itself (iteration, see _iterate_own).
_Ready = TypeVar("_Ready", "Frame", int)


def _seq_of(ready: Frame | int) -> int:
    return ready if isinstance(ready, int) else ready.seq


class Frame(FrameBase):
    """One frame held by a reader. `array` is a read-only view into shared memory that stays
    unchanged until the frame is released (context exit, `release()`, the reader's next
    frame when it came from iteration or `latest()`, or the Frame being garbage-collected:
    keep the Frame, not just its array, while you use the array). Copy it to keep it longer.
    `array`, `seq`, `timestamp_ns` and `dropped` are read-only. (The fields live in C, FrameBase, so
    that iteration builds a Frame without running Python: _taker.c.)"""

    __slots__ = ()

    @property
    def meta(self) -> bytes:
        """The per-frame user metadata the writer attached (b"" if none)."""
        return self._meta

    def release(self) -> None:
        """Let writers reuse this frame's buffer. Idempotent."""
        reader = self._reader
        if reader is not None:
            # Release first, forget the reader after: a Ctrl-C in between leaves a frame
            # that can be released again (releasing is idempotent), never one that is
            # held for ever with nobody able to release it.
            reader._release(self)
            self._reader = None

    def __enter__(self) -> Frame:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"<Frame seq={self.seq} shape={self.array.shape} dtype={self.array.dtype} "
            f"dropped={self.dropped}>"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            f"a Frame (seq {self.seq}) is a view into its ring held by this process's reader "
            "and cannot be pickled: send frame.array.copy(), or its seq and the ring's name"
        )


class _CollectableFrame(Frame):
    """A Frame that only its caller references (from read(), latest() or a slow step of
    iteration): released when garbage-collected. Frames from the iteration fast path are
    plain Frames: the reader keeps the last one until the next step releases it, so a
    finalizer could never run first and would only cost time at every frame."""

    __slots__ = ()

    def __del__(self) -> None:
        # A frame nobody references any more can never be released by hand (say Ctrl-C
        # arrived between read() returning it and the assignment): release it here, or the
        # reader would hold it for ever.
        reader = self._reader
        if reader is not None:
            with contextlib.suppress(Exception):  # e.g. at interpreter shutdown
                reader._release(self)
            self._reader = None


class RingReader(AsyncReading, RingHandle):
    """Reads frames from a ring: every frame (its own group), or a share of them (group)."""

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        group: str | None = None,
        start: str = "latest",
        timeout: float | None = 0.0,
        spin: float = DEFAULT_SPIN,
        shape: int | Sequence[int] | None = None,
        dtype: DTypeLike | None = None,
        owner: int | str | None = None,
    ) -> RingReader:
        """Join ring `name` as a reader (waiting up to `timeout` s for the ring to appear).

        `start`: "latest" begins with the newest published frame, "oldest" with the oldest
        one still in the ring. `spin`: seconds to poll before sleeping when no frame is
        ready (lower latency for back-to-back frames, at the cost of CPU). With `shape`
        and/or `dtype`, a ring of another geometry raises IncompatibleRing. `owner`: the user
        (uid or name) the ring must belong to; by default, this process's user or root, else
        UntrustedRing."""
        validate_name(name)
        if group is not None and not isinstance(group, str):
            raise TypeError(f"group must be None or a name (a str), got {group!r}")
        if group is not None and (
            not group or len(group.encode()) > L.MAX_GROUP_NAME or "\0" in group
        ):  # (NUL pads names in the ring: "a" and "a\0" would be one group)
            raise ValueError(
                f"group must be None or a non-empty name of at most {L.MAX_GROUP_NAME} UTF-8 "
                f"bytes without NUL, got {group!r}"
            )
        if not isinstance(start, str):
            raise TypeError(f"start must be 'latest' or 'oldest' (a str), got {start!r}")
        if start not in _STARTS:
            raise ValueError(f"start must be 'latest' or 'oldest', got {start!r}")
        checked_spin(spin)
        deadline = deadline_from(timeout)
        segment = Segment.attach(
            name, timeout, writable_data=False, shape=shape, dtype=dtype, owner=owner
        )
        with participant_of(segment, owner=False) as p:
            return cls(p, group, start, float(spin), deadline)

    def __init__(
        self,
        participant: Participant,
        group: str | None,
        start: str,
        spin: float,
        deadline: float | None = None,
    ) -> None:
        p = self._p = participant
        g = p.geometry
        self._group_name = group
        self._start = start
        self._spin = spin
        self._lock = p.lock  # tests use it to die while holding the header lock
        self._control = p.control
        self._descriptors = p.views.descriptors
        self._buffers = p.views.buffers
        self._meta_size = g.meta_size
        self._slots = g.slots
        self._block = g.policy == L.POLICY_BLOCK
        self._held: list[int] = []  # block policy: sequence numbers of frames held
        self._last: Frame | None = None  # frame returned by iteration / latest()
        self._pending: Frame | None = None  # taken, not yet handed to the caller
        # Counted in C_READER_WAITERS (R_SLEEPING set) while about to sleep or asleep. A
        # woken reader uncounts itself as soon as it has its frame (_taker.c: an atomic add),
        # so the count says who is asleep (spinning_pays) and writers stop waking it.
        self._counted = False
        self._pacer = Pacer(spin)  # when this reader's frames are due, for a steady stream
        self._paces_sleeps = False  # whether frames it slept for teach the pacer (_yield_poll)
        self._dropped = 0
        # Skips passed over before their next frame was published: that frame's `dropped`
        # reports them (they are in `dropped` already). Iteration's C steps wait meanwhile.
        self._carried_drops = 0
        self._group_record: memoryview | None = None
        with p.lock.until(deadline):
            index = p.take_record(p.views.readers, L.LOCK_READER_BASE, "reader")
            record = p.views.readers[index]
            try:
                first = self._join(index, record, group, start, deadline)
                self._taker = _taker(p, record, self._group_record)
            except BaseException:  # (a writer stopped mid-publish, Ctrl-C): not attached
                p.free_record(record, L.LOCK_READER_BASE + index)
                p.recount()
                raise
        p.announce_membership()
        self._index = index
        self._record = record
        self._next = first
        self._lock_free = self._block and group is None
        self._pins_lock_free = not self._block and group is None
        self._group_lock_free = self._block and group is not None
        self._leave_at(_close_reader, record, index, self._taker)
        p.on_truncation = weakref.WeakMethod(self._stop_fast_paths)

    def _stop_fast_paths(self) -> None:
        """The ring was found truncated (Participant.check_size): the C steps touch nothing
        from now on (an iteration under way then reaches the checks that raise)."""
        with contextlib.suppress(HandleInUse):  # found inside it: it goes on raising
            self._taker.close()  # (it looks at the file's size before it unpins)

    def _join(
        self, index: int, record: memoryview, group: str | None, start: str, deadline: float | None
    ) -> int:
        """Under the lock: set up reader record `index` (`record`), taken for this handle,
        and its group; the first frame it reads."""
        p = self._p
        window = p.window()
        tail, head = window.start, window.stop
        first = tail if start == "oldest" or head == tail else head - 1
        record[L.R_DROPPED] = 0
        record[L.R_SLEEPING] = 0
        record[L.R_PINNED] = L.NONE
        if p.views.pins:  # overwrite: a reaped reader's pins must not outlive it
            L.clear_pin_line(p.views.pins[index])
        if group is None:
            record[L.R_GROUP] = L.NONE
            record[L.R_RELEASE] = first
        else:
            record[L.R_RELEASE] = L.NONE
            record[L.R_GROUP] = self._join_group(group, first)
            self._group_record = p.views.groups[record[L.R_GROUP]]
        p.recount()
        if self._block:
            # Writers reclaim without the lock (the exclusive writer, or sequenced ones):
            # once they have seen this reader, frames from `first` on are safe; any they
            # freed before, we skip.
            p.quiesce_writers(deadline)
            first = max(first, load_word(p.control, L.C_TAIL))
            if group is None:
                record[L.R_RELEASE] = first
            else:
                assert self._group_record is not None
                tail = load_word(p.control, L.C_TAIL)
                if self._group_record[L.G_CURSOR] < tail:  # a new group: no member yet
                    self._group_record[L.G_CURSOR] = tail
        return first

    def _join_group(self, group: str, first: int) -> int:
        """Under the lock: the index of group `group`'s record, made active. A free record
        keeps the name and cursor of the group that had it last (docs/FORMAT.md, "Group
        record"): a group whose members all left goes on from its cursor when one joins
        again (a restarted worker repeats no frame), as long as no new group took the
        record; free records never used are taken first, then the lowest free one."""
        p = self._p
        encoded = group.encode().ljust(L.MAX_GROUP_NAME, b"\0")
        free: dict[str, int] = {}  # "own", "unused", "other": the first free record of each
        for index, record in enumerate(p.views.groups):
            name = bytes(p.views.group_names[index])
            if record[L.G_STATE] == L.STATE_ACTIVE:
                if name == encoded:
                    return index
                continue
            kind = "own" if name == encoded else "unused" if not any(name) else "other"
            free.setdefault(kind, index)
        chosen = free.get("own", free.get("unused", free.get("other")))
        if chosen is None:
            raise RingCorrupted.header_overwritten(p.name, "no free group record")
        record = p.views.groups[chosen]
        if "own" not in free:
            record[L.G_CURSOR] = first
            p.views.group_names[chosen][:] = encoded
        record[L.G_STATE] = L.STATE_ACTIVE
        return chosen

    # ---- reading -----------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Frame:
        """The next frame, held until released (use `with r.read() as frame:`)."""
        deadline = None if timeout is None else deadline_from(timeout)
        p = self._p
        p.calls += 1
        try:
            if p.closing or p.closed:
                self._raise_closed()
            # A published frame of a block reader of its own: no wait to set up.
            frame = self._take_own(self._next, 0) if self._lock_free else None
            if frame is None:
                frame = self._wait_for(lambda: self._take_next(deadline), deadline)
            elif self._counted:  # (an exception in a wait left it counted)
                self._uncount()
        except BaseException:
            self._release_pending()
            raise
        finally:
            p.calls -= 1
        self._pending = None
        return frame

    def __iter__(self) -> Iterator[Frame]:
        """Every frame until end of stream; each is released when the next is taken."""
        self._p.check_usable()
        return self._iterate_own() if self._lock_free else self._iterate()

    def _iterate_own(self) -> Iterator[Frame]:
        """__iter__ for a block-policy reader that is its own group. The common case, a
        ring-shaped frame without metadata with only the previous frame held, runs inline
        with the frame built in C (_taker.c). So does a wait for an unpublished frame when
        the reader does not poll (spin=0, or no CPU to spare: spinning_pays): after a wake-up
        every line of Python runs with cold caches, so the frame it slept for reaches the
        caller through as few of them as possible."""
        p = self._p
        held = self._held
        taker = self._taker
        advance = taker.advance
        # Local names, one fast lookup each: every Python lookup shows at 64-byte frames.
        is_published = taker.published

        def published() -> int | None:
            seq = self._next
            return seq if is_published(seq) else None

        try:
            while True:
                if p.closed:
                    p.check_usable()  # raises: closed, or inherited across fork()
                seq = self._next
                last = self._last
                frame = None
                # The last frame, if it is all this reader holds (the common case).
                alone = (
                    last
                    if last is not None
                    and len(held) == 1
                    and held[0] == last.seq
                    and last._reader is not None
                    and not self._carried_drops
                    else None
                )
                if alone is not None:
                    # Holds the new frame and releases the last in one store (R_RELEASE),
                    # then wakes writers waiting for that space: all in C.
                    frame = self._pending = advance(self, seq)
                    if frame is not None:
                        if self._counted:  # (an exception in a wait left it counted)
                            self._uncount()
                        self._next = seq + 1
                        held[0] = seq
                        alone._reader = None
                if frame is None and not is_published(seq):
                    frame = self._wait_in_iteration(seq, alone, published)
                if frame is None:
                    frame = self._next_by_general_path()
                    if frame is None:
                        return
                self._last = frame
                self._pending = None
                yield frame
        except BaseException:
            self._uncount()  # e.g. Ctrl-C in a sleep: the caller may not come back for long
            self._release_pending()  # or between taking a frame and handing it out
            raise

    def _wait_in_iteration(
        self, seq: int, alone: Frame | None, published: Callable[[], int | None]
    ) -> Frame | None:
        """_iterate_own's wait for frame `seq`, not yet published: the frame, or None for
        the general path (which also reports the end of the stream)."""
        p, held, taker = self._p, self._held, self._taker
        self._p.calls += 1
        try:
            if p.closing or p.closed:
                self._raise_closed()  # closed by another thread since the loop looked
            # Asking for the next frame means being done with the last: release it before
            # waiting, so the writer reuses that buffer, which is still in cache (a large
            # frame's writer waits for it: _writer.py, "hot buffer").
            if alone is not None:  # _release_last's store, without its Python steps
                taker.release(seq)  # first: a Ctrl-C after it leaves a frame to release again
                held.clear()
                alone._reader = None
                self._last = None
            else:
                self._release_last()
            frame = None
            sleeps_at_once = not self._spin
            if (
                (sleeps_at_once or not p.spinning_pays())
                and not self._carried_drops
                and (sleeps_at_once or self._yield_poll(published) is None)
            ):
                self._count()
                frame = self._pending = taker.wait(self, seq, POLL_SLICE)  # one sleep
                if frame is not None:
                    self._uncount()  # running again (see _counted)
                    if self._paces_sleeps:
                        self._pacer.arrived(seq, time.monotonic())
            if frame is None:  # polling, timed out, closed, or not for take()
                try:
                    self._wait_for(published, None)
                except EndOfStream:
                    return None
                frame = self._pending = (
                    None if self._carried_drops else taker.take(self, seq, 0, False)
                )
            if frame is not None and not held:  # (held: frames kept from read())
                # R_RELEASE reads seq already (_release stored self._next).
                self._next = seq + 1
                held.append(seq)
                return frame
            self._pending = None
            return None
        finally:
            self._p.calls -= 1

    def _iterate(self) -> Iterator[Frame]:
        try:
            while (frame := self._next_by_general_path()) is not None:
                self._last = frame
                self._pending = None
                yield frame
        except BaseException:
            self._release_pending()
            raise

    def _next_by_general_path(self) -> Frame | None:
        """One step of iteration: the next frame, the previous one released; None at end of
        stream."""
        self._p.calls += 1
        try:
            if self._p.closing or self._p.closed:
                self._raise_closed()
            if not self._block:
                self._release_last()  # pinned frames are scarce: one pin less to ask for
            frame = self._take_next()
            if frame is None:
                # Asking for the next frame means being done with the last: release it
                # before waiting, so the writer reuses that buffer, which is still in cache.
                self._release_last()
                frame = self._wait_for(self._take_next, None)
            else:
                self._uncount()  # woken for the last frame, if at all: no longer waiting
        except EndOfStream:
            self._release_last()
            return None
        finally:
            self._p.calls -= 1
        self._release_last()
        return frame

    def _release_pending(self) -> None:
        """Release a frame that was taken but never reached the caller (an exception, such
        as KeyboardInterrupt, arrived in between); otherwise nobody could ever release it."""
        frame, self._pending = self._pending, None
        if frame is not None and frame is not self._last:
            frame.release()

    def latest(self, timeout: float | None = None) -> Frame:
        """The newest published frame; older unread ones are skipped (and counted as
        dropped). Releases the frame the previous `latest()` returned."""
        deadline = deadline_from(timeout)
        self._p.calls += 1
        try:
            if self._p.closing or self._p.closed:
                self._raise_closed()
            if not self._block:
                self._release_last()  # pinned frames are scarce: one pin less to ask for
            # A published frame of a block reader of its own: no wait to set up.
            frame = self._take_latest(deadline) if self._lock_free else None
            if frame is None:
                frame = self._wait_for(lambda: self._take_latest(deadline), deadline)
            elif self._counted:  # (an exception in a wait left it counted)
                self._uncount()
        except BaseException:
            self._release_pending()
            raise
        finally:
            self._p.calls -= 1
        self._release_last()
        self._last = frame
        self._pending = None
        return frame

    def _release_last(self) -> None:
        if self._last is not None:
            self._last.release()
            self._last = None

    def _wait_for(self, take: Callable[[], _Ready | None], deadline: float | None) -> _Ready:
        """Poll `take` (after a nap, for a steady stream: _pacing.py), then sleep on the
        frames futex; raise at end of stream, when every writer is gone, or at the
        deadline. Its callers have counted themselves (Participant.calls): close() refuses
        meanwhile."""
        frame = take()
        if frame is not None:
            if self._counted:  # woken for the last frame: no longer waiting (inline: hot)
                self._uncount()
            return frame
        p, control = self._p, self._control
        try:
            if self._spin:
                polled = self._poll if p.spinning_pays() else self._yield_poll
                frame = polled(take, deadline)  # _poll may nap as a counted sleeper
                if frame is not None:
                    return frame
            self._count()
            liveness, sleeps = Liveness(), Sleeps()
            while True:
                observed = load_word(control, L.C_FRAMES)
                frame = take()
                if frame is not None:
                    if self._spin:  # only a reader that polls paces itself
                        self._pacer.arrived(_seq_of(frame), time.monotonic())
                    self._uncount()  # running again (see _counted)
                    return frame
                if self._ended():
                    frame = take()
                    if frame is not None:
                        return frame
                    raise EndOfStream(f"ring {p.name!r}: the stream was closed and drained")
                if liveness.due():
                    self._check_writers_alive(deadline)
                wait = sleeps.next(deadline)
                if wait <= 0:
                    claim = p.unpublished_claim()
                    raise RingTimeout(
                        f"ring {p.name!r}: no frame arrived within the timeout"
                        + (f"; {claim}" if claim else "")
                    )
                futex_wait(p.frames_address, observed, wait)
                p.check_size()  # truncated while we slept: raise before a look faults
        except BaseException:
            self._uncount()  # the caller may not come back for a long time
            raise

    def _poll(self, take: Callable[[], _Ready | None], deadline: float | None) -> _Ready | None:
        """The polling part of a wait: nap first if the stream is steady (_pacing.py), then
        poll for up to `spin` seconds (past the frame's due time after a nap). The asyncio
        reader's wait (_async.py) runs the same steps, napping and polling on the loop."""
        nap = self._nap_plan(deadline)
        frame = None if nap is None else self._nap(take, nap[0])
        window = self._poll_window(nap, frame, deadline)
        if window is None:
            return frame
        poll_until, now = window
        woke = now
        while True:
            frame = take()
            if frame is not None:
                self._polled(frame, nap, now == woke, now - woke)
                return frame
            now = time.monotonic()
            if now >= poll_until:
                return None

    def _yield_poll(
        self, take: Callable[[], _Ready | None], deadline: float | None = None
    ) -> _Ready | None:
        """When polling does not pay (more busy participants than CPUs) but several writers
        share the ring, or the reader is a group member: poll for up to `spin` seconds,
        yielding the CPU before each look, so that the reader runs only when no other
        process wants its CPU. Frames from several writers come microseconds apart, and a
        group's members take turns; a reader that sleeps for each frame costs every publish
        a wake-up (docs/performance.md, "Fan-in: the reader yields" and the section after
        it, which also says why not every reader: fan-out readers lost at small frames).
        Writers among several poll for space the same way (_writer.py, _poll_for_space).
        Any other reader does so only for a steady stream (_pacing.py): it naps until just
        before its frame is due and then polls yielding, so the writer finds it awake and
        has nobody to wake (docs/performance.md, "Fan-out: paced readers yield")."""
        if self._group_record is None and load_word(self._control, L.C_WRITERS) < 2:
            self._paces_sleeps = True
            pacer = self._pacer
            if not pacer.steady or self._nap_plan(deadline) is None:
                return None

            def look() -> _Ready | None:
                os.sched_yield()
                return take()

            pacer.yielding = True
            try:
                return self._poll(look, deadline)
            finally:
                pacer.yielding = False
        self._paces_sleeps = False
        poll_until = time.monotonic() + self._spin
        if deadline is not None:
            poll_until = min(poll_until, deadline)
        while True:
            os.sched_yield()
            frame = take()
            if frame is not None or time.monotonic() >= poll_until:
                return frame

    def _nap_plan(self, deadline: float | None) -> tuple[float, int] | None:
        """When a wait's nap ends and the frame it waits for; None: no nap, poll at once."""
        pacer = self._pacer
        if pacer.interval is None:  # only then: reading head costs the writer a cache miss
            return None
        # Waiting means waiting for the next frame to be published.
        seq = self._next if self._lock_free else load_word(self._control, L.C_HEAD)
        nap_end = pacer.nap_until(seq, time.monotonic())
        if nap_end is None or (deadline is not None and nap_end >= deadline):
            return None
        return nap_end, seq

    def _poll_window(
        self, nap: tuple[float, int] | None, frame: _Ready | None, deadline: float | None
    ) -> tuple[float, float] | None:
        """After the nap (if any), which got `frame`: None if the wait is over (the frame
        came during the nap, or the stream was closed); else (when polling ends, now), with
        the reader no longer counted as a sleeper."""
        now = time.monotonic()
        if nap is None:
            poll_until = now + self._spin
        else:
            pacer = self._pacer
            if frame is not None:
                pacer.nap_outcome(overslept=True, polled=0.0)
                pacer.arrived(_seq_of(frame), now, nap_end=nap[0])
                self._uncount()  # running again (see _counted)
                return None
            if self._ended():
                return None  # the caller's wait drains the stream and reports its end
            poll_until = max(pacer.due(nap[1]), now) + self._spin
        self._uncount()  # a poller must not have writers wake it for nothing
        if deadline is not None and deadline < poll_until:
            poll_until = deadline
        return poll_until, now

    def _polled(
        self, frame: _Ready, nap: tuple[float, int] | None, at_first_look: bool, polled: float
    ) -> None:
        """Polling (after `nap`, if any) found `frame` after `polled` seconds: what the pacer
        learns."""
        pacer = self._pacer
        nap_end = None
        if nap is not None:
            pacer.nap_outcome(overslept=at_first_look, polled=polled)
            if at_first_look:  # it came while we slept
                nap_end = nap[0]
        pacer.arrived(_seq_of(frame), time.monotonic(), nap_end)

    def _nap(self, take: Callable[[], _Ready | None], nap_end: float) -> _Ready | None:
        """Sleep as a counted waiter (a frame that comes early wakes us) until `nap_end`;
        the frame if one came, else None (also as soon as the stream is closed)."""
        p, control = self._p, self._control
        self._count()
        while True:
            observed = load_word(control, L.C_FRAMES)
            frame = take()
            if frame is not None or self._ended():
                return frame
            wait = nap_end - time.monotonic()
            if wait <= 0:
                return None
            precise_futex_wait(p.frames_address, observed, min(wait, POLL_SLICE))
            p.check_size()  # as in _wait_for

    def _ended(self) -> bool:
        """Whether the stream was closed and no writer is left (lock-free: flags first,
        each an acquire load, so a look for frames after it sees every frame published)."""
        control = self._control
        return bool(load_word(control, L.C_FLAGS) & L.F_CLOSED) and not load_word(
            control, L.C_WRITERS
        )

    def _count(self) -> None:
        """Count this reader in C_READER_WAITERS, so that writers wake it (see _counted)."""
        if not self._counted:
            self._taker.count()  # _taker.c: the add, R_SLEEPING, the barrier
            self._counted = True

    def _uncount(self) -> None:
        if self._counted and not self._p.truncated:
            self._counted = False
            self._taker.uncount()

    def _check_writers_alive(self, deadline: float | None) -> None:
        """Raise WriterGone when nobody is left to end the stream: every writer that joined
        died without closing it, or no writer ever joined and the ring's creator died."""
        p = self._p
        p.check_size()
        p.check_counters()
        awaited = load_word(self._descriptors[self._next % self._slots], L.D_SEQ)
        if self._lock_free and L.SEQ_LIMIT <= awaited != L.NONE:
            raise RingCorrupted.header_overwritten(
                p.name, f"a descriptor's sequence number {awaited} is past the sequence limit"
            )
        if p.live_writers() > 0 and not p.dead_writers() and not p.lock_holder_died():
            return
        with p.lock.until(deadline):  # a dead writer's claimed number is published as a skip
            p.reap_dead()
            flags = p.control[L.C_FLAGS]
            orphaned = p.control[L.C_WRITERS] == 0 and not flags & L.F_CLOSED
            started = bool(flags & L.F_STARTED)
        if orphaned and started:
            raise WriterGone(
                f"ring {p.name!r}: every writer died without closing the stream; "
                "frames published before that were delivered"
            )
        if orphaned and not p.segment.creator_alive():
            raise WriterGone(
                f"ring {p.name!r}: its creator died and no writer ever joined; "
                "nothing can end this stream"
            )

    def _take_next(self, deadline: float | None = None) -> Frame | None:
        if self._lock_free:
            return self._take_own(self._next, 0)
        if self._pins_lock_free:
            return self._take_pinned(False, deadline)
        if self._group_lock_free:
            return self._take_group(latest=False)
        with self._p.lock.until(deadline):
            return self._take_locked(latest=False)

    def _take_latest(self, deadline: float | None = None) -> Frame | None:
        if self._lock_free:
            control = self._control
            head = load_word(control, L.C_HEAD)
            # Tail read after head is at least the tail of that moment: a head past it by
            # more than the ring is forged (and would move this reader past every frame).
            if head >= L.SEQ_LIMIT or head > load_word(control, L.C_TAIL) + self._slots:
                self._p.window()  # raises RingCorrupted, naming head and tail
                return None  # (put back meanwhile: look again)
            seq = max(self._next, head - 1)
            return self._take_own(seq, seq - self._next)
        if self._pins_lock_free:
            return self._take_pinned(True, deadline)
        if self._group_lock_free:
            return self._take_group(latest=True)
        with self._p.lock.until(deadline):
            return self._take_locked(latest=True)

    def _take_group(self, latest: bool) -> Frame | None:
        """Block policy, a group member: claim the group's next (or newest) frame lock-free
        in C (_taker.c, take_group), which holds it for this member before claiming it, and
        records it in `held` before anything can run a finalizer that releases frames. A
        frame C cannot build (own shape or metadata) is built here; if that is cut short
        (an exception, Ctrl-C even before the call's result is stored), it is let go."""
        held, carried = self._held, self._carried_drops
        try:
            taken = self._taker.take_group(self, held, latest, carried)
            if taken is None:
                return None
            if isinstance(taken, Frame):
                frame, seq, dropped = taken, taken.seq, taken.dropped
                self._pending = frame
            elif isinstance(taken, tuple):  # its own shape or metadata: held already
                seq, dropped = taken
                if seq == L.NONE:  # no frame, only numbers published as skips: dropped,
                    self._taker.release(min(held) if held else L.NONE)  # and reported by
                    self._count_dropped(dropped - carried)  # the next frame
                    self._carried_drops = dropped
                    return None
                frame = self._frame(seq, dropped)
                self._taker.unbuilt()  # a Frame holds it now
            else:  # a state a block ring cannot be in (no plain store may race the swaps)
                raise RingCorrupted.header_overwritten(
                    self._p.name,
                    f"group {self._group_name!r}'s cursor is outside the window of published "
                    "frames",
                )
        except BaseException:
            unbuilt = self._taker.unbuilt()
            if unbuilt in held:  # never handed out: let it go
                held.remove(unbuilt)
                self._taker.release(min(held) if held else L.NONE)
            raise
        self._taker.release(min(held))
        self._carried_drops = 0
        if dropped > carried:
            self._count_dropped(dropped - carried)
        return frame

    def _take_pinned(self, latest: bool, deadline: float | None) -> Frame | None:
        """Overwrite policy, own group: the next (or newest) frame, pinned lock-free in C
        (_taker.c, take_pinned); the general path for what that declines, and while it
        carries frames it passed over (the C step counts only from self._next)."""
        if self._carried_drops:
            with self._p.lock.until(deadline):
                return self._take_locked(latest)
        frame = self._taker.take_pinned(self, self._next, latest)
        if frame in (TAKE_NO_ROOM, TAKE_NO_PIN) and self._reaped_dead_readers(deadline):
            frame = self._taker.take_pinned(self, self._next, latest)  # their pins are gone
        if frame is None or isinstance(frame, Frame):
            if frame is not None:
                self._pending = frame
                seq = frame.seq
                self._next = seq + 1
                # What this reader may still want: frames from seq + 1 on, or, after
                # latest(), none but the newest (NONE). Overwrite writers reuse the buffers
                # of frames below every reader's release first (FORMAT.md, "Reading").
                self._taker.release(L.NONE if latest else seq + 1)
                if frame.dropped:
                    self._count_dropped(frame.dropped)
            return frame
        if frame in (TAKE_NO_ROOM, TAKE_NO_PIN):
            raise self._no_room_to_pin(frame)
        with self._p.lock.until(deadline):
            return self._take_locked(latest)

    def _reaped_dead_readers(self, deadline: float | None) -> bool:
        """Overwrite policy, no room to pin: whether dead readers' records (and with them
        their pins) were reaped, so that taking again may find room."""
        with self._p.lock.until(deadline):
            return self._p.reap_dead()

    def _take_own(self, seq: int, skipped: int) -> Frame | None:
        """Block policy, own group, no lock: frame `seq` if published (numbers published
        as skips, DF_SKIP, are passed over and counted dropped, each as the frames it stands
        for). A ring-shaped frame without metadata is built in C; any other, here."""
        taker = self._taker
        frame = self._pending = taker.take(self, seq, skipped + self._carried_drops, True)
        if frame is None:
            description = taker.describe(seq)
            while description is not None and description[0] & L.DF_SKIP:
                seq, skipped = seq + 1, skipped + L.skip_count(description[0])
                description = taker.describe(seq)
            if description is None:
                if skipped:  # passed over skips: release them; the next frame reports them
                    self._next = seq
                    if not self._held:
                        taker.release(seq)
                    self._count_dropped(skipped)
                    self._carried_drops += skipped
                return None
            frame = self._frame(seq, skipped + self._carried_drops, description)
        self._carried_drops = 0
        self._next = seq + 1
        held = self._held
        held.append(seq)
        taker.release(held[0] if len(held) == 1 else min(held))
        if skipped:
            self._count_dropped(skipped)
        return frame

    def _take_locked(self, latest: bool) -> Frame | None:
        """Overwrite policy, under the header lock: group members, and readers of their own
        whose lock-free take fell back (_take_pinned). (Block readers take lock-free.)"""
        p, group = self._p, self._group_record
        cursor = self._next if group is None else group[L.G_CURSOR]
        window = p.window()
        if cursor > window.stop:
            raise RingCorrupted.header_overwritten(
                p.name, f"group cursor {cursor} is past head {window.stop}"
            )
        skipped = 0
        if cursor < window.start:
            skipped, cursor = window.start - cursor, window.start
        if latest and cursor < window.stop - 1:
            skipped, cursor = skipped + window.stop - 1 - cursor, window.stop - 1
        frame = None
        carried = self._carried_drops  # passed over by an earlier look
        while cursor < window.stop:
            descriptor = self._descriptors[cursor % self._slots]
            # Acquire loads, D_SEQ first: lock-free writers store these words meanwhile.
            published = load_word(descriptor, L.D_SEQ) == cursor
            flags = load_word(descriptor, L.D_FLAGS)
            if published and not flags & (L.DF_EVICTED | L.DF_SKIP):
                frame = self._pin_and_frame(cursor, carried + skipped)
                cursor += 1
                if frame is None:  # evicted or replaced by the lock-free writer meanwhile
                    skipped += 1
                    continue
                break
            # evicted by an overwriting writer, or a skip (standing for its count of frames)
            skipped += L.skip_count(flags) if published and flags & L.DF_SKIP else 1
            cursor += 1
        if group is None:
            self._next = cursor
            self._taker.release(L.NONE if latest else cursor)  # (as _take_pinned)
        else:
            group[L.G_CURSOR] = cursor
        if skipped:
            self._count_dropped(skipped)
        # The cursor moved past them: without a frame now, the next frame reports them.
        self._carried_drops = carried + skipped if frame is None else 0
        return frame

    def _pin_and_frame(self, seq: int, dropped: int) -> Frame | None:
        """Overwrite policy, under the lock: pin frame `seq` (in C: the writer does not take
        the lock) and build it; None if it was evicted or replaced meanwhile."""
        pinned = self._taker.pin(seq)
        if pinned in (TAKE_NO_ROOM, TAKE_NO_PIN) and self._p.reap_dead():
            pinned = self._taker.pin(seq)  # dead readers' pins are gone
        if pinned in (TAKE_NO_ROOM, TAKE_NO_PIN):
            raise self._no_room_to_pin(pinned)
        if pinned < 0:
            return None
        try:
            frame = self._frame(seq, dropped)
        except RingCorrupted:
            if self._taker.holds(seq):
                raise
            frame = None  # what it read was half the next frame's: this one is gone
        if frame is not None and self._taker.holds(seq):
            return frame
        if frame is not None:
            frame._reader = None  # never handed out
            self._pending = None
        self._taker.unpin(seq)
        return None

    def _no_room_to_pin(self, why: int) -> RingFull:
        """Overwrite policy: holding one more frame would leave a writer no buffer to write
        into (writers never wait), or this reader holds as many as it may (TAKE_NO_PIN)."""
        p = self._p
        if why == TAKE_NO_PIN:
            return RingFull(
                f"ring {p.name!r}: this reader holds {L.MAX_PINS} frames, as many as a reader "
                "of an overwrite ring may hold at once; release one before reading the next"
            )
        return RingFull(
            f"ring {p.name!r}: readers hold as many frames as its {p.geometry.buffers} buffers "
            f"allow while leaving one to each of its writers (this reader holds "
            f"{self._taker.held()}); create the ring with a larger spare_buffers, or release "
            "frames sooner"
        )

    def _frame(
        self,
        seq: int,
        dropped: int,
        description: tuple[int, int, int, tuple[int, ...] | None, bytes] | None = None,
    ) -> Frame:
        """Frame `seq`, built from its descriptor as read in C (Taker.describe; the caller's
        `description` if it has one): the caller holds it, or pinned it and checks after."""
        if description is None:
            description = self._taker.describe(seq)
            if description is None:
                raise RingCorrupted.header_overwritten(
                    self._p.name, f"frame {seq} left its descriptor while held"
                )
        flags, buffer, timestamp_ns, own_shape, meta = description
        if flags & (L.DF_SKIP | L.DF_EVICTED):  # the caller saw a frame there
            raise RingCorrupted.header_overwritten(
                self._p.name, f"frame {seq} turned into a gap while taken"
            )
        try:
            if flags & L.DF_OWN_SHAPE and own_shape is not None:  # (set together)
                array = self._own_shape_view(own_shape, buffer)
            else:
                array = self._buffers[buffer]
        except IndexError:
            raise RingCorrupted.header_overwritten(
                self._p.name, f"frame {seq} names buffer {buffer}, out of range"
            ) from None
        frame = self._pending = _CollectableFrame(
            self, array, seq, timestamp_ns, dropped, meta[: self._meta_size]
        )
        return frame

    def _own_shape_view(self, own_shape: tuple[int, ...], buffer: int) -> np.ndarray:
        p = self._p
        ring_shape = p.geometry.shape
        shape = own_shape[: len(ring_shape)]
        if any(not 1 <= got <= limit for got, limit in zip(shape, ring_shape, strict=True)):
            raise RingCorrupted.header_overwritten(
                p.name, f"a frame's shape {shape} does not fit the ring's {ring_shape}"
            )
        view = p.views.buffer_view(p.geometry, p.checked_buffer(buffer), shape)
        view.flags.writeable = False
        return view

    def _count_dropped(self, count: int) -> None:
        self._dropped += count
        self._taker.count_dropped(self._dropped)

    def _release(self, frame: Frame) -> None:
        if self._p.closed or self._p.truncated:
            return
        if not self._block:
            self._taker.unpin(frame.seq)  # in C; a second release unpins nothing
            return
        held = self._held
        if frame.seq in held:  # not if an interrupted take never got to record it
            held.remove(frame.seq)
        if held:
            release = min(held)
        else:
            release = self._next if self._group_record is None else L.NONE
        self._taker.release(release)  # in C: the store, then wake writers waiting for it

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Frames this reader lost in total (overwrite policy, or skipped by latest())."""
        return self._dropped

    @property
    def group(self) -> str | None:
        return self._group_name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._p.geometry.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._p.geometry.dtype

    def close(self) -> None:
        self._close_in_c(self._taker.close)  # it raises if another thread waits in it
        self._last = self._pending = None  # a frame refers back to its reader: no cycle
        super().close()

    def _forget_after_fork(self) -> None:
        self._taker.forget()
        super()._forget_after_fork()

    def __reduce__(self) -> tuple[Any, ...]:
        self._p.check_usable()  # a closed handle would attach to whatever has its name now
        return (
            _attach_reader,
            (self._p.name, self._group_name, self._start, self._spin, self._p.segment.owner_uid),
        )

    def __repr__(self) -> str:
        state = "closed" if self._p.closed else f"next={self._next}"
        return f"<RingReader {self._p.name!r} group={self._group_name!r} {state}>"


def _attach_reader(name: str, group: str | None, start: str, spin: float, owner: int) -> RingReader:
    return RingReader.attach(name, group=group, start=start, spin=spin, owner=owner)


def _taker(p: Participant, record: memoryview, group: memoryview | None) -> Taker:
    """Taking frames lock-free, in C (_taker.c), over this handle's views."""
    return Taker(**taker_arguments(p, record, group))


def taker_arguments(
    p: Participant, record: memoryview, group: memoryview | None = None
) -> dict[str, Any]:
    """Taker's keyword arguments: this handle's views and the ring's geometry."""
    g = p.geometry
    return dict(
        p.c_arguments(),
        buffers=p.views.buffers,
        frame_type=Frame,
        record=record,
        reader_records=p.views.reader_table,
        collectable_frame_type=_CollectableFrame,
        max_readers=g.max_readers,
        nbuffers=g.buffers,
        group=group,
        fd=p.segment.fd,
        segment_bytes=g.segment_bytes,
        check_size=p.check_size,
        pin_table=p.views.pin_table if p.views.pins else None,
    )


def _close_reader(p: Participant, record: memoryview, index: int, taker: Taker) -> None:
    """Leave the ring (also run by the finalizer at garbage collection and interpreter exit)."""
    if not p.begin_closing():  # interpreter exit beside a daemon thread's call (RingHandle):
        return  # its end frees what the thread uses
    try:
        taker.close()  # first: it raises if another thread waits in it (idempotent)
    except RuntimeError:  # interpreter exit while a daemon thread waits in it: likewise
        return
    if p.closed or p.pid != os.getpid():
        return
    try:
        p.check_size()  # a truncated ring: touch nothing, close (RingCorrupted)
        # (taker.close() above cleared its pins.)
        with p.lock.until(time.monotonic() + CLOSE_LIMIT):
            if record[L.R_TOKEN] == p.token:
                # A reader that leaves from a wait (an exception) may be counted: uncount it
                # (if the lock times out, whoever reaps the record does).
                uncount_sleeper(record, L.R_SLEEPING, p.reader_waiters_address)
                p.free_record(record, L.LOCK_READER_BASE + index)
            p.recount()
            p.unlink_if_orphaned()
        p.wake_writers()
        p.announce_membership()
    except RingTimeout as exc:
        raise left_without_lock(p, "reader") from exc
    finally:
        p.close()
