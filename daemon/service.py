"""`lookalike run`: the watching service.

The service makes its parts, runs their jobs a turn at a time (`Scheduler`),
and stops them. Start-up takes the state lock, starts watching (so nothing
that lands during the start-up scan is missed), reconciles the inbox with
the library, answers what has no results yet, rewrites every results file
that names an image changed or gone, and tells systemd READY. Then
each turn, every job that is due does one step (`Service.jobs`). Signal
handlers only set flags; the turns act on them. The parts, one job each:

- `ingest`: image files read, encoded and stored in the library;
- `answers`: the results files of images, and their writes;
- `freshness`: other images' results kept current, and the check of them all;
- `searching`: the built index and the searcher, and both ways to rebuild;
- `reencoding`: the library re-encoded when the configured model changed;
- `sync`: the library kept in step with the watched folders;
- `status`: the status line, `service.json` and a burst's progress.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING

from lookalike.core import config as configuration
from lookalike.core.config import Config
from lookalike.core.errors import LookalikeError, disk_full
from lookalike.core.store import Library
from lookalike.daemon import memory
from lookalike.daemon.answers import Answers, remove_leftovers, rules
from lookalike.daemon.freshness import Freshness
from lookalike.daemon.ingest import Ingest, set_up_new_library
from lookalike.daemon.lock import StateLock
from lookalike.daemon.notify import Notifier
from lookalike.daemon.progress import Tally
from lookalike.daemon.reencoding import Reencoding
from lookalike.daemon.scheduler import Job, Scheduler, always
from lookalike.daemon.searching import SearchState
from lookalike.daemon.status import BurstProgress, Status
from lookalike.daemon.sync import FolderSync
from lookalike.daemon.watcher import Arrivals, Watcher

if TYPE_CHECKING:
    from lookalike.core.encoder import Encoder

log = logging.getLogger(__name__)

RETRY_S = 10  # seconds between attempts while turns fail
# Settings that a reload cannot change: they shape what is already running.
RESTART_KEYS = ("inbox", "query_dir", "state_dir", "model", "image", "watch_mode",
                "poll_interval_s", "decode_threads")


class Signals:
    """SIGTERM and SIGINT ask the service to stop, SIGHUP to reload its config: the
    handlers only set these flags."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False

    def install(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop = True

        def reload(signum: int, frame: FrameType | None) -> None:
            self.reload = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)


class Service:
    def __init__(self, config: Config, load_encoder: Callable[[Config], Encoder],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.signals = Signals()
        self.signals.install()  # first: a stop during the start-up is heard
        self.notifier = Notifier()
        self.tally = Tally()
        self.fault: str | None = None  # what makes turns fail (a full disk...), until one works
        self.retry_at = 0.0
        self.worked = True  # whether work was done since memory was last given back (the
                            # start-up counts)
        self.lock = StateLock(config.state_dir)
        self.library = library = Library(config.state_dir / "library.sqlite")
        set_up_new_library(config, library)
        encoder = load_encoder(config)
        encoder.warm()
        self.answers = Answers(config, library, encoder)
        self.ingest = Ingest(config, library, encoder, stock=self.answers.stock,
                             interrupted=lambda: self.signals.stop)
        others = library.encoded_by_others(encoder.model_id)  # vectors to make again
        open_search = SearchState.model_only if others else SearchState.load
        self.search = open_search(config, library, encoder.model_id, self.ingest.pool)
        self.reencoding = Reencoding(config, library, others, self.ingest, self.search,
                                     self.answers, self.tally)
        self.freshness = Freshness(config, library, self.search, self.answers, self.tally,
                                   clock, paused=lambda: self.reencoding.active)
        roots = {"inbox": config.inbox}
        if config.query_dir is not None:
            roots["queries"] = config.query_dir
        self.arrivals = Arrivals(roots, config.settle_s, config.exclude, clock)
        self.watcher = Watcher(self.arrivals, config.watch_mode, config.poll_interval_s)
        self.sync = FolderSync(config, library, self.arrivals, self.watcher, self.ingest,
                               self.answers, self.search, self.freshness, self.reencoding,
                               self.tally)
        self.status = Status(config.state_dir, library, self.arrivals, self.search,
                             self.sync.missing, self.tally, self.notifier, lambda: self.fault,
                             clock, watching=lambda: self.watcher.watching)
        self.burst = BurstProgress(self.arrivals, self.tally)
        self.scheduler = self.jobs()

    def jobs(self) -> Scheduler:
        """What each turn does, and when: of the `work`, the first due job alone."""
        sync, freshness, reencoding, search = (self.sync, self.freshness, self.reencoding,
                                               self.search)

        def reencoding_due(now: float) -> bool:  # (an unmounted inbox's files are not there)
            return reencoding.active and not sync.inbox_missing()

        def rebuild_due(now: float) -> bool:  # (the old model's index stays until re-encoded)
            return not reencoding.active and search.rebuild_due(now)

        def report_burst(now: float) -> None:  # (a burst ends once the results it changed are)
            self.burst.report(now, busy=bool(sync.batch) or len(self.arrivals) > 0
                              or bool(freshness.outdated))

        return Scheduler(
            before=[Job("reload", lambda now: self.signals.reload, self.reload),
                    Job("watched folders", always, sync.folders_step)],
            work=[Job("arrivals", sync.arrivals_due, sync.arrivals_step,
                      busy=lambda: bool(sync.batch)),
                  Job("out-of-date results", freshness.rewrite_due, freshness.rewrite_step,
                      busy=lambda: bool(freshness.outdated)),
                  Job("re-encoding", reencoding_due, reencoding.step,
                      busy=lambda: reencoding.active),
                  Job("results check", freshness.check_due, freshness.check_step,
                      busy=lambda: freshness.check is not None)],
            after=[Job("burst progress", always, report_burst),
                   Job("rescan", sync.rescan_due, sync.rescan_step),
                   Job("index rebuild", rebuild_due, search.rebuild_step),
                   Job("status", self.status.due, self.status.step),
                   Job("watchdog", self.notifier.watchdog_due, self.notifier.ping)])

    # -- life cycle ------------------------------------------------------------
    def start(self) -> None:
        """Watch, reconcile the inbox, answer what has no results yet, tell systemd READY."""
        config = self.config
        self.watcher.start()
        self.sync.check_folders()
        if config.query_dir is not None and "queries" not in self.sync.missing:
            remove_leftovers(config.query_dir)  # (the inbox's: by the scan, below)
        self.answers.take_scratch()
        self.answers.prepare()
        if not self.sync.inbox_missing():
            self.sync.rescan()
        # Before READY: no results file may name an image that is gone, whether the scan
        # found it gone or a kill came before the results that named it were rewritten.
        rewritten = self.freshness.rewrite_all()
        if rewritten:
            log.info("rewrote %d results files that named images changed or gone", rewritten)
        if not self.sync.inbox_missing():
            self.follow_rules()  # (after: its re-check of the results waits for READY)
        self.freshness.started()
        now = self.clock()  # the periods count from the end of the start-up
        self.sync.last_rescan = self.status.last = self.burst.since = now
        self.burst.skip(now)
        # An index older than the library (changes, or a kill) is rebuilt at once.
        self.search.last_rebuild = now if self.search.generation == self.library.generation \
            else -math.inf
        counts = self.library.counts()
        log.info("ready: %d images in the library, index generation %s, watching %s",
                 counts["images"], self.search.generation,
                 ", ".join(map(str, self.arrivals.roots.values())))
        self.notifier.ready(self.status.line())
        self.status.write()

    def run_forever(self) -> None:
        while not self.signals.stop:
            try:
                if self.fault is None:
                    self.loop(self.clock())
                else:
                    self.retry(self.clock())
            except Exception as error:  # a bug must not end a service that runs for months
                self.turn_failed(error)
                time.sleep(1)

    def loop(self, now: float) -> None:
        """One turn of the jobs; when no work is left, give memory back and wait a little."""
        if self.scheduler.loop(now):
            self.worked = True
            return
        if self.worked and not len(self.arrivals):  # a spell of work is over: nothing waits
            self.answers.rest()
            memory.give_back()
            self.worked = False
        self.arrivals.wait(0.2 if len(self.arrivals) else 1.0)

    def turn_failed(self, error: Exception) -> None:
        """A turn failed: say so once, and retry from a rescan until a turn succeeds.

        The batch of the failed turn is dropped from the queue; the rescan
        after recovery finds its images again.
        """
        full = disk_full(error)
        fault = f"the state directory's disk is full ({error})" if full else str(error)
        self.freshness.turn_failed()
        if fault != self.fault:
            if full or isinstance(error, LookalikeError):
                log.error("%s; retrying every %d s", fault, RETRY_S)
            else:
                log.exception("unexpected error; retrying every %d s", RETRY_S)
            self.fault = fault
            with contextlib.suppress(Exception):  # the library may be what fails
                self.status.tell()
        self.retry_at = self.clock() + RETRY_S

    def retry(self, now: float) -> None:
        """While a fault lasts: keep systemd's watchdog fed; now and then, rescan."""
        if self.notifier.watchdog_due(now):
            self.notifier.ping(now)
        if now < self.retry_at:
            self.arrivals.wait(1.0)
            return
        self.sync.rescan()  # raises again while the fault lasts
        log.info("recovered from: %s", self.fault)
        self.fault = None
        self.sync.last_rescan = now

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        self.watcher.stop()
        self.search.stop()
        if self.fault is None:  # (else they stay marked in the library for the next start)
            self.freshness.stop()
        self.ingest.close()
        self.answers.close()
        self.status.write(state="stopped")
        self.library.close()
        self.lock.release()
        log.info("stopped: %s", self.tally.line())

    def reload(self, now: float) -> None:
        """SIGHUP: apply what can change while running; say what needs a restart."""
        self.signals.reload = False
        try:
            fresh = configuration.load(self.config.source)
        except LookalikeError as error:
            log.error("config not reloaded: %s", error)
            return
        fixed = [key for key in RESTART_KEYS if getattr(fresh, key) != getattr(self.config, key)]
        if fixed:
            log.warning("config reloaded; restart to apply: %s", ", ".join(fixed))
        live = replace(fresh, **{name: getattr(self.config, name) for name in fixed})
        self.config = live
        for part in (self.ingest, self.answers, self.reencoding, self.freshness, self.sync):
            part.config = live
        self.search.tune(live)
        self.arrivals.settle_s, self.arrivals.exclude = live.settle_s, live.exclude
        logging.getLogger().setLevel(live.log_level.upper())
        log.info("config reloaded from %s", live.source)
        self.follow_rules()

    def follow_rules(self) -> None:
        queued = self.freshness.follow_rules()
        if queued:
            log.info("results files now follow other rules (%s): checking %d of them",
                     rules(self.config.strictness), queued)


def run(config: Config, load_encoder: Callable[[Config], Encoder]) -> int:
    service = Service(config, load_encoder)
    service.start()
    try:
        if not service.signals.stop:  # stopped during start-up: leave cleanly all the same
            service.run_forever()
    finally:
        service.shutdown()
    return 0
