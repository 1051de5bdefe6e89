# What every handle on a ring shares: its mapping, the header lock, participant records,
# liveness, repair and reclamation. RingWriter and RingReader build on a Participant and share
# their lifecycle (close, context manager) through RingHandle.
#
# Theory of operation (docs/FORMAT.md has the byte-level rules):
#   - Frames are published in sequence order into descriptor `seq % slots`; a descriptor is
#     visible to readers once its D_SEQ word equals the sequence number (written last).
#   - Block policy: a reader's R_RELEASE (or a group's G_CURSOR) says which frames it still
#     needs; `reclaim` moves the buffers of frames every group released onto the free list
#     and advances C_TAIL. With `slots` buffers, a writer that holds a free buffer always
#     finds its descriptor free, so publishing never waits; claiming does.
#   - Overwrite policy: a writer takes a free buffer no reader pins (a reader's pin is a
#     hazard pointer), or evicts the oldest frame nobody pins.
#   - Exclusive writer mode: while a ring has one writer, that writer pops buffers and
#     publishes without the lock (bracketed by W_IN_PUBLISH). A second writer switches the
#     ring to shared mode under the lock, then membarrier() and waits for the first to leave
#     its lock-free section: afterwards every writer claims sequence numbers without the
#     lock (F_SEQUENCED, _publisher.c), under either policy. Python runs only the switches
#     and the repairs, under the lock.
#   - Liveness: each participant holds an OFD lock on its own byte (LOCK_*_BASE + index) for
#     as long as it lives. A free byte under an active record means a dead participant; any
#     process may then reap the record under the header lock. Pids are informational only,
#     so recycled pids cannot fool the liveness test.
#   - Repair is idempotent: it recomputes what a dead process may have left half-done from
#     what is certain (records, descriptors), never from counters it could have corrupted.

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, Self

from . import _layout as L
from ._cpu_use import CpuUse, usable_cpus
from ._errors import (
    HandleClosed,
    HandleInUse,
    ParticipantStalled,
    RingCorrupted,
    RingFull,
    RingTimeout,
    ShmringError,
    recreate,
)
from ._fastpath import load_word, reclaim, settle, store_word, wake
from ._lock import IMPATIENT_QUIESCE, LOCK_FLOOR, HeaderLock, gave_up, give_up_at
from ._segment import Segment
from ._sys import (
    MEMBARRIER_AVAILABLE,
    address_of,
    atomic_add32,
    futex_wake,
    membarrier,
    range_is_locked,
    try_lock_range,
    unlock_range,
)

QUIESCE_LIMIT = 5.0  # how long a new writer waits for the exclusive writer to step aside
REPAIR_FLOOR = 50e-3  # a repair's least wait for writers to leave their steps (a frame copy)
CLOSE_LIMIT = 2.0  # how long close() waits for the header lock (it takes no timeout)
STEP_WAIT = 1.0  # how long close() waits for an event loop's step in another thread
STEP_PAUSE = 100e-6  # between its looks

_live_handles: weakref.WeakSet[RingHandle] = weakref.WeakSet()  # see _forget_after_fork


def left_without_lock(p: Participant, what: str) -> ParticipantStalled:
    """What close() raises when it left without the header lock (CLOSE_LIMIT passed): it
    closed the handle all the same, which frees its liveness lock, so the others reap its
    record at their next repair; a creator unlinked the name."""
    return ParticipantStalled(
        f"ring {p.name!r}: this {what} left without the header lock, which another process "
        f"held for {CLOSE_LIMIT} s (stopped?); the handle is closed and its record will be "
        "reaped by the others"
        + ("; its readers get WriterGone, not EndOfStream" if what == "writer" else "")
    )


def uncount_sleeper(record: memoryview, sleeping: int, waiters_address: int) -> None:
    """Under the header lock: take a record's owner out of a waiter count, if its `sleeping`
    word says it is in (owners count and uncount themselves lock-free, in C)."""
    if record[sleeping]:
        record[sleeping] = 0
        atomic_add32(waiters_address, -1)


@contextlib.contextmanager
def participant_of(segment: Segment, *, owner: bool) -> Iterator[Participant]:
    """A Participant of `segment` for a handle under construction: if that fails, closed
    (its views first, so that the mappings go now, not at the next garbage collection) and,
    for the creator, unlinked."""
    try:
        participant = Participant(segment)
    except BaseException:
        segment.close()
        raise
    try:
        yield participant
    except BaseException:
        try:
            if owner:
                segment.unlink()
        finally:
            participant.close()
        raise


class Participant:
    """One handle's state on one ring: a segment it opened itself, typed views, the lock."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.name = segment.name
        self.geometry = segment.geometry
        self.views = L.Views(segment.geometry, segment.header, segment.data)
        self.control = self.views.control
        self.token = secrets.randbits(62) | 1
        self.pid = os.getpid()
        self._cpu_use = CpuUse(usable_cpus())
        self.lock = HeaderLock(
            self.name,
            segment.fd,
            self.control,
            self.token,
            self.repair,
            self.pid_of_token,
            self.check_size,
        )

        def address(word: int) -> int:
            return address_of(segment.header, L.control_word_offset(word))

        self.frames_address = address(L.C_FRAMES)
        self.space_address = address(L.C_SPACE)
        self.reader_waiters_address = address(L.C_READER_WAITERS)
        self.writer_waiters_address = address(L.C_WRITER_WAITERS)
        self.membership_address = address(L.C_MEMBERSHIP)
        self.closed = False
        # Calls on the handle under way in a wait or a step of its slow path, in any thread,
        # and whether it is being closed (RingHandle, begin_closing).
        self.calls = 0
        self.closing = False  # calls raise: a close began, or the ring was found truncated
        self.close_begun = False
        self.close_called = False  # by close(), not garbage collection or interpreter exit
        # Steps of an event loop's wait under way (_async.py: synchronous, microseconds
        # each), and the thread that runs them: close() in another thread waits for them.
        self.steps = 0
        self.step_thread = 0
        # Set by check_size: no shared word may be touched any more. Every later call raises
        # `truncation` (check_usable), and the handle's fast paths are off (on_truncation).
        self.truncated = False
        self.truncation = ""
        self.on_truncation: weakref.WeakMethod[Callable[[], None]] | None = None

    # ---- records -----------------------------------------------------------------------
    def take_record(self, records: list[memoryview], lock_base: int, what: str) -> int:
        """Claim a free record and its liveness byte (under the header lock)."""
        self.reap_dead()
        for index, record in enumerate(records):
            if record[L.R_STATE] == L.STATE_FREE and try_lock_range(
                self.segment.fd, lock_base + index
            ):
                record[L.R_TOKEN] = self.token
                record[L.R_PID] = self.pid
                record[L.R_STATE] = L.STATE_ACTIVE
                return index
        raise RingFull(
            f"ring {self.name!r}: all {len(records)} {what} records are taken by live "
            f"{what}s; close one, or create the ring with a larger max_{what}s"
        )

    def unpublished_claim(self) -> str:
        """For a timeout's message: the writer that claimed the oldest number not yet
        published while later ones were claimed (a sequenced ring's readers wait for it, and
        its writers for the slots behind it), or "". Lock-free, for messages only."""
        control = self.control
        head = load_word(control, L.C_HEAD)
        if head >= load_word(control, L.C_NEXT_SEQ):
            return ""
        for index, record in enumerate(self.views.writers):
            if (
                load_word(record, L.W_STATE) == L.STATE_ACTIVE
                and load_word(record, L.W_CLAIMED_SEQ) == head
                and load_word(record, L.W_TOKEN) != self.token
                and self.is_alive(L.LOCK_WRITER_BASE + index, record)
            ):
                return (
                    f"frame {head} is claimed by writer process {load_word(record, L.W_PID)}, "
                    "which has not published it (its claim is open, or it is stopped or not "
                    "scheduled): the frames after it wait for it"
                )
        return ""

    def pid_of_token(self, token: int) -> int | None:
        """The pid in the active record that `token` owns (None: no such record, e.g. a
        creator that never wrote); for messages only, as pids may be recycled."""
        for record in (*self.views.writers, *self.views.readers):
            if (
                token
                and load_word(record, L.R_TOKEN) == token
                and load_word(record, L.R_STATE) == L.STATE_ACTIVE
            ):
                return load_word(record, L.R_PID)
        return None

    def free_record(self, record: memoryview, lock_byte: int) -> None:
        record[L.R_STATE] = L.STATE_FREE
        record[L.R_TOKEN] = 0
        unlock_range(self.segment.fd, lock_byte)

    def is_alive(self, lock_byte: int, record: memoryview) -> bool:
        return load_word(record, L.R_TOKEN) == self.token or range_is_locked(
            self.segment.fd, lock_byte
        )

    def live_writers(self, besides_me: bool = False) -> int:
        return self._live(self.views.writers, L.LOCK_WRITER_BASE, besides_me)

    def live_readers(self) -> int:
        """Readers attached and alive: `readers` counts a dead one until it is reaped."""
        return self._live(self.views.readers, L.LOCK_READER_BASE, besides_me=False)

    def _live(self, records: list[memoryview], lock_base: int, besides_me: bool) -> int:
        """Live records of a table (readers' or writers': both begin with state and token,
        R_STATE = W_STATE and R_TOKEN = W_TOKEN, _layout.py)."""
        return sum(
            1
            for index, record in enumerate(records)
            if load_word(record, L.R_STATE) == L.STATE_ACTIVE
            and not (besides_me and load_word(record, L.R_TOKEN) == self.token)
            and self.is_alive(lock_base + index, record)
        )

    def reap_dead(self) -> bool:
        """Free the records of dead participants (under the header lock): uncount them if
        they died asleep, and give back the buffer a dead writer had claimed."""
        reaped_writer = self._reap(
            self.views.writers, L.LOCK_WRITER_BASE, L.W_SLEEPING, self.writer_waiters_address
        )
        reaped_reader = self._reap(
            self.views.readers, L.LOCK_READER_BASE, L.R_SLEEPING, self.reader_waiters_address
        )
        if reaped_writer:
            self.repair_buffers()
        if reaped_writer or reaped_reader:
            self.recount()
        return reaped_writer or reaped_reader

    def _reap(
        self, records: list[memoryview], lock_base: int, sleeping: int, waiters_address: int
    ) -> bool:
        reaped = False
        for index, record in enumerate(records):
            if record[L.R_STATE] == L.STATE_ACTIVE and not self.is_alive(lock_base + index, record):
                uncount_sleeper(record, sleeping, waiters_address)
                # Its claim or pin stops counting with the record: busy_buffers() and the
                # rebuilt free list look at active records only.
                self.free_record(record, lock_base + index)
                reaped = True
        return reaped

    def recount(self) -> None:
        """Recompute counters from the records (under the header lock)."""
        control, views = self.control, self.views
        writers = sum(1 for r in views.writers if r[L.W_STATE] == L.STATE_ACTIVE)
        control[L.C_WRITERS] = writers
        control[L.C_READERS] = sum(1 for r in views.readers if r[L.R_STATE] == L.STATE_ACTIVE)
        members = [0] * len(views.groups)
        for record in views.readers:
            group = record[L.R_GROUP]
            if record[L.R_STATE] == L.STATE_ACTIVE and group != L.NONE:
                members[self.checked_group(group)] += 1
        for group_record, count in zip(views.groups, members, strict=True):
            group_record[L.G_MEMBERS] = count
            if count == 0:
                group_record[L.G_STATE] = L.STATE_FREE
        control[L.C_MEMBERSHIP] = (control[L.C_MEMBERSHIP] + 1) & L.U64_MASK

    def check_size(self) -> None:
        """Raise RingCorrupted if someone truncated or grew the segment file. Touching pages
        a truncation dropped is a SIGBUS no library can catch, so the slow paths (waits,
        repair) look before the fast paths can fault."""
        size = os.fstat(self.segment.fd).st_size
        if size != self.geometry.segment_bytes:
            if not self.truncated:
                self.truncation = (
                    f"ring {self.name!r}: its file is now {size} bytes, not "
                    f"{self.geometry.segment_bytes}; another process truncated or resized it: "
                    f"{recreate(self.name)}"
                )
                self.truncated = True
                self.closing = True  # a call that looks at it raises (check_usable)
                stop_fast_paths = self.on_truncation and self.on_truncation()
                if stop_fast_paths is not None:
                    stop_fast_paths()
                for handle in list(_live_handles):  # the process's other handles on it, too
                    # (OSError: a handle another thread closed meanwhile)
                    with contextlib.suppress(RingCorrupted, OSError):
                        if not handle._p.closed:
                            handle._p.check_size()
            raise RingCorrupted(self.truncation)

    def repair(self) -> None:
        """Undo what a holder that died inside the header lock may have left half-done."""
        self.check_size()
        self.reap_dead()
        self.recount()
        self.repair_buffers()

    def repair_buffers(self) -> None:
        """Under the lock: complete a publish a dead writer left between descriptor and head,
        and rebuild the free list (which gives back buffers dead writers had claimed); in a
        sequenced ring, publish the numbers dead writers claimed as skips (settle), or,
        under the overwrite policy, quiesce the writers and repair (resequence)."""
        if self.geometry.policy == L.POLICY_OVERWRITE and (
            self.sequenced() or self.switch_interrupted()
        ):
            self.resequence()
            return
        if self.switch_interrupted():
            self.finish_switch()
        if self.control[L.C_WRITER_MODE] == L.MODE_EXCLUSIVE and self.live_writers(True):
            return  # a live exclusive writer owns head and free list; they are consistent
        if self.sequenced():
            self.settle()
            return
        control = self.control
        head = control[L.C_HEAD]
        slots = self.geometry.slots
        for _ in range(slots):
            if head >= L.SEQ_LIMIT or self.views.descriptors[head % slots][L.D_SEQ] != head:
                break
            head += 1  # a publish that wrote its descriptor but died before head
        store_word(control, L.C_HEAD, head)  # (ordered: lock-free readers load it)
        if self.geometry.policy == L.POLICY_OVERWRITE:
            store_word(control, L.C_TAIL, min(max(control[L.C_TAIL], head - slots), head))
        self.rebuild_free_list()

    # ---- buffers -----------------------------------------------------------------------
    def checked_buffer(self, index: int) -> int:
        if index >= self.geometry.buffers:
            raise self.corrupted_buffer(index)
        return index

    def corrupted_buffer(self, index: int) -> RingCorrupted:
        return RingCorrupted.header_overwritten(
            self.name,
            f"buffer index {index} read from shared memory is out of range (ring has "
            f"{self.geometry.buffers})",
        )

    def checked_group(self, index: int) -> int:
        if index >= len(self.views.groups):
            raise RingCorrupted.header_overwritten(
                self.name, f"group index {index} read from shared memory is out of range"
            )
        return index

    def c_arguments(self) -> dict[str, Any]:
        """The keyword arguments every object of the C extension takes (_fastpath.c): the
        header mapping, the control block and descriptor table, and their geometry (the
        layout itself is compiled in: shmring_layout.h)."""
        g, views = self.geometry, self.views
        return dict(
            header=self.segment.header,
            control=views.control,
            descriptors=views.descriptor_table,
            slots=g.slots,
            descriptor_words=g.descriptor_bytes // 8,
        )

    def window(self) -> range:
        """Sequence numbers whose descriptors may still hold a frame."""
        control = self.control
        for _ in range(64):  # head read while tail held still: writers move both lock-free
            tail = load_word(control, L.C_TAIL)
            head = load_word(control, L.C_HEAD)
            if load_word(control, L.C_TAIL) == tail:
                break
        if head >= L.SEQ_LIMIT:
            raise self.corrupted_head(head)
        if tail > head or head - tail > self.geometry.slots:
            raise RingCorrupted.header_overwritten(
                self.name, f"head {head} and tail {tail} are inconsistent"
            )
        return range(tail, head)

    def check_counters(self) -> None:
        """Raise RingCorrupted if head, tail or the next number to claim is past the
        sequence limit or inconsistent (a forged header). For the slow paths: waits run it
        once per liveness round, since lock-free readers look at descriptors only."""
        # Writers move all three lock-free: a number read before the window is at most its
        # tail + slots, one read after it at least its head (both words only grow).
        claimed_before = load_word(self.control, L.C_NEXT_SEQ)
        window = self.window()
        claimed_after = load_word(self.control, L.C_NEXT_SEQ)
        if not self.sequenced():
            return
        # Overwrite writers take numbers up to 2 x slots past head (head is at most slots
        # past tail), and up to max_writers more that passed that check together
        # (_publisher.c, publish_owned).
        ahead = self.geometry.slots
        if self.geometry.policy == L.POLICY_OVERWRITE:
            ahead = 3 * self.geometry.slots + self.geometry.max_writers
        if claimed_after < window.stop or claimed_before > window.start + ahead:
            claimed = claimed_before if claimed_after >= window.stop else claimed_after
            raise RingCorrupted.header_overwritten(
                self.name,
                f"the next number to claim, {claimed}, is outside [{window.stop}, "
                f"{window.start + ahead}]",
            )

    def corrupted_head(self, head: int) -> RingCorrupted:
        return RingCorrupted.header_overwritten(
            self.name, f"head {head} is past the sequence limit {L.SEQ_LIMIT}"
        )

    def busy_buffers(self) -> set[int]:
        """Buffers in use: queued frames and claims of live writers. (A buffer an overwrite
        reader pinned after its frame left the window is free: writers skip pinned ones.)"""
        views, slots = self.views, self.geometry.slots
        busy = set()
        for seq in self.window():
            descriptor = views.descriptors[seq % slots]
            if descriptor[L.D_SEQ] == seq and not descriptor[L.D_FLAGS] & L.DF_EVICTED:
                busy.add(self.checked_buffer(descriptor[L.D_BUFFER]))
        # Read each word once: its owner may clear it (lock-free) between two reads.
        for record in views.writers:
            claimed = record[L.W_CLAIMED]
            if record[L.W_STATE] == L.STATE_ACTIVE and claimed != L.NONE:
                busy.add(self.checked_buffer(claimed))
        return busy

    def rebuild_free_list(self) -> None:
        busy = self.busy_buffers()
        free = [b for b in range(self.geometry.buffers - 1, -1, -1) if b not in busy]
        for position, buffer in enumerate(free):
            self.views.freelist[position] = buffer
        self.control[L.C_FREE_COUNT] = len(free)

    def reclaim(self) -> int:
        """Block policy, under the lock: free the buffers of frames every group released;
        returns the new free count. The one reclaim, in C (_publisher.c, shmring_reclaim),
        which the exclusive writer runs lock-free; it raises RingCorrupted on a damaged
        window or free list."""
        views = self.views
        return reclaim(
            **self.c_arguments(),
            freelist=views.freelist,
            reader_records=views.reader_table,
            group_records=views.group_table,
            nbuffers=self.geometry.buffers,
            max_readers=self.geometry.max_readers,
            name=self.name,
        )

    def dead_participant_blocks(self) -> bool:
        """Whether a dead reader may hold back the release floor, a dead writer a number it
        claimed, or a process died holding the header lock with its update half done (the
        next holder repairs it: lock-free steps alone never would). Lock-free check."""
        return (
            self.lock_holder_died()
            or self.dead_writers()
            or any(
                load_word(record, L.R_STATE) == L.STATE_ACTIVE
                and not self.is_alive(L.LOCK_READER_BASE + index, record)
                for index, record in enumerate(self.views.readers)
            )
        )

    def lock_holder_died(self) -> bool:
        """Whether the header lock's last holder died in it (its mark is left, the lock free)."""
        return load_word(self.control, L.C_LOCK_OWNER) != 0 and not range_is_locked(
            self.segment.fd, L.LOCK_HEADER
        )

    def dead_writers(self) -> bool:
        """Whether a writer record belongs to a dead writer (lock-free check)."""
        return any(
            load_word(record, L.W_STATE) == L.STATE_ACTIVE
            and not self.is_alive(L.LOCK_WRITER_BASE + index, record)
            for index, record in enumerate(self.views.writers)
        )

    # ---- several writers: the sequenced ring (shared mode) ------------------------------
    def sequenced(self) -> bool:
        """Whether writers claim numbers without the lock (_publisher.c, the sequencers)."""
        control = self.control
        return load_word(control, L.C_WRITER_MODE) == L.MODE_SHARED and bool(
            load_word(control, L.C_FLAGS) & L.F_SEQUENCED
        )

    def switch_interrupted(self) -> bool:
        """Whether a ring is in shared mode but not sequenced: the writer switching it (or a
        repair) died or timed out between the two, under the lock, whose owner mark it left
        set: the lock's next holder repairs (repair_buffers) before anything else. Until
        then block writers wait and overwrite writers wait for the lock. (Without membarrier
        an overwrite ring stays so, its writers taking the lock for each step: a repair
        could not quiesce its writers.)"""
        return (
            (self.geometry.policy == L.POLICY_BLOCK or MEMBARRIER_AVAILABLE)
            and self.control[L.C_WRITER_MODE] == L.MODE_SHARED
            and not self.control[L.C_FLAGS] & L.F_SEQUENCED
        )

    def finish_switch(self) -> None:
        """Under the lock: finish an interrupted switch to shared mode, or undo it when
        fewer than two writers are left (the free list is still whole until the switch's
        last step: start_sequencing). A switcher killed between the reclaim's stores of tail
        and free count lost the buffers it freed: the list is rebuilt first, the exclusive
        writer out of its step (it may have entered before the switch began)."""
        self.quiesce_writers(None, repairing=True)
        self.rebuild_free_list()
        # Without membarrier a block ring stays sequenced: none could quiesce an exclusive
        # writer (and an overwrite ring is never sequenced, so never comes here).
        if (
            self.live_writers() > 1
            if MEMBARRIER_AVAILABLE
            else self.geometry.policy == L.POLICY_BLOCK
        ):
            self.start_sequencing()
        else:
            self.control[L.C_WRITER_MODE] = L.MODE_EXCLUSIVE

    def start_sequencing(self) -> None:
        """Under the lock, the writers quiesced. Block policy: hand every free descriptor
        position a buffer of its own, from the free list; the exclusive writer's open claim,
        if any, gets the next number, so that it publishes there. Overwrite policy: the free
        list becomes the pool (its free entries, then NONE); claims stay buffers."""
        control, views, slots = self.control, self.views, self.geometry.slots
        if self.geometry.policy == L.POLICY_OVERWRITE:
            count = control[L.C_FREE_COUNT]
            if count > self.geometry.buffers:
                raise self._corrupted_free_count(count)
            free = [self.checked_buffer(views.freelist[index]) for index in range(count)]
            for index in range(self.geometry.buffers):
                views.freelist[index] = free[index] if index < count else L.NONE
            control[L.C_NEXT_SEQ] = control[L.C_HEAD]
            control[L.C_FLAGS] |= L.F_SEQUENCED  # the switch is done: a kill before repeats it
            control[L.C_FREE_COUNT] = 0
            return
        count = self.reclaim()  # what every group released, onto the free list first
        head, tail = control[L.C_HEAD], control[L.C_TAIL]
        next_seq = head
        for record in views.writers:
            claimed = record[L.W_CLAIMED]
            if record[L.W_STATE] == L.STATE_ACTIVE and claimed != L.NONE:
                views.descriptors[next_seq % slots][L.D_BUFFER] = self.checked_buffer(claimed)
                record[L.W_CLAIMED_SEQ] = next_seq
                next_seq += 1
        positions = range(next_seq, tail + slots)
        if len(positions) != count:
            raise RingCorrupted.header_overwritten(
                self.name, f"{count} free buffers for {len(positions)} free positions"
            )
        for seq, index in zip(positions, range(count), strict=True):
            views.descriptors[seq % slots][L.D_BUFFER] = self.checked_buffer(views.freelist[index])
        control[L.C_NEXT_SEQ] = next_seq
        control[L.C_FLAGS] |= L.F_SEQUENCED  # the switch is done: a kill before undoes it
        control[L.C_FREE_COUNT] = 0

    def leave_shared_mode(self) -> None:
        """Under the lock, by the one writer left (holding no claim): exclusive mode again.
        A sequenced ring's free positions give their buffers back to the free list."""
        control = self.control
        if (
            control[L.C_WRITER_MODE] == L.MODE_EXCLUSIVE
            or not MEMBARRIER_AVAILABLE
            or control[L.C_WRITERS] > 1
        ):
            return
        if self.sequenced() and self.geometry.policy == L.POLICY_OVERWRITE:
            self.reap_dead()
            if self.sequenced():  # (a writer reaped: the repair has switched back already)
                self.resequence()
            return
        if self.sequenced():
            self.reap_dead()
            self.settle()
            window, slots = self.window(), self.geometry.slots
            head, tail = window.stop, window.start
            if control[L.C_NEXT_SEQ] != head:
                raise RingCorrupted.header_overwritten(
                    self.name, "numbers claimed by no live writer remain unpublished after a repair"
                )
            free = [
                self.checked_buffer(self.views.descriptors[seq % slots][L.D_BUFFER])
                for seq in range(head, tail + slots)
            ]
            for position, buffer in enumerate(free):
                self.views.freelist[position] = buffer
            control[L.C_FREE_COUNT] = len(free)
        control[L.C_WRITER_MODE] = L.MODE_EXCLUSIVE  # the switch is done: a kill before
        control[L.C_FLAGS] &= ~L.F_SEQUENCED  # leaves the ring sequenced

    def settle(self) -> None:
        """Under the lock, in a sequenced ring whose live writers go on without it: publish
        the numbers claimed by writers that died as skips, and move head (in C: settle)."""
        control, views, slots = self.control, self.views, self.geometry.slots
        # Acquire loads, in the order that makes a live writer's number never a hole: next
        # number, then what writers name (stored before they take a number), then D_SEQ
        # (stored before they stop naming it).
        head, claimed = load_word(control, L.C_HEAD), load_word(control, L.C_NEXT_SEQ)
        if not head <= claimed <= head + slots or claimed >= L.SEQ_LIMIT:
            raise RingCorrupted.header_overwritten(
                self.name, f"head {head} and next number {claimed} are inconsistent"
            )
        held = {
            load_word(r, L.W_CLAIMED_SEQ) for r in views.writers if r[L.W_STATE] == L.STATE_ACTIVE
        }
        holes = [
            seq
            for seq in range(head, claimed)
            if load_word(views.descriptors[seq % slots], L.D_SEQ) != seq and seq not in held
        ]
        settle(
            control,
            views.descriptor_table,
            holes,
            slots=slots,
            descriptor_words=self.geometry.descriptor_bytes // 8,
        )

    def resequence(self) -> None:
        """Under the lock, overwrite policy, shared mode: repair what writers that died left
        behind lock-free (a position they owned, a number they never placed, the buffer in
        their hands) with every live writer out of its lock-free step, then sequence the ring
        again, or switch it to exclusive mode if one writer is left. Writers that enter a
        step meanwhile find F_SEQUENCED clear and wait for the lock."""
        control = self.control
        control[L.C_FLAGS] &= ~L.F_SEQUENCED
        self.quiesce_writers(None, repairing=True)
        self.place_numbers()
        self.rebuild_free_list()
        if self.live_writers() > 1:
            self.start_sequencing()
        else:
            control[L.C_WRITER_MODE] = L.MODE_EXCLUSIVE

    def place_numbers(self) -> None:
        """Under the lock, overwrite policy, the writers quiesced: every number claimed so far
        (below C_NEXT_SEQ) gets placed. A position a dead writer owned (D_SEQ | SEQ_BUSY),
        and the newest number of each position if it was claimed and never placed (a dead
        writer's, or one a stalled writer kept: W_CLAIMED_SEQ, cleared), become skips (no
        frame: readers count one dropped); head moves to the next number, and tail with it,
        in steps that keep tail <= head <= tail + slots for lock-free readers."""
        control, views, slots = self.control, self.views, self.geometry.slots
        head = control[L.C_HEAD]
        if head >= L.SEQ_LIMIT:
            raise self.corrupted_head(head)
        claimed = max(control[L.C_NEXT_SEQ], head)  # stale (older) after exclusive mode
        tail = self.window().start
        if claimed > tail + 3 * slots + self.geometry.max_writers:  # (see check_counters)
            raise RingCorrupted.header_overwritten(
                self.name, f"the next number to claim, {claimed}, is too far past head {head}"
            )
        for position in range(slots):
            descriptor = views.descriptors[position]
            seq = descriptor[L.D_SEQ]
            if seq != L.NONE and seq & L.SEQ_BUSY:
                seq &= ~L.SEQ_BUSY
                self._place_skip(descriptor, seq)
            if claimed > position:
                newest = claimed - 1 - (claimed - 1 - position) % slots
                if newest >= head and (seq == L.NONE or seq < newest):
                    self._place_skip(descriptor, newest)
        while head < claimed:  # (ordered stores: lock-free readers load head and tail)
            head = min(claimed, tail + slots)
            store_word(control, L.C_HEAD, head)
            tail = max(tail, min(head, claimed - slots))
            store_word(control, L.C_TAIL, tail)
        for record in views.writers:  # a number a stalled writer kept is placed: it takes anew
            if record[L.W_STATE] == L.STATE_ACTIVE:
                record[L.W_CLAIMED_SEQ] = L.NONE

    def _place_skip(self, descriptor: memoryview, seq: int) -> None:
        """Publish number `seq` in `descriptor` as a skip of one frame, taking its position
        as a writer does: readers that pinned the frame there find it gone."""
        if seq >= L.SEQ_LIMIT:
            raise RingCorrupted.header_overwritten(
                self.name, f"a descriptor holds number {seq}, past the sequence limit"
            )
        # Ordered stores: lock-free readers load seq, then flags (docs/FORMAT.md).
        store_word(descriptor, L.D_SEQ, seq | L.SEQ_BUSY)
        store_word(descriptor, L.D_FLAGS, L.DF_SKIP | L.DF_EVICTED)  # its buffer is free
        store_word(descriptor, L.D_SEQ, seq)

    def _corrupted_free_count(self, count: int) -> RingCorrupted:
        return RingCorrupted.header_overwritten(
            self.name,
            f"free count {count} is inconsistent: the ring has {self.geometry.buffers} buffers",
        )

    # ---- writers' mode switch ----------------------------------------------------------
    def enter_shared_mode(self, deadline: float | None) -> None:
        """Called under the lock by a writer that is not alone: no writer goes on alone any
        more; the writers sequence their frames (without membarrier, overwrite writers take
        the lock for each step instead)."""
        if self.control[L.C_WRITER_MODE] == L.MODE_SHARED:
            if self.switch_interrupted():
                self.repair_buffers()  # finishes the switch, or the repair, that was cut short
            return
        self.control[L.C_FLAGS] &= ~L.F_SEQUENCED  # a kill in leave_shared_mode may leave it
        self.control[L.C_WRITER_MODE] = L.MODE_SHARED
        try:
            self.quiesce_writers(deadline)
        except RingTimeout:
            self.control[L.C_WRITER_MODE] = L.MODE_EXCLUSIVE  # nothing else changed yet
            raise
        if self.geometry.policy == L.POLICY_BLOCK or MEMBARRIER_AVAILABLE:
            self.start_sequencing()

    def quiesce_writers(self, deadline: float | None, repairing: bool = False) -> None:
        """Under the lock: make what this process stored visible to the other writers' next
        lock-free steps, and wait until each is out of the step it may be in now.

        The writer's side has no fence: it stores W_IN_PUBLISH, then loads shared state.
        membarrier() forces a barrier on every CPU, so afterwards either the writer's flag
        is visible here or its later loads see our stores (asymmetric Dekker). The expedited
        command suffices when every other writer's process registered for it (W_EXPEDITED);
        then a storm of joining readers does not hold the lock for a grace period each.

        `repairing`: a repair, which waits as long as the call that took the lock may (its
        lock deadline, LOCK_FLOOR included), at least REPAIR_FLOOR."""
        if not MEMBARRIER_AVAILABLE:
            return  # every writer publishes under the lock (shared mode) then
        if not any(
            record[L.W_STATE] == L.STATE_ACTIVE and record[L.W_TOKEN] != self.token
            for record in self.views.writers
        ):
            return  # nobody to quiesce: spare every CPU the barrier
        membarrier(self.other_writers_registered())
        now = time.monotonic()
        if repairing:
            deadline, floor = self.lock.held_until, REPAIR_FLOOR
        else:
            floor = LOCK_FLOOR
        limit = now + QUIESCE_LIMIT if deadline is None else max(deadline, now + floor)
        give_up = give_up_at(limit, now, IMPATIENT_QUIESCE)
        for index, record in enumerate(self.views.writers):
            while (
                record[L.W_STATE] == L.STATE_ACTIVE
                and load_word(record, L.W_IN_PUBLISH)  # acquire: what it stored before leaving
                and record[L.W_TOKEN] != self.token
                and range_is_locked(self.segment.fd, L.LOCK_WRITER_BASE + index)
            ):
                if time.monotonic() > give_up:
                    stuck = ParticipantStalled(
                        f"ring {self.name!r}: the writer (pid {record[L.W_PID]}) did not "
                        "leave its publish step; is it stopped?"
                    )
                    raise gave_up(stuck, limit, give_up)
                time.sleep(50e-6)

    def other_writers_registered(self) -> bool:
        """Under the lock: whether every other active writer's process takes part in
        expedited barriers (W_EXPEDITED), so that quiescing it needs only those."""
        return all(
            record[L.W_EXPEDITED] == 1
            for record in self.views.writers
            if record[L.W_STATE] == L.STATE_ACTIVE and record[L.W_TOKEN] != self.token
        )

    # ---- wake-ups ----------------------------------------------------------------------
    def spinning_pays(self) -> bool:
        """Whether polling before a sleep can pay: only while every participant that runs
        can have a CPU of its own, measured (_cpu_use.py)."""
        control = self.control
        return self._cpu_use.polling_pays(
            load_word(control, L.C_READERS) + load_word(control, L.C_WRITERS), self._other_pids
        )

    def _other_pids(self) -> Iterator[int]:
        """Pids of the other processes with an active reader or writer record."""
        views = self.views
        for records, state, pid in (
            (views.readers, L.R_STATE, L.R_PID),
            (views.writers, L.W_STATE, L.W_PID),
        ):
            for record in records:
                owner = load_word(record, pid)  # once: its owner may leave meanwhile
                if load_word(record, state) == L.STATE_ACTIVE and owner != self.pid:
                    yield owner

    def wake_readers(self) -> None:
        wake(self.control, L.C_FRAMES)  # in C: bump the word (not slept through), FUTEX_WAKE

    def announce_membership(self) -> None:
        """Wake writers waiting in wait_for_readers (after a reader joined or left)."""
        futex_wake(self.membership_address)

    def wake_writers(self) -> None:
        wake(self.control, L.C_SPACE)

    # ---- lifecycle ---------------------------------------------------------------------
    def unlink_if_orphaned(self) -> None:
        """Called under the lock by a non-owner leaving the ring: when the creator died and
        nobody else is left, nobody would ever unlink the ring, so the last one out does."""
        if self.segment.creator_alive():
            return
        self.reap_dead()
        if self.control[L.C_WRITERS] == 0 and self.control[L.C_READERS] == 0:
            self.segment.unlink()

    def begin_closing(self) -> bool:
        """Mark the handle closing; False, and not closing, while a call on it is under way
        (the protocol is RingHandle's). True if it is closing already: the close that
        marked it goes on (a call counted since then sees the mark and raises). An event
        loop's step under way in another thread is waited for (up to STEP_WAIT): it ends
        in microseconds, and its task then finds the handle closed."""
        if self.close_begun:
            return True
        self.close_begun = self.closing = True
        if self.closed:
            return True
        if (self.steps and not self._steps_ended()) or self.calls:
            self.abandon_closing()
            return False
        return True

    def abandon_closing(self) -> None:
        """The close that begin_closing began does not go on: calls may be made again
        (unless the ring was found truncated)."""
        self.close_begun = False
        self.closing = self.truncated

    def _steps_ended(self) -> bool:
        """Wait up to STEP_WAIT for the event loop's step under way to end (calls it makes
        end with it). Not in the step's own thread (a signal handler, a finalizer): there
        it cannot end first."""
        ends = time.monotonic() + STEP_WAIT
        while self.step_thread != threading.get_ident() and time.monotonic() < ends:
            time.sleep(STEP_PAUSE)  # lets the loop's thread run its step to the end
            if not self.steps:
                return True
        return False

    def check_usable(self) -> None:
        # A forked child's copies are closed by _forget_after_fork, so only a closed handle
        # needs the pid test (getpid() is a system call: too slow for a per-frame path).
        if self.closed:
            if self.pid != os.getpid():
                raise ShmringError(
                    f"ring {self.name!r}: this handle was inherited across fork(); attach "
                    "again in the child (with the spawn or forkserver start method, handles "
                    "passed as Process arguments re-attach by name)"
                )
            raise HandleClosed(
                f"ring {self.name!r}: this handle is closed; attach again to use the ring"
            )
        if self.truncated:  # (it is closing, too: the calls that look at that come here)
            raise RingCorrupted(self.truncation)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.views.release()
        self.segment.close()


def _leave(leave: Callable[..., None], p: Participant, *args: object) -> None:
    """A handle's finalizer: `leave(p, *args)`. A truncated ring's RingCorrupted goes to
    close()'s caller; at garbage collection or exit nobody would read it but stderr."""
    try:
        leave(p, *args)
    except RingCorrupted:
        if p.close_called or not p.truncated:
            raise


class RingHandle:
    """The lifecycle RingReader and RingWriter share: a Participant, and a finalizer that
    leaves the ring at close(), at garbage collection or at interpreter exit."""

    _p: Participant
    _finalizer: Callable[[], object]  # a weakref.finalize: leaves the ring once
    # Calls on this handle under way in a wait or a step of its slow path, in any thread,
    # count themselves in Participant.calls: close() refuses meanwhile (as the C objects
    # refuse while a thread is inside them), so that no call finds its handle gone half-way.
    # A call counts itself, then looks at Participant.closing; closing sets it, then looks at
    # the count (begin_closing; each step atomic under the GIL): whichever comes second sees
    # the other, and the call raises or the close is refused. The synchronous steps of an
    # event loop's waits (_async.py) count themselves in Participant.steps instead, by the
    # same protocol, except that a close() in another thread waits for the step to end
    # rather than refuse: the task finds the handle closed. The finalizer follows the same
    # protocol: a call under way keeps its handle from garbage collection, so a finalizer
    # that finds one runs at interpreter exit, beside a daemon thread's call, and leaves the
    # mappings to that thread until the process ends.

    def _leave_at(self, leave: Callable[..., None], *args: object) -> None:
        """The last step of construction: how this handle leaves the ring (`leave(p, *args)`,
        by close() or, once, at garbage collection or interpreter exit), and tracking
        across fork()."""
        self._finalizer = weakref.finalize(self, _leave, leave, self._p, *args)
        _live_handles.add(self)

    def _forget_after_fork(self) -> None:
        """In a forked child, drop this inherited handle's descriptors: keeping them would keep
        the parent's liveness locks alive after the parent dies, and share its header-lock
        ownership. Every later call then raises ShmringError (check_usable)."""
        p = self._p
        p.calls = p.steps = 0  # the threads making them are not in this process
        if not p.closed:
            p.closed = True
            p.segment.close()

    def close(self) -> None:
        """Leave the ring (idempotent). A reader's held frames are released; the last writer
        to leave ends the stream (readers drain what was published, then get EndOfStream);
        the creator also unlinks the ring's name."""
        self._refuse_close_in_call()
        self._p.close_called = True
        self._finalizer()

    def _close_in_c(self, close: Callable[[], None]) -> None:
        """Begin closing: `close` the handle's C object, which raises HandleInUse while
        another thread is inside it; then, as while a call is under way in Python, nothing
        is closed and the handle stays usable."""
        self._refuse_close_in_call()  # first: nothing is closed if a call is under way
        try:
            close()
        except BaseException:
            self._p.abandon_closing()
            raise

    def _refuse_close_in_call(self) -> None:
        """Begin closing; HandleInUse, and not closing, if a call is under way."""
        if not self._p.begin_closing():
            raise HandleInUse(
                f"ring {self._p.name!r}: close() while a call on this handle is under way in "
                "another thread (or in the code a signal handler interrupted); nothing was "
                "closed. Close it after that call returns: a handle is one thread's at a time"
            )

    def _raise_closed(self) -> NoReturn:
        """For a call that counted itself and found the handle closed or being closed."""
        self._p.check_usable()  # closed: "this handle is closed", or inherited across fork()
        raise HandleClosed(
            f"ring {self._p.name!r}: this handle is being closed by another thread (or at "
            "interpreter exit, while this one ran)"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self._p.name

    @property
    def closed(self) -> bool:
        return self._p.closed


def _forget_after_fork() -> None:
    for handle in list(_live_handles):
        handle._forget_after_fork()
    _live_handles.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
