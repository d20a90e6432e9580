"""What a batch run tells the user while it works: one progress line per step on stderr, and the
seconds each step took (for the summary)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Progress:
    """One line on stderr: redrawn in place on a terminal, printed every `every` seconds otherwise."""

    def __init__(self, label: str, total: int, unit: str, every: float = 10.0):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.done, self.start, self.shown = 0, time.perf_counter(), 0.0
        self.tty = sys.stderr.isatty()

    def advance(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if not (force or self.tty or now - self.shown >= self.every or self.done >= self.total):
            return
        self.shown = now
        rate = self.done / max(now - self.start, 1e-9)
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        eta = f", {(self.total - self.done) / rate:.0f} s left" if rate > 0 and self.done < self.total else ""
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done:,}/{self.total:,} {self.unit} ({rate:,.1f}/s{eta})"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Timer:
    """Seconds spent in each named step, summed over its calls."""

    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, function: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return function()
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def rate(rows: int, seconds: float | None) -> float | None:
    return round(rows / seconds, 1) if seconds else None
