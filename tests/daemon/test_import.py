"""`lookalike import` end to end: the real command on real Ray clusters.

The collection: 600 of the digits in label folders and three unusable files.
Each scenario imports its own copy of it, and is measured against
`reference`, the same files ingested by `run --once` alone:

- `imported`: `import` on a local cluster (`ray.init()` on this machine),
  then `run --once`;
- `killed`: `import` on a cluster of a head and two worker nodes started
  here (`cluster`), whose encoder actor is killed (SIGKILL) as soon as it
  has loaded the encoder: every row still needs it;
- `resumed`: `import` on that cluster stopped by Ctrl-C while its encoder
  actor starts, then run again to the end, then once more.

What Ray's timing cannot pin down is tested in this process: the folders
listed, and the rows that arrived before a Ctrl-C kept.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike.core import config as configuration
from lookalike.core import scan
from lookalike.daemon import cli
from lookalike.daemon.lock import StateLock
from tests.daemon import raycluster
from tests.daemon.service import results_of
from tests.daemon.test_once import SUMMARY, Pass
from tests.helpers import LOOKALIKE, Scenarios, lookalike_env, refusal, side_by_side

pytest.importorskip("ray", reason="needs the cluster extra: pip install '.[test,cluster]'")
from lookalike.daemon import importing  # noqa: E402  (needs Ray)

pytestmark = pytest.mark.slow

Lookalike = Callable[..., subprocess.CompletedProcess[str]]
DIGITS = 600
FILES = DIGITS + 3  # and the unusable ones
UNUSABLE = {"empty.jpg": "empty", "notes.jpg": "not_an_image", "broken/truncated.png": "truncated"}
IMPORT_S = 240.0  # an import on a loaded 2-core machine: Ray's start, TensorFlow's in an actor
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING) lookalike[\w.]*: ")
ENCODER_ACTOR = "MapBatches(Encoding)"  # in the title of an encoder actor's process
# Columns of the library that `import` and `run --once` must agree on
COLUMNS = "path, size, mtime_ns, sha256, model_id, error_code, thumb, width, height, latent"


@dataclass
class Library:
    """What the library of a state folder holds, by path."""

    rows: dict[str, tuple[Any, ...]]  # every column of COLUMNS but the path and the latent
    vectors: dict[str, np.ndarray]
    generation: int


def library_of(root: Path) -> Library:
    with sqlite3.connect(f"file:{root / 'state' / 'library.sqlite'}?mode=ro", uri=True) as db:
        found = db.execute(f"SELECT {COLUMNS} FROM images WHERE deleted = 0").fetchall()
        generation = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    db.close()
    return Library({row[0]: row[1:-1] for row in found},
                   {row[0]: np.frombuffer(row[-1], "<f4") for row in found if row[-1]},
                   int(generation[0]) if generation else 0)


def rows_written(root: Path) -> int:
    """Rows in the library so far (0 while it does not exist)."""
    try:
        db = sqlite3.connect(f"file:{root / 'state' / 'library.sqlite'}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT COUNT(*) FROM images").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def summary(finished: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The numbers of `import`'s summary line (the last on stdout)."""
    assert finished.returncode == 0, finished.stderr
    assert "Traceback" not in finished.stderr, finished.stderr
    line = finished.stdout.strip().splitlines()[-1]
    match = SUMMARY.match(line)
    assert match, f"not a summary line: {line!r}"
    return {key: int(value) for key, value in match.groupdict().items()}


def copy_of(collection: Path, root: Path, config_in: Callable[..., Path]) -> Path:
    """A config over a copy of the collection (mtimes kept) in `root`."""
    config = config_in(root)
    shutil.rmtree(root / "inbox")
    shutil.copytree(collection, root / "inbox")
    return config


def import_command(config: Path, *args: object) -> list[str]:
    return [str(LOOKALIKE), "import", "-c", str(config), *map(str, args)]


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=IMPORT_S,
                          check=False)


@dataclass
class Interrupted:
    """An import that something stopped while it worked."""

    finished: subprocess.CompletedProcess[str]
    rows_then: int | None  # rows in the library when it was done (None: never done)


def stop_midway(command: list[str], env: dict[str, str], root: Path,
                stop: Callable[[subprocess.Popen[str]], bool]) -> Interrupted:
    """Run `command`, calling `stop` until it says it acted.

    The command hears Ctrl-C as on a terminal, also when the tests run in a
    background job (whose children inherit SIGINT ignored, and keep it so).
    """
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    rows_then = None
    deadline = time.monotonic() + IMPORT_S
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if rows_then is None and stop(process):
                rows_then = rows_written(root)
            time.sleep(0.05)
        out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return Interrupted(subprocess.CompletedProcess(command, process.returncode, out, err),
                       rows_then)


# -- the collection, and `run --once` alone on it ----------------------------------
@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory,
               digit_files: list[tuple[Path, int]]) -> Path:
    root = tmp_path_factory.mktemp("collection")
    for source, label in digit_files[:DIGITS]:
        (root / str(label)).mkdir(exist_ok=True)
        shutil.copy2(source, root / str(label) / source.name)
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("shopping: milk, eggs\n", encoding="utf-8")
    (root / "broken").mkdir()
    whole = digit_files[0][0].read_bytes()
    (root / "broken/truncated.png").write_bytes(whole[:len(whole) // 2])
    return root


@dataclass
class Filled:
    root: Path
    library: Library
    results: dict[str, dict[str, Any]]


def run_once_alone(root: Path, collection: Path, config_in: Callable[..., Path],
                   lookalike: Lookalike) -> Filled:
    config = copy_of(collection, root, config_in)
    finished = lookalike("run", "--once", "-c", config, timeout=IMPORT_S)
    assert finished.returncode == 0, finished.stderr
    return Filled(root, library_of(root), results_of(root / "inbox"))


# -- `import` on a local cluster, then `run --once` --------------------------------
@dataclass
class Imported(Filled):
    process: subprocess.CompletedProcess[str]
    after_import: Library
    once: Pass


def import_then_run_once(root: Path, collection: Path, config_in: Callable[..., Path],
                         lookalike: Lookalike) -> Imported:
    config = copy_of(collection, root, config_in)
    process = lookalike("import", "-c", config, timeout=IMPORT_S)
    after_import = library_of(root)
    once = Pass(lookalike("run", "--once", "-c", config, timeout=IMPORT_S))
    return Imported(root, library_of(root), results_of(root / "inbox"), process, after_import,
                    once)


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              collection: Path, config_in: Callable[..., Path],
              lookalike: Lookalike) -> Iterator[Scenarios]:
    """`run --once` alone, `import` on a local cluster and the start of the cluster of
    three nodes (stopped after the module), side by side, each in a folder of its own:
    most of their time is Ray's and TensorFlow's start, on one core each."""
    with contextlib.ExitStack() as stack:
        made: dict[str, Callable[[Path], Any]] = {
            name: functools.partial(work, collection=collection, config_in=config_in,
                                    lookalike=lookalike)
            for name, work in [("reference", run_once_alone),
                               ("imported", import_then_run_once)]}
        made["cluster"] = lambda root: stack.enter_context(raycluster.cluster(root, workers=2))
        with side_by_side(request, tmp_path_factory, made) as started:
            yield started


@pytest.fixture(scope="module")
def reference(scenarios: Scenarios) -> Filled:
    return scenarios.result("reference")


@pytest.fixture(scope="module")
def imported(scenarios: Scenarios) -> Imported:
    return scenarios.result("imported")


def assert_same_rows(ours: Library, theirs: Library) -> None:
    """The same images with the same columns, and vectors equal but for float32 rounding."""
    assert ours.rows.keys() == theirs.rows.keys()
    for path, row in ours.rows.items():
        assert row == theirs.rows[path], path
    assert ours.vectors.keys() == theirs.vectors.keys()
    for path, vector in ours.vectors.items():
        np.testing.assert_allclose(vector, theirs.vectors[path], rtol=1e-5, atol=1e-6,
                                   err_msg=path)


def test_import_writes_the_rows_run_once_writes(imported: Imported, reference: Filled) -> None:
    assert summary(imported.process) == {
        "images": FILES, "added": FILES, "updated": 0, "removed": 0, "unusable": 3,
        "written": 0, "encoded": DIGITS, "reused": 0}
    assert_same_rows(imported.after_import, reference.library)


def test_unusable_files_are_error_rows_with_the_services_codes(imported: Imported) -> None:
    codes = {path: row[4] for path, row in imported.after_import.rows.items() if row[4]}
    assert codes == UNUSABLE
    for path, code in UNUSABLE.items():
        assert sum(path in line and f"({code})" in line
                   for line in imported.process.stderr.splitlines()) == 1


def test_import_says_nothing_but_its_own_lines(imported: Imported) -> None:
    # no Ray, TensorFlow or absl banner, no progress bar off a terminal: lookalike's log
    lines = imported.process.stderr.splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), imported.process.stderr


def test_run_once_after_import_encodes_nothing_and_answers_all(imported: Imported) -> None:
    assert imported.once.summary == {
        "images": FILES, "added": 0, "updated": 0, "removed": 0, "unusable": 0,
        "written": FILES, "encoded": 0, "reused": 0}


def test_results_files_as_after_run_once_alone(imported: Imported, reference: Filled) -> None:
    """The same, but for near-ties: float32 rounding (TensorFlow sums differently in
    batches of other images) may swap two look-alikes whose ranks (`core.ranking`) or
    distances agree to a few millionths, or which of them makes the list. At most one
    neighbour in 100 differs; one named by both is the same image, measured and marked
    the same."""
    assert imported.results.keys() == reference.results.keys()
    assert len(imported.results) == FILES
    swapped = listed = 0
    for path, document in imported.results.items():
        ours, theirs = dict(document), dict(reference.results[path])
        mine, others = ours.pop("neighbors", []), theirs.pop("neighbors", [])
        for one in (ours, theirs):  # (generations count transactions; times differ)
            one["written_at"] = None
            if "index" in one:
                one["index"] = {**one["index"], "generation": 0}
        assert ours == theirs, path
        assert [n["rank"] for n in mine] == [n["rank"] for n in others], path
        by_path = {n["path"]: n for n in others}
        for n in mine:
            if n["path"] in by_path:  # the same neighbour, marked the same
                other = by_path[n["path"]]
                assert (n["duplicate"], n["near_duplicate"]) == \
                    (other["duplicate"], other["near_duplicate"]), (path, n, other)
                # float32 measures the squared distance 2 - 2 cos to about 1e-6 (near 0
                # that is 1e-5 of the distance itself); each is written to 6 digits
                assert abs(n["distance"] ** 2 - other["distance"] ** 2) <= 3e-6, \
                    (path, n, other)
        swapped += sum(a["path"] != b["path"] for a, b in zip(mine, others, strict=True))
        listed += len(mine)
    assert listed == DIGITS * 12
    assert swapped <= listed // 100, f"{swapped} of {listed} neighbours differ"


# -- a cluster of a head and two worker nodes --------------------------------------
@pytest.fixture(scope="module")
def cluster(scenarios: Scenarios) -> raycluster.Cluster:
    """A head and two worker nodes (started by `scenarios`, stopped after the module)."""
    return scenarios.result("cluster")


@pytest.fixture(scope="module")
def cluster_env(cluster: raycluster.Cluster) -> dict[str, str]:
    return {**lookalike_env(), **cluster.env}


@dataclass
class Killed(Interrupted):
    root: Path
    killed: list[int]  # the actor processes killed


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory, collection: Path,
           config_in: Callable[..., Path], cluster: raycluster.Cluster,
           cluster_env: dict[str, str]) -> Killed:
    root = tmp_path_factory.mktemp("killed")
    config = copy_of(collection, root, config_in)
    victims: list[int] = []
    earlier = set(raycluster.processes(ENCODER_ACTOR))  # (an earlier job's, on its way out)

    def kill_encoder(process: subprocess.Popen[str]) -> bool:
        # Once the actor has loaded the encoder (its title no longer names its __init__):
        # no row can be encoded without it, so the job has barely begun.
        victims.extend(pid for pid in raycluster.processes(ENCODER_ACTOR, but="__init__")
                       if cluster.owns(pid) and pid not in earlier)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        return bool(victims)

    done = stop_midway(import_command(config, "--ray-address", cluster.address), cluster_env,
                       root, kill_encoder)
    return Killed(done.finished, done.rows_then, root, victims)


def test_a_killed_encoder_changes_nothing(killed: Killed, reference: Filled) -> None:
    assert killed.killed and killed.rows_then is not None, "not killed while it worked"
    assert killed.rows_then < FILES, "killed after the last row"
    # every row written once, the job done, the rows those of `run --once`
    assert summary(killed.finished) == {
        "images": FILES, "added": FILES, "updated": 0, "removed": 0, "unusable": 3,
        "written": 0, "encoded": DIGITS, "reused": 0}
    assert_same_rows(library_of(killed.root), reference.library)


@dataclass
class Resumed(Interrupted):
    root: Path
    after_stop: Library
    second: subprocess.CompletedProcess[str]
    after_second: Library
    third: subprocess.CompletedProcess[str]
    after_third: Library


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory, collection: Path,
            config_in: Callable[..., Path], cluster: raycluster.Cluster,
            cluster_env: dict[str, str]) -> Resumed:
    root = tmp_path_factory.mktemp("resumed")
    config = copy_of(collection, root, config_in)
    command = import_command(config, "--ray-address", cluster.address)

    earlier = set(raycluster.processes(ENCODER_ACTOR))  # (an earlier job's, on its way out)

    def ctrl_c(process: subprocess.Popen[str]) -> bool:
        # Once its encoder actor exists, the job runs, and cannot end before it encodes.
        if not any(cluster.owns(pid) and pid not in earlier
                   for pid in raycluster.processes(ENCODER_ACTOR)):
            return False
        os.killpg(process.pid, signal.SIGINT)  # as a terminal sends it
        return True

    done = stop_midway(command, cluster_env, root, ctrl_c)
    after_stop = library_of(root)
    second = run(command, cluster_env)
    after_second = library_of(root)
    third = run(command, cluster_env)
    return Resumed(done.finished, done.rows_then, root, after_stop, second, after_second, third,
                   library_of(root))


def test_ctrl_c_stops_at_once_and_keeps_what_was_written(resumed: Resumed) -> None:
    assert resumed.rows_then is not None
    stopped = resumed.finished
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    line = stopped.stderr.strip().splitlines()[-1]
    kept = re.fullmatch(r"import interrupted: (\d+) images written; the next import reads "
                        r"the rest", line)
    assert kept, stopped.stderr
    assert resumed.rows_then <= int(kept.group(1)) < FILES
    assert len(resumed.after_stop.rows) == int(kept.group(1))


def test_the_next_import_reads_only_the_rest(resumed: Resumed, reference: Filled) -> None:
    kept = int(resumed.finished.stderr.strip().splitlines()[-1].split()[2])
    assert summary(resumed.second)["added"] == FILES - kept
    assert_same_rows(resumed.after_second, reference.library)


def test_an_import_of_a_current_library_writes_nothing(resumed: Resumed) -> None:
    assert summary(resumed.third) == {
        "images": FILES, "added": 0, "updated": 0, "removed": 0, "unusable": 0,
        "written": 0, "encoded": 0, "reused": 0}
    assert resumed.after_third.generation == resumed.after_second.generation


def test_import_of_folders_lists_only_them(collection: Path) -> None:
    """The parts listed apart (each folder's own files, each of its sub-folders) are,
    together, the images under the given folders, with the inbox's relative paths."""
    parts = importing.parts_of(collection, [collection / "7", collection / "broken"])
    assert parts == [("7", False), ("broken", False)]
    listed = importing.cluster.survey_parts(str(collection), (), parts)
    assert sorted(path for path, _, _ in listed) == sorted(
        p.relative_to(collection).as_posix() for p in [*collection.glob("7/*"),
                                                       *collection.glob("broken/*")])
    everything = importing.parts_of(collection, [])
    assert ("", False) in everything and ("7", True) in everything
    assert len(importing.cluster.survey_parts(str(collection), (), everything)) == FILES


def test_ctrl_c_keeps_the_rows_that_arrived(tmp_path: Path, config_in: Callable[..., Path],
                                            inbox_of: Callable[[Path, int], list[str]],
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Rows that reached this process before a Ctrl-C are written (the cluster stands in:
    one batch read by `read_batch`, then the interrupt)."""
    config = configuration.load(config_in(tmp_path))
    names = inbox_of(tmp_path / "inbox", 20)

    def rows(inbox: Path, candidates: list[Any], shape: Any, model: Path,
             model_id: str) -> Iterator[dict[str, Any]]:
        first = candidates[:8]
        batch = importing.cluster.read_batch({"path": np.array([c.path for c in first]),
                                    "size": np.array([c.size for c in first]),
                                    "mtime_ns": np.array([c.mtime_ns for c in first])},
                                   str(inbox), shape)
        batch.pop("pixels")
        yield {**batch, "latent": np.ones((8, 32), np.float32),
               "model_id": np.full(8, model_id)}
        raise KeyboardInterrupt

    monkeypatch.setattr(importing.cluster, "connect", lambda address, verbose: False)
    monkeypatch.setattr(importing.cluster, "survey", lambda inbox, exclude, parts: scan.walk(inbox))
    monkeypatch.setattr(importing.cluster, "rows", rows)
    monkeypatch.setattr(importing.cluster, "disconnect", lambda: None)
    assert importing.run(config, [], None, False) == 130
    assert capsys.readouterr().err == \
        "import interrupted: 8 images written; the next import reads the rest\n"
    assert set(library_of(tmp_path).rows) == set(sorted(names)[:8])


# -- refusals ----------------------------------------------------------------------
def test_import_refuses_while_the_service_holds_the_state(
        tmp_path: Path, config_in: Callable[..., Path], lookalike: Lookalike) -> None:
    config = config_in(tmp_path)
    with StateLock(tmp_path / "state"):
        finished = lookalike("import", "-c", config)
    assert re.fullmatch(rf"lookalike: another lookalike \(pid {os.getpid()}\) is using "
                        r"\S+state", refusal(finished))


def test_import_refuses_a_folder_outside_the_inbox(
        tmp_path: Path, config_in: Callable[..., Path], lookalike: Lookalike) -> None:
    config = config_in(tmp_path)
    assert refusal(lookalike("import", "-c", config, tmp_path / "queries")) == \
        f"lookalike: {tmp_path / 'queries'}: not inside the inbox {tmp_path / 'inbox'}"
    assert refusal(lookalike("import", "-c", config, tmp_path / "inbox" / "nowhere")) == \
        f"lookalike: {tmp_path / 'inbox' / 'nowhere'}: no such folder"


def test_import_refuses_a_cluster_it_cannot_reach(
        tmp_path: Path, config_in: Callable[..., Path], lookalike: Lookalike) -> None:
    address = f"127.0.0.1:{raycluster.free_port()}"  # (nothing listens there)
    assert refusal(lookalike("import", "-c", config_in(tmp_path), "--ray-address", address)) \
        == f"lookalike: cannot reach the Ray cluster at {address}: Connection refused"


def test_without_ray_import_says_how_to_install_it(
        tmp_path: Path, config_in: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert cli.main(["import", "-c", str(config_in(tmp_path))]) == 1
    assert capsys.readouterr().err == \
        "lookalike: lookalike import needs Ray: pip install 'lookalike[cluster]'\n"
    assert not (tmp_path / "state" / "library.sqlite").exists()

