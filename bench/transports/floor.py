# The kernel's own wake-up floor between two processes, measured in the same run.
#
# Theory: a reader blocked in the kernel cannot be woken faster than the kernel wakes a sleeping
# process on another CPU (~20 µs on this class of VM). These cells move only the 24-byte stamp,
# paced (latency phase only), through the barest blocking primitives:
#   floor-futex: a 32-bit counter in shared memory; the writer stamps the frame in place, bumps
#     the counter and calls FUTEX_WAKE; the reader sleeps in FUTEX_WAIT while the counter is
#     unchanged (ctypes syscall, which releases the GIL). It is a single slot, so the reader
#     acknowledges each stamp (a second word) and the writer waits for that before the next one:
#     lossless even when the reader runs late, and free when paced (the ack is long done).
#   floor-pipe: os.write() of the stamp into a pipe; the reader sleeps in os.read().
# A blocked shmring reader is compared against the lower of the two.
from __future__ import annotations

import ctypes
import os
import platform
import time
from collections.abc import Generator
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from bench.cell import Cell
from bench.frames import STAMP_BYTES, Frame, stamper
from bench.transports import Consumer, OneWayPipe, Producer, Transport

SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
if SYS_FUTEX is None:
    raise ImportError(f"no futex syscall number known for {platform.machine()}")
FUTEX_WAIT = 0
FUTEX_WAKE = 1
ACK_OFFSET = 4  # the reader's acknowledgement: the last counter value it has read
FRAME_OFFSET = 64  # the stamp sits on its own cache line, away from the words
ACK_POLL_S = 50e-6


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [
    ctypes.c_long,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_uint32,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_uint32,
]
WAIT_LIMIT = _Timespec(1, 0)  # each FUTEX_WAIT is bounded; the reader re-checks and waits again


class Futex(Transport):
    name = "floor-futex"
    kind = "floor"

    def prepare(self, cell: Cell, ctx: Any) -> Any:
        self._shm = SharedMemory(f"sb{cell.token}fx", create=True, size=4096)
        return self._shm.name

    def cleanup(self) -> None:
        self._shm.close()
        self._shm.unlink()

    @staticmethod
    def _map(name: str) -> tuple[SharedMemory, ctypes.c_uint32, ctypes.c_uint32, Frame]:
        shm = SharedMemory(name)
        buf = shm.buf
        assert buf is not None
        counter = ctypes.c_uint32.from_buffer(buf)
        ack = ctypes.c_uint32.from_buffer(buf, ACK_OFFSET)
        frame = np.ndarray((STAMP_BYTES,), np.uint8, buffer=buf, offset=FRAME_OFFSET)
        return shm, counter, ack, frame

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        shm, counter, ack, frame = self._map(endpoint)
        address = ctypes.addressof(counter)
        stamp = stamper(cell.size)

        def send(seq: int, t_ns: int) -> None:
            while ack.value != counter.value:  # the reader has not taken the last stamp yet
                time.sleep(ACK_POLL_S)
            stamp(frame, seq, t_ns)
            counter.value += 1
            _syscall(SYS_FUTEX, address, FUTEX_WAKE, 1, None, None, 0)

        def close() -> None:
            nonlocal counter, ack, frame
            del counter, ack, frame  # release the exports before unmapping
            shm.close()

        return Producer(send, close)

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        shm, counter, ack, frame = self._map(endpoint)
        address = ctypes.addressof(counter)
        limit = ctypes.addressof(WAIT_LIMIT)

        def frames() -> Generator[Frame, None, None]:
            seen = 0  # the counter starts at 0; the writer bumps it only after the barrier
            while True:
                while counter.value == seen:
                    _syscall(SYS_FUTEX, address, FUTEX_WAIT, seen, limit, None, 0)
                seen = counter.value
                yield frame
                ack.value = seen

        stream = frames()

        def close() -> None:
            nonlocal counter, ack, frame
            stream.close()
            del counter, ack, frame
            shm.close()

        return Consumer(stream, close)


class Pipe(OneWayPipe):
    name = "floor-pipe"
    kind = "floor"

    def open_producer(self, endpoint: Any, cell: Cell) -> Producer:
        _, conn = endpoint
        fd = conn.fileno()
        buf = bytearray(STAMP_BYTES)
        stamp = stamper(cell.size)

        def send(seq: int, t_ns: int) -> None:
            stamp(buf, seq, t_ns)
            os.write(fd, buf)

        return Producer(send, conn.close)

    def open_consumer(self, endpoint: Any, cell: Cell, index: int) -> Consumer:
        conn, _ = endpoint
        fd = conn.fileno()

        def frames() -> Generator[Frame, None, None]:
            while True:
                yield np.frombuffer(os.read(fd, STAMP_BYTES), np.uint8)

        stream = frames()

        def close() -> None:
            stream.close()
            conn.close()

        return Consumer(stream, close)
