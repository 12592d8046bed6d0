"""The `lookalike` command end to end: the real process, its output and exit codes.

Commands that read a library share one: 60 digits answered by one
`run --once` (module-scoped). Tests that change the state work on a copy.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from lookalike.core.card import model_id
from lookalike.core.config import DEFAULT_MODEL
from lookalike.daemon.lock import StateLock
from tests.helpers import Background, refusal

Lookalike = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.slow


LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) [\w.]+: ")


def one_problem(finished: subprocess.CompletedProcess[str]) -> str:
    """The single `lookalike: ...` line of a refused command; anything else is a log record."""
    problem = refusal(finished)
    assert all(line == problem or LOG_LINE.match(line)
               for line in finished.stderr.splitlines()), finished.stderr
    return problem


@dataclass
class Shared:
    root: Path
    config: Path
    inbox: Path
    state: Path
    images: list[str]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, config_in: Callable[..., Path],
           digit_files: list[tuple[Path, int]], lookalike: Lookalike) -> Shared:
    """60 digits in an inbox, answered by one `run --once`."""
    root = tmp_path_factory.mktemp("cli")
    config = config_in(root)
    names = []
    for source, _ in digit_files[:60]:
        shutil.copy(source, root / "inbox" / source.name)
        names.append(source.name)
    finished = lookalike("run", "--once", "-c", config)
    assert finished.returncode == 0, finished.stderr
    return Shared(root, config, root / "inbox", root / "state", names)


@pytest.fixture
def copied(shared: Shared, tmp_path: Path, encoder_path: Path) -> Shared:
    """A copy of the shared state (same inbox), for tests that change it."""
    state = tmp_path / "state"
    shutil.copytree(shared.state, state)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"inbox": str(shared.inbox), "state_dir": "./state",
                                      "model": str(encoder_path), "index": {"trees": 10}}),
                      encoding="utf-8")
    return Shared(tmp_path, config, shared.inbox, state, shared.images)


def status_of(lookalike: Lookalike, config: Path) -> dict[str, object]:
    finished = lookalike("status", "--json", "-c", config)
    assert finished.returncode == 0, finished.stderr
    report: dict[str, object] = json.loads(finished.stdout)
    return report


# -- check-config --------------------------------------------------------------
def test_check_config_says_ok_in_one_line(make_config: Callable[..., Path],
                                          lookalike: Lookalike, tmp_path: Path) -> None:
    config = make_config(index={"trees": 7})
    finished = lookalike("check-config", "-c", config)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "ok" in lines[0]
    assert str(tmp_path / "inbox") in lines[0]
    assert "7 trees" in lines[0]


def test_check_config_lists_every_problem_by_key(tmp_path: Path, lookalike: Lookalike) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent("""\
        state_dir: ./state
        colour: red
        index:
          trees: 0
          metric: cosine
        search:
          neighbors: twelve
        """), encoding="utf-8")
    finished = lookalike("check-config", "-c", config)
    assert finished.returncode == 2
    assert "Traceback" not in finished.stderr
    assert finished.stdout == ""
    lines = finished.stderr.strip().splitlines()
    assert all(line.startswith("lookalike: At '") for line in lines), lines
    named = {line.split("'")[1] for line in lines}
    assert named == {"inbox", "colour", "index.trees", "index.metric", "search.neighbors"}


def test_check_config_reports_problems_that_span_keys(tmp_path: Path,
                                                      lookalike: Lookalike) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"inbox": "./inbox", "state_dir": "./inbox/state",
                                      "model": "./encoder.h5"}), encoding="utf-8")
    finished = lookalike("check-config", "-c", config)
    assert finished.returncode == 2
    assert "Traceback" not in finished.stderr
    named = {line.split("'")[1] for line in finished.stderr.strip().splitlines()}
    assert named == {"state_dir", "model"}


def test_check_config_of_a_missing_file(tmp_path: Path, lookalike: Lookalike) -> None:
    finished = lookalike("check-config", "-c", tmp_path / "nowhere.yaml")
    assert finished.returncode == 2
    assert "nowhere.yaml" in one_problem(finished)


# -- query ---------------------------------------------------------------------
@dataclass
class Queried:
    outside: subprocess.CompletedProcess[str]  # an image not in the inbox
    inbox: subprocess.CompletedProcess[str]  # -k 5 of the inbox image `image`
    image: str
    unusable: subprocess.CompletedProcess[str]  # of `notes`, a text file named .jpg
    notes: Path


@pytest.fixture(scope="module")
def queried(shared: Shared, digit_files: list[tuple[Path, int]], lookalike: Lookalike,
            tmp_path_factory: pytest.TempPathFactory) -> Queried:
    """The tests' queries of the shared library, run at once: each loads TensorFlow,
    on one core."""
    notes = tmp_path_factory.mktemp("query") / "notes.jpg"
    notes.write_text("not a picture\n", encoding="utf-8")
    image = shared.images[7]
    runs = [Background(functools.partial(lookalike, "query", *args, "-c", shared.config),
                       f"query {n}")
            for n, args in enumerate([(digit_files[1500][0],),  # not in the inbox
                                      (shared.inbox / image, "-k", "5"), (notes,)])]
    outside, inbox, unusable = (run.result() for run in runs)
    return Queried(outside, inbox, image, unusable, notes)


def test_query_prints_the_results_document(shared: Shared, queried: Queried,
                                           lookalike: Lookalike, encoder_path: Path) -> None:
    finished = queried.outside
    assert finished.returncode == 0, finished.stderr
    document = json.loads(finished.stdout)
    assert document["schema"] == "lookalike.neighbors/1"
    assert document["status"] == "ok"
    assert document["model"] == model_id(encoder_path)
    neighbors = document["neighbors"]
    assert [n["rank"] for n in neighbors] == list(range(1, 13))
    assert {n["path"] for n in neighbors} <= set(shared.images)
    distances = [n["distance"] for n in neighbors]  # (ranked, not sorted: core.ranking)
    assert all(0.0 <= d <= 2.0 for d in distances)
    assert status_of(lookalike, shared.config)["library"]["images"] == 60  # type: ignore[index]


def test_query_k_of_an_inbox_image(shared: Shared, queried: Queried) -> None:
    image, finished = queried.image, queried.inbox
    assert finished.returncode == 0, finished.stderr
    document = json.loads(finished.stdout)
    assert document["query"] == image
    paths = [n["path"] for n in document["neighbors"]]
    assert len(paths) == 5
    assert image not in paths
    assert set(paths) <= set(shared.images)


def test_query_of_a_missing_image(shared: Shared, lookalike: Lookalike, tmp_path: Path) -> None:
    finished = lookalike("query", tmp_path / "gone.png", "-c", shared.config)
    assert "gone.png" in one_problem(finished)
    assert finished.stdout == ""


def test_query_of_an_unusable_image(queried: Queried) -> None:
    notes, finished = queried.notes, queried.unusable
    assert finished.returncode != 0
    assert "Traceback" not in finished.stderr
    document = json.loads(finished.stdout)
    assert document["status"] == "error"
    assert document["error"]["code"] == "not_an_image"
    assert document["error"]["message"]
    assert notes.read_text(encoding="utf-8") == "not a picture\n"


# -- status --------------------------------------------------------------------
def test_status_after_a_run(shared: Shared, lookalike: Lookalike, encoder_path: Path) -> None:
    report = status_of(lookalike, shared.config)
    library, built, model = report["library"], report["index"], report["model"]
    assert isinstance(library, dict) and isinstance(built, dict) and isinstance(model, dict)
    assert library["images"] == 60
    assert library["errors"] == 0
    assert built["generation"] == library["generation"] > 0
    assert built["items"] == 60
    assert report["pending"] == 0
    assert model["id"] == model_id(encoder_path)
    assert model["library"] == {model_id(encoder_path): 60}

    finished = lookalike("status", "-c", shared.config)
    assert finished.returncode == 0, finished.stderr
    text = finished.stdout
    assert "60 images" in text
    assert f"generation {built['generation']}" in text
    assert "0 pending" in text
    assert model_id(encoder_path)[:19] in text


# -- rebuild -------------------------------------------------------------------
def test_rebuild_builds_a_new_index(copied: Shared, lookalike: Lookalike) -> None:
    generation = status_of(lookalike, copied.config)["library"]["generation"]  # type: ignore[index]
    shutil.rmtree(copied.state / "index")
    assert status_of(lookalike, copied.config)["index"] is None

    finished = lookalike("rebuild", "-c", copied.config)
    assert finished.returncode == 0, finished.stderr
    assert f"generation {generation}: 60 items" in finished.stdout
    report = status_of(lookalike, copied.config)
    assert report["index"]["generation"] == generation  # type: ignore[index]
    assert report["index"]["items"] == 60  # type: ignore[index]
    assert report["pending"] == 0


def test_rebuild_is_refused_while_another_process_holds_the_state(copied: Shared,
                                                                  lookalike: Lookalike) -> None:
    pointer = copied.state / "index" / "current.json"
    before = pointer.read_bytes()
    with StateLock(copied.state):
        finished = lookalike("rebuild", "-c", copied.config)
        problem = one_problem(finished)
        assert "another lookalike" in problem
        assert str(os.getpid()) in problem
        assert pointer.read_bytes() == before
    assert lookalike("rebuild", "-c", copied.config).returncode == 0


# -- what loads TensorFlow -----------------------------------------------------
def test_commands_without_a_model_do_not_import_tensorflow(copied: Shared) -> None:
    script = textwrap.dedent(f"""\
        import sys
        from lookalike.daemon.cli import main
        config = {str(copied.config)!r}
        try:
            main(["--help"])
        except SystemExit as stop:
            assert stop.code == 0, stop.code
        else:
            raise AssertionError("--help did not exit")
        for argv in (["check-config", "-c", config], ["status", "-c", config],
                     ["status", "--json", "-c", config], ["rebuild", "-c", config],
                     ["run", "--once", "-c", config]):  # (nothing new to encode)
            assert main(argv) == 0, argv
        heavy = sorted(name for name in sys.modules
                       if name.split(".")[0] in ("tensorflow", "keras"))
        print("IMPORTED", heavy)
        """)
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60, check=False)
    assert finished.returncode == 0, finished.stderr
    assert "IMPORTED []" in finished.stdout, finished.stdout[-2000:]
    assert "index generation" in finished.stdout  # rebuild did run



def test_an_encoder_that_reads_another_size_is_refused_in_one_line(
        make_config: Callable[..., Path], lookalike: Lookalike) -> None:
    config = make_config(model=str(DEFAULT_MODEL), image={"size": 64})
    finished = lookalike("run", "--once", "-c", config)
    assert finished.returncode != 0
    assert "At 'image.size': 64, but the encoder reads 56x56 images" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_the_command_tunes_openblas_before_numpy_loads_it() -> None:
    # OpenBLAS reads its settings once, when NumPy loads it: set later, they do nothing.
    # One thread a product: the command's own threads share the cores (daemon/__init__.py).
    script = textwrap.dedent("""\
        import os, sys
        class Watch:
            def find_spec(self, name, path=None, target=None):
                if name == "numpy":
                    print("AT NUMPY", os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
                          os.environ.get("OPENBLAS_NUM_THREADS"))
        sys.meta_path.insert(0, Watch())
        import lookalike.daemon.cli
        import threadpoolctl
        print("BLAS THREADS", *sorted({pool["num_threads"] for pool in
                                        threadpoolctl.threadpool_info()
                                        if pool["user_api"] == "blas"}))
        """)
    env = {key: value for key, value in os.environ.items()
           if key not in ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS")}
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60, check=False, env=env)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines() == ["AT NUMPY 4 1", "BLAS THREADS 1"], finished.stdout

# -- usage mistakes ------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["status", "--bogus"],
    ["train", "--out", "x.keras"],
    ["query"],
    ["query", "x.png", "-k", "0"],
    ["train", "--data", ".", "--out", "x.keras", "--epochs", "many"],
], ids=["no-command", "bad-command", "bad-flag", "train-without-data", "query-without-image",
        "zero-k", "epochs-not-a-number"])
def test_usage_mistakes_exit_non_zero_without_traceback(argv: list[str],
                                                        lookalike: Lookalike) -> None:
    finished = lookalike(*argv)
    assert finished.returncode == 2
    assert "Traceback" not in finished.stderr
    assert "usage: lookalike" in finished.stderr
    assert "error:" in finished.stderr.strip().splitlines()[-1]


# -- train ---------------------------------------------------------------------
def test_train_writes_an_encoder_and_its_card(tmp_path: Path, inbox_of: Callable[..., list[str]],
                                              lookalike: Lookalike) -> None:
    data = tmp_path / "data"
    inbox_of(data, 100)
    out = tmp_path / "models" / "small.keras"
    finished = lookalike("train", "--data", data, "--out", out, "--epochs", "2", "--latent", "16",
                         timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "Traceback" not in finished.stderr
    assert out.is_file()
    card = json.loads(out.with_name("small.card.json").read_text(encoding="utf-8"))
    assert card["model_id"] == model_id(out)
    assert card["preset"] == "lookalike"
    assert card["epochs_run"] == 2
    assert card["train_images"] + card["held_out_images"] == 100
    assert card["held_out_images"] >= 1
    assert card["data_fingerprint"].startswith("sha256:")
    assert card["started_from"] == "scratch"  # the shipped encoder's latent is not 16
    assert "training from scratch" in finished.stderr
    assert out.with_name("small.training.weights.h5").is_file()
    assert str(out) in finished.stdout

    from lookalike.core.encoder import load as load_encoder
    encoder = load_encoder(out)
    # --latent sizes the learned part; 4x4 cells of 16 edge directions and 72 colour bins
    # come beside it
    assert encoder.latent_dim == card["latent_dim"] == 16 + 16 * 16 + 72
    assert (encoder.shape.size, encoder.shape.color) == (56, "rgb")


def test_train_goes_on_from_the_shipped_encoder(tmp_path: Path,
                                                inbox_of: Callable[..., list[str]],
                                                lookalike: Lookalike) -> None:
    data = tmp_path / "data"
    inbox_of(data, 30)
    out = tmp_path / "mine.keras"
    finished = lookalike("train", "--data", data, "--out", out, "--epochs", "1", timeout=300)
    assert finished.returncode == 0, finished.stderr
    card = json.loads(out.with_name("mine.card.json").read_text(encoding="utf-8"))
    assert card["started_from"] == model_id(DEFAULT_MODEL)
    assert f"from {DEFAULT_MODEL}" in finished.stderr
    # The fitted layers keep the shipped encoder's statistics; the learned part moved.
    from lookalike.core.encoder import load as load_encoder
    from lookalike.core.fitting import FITTED, find_layer
    mine, shipped = load_encoder(out).model, load_encoder(DEFAULT_MODEL).model
    for name in FITTED:
        for kept, theirs in zip(find_layer(mine, name).get_weights(),
                                find_layer(shipped, name).get_weights(), strict=True):
            assert np.array_equal(kept, theirs)
    assert not np.array_equal(find_layer(mine, "latent").get_weights()[0],
                              find_layer(shipped, "latent").get_weights()[0])

    # A file without a training state beside it, or none at all, is refused (the two
    # commands at once: each loads TensorFlow first, on one core).
    out.with_name("mine.training.weights.h5").unlink()
    stateless, missing = [Background(functools.partial(
        lookalike, "train", "--data", data, "--out", tmp_path / "x.keras", "--start", start),
        f"train --start {start.name}") for start in (out, tmp_path / "none.keras")]
    assert "no training state" in one_problem(stateless.result())
    assert "no such file" in one_problem(missing.result())
    assert not (tmp_path / "x.keras").exists()


def test_train_refuses_an_h5_file(tmp_path: Path, inbox_of: Callable[..., list[str]],
                                  lookalike: Lookalike) -> None:
    data = tmp_path / "data"
    inbox_of(data, 20)
    finished = lookalike("train", "--data", data, "--out", tmp_path / "x.h5")
    assert ".keras" in one_problem(finished)
    assert not (tmp_path / "x.h5").exists()


def test_train_refuses_a_folder_without_images(tmp_path: Path, lookalike: Lookalike) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "readme.txt").write_text("nothing to see\n", encoding="utf-8")
    out = tmp_path / "x.keras"
    finished = lookalike("train", "--data", data, "--out", out)
    assert str(data) in one_problem(finished)
    assert not out.exists()
