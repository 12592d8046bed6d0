"""What the work did and how far it got: the summary's tally and progress log lines."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0


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
        return (f"{self.added} added, {self.updated} updated, {self.removed} removed, "
                f"{self.errors} unusable, {self.answered} results written; {self.encoded} "
                f"encoded, {self.reused} reused (same bytes){took}")


class Progress:
    """Log `done/total` at most every few seconds during long work."""

    def __init__(self, what: str, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.clock = what, total, clock
        self.started = self.last = clock()

    def update(self, done: int) -> None:
        now = self.clock()
        if now - self.last >= PROGRESS_EVERY_S and done < self.total:
            rate = done / max(now - self.started, 1e-9)
            log.info("%s: %d/%d (%.0f/s)", self.what, done, self.total, rate)
            self.last = now
