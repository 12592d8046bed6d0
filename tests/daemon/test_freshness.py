"""Keeping other images' results true as images arrive and leave (`Freshness.outdated_by`,
`Freshness.remeasured`) and the check of every results file, on a real library: the
updated lists must be what exact search finds."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lookalike.core import config as configuration
from lookalike.core.exact import ExactScan
from lookalike.core.store import Answer, Library
from lookalike.daemon import freshness as freshness_module
from lookalike.daemon.answers import Answers
from lookalike.daemon.check import FullCheck, MeasuringCheck
from lookalike.daemon.freshness import Freshness
from lookalike.daemon.ingest import Changes
from lookalike.daemon.progress import Tally
from lookalike.daemon.searching import SearchState
from tests.daemon.vectors import MODEL, WIDE, clustered, exact, shown, store


@pytest.fixture
def library(tmp_path: Path, make_config: Callable[..., Path]) -> Library:
    config = configuration.load(make_config())
    return Library(config.state_dir / "library.sqlite")


def freshness_of(library: Library, make_config: Callable[..., Path]) -> Freshness:
    """Freshness over the library as it is now (searched exactly: no index); it never
    writes results, so it has no encoder."""
    config = configuration.load(make_config())
    answers = Answers(config, library, encoder=None)  # type: ignore[arg-type]
    search = SearchState.load(config, library, MODEL)
    return Freshness(config, library, search, answers, Tally(), clock=lambda: 0.0)


def answer_exactly(library: Library, rows: list[int]) -> None:
    """Mark `rows` answered with their exact candidates, as a results file would list them."""
    ids, vectors = library.vectors()
    wanted = library.vectors_of(rows)
    near = ExactScan(ids, vectors, "angular").nearest(np.stack(list(wanted.values())), WIDE,
                                                      list(wanted))
    library.mark_answered(Answer(row, "f", [n.row_id for n in found], found[-1].distance)
                          for row, found in zip(wanted, near, strict=True))


def test_new_images_enter_the_results_they_belong_in_without_a_search(
        library: Library, make_config: Callable[..., Path]) -> None:
    old = store(library, clustered(300, 0), 0)
    answer_exactly(library, old)
    before = exact(library)
    new = store(library, clustered(20, 1), 300)
    after = exact(library)
    ids, vectors = library.vectors()
    freshness = freshness_of(library, make_config)

    outdated = freshness.outdated_by(Changes(stored=new), freshness.nearby(new))
    changed = {row for row in old if after[row] != before[row]}
    assert changed and set(outdated) == changed  # every one found, and only those
    assert all(entering is not None and entering <= set(new) for entering in outdated.values())

    remeasured = freshness.remeasured({row: rows for row, rows in outdated.items()
                                       if rows is not None})
    assert {row: [n.row_id for n in near] for row, near in remeasured.items()} == \
        {row: after[row] for row in changed}
    row = min(remeasured)
    searcher = freshness.search.searcher
    assert [n.distance for n in remeasured[row]] == pytest.approx(
        [n.distance for n in searcher.neighbors(vectors[ids == row][0], WIDE, exclude=row)],
        abs=1e-6)


def test_an_image_that_left_sends_the_results_listing_it_to_a_new_search(
        library: Library, make_config: Callable[..., Path]) -> None:
    rows = store(library, clustered(100, 2), 0)
    answer_exactly(library, rows)
    gone = rows[7]
    listing = {row for row, near in exact(library).items() if gone in near}
    stored = library.store(deletions=["7.png"])
    # The transaction that forgot it marked the results listing it out of date.
    assert sorted(stored.outdated) == sorted(listing)
    assert {r.id for r in library.records().values() if r.answered is None} == listing
    freshness = freshness_of(library, make_config)

    outdated = freshness.outdated_by(Changes(removed=[gone], outdated=stored.outdated), {})
    assert outdated == dict.fromkeys(listing)  # None: only a search finds what replaces it
    # Asked anyway, remeasuring refuses a row whose last results list an image gone since.
    assert freshness.remeasured({row: set() for row in listing}) == {}


def test_a_list_shorter_than_the_candidates_is_searched_again_not_remeasured(
        library: Library, make_config: Callable[..., Path]) -> None:
    """A results file written when k was smaller (a reload raised it), by a release that
    searched fewer candidates, or when the library held fewer images: remeasuring would
    list fewer than are searched, so it leaves the row out."""
    rows = store(library, clustered(30, 3), 0)
    answer_exactly(library, rows)
    short = rows[0]
    library.mark_answered([Answer(short, "f", rows[1:4], 0.5)])  # listed only 3
    new = store(library, clustered(1, 4), 30)
    remeasured = freshness_of(library, make_config).remeasured(
        {short: set(new), rows[1]: set(new)})
    assert short not in remeasured and rows[1] in remeasured


# -- the check of every results file --------------------------------------------------
def idle_freshness(config: configuration.Config, encoder_path: Path,
                   now: list[float]) -> Freshness:
    """Freshness on a real library, answers and index, driven by hand and a fake clock."""
    from lookalike.core.encoder import load as load_encoder

    library = Library(config.state_dir / "library.sqlite")
    encoder = load_encoder(encoder_path)
    answers = Answers(config, library, encoder)
    answers.take_scratch()
    search = SearchState.load(config, library, encoder.model_id)
    return Freshness(config, library, search, answers, Tally(), clock=lambda: now[0])


def run_check(freshness: Freshness) -> None:
    freshness.start_check()
    while freshness.check is not None:
        freshness.check_step(0.0)


def test_checks_of_every_results_file_take_at_most_a_tenth_of_the_time(
        make_config: Callable[..., Path], encoder_path: Path) -> None:
    """A full check searches every image again: half an hour at 10^6. The next one waits
    at least ten times as long as the last one took (and at least CHECK_EVERY_S)."""
    config = configuration.load(make_config())
    now = [10_000.0]
    freshness = idle_freshness(config, encoder_path, now)
    library = freshness.library
    store(library, np.random.default_rng(5).normal(size=(200, 32)).astype(np.float32), 0)
    freshness.search.rebuild_now()
    freshness.needs_full_check = True  # (as after a failed turn)
    assert freshness.check_wanted(now[0])
    freshness.start_check()
    assert isinstance(freshness.check, FullCheck)
    while freshness.check is not None:
        now[0] += 600.0  # each chunk of 64 "takes" ten minutes: 40 minutes in all
        freshness.check_step(now[0])
    assert freshness.check_took == 4 * 600.0
    store(library, np.random.default_rng(6).normal(size=(1, 32)).astype(np.float32), 200)
    freshness.search.rebuild_now()
    started = 10_000.0
    assert not freshness.check_wanted(started + 10 * 2400.0 - 1)
    assert freshness.check_wanted(started + 10 * 2400.0)
    freshness.answers.close()


def test_the_check_remeasures_each_changed_image_into_every_results_file_it_enters(
        make_config: Callable[..., Path], encoder_path: Path) -> None:
    """The worst case for the update on arrival: it missed every image a new one entered.
    After a clean stop (or a check) the check measures only what changed since, and
    leaves every results file listing the exact k nearest."""
    config = configuration.load(make_config())
    freshness = idle_freshness(config, encoder_path, [10_000.0])
    library = freshness.library
    old = store(library, clustered(300, 0), 0)
    answer_exactly(library, old)
    library.set_meta("checked_generation", str(library.generation))
    before = exact(library)
    new = store(library, clustered(20, 1), 300)
    answer_exactly(library, new)  # answered on arrival; the others were left as they were
    after = exact(library)
    changed = {row for row in old if after[row] != before[row]}
    assert len(changed) > 20
    freshness.search.rebuild_now()
    freshness.needs_full_check = False

    run_check(freshness)
    assert freshness.check is None
    assert {row: listed.tolist() for row, listed in
            library.neighbors_listed(old + new).items()} == after
    assert len(changed) <= freshness.check_rewrote < len(old)  # measured, not all searched
    row = min(changed)
    document = json.loads((config.inbox / f"{row - 1}.png.neighbors.json").read_text())
    assert [n["path"] for n in document["neighbors"]] == [f"{r - 1}.png"
                                                          for r in shown(library)[row]]
    assert library.meta("checked_generation") == str(library.generation)
    freshness.answers.close()


def test_after_a_failed_turn_or_too_many_changes_the_check_searches_every_image(
        make_config: Callable[..., Path], encoder_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed turn may have stored a change without marking the results it made out
    of date: measuring cannot see that, searching again can. So can too many changes,
    cheaper."""
    config = configuration.load(make_config())
    freshness = idle_freshness(config, encoder_path, [10_000.0])
    library = freshness.library
    answer_exactly(library, store(library, clustered(100, 2), 0))
    library.set_meta("checked_generation", str(library.generation))
    answer_exactly(library, store(library, clustered(10, 3), 100))
    freshness.search.rebuild_now()
    freshness.needs_full_check = False
    monkeypatch.setattr(freshness_module, "MEASURED_AT_MOST", 9)
    freshness.start_check()
    assert isinstance(freshness.check, FullCheck) and len(freshness.check.rows) == 110
    monkeypatch.setattr(freshness_module, "MEASURED_AT_MOST", 10)
    freshness.check = None
    freshness.start_check()
    assert isinstance(freshness.check, MeasuringCheck)

    freshness.turn_failed()  # what the service's handler of a failed turn does
    assert freshness.needs_full_check and freshness.check is None
    assert freshness.checked_generation == -1
    run_check(freshness)
    assert not freshness.needs_full_check  # a full check done: measuring is enough again
    freshness.answers.close()
