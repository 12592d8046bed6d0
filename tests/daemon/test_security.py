"""Nothing in the inbox can make the service write, read or hang outside its folders.

One real `lookalike run` on an inbox full of traps: links to files and
folders outside it, a link planted where the results file or its temporary
file will go, a FIFO where a results file was, images and folders moved out
of the inbox while watched. An inotify watch on everything around the
watched folders records every file created or written there: the service
may only write in the inbox, the query folder and the state directory.
And the model file is loaded without running code it carries.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import (
    DirCreatedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from tests.daemon.service import (
    SETTINGS,
    SUFFIX,
    fill,
    launcher,
    problems_of,
    read_results,
    wait_answered,
)
from tests.helpers import LOOKALIKE, Scenarios, side_by_side

pytestmark = pytest.mark.slow

ANSWER_S = 60.0
VICTIM = "do not write here\n"


class Writes(FileSystemEventHandler):
    """Every file or folder created, written or moved in below a folder."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent):
            path = os.fsdecode(event.dest_path)
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent, FileClosedEvent,
                                DirCreatedEvent)):
            path = os.fsdecode(event.src_path)
        else:
            return
        with self.lock:
            self.paths.append(path)


@dataclass
class Attacked:
    root: Path
    written_outside: list[str]
    outside_before: dict[str, bytes]
    outside_after: dict[str, bytes]
    documents: dict[str, dict[str, Any] | None]
    inbox_listing: list[str]
    moved_with_folder: list[str]
    alive_after_fifo: bool
    exit_code: int
    log: str


@dataclass
class ModelWithCode:
    planted: Path  # the marker its code would create
    done: subprocess.CompletedProcess[str]


def safe_results(image: Path) -> dict[str, Any] | None:
    """read_results, but None for what does not parse (a planted link, say)."""
    try:
        return read_results(image)
    except (OSError, ValueError):
        return None


def answered(inbox: Path, images: list[str]) -> Callable[[], bool]:
    return lambda: not any(problems_of(safe_results(inbox / image), image, inbox)
                           for image in images)


def contents(folder: Path) -> dict[str, bytes]:
    """Every regular file below `folder` (links not followed) and its bytes."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[path.relative_to(folder).as_posix()] = path.read_bytes()
    return found


def attack(root: Path, config_in: Callable[..., Path],
           digit_files: list[tuple[Path, int]]) -> Attacked:
    config = config_in(root, **SETTINGS)
    inbox, queries, outside = root / "inbox", root / "queries", root / "outside"
    images = fill(inbox, digit_files[:20])
    (outside / "folder").mkdir(parents=True)
    shutil.copy(digit_files[20][0], outside / "secret.png")
    shutil.copy(digit_files[21][0], outside / "folder" / "there.png")
    (outside / "victim.txt").write_text(VICTIM)
    (outside / "victim.json").write_text(VICTIM)
    (inbox / "escape").symlink_to(outside / "folder", target_is_directory=True)
    (inbox / "up").symlink_to("..", target_is_directory=True)  # the folder holding it all
    (inbox / "link.png").symlink_to(outside / "secret.png")
    (queries / "query-link.png").symlink_to("../outside/secret.png")
    (inbox / "sub").mkdir()
    fill(inbox / "sub", digit_files[22:25])
    images += [f"sub/{source.name}" for source, _ in digit_files[22:25]]
    outside_before = contents(outside)

    writes = Writes()
    observer = Observer()
    observer.schedule(writes, str(root), recursive=True)
    observer.start()
    try:
        with launcher(root, show=False) as launch:
            run = launch(config)
            run.ready()
            wait_answered(run, inbox, images)
            # links planted where the results file and its temporary file will go
            (inbox / ".lookalike-a.png.neighbors.json.tmp").symlink_to(outside / "victim.txt")
            (inbox / "b.png.neighbors.json").symlink_to(outside / "victim.json")
            shutil.copy(digit_files[26][0], inbox / "a.png")
            shutil.copy(digit_files[27][0], inbox / "b.png")
            run.wait(answered(inbox, [*images, "a.png", "b.png"]), ANSWER_S,
                     "results despite the planted links")
            # an image and a folder moved out of the inbox while watched, then written to
            moved = images.pop(0)
            os.rename(inbox / moved, outside / moved)
            moved_with_folder = sorted(p.name for p in (inbox / "sub").glob("*.png"))
            os.rename(inbox / "sub", outside / "sub")
            images = [image for image in images if not image.startswith("sub/")]
            shutil.copy(digit_files[28][0], outside / "sub" / "late.png")
            shutil.copy(digit_files[29][0], outside / "folder" / "late.png")
            run.wait(lambda: not (inbox / (moved + SUFFIX)).exists(), ANSWER_S,
                     "the moved image's results file to go")
            # a FIFO where a results file was, then its image deleted: removing it must not block
            run.process.send_signal(signal.SIGSTOP)  # so that no rewrite replaces the FIFO first
            try:
                os.unlink(inbox / (images[0] + SUFFIX))
                os.mkfifo(inbox / (images[0] + SUFFIX))
                os.unlink(inbox / images[0])
            finally:
                run.process.send_signal(signal.SIGCONT)
            shutil.copy(digit_files[30][0], inbox / "after.png")
            alive = True
            try:
                run.wait(answered(inbox, ["after.png"]), 30, "the image after the FIFO")
            except AssertionError:
                alive = False
            # the results that named what left are rewritten once no arrival waits (if
            # they never are, test_planted_links_do_not_stop_the_results says so)
            with contextlib.suppress(AssertionError):
                run.wait(answered(inbox, ["a.png", "b.png"]), 30, "a.png and b.png rewritten")
            documents = {name: safe_results(inbox / name) for name in ("link.png", "a.png",
                                                                       "b.png")}
            documents["query-link.png"] = safe_results(queries / "query-link.png")
            listing = sorted(os.listdir(inbox))
            (inbox / (images[0] + SUFFIX)).unlink(missing_ok=True)  # the FIFO: a stop cannot block
            code = run.terminate(30)
    finally:
        observer.stop()
        observer.join()
    allowed = [str(inbox) + os.sep, str(queries) + os.sep, str(root / "state") + os.sep]
    ours = {str(root / name) for name in ("inbox", "queries", "state")}
    written = sorted({path for path in writes.paths
                      if not path.startswith(tuple(allowed)) and path not in ours
                      and not Path(path).name.startswith("run-")})  # the test's own logs
    # what the test itself put outside
    test_made = {str(outside / moved), str(outside / "sub"), str(outside / "sub" / "late.png"),
                 str(outside / "folder" / "late.png")}
    test_made |= {str(outside / "sub" / p.name) for p in (outside / "sub").iterdir()}
    return Attacked(root, [path for path in written if path not in test_made], outside_before,
                    contents(outside), documents, listing, moved_with_folder, alive, code,
                    run.text())


def run_on_a_model_with_code(folder: Path, config_in: Callable[..., Path]) -> ModelWithCode:
    """`lookalike run` on an encoder file with a Lambda layer (Python bytecode in the file)
    that, run, creates a marker file."""
    import keras

    planted = folder / "marker"

    model = keras.Sequential([
        keras.Input((56, 56, 1)), keras.layers.Flatten(),
        # Python bytecode in the file; loaded unsafely it would create the marker
        keras.layers.Lambda(lambda x, marker=str(planted): (open(marker, "w").write(""), x)[1]),
        keras.layers.Dense(8)])
    path = folder / "lambda.keras"
    model.save(path)
    planted.unlink()  # building the model here ran it once
    config = config_in(folder, model=str(path))
    done = subprocess.run([str(LOOKALIKE), "run", "-c", str(config)], cwd=folder,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return ModelWithCode(planted, done)


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              config_in: Callable[..., Path], digit_files: list[tuple[Path, int]]
              ) -> Iterator[Scenarios]:
    """The module's two services, side by side, each in a folder of its own (the inotify
    watch of `attack` is on its own folder only)."""
    made: dict[str, Callable[[Path], Any]] = {
        "attacked": functools.partial(attack, config_in=config_in, digit_files=digit_files),
        "model_with_code": functools.partial(run_on_a_model_with_code, config_in=config_in)}
    with side_by_side(request, tmp_path_factory, made) as started:
        yield started


@pytest.fixture(scope="module")
def attacked(scenarios: Scenarios) -> Attacked:
    return scenarios.result("attacked")


def test_nothing_is_written_outside_the_watched_folders_and_the_state(attacked: Attacked
                                                                       ) -> None:
    assert attacked.written_outside == []


def test_files_outside_keep_their_bytes(attacked: Attacked) -> None:
    changed = [name for name, data in attacked.outside_before.items()
               if attacked.outside_after.get(name) != data]
    assert changed == []
    assert (attacked.root / "outside" / "victim.txt").read_text() == VICTIM
    assert (attacked.root / "outside" / "victim.json").read_text() == VICTIM


def test_no_results_appear_beside_anything_outside(attacked: Attacked) -> None:
    """Only the results files that moved out with their folder are there, none written after."""
    outside = attacked.root / "outside"
    found = sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*" + SUFFIX))
    assert found == sorted(f"sub/{name}{SUFFIX}" for name in attacked.moved_with_folder)


def test_links_out_are_reported_not_followed(attacked: Attacked) -> None:
    for name in ("link.png", "query-link.png"):
        document = attacked.documents[name]
        assert document is not None and document["status"] == "error", (name, document)
        assert document["error"]["code"] == "outside"
    assert not [name for name in attacked.inbox_listing if name.startswith(("escape", "up"))
                and name.endswith(SUFFIX)]


def test_planted_links_do_not_stop_the_results(attacked: Attacked) -> None:
    """A link at the results file's name is replaced; one at its temporary is stepped round."""
    for name in ("a.png", "b.png"):
        assert not problems_of(attacked.documents[name], name, attacked.root / "inbox")
    assert not (attacked.root / "inbox" / "b.png.neighbors.json").is_symlink()


def test_a_fifo_in_place_of_a_results_file_does_not_block_the_service(attacked: Attacked
                                                                      ) -> None:
    assert attacked.alive_after_fifo, attacked.log[-3000:]
    assert attacked.exit_code == 0


# -- the model file ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_with_code(scenarios: Scenarios) -> ModelWithCode:
    return scenarios.result("model_with_code")


def test_a_model_with_code_in_it_is_refused_in_one_line(model_with_code: ModelWithCode) -> None:
    """A Lambda layer is Python bytecode in the file: Keras safe mode refuses to load it."""
    planted, done = model_with_code.planted, model_with_code.done
    lines = [line for line in done.stderr.splitlines() if "lambda.keras" in line]
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and "safe_mode" in lines[0], done.stderr
    assert not planted.exists()  # the code in the file never ran
