"""`lookalike run`: the watching service.

Start-up takes the state lock, starts watching (so nothing that lands during
the start-up scan is missed), reconciles the inbox with the library, answers
what has no results yet and tells systemd READY. Then each `loop` turn
handles the paths that settled, a due rescan or index rebuild, and the
watchdog ping. Signal handlers only set flags; the loop acts on them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from lookalike.core import config as configuration
from lookalike.core import index, results
from lookalike.core.config import Config
from lookalike.core.errors import LookalikeError, StateError, disk_full
from lookalike.core.scan import Candidate
from lookalike.core.search import Flat, Searcher
from lookalike.core.store import Library
from lookalike.daemon import memory
from lookalike.daemon.builder import Build, Rebuild
from lookalike.daemon.check import ENTERING_AT_MOST, EnteringCheck
from lookalike.daemon.lock import StateLock
from lookalike.daemon.notify import Notifier
from lookalike.daemon.watcher import Arrivals, Ready, Watcher, stat_of
from lookalike.daemon.worker import (
    Changes,
    Progress,
    Tally,
    Touched,
    Worker,
    create_folders_on_first_run,
    join,
    remove_leftovers,
    replaced,
)

if TYPE_CHECKING:
    from lookalike.core.encoder import Encoder

log = logging.getLogger(__name__)

STATUS_EVERY_S = 2.0
COUNT_EVERY_S = 30.0  # during a burst, the status line's image count is this old at most:
                      # counting 10^6 rows takes 0.05-0.1 s, 4% of a burst when done each time
PROGRESS_EVERY_S = 5.0
RETRY_S = 10  # seconds between attempts while turns fail
SWEEP_CHUNK = 64  # results searched again per idle turn: small, so an arrival waits little
SWEEP_EVERY_S = 600  # at most one check of every results file per this long: a large
                     # library takes minutes, and changes come every minute
SWEEP_SHARE = 0.1  # ... and checks take at most this share of the time: a full check
                   # searches every image again, 25 to 40 minutes at 10^6 (bench/check.py)
TOUCHED_CHUNK = 256  # other images' results rewritten per idle turn
TOUCHED_AT_MOST = 8192  # rewritten even during a burst past this many
# Settings that a reload cannot change: they shape what is already running.
RESTART_KEYS = ("inbox", "query_dir", "state_dir", "model", "image", "decode_threads")


class Service:
    def __init__(self, config: Config, load_encoder: Callable[[Config], Encoder],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.load_encoder = load_encoder
        self.clock = clock
        self.notifier = Notifier()
        self.stop_requested = False
        self.reload_requested = False
        self.started_at = now_utc()
        self.tally = Tally()
        self.rebuilding: Rebuild | None = None  # an index build in a child process
        self.rebuild_error: str | None = None
        self.missing: set[str] = set()
        self.sweep: list[int] = []  # row ids whose results to search again when idle
        self.check: EnteringCheck | None = None  # or the changed rows measured against all
        self.full_check_due = False  # whether only searching every image again will do
        self.touched: Touched = {}  # rows whose results a change made out of date
        self.counted = (-1, 0)  # the library generation last counted, and its images
        self.counted_at = -float("inf")
        self.fault: str | None = None  # what makes turns fail (a full disk...), until one works
        self.retry_at = 0.0
        self.swept = 0
        self.swept_generation = -1
        self.sweep_started = -float("inf")
        self.sweep_took = 0.0  # seconds the last complete check took
        self.worked = True  # whether work was done since memory was last given back (the
                            # start-up counts)

    # -- life cycle ------------------------------------------------------------
    def start(self) -> None:
        config = self.config
        self.install_signals()
        self.lock = StateLock(config.state_dir)
        self.library = Library(config.state_dir / "library.sqlite")
        # After a clean stop (or none: a new library), results stand as the running
        # service keeps them: measuring what changed since the last check is enough.
        generation = self.library.generation
        self.full_check_due = generation > 0 and \
            self.library.meta("stopped_at") != str(generation)
        create_folders_on_first_run(config, self.library)
        self.worker = Worker(config, self.library, self.load_encoder(config))
        self.worker.encoder.warm()
        self.worker.interrupted = lambda: self.stop_requested
        roots = {"inbox": config.inbox}
        if config.query_dir is not None:
            roots["queries"] = config.query_dir
        self.arrivals = Arrivals(roots, config.settle_s, config.exclude, self.clock)
        self.watcher = Watcher(self.arrivals)
        self.watcher.start()
        self.reencoding = self.library.encoded_by_others(self.worker.encoder.model_id)
        if self.reencoding:
            self.start_reencoding()
        else:
            self.searcher = self.worker.searcher(self.worker.load_index())
        self.check_folders()
        if config.query_dir is not None and "queries" not in self.missing:
            remove_leftovers(config.query_dir)  # (the inbox's: by the scan, below)
        self.worker.take_scratch()
        if "inbox" not in self.missing:
            self.rescan()
        # A stop (or a kill) since the last check may have left results out of date.
        self.swept_generation = int(self.library.meta("checked_generation") or -1)
        self.last_rebuild = self.last_rescan = self.last_status = self.progress_at = self.clock()
        self.pinged = -float("inf")
        self.progress_count = 0
        counts = self.library.counts()
        log.info("ready: %d images in the library, index generation %s, watching %s",
                 counts["images"], self.index_generation(), ", ".join(map(str, roots.values())))
        self.notifier.ready(self.status_line())
        self.write_status()

    def run_forever(self) -> None:
        while not self.stop_requested:
            try:
                if self.fault is None:
                    self.loop(self.clock())
                else:
                    self.retry(self.clock())
            except Exception as error:  # a bug must not end a service that runs for months
                self.failed(error)
                time.sleep(1)

    def failed(self, error: Exception) -> None:
        """A turn failed: say so once, and retry from a rescan until a turn succeeds.

        The batch of the failed turn is dropped from the queue; the rescan
        after recovery finds its images again.
        """
        full = disk_full(error)
        fault = f"the state directory's disk is full ({error})" if full else str(error)
        # The turn may have stored a change without marking the results it touched.
        self.full_check_due, self.sweep, self.check, self.swept_generation = True, [], None, -1
        if fault != self.fault:
            if full or isinstance(error, LookalikeError):
                log.error("%s; retrying every %d s", fault, RETRY_S)
            else:
                log.exception("unexpected error; retrying every %d s", RETRY_S)
            self.fault = fault
            with contextlib.suppress(Exception):  # the library may be what fails
                self.notifier.status(self.status_line())
                self.write_status()
        self.retry_at = self.clock() + RETRY_S

    def retry(self, now: float) -> None:
        """While a fault lasts: keep systemd's watchdog fed; now and then, rescan."""
        self.keep_alive(now)
        if now < self.retry_at:
            self.arrivals.wait(1.0)
            return
        self.rescan()  # raises again while the fault lasts
        log.info("recovered from: %s", self.fault)
        self.fault = None
        self.last_rescan = now

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        self.watcher.stop()
        if self.rebuilding is not None:
            self.rebuilding.stop()
        if self.fault is None:  # (else they stay marked in the library for the next start)
            self.answer_touched(len(self.touched))
            if not self.full_check_due:
                self.library.set_meta("stopped_at", str(self.library.generation))
        self.worker.close()
        self.write_status(state="stopped")
        self.library.close()
        self.lock.release()
        log.info("stopped: %s", self.tally.line())

    def install_signals(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop_requested = True

        def reload(signum: int, frame: FrameType | None) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    # -- one turn ---------------------------------------------------------------
    def loop(self, now: float) -> None:
        """Handle what is due at `now`, then wait a little for more."""
        if self.reload_requested:
            self.reload_requested = False
            self.reload()
        if self.check_folders():
            self.rescan()
            self.last_rescan = now
        batch = self.arrivals.ready(self.config.batch_size)
        if batch:
            self.handle(batch)
            if len(self.touched) >= TOUCHED_AT_MOST:
                self.answer_touched()
        elif self.touched:
            self.answer_touched()
        elif self.reencoding and "inbox" not in self.missing:
            self.reencode_batch()
        elif self.sweep or self.check is not None:
            self.sweep_batch()
        elif self.sweep_due(now):
            self.start_sweep()
        self.report_progress(now, busy=bool(batch) or len(self.arrivals) > 0)
        interval = self.config.rescan_interval_s
        due = bool(interval) and now - self.last_rescan >= interval
        if self.watcher.events_lost():
            log.warning("the kernel dropped file events; rescanning the watched folders")
            due = True
        if due and "inbox" not in self.missing:
            log.info("rescanning the watched folders")
            self.rescan()
            self.last_rescan = now
        self.maybe_rebuild(now)
        if now - self.last_status >= STATUS_EVERY_S:
            self.notifier.status(self.status_line())
            self.write_status()
            self.last_status = now
        self.keep_alive(now)
        if batch or self.reencoding or self.sweep or self.check or self.touched:
            self.worked = True
            return
        if self.worked and not len(self.arrivals):  # a spell of work is over: nothing waits
            memory.give_back()
            self.worked = False
        self.arrivals.wait(0.2 if len(self.arrivals) else 1.0)

    def keep_alive(self, now: float) -> None:
        watchdog = self.notifier.watchdog_s
        if watchdog is not None and now - self.pinged >= watchdog / 4:
            self.notifier.watchdog()
            self.pinged = now

    def report_progress(self, now: float, busy: bool) -> None:
        """During a burst, one log line every few seconds: answered so far, waiting, rate."""
        answered = self.tally.added + self.tally.updated + self.tally.errors
        if not busy:  # idle: a later burst's rate counts from its start
            self.progress_at, self.progress_count = now, answered
            return
        if now - self.progress_at < PROGRESS_EVERY_S:
            return
        waiting = len(self.arrivals)
        if waiting and answered > self.progress_count:
            rate = (answered - self.progress_count) / (now - self.progress_at)
            log.info("burst: %d images read, %d waiting (%.0f/s)", answered, waiting, rate)
        self.progress_at, self.progress_count = now, answered

    def handle(self, batch: list[Ready]) -> None:
        """Ingest, forget and answer a batch of settled paths."""
        inbox_missing = "inbox" in self.missing
        arrived = [Candidate(r.path, *r.stat) for r in batch if r.root == "inbox" and r.stat]
        gone = [r.path for r in batch if r.root == "inbox" and r.stat is None and not r.folder]
        for r in batch:
            if r.root == "inbox" and r.folder:
                gone += self.library.under(r.path)
        if inbox_missing:
            gone = []  # an unmounted disk is not a deletion: wait for it
        known = self.library.lookup(c.path for c in arrived)
        changed = [c for c in arrived if self.worker.outdated(known.get(c.path), c)]
        stored = self.worker.ingest(changed, known, self.tally)
        removed = self.worker.forget(gone, self.tally)
        self.follow(Changes(stored, removed, replaced(changed, known)))
        queries = [r for r in batch if r.root == "queries"]
        self.worker.answer_queries(self.searcher, self.tally, [r.path for r in queries if r.stat])
        for r in queries:
            if r.stat is None and self.config.query_dir is not None and not r.folder:
                results.remove(self.config.query_dir / r.path)

    def follow(self, changes: Changes) -> None:
        """After a change to the library: update the search and every results file it touches."""
        if not changes:
            return
        if self.reencoding:  # searching the re-encoded part only; all is rewritten when done
            self.searcher.refresh(self.library.vectors_of(changes.stored), changes.removed)
            self.worker.answer(self.searcher, changes.stored, self.tally)
            return
        if self.outgrown(len(changes.stored)):
            if self.rebuilding is not None:
                self.finish_rebuild()  # one builder at a time
            self.worker.rebuild()  # a large arrival: index it now rather than scan it exactly
            self.swap_index()
        else:
            vectors = self.library.vectors_of(changes.stored)
            unusable = [row for row in changes.stored if row not in vectors]
            self.searcher.refresh(vectors, changes.removed + unusable)
        # New images are answered now; the other results they change, when no
        # arrival waits: in a burst, each is then rewritten once, not per batch.
        nearby = self.worker.nearby(self.searcher, changes.stored)
        affected = self.worker.affected(changes, nearby)
        self.library.unanswer(affected)  # so that a restart rewrites them too
        join(self.touched, affected)
        self.worker.answer(self.searcher, changes.stored, self.tally, nearby=nearby)
        log.debug("%d stored, %d removed, %d other results to rewrite",
                  len(changes.stored), len(changes.removed), len(affected))

    def rescan(self) -> None:
        """Reconcile the inbox with the library, and answer whatever has no results."""
        tally = self.tally
        changes = self.worker.reconcile(tally, model_too=False)
        self.follow(changes)
        self.worker.answer(self.searcher, changes.unanswered, tally)
        self.worker.answer_queries(self.searcher, tally)

    # -- a new model ------------------------------------------------------------
    def start_reencoding(self) -> None:
        """The configured model did not make the library's vectors: re-encode in the background.

        Vectors of two models cannot be compared, and the old encoder is
        usually gone, so until all is re-encoded new images are searched
        among the re-encoded part only, and existing results files keep the
        old model's answers; then the index is rebuilt and every results
        file that changed is rewritten.
        """
        log.info("the model changed: re-encoding %d images in the background",
                 len(self.reencoding))
        model_id = self.worker.encoder.model_id
        ids, vectors = self.library.vectors(model_id=model_id)
        self.searcher = Searcher(None, ids, vectors, set(), self.config.index.metric,
                                 self.config.index.search_k, self.config.index.candidates)
        self.reencode_progress = Progress("re-encoding", len(self.reencoding))
        self.reencode_total = len(self.reencoding)

    def reencode_batch(self) -> None:
        paths = self.reencoding[:self.config.batch_size]
        del self.reencoding[:len(paths)]
        stats = {path: stat_of(self.config.inbox / path) for path in paths}
        present = [Candidate(path, *stat) for path, stat in stats.items() if stat]
        tally = Tally()
        stored = self.worker.ingest(present, self.library.lookup(paths), tally)
        removed = self.worker.forget([path for path, stat in stats.items() if not stat], tally)
        self.searcher.refresh(self.library.vectors_of(stored), removed)
        self.reencode_progress.update(self.reencode_total - len(self.reencoding))
        if not self.reencoding:
            self.finish_reencoding()

    def finish_reencoding(self) -> None:
        self.worker.rebuild()
        self.swap_index()
        log.info("re-encoded %d images; rewriting the results that changed", self.reencode_total)
        self.worker.answer_library(self.searcher, self.tally)

    # -- folders, index, config ------------------------------------------------
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

    def maybe_rebuild(self, now: float) -> None:
        if self.reencoding:
            return  # the index of the old model stays until all is re-encoded
        if self.rebuilding is not None:
            if not self.rebuilding.running():
                self.finish_rebuild()
            return
        built = self.index_generation()
        if built == self.library.generation:
            return
        due = now - self.last_rebuild >= self.config.index.rebuild_interval_s
        if due or self.outgrown(self.searcher.pending):
            self.last_rebuild = now
            self.rebuilding = Rebuild(Build.of(self.config, self.worker.encoder.model_id))

    def outgrown(self, unindexed: int) -> bool:
        """Whether `unindexed` images are too many to scan exactly until the next rebuild.

        Below a few thousand images the exact scan costs less than a build.
        """
        return unindexed >= self.config.index.rebuild_share * max(self.searcher.items, 5000)

    def finish_rebuild(self) -> None:
        """Wait for the background build to end, keep how it ended, and use its index."""
        assert self.rebuilding is not None
        self.rebuild_error = self.rebuilding.wait()  # (the builder logged it)
        self.rebuilding = None
        self.swap_index()

    def swap_index(self) -> None:
        try:
            built = index.load(self.config.state_dir)
        except StateError as error:
            log.error("%s", error)
            return
        self.searcher = self.worker.searcher(built)

    # -- keeping every results file true ---------------------------------------------
    def sweep_due(self, now: float) -> bool:
        """Whether to check every results file now: idle, the index current, the check old.

        The bounded reverse-neighbour update after each arrival misses an
        image whose k nearest include a new one that is not among the new
        one's nearest (nearness is not symmetric): the check finds those
        (`daemon.check`). A kill between a library commit and the results it
        changes leaves them old: the generation last checked is kept in the
        library, so a restart checks too. At most once per SWEEP_EVERY_S, and
        never more than SWEEP_SHARE of the time, by the last check's length.
        """
        return (not self.reencoding and self.rebuilding is None
                and self.swept_generation != self.library.generation
                and self.index_generation() == self.library.generation
                and now - self.sweep_started >= max(SWEEP_EVERY_S,
                                                    self.sweep_took / SWEEP_SHARE))

    def start_sweep(self) -> None:
        """Check every results file: measure the rows changed since the last check
        against every image, or, when that cannot be trusted, search every image again."""
        self.swept_generation = self.library.generation
        self.sweep_started = self.clock()
        self.swept = 0
        checked = self.library.meta("checked_generation") or "0"
        if not self.full_check_due:
            ids, vectors, _ = self.library.changed_since(int(checked))
            if len(ids) <= ENTERING_AT_MOST:
                self.check = EnteringCheck(Flat(ids, vectors, self.searcher.metric))
                log.debug("checking every results file for the %d images changed since "
                          "generation %s", len(ids), checked)
                return
        self.sweep = sorted(record.id for record in self.library.records().values())
        log.debug("checking %d results files against index generation %s",
                  len(self.sweep), self.index_generation())

    def answer_touched(self, chunk: int = TOUCHED_CHUNK) -> None:
        self.rewrite({row: self.touched.pop(row) for row in sorted(self.touched)[:chunk]})

    def rewrite(self, entering: Touched) -> None:
        """Rewrite the results of `entering`'s rows: merged with the rows that entered
        them where that is enough, searched again where not (None)."""
        merged = self.worker.merged(self.searcher.metric, {
            row: rows for row, rows in entering.items() if rows is not None})
        self.worker.answer(self.searcher, list(merged), self.tally, nearby=merged)
        self.worker.answer(self.searcher, [row for row in entering if row not in merged],
                           self.tally)

    def sweep_batch(self) -> None:
        """One step of the check: a block measured, or a chunk searched again."""
        before = self.tally.answered
        if self.check is not None:
            entered = self.check.step(self.library)
            if entered is not None:
                self.rewrite(entered)
                self.swept += self.tally.answered - before
                return
            self.check = None
        else:
            rows, self.sweep = self.sweep[:SWEEP_CHUNK], self.sweep[SWEEP_CHUNK:]
            self.worker.answer(self.searcher, rows, self.tally)
            self.swept += self.tally.answered - before
            if self.sweep:
                return
            self.full_check_due = False
        self.library.set_meta("checked_generation", str(self.swept_generation))
        self.sweep_took = self.clock() - self.sweep_started
        if self.swept:
            log.info("results check done in %.0f s: %d results files were out of date and "
                     "rewritten", self.sweep_took, self.swept)

    def index_generation(self) -> int | None:
        return self.searcher.index.info.generation if self.searcher.index is not None else None

    def reload(self) -> None:
        """SIGHUP: apply what can change while running; say what needs a restart."""
        try:
            fresh = configuration.load(self.config.source)
        except LookalikeError as error:
            log.error("config not reloaded: %s", error)
            return
        fixed = [key for key in RESTART_KEYS if getattr(fresh, key) != getattr(self.config, key)]
        if fixed:
            log.warning("config reloaded; restart to apply: %s", ", ".join(fixed))
        live = replace(fresh, **{name: getattr(self.config, name) for name in fixed})
        self.config = self.worker.config = live
        self.arrivals.settle_s, self.arrivals.exclude = live.settle_s, live.exclude
        self.searcher.search_k = live.index.search_k
        self.searcher.candidates = live.index.candidates
        self.searcher.rescore = live.index.rescore
        logging.getLogger().setLevel(live.log_level.upper())
        log.info("config reloaded from %s", live.source)

    # -- reporting ----------------------------------------------------------------
    def status_line(self) -> str:
        generation = self.library.generation
        now = self.clock()
        due = not len(self.arrivals) or now - self.counted_at >= COUNT_EVERY_S
        if self.counted[0] != generation and due:  # idle, nothing changes: no counting
            self.counted = (generation, self.library.counts()["images"])
            self.counted_at = now
        missing = f", missing: {', '.join(sorted(self.missing))}" if self.missing else ""
        fault = f"; FAILING: {self.fault}" if self.fault else ""
        return (f"{self.counted[1]} images, {len(self.arrivals)} queued, "
                f"{self.searcher.pending} pending index{missing}{fault}")

    def write_status(self, state: str = "running") -> None:
        """Leave `service.json` in the state directory for `lookalike status`."""
        built = self.searcher.index.info if self.searcher.index is not None else None
        report = {
            "pid": os.getpid(),
            "state": state,
            "started_at": self.started_at,
            "updated_at": now_utc(),
            "queue": len(self.arrivals),
            "pending_index": self.searcher.pending,
            "rebuilding": self.rebuilding is not None,
            "last_rebuild": None if built is None else {
                "generation": built.generation, "items": built.items,
                "built_at": built.built_at, "seconds": built.seconds},
            "rebuild_error": self.rebuild_error,
            "fault": self.fault,
            "folders": {root: ("missing" if root in self.missing else "watched")
                        for root in self.arrivals.roots},
            "totals": self.tally.__dict__,
        }
        path = status_path(self.config.state_dir)
        try:  # renamed into place, not synced: it is rewritten every few seconds
            path.with_name(path.name + ".partial").write_text(json.dumps(report, indent=1))
            os.replace(path.with_name(path.name + ".partial"), path)
        except OSError as error:
            log.warning("cannot write the status file: %s", error)


def status_path(state_dir: Path) -> Path:
    return state_dir / "service.json"


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(config: Config, load_encoder: Callable[[Config], Encoder]) -> int:
    service = Service(config, load_encoder)
    service.start()
    if service.stop_requested:  # stopped during start-up: leave cleanly all the same
        service.shutdown()
        return 0
    try:
        service.run_forever()
    finally:
        service.shutdown()
    return 0
