# Progress of a recording or a replay on the terminal, drawn by tqdm on stderr.
#
# Rules: shown only when asked for and stderr is a terminal (a pipe, a file or a log gets
# nothing); frames, MB, frames/s and elapsed time, and a bar with its ETA when the total is
# known (a replay; a recording with a frame limit). The MB figures are refreshed at most
# REFRESH times a second, so a frame costs the loop a counter update, not a redraw.

from __future__ import annotations

import sys
import time
from types import TracebackType

from tqdm import tqdm

REFRESH = 5  # redraws per second at most


class Progress:
    def __init__(self, enabled: bool, total: int | None, action: str) -> None:
        self._bar = tqdm(
            total=total,
            desc=action,
            unit=" frames",
            file=sys.stderr,
            disable=not (enabled and sys.stderr.isatty()),
            dynamic_ncols=True,
            mininterval=1 / REFRESH,
        )
        self._bytes = 0
        self._start = self._shown = time.monotonic()

    def add(self, frames: int, nbytes: int) -> None:
        self._bytes += nbytes
        self._bar.update(frames)
        now = time.monotonic()
        if now - self._shown >= 1 / REFRESH:
            self._shown = now
            self._show_bytes(now)

    def _show_bytes(self, now: float) -> None:
        megabytes = self._bytes / 1e6
        rate = megabytes / max(now - self._start, 1e-9)
        self._bar.set_postfix_str(f"{megabytes:.1f} MB, {rate:.1f} MB/s", refresh=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._show_bytes(time.monotonic())
        self._bar.close()
