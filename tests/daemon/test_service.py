"""`lookalike run` end to end: the real watching service over real folders.

Every test starts the installed `lookalike run -c CONFIG` process on a
temporary inbox (watch.settle_s 0.5 s, periodic rescans off so that what is
answered was seen by the watcher or the start-up scan), drops, edits and
deletes real digit images, and waits, by polling the file system against a
deadline, for the results files the design promises. Each start pays for
TensorFlow's import (3-4 s), so a test makes several checks on one process.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from lookalike.core import ranking
from tests.daemon.service import (
    ANSWER_S,
    SCHEMA,
    SETTINGS,
    START_S,
    SUFFIX,
    TEMP_PREFIX,
    Answered,
    K,
    NotifySocket,
    Start,
    fill,
    launcher,
    names,
    problems_of,
    read_results,
    results_of,
    temporaries,
    wait_answered,
)
from tests.helpers import LOOKALIKE

pytestmark = pytest.mark.slow


def configure(make_config: Callable[..., Path], **overrides: Any) -> Path:
    """make_config with this module's fast settings; nested overrides merge into them."""
    settings = {key: dict(value) for key, value in SETTINGS.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and key in settings:
            settings[key].update(value)
        else:
            settings[key] = value
    return make_config(**settings)


# -- images ----------------------------------------------------------------------
def big_png(source: Path, side: int = 800) -> bytes:
    """The digit of `source` blown up to side x side with noise: a large PNG (~side² bytes)."""
    gray = np.asarray(Image.open(source).convert("L").resize((side, side)), dtype=np.int16)
    noise = np.random.default_rng(0).integers(-6, 7, gray.shape)
    pixels = np.clip(gray + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, format="PNG", compress_level=0)
    return out.getvalue()


def write_slowly(path: Path, data: bytes, seconds: float = 3.0, chunks: int = 40) -> None:
    """Write `data` to `path` in chunks spread over `seconds`, flushed, like a slow copy."""
    size = -(-len(data) // chunks)
    with open(path, "wb") as out:
        for start in range(0, len(data), size):
            out.write(data[start:start + size])
            out.flush()
            os.fsync(out.fileno())
            time.sleep(seconds / chunks)  # the pace of the copy, not a wait for the service


def library_rows(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The library's images table, read-only, by path."""
    database = sqlite3.connect(f"file:{state_dir / 'library.sqlite'}?mode=ro", uri=True)
    try:
        rows = database.execute("SELECT path, size, deleted, error_code FROM images")
        return {path: {"size": size, "deleted": deleted, "error_code": error_code}
                for path, size, deleted, error_code in rows}
    finally:
        database.close()


# -- systemd's notify socket -------------------------------------------------------------
@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    folder = tmp_path
    if len(str(tmp_path / "notify")) > 100:  # sun_path holds 108 bytes
        folder = Path(tempfile.mkdtemp(prefix="lk-"))
    listener = NotifySocket(folder / "notify")
    try:
        yield listener
    finally:
        listener.close()
        if folder != tmp_path:
            shutil.rmtree(folder)


# -- 1. a burst of 200, arriving every way a file arrives ---------------------------------------
def test_a_burst_of_200_images_arriving_every_way_is_answered_whole(
        tmp_path: Path, make_config: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]]) -> None:
    config = configure(make_config, log_level="debug")
    inbox = tmp_path / "inbox"
    run = start(config)
    run.ready()

    staging, outside = tmp_path / "staging", tmp_path / "outside"
    staging.mkdir()
    source = {path.name: path for path, _ in digit_files[:200]}
    copied = [path.name for path, _ in digit_files[:120]]
    renamed = [path.name for path, _ in digit_files[120:160]]
    nested = [f"batch/{path.name}" for path, _ in digit_files[160:180]] + \
             [f"batch/deeper/{path.name}" for path, _ in digit_files[180:199]]
    slow = "slow/big.png"
    data = big_png(digit_files[199][0])
    (inbox / "slow").mkdir()
    writer = threading.Thread(target=write_slowly, args=(inbox / slow, data), name="slow copy")
    writer.start()
    try:
        for name in copied:  # shutil.copy: created, written and closed in place
            shutil.copy(source[name], inbox / name)
        for name in renamed:  # written elsewhere on the same disk, renamed in whole
            shutil.copy(source[name], staging / name)
            os.rename(staging / name, inbox / name)
        for relative in nested:  # a folder filled outside, then moved in with its files
            (outside / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source[Path(relative).name], outside / relative)
        os.rename(outside / "batch", inbox / "batch")
    finally:
        writer.join()
    images = copied + renamed + nested + [slow]
    assert len(images) == 200

    answered = wait_answered(run, inbox, images)
    assert run.process.poll() is None
    assert answered[slow]["status"] == "ok"
    rows = library_rows(run.state_dir)
    assert set(rows) == set(images)
    assert rows[slow]["size"] == len(data) == (inbox / slow).stat().st_size
    # read once, whole: one encoding, never an error for it on the way
    log = run.text()
    assert log.count(f"{slow}: encoded") == 1, [line for line in log.splitlines() if slow in line]
    assert not [line for line in log.splitlines() if slow in line and "WARNING" in line]
    # the watcher never took our own files for images
    assert not [p for p in rows if p.endswith(SUFFIX) or Path(p).name.startswith(".")]
    assert "Traceback" not in log
    report = json.loads(subprocess.run(
        [str(LOOKALIKE), "status", "--json", "-c", str(config)], capture_output=True,
        text=True, check=True, timeout=60).stdout)
    assert report["library"]["images"] == 200
    assert report["service"]["pid"] == run.pid
    assert report["service"]["folders"] == {"inbox": "watched", "queries": "watched"}
    assert run.terminate() == 0
    assert temporaries(inbox) == []


# -- 2. deletions, edits and moves ---------------------------------------------------------
def namers(image: str, documents: dict[str, dict[str, Any]]) -> list[str]:
    """The images whose results name `image`."""
    return sorted(other for other, document in documents.items()
                  if other != image and image in names(document))


def test_deleted_edited_and_moved_images_change_the_results_of_the_others(
        tmp_path: Path, make_config: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]]) -> None:
    config = configure(make_config)
    inbox = tmp_path / "inbox"
    images = fill(inbox, digit_files[:50]) + [f"album/{name}" for name in
                                         fill(inbox / "album", digit_files[50:60])]
    labels = {source.name: label for source, label in digit_files[:60]}
    run = start(config)
    run.ready()
    before = wait_answered(run, inbox, images)

    def forgotten(image: str) -> Callable[[], bool]:
        """Its results file gone from the inbox and no results file naming it."""
        return lambda: not Path(str(inbox / image) + SUFFIX).exists() \
            and not namers(image, results_of(inbox))

    # delete the image that the most results name
    victim = max(images, key=lambda image: (len(namers(image, before)), image))
    assert namers(victim, before), "no image is named by another: nothing to prove"
    (inbox / victim).unlink()
    rest = [image for image in images if image != victim]
    run.wait(forgotten(victim), what=f"the results of {victim} to go and no other to name it")
    after_delete = wait_answered(run, inbox, rest)

    # edit: overwrite an image (named by others) with the bytes of a digit of another label
    edited = max((image for image in rest if "/" not in image),
                 key=lambda image: (len(namers(image, after_delete)), image))
    named_by = namers(edited, after_delete)
    assert named_by
    replacement = next(source for source, label in digit_files[60:] if label != labels[edited])
    mtimes = {image: Path(str(inbox / image) + SUFFIX).stat().st_mtime_ns
              for image in named_by}
    shutil.copyfile(replacement, inbox / edited)

    def pairs(document: dict[str, Any] | None) -> list[tuple[str, float]]:
        return [] if document is None else [(n["path"], n["distance"])
                                            for n in document["neighbors"]]

    run.wait(lambda: pairs(read_results(inbox / edited)) not in ([], pairs(
        after_delete[edited])), what=f"new results for the edited {edited}")
    run.wait(lambda: all(Path(str(inbox / image) + SUFFIX).stat().st_mtime_ns != mtimes[image]
                         for image in named_by),
             what=f"the results that named the edited image to be rewritten: {named_by}")
    after_edit = wait_answered(run, inbox, rest)
    for image in named_by:  # rewritten for the image's new content, not just touched
        old, new = dict(pairs(after_delete[image])), dict(pairs(after_edit[image]))
        assert new.get(edited) != old[edited], f"{image} keeps the old distance to {edited}"

    # moves within the inbox: one image into a new sub-folder, a whole folder into another;
    # each takes its vector from the library rather than being decoded and encoded again
    said = len(run.text())
    within = next(image for image in rest if "/" not in image and image != edited)
    (inbox / "moved").mkdir()
    os.rename(inbox / within, inbox / "moved" / within)
    (inbox / "trips").mkdir()
    os.rename(inbox / "album", inbox / "trips" / "album")
    album = [image for image in rest if image.startswith("album/")]
    trip = [f"trips/{image}" for image in album]
    rest = [image for image in rest if image not in (within, *album)] + [f"moved/{within}"]
    for image in (within, *album):
        run.wait(forgotten(image), what=f"{image} to leave every results file")
    wait_answered(run, inbox, rest + trip)

    def counted() -> tuple[int, int]:  # (encoded, reused) of the bursts since the moves
        bursts = [re.search(r"; (\d+) encoded, (\d+) reused", line)
                  for line in run.text()[said:].splitlines() if " burst: " in line]
        return (sum(int(b.group(1)) for b in bursts if b),
                sum(int(b.group(2)) for b in bursts if b))

    run.wait(lambda: counted()[1] >= 1 + len(album), what="the bursts of the moves to end")
    assert counted() == (0, 1 + len(album))

    # moves out: one image, a whole folder
    out = next(image for image in rest if "/" not in image and image not in (edited, within))
    os.rename(inbox / out, tmp_path / out)
    os.rename(inbox / "trips", tmp_path / "trips")
    rest = [image for image in rest if image != out]
    for image in (out, *trip):
        run.wait(forgotten(image), what=f"{image} to leave every results file")
    final = wait_answered(run, inbox, rest)
    moved_out = sorted(p.name for p in (tmp_path / "trips/album").iterdir())  # with results
    assert moved_out == sorted(name for image in album
                               for name in (image[6:], image[6:] + SUFFIX))
    live = {path for path, row in library_rows(run.state_dir).items() if not row["deleted"]}
    assert live == set(rest)
    assert final.keys() == results_of(inbox).keys()
    assert run.terminate() == 0


# -- 3. SIGTERM, images while down, start-up rescan; the notify protocol -----------------------
def test_sigterm_exits_0_and_a_restart_answers_what_came_while_down(
        tmp_path: Path, make_config: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]], notify_socket: NotifySocket) -> None:
    config = configure(make_config)
    inbox = tmp_path / "inbox"
    images = fill(inbox, digit_files[:30])
    run = start(config, NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="4000000")
    run.wait(lambda: notify_socket.saw("READY=1"), START_S, "READY=1 on NOTIFY_SOCKET")
    ready_at = len(notify_socket.messages)
    ready = next(message for message in notify_socket.messages if "READY=1" in message)
    assert "STATUS=30 images" in ready, ready  # the start-up scan was done before READY
    wait_answered(run, inbox, images)
    run.wait(lambda: notify_socket.saw_prefix("STATUS=", after=ready_at), 10,
             "a STATUS= update after READY")
    run.wait(lambda: notify_socket.saw("WATCHDOG=1", after=ready_at), 4,
             "a WATCHDOG=1 ping (WATCHDOG_USEC is 4 s)")
    before = len(notify_socket.messages)

    # SIGTERM in the middle of a burst: the batch in hand is finished or handed back
    burst = fill(inbox, digit_files[30:230])
    run.wait(lambda: sum(Path(str(inbox / image) + SUFFIX).exists() for image in burst) >= 5,
             what="the first results of the burst")
    started = time.monotonic()
    assert run.terminate() == 0
    assert time.monotonic() - started < 5
    assert notify_socket.saw("STOPPING=1", after=before), notify_socket.messages
    log = run.text()
    assert "stopping" in log and "stopped:" in log and "Traceback" not in log
    assert json.loads((run.state_dir / "service.json").read_text())["state"] == "stopped"
    assert not all(Path(str(inbox / image) + SUFFIX).exists() for image in burst), \
        "the burst was all answered before SIGTERM: nothing left to prove"

    # while it is down: ten new images (one in a new folder), one deleted
    fresh = fill(inbox, digit_files[230:239]) + fill(inbox / "later", digit_files[239:240])
    fresh[-1] = f"later/{fresh[-1]}"
    gone = images[0]
    (inbox / gone).unlink()
    (inbox / (images[1] + SUFFIX)).unlink()  # a results file deleted by hand: written again

    again = start(config)
    again.ready()
    remaining = images[1:] + burst + fresh
    wait_answered(again, inbox, remaining)
    assert not Path(str(inbox / gone) + SUFFIX).exists()
    assert not [image for image, document in results_of(inbox).items()
                if gone in names(document)]
    assert {path for path, row in library_rows(again.state_dir).items()
            if not row["deleted"]} == set(remaining)
    assert again.terminate() == 0
    assert temporaries(inbox) == []
    # Changes mark what they make out of date: the next start's check measures, it need
    # not search all.
    database = sqlite3.connect(f"file:{again.state_dir / 'library.sqlite'}?mode=ro", uri=True)
    meta = dict(database.execute("SELECT key, value FROM meta").fetchall())
    database.close()
    assert meta["changes_mark_results"] == "1" and meta.get("full_check_wanted", "0") == "0"


# -- 4. SIGKILL in the middle of a burst -----------------------------------------------------
@dataclass
class Crash:
    inbox: Path
    images: list[str]
    answered_before_kill: int
    planted: str  # a temporary results file as a kill during a write leaves it
    temporaries_after: list[str]
    documents: dict[str, dict[str, Any] | str]  # parsed, or why not
    integrity: str
    exit_code: int
    log: str


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory, encoder_path: Path,
          digit_files: list[tuple[Path, int]]) -> Iterator[Crash]:
    """300 images copied into a running service, SIGKILL after the first results, restart."""
    root = tmp_path_factory.mktemp("crash")
    settings = {"inbox": "./inbox", "query_dir": None, "state_dir": "./state",
                "model": str(encoder_path), **SETTINGS}
    (root / "config.yaml").write_text(yaml.safe_dump(settings))
    config, inbox = root / "config.yaml", root / "inbox"
    inbox.mkdir()
    with launcher(root) as launch:
        run = launch(config)
        run.ready()
        images = fill(inbox, digit_files[:300])
        run.wait(lambda: len(list(inbox.glob("*" + SUFFIX))) >= 5, ANSWER_S,
                 "the first results files")
        run.process.send_signal(signal.SIGKILL)
        run.process.wait(10)
        answered = len(list(inbox.glob("*" + SUFFIX)))
        planted = f"{TEMP_PREFIX}killed.tmp"
        (inbox / planted).write_text('{"schema": "lookalike.neigh')  # cut off mid-write

        again = launch(config)
        again.ready()
        try:
            again.wait(Answered(inbox, images), ANSWER_S * 2,
                       "every image answered after the restart")
        except AssertionError:
            pass  # the tests below say what is missing
        documents: dict[str, dict[str, Any] | str] = {}
        for path in inbox.glob("*" + SUFFIX):
            try:
                documents[path.name[:-len(SUFFIX)]] = json.loads(path.read_text("utf-8"))
            except ValueError as error:
                documents[path.name[:-len(SUFFIX)]] = f"does not parse: {error}"
        leftovers = temporaries(inbox)
        code = again.terminate()
        database = sqlite3.connect(f"file:{root / 'state/library.sqlite'}?mode=ro", uri=True)
        integrity = database.execute("PRAGMA integrity_check").fetchone()[0]
        database.close()
        yield Crash(inbox, images, answered, planted, leftovers, documents, integrity, code,
                    again.text())


def test_sigkill_mid_burst_then_restart_loses_nothing(crash: Crash) -> None:
    assert 5 <= crash.answered_before_kill < 300, "the kill came too late to prove anything"
    unparsed = {image: why for image, why in crash.documents.items() if isinstance(why, str)}
    assert not unparsed
    problems = [problem for image in crash.images for problem in problems_of(
        crash.documents.get(image), image, crash.inbox)]  # type: ignore[arg-type]
    assert not problems, f"{problems[:10]}\nlog tail:\n{crash.log[-4000:]}"
    assert set(crash.documents) == set(crash.images)
    assert crash.integrity == "ok"
    assert crash.exit_code == 0
    assert "Traceback" not in crash.log


def test_restart_after_sigkill_leaves_no_temporary_files(crash: Crash) -> None:
    """A kill between mkstemp and rename leaves a `.lookalike-*.tmp`; the restart removes it."""
    assert crash.planted not in crash.temporaries_after
    assert crash.temporaries_after == []


# -- 5. one state directory, one service ------------------------------------------------------
def test_a_second_instance_on_the_same_state_refuses_and_the_first_goes_on(
        tmp_path: Path, make_config: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]]) -> None:
    config = configure(make_config)
    inbox = tmp_path / "inbox"
    images = fill(inbox, digit_files[:20])
    first = start(config)
    first.ready()

    started = time.monotonic()
    second = subprocess.run([str(LOOKALIKE), "run", "-c", str(config)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert time.monotonic() - started < 10
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert "Traceback" not in second.stderr
    assert f"pid {first.pid}" in lines[0] and str(first.state_dir) in lines[0], lines[0]

    assert first.process.poll() is None
    (inbox / "after.png").write_bytes(digit_files[20][0].read_bytes())
    wait_answered(first, inbox, [*images, "after.png"])
    assert first.terminate() == 0


# -- 6 and 9. the query folder; unusable files -----------------------------------------------
def test_query_images_are_answered_not_added_and_unusable_files_get_error_results(
        tmp_path: Path, make_config: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]]) -> None:
    config = configure(make_config, watch={"exclude": ["drafts/*"]})
    inbox, queries = tmp_path / "inbox", tmp_path / "queries"
    images = fill(inbox, digit_files[:40])
    run = start(config)
    run.ready()
    wait_answered(run, inbox, images)

    shutil.copy(digit_files[40][0], queries / "look.png")
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "notes.jpg").write_text("shopping: milk, eggs\n", encoding="utf-8")
    whole = digit_files[41][0].read_bytes()
    (inbox / "truncated.png").write_bytes(whole[:len(whole) // 2])
    ignored = [".hidden.png", "drafts/draft.png"]  # hidden; excluded by watch.exclude
    (inbox / "drafts").mkdir()
    for name in ignored:
        shutil.copy(digit_files[43][0], inbox / name)

    query = run.wait(lambda: read_results(queries / "look.png"), what="the query's results")
    assert not problems_of(query, "look.png", inbox), query
    assert set(names(query)) <= set(images)
    expected = {"empty.jpg": "empty", "notes.jpg": "not_an_image", "truncated.png": "truncated"}
    for name, code in expected.items():
        document = run.wait(lambda name=name: read_results(inbox / name),  # type: ignore[misc]
                            what=f"the results of {name}")
        assert document["schema"] == SCHEMA and document["status"] == "error", document
        assert document["query"] == name
        assert document["error"]["code"] == code, document
        assert document["error"]["message"]
        assert (inbox / name).exists()  # the user's file stays

    # the service goes on: a good image after the bad ones is answered, and names no bad one
    shutil.copy(digit_files[42][0], inbox / "good.png")
    answered = wait_answered(run, inbox, [*images, "good.png"])
    assert not any(set(names(document)) & set(expected) for document in answered.values())
    rows = library_rows(run.state_dir)
    assert "look.png" not in rows and not any(path.startswith("queries") for path in rows)
    assert set(rows) == {*images, "good.png", *expected}
    assert {path: rows[path]["error_code"] for path in expected} == expected
    assert not [name for name in ignored if Path(str(inbox / name) + SUFFIX).exists()]

    # a query image replaced is answered again; one deleted loses its results file
    shutil.copyfile(digit_files[44][0], queries / "look.png")
    run.wait(lambda: (read_results(queries / "look.png") or query)["neighbors"]
             != query["neighbors"], what="new results for the replaced query image")
    (queries / "look.png").unlink()
    run.wait(lambda: not (queries / ("look.png" + SUFFIX)).exists(),
             what="the results of the deleted query image to go")
    assert "look.png" not in library_rows(run.state_dir)
    assert run.process.poll() is None
    assert run.terminate() == 0


# -- 7. the inbox vanishes (an unmounted disk) and comes back ---------------------------------
def test_a_vanished_inbox_forgets_nothing_and_the_service_resumes_when_it_returns(
        tmp_path: Path, make_config: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]]) -> None:
    config = configure(make_config)
    inbox, away = tmp_path / "inbox", tmp_path / "inbox.away"
    images = fill(inbox, digit_files[:30])
    run = start(config)
    run.ready()
    wait_answered(run, inbox, images)

    os.rename(inbox, away)
    report = run.wait(lambda: (run.status() or {}).get("folders", {}).get("inbox") == "missing"
                      and run.status(), what="service.json to report the inbox missing")
    assert report["state"] == "running"
    assert "missing" in run.text()
    assert run.process.poll() is None
    rows = library_rows(run.state_dir)
    assert {path for path, row in rows.items() if not row["deleted"]} == set(images)
    assert all((away / (image + SUFFIX)).exists() for image in images)

    os.rename(away, inbox)
    run.wait(lambda: (run.status() or {}).get("folders", {}).get("inbox") == "watched",
             what="service.json to report the inbox watched again")
    shutil.copy(digit_files[30][0], inbox / "back.png")
    wait_answered(run, inbox, [*images, "back.png"])
    assert not [row for row in library_rows(run.state_dir).values() if row["deleted"]]
    assert run.terminate() == 0


# -- 8. SIGHUP reloads the config ----------------------------------------------------------
def test_sighup_reloads_the_config(
        tmp_path: Path, make_config: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]]) -> None:
    config = configure(make_config)
    inbox = tmp_path / "inbox"
    images = fill(inbox, digit_files[:30])
    run = start(config)
    run.ready()
    wait_answered(run, inbox, images)

    configure(make_config, search={"neighbors": 5}, ingest={"decode_threads": 3})
    run.process.send_signal(signal.SIGHUP)
    run.wait(lambda: "config reloaded from" in run.text(), 10, "the log to say it reloaded")
    assert "restart to apply: decode_threads" in run.text()
    shutil.copy(digit_files[30][0], inbox / "after.png")
    document = run.wait(lambda: read_results(inbox / "after.png"), what="results of after.png")
    assert not problems_of(document, "after.png", inbox, k=5), document
    assert run.process.poll() is None
    assert run.terminate() == 0


# -- beyond the list: what these tests found wrong -------------------------------------
def test_an_inbox_that_returns_as_a_new_folder_is_watched_again(
        tmp_path: Path, make_config: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]]) -> None:
    """A disk mounted again gives the inbox path a new folder (inode), not the one that left."""
    config = configure(make_config)
    inbox, away = tmp_path / "inbox", tmp_path / "inbox.away"
    images = fill(inbox, digit_files[:20])
    run = start(config)
    run.ready()
    wait_answered(run, inbox, images)

    os.rename(inbox, away)
    run.wait(lambda: (run.status() or {}).get("folders", {}).get("inbox") == "missing",
             what="service.json to report the inbox missing")
    shutil.copytree(away, inbox)  # the same files, in a new folder at the same path
    run.wait(lambda: (run.status() or {}).get("folders", {}).get("inbox") == "watched",
             what="service.json to report the inbox watched again")
    shutil.copy(digit_files[20][0], inbox / "back.png")
    wait_answered(run, inbox, [*images, "back.png"], timeout=10)  # ~1 s when it works
    assert run.terminate() == 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_file_being_written_slowly_does_not_keep_the_service_busy(
        tmp_path: Path, make_config: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]], notify_socket: NotifySocket) -> None:
    """A slow upload can take hours; waiting for it to settle must not burn a CPU, nor flood
    systemd with watchdog pings (WATCHDOG_USEC 4 s: one every 2 s is plenty)."""
    config = configure(make_config)
    inbox = tmp_path / "inbox"
    images = fill(inbox, digit_files[:20])
    run = start(config, NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="4000000")
    run.ready()
    wait_answered(run, inbox, images)

    data, chunks, seconds = big_png(digit_files[20][0], side=300), 20, 2.0
    size = -(-len(data) // chunks)
    with open(inbox / "upload.png", "wb") as out:
        cpu, since = cpu_seconds(run.pid), time.monotonic()
        for start_at in range(0, len(data), size):
            out.write(data[start_at:start_at + size])
            out.flush()
            time.sleep(seconds / chunks)  # the pace of the upload
        until = time.monotonic()
        busy = (cpu_seconds(run.pid) - cpu) / (until - since)
    answered = wait_answered(run, inbox, [*images, "upload.png"])
    assert answered["upload.png"]["status"] == "ok"
    pings = notify_socket.count_between("WATCHDOG=1", since, until) / (until - since)
    assert busy < 0.25 and pings < 10, \
        f"while waiting for the upload the service used {busy:.0%} of a CPU " \
        f"and sent {pings:.0f} WATCHDOG=1 a second"
    assert run.terminate() == 0


def look_alikes(vectors: np.ndarray, image: int, among: list[int]) -> tuple[list[int], float]:
    """The K look-alikes of `image` among the rows `among` of `vectors` (angular), as a
    results file ranks them from its exact candidates (`core.ranking`), and the margin
    of the last of them over the next (0: none next): a tie rounding could decide."""
    others = [row for row in among if row != image]
    distances = np.sqrt(np.clip(2 - 2 * unit(vectors[others]) @ unit(vectors[image]), 0, None))
    near = [others[n] for n in np.argsort(distances, kind="stable")[:ranking.candidates(K)]]
    score = ranking.scores(vectors[image][None], vectors[near][None], "angular")[0]
    places = np.argsort(-score, kind="stable")
    margin = score[places[K - 1]] - score[places[K]] if len(near) > K else 0.0
    return [near[place] for place in places[:K]], float(margin)


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def test_a_new_image_enters_the_results_of_every_image_it_is_near(
        tmp_path: Path, make_config: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]], encoder_path: Path) -> None:
    """DESIGN: "When a new image enters the top-k of an existing image, that image's results
    file is rewritten". Chosen here: the digit that enters the 12 look-alikes of the
    most library images; each of them must come to name it, whether the update on
    arrival saw it (the new image's REVERSE_CANDIDATES x 12 nearest) or the check of
    every results file after the next rebuild did (nearness is not symmetric)."""
    from lookalike.core import images as imaging
    from lookalike.core.encoder import load as load_encoder

    encoder = load_encoder(encoder_path)
    size, tried = 150, 60
    vectors = encoder.encode(np.stack([imaging.load(source, encoder.shape).pixels
                                       for source, _ in digit_files[:size + tried]]))
    library = list(range(size))
    before = [look_alikes(vectors, a, library) for a in library]
    # Rounding cannot decide whether a look-alike is one: ranked clearly before the next.
    entered = {}
    for new in range(size, size + tried):
        after = [look_alikes(vectors, a, [*library, new]) for a in library]
        entered[new] = [a for a, (found, margin) in enumerate(after)
                        if new in found and margin > 5e-6 and before[a][1] > 5e-6]
    new = max(entered, key=lambda row: len(entered[row]))
    assert len(entered[new]) >= 5, "no digit near enough to many"

    config = configure(make_config)
    inbox = tmp_path / "inbox"
    images = fill(inbox, digit_files[:size])
    run = start(config)
    run.ready()
    answered = wait_answered(run, inbox, images)
    dropped = digit_files[new][0].name
    for a in entered[new]:  # the service ranks as we do
        image = digit_files[a][0].name
        assert set(names(answered[image])) == {digit_files[n][0].name for n in before[a][0]}

    shutil.copy(digit_files[new][0], inbox / dropped)
    wait_answered(run, inbox, [*images, dropped])
    for a in entered[new]:
        image = digit_files[a][0].name
        run.wait(lambda: dropped in names(read_results(inbox / image) or {}), 5,  # noqa: B023
                 f"{image}'s results to name {dropped}, now one of its look-alikes")
    assert run.terminate() == 0


def test_above_exact_below_the_service_searches_in_two_stages_and_finds_the_exact_answers(
        tmp_path: Path, make_config: Callable[..., Path], start: Start,
        digit_files: list[tuple[Path, int]]) -> None:
    """Annoy on vectors projected to 8 numbers (of the test encoder's 32), its candidates
    ranked on the full ones: with more candidates than images, every results file lists
    the look-alikes that exact search finds among the vectors the library holds."""
    sources = digit_files[:80]
    config = configure(make_config, index={"exact_below": 0, "dims": 8, "candidates": 100})
    inbox = tmp_path / "inbox"
    images = fill(inbox, sources[:60])
    run = start(config)
    run.ready()
    wait_answered(run, inbox, images)
    fill(inbox, sources[60:])  # after the first build: searched exactly until the next
    current = run.state_dir / "index" / "current.json"
    run.wait(lambda: current.is_file() and json.loads(current.read_text())["items"] == 80, 30,
             "an index of every image")
    built = json.loads(current.read_text())
    wait_answered(run, inbox, [source.name for source, _ in sources])
    answered = results_of(inbox)
    # (not the test's own encoding: TensorFlow's float32 sums differ a little with the
    # batch, and the digits' distances are small enough for that to swap near-ties)
    database = sqlite3.connect(f"file:{run.state_dir / 'library.sqlite'}?mode=ro", uri=True)
    held = dict(database.execute("SELECT path, latent FROM images"))
    database.close()
    vectors = np.stack([np.frombuffer(held[source.name], "<f4") for source, _ in sources])
    between = np.sqrt(np.clip(2 - 2 * unit(vectors) @ unit(vectors).T, 0, None))
    assert (built["kind"], built["dim"], built["reduced"]) == ("annoy", vectors.shape[1], 8)
    assert (run.state_dir / "index" / f"{built['generation']}.axes.npy").is_file()
    position = {source.name: n for n, (source, _) in enumerate(sources)}
    for i, (source, _) in enumerate(sources):  # the exact distances, and ties either way
        listed = answered[source.name]["neighbors"]
        expected, _ = look_alikes(vectors, i, list(range(len(sources))))
        assert np.allclose(sorted(n["distance"] for n in listed),
                           sorted(between[i][expected]), atol=1e-4)
        assert np.allclose([n["distance"] for n in listed],
                           [between[i][position[n["path"]]] for n in listed], atol=1e-4)
    assert run.terminate() == 0
