"""What the running service says of itself.

Every few seconds a status line goes to systemd (`systemctl status`) and
`service.json` to the state directory, for `lookalike status`; during a
burst, a log line says how far it got.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lookalike.core import atomic
from lookalike.core.store import Library
from lookalike.daemon.notify import Notifier
from lookalike.daemon.progress import Tally
from lookalike.daemon.searching import SearchState
from lookalike.daemon.watcher import Arrivals, Watching

log = logging.getLogger(__name__)

STATUS_EVERY_S = 2.0
COUNT_EVERY_S = 30.0  # during a burst, the status line's image count is this old at most:
                      # counting 10^6 rows takes 0.05-0.1 s, 4% of a burst when done each time
BURST_EVERY_S = 5.0  # a burst's progress line, at most this often


@dataclass
class Status:
    """The status line and `service.json`, from the parts they tell of; `fault` says
    what makes turns fail, if anything does."""

    state_dir: Path
    library: Library
    arrivals: Arrivals
    search: SearchState
    missing: set[str]  # watched folders that are not there
    tally: Tally
    notifier: Notifier
    fault: Callable[[], str | None]
    clock: Callable[[], float]
    watching: Callable[[], dict[str, Watching]] = field(default=lambda: {})  # by root
    started_at: str = field(default_factory=lambda: now_utc(), init=False)
    counted: tuple[int, int] = field(default=(-1, 0), init=False)  # the library generation
                                                                   # last counted, its images
    counted_at: float = field(default=-math.inf, init=False)
    last: float = field(default=-math.inf, init=False)  # when last told (the start counts)

    def due(self, now: float) -> bool:
        return now - self.last >= STATUS_EVERY_S

    def step(self, now: float) -> None:
        self.tell()
        self.last = now

    def tell(self) -> None:
        """The status line to systemd, and `service.json`."""
        self.notifier.status(self.line())
        self.write()

    def line(self) -> str:
        generation = self.library.generation
        now = self.clock()
        due = not len(self.arrivals) or now - self.counted_at >= COUNT_EVERY_S
        if self.counted[0] != generation and due:  # idle, nothing changes: no counting
            self.counted = (generation, self.library.counts()["images"])
            self.counted_at = now
        missing = f", missing: {', '.join(sorted(self.missing))}" if self.missing else ""
        fault = self.fault()
        failing = f"; FAILING: {fault}" if fault else ""
        return (f"{self.counted[1]} images, {len(self.arrivals)} queued, "
                f"{self.search.searcher.pending} pending index{missing}{failing}")

    def write(self, state: str = "running") -> None:
        """Leave `service.json` in the state directory for `lookalike status`."""
        searcher = self.search.searcher
        built = searcher.index.info if searcher.index is not None else None
        report = {
            "pid": os.getpid(),
            "state": state,
            "started_at": self.started_at,
            "updated_at": now_utc(),
            "queue": len(self.arrivals),
            "pending_index": searcher.pending,
            "rebuilding": self.search.rebuilding is not None,
            "last_rebuild": None if built is None else {
                "generation": built.generation, "items": built.items,
                "built_at": built.built_at, "seconds": built.seconds},
            "rebuild_error": self.search.rebuild_error,
            "fault": self.fault(),
            "folders": {root: ("missing" if root in self.missing else "watched")
                        for root in self.arrivals.roots},
            "watch": {root: {"mode": how.mode, "file_system": how.file_system,
                             "poll_interval_s": how.poll_interval_s if how.mode == "poll"
                             else None}
                      for root, how in self.watching().items()},
            "totals": self.tally.__dict__,
        }
        try:  # not synced: it is rewritten every few seconds
            with atomic.replacing(status_path(self.state_dir), durable=False) as partial:
                partial.write_text(json.dumps(report, indent=1))
        except OSError as error:
            log.warning("cannot write the status file: %s", error)


class BurstProgress:
    """During a burst, one log line every few seconds: answered so far, waiting, rate;
    at its end, one line of what it did (added, changed, removed, unusable, results files
    written) and how long it took."""

    def __init__(self, arrivals: Arrivals, tally: Tally) -> None:
        self.arrivals = arrivals
        self.tally = tally
        self.since = -math.inf  # when the rate is counted from (the start counts)
        self.count = 0  # images answered by then
        self.idle = tally.copy()  # the tally when last idle: a burst's work is what follows
        self.idle_at = -math.inf
        self.bursting = False

    def report(self, now: float, busy: bool) -> None:
        tally = self.tally
        answered = tally.added + tally.updated + tally.errors
        if not busy:  # idle: a later burst's rate counts from its start
            if self.bursting:
                done = tally.since(self.idle)
                done.seconds = now - self.idle_at
                log.info("burst: %s", done.line())
                self.bursting = False
            self.skip(now)
            self.since, self.count = now, answered
            return
        self.bursting = True
        if now - self.since < BURST_EVERY_S:
            return
        waiting = len(self.arrivals)
        if waiting and answered > self.count:
            rate = (answered - self.count) / (now - self.since)
            log.info("burst: %d images read, %d waiting (%.0f/s)", answered, waiting, rate)
        self.since, self.count = now, answered

    def skip(self, now: float) -> None:
        """What was done until now is not the next burst's (a scan says what it did)."""
        self.idle, self.idle_at = self.tally.copy(), now


def status_path(state_dir: Path) -> Path:
    return state_dir / "service.json"


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
