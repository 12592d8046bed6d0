"""What the running service says of itself (`Status`), on a real library."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lookalike.core import config as configuration
from lookalike.core.store import Library
from lookalike.daemon import status as status_module
from lookalike.daemon.notify import Notifier
from lookalike.daemon.progress import Tally
from lookalike.daemon.searching import SearchState
from lookalike.daemon.status import Status
from lookalike.daemon.watcher import Arrivals
from tests.daemon.vectors import MODEL, clustered, store


def test_during_a_burst_the_status_line_counts_the_library_every_half_minute_at_most(
        make_config: Callable[..., Path]) -> None:
    """Counting 10^6 rows takes 0.05-0.1 s: not at every status line (each 2 s) of a burst."""
    config = configuration.load(make_config())
    now = [10_000.0]
    library = Library(config.state_dir / "library.sqlite")
    arrivals = Arrivals({"inbox": config.inbox}, 2.0, (), lambda: now[0])
    search = SearchState.load(config, library, MODEL)
    search.rebuild_now()
    status = Status(config.state_dir, library, arrivals, search, set(), Tally(), Notifier(),
                    fault=lambda: None, clock=lambda: now[0])
    store(library, clustered(3, 1), 0)
    assert status.line().startswith("3 images, 0 queued")
    arrivals.note("inbox", str(config.inbox / "waiting.png"))  # a burst goes on
    store(library, clustered(2, 2), 3)
    now[0] += status_module.COUNT_EVERY_S - 1
    assert status.line().startswith("3 images, 1 queued")
    now[0] += 1
    assert status.line().startswith("5 images, 1 queued")
    store(library, clustered(1, 3), 5)
    arrivals.pending.clear()  # the burst is over: counted at once
    assert status.line().startswith("6 images, 0 queued")
