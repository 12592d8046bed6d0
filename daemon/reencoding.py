"""Re-encoding: the library's vectors made again when the configured model changed.

Vectors of two models cannot be compared, and the old encoder is usually
gone, so until all is re-encoded new images are searched among the
re-encoded part only (`SearchState.model_only`), and existing results
files keep the old model's answers; then the index is rebuilt and every
results file that changed is rewritten. A batch is re-encoded per `step`,
when no arrival waits.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from lookalike.core.config import Config
from lookalike.core.scan import Candidate
from lookalike.core.store import Library
from lookalike.daemon.answers import Answers
from lookalike.daemon.ingest import Ingest
from lookalike.daemon.progress import Progress, Tally
from lookalike.daemon.searching import SearchState
from lookalike.daemon.watcher import stat_of

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Reencoding:
    """The inbox `paths` whose vectors another model made, re-encoded a batch at a time."""

    config: Config
    library: Library
    paths: list[str]  # those left
    ingest: Ingest
    search: SearchState
    answers: Answers
    tally: Tally

    def __post_init__(self) -> None:
        self.total = len(self.paths)
        self.progress = Progress("re-encoding", self.total)
        if self.paths:
            log.info("the model changed: re-encoding %d images in the background", self.total)

    @property
    def active(self) -> bool:
        """Whether images wait to be re-encoded (the search holds this model's part only)."""
        return bool(self.paths)

    def step(self, now: float) -> None:
        """Re-encode a batch; after the last one, index the library and rewrite results."""
        paths = self.paths[:self.config.batch_size]
        del self.paths[:len(paths)]
        stats = {path: stat_of(self.config.inbox / path) for path in paths}
        present = [Candidate(path, *stat) for path, stat in stats.items() if stat]
        tally = Tally()  # (not the service's: re-encoding adds and updates no image)
        changes = self.ingest.read_and_store(present, self.library.lookup(paths), tally) \
            + self.ingest.forget([path for path, stat in stats.items() if not stat], tally)
        self.search.refresh(changes.stored, changes.removed, drop_unusable=False)
        self.progress.update(self.total - len(self.paths))
        if not self.paths:
            self.finish()

    def finish(self) -> None:
        self.progress.finish()
        self.search.rebuild_now()
        log.info("re-encoded %d images; rewriting the results that changed", self.total)
        self.answers.answer_library(self.search.searcher, self.tally)
