"""The service's index rebuilds, run as real child processes on a real library."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from lookalike.core import index
from lookalike.core.store import Entry, Library
from lookalike.daemon import builder
from lookalike.daemon.builder import Build, Rebuild

MODEL = "sha256:" + "d" * 64


def settings(state: Path) -> Build:
    return Build(str(state), "angular", trees=5, model_id=MODEL, exact_below=0, dims=0,
                 log_level=logging.INFO)


def fill(state: Path, count: int, start: int = 0) -> int:
    """Store `count` random vectors as images; the library's generation after."""
    vectors = np.random.default_rng(start).standard_normal((count, 16)).astype(np.float32)
    with Library(state / "library.sqlite") as library:
        return library.apply(Entry(f"{start + n:05d}.jpg", 1, 1, "0" * 64, MODEL, vector)
                             for n, vector in enumerate(vectors))


def test_a_child_process_builds_the_index_of_the_library(tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    generation = fill(tmp_path, 300)
    assert Rebuild(settings(tmp_path)).wait() is None
    info = index.current_info(tmp_path)
    assert info is not None and (info.generation, info.items, info.kind) == (generation, 300,
                                                                               "annoy")
    loaded = index.load(tmp_path)
    assert loaded is not None and loaded.annoy is not None
    assert loaded.annoy.get_n_items() == 300
    assert "index built: 300 items" in capfd.readouterr().err  # its log, where the service's goes


def test_a_failed_build_says_why(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path, 20)
    (tmp_path / "index").write_text("a file where the index folder should be")
    problem = Rebuild(settings(tmp_path)).wait()
    assert problem is not None and "index" in problem
    err = capfd.readouterr().err
    assert "ERROR" in err and "index rebuild failed" in err and "Traceback" not in err


def test_a_stopped_build_leaves_the_index_in_use_whole(tmp_path: Path) -> None:
    first = fill(tmp_path, 200)
    with Library(tmp_path / "library.sqlite") as library:
        index.build(library, tmp_path, metric="angular", trees=5, model_id=MODEL)
    fill(tmp_path, 20_000, start=200)
    rebuild = Rebuild(settings(tmp_path))
    rebuild.stop()
    assert not rebuild.running()
    loaded = index.load(tmp_path)  # the old index, or the new one if it was done: never half
    assert loaded is not None and loaded.info.generation in (first, first + 1)
    assert len(loaded.row_ids) == loaded.info.items


def test_a_sandbox_that_forbids_a_lower_priority_does_not_stop_the_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped unit's system call filter allows setpriority; another may not (EPERM)."""
    def forbidden(increment: int) -> int:
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(builder.os, "nice", forbidden)
    generation = fill(tmp_path, 50)
    assert builder.main([json.dumps(asdict(settings(tmp_path)))]) == 0
    info = index.current_info(tmp_path)
    assert info is not None and info.generation == generation
