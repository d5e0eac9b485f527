"""A progress line on stderr for long reads (only when stderr is a terminal)."""

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, minimum: int = 1_000_000):
        self.total = total
        self.label = label
        self.done_count = 0
        self.enabled = total >= minimum and sys.stderr.isatty()
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done_count += n
        now = time.monotonic()
        if self.enabled and now - self._last > 0.1:
            self._last = now
            share = 100.0 * self.done_count / max(self.total, 1)
            bar = "#" * int(share / 4)
            sys.stderr.write(
                f"\r{self.label} [{bar:<25}] {share:5.1f}% ({self.done_count:,} of {self.total:,} events)"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 90 + "\r")
            sys.stderr.flush()
