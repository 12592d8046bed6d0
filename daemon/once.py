"""`lookalike run --once`: one pass of scan, ingest, index and answer."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lookalike.core import ranking
from lookalike.core.config import Config
from lookalike.core.errors import StateError
from lookalike.core.store import Library
from lookalike.daemon import memory, moves
from lookalike.daemon.answers import Answers, remove_leftovers
from lookalike.daemon.ingest import Ingest, set_up_new_library
from lookalike.daemon.lock import StateLock
from lookalike.daemon.progress import Tally
from lookalike.daemon.searching import SearchState

if TYPE_CHECKING:
    from lookalike.core.encoder import Encoder

log = logging.getLogger(__name__)


def run(config: Config, load_encoder: Callable[[Config], Encoder]) -> int:
    started = time.monotonic()
    with StateLock(config.state_dir), Library(config.state_dir / "library.sqlite") as library:
        set_up_new_library(config, library)
        if not config.inbox.is_dir():
            raise StateError(f"the inbox {config.inbox} does not exist (is its disk mounted?)")
        if config.query_dir is not None and config.query_dir.is_dir():
            remove_leftovers(config.query_dir)  # (the inbox's: by its scan)
        encoder = load_encoder(config)
        answers = Answers(config, library, encoder, judged_apart=True)
        ingest = Ingest(config, library, encoder, stock=answers.stock)
        answers.take_scratch()
        answers.prepare()
        try:
            tally = Tally()
            changes = ingest.reconcile(tally)
            memory.give_back()  # the ingest's batches: the answering's peak comes next
            search = SearchState.load(config, library, encoder.model_id, ingest.pool,
                                      rebuild_if_behind=True)
            carried = moves.carried(library, changes, search.searcher.metric,
                                    ranking.candidates(config.neighbors))
            answers.answer_library(search.searcher, tally, changes.unanswered, carried)
            # Every results file now stands as an index of this generation finds it: a
            # service's first check measures only what changes after.
            library.set_meta("checked_generation", str(library.generation))
            answers.answer_queries(search.searcher, tally)
        finally:
            ingest.close()
            answers.close()
        tally.seconds = time.monotonic() - started
        counts = library.counts()
    print(f"{counts['images']} images in the library: {tally.line()}")
    return 0
