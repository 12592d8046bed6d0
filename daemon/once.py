"""`lookalike run --once`: one pass of scan, ingest, index and answer."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lookalike.core.config import Config
from lookalike.core.errors import StateError
from lookalike.core.store import Library
from lookalike.daemon.lock import StateLock
from lookalike.daemon.worker import Tally, Worker, create_folders_on_first_run, remove_leftovers

if TYPE_CHECKING:
    from lookalike.core.encoder import Encoder

log = logging.getLogger(__name__)


def run(config: Config, load_encoder: Callable[[Config], Encoder]) -> int:
    started = time.monotonic()
    with StateLock(config.state_dir), Library(config.state_dir / "library.sqlite") as library:
        create_folders_on_first_run(config, library)
        if not config.inbox.is_dir():
            raise StateError(f"the inbox {config.inbox} does not exist (is its disk mounted?)")
        if config.query_dir is not None and config.query_dir.is_dir():
            remove_leftovers(config.query_dir)  # (the inbox's: by its scan)
        worker = Worker(config, library, load_encoder(config))
        worker.take_scratch()
        try:
            tally = Tally()
            changes = worker.reconcile(tally)
            searcher = worker.searcher(worker.rebuild_if_stale())
            worker.answer_library(searcher, tally, changes.unanswered)
            worker.answer_queries(searcher, tally)
        finally:
            worker.close()
        tally.seconds = time.monotonic() - started
        counts = library.counts()
    print(f"{counts['images']} images in the library: {tally.line()}")
    return 0
