"""The search state: the built index in use, the searcher over it, and its rebuilds.

`SearchState` is the one owner of both: it loads the index (rebuilding a
damaged one), makes every searcher of the daemon (`open_searcher`), follows
the library's changes into the searcher until the next build, and rebuilds
the index in two ways: at once in this process when a large arrival cannot
wait (`rebuild_now`), or in a child process in the background
(`builder.BuildProcess`) every `index.rebuild_interval_s` while anything
changed, then swapped in.
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import Executor

import numpy as np

from lookalike.core import index
from lookalike.core.config import Config
from lookalike.core.errors import StateError
from lookalike.core.index_kinds import BuiltIndex
from lookalike.core.search import Searcher
from lookalike.core.store import Library
from lookalike.daemon.builder import BuildProcess, BuildSettings, build_now

log = logging.getLogger(__name__)


def open_searcher(config: Config, library: Library, built: BuiltIndex | None,
                  pool: Executor | None = None,
                  fresh: tuple[np.ndarray, np.ndarray] | None = None) -> Searcher:
    """A searcher over `built` and the library's rows changed since, as configured;
    or, given `fresh` (row ids and vectors), over those alone."""
    settings = config.index
    if fresh is not None:
        return Searcher(None, *fresh, set(), settings.metric, settings.search_k,
                        settings.candidates)
    return Searcher.open(library, built, settings.metric, settings.search_k,
                         settings.candidates, pool, settings.rescore)


class SearchState:
    """The index in use and `searcher`; `pool` runs a batch's Annoy queries side by side."""

    def __init__(self, config: Config, library: Library, model_id: str, searcher: Searcher,
                 pool: Executor | None = None) -> None:
        self.config = config
        self.library = library
        self.model_id = model_id
        self.searcher = searcher
        self.pool = pool
        self.rebuilding: BuildProcess | None = None  # a build in a child process
        self.rebuild_error: str | None = None  # how the last one failed
        self.last_rebuild = -math.inf  # when the last background build began (or the
                                       # service started: the first waits an interval)

    @classmethod
    def load(cls, config: Config, library: Library, model_id: str,
             pool: Executor | None = None, rebuild_if_behind: bool = False) -> SearchState:
        """Search the current index, rebuilt first when damaged (the library holds all
        it knows) or, with `rebuild_if_behind`, older than the library."""
        settings = BuildSettings.of(config, model_id)
        if rebuild_if_behind:
            try:
                current = index.current_info(config.state_dir)
            except StateError:
                current = None  # a damaged pointer: the rebuild replaces it
            if current is None or current.generation != library.generation:
                build_now(library, settings)
        try:
            built = index.load(config.state_dir)
        except StateError as error:
            log.error("the index is damaged; rebuilding it (%s)", error)
            build_now(library, settings)
            built = index.load(config.state_dir)
        searcher = open_searcher(config, library, built, pool)
        return cls(config, library, model_id, searcher, pool)

    @classmethod
    def model_only(cls, config: Config, library: Library, model_id: str,
                   pool: Executor | None = None) -> SearchState:
        """Search the vectors of this model only, exactly, without an index: while the
        library is re-encoded, the index holds the other model's vectors."""
        fresh = library.vectors(model_id=model_id)
        searcher = open_searcher(config, library, None, fresh=fresh)
        return cls(config, library, model_id, searcher, pool)

    # -- the index in use ----------------------------------------------------
    @property
    def generation(self) -> int | None:
        """The library generation of the index in use (None: none)."""
        return self.searcher.generation

    def swap(self) -> None:
        """Search the index built last (if it cannot be read, keep the one in use)."""
        try:
            built = index.load(self.config.state_dir)
        except StateError as error:
            log.error("%s", error)
            return
        self.searcher = open_searcher(self.config, self.library, built, self.pool)

    def refresh(self, stored: list[int], removed: list[int], drop_unusable: bool = True) -> None:
        """Follow rows changed since the build: search `stored` exactly, forget `removed`
        (and, with `drop_unusable`, the stored rows that have no vector)."""
        vectors = self.library.vectors_of(stored)
        unusable = [row for row in stored if row not in vectors] if drop_unusable else []
        self.searcher.refresh(vectors, removed + unusable)

    def tune(self, config: Config) -> None:
        """Apply a reloaded config's search settings."""
        self.config = config
        tuning = self.searcher.tuning
        tuning.search_k = config.index.search_k
        tuning.candidates = config.index.candidates
        tuning.rescore = config.index.rescore

    # -- rebuilds -----------------------------------------------------------
    def rebuild_now(self) -> None:
        """Build the index in this process now and search it (after any background build)."""
        if self.rebuilding is not None:
            self.finish_rebuild()  # one builder at a time
        build_now(self.library, BuildSettings.of(self.config, self.model_id))
        self.swap()

    def outgrown(self, unindexed: int) -> bool:
        """Whether `unindexed` images are too many to scan exactly until the next rebuild.

        Below a few thousand images the exact scan costs less than a build.
        """
        return unindexed >= self.config.index.rebuild_share * max(self.searcher.items, 5000)

    def rebuild_due(self, now: float) -> bool:
        """Whether a background build ended, or one should begin: the library changed
        since the index in use, and the interval passed or the changes are many."""
        if self.rebuilding is not None:
            return not self.rebuilding.running()
        if self.generation == self.library.generation:
            return False
        return (now - self.last_rebuild >= self.config.index.rebuild_interval_s
                or self.outgrown(self.searcher.pending))

    def rebuild_step(self, now: float) -> None:
        """Search the index a background build made, or begin one."""
        if self.rebuilding is not None:
            self.finish_rebuild()
            return
        self.last_rebuild = now
        self.rebuilding = BuildProcess(BuildSettings.of(self.config, self.model_id))

    def finish_rebuild(self) -> None:
        """Wait for the background build to end, keep how it ended, and use its index."""
        assert self.rebuilding is not None
        self.rebuild_error = self.rebuilding.wait()  # (the builder logged it)
        self.rebuilding = None
        self.swap()

    def stop(self) -> None:
        """End a background build now: the next one removes what it left."""
        if self.rebuilding is not None:
            self.rebuilding.stop()
