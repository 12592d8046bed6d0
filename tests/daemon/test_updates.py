"""Keeping other images' results true as images arrive and leave (`Worker.affected`,
`Worker.merged`), on a real library: the updated lists must be what exact search finds."""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lookalike.core import config as configuration
from lookalike.core import index
from lookalike.core.search import Flat, Searcher
from lookalike.core.store import Answer, Entry, Library
from lookalike.daemon import service as daemon
from lookalike.daemon import worker as worker_module
from lookalike.daemon.watcher import Arrivals
from lookalike.daemon.worker import Changes, Tally, Worker

K = 12


@pytest.fixture
def worker(tmp_path: Path, make_config: Callable[..., Path]) -> Worker:
    config = configuration.load(make_config())
    library = Library(config.state_dir / "library.sqlite")
    return Worker(config, library, encoder=None)  # type: ignore[arg-type]  # never encodes


def clustered(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 16))
    return (centres[rng.integers(0, 20, count)] + 0.5 * rng.normal(size=(count, 16))
            ).astype(np.float32)


def store(library: Library, vectors: np.ndarray, first: int) -> list[int]:
    names = [f"{first + n}.png" for n in range(len(vectors))]
    library.apply(Entry(name, 1, 1, None, "m", vector) for name, vector in zip(
        names, vectors, strict=True))
    return [library.lookup([name])[name].id for name in names]


def answer_exactly(library: Library, rows: list[int]) -> None:
    """Mark `rows` answered with their exact k nearest, as a results file would say."""
    ids, vectors = library.vectors()
    wanted = library.vectors_of(rows)
    near = Flat(ids, vectors, "angular").nearest(np.stack(list(wanted.values())), K,
                                                 list(wanted))
    library.mark_answered(Answer(row, "f", [n.row_id for n in found], found[-1].distance)
                          for row, found in zip(wanted, near, strict=True))


def exact(library: Library) -> dict[int, list[int]]:
    ids, vectors = library.vectors()
    near = Flat(ids, vectors, "angular").nearest(vectors, K, list(ids))
    return {int(row): [n.row_id for n in found] for row, found in zip(ids, near, strict=True)}


def test_new_images_enter_the_results_they_belong_in_without_a_search(worker: Worker) -> None:
    library = worker.library
    old = store(library, clustered(300, 0), 0)
    answer_exactly(library, old)
    before = exact(library)
    new = store(library, clustered(20, 1), 300)
    after = exact(library)
    ids, vectors = library.vectors()
    searcher = Searcher(None, ids, vectors, set(), "angular")

    affected = worker.affected(Changes(new, []), worker.nearby(searcher, new))
    changed = {row for row in old if after[row] != before[row]}
    assert changed and set(affected) == changed  # every one found, and only those
    assert all(entering is not None and entering <= set(new) for entering in affected.values())

    merged = worker.merged("angular", {row: rows for row, rows in affected.items()
                                       if rows is not None})
    assert {row: [n.row_id for n in near] for row, near in merged.items()} == \
        {row: after[row] for row in changed}
    row = min(merged)
    assert [n.distance for n in merged[row]] == pytest.approx(
        [n.distance for n in searcher.neighbors(vectors[ids == row][0], K, exclude=row)],
        abs=1e-6)


def test_an_image_that_left_sends_the_results_naming_it_to_a_new_search(
        worker: Worker) -> None:
    library = worker.library
    rows = store(library, clustered(100, 2), 0)
    answer_exactly(library, rows)
    gone = rows[7]
    naming = {row for row, near in exact(library).items() if gone in near}
    library.apply(deletions=["7.png"])

    affected = worker.affected(Changes([], [gone]), {})
    assert affected == dict.fromkeys(naming)  # None: only a search finds what replaces it
    # Asked anyway, the merge refuses a row whose last results name an image gone since.
    assert worker.merged("angular", {row: set() for row in naming}) == {}


def test_a_list_shorter_than_k_is_searched_again_not_merged(worker: Worker) -> None:
    """A results file written when k was smaller (a reload raised it) or the library
    held fewer images: the merge would list fewer than k, so it leaves the row out."""
    library = worker.library
    rows = store(library, clustered(30, 3), 0)
    answer_exactly(library, rows)
    short = rows[0]
    library.mark_answered([Answer(short, "f", rows[1:4], 0.5)])  # named only 3
    new = store(library, clustered(1, 4), 30)
    merged = worker.merged("angular", {short: set(new), rows[1]: set(new)})
    assert short not in merged and rows[1] in merged


def test_results_written_chunk_by_chunk_are_the_exact_ones_and_a_failure_stays_unanswered(
        tmp_path: Path, make_config: Callable[..., Path], encoder_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`answer` writes a chunk in its writer thread while it searches the next: every
    file must still land with the exact neighbours, and one that cannot be written
    (its folder is gone) must stay unanswered, so that the next pass writes it."""
    from lookalike.core.encoder import load as load_encoder

    monkeypatch.setattr(worker_module, "ANSWER_CHUNK", 7)
    config = configuration.load(make_config())
    library = Library(config.state_dir / "library.sqlite")
    worker = Worker(config, library, load_encoder(encoder_path))
    vectors = clustered(30, 5)
    names = [f"gone/{n}.png" if n % 6 == 0 else f"{n}.png" for n in range(30)]
    library.apply(Entry(name, 1, 1, None, "m", vector) for name, vector in zip(
        names, vectors, strict=True))
    ids, stored = library.vectors()
    worker.take_scratch()
    tally = Tally()
    worker.answer(Searcher(None, ids, stored, set(), "angular"), ids.tolist(), tally)
    worker.close()

    records = library.records()
    path_of = {record.id: path for path, record in records.items()}
    unanswered = {path for path, record in records.items() if record.answered is None}
    assert unanswered == {name for name in names if name.startswith("gone/")}
    assert tally.answered == 25
    for row, near in exact(library).items():
        target = worker.config.inbox / f"{path_of[row]}.neighbors.json"
        if path_of[row] in unanswered:
            assert not target.exists()
            continue
        listed = json.loads(target.read_text())["neighbors"]
        assert [n["path"] for n in listed] == [path_of[r] for r in near]


def test_blanks_are_made_only_for_an_inbox_on_the_scratch_disk(
        tmp_path: Path, make_config: Callable[..., Path]) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    for state, stocks in ((tmp_path / "state", True), (Path(tempfile.mkdtemp(dir=shm)), False)):
        config = configuration.load(make_config(state_dir=str(state)))
        with Library(config.state_dir / "library.sqlite") as library:
            worker = Worker(config, library, encoder=None)  # type: ignore[arg-type]
            worker.take_scratch()
            assert worker.stock_blanks is stocks
            worker.close()
        if not stocks:
            shutil.rmtree(state)


def idle_service(config: configuration.Config, encoder_path: Path,
                 now: list[float]) -> daemon.Service:
    """A Service on a real library, worker and index, driven by hand and a fake clock."""
    from lookalike.core.encoder import load as load_encoder

    service = daemon.Service(config, lambda _: load_encoder(encoder_path), clock=lambda: now[0])
    service.library = Library(config.state_dir / "library.sqlite")
    service.reencoding = []
    service.worker = Worker(config, service.library, load_encoder(encoder_path))
    service.worker.take_scratch()
    return service


def reindex(service: daemon.Service) -> None:
    service.worker.rebuild()
    service.searcher = service.worker.searcher(index.load(service.config.state_dir))


def run_check(service: daemon.Service) -> None:
    service.start_sweep()
    while service.sweep or service.check is not None:
        service.sweep_batch()


def test_checks_of_every_results_file_take_at_most_a_tenth_of_the_time(
        make_config: Callable[..., Path], encoder_path: Path) -> None:
    """A full check searches every image again: half an hour at 10^6. The next one waits
    at least ten times as long as the last one took (and at least SWEEP_EVERY_S)."""
    config = configuration.load(make_config())
    now = [10_000.0]
    service = idle_service(config, encoder_path, now)
    library = service.library
    store(library, np.random.default_rng(5).normal(size=(200, 32)).astype(np.float32), 0)
    reindex(service)
    service.full_check_due = True  # (as after a failed turn)
    assert service.sweep_due(now[0])
    service.start_sweep()
    assert service.sweep and service.check is None
    while service.sweep:
        now[0] += 600.0  # each chunk of 64 "takes" ten minutes: 40 minutes in all
        service.sweep_batch()
    assert service.sweep_took == 4 * 600.0
    store(library, np.random.default_rng(6).normal(size=(1, 32)).astype(np.float32), 200)
    reindex(service)
    started = 10_000.0
    assert not service.sweep_due(started + 10 * 2400.0 - 1)
    assert service.sweep_due(started + 10 * 2400.0)
    service.worker.close()


def test_the_check_merges_each_changed_image_into_every_results_file_it_enters(
        make_config: Callable[..., Path], encoder_path: Path) -> None:
    """The worst case for the update on arrival: it missed every image a new one entered.
    After a clean stop (or a check) the check measures only what changed since, and
    leaves every results file naming the exact k nearest."""
    config = configuration.load(make_config())
    service = idle_service(config, encoder_path, [10_000.0])
    library = service.library
    old = store(library, clustered(300, 0), 0)
    answer_exactly(library, old)
    library.set_meta("checked_generation", str(library.generation))
    before = exact(library)
    new = store(library, clustered(20, 1), 300)
    answer_exactly(library, new)  # answered on arrival; the others were left as they were
    after = exact(library)
    changed = {row for row in old if after[row] != before[row]}
    assert len(changed) > 20
    reindex(service)
    service.full_check_due = False

    run_check(service)
    assert service.check is None and not service.sweep
    assert {row: named.tolist() for row, named in library.named(old + new).items()} == after
    assert len(changed) <= service.swept < len(old)  # measured, not all searched again
    row = min(changed)
    document = json.loads((config.inbox / f"{row - 1}.png.neighbors.json").read_text())
    assert [n["path"] for n in document["neighbors"]] == [f"{r - 1}.png" for r in after[row]]
    assert library.meta("checked_generation") == str(library.generation)
    service.worker.close()


def test_after_a_failed_turn_or_too_many_changes_the_check_searches_every_image(
        make_config: Callable[..., Path], encoder_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed turn may have stored a change without marking the results it touched:
    measuring cannot see that, searching again can. So can too many changes, cheaper."""
    config = configuration.load(make_config())
    service = idle_service(config, encoder_path, [10_000.0])
    library = service.library
    answer_exactly(library, store(library, clustered(100, 2), 0))
    library.set_meta("checked_generation", str(library.generation))
    answer_exactly(library, store(library, clustered(10, 3), 100))
    reindex(service)
    service.full_check_due = False
    monkeypatch.setattr(daemon, "ENTERING_AT_MOST", 9)
    service.start_sweep()
    assert len(service.sweep) == 110 and service.check is None
    monkeypatch.setattr(daemon, "ENTERING_AT_MOST", 10)
    service.sweep = []
    service.start_sweep()
    assert service.check is not None and not service.sweep

    service.failed(RuntimeError("a turn failed"))
    assert service.full_check_due and service.check is None and service.swept_generation == -1
    run_check(service)
    assert not service.full_check_due  # a full check done: measuring is enough again
    service.worker.close()


def test_during_a_burst_the_status_line_counts_the_library_every_half_minute_at_most(
        make_config: Callable[..., Path], encoder_path: Path) -> None:
    """Counting 10^6 rows takes 0.05-0.1 s: not at every status line (each 2 s) of a burst."""
    config = configuration.load(make_config())
    now = [10_000.0]
    service = idle_service(config, encoder_path, now)
    service.arrivals = Arrivals({"inbox": config.inbox}, 2.0, (), lambda: now[0])
    reindex(service)
    store(service.library, clustered(3, 1), 0)
    assert service.status_line().startswith("3 images, 0 queued")
    service.arrivals.note("inbox", str(config.inbox / "waiting.png"))  # a burst goes on
    store(service.library, clustered(2, 2), 3)
    now[0] += daemon.COUNT_EVERY_S - 1
    assert service.status_line().startswith("3 images, 1 queued")
    now[0] += 1
    assert service.status_line().startswith("5 images, 1 queued")
    store(service.library, clustered(1, 3), 5)
    service.arrivals.pending.clear()  # the burst is over: counted at once
    assert service.status_line().startswith("6 images, 0 queued")
