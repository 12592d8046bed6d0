"""Fixtures for the end-to-end tests of the `lookalike` command.

The command runs as the real installed process (`lookalike` beside the
venv's python), in a working folder without a config.yaml, so every test
names its config with `-c`.
"""
from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon.service import Start, launcher
from tests.helpers import lookalike_env, run_lookalike, write_config

Lookalike = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def lookalike(tmp_path_factory: pytest.TempPathFactory) -> Lookalike:
    """Run `lookalike ARGS...`; return the finished process (stdout and stderr as text).

    Keyword `timeout` (seconds, default 120) bounds the run: a hang fails the test.
    """
    workdir = tmp_path_factory.mktemp("cwd")  # no config.yaml here to fall back on
    env = lookalike_env()

    def call(*args: object, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return run_lookalike(*args, cwd=workdir, timeout=timeout, env=env)

    return call


@pytest.fixture(scope="session")
def config_in(encoder_path: Path) -> Callable[..., Path]:
    """Like `make_config`, for any folder (module-scoped runs): write FOLDER/config.yaml.

    inbox/, queries/ and state/ are beside it; keyword arguments override
    top-level keys. The index gets 10 trees unless told otherwise.
    """
    def write(folder: Path, **overrides: object) -> Path:
        return write_config(folder, encoder_path, **{"index": {"trees": 10}, **overrides})

    return write


@pytest.fixture(scope="session")
def digit_files(digits_root: Path) -> list[tuple[Path, int]]:
    """Every digit image of `digits_root` with its label, in the order of the data set."""
    found = [(path, int(path.parent.name)) for path in digits_root.glob("*/*.png")]
    return sorted(found, key=lambda item: item[0].name)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start `lookalike run -c CONFIG` (tests.daemon.service.launcher); killed after the test."""
    with launcher(tmp_path) as launch:
        yield launch
