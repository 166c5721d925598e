"""How far a long command has got: a bar redrawn in place on a terminal, and a plain line every
few seconds anywhere else (a log file or a CI job gets readable lines, not carriage returns)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 30
#: Redraws of the bar per second at most: more only costs the terminal.
TTY_INTERVAL_SECONDS = 0.1
#: A line every this many seconds when the output is not a terminal.
LINE_INTERVAL_SECONDS = 5.0


class Progress:
    """``update(done)`` as work is done, ``finish()`` once at the end (which always shows the
    last count)."""

    def __init__(
        self,
        total: int,
        *,
        unit: str = "rows",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = TTY_INTERVAL_SECONDS if self.tty else LINE_INTERVAL_SECONDS
        self.clock = clock
        self.started = clock()
        self.shown_at = self.started
        self.done = 0
        self.shown = -1

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if now - self.shown_at >= self.interval:
            self._show(now)

    def finish(self) -> None:
        if self.shown != self.done:
            self._show(self.clock())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _show(self, now: float) -> None:
        self.shown_at, self.shown = now, self.done
        elapsed = max(now - self.started, 1e-6)
        rate = f"{self.done / elapsed:.0f} {self.unit}/s"
        share = self.done / self.total if self.total else 1.0
        count = f"{self.done}/{self.total} {self.unit}"
        if self.tty:
            filled = int(BAR_WIDTH * share)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {count} {share:4.0%} {rate}  ")
        else:
            self.stream.write(f"{count} ({share:.0%}), {rate}, {elapsed:.0f} s\n")
        self.stream.flush()
