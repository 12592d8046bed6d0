"""Helpers of the tests that run the real service (`lookalike run`): the process and
waiting on it, digit images to drop, results files and what makes one valid, and
systemd's notify socket. The fixtures built on them (`start`, `notify_socket`) are in
tests/daemon/conftest.py.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.helpers import LOOKALIKE, lookalike_env

SUFFIX = ".neighbors.json"
SCHEMA = "lookalike.neighbors/1"
TEMP_PREFIX = ".lookalike-"
K = 12
START_S = 90.0  # TensorFlow's import and the start-up scan, on a loaded CI machine
ANSWER_S = 60.0  # from a file's arrival to its results file, with a burst ahead of it
SETTINGS: dict[str, Any] = {  # fast: watch.settle_s 0.5 s, no periodic rescans
    "watch": {"settle_s": 0.5, "rescan_interval_s": 0},
    "index": {"trees": 10, "rebuild_interval_s": 2},
}

T = TypeVar("T")


# -- waiting -------------------------------------------------------------------
def wait_for(predicate: Callable[[], T | None], timeout: float, what: str = "a condition",
             alive: Callable[[], str | None] = lambda: None) -> T:
    """Poll `predicate` every 50 ms until it returns something true; return that.

    `alive` returns a reason to give up early (the process died) or None.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        dead = alive()
        if dead is not None:
            raise AssertionError(f"while waiting for {what}: {dead}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# -- the service process -----------------------------------------------------------
@dataclass
class Run:
    """One `lookalike run` process; its stderr goes to `log`."""

    process: subprocess.Popen[bytes]
    log: Path
    state_dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def dead(self) -> str | None:
        code = self.process.poll()
        return None if code is None else f"lookalike exited with {code}; its log:\n{self.tail()}"

    def wait(self, predicate: Callable[[], T | None], timeout: float = ANSWER_S,
             what: str = "a condition") -> T:
        """wait_for, giving up when the process dies; the log's tail goes with a failure."""
        try:
            return wait_for(predicate, timeout, what, self.dead)
        except AssertionError as failure:
            if "log:" in str(failure):
                raise
            raise AssertionError(f"{failure}\nlog tail:\n{self.tail()}") from None

    def status(self) -> dict[str, Any] | None:
        """What the service last wrote to state/service.json, if this process wrote it."""
        try:
            report: dict[str, Any] = json.loads((self.state_dir / "service.json").read_text())
        except (OSError, ValueError):
            return None
        return report if report.get("pid") == self.pid else None

    def ready(self, timeout: float = START_S) -> dict[str, Any]:
        """Wait until the start-up scan is done (service.json written by this process)."""
        return self.wait(lambda: self.running_status(), timeout, "service.json of this process")

    def running_status(self) -> dict[str, Any] | None:
        report = self.status()
        return report if report is not None and report["state"] == "running" else None

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM; the exit code (the test fails if it takes longer than `timeout`)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit {timeout} s after SIGTERM; log:\n{self.tail()}") \
                from None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


Start = Callable[..., Run]


@contextlib.contextmanager
def launcher(folder: Path, show: bool = True) -> Iterator[Start]:
    """Start `lookalike run -c CONFIG` (extra environment as keywords); kill leftovers after.

    Each process's stderr goes to `folder/run-N.log`, printed at the end (pytest shows it
    when a test fails) unless not `show` (a scenario in the background, whose printing
    would land in whichever test runs then).
    """
    runs: list[Run] = []

    def launch(config: Path, **environment: str) -> Run:
        env = lookalike_env("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        env.update(**environment)
        log = folder / f"run-{len(runs) + 1}.log"
        with open(log, "wb") as stderr:
            process = subprocess.Popen([str(LOOKALIKE), "run", "-c", str(config)], cwd=folder,
                                       env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=stderr)
        state_dir = config.parent / yaml.safe_load(config.read_text())["state_dir"]
        runs.append(Run(process, log, state_dir.resolve()))
        return runs[-1]

    try:
        yield launch
    finally:
        for run in runs:
            if run.process.poll() is None:
                run.kill()
            if show:
                print(f"---- {run.log.name} (exit {run.process.returncode}) ----\n{run.text()}")


# -- images ----------------------------------------------------------------------
def fill(folder: Path, sources: list[tuple[Path, int]]) -> list[str]:
    """Copy digit images into `folder` under their own names; return the names."""
    folder.mkdir(parents=True, exist_ok=True)
    for source, _ in sources:
        shutil.copy(source, folder / source.name)
    return [source.name for source, _ in sources]


# -- results files -------------------------------------------------------------------
def results_of(folder: Path) -> dict[str, dict[str, Any]]:
    """Every results file below `folder`, parsed, by the relative path of its image."""
    found = {}
    for path in sorted(folder.rglob("*" + SUFFIX)):
        try:
            found[path.relative_to(folder).as_posix()[:-len(SUFFIX)]] = \
                json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            continue  # removed between listing and reading
    return found


def read_results(image: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(Path(str(image) + SUFFIX).read_text("utf-8"))
    except FileNotFoundError:
        return None
    return document


def names(document: dict[str, Any]) -> list[str]:
    return [n["path"] for n in document.get("neighbors", [])]


def problems_of(document: dict[str, Any] | None, query: str, inbox: Path,
                k: int = K) -> list[str]:
    """What is wrong with the results of inbox image `query` (empty: a complete, valid file)."""
    if document is None:
        return [f"{query}: no results file"]
    if document.get("schema") != SCHEMA or document.get("status") != "ok":
        return [f"{query}: not an ok {SCHEMA} document: {document}"]
    found = []
    if document.get("query") != query:
        found.append(f"{query}: query is {document.get('query')!r}")
    neighbors = document["neighbors"]
    paths = names(document)
    if len(neighbors) != k:
        found.append(f"{query}: {len(neighbors)} neighbours, not {k}")
    if [n["rank"] for n in neighbors] != list(range(1, len(neighbors) + 1)):
        found.append(f"{query}: ranks {[n['rank'] for n in neighbors]}")
    if query in paths:
        found.append(f"{query}: names itself")
    if len(set(paths)) != len(paths):
        found.append(f"{query}: names a neighbour twice: {paths}")
    missing = [path for path in paths if not (inbox / path).is_file()]
    if missing:
        found.append(f"{query}: names files that do not exist: {missing}")
    distances = [n["distance"] for n in neighbors]  # (ranked, not sorted: core.ranking)
    if not all(isinstance(d, float) and 0.0 <= d <= 2.0 for d in distances):
        found.append(f"{query}: not angular distances: {distances}")
    return found


class Answered:
    """A predicate for Run.wait: true once every image has complete, valid results.

    `problems` keeps what was wrong at the last look, for the message of a timeout.
    """

    def __init__(self, inbox: Path, images: list[str], k: int = K) -> None:
        self.inbox, self.images, self.k = inbox, images, k
        self.problems: list[str] = []

    def __call__(self) -> bool:
        self.problems = []
        for image in self.images:
            self.problems += problems_of(read_results(self.inbox / image), image, self.inbox,
                                         self.k)
            if len(self.problems) > 10:
                break
        return not self.problems


def wait_answered(run: Run, inbox: Path, images: list[str], k: int = K,
                  timeout: float = ANSWER_S) -> dict[str, dict[str, Any]]:
    """Wait until every image has complete, valid results; return them."""
    answered = Answered(inbox, images, k)
    try:
        run.wait(answered, timeout, f"valid results for {len(images)} images")
    except AssertionError as failure:
        raise AssertionError(f"{failure}\nstill wrong: {answered.problems}") from None
    return {image: read_results(inbox / image) or {} for image in images}


def temporaries(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(TEMP_PREFIX + "*"))


# -- systemd's notify socket -------------------------------------------------------------
class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: a thread reads each datagram as it comes, as PID 1 does.

    Reading at once matters: the kernel queues only a few datagrams per socket
    (net.unix.max_dgram_qlen), and a sender blocks when the queue is full.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []  # (time.monotonic(), message)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.reader = threading.Thread(target=self.read, name="notify socket", daemon=True)
        self.reader.start()

    def read(self) -> None:
        while not self.done.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.heard(message)
            with self.lock:
                self.received.append((time.monotonic(), message))

    def heard(self, message: str) -> None:
        """A message came (before it is kept): for a socket that acts on one."""

    def close(self) -> None:
        self.done.set()
        self.reader.join()
        self.sock.close()

    @property
    def messages(self) -> list[str]:
        with self.lock:
            return [message for _, message in self.received]

    def lines(self, after: int = 0) -> list[str]:
        """Every line of the messages from number `after` on."""
        return [line for message in self.messages[after:] for line in message.splitlines()]

    def saw(self, line: str, after: int = 0) -> bool:
        return line in self.lines(after)

    def saw_prefix(self, prefix: str, after: int = 0) -> bool:
        return any(line.startswith(prefix) for line in self.lines(after))

    def count_between(self, line: str, since: float, until: float) -> int:
        with self.lock:
            return sum(line in message.splitlines() for at, message in self.received
                       if since <= at <= until)
