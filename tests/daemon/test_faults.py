"""Faults the real service must come through with nothing lost.

- SIGKILL at random moments, cycle after cycle, while images arrive, change
  and leave (a burst, results writes, index rebuilds and swaps and library
  transactions are all under way): after the last restart every image has a
  correct results file (its exact 12 nearest in the library), none is
  half-written or names a deleted image, the library matches the files and
  passes `PRAGMA integrity_check`, and the index loads.
  `LOOKALIKE_KILL_CYCLES=50` runs more cycles than CI's few.
- The state directory's disk full (a small tmpfs; skipped where mounting is
  not allowed): reported, nothing kept is lost, and the service resumes when
  there is space again.
- An inotify queue overflow, for real: the service is stopped (SIGSTOP)
  while more events than the kernel queues (fs.inotify.max_queued_events)
  happen, then continued; the rescan that the overflow triggers must find
  the images, edits and deletions whose events were dropped.
- A damaged or missing index file; a damaged model file.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike.core import ranking
from tests.daemon.service import (
    SUFFIX,
    NotifySocket,
    Run,
    Start,
    launcher,
    problems_of,
    read_results,
    temporaries,
)
from tests.helpers import LOOKALIKE, Scenarios, side_by_side

pytestmark = pytest.mark.slow

K = 12
ANSWER_S = 90.0
SETTINGS: dict[str, Any] = {
    "watch": {"settle_s": 0.5, "rescan_interval_s": 0},
    "index": {"trees": 10, "rebuild_interval_s": 1},
}
KILL_CYCLES = int(os.environ.get("LOOKALIKE_KILL_CYCLES", "3"))


# -- what a correct inbox looks like -----------------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def on_disk(inbox: Path) -> list[str]:
    return sorted(p.relative_to(inbox).as_posix() for p in inbox.rglob("*.png"))


def library_of(state_dir: Path) -> dict[str, tuple[str | None, np.ndarray | None]]:
    """Live rows of the library, read-only: path -> (sha256, latent)."""
    database = sqlite3.connect(f"file:{state_dir / 'library.sqlite'}?mode=ro", uri=True)
    try:
        rows = database.execute("SELECT path, sha256, latent FROM images WHERE deleted = 0")
        return {path: (sha, None if latent is None else np.frombuffer(latent, np.float32))
                for path, sha, latent in rows}
    finally:
        database.close()


def integrity(state_dir: Path) -> str:
    database = sqlite3.connect(f"file:{state_dir / 'library.sqlite'}?mode=ro", uri=True)
    try:
        return str(database.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        database.close()


def exact_neighbors(rows: dict[str, tuple[str | None, np.ndarray | None]]
                    ) -> dict[str, tuple[list[str], set[str]]]:
    """For each usable image: its K look-alikes, ranked from its exact candidates as
    results files rank them (`core.ranking`), and the images tied with the last of them
    (the same score, or, at the last candidate, the same distance), any of which a
    results file may name instead."""
    usable = {path: latent for path, (_, latent) in rows.items() if latent is not None}
    paths = sorted(usable)
    matrix = np.stack([usable[p] for p in paths]).astype(np.float64)
    unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    distance = np.sqrt(np.clip(2.0 - 2.0 * unit @ unit.T, 0.0, None))
    wide = ranking.candidates(K)
    found = {}
    for n, path in enumerate(paths):
        order = [m for m in np.argsort(distance[n], kind="stable") if m != n]
        near = order[:wide]
        score = ranking.scores(matrix[n][None], matrix[near][None], "angular")[0]
        places = np.argsort(-score, kind="stable")
        tied = {paths[near[place]] for place in places[K - 1:]
                if abs(score[place] - score[places[min(K, len(near)) - 1]]) < 1e-4}
        if len(order) > wide and abs(distance[n, order[wide]] - distance[n, near[-1]]) < 1e-4:
            tied |= {paths[m] for m in order}  # other candidates: any look-alike may differ
        found[path] = ([paths[near[place]] for place in places[:K]], tied)
    return found


def wrong_results(inbox: Path, state_dir: Path) -> list[str]:
    """What is wrong with the inbox's results against the library and the files (empty: all right).

    Every image has a parseable results file; an ok one names its 12 look-alikes,
    ranked from its exact candidates (up to ties); no results file is left for an
    image that is gone;
    the library holds each file's current bytes.
    """
    images = on_disk(inbox)
    problems: list[str] = []
    rows = library_of(state_dir)
    for image in images:
        row = rows.get(image)
        if row is None:
            problems.append(f"{image}: not in the library")
        elif row[0] != sha256(inbox / image):
            problems.append(f"{image}: the library holds other bytes than the file's")
    for extra in sorted(set(rows) - set(images)):
        problems.append(f"{extra}: in the library, not on disk")
    orphans = [p.name for p in inbox.rglob("*" + SUFFIX) if not p.with_name(
        p.name[:-len(SUFFIX)]).exists()]
    problems += [f"{orphan}: results of an image that is gone" for orphan in orphans]
    if problems:
        return problems
    exact = exact_neighbors(rows)
    for image in images:
        try:
            document = read_results(inbox / image)
        except ValueError as error:
            problems.append(f"{image}: results do not parse: {error}")
            continue
        problems += problems_of(document, image, inbox, K)
        if problems or document is None:
            continue
        expected, tied = exact[image]
        named = {n["path"] for n in document["neighbors"]}
        wrong = named - set(expected) - tied
        if wrong:
            problems.append(f"{image}: names {sorted(wrong)}, not among its {K} look-alikes")
        if len(problems) > 10:
            break
    return problems


class Correct:
    """A predicate for Run.wait: true once `wrong_results` finds nothing."""

    def __init__(self, inbox: Path, state_dir: Path) -> None:
        self.inbox, self.state_dir = inbox, state_dir
        self.problems: list[str] = []

    def __call__(self) -> bool:
        try:
            self.problems = wrong_results(self.inbox, self.state_dir)
        except (OSError, ValueError, sqlite3.Error) as error:  # mid-write: look again
            self.problems = [f"cannot look yet: {error}"]
        return not self.problems


def wait_correct(run: Run, inbox: Path, timeout: float = ANSWER_S) -> None:
    correct = Correct(inbox, run.state_dir)
    try:
        run.wait(correct, timeout, "correct results for every image")
    except AssertionError as failure:
        raise AssertionError(f"{failure}\nstill wrong: {correct.problems[:10]}") from None


def index_loads(state_dir: Path) -> str | None:
    """None when the current index loads; else why not."""
    from lookalike.core import index

    try:
        index.load(state_dir)
    except Exception as error:  # noqa: BLE001 - any failure is the finding
        return f"{type(error).__name__}: {error}"
    return None


# -- 1. SIGKILL at random moments --------------------------------------------------------------
@dataclass
class Killed:
    cycles: int
    kills_while_busy: int
    problems: list[str]
    leftovers: list[str]
    integrity: str
    index_problem: str | None
    exit_code: int
    log: str


def sigkills(root: Path, config_in: Callable[..., Path],
             digit_files: list[tuple[Path, int]]) -> Killed:
    config = config_in(root, **SETTINGS)
    inbox = root / "inbox"
    pool = [path for path, _ in digit_files]
    for n, source in enumerate(pool[:60]):
        shutil.copy(source, inbox / f"{n:04d}.png")
    fresh = iter(range(60, len(pool)))
    chance = random.Random(6)
    busy = 0
    with launcher(root, show=False) as launch:
        for cycle in range(KILL_CYCLES):
            run = launch(config)
            run.ready()
            present = on_disk(inbox)
            # new images (some in a sub-folder), edits and deletions, then a kill at a random moment
            added = []
            # The first burst spans several batches, so that a kill at its first answer
            # comes while the rest wait (a burst of one batch is answered all at once).
            for _ in range(150 if cycle == 0 else chance.randint(10, 40)):
                n = next(fresh)
                folder = inbox / ("later" if n % 3 == 0 else "")
                folder.mkdir(exist_ok=True)
                shutil.copy(pool[n], folder / f"{n:04d}.png")
                added.append(folder / f"{n:04d}.png")
            for image in chance.sample(present, 4):
                shutil.copyfile(pool[next(fresh)], inbox / image)  # edited in place
            for image in chance.sample(present, 3):
                with contextlib.suppress(FileNotFoundError):
                    (inbox / image).unlink()
            if cycle == 0:  # once for certain mid-burst: as soon as the first new one is answered
                run.wait(lambda added=added: any(Path(str(image) + SUFFIX).exists()  # type: ignore[misc]
                                                 for image in added), ANSWER_S, "a first answer")
            else:
                time.sleep(chance.uniform(0.05, 2.0))
            busy += any(not Path(str(image) + SUFFIX).exists() for image in added)
            run.process.send_signal(signal.SIGKILL)
            run.process.wait(10)
        final = launch(config)
        final.ready()
        try:
            wait_correct(final, inbox)
        except AssertionError:
            pass  # the tests say what is wrong
        problems = wrong_results(inbox, final.state_dir)
        leftovers = temporaries(inbox)
        code = final.terminate(30)
        return Killed(KILL_CYCLES, busy, problems, leftovers, integrity(final.state_dir),
                      index_loads(final.state_dir), code, final.text())


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              config_in: Callable[..., Path], digit_files: list[tuple[Path, int]],
              encoder_path: Path) -> Iterator[Scenarios]:
    """This module's scenarios, side by side, each in a folder of its own: the SIGKILL
    cycles, the full disks (mostly waiting for the service's retries), the answered and
    indexed folder and the damaged model."""
    made: dict[str, Callable[[Path], Any]] = {
        "killed": functools.partial(sigkills, config_in=config_in, digit_files=digit_files),
        "full": functools.partial(disk_full, config_in=config_in, digit_files=digit_files),
        "indexed_once": functools.partial(answered_and_indexed, config_in=config_in,
                                          digit_files=digit_files),
        "damaged_model": functools.partial(run_on_a_damaged_model, config_in=config_in,
                                           encoder_path=encoder_path)}
    with side_by_side(request, tmp_path_factory, made) as started:
        yield started


@pytest.fixture(scope="module")
def killed(scenarios: Scenarios) -> Killed:
    return scenarios.result("killed")


STALE = ("names files that do not exist", "not among its")


def test_after_sigkills_every_image_has_a_whole_results_file(killed: Killed) -> None:
    """Parsed, complete, for the bytes on disk; none left for an image that is gone."""
    whole = [problem for problem in killed.problems if not any(s in problem for s in STALE)]
    assert whole == [], killed.log[-3000:]


def test_after_sigkills_no_results_file_is_stale(killed: Killed) -> None:
    """No results name a deleted image or miss a nearer one (25 random kills once found some)."""
    assert killed.problems == [], killed.log[-3000:]


def test_after_sigkills_no_temporary_file_is_left(killed: Killed) -> None:
    assert killed.leftovers == []


def test_after_sigkills_the_library_and_the_index_are_sound(killed: Killed) -> None:
    assert killed.integrity == "ok"
    assert killed.index_problem is None
    assert killed.exit_code == 0
    assert "Traceback" not in killed.log


def test_the_kills_came_while_there_was_work(killed: Killed) -> None:
    assert killed.kills_while_busy >= 1, "every kill hit an idle service: it proves little"


# -- 2. the state directory's disk full --------------------------------------------------------
@contextlib.contextmanager
def small_disk(folder: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `folder`; skip the test where that is not allowed."""
    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): "
                    "the disk-full test needs root or CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_up(folder: Path) -> Path:
    """Write a ballast file until the file system holding `folder` is full."""
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for block in (1 << 16, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)
    return ballast


@dataclass
class Full:
    before: dict[str, bytes]  # results files when the disk filled, by image
    after_full: dict[str, bytes]  # the same files while it was full
    integrity_while_full: str
    alive_while_full: bool
    reported: list[str]
    statuses: list[str]  # what systemd was told while the disk was full
    resumed: bool
    problems: list[str]
    inbox_full_reported: list[str]  # then the inbox's disk full: what the log said
    inbox_resumed: list[str]  # images still without results once there was space again
    exit_code: int
    log: str


def disk_full(root: Path, config_in: Callable[..., Path],
              digit_files: list[tuple[Path, int]]) -> Full:
    inbox = root / "inbox"
    config = config_in(root, **SETTINGS)
    pool = [path for path, _ in digit_files]
    notify_home = Path(tempfile.mkdtemp(prefix="lk-"))  # a socket path fits in 108 bytes
    try:
        return full_disks(root, inbox, config, pool, notify_home)
    finally:
        shutil.rmtree(notify_home, ignore_errors=True)


def full_disks(root: Path, inbox: Path, config: Path, pool: list[Path],
               notify_home: Path) -> Full:
    with small_disk(root / "state") as state, small_disk(inbox, "2m"), \
            launcher(root, show=False) as launch, \
            contextlib.closing(NotifySocket(notify_home / "notify")) as systemd:
        for n, source in enumerate(pool[:40]):
            shutil.copy(source, inbox / f"{n:04d}.png")
        run = launch(config, NOTIFY_SOCKET=str(notify_home / "notify"))
        run.ready()
        wait_correct(run, inbox)
        before = {image: (inbox / (image + SUFFIX)).read_bytes() for image in on_disk(inbox)}
        ballast = fill_up(state)
        for n in range(40, 60):
            shutil.copy(pool[n], inbox / f"{n:04d}.png")
        time.sleep(4)  # what the service does with the new images on a full disk
        alive = run.process.poll() is None
        after_full = {image: (inbox / (image + SUFFIX)).read_bytes() for image in before}
        integrity_while_full = integrity(state)
        reported = [line for line in run.text().splitlines()
                    if ("full" in line.lower() or "no space" in line.lower())
                    and ("ERROR" in line or "WARNING" in line)]
        statuses = [line for line in systemd.lines() if line.startswith("STATUS=")]
        ballast.unlink()
        resumed = True
        try:
            wait_correct(run, inbox, timeout=40)  # the service retries every 10 s
        except AssertionError:
            resumed = False
        problems = wrong_results(inbox, state)
        # then the inbox's disk full: images arrive (renamed in: that needs no space) whose
        # results cannot be written
        staging = inbox / ".staging"  # hidden: not watched
        staging.mkdir()
        late = [f"late{n:02d}.png" for n in range(10)]
        for name, source in zip(late, pool[60:70], strict=True):
            shutil.copy(source, staging / name)
        logged = len(run.text().splitlines())
        ballast = fill_up(inbox)
        for name in late:
            os.rename(staging / name, inbox / name)
        time.sleep(3)
        inbox_reported = [line for line in run.text().splitlines()[logged:]
                          if "No space left" in line and "ERROR" in line]
        ballast.unlink()
        deadline = time.monotonic() + 20
        waiting = late
        while waiting and time.monotonic() < deadline:
            waiting = [name for name in late if not (inbox / (name + SUFFIX)).exists()]
            time.sleep(0.2)
        code = run.terminate(30)
        return Full(before, after_full, integrity_while_full, alive, reported, statuses,
                    resumed, problems, inbox_reported, waiting, code, run.text())


@pytest.fixture(scope="module")
def full(scenarios: Scenarios) -> Full:
    return scenarios.result("full")


def test_a_full_state_disk_keeps_what_the_service_had(full: Full) -> None:
    assert full.alive_while_full
    assert full.integrity_while_full == "ok"
    assert full.after_full == full.before  # no results file damaged or lost
    assert full.exit_code == 0


def test_a_full_state_disk_is_reported(full: Full) -> None:
    assert full.reported, full.log[-3000:]


def test_a_full_state_disk_resumes_when_there_is_space(full: Full) -> None:
    assert full.resumed, full.problems[:10]
    assert "Traceback" not in full.log


def test_a_full_state_disk_shows_in_the_systemd_status(full: Full) -> None:
    assert [line for line in full.statuses if "full" in line or "space" in line], full.statuses


def test_a_full_inbox_disk_is_reported_once(full: Full) -> None:
    """One line for the whole disk, not one per results file (a burst would flood the log)."""
    assert len(full.inbox_full_reported) == 1, full.inbox_full_reported or full.log[-3000:]
    assert "is full: results files cannot be written" in full.inbox_full_reported[0]


def test_a_full_inbox_disk_resumes_when_there_is_space(full: Full) -> None:
    """The service retries every 10 s; the retry writes what could not be written."""
    assert full.inbox_resumed == []


# -- 3. an inotify queue overflow --------------------------------------------------------------
def flood(folder: Path, events: int) -> None:
    """Make at least `events` inotify events in `folder` with a file that is no image."""
    path = folder / "flood.txt"
    for _ in range(events // 3 + 1):  # create, close after writing, delete
        with open(path, "wb") as out:
            out.write(b"x")
        path.unlink()


def test_an_inotify_overflow_is_followed_by_a_rescan_that_finds_everything(
        tmp_path: Path, config_in: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]]) -> None:
    config = config_in(tmp_path, **SETTINGS)
    inbox = tmp_path / "inbox"
    pool = [path for path, _ in digit_files]
    for n, source in enumerate(pool[:30]):
        shutil.copy(source, inbox / f"{n:04d}.png")
    run = start(config)
    run.ready()
    wait_correct(run, inbox)
    queued = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    run.process.send_signal(signal.SIGSTOP)
    try:
        flood(inbox, queued * 2)  # the kernel queue overflows; what follows is dropped
        for n in range(30, 38):
            shutil.copy(pool[n], inbox / f"{n:04d}.png")
        (inbox / "0001.png").unlink()
        (inbox / "0002.png").unlink()
        shutil.copyfile(pool[38], inbox / "0003.png")
    finally:
        run.process.send_signal(signal.SIGCONT)
    run.wait(lambda: "the kernel dropped file events" in run.text(), 30,
             "the service to hear of the overflow")
    wait_correct(run, inbox)
    assert not (inbox / ("0001.png" + SUFFIX)).exists()
    assert run.terminate() == 0


# -- 4. a damaged or missing index, a damaged model --------------------------------------------
def answered_and_indexed(root: Path, config_in: Callable[..., Path],
                         digit_files: list[tuple[Path, int]]) -> Path:
    """A folder with a config, 40 answered images and a built index; the service stopped."""
    config = config_in(root, **SETTINGS)
    inbox = root / "inbox"
    for n, (source, _) in enumerate(digit_files[:40]):
        shutil.copy(source, inbox / f"{n:04d}.png")
    with launcher(root, show=False) as launch:
        run = launch(config)
        run.ready()
        wait_correct(run, inbox)
        run.wait(lambda: (run.status() or {}).get("last_rebuild"), ANSWER_S, "an index")
        assert run.terminate() == 0
    for log in root.glob("run-*.log"):
        log.unlink()
    return root


@pytest.fixture(scope="module")
def indexed_once(scenarios: Scenarios) -> Path:
    return scenarios.result("indexed_once")


@pytest.fixture
def indexed(indexed_once: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of `indexed_once` to damage; (config, inbox)."""
    root = tmp_path / "copy"
    shutil.copytree(indexed_once, root, symlinks=True)
    return root / "config.yaml", root / "inbox"


def index_files(state_dir: Path) -> list[Path]:
    return [p for p in (state_dir / "index").iterdir() if p.name != "current.json"]


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_index_is_logged_and_rebuilt(indexed: tuple[Path, Path], start: Start,
                                               damage: str,
                                               digit_files: list[tuple[Path, int]]) -> None:
    config, inbox = indexed
    state_dir = config.parent / "state"
    for path in index_files(state_dir):
        if damage == "missing":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:max(1, path.stat().st_size // 2)])
    run = start(config)
    run.ready(timeout=60)
    shutil.copy(digit_files[40][0], inbox / "new.png")
    wait_correct(run, inbox)
    log = run.text()
    assert "Traceback" not in log
    assert [line for line in log.splitlines() if "index" in line and "ERROR" in line]
    assert index_loads(state_dir) is None
    assert run.terminate() == 0


def run_on_a_damaged_model(folder: Path, config_in: Callable[..., Path],
                           encoder_path: Path) -> subprocess.CompletedProcess[str]:
    """`lookalike run` on a copy of the encoder cut short."""
    damaged = folder / "damaged.keras"
    data = encoder_path.read_bytes()
    damaged.write_bytes(data[:len(data) // 2])
    config = config_in(folder, model=str(damaged))
    return subprocess.run([str(LOOKALIKE), "run", "-c", str(config)], cwd=folder,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.fixture(scope="module")
def damaged_model(scenarios: Scenarios) -> subprocess.CompletedProcess[str]:
    return scenarios.result("damaged_model")


def test_a_damaged_model_file_is_one_error_line_and_a_failure_exit(
        damaged_model: subprocess.CompletedProcess[str]) -> None:
    ours = [line for line in damaged_model.stderr.splitlines() if "damaged.keras" in line]
    assert damaged_model.returncode != 0
    assert "Traceback" not in damaged_model.stderr
    assert len(ours) == 1 and ours[0].startswith("lookalike: "), damaged_model.stderr


def test_a_damaged_model_file_is_not_called_missing(
        damaged_model: subprocess.CompletedProcess[str]) -> None:
    assert "not found" not in damaged_model.stderr.lower(), damaged_model.stderr


def test_a_kill_after_the_library_forgot_an_image_leaves_no_results_naming_it(
        indexed: tuple[Path, Path], start: Start) -> None:
    """The state a SIGKILL leaves between forgetting an image and rewriting who named it.

    Made with the library's own `apply` and `lookalike rebuild` (the steps before
    the kill), deterministically: 25 random kills hit that window (15 results files
    named 3 deleted images after the restart); CI's few would only sometimes.
    Fixed by a results check at start-up.
    """
    from lookalike.core import results
    from lookalike.core.store import Library

    config, inbox = indexed
    named: dict[str, int] = {}
    for image in on_disk(inbox):
        for neighbor in (read_results(inbox / image) or {}).get("neighbors", []):
            named[neighbor["path"]] = named.get(neighbor["path"], 0) + 1
    victim = max(sorted(named), key=named.__getitem__)
    with Library(config.parent / "state" / "library.sqlite") as library:
        library.apply(deletions=[victim])  # committed; then the kill
    results.remove(inbox / victim)
    (inbox / victim).unlink()
    # ... and after a rebuild of the index (in the background, or at once for a big arrival)
    rebuilt = subprocess.run([str(LOOKALIKE), "rebuild", "-c", str(config)], capture_output=True,
                             text=True, timeout=120, check=False)
    assert rebuilt.returncode == 0, rebuilt.stderr
    run = start(config)
    run.ready()
    wait_correct(run, inbox, timeout=10)
