"""Results files written for library rows (`Answers`), on a real library and encoder."""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from lookalike.core import config as configuration
from lookalike.core.search import Searcher
from lookalike.core.store import Entry, Library
from lookalike.daemon import answers as answers_module
from lookalike.daemon.answers import Answers
from lookalike.daemon.progress import Tally
from tests.daemon.vectors import clustered, shown


def test_results_written_chunk_by_chunk_are_the_exact_ones_and_a_failure_stays_unanswered(
        tmp_path: Path, make_config: Callable[..., Path], encoder_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`answer` writes a chunk in its writer thread while it searches the next: every
    file must still land with the exact neighbours, and one that cannot be written
    (its folder is gone) must stay unanswered, so that the next pass writes it."""
    from lookalike.core.encoder import load as load_encoder

    monkeypatch.setattr(answers_module, "ANSWER_CHUNK", 7)
    config = configuration.load(make_config())
    library = Library(config.state_dir / "library.sqlite")
    answers = Answers(config, library, load_encoder(encoder_path))
    vectors = clustered(30, 5)
    names = [f"gone/{n}.png" if n % 6 == 0 else f"{n}.png" for n in range(30)]
    library.apply(Entry(name, 1, 1, None, "m", vector) for name, vector in zip(
        names, vectors, strict=True))
    ids, stored = library.vectors()
    answers.take_scratch()
    tally = Tally()
    answers.answer(Searcher(None, ids, stored, set(), "angular"), ids.tolist(), tally)
    answers.close()

    records = library.records()
    path_of = {record.id: path for path, record in records.items()}
    unanswered = {path for path, record in records.items() if record.answered is None}
    assert unanswered == {name for name in names if name.startswith("gone/")}
    assert tally.answered == 25
    for row, near in shown(library).items():
        target = answers.config.inbox / f"{path_of[row]}.neighbors.json"
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
            answers = Answers(config, library, encoder=None)  # type: ignore[arg-type]
            answers.take_scratch()
            assert answers.stock_blanks is stocks
            answers.close()
        if not stocks:
            shutil.rmtree(state)
