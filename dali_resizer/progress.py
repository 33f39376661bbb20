"""A dependency-free progress bar for long loops (training epochs, benchmark passes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """``[#####.....] done/total  text  rate/s`` redrawn in place on a terminal, silent elsewhere.

    Example:
        >>> bar = ProgressBar(100, "epoch 0", stream=sys.stderr)
        >>> for i in range(100):
        ...     bar.update(1, "loss 0.1")
        >>> bar.close()
    """

    def __init__(self, total: int | None, label: str = "", *, stream: TextIO | None = None, width: int = 24,
                 unit: str = "it", min_interval: float = 0.1) -> None:
        self.total, self.label, self.width, self.unit = total, label, width, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.text = 0, ""
        self._start = self._last = time.perf_counter()
        self._min_interval = min_interval

    def update(self, n: int = 1, text: str = "") -> None:
        self.done += n
        self.text = text or self.text
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self._min_interval or self.done == self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        filled = self.width if not self.total else min(self.width, self.width * self.done // self.total)
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        rate = self.done / max(now - self._start, 1e-9)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"\r{self.label} [{bar}] {count} {self.text} {rate:.1f} {self.unit}/s"
        self.stream.write(line + "\033[K")
        self.stream.flush()

    def close(self, clear: bool = False) -> None:
        """Ends the bar: leaves its final state on its own line, or erases it with ``clear=True``."""
        if self.enabled:
            if clear:
                self.stream.write("\r\033[K")
            else:
                self._draw(time.perf_counter())
                self.stream.write("\n")
            self.stream.flush()
