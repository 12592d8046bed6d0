"""What the running service says of itself (`Status`), on a real library."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from lookalike.core import config as configuration
from lookalike.core.store import Library
from lookalike.daemon import status as status_module
from lookalike.daemon.notify import Notifier
from lookalike.daemon.progress import Tally
from lookalike.daemon.searching import SearchState
from lookalike.daemon.status import BurstProgress, Status
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


def test_a_burst_ends_with_one_line_of_what_it_did(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    tally = Tally()
    arrivals = Arrivals({"inbox": tmp_path}, 2.0, (), lambda: 0.0)
    burst = BurstProgress(arrivals, tally)
    tally.added, tally.answered = 5, 9  # before the burst: a scan's, said by the scan
    burst.skip(100.0)
    with caplog.at_level(logging.INFO, "lookalike.daemon.status"):
        burst.report(101.0, busy=False)  # idle: nothing to say
        burst.report(102.0, busy=True)
        tally.added, tally.updated, tally.removed, tally.errors, tally.answered = 785, 2, 3, 1, 800
        burst.report(103.0, busy=True)
        tally.answered = 812  # results the burst made out of date, rewritten after it
        burst.report(104.5, busy=False)
        burst.report(105.0, busy=False)  # idle again: no second line
    assert [r.getMessage() for r in caplog.records] == [
        "burst: 780 added, 2 updated, 3 removed, 1 unusable, 803 results written; "
        "0 encoded, 0 reused (same bytes) in 3.5 s (224 images/s)"]
