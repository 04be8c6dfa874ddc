"""Progress of a long command, on one stderr line."""

from __future__ import annotations

import sys
import time


class Progress:
    """One line on stderr, rewritten at most every two seconds."""

    def __init__(self, label: str, total: int) -> None:
        self._label, self._total = label, total
        self._started = self._shown = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self._shown < 2 and done < self._total:
            return
        self._shown = now
        rate = done / max(now - self._started, 1e-9)
        print(
            f"\r{self._label}: {done:,}/{self._total:,} ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True
        )
        if done >= self._total:
            print(file=sys.stderr)
