"""The library kept in step with the watched folders.

`FolderSync` hands what the watcher saw settle (`Arrivals.ready`) to ingest,
and rescans the folders: at start-up, every `watch.rescan_interval_s`,
after the kernel dropped events, and when a watched folder that vanished
(an unmounted disk: nothing is forgotten) comes back. Each change to the
library is followed the same way (`follow`): the search learns it, its new
and changed images are answered, and the other results it made out of
date are marked for `Freshness`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from lookalike.core import results
from lookalike.core.config import Config
from lookalike.core.scan import Candidate
from lookalike.core.store import Library
from lookalike.daemon.answers import Answers
from lookalike.daemon.freshness import Freshness
from lookalike.daemon.ingest import Changes, Ingest
from lookalike.daemon.progress import Tally
from lookalike.daemon.reencoding import Reencoding
from lookalike.daemon.searching import SearchState
from lookalike.daemon.watcher import Arrivals, Ready, Watcher

log = logging.getLogger(__name__)


@dataclass(eq=False)
class FolderSync:
    """The watched folders (`missing`: those gone) followed into the library and results."""

    config: Config
    library: Library
    arrivals: Arrivals
    watcher: Watcher
    ingest: Ingest
    answers: Answers
    search: SearchState
    freshness: Freshness
    reencoding: Reencoding
    tally: Tally
    missing: set[str] = field(default_factory=set, init=False)  # watched folders not there
    batch: list[Ready] = field(default_factory=list, init=False)  # this turn's settled paths
    last_rescan: float = field(default=-math.inf, init=False)  # (the start counts as one)

    # -- the watched folders --------------------------------------------------
    def check_folders(self) -> bool:
        """Notice watched folders that vanished or came back; True when one is watched anew.

        A folder that comes back may be a new one at the same path (a disk
        mounted again): the watcher compares identities, not names.
        """
        for root, folder in self.arrivals.roots.items():
            if not folder.is_dir() and root not in self.missing:
                self.missing.add(root)
                log.warning("%s %s is missing (unmounted?); nothing is forgotten, waiting for it",
                            root, folder)
        rewatched = self.watcher.watch()
        for root in rewatched:
            self.missing.discard(root)
            log.info("%s %s is watched again; rescanning", root, self.arrivals.roots[root])
        return bool(rewatched)

    def inbox_missing(self) -> bool:
        return "inbox" in self.missing

    def folders_step(self, now: float) -> None:
        """Each turn: look at the watched folders; rescan when one came back."""
        if self.check_folders():
            self.rescan()
            self.last_rescan = now

    def rescan_due(self, now: float) -> bool:
        """Whether to rescan: the period passed, or the kernel dropped events."""
        interval = self.config.rescan_interval_s
        due = bool(interval) and now - self.last_rescan >= interval
        if self.watcher.events_lost():
            log.warning("the kernel dropped file events; rescanning the watched folders")
            due = True
        return due and not self.inbox_missing()

    def rescan_step(self, now: float) -> None:
        log.info("rescanning the watched folders")
        self.rescan()
        self.last_rescan = now

    def rescan(self) -> None:
        """Reconcile the inbox with the library, and answer whatever has no results; say
        in one line what that did, if anything."""
        before, started = self.tally.copy(), time.monotonic()
        changes = self.ingest.reconcile(self.tally, model_too=False)
        self.follow(changes)
        searcher = self.search.searcher
        self.answers.answer(searcher, changes.unanswered, self.tally)
        self.answers.answer_queries(searcher, self.tally)
        done = self.tally.since(before)
        if done:
            done.seconds = time.monotonic() - started
            log.info("scan: %s", done.line())

    # -- what the watcher saw ---------------------------------------------------
    def arrivals_due(self, now: float) -> bool:
        """Whether settled paths wait (taken from the watcher's queue here, a batch)."""
        self.batch = self.arrivals.ready(self.config.batch_size)
        return bool(self.batch)

    def arrivals_step(self, now: float) -> None:
        self.handle(self.batch)
        self.freshness.rewrite_if_piling_up()

    def handle(self, batch: list[Ready]) -> None:
        """Ingest, forget and answer a batch of settled paths."""
        inbox = [r for r in batch if r.root == "inbox"]
        arrived = [Candidate(r.path, *r.stat) for r in inbox if r.stat]
        gone = [r.path for r in inbox if r.stat is None and not r.folder]
        for r in inbox:
            if r.folder:
                gone += self.library.under(r.path)
        if self.inbox_missing():
            gone = []  # an unmounted disk is not a deletion: wait for it
        known = self.library.lookup(c.path for c in arrived)
        changed = [c for c in arrived if self.ingest.needs_reading(known.get(c.path), c)]
        self.follow(self.ingest.read_and_store(changed, known, self.tally)
                    + self.ingest.forget(gone, self.tally))
        queries = [r for r in batch if r.root == "queries"]
        self.answers.answer_queries(self.search.searcher, self.tally,
                                    [r.path for r in queries if r.stat])
        for r in queries:
            if r.stat is None and self.config.query_dir is not None and not r.folder:
                results.remove(self.config.query_dir / r.path)

    def follow(self, changes: Changes) -> None:
        """After a change to the library: update the search and every results file it touches."""
        if not changes:
            return
        search = self.search
        if self.reencoding.active:
            # Searching the re-encoded part only; all is rewritten when done.
            search.refresh(changes.stored, changes.removed, drop_unusable=False)
            self.answers.answer(search.searcher, changes.stored, self.tally)
            return
        if search.outgrown(len(changes.stored)):
            search.rebuild_now()  # a large arrival: index it now rather than scan it exactly
        else:
            search.refresh(changes.stored, changes.removed)
        # New images are answered now; the other results they change, when no
        # arrival waits: in a burst, each is then rewritten once, not per batch.
        nearby = self.freshness.nearby(changes.stored)
        outdated = self.freshness.follow(changes, nearby)
        self.answers.answer(search.searcher, changes.stored, self.tally, nearby=nearby)
        log.debug("%d stored, %d removed, %d other results to rewrite",
                  len(changes.stored), len(changes.removed), outdated)
