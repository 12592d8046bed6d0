"""What the work did and how far it got: the summary's tally, and progress on long work."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from lookalike.daemon.logs import LiveLine

log = logging.getLogger(__name__)

LIVE_EVERY_S = 0.5  # a terminal's live line is redrawn this often
LOG_EVERY_S = 10.0  # the journal gets a progress line this often


@dataclass
class Tally:
    """What a pass did, for the summary line."""

    added: int = 0
    updated: int = 0
    errors: int = 0
    removed: int = 0
    answered: int = 0
    encoded: int = 0  # of the added and updated: those read, decoded and encoded
    reused: int = 0  # ... and those that took the vector of a row with the same bytes
    seconds: float = 0.0

    def copy(self) -> Tally:
        return replace(self)

    def since(self, before: Tally) -> Tally:
        """What was done after `before`, an earlier copy of this tally."""
        return Tally(**{f.name: getattr(self, f.name) - getattr(before, f.name)
                        for f in fields(self)})

    def __bool__(self) -> bool:
        """Whether anything was done (time alone is not)."""
        return any(getattr(self, f.name) for f in fields(self) if f.name != "seconds")

    def line(self) -> str:
        took = f" in {self.seconds:.1f} s" if self.seconds else ""
        read = self.added + self.updated + self.errors
        if self.seconds and read:
            took += f" ({read / self.seconds:,.0f} images/s)"
        return (f"{self.added} added, {self.updated} updated, {self.removed} removed, "
                f"{self.errors} unusable, {self.answered} results written; {self.encoded} "
                f"encoded, {self.reused} reused (same bytes){took}")


class Progress:
    """How far long work has got: `done/total`, the rate and the time left.

    On a terminal, a live line redrawn twice a second (log lines are written
    above it, `logs.LiveLine`); elsewhere (the journal, a file), a log line
    every `LOG_EVERY_S`. Work that ends within the first interval shows
    nothing: the summary line says what it did.
    """

    def __init__(self, what: str, total: int, clock: Callable[[], float] = time.monotonic,
                 live: bool | None = None) -> None:
        self.what, self.total, self.clock = what, total, clock
        self.live = LiveLine.available() if live is None else live
        self.every = LIVE_EVERY_S if self.live else LOG_EVERY_S
        self.started = self.last = clock()

    def update(self, done: int) -> None:
        now = self.clock()
        done = min(done, self.total)
        if now - self.last < self.every or done >= self.total:
            return
        self.last = now
        if self.live:
            LiveLine.show(self.line(done, now))
        else:
            log.info("%s", self.line(done, now))

    def line(self, done: int, now: float) -> str:
        rate = done / max(now - self.started, 1e-9)
        left = (self.total - done) / rate if rate > 0 else math.inf
        return f"{self.what}: {done:,}/{self.total:,} ({rate:,.0f}/s, {duration(left)} left)"

    def finish(self) -> None:
        """The work is over (or stopped): take the live line away."""
        if self.live:
            LiveLine.clear()


def duration(seconds: float) -> str:
    """`seconds` as a person reads a time left: 45 s, 12 min 5 s, 3 h 20 min."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
