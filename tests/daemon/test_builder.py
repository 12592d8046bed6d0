"""The service's index rebuilds, run as real child processes on a real library."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lookalike.core import index
from lookalike.core.index_kinds import OneStageIndex
from lookalike.core.store import Entry, Library
from lookalike.daemon import builder
from lookalike.daemon.builder import BuildProcess, BuildSettings, build_now

MODEL = "sha256:" + "d" * 64


def settings(state: Path) -> BuildSettings:
    return BuildSettings(str(state), "angular", trees=5, model_id=MODEL, exact_below=0, dims=0,
                 log_level=logging.INFO, service_pid=os.getpid())


def fill(state: Path, count: int, start: int = 0) -> int:
    """Store `count` random vectors as images; the library's generation after."""
    vectors = np.random.default_rng(start).standard_normal((count, 16)).astype(np.float32)
    with Library(state / "library.sqlite") as library:
        return library.apply(Entry(f"{start + n:05d}.jpg", 1, 1, "0" * 64, MODEL, vector)
                             for n, vector in enumerate(vectors))


def test_a_child_process_builds_the_index_of_the_library(tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    generation = fill(tmp_path, 300)
    assert BuildProcess(settings(tmp_path)).wait() is None
    info = index.current_info(tmp_path)
    assert info is not None and (info.generation, info.items, info.kind) == (generation, 300,
                                                                               "annoy")
    loaded = index.load(tmp_path)
    assert isinstance(loaded, OneStageIndex)
    assert loaded.annoy.get_n_items() == 300
    assert "index built: 300 items" in capfd.readouterr().err  # its log, where the service's goes


def test_a_build_forgets_tombstones_it_no_longer_needs(tmp_path: Path) -> None:
    fill(tmp_path, 10)
    with Library(tmp_path / "library.sqlite") as library:
        library.apply(deletions=["00003.jpg"])
        gone = library.lookup(["00000.jpg"])["00000.jpg"].id + 3
        assert gone in library.describe([gone])
        build_now(library, settings(tmp_path))
        assert library.describe([gone]) == {}


def test_a_failed_build_says_why(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path, 20)
    (tmp_path / "index").write_text("a file where the index folder should be")
    problem = BuildProcess(settings(tmp_path)).wait()
    assert problem is not None and "index" in problem
    err = capfd.readouterr().err
    assert "ERROR" in err and "index rebuild failed" in err and "Traceback" not in err


def test_a_stopped_build_leaves_the_index_in_use_whole(tmp_path: Path) -> None:
    first = fill(tmp_path, 200)
    with Library(tmp_path / "library.sqlite") as library:
        index.build(library, tmp_path, metric="angular", trees=5, model_id=MODEL)
    fill(tmp_path, 20_000, start=200)
    rebuild = BuildProcess(settings(tmp_path))
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
    assert builder.main(settings(tmp_path)) == 0
    info = index.current_info(tmp_path)
    assert info is not None and info.generation == generation


def test_a_build_ends_when_the_service_that_started_it_dies(tmp_path: Path) -> None:
    """Else it would race the next service's build of the same files."""
    generation = fill(tmp_path, 20)
    (tmp_path / "index").mkdir()
    blocker = tmp_path / "index" / f"{generation}.vectors.npy.partial"
    os.mkfifo(blocker)  # the build's first file: opening it blocks until a reader comes
    service = textwrap.dedent(f"""\
        import logging, os, time
        from lookalike.daemon.builder import BuildProcess, BuildSettings
        rebuild = BuildProcess(BuildSettings({str(tmp_path)!r}, "angular", 5, {MODEL!r}, 10**9,
                                             0, logging.INFO, os.getpid()))
        print(rebuild.process.pid, flush=True)
        time.sleep(1.0)  # the build is blocked by now
        os._exit(9)  # killed: no clean stop of the build
        """)
    started = subprocess.run([sys.executable, "-c", service], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, timeout=60, check=False)
    child = int(started.stdout.split()[0])
    try:
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        if alive(child):
            os.kill(child, 9)


def test_ctrl_c_is_left_to_the_service_which_stops_its_build(tmp_path: Path,
                                                            capfd: pytest.CaptureFixture[str]
                                                            ) -> None:
    """Ctrl-C reaches every process of the terminal's group: no traceback from the builder."""
    generation = fill(tmp_path, 20)
    (tmp_path / "index").mkdir()
    os.mkfifo(tmp_path / "index" / f"{generation}.vectors.npy.partial")  # blocks the build
    rebuild = BuildProcess(replace(settings(tmp_path), exact_below=10**9))
    try:
        time.sleep(1.0)  # past its start-up
        rebuild.process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert rebuild.running()
    finally:
        rebuild.stop()
    assert not rebuild.running()
    assert "Traceback" not in capfd.readouterr().err


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
