"""Fixtures for the end-to-end tests of the `lookalike` command.

The command runs as the real installed process (`lookalike` beside the
venv's python), in a working folder without a config.yaml, so every test
names its config with `-c`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

LOOKALIKE = Path(sys.executable).with_name("lookalike")  # as tests/conftest.py has it

Lookalike = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def lookalike(tmp_path_factory: pytest.TempPathFactory) -> Lookalike:
    """Run `lookalike ARGS...`; return the finished process (stdout and stderr as text).

    Keyword `timeout` (seconds, default 120) bounds the run: a hang fails the test.
    """
    workdir = tmp_path_factory.mktemp("cwd")  # no config.yaml here to fall back on
    env = {key: value for key, value in os.environ.items()
           if key not in ("LOOKALIKE_CONFIG", "JOURNAL_STREAM")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"

    def call(*args: object, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(LOOKALIKE), *map(str, args)], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    return call


@pytest.fixture(scope="session")
def config_in(encoder_path: Path) -> Callable[..., Path]:
    """Like `make_config`, for any folder (module-scoped runs): write FOLDER/config.yaml.

    inbox/, queries/ and state/ are beside it; keyword arguments override
    top-level keys. The index gets 10 trees unless told otherwise.
    """
    def write(folder: Path, **overrides: object) -> Path:
        settings: dict[str, object] = {"inbox": "./inbox", "query_dir": "./queries",
                                       "state_dir": "./state", "model": str(encoder_path),
                                       "index": {"trees": 10}}
        settings.update(overrides)
        (folder / "inbox").mkdir(parents=True, exist_ok=True)
        (folder / "queries").mkdir(exist_ok=True)
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(settings), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def digit_files(digits_root: Path) -> list[tuple[Path, int]]:
    """Every digit image of `digits_root` with its label, in the order of the data set."""
    found = [(path, int(path.parent.name)) for path in digits_root.glob("*/*.png")]
    return sorted(found, key=lambda item: item[0].name)

