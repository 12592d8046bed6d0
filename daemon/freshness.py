"""Freshness: other images' results kept current as the library changes.

A change makes other images' results out of date: a new image closer than
an image's last candidate (`core.ranking`: the nearest its neighbours are
ranked from) enters its results, an image that changed or left leaves the
results that listed it. After each change `outdated_by`
names those images (bounded: among each new image's nearest), the library
marks them (so that a restart rewrites them too), and they are rewritten
once no arrival waits: a burst is answered first and each other results
file is rewritten once. One that only gained neighbours is `remeasured`,
without a search: its last list and the new images, measured exactly.

What that bounded look misses, the check of every results file finds
(`check`): when the index is current and the service idle, at most every
10 minutes and never more than a tenth of the time. After a restart that
followed changes (a kill, a power cut), the check of the rows changed since
the last one runs as soon as the start-up work is done: the library marked
what each change made out of date in the change's own transaction, so that
check is all a restart has to redo (`recovering`).
"""
from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from lookalike.core import ranking
from lookalike.core.config import Config
from lookalike.core.exact import ExactScan, Neighbor, distance
from lookalike.core.store import MARKS_RESULTS, Library
from lookalike.daemon.answers import MADE_WITH, Answers, rules
from lookalike.daemon.check import MEASURED_AT_MOST, Check, FullCheck, MeasuringCheck, Outdated
from lookalike.daemon.ingest import Changes
from lookalike.daemon.progress import Tally
from lookalike.daemon.searching import SearchState

log = logging.getLogger(__name__)

# x k: the nearest of a new image whose results it may enter. Nearness is not symmetric:
# the images whose candidates (`core.ranking`: 2k nearest) a new one enters are not all
# among its own nearest, and
# the wider it looks the more of them it finds (bench/reverse.py measures how many).
# Entering costs no search (`remeasured`), so look wide.
REVERSE_CANDIDATES = 8
OUTDATED_CHUNK = 256  # other images' results rewritten per idle turn
OUTDATED_AT_MOST = 8192  # rewritten even during a burst past this many
CHECK_EVERY_S = 600  # at most one check of every results file per this long: a large
                     # library takes minutes, and changes come every minute
CHECK_SHARE = 0.1  # ... and checks take at most this share of the time: a full check
                   # searches every image again, 25 to 40 minutes at 10^6 (bench/check.py)


class OutdatedResults:
    """Images whose results wait to be rewritten, each with the rows that may enter them,
    or None when a new search must redo them."""

    def __init__(self) -> None:
        self.rows: Outdated = {}

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, more: Outdated) -> None:
        """The rows that may enter add up; None (search again) wins."""
        for row, entering in more.items():
            current = self.rows.get(row, set())
            self.rows[row] = None if entering is None or current is None else current | entering

    def pop_first(self, count: int) -> Outdated:
        """The `count` lowest row ids, no longer waiting."""
        return {row: self.rows.pop(row) for row in sorted(self.rows)[:count]}


@dataclass(eq=False)
class Freshness:
    """Keeps other images' results current: those a change made out of date (`outdated`),
    and the `check` of every results file. `paused`: whether checks wait (re-encoding)."""

    config: Config
    library: Library
    search: SearchState
    answers: Answers
    tally: Tally
    clock: Callable[[], float]
    paused: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        self.outdated = OutdatedResults()
        self.check: Check | None = None  # the check under way
        library = self.library
        # A library whose changes did not mark the results they made out of date (made
        # before they did, and not stopped cleanly) may hold any stale results file.
        unmarked = library.meta(MARKS_RESULTS) is None \
            and library.meta("stopped_at") != str(library.generation)
        self.needs_full_check = unmarked or library.meta("full_check_wanted") == "1"
        if unmarked:
            self.want_full_check()
            library.set_meta(MARKS_RESULTS, "1")  # (this service's changes mark them)
        # A stop (or a kill) since the last check may have left results out of date.
        self.checked_generation = int(library.meta("checked_generation") or -1)
        self.recovering = False  # whether the start-up left rows to check (`started`)
        self.new_library = library.generation == 0  # (before the start-up scan)
        self.check_started = -math.inf
        self.check_took = 0.0  # seconds the last complete check took
        self.check_rewrote = 0  # results files the check under way rewrote

    # -- after a change of the library -------------------------------------------
    def nearby(self, row_ids: Iterable[int]) -> dict[int, list[Neighbor]]:
        """The nearest rows to each of `row_ids`, enough for both `outdated_by` and their
        own results: one search per new image instead of two."""
        width = REVERSE_CANDIDATES * self.config.neighbors
        return self.search.searcher.neighbors_of(self.library.vectors_of(row_ids), width)

    def follow(self, changes: Changes, nearby: dict[int, list[Neighbor]]) -> int:
        """Mark the results that `changes` made out of date, to rewrite them when no
        arrival waits; how many."""
        outdated = self.outdated_by(changes, nearby)
        self.library.mark_outdated(outdated)  # so that a restart rewrites them too
        self.outdated.add(outdated)
        return len(outdated)

    def outdated_by(self, changes: Changes, nearby: dict[int, list[Neighbor]]) -> Outdated:
        """Answered images whose results `changes` may alter (not the changed ones themselves).

        A new or moved image enters the results of those of its `nearby`
        images that it is closer to than their last candidate: each such
        image comes with the rows that may enter. An image that left or
        changed leaves the results that listed it (`changes.outdated`): those
        come with None, as only a new search finds what takes its place.
        """
        outdated: Outdated = dict.fromkeys(changes.outdated)  # (marked in the library already)
        radii = self.library.radii({n.row_id for near in nearby.values() for n in near})
        for row, near in nearby.items():
            for n in near:
                if n.row_id not in radii:
                    continue
                radius = radii[n.row_id]
                if radius is None or n.distance < radius:
                    entering = outdated.setdefault(n.row_id, set())
                    if entering is not None:  # (None: it is searched again anyway)
                        entering.add(row)
        for row in (*changes.stored, *changes.removed):
            outdated.pop(row, None)
        return outdated

    def remeasured(self, entering: dict[int, set[int]]) -> dict[int, list[Neighbor]]:
        """The candidates (`core.ranking`) of each row of `entering` that only new rows
        may enter: the rows it last listed and those rows, measured exactly. No search,
        so it costs little at any library size; rows whose last list cannot be trusted
        are left out.
        """
        listed = self.library.neighbors_listed(entering)
        wanted = {*entering, *(r for rows in entering.values() for r in rows),
                  *(int(r) for rows in listed.values() for r in rows)}
        vectors = self.library.vectors_of(wanted)
        metric = self.search.searcher.metric
        wide = ranking.candidates(self.config.neighbors)
        found = {}
        for row, new in entering.items():
            if row not in vectors or row not in listed:
                continue
            last = listed[row].tolist()
            if any(r not in vectors for r in last):  # it listed an image gone since
                continue
            others = sorted({*last, *(r for r in new if r in vectors)} - {row})
            if len(others) < wide:  # a short list (or k grew): search
                continue
            distances = distance(np.stack([vectors[r] for r in others]), vectors[row], metric)
            ranked = sorted(zip(distances.tolist(), others, strict=True))
            found[row] = [Neighbor(r, d) for d, r in ranked[:wide]]
        return found

    def rewrite(self, outdated: Outdated) -> None:
        """Rewrite the results of `outdated`'s rows: remeasured with the rows that
        entered them where that is enough, searched again where not (None)."""
        searcher = self.search.searcher
        remeasured = self.remeasured({
            row: rows for row, rows in outdated.items() if rows is not None})
        self.answers.answer(searcher, list(remeasured), self.tally, nearby=remeasured)
        self.answers.answer(searcher, [row for row in outdated if row not in remeasured],
                            self.tally)

    def rewrite_due(self, now: float) -> bool:
        return bool(self.outdated)

    def rewrite_step(self, now: float) -> None:
        self.rewrite_outdated()

    def rewrite_outdated(self, count: int = OUTDATED_CHUNK) -> None:
        """Rewrite the first `count` results that wait."""
        self.rewrite(self.outdated.pop_first(count))

    def rewrite_all(self) -> int:
        """Rewrite every results file that waits (at start-up, before READY); how many."""
        waiting = len(self.outdated)
        self.rewrite_outdated(waiting)
        return waiting

    def rewrite_if_piling_up(self) -> None:
        """During a burst: rewrite every waiting results file once they pile up."""
        if len(self.outdated) >= OUTDATED_AT_MOST:
            self.rewrite_outdated(len(self.outdated))

    def follow_rules(self) -> int:
        """When the results files follow other rules than this service's (`answers.rules`:
        another near-duplicate strictness after a reload or a restart with another
        config, an older release's judging or ranking): queue every answered image to be
        remeasured (or searched again, if its list is short), which rewrites those whose
        results change; how many."""
        made_with = rules(self.config.strictness)
        if self.library.meta(MADE_WITH) == made_with:
            return 0
        rows = [record.id for record in self.library.records().values()
                if record.answered is not None and record.error_code is None]
        self.outdated.add({row: set() for row in rows})
        self.library.set_meta(MADE_WITH, made_with)
        return len(rows)

    # -- the check of every results file -----------------------------------------
    def check_due(self, now: float) -> bool:
        """Whether a check is under way or wanted."""
        return self.check is not None or self.check_wanted(now)

    def check_wanted(self, now: float) -> bool:
        """Whether to check every results file now: idle, the index current, the check old.

        The bounded update after each arrival misses an image whose candidates
        include a new one that is not among the new one's nearest (nearness is
        not symmetric): the check finds those (`daemon.check`). After a
        restart that followed changes, at once, without waiting for the index:
        a kill may have come between a change and the results it enters, and
        what changed since the last check is all that can be stale (the
        library marked the rest). Otherwise at most once per CHECK_EVERY_S, and
        never more than CHECK_SHARE of the time, by the last check's length.
        """
        generation = self.library.generation
        if self.recovering:
            return not self.paused()
        return (not self.paused() and self.search.rebuilding is None
                and self.checked_generation != generation
                and self.search.generation == generation
                and now - self.check_started >= max(CHECK_EVERY_S,
                                                    self.check_took / CHECK_SHARE))

    def check_step(self, now: float) -> None:
        """Begin a check, or take its next step: a block measured, or a chunk searched
        again."""
        if self.check is None:
            self.start_check()
            return
        before = self.tally.answered
        found = self.check.step(self.library)
        if found is not None:
            self.rewrite(found)
            self.check_rewrote += self.tally.answered - before
        if self.check.finished:
            self.finish_check()

    def start_check(self) -> None:
        """Measure the rows changed since the last check against every image, or, when
        that cannot be trusted, search every image again."""
        self.checked_generation = self.library.generation
        self.check_started = self.clock()
        self.check_rewrote = 0
        recovering, self.recovering = self.recovering, False
        checked = self.library.meta("checked_generation") or "0"
        if not self.needs_full_check:
            ids, vectors, _ = self.library.changed_since(int(checked))
            if len(ids) <= MEASURED_AT_MOST:
                self.check = MeasuringCheck(ExactScan(ids, vectors, self.search.searcher.metric))
                log.log(logging.INFO if recovering else logging.DEBUG,
                        "checking every results file for the %d images changed since "
                        "generation %s%s", len(ids), checked,
                        " (after a restart)" if recovering else "")
                return
        rows = sorted(record.id for record in self.library.records().values())
        self.check = FullCheck(rows) if rows else None
        log.info("searching every image again to check its results file (%d images)",
                 len(rows))

    def finish_check(self) -> None:
        assert self.check is not None
        if self.check.full:
            self.needs_full_check = False
            self.library.set_meta("full_check_wanted", "0")
        self.check = None
        self.library.set_meta("checked_generation", str(self.checked_generation))
        self.check_took = self.clock() - self.check_started
        log.log(logging.INFO if self.check_rewrote else logging.DEBUG,
                "results check done in %.1f s: %d results files were out of date and "
                "rewritten", self.check_took, self.check_rewrote)

    # -- the service's events --------------------------------------------------
    def started(self) -> None:
        """The start-up is done: rows changed since the last check (by a run that was
        killed, or while the service was down) are checked at once, not after the next
        rebuild, since what they entered is unknown. A new library's start-up scan
        answered every image against all the others: nothing to check."""
        generation = self.library.generation
        if self.new_library:
            self.checked_generation = generation
        self.recovering = generation > 0 and self.checked_generation != generation

    def turn_failed(self) -> None:
        """A turn failed: it may have stopped anywhere, and the search may not know
        what it stored. Only searching every image again will find all it left."""
        self.check, self.checked_generation = None, -1
        self.want_full_check()

    def want_full_check(self) -> None:
        """Search every image again at the next check, after a restart too (unless the
        library cannot be written: a full disk; then this run's check does it)."""
        self.needs_full_check = True
        try:
            self.library.set_meta("full_check_wanted", "1")
        except sqlite3.Error as error:
            log.debug("cannot note that a full check is wanted: %s", error)

    def stop(self) -> None:
        """A clean stop: rewrite what waits."""
        self.rewrite_outdated(len(self.outdated))
