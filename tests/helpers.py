"""Helpers shared by test modules: the installed command, configs, odd image files, and
scenarios run side by side."""
from __future__ import annotations

import contextlib
import functools
import os
import re
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
import yaml

T = TypeVar("T")

LOOKALIKE = Path(sys.executable).with_name("lookalike")  # the installed console command


def lookalike_env(*dropped: str) -> dict[str, str]:
    """This process's environment for a `lookalike` child: no LOOKALIKE_CONFIG or
    JOURNAL_STREAM (nor the `dropped` names), and no TF_CPP_MIN_LOG_LEVEL: keeping
    TensorFlow's log out of the journal is the command's own job."""
    return {key: value for key, value in os.environ.items()
            if key not in ("LOOKALIKE_CONFIG", "JOURNAL_STREAM", "TF_CPP_MIN_LOG_LEVEL",
                           *dropped)}


def run_lookalike(*args: object, cwd: Path, timeout: float = 120.0,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `lookalike ARGS...` in `cwd`; return the finished process (stdout and stderr as
    text). A run longer than `timeout` seconds fails the test."""
    return subprocess.run([str(LOOKALIKE), *map(str, args)], cwd=cwd,
                          env=lookalike_env() if env is None else env,
                          capture_output=True, text=True, timeout=timeout, check=False)


# A line that TensorFlow or absl wrote: "I0000 00:00:1796562917.466772   4916 port.cc:153] ...",
# absl's banner, or TensorFlow's Python logger's.
TENSORFLOW_LINE = re.compile(
    r"^[IWEF]\d{4} |absl|InitializeLog|oneDNN|tensorflow|cpu_feature_guard", re.IGNORECASE)


# lookalike's own log lines (stamped unless the journal stamps them)
OWN_LINE = re.compile(r"^(?:\d\d:\d\d:\d\d )?(?:DEBUG|INFO|WARNING|ERROR) lookalike[\w.]*: ")


def tensorflow_lines(stderr: str) -> list[str]:
    """The lines of a `lookalike` process's stderr that TensorFlow or absl wrote (its own
    log lines may name TensorFlow)."""
    return [line for line in stderr.splitlines()
            if TENSORFLOW_LINE.search(line) and not OWN_LINE.match(line)]


def refusal(finished: subprocess.CompletedProcess[str]) -> str:
    """The one `lookalike: ...` line of a refused command."""
    assert finished.returncode != 0
    assert "Traceback" not in finished.stderr, finished.stderr
    problems = [line for line in finished.stderr.splitlines() if line.startswith("lookalike: ")]
    assert len(problems) == 1, finished.stderr
    return problems[0]


def write_config(folder: Path, encoder_path: Path, **overrides: object) -> Path:
    """Write FOLDER/config.yaml (inbox/, queries/ and state/ beside it); return its path.

    Keyword arguments override top-level keys.
    """
    settings: dict[str, object] = {"inbox": "./inbox", "query_dir": "./queries",
                                   "state_dir": "./state", "model": str(encoder_path)}
    settings.update(overrides)
    (folder / "inbox").mkdir(parents=True, exist_ok=True)
    (folder / "queries").mkdir(exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` grey pixels but carries almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


# -- scenarios side by side --------------------------------------------------------------
class Background(Generic[T]):
    """`work()` running from now on in a thread of its own; `result()` waits for what it
    returned, or raises what it raised (pytest's skips and failures included).

    For a module's scenarios that are independent of each other (each on folders of
    its own): most of a scenario's time is a `lookalike` process loading TensorFlow on
    one core, or waiting for the service, so two of them side by side take little
    more than the longer of them.
    """

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self.work = work
        self.value: T | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            self.value = self.work()
        except BaseException as error:  # noqa: BLE001 - raised again by result()
            self.error = error

    def result(self, timeout: float = 900.0) -> T:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"{self.thread.name} still running after {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def wanted(request: pytest.FixtureRequest, names: Iterable[str]) -> list[str]:
    """Which of the fixtures `names` the tests of this module that are to run use."""
    used = {name for item in request.session.items
            if getattr(item, "module", None) is request.module
            for name in getattr(item, "fixturenames", ())}
    return [name for name in names if name in used]


class Scenarios:
    """A module's scenarios, started side by side (`side_by_side`)."""

    def __init__(self, started: dict[str, Background[Any]]) -> None:
        self.started = started

    def result(self, name: str) -> Any:
        """What scenario `name` made (waiting for it), or what it raised."""
        return self.started[name].result()


@contextlib.contextmanager
def side_by_side(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 made: dict[str, Callable[[Path], Any]]) -> Iterator[Scenarios]:
    """Start each scenario of `made` (its name: its work, given a new folder named after
    it) that the tests of this module that are to run use, all at once, each in a
    `Background` thread; their fixtures take their results. At the end, wait for them all
    (done by then unless a test stopped the run early)."""
    started = {name: Background(functools.partial(made[name], tmp_path_factory.mktemp(name)),
                                name)
               for name in wanted(request, made)}
    try:
        yield Scenarios(started)
    finally:
        for scenario in started.values():
            with contextlib.suppress(BaseException):
                scenario.result()
