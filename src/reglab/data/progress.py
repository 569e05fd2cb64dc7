"""A one-line progress bar for downloads, drawn only on a terminal.

CI logs and files get the caller's plain log lines instead: a carriage-return
bar written into a log is unreadable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 30
_REDRAW_EVERY_S = 0.1


class Progress:
    """Count bytes toward ``total`` (None when the size is unknown) and redraw now and then."""

    def __init__(
        self, label: str, total: int | None, done: int = 0, stream: TextIO | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.done = done
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())
        self._last_draw = 0.0

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self._last_draw >= _REDRAW_EVERY_S:
            self._last_draw = now
            self._draw()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        megabytes = self.done / 1e6
        if not self.total:
            return f"{self.label} {megabytes:.1f} MB"
        fraction = min(self.done / self.total, 1.0)
        filled = round(fraction * _WIDTH)
        bar = "#" * filled + "-" * (_WIDTH - filled)
        return f"{self.label} [{bar}] {fraction:4.0%} {megabytes:.1f}/{self.total / 1e6:.1f} MB"

    def _draw(self) -> None:
        self.stream.write("\r" + self.line())
        self.stream.flush()
