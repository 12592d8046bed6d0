"""`lookalike run --once` end to end: the real process over real digit images.

Scenarios are shared between tests, because each run that encodes pays for
TensorFlow's import (and run side by side, `scenarios`):

- `library`: 300 labelled digits (some in nested folders), three unusable
  files and two query images, run twice (and a third time after a query
  image was replaced);
- `edited`: 60 digits and an empty file, run; then one image deleted, one
  replaced, one overwritten with text, the empty file filled, one new image
  and one exact copy added; run again;
- `answered`: 30 digits run once, copied by each test that changes it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from lookalike.core.card import model_id
from lookalike.core.store import Library as StoredLibrary
from tests.core.test_copies import made_copies, picture
from tests.daemon.service import SCHEMA, SUFFIX, results_of
from tests.helpers import Scenarios, side_by_side, write_config

SUMMARY = re.compile(r"^(?P<images>\d+) images in the library: (?P<added>\d+) added, "
                     r"(?P<updated>\d+) updated, (?P<removed>\d+) removed, "
                     r"(?P<unusable>\d+) unusable, (?P<written>\d+) results written; "
                     r"(?P<encoded>\d+) encoded, (?P<reused>\d+) reused \(same bytes\) "
                     r"in [\d.]+ s(?: \([\d,]+ images/s\))?$")
UNUSABLE = {"empty.jpg": "empty", "notes.jpg": "not_an_image", "broken/truncated.png": "truncated"}
QUERY = "look.png"  # the image of the query folder
TWIN_QUERY = "same.png"  # a query that is an exact copy of an inbox image
REPLACEMENT = "0003.png"  # an inbox image copied over QUERY before a third run

pytestmark = pytest.mark.slow


@dataclass
class Pass:
    """One finished `lookalike run --once`."""

    process: subprocess.CompletedProcess[str]

    @property
    def summary(self) -> dict[str, int]:
        """The numbers of the summary line (the last line on stdout)."""
        lines = self.process.stdout.strip().splitlines()
        assert lines, f"no summary on stdout; stderr:\n{self.process.stderr}"
        match = SUMMARY.match(lines[-1])
        assert match, f"not a summary line: {lines[-1]!r}"
        return {key: int(value) for key, value in match.groupdict().items()}


def run_once(lookalike: Callable[..., subprocess.CompletedProcess[str]], config: Path) -> Pass:
    finished = Pass(lookalike("run", "--once", "-c", config))
    assert finished.process.returncode == 0, finished.process.stderr
    assert "Traceback" not in finished.process.stderr
    return finished


def user_files(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below `folder` that is not a results file, by relative path."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.name.endswith(SUFFIX)}


def mtimes(folder: Path) -> dict[str, int]:
    """The mtime (ns) of every results file below `folder`, by relative path."""
    return {path.relative_to(folder).as_posix(): path.stat().st_mtime_ns
            for path in folder.rglob("*" + SUFFIX)}


def results_mtimes(root: Path) -> dict[str, int]:
    """`mtimes` of root/inbox and root/queries, under those names."""
    return {f"{name}/{path}": mtime for name in ("inbox", "queries")
            for path, mtime in mtimes(root / name).items()}


def neighbor_paths(document: dict[str, object]) -> list[str]:
    """The paths a results document names (none for an error document)."""
    neighbors = document.get("neighbors", [])
    assert isinstance(neighbors, list)
    return [n["path"] for n in neighbors]


# -- 300 digits, run twice (and once more) --------------------------------------
@dataclass
class Library:
    root: Path
    inbox: Path
    queries: Path
    labels: dict[str, int]  # inbox image -> digit
    hashes_before: dict[str, str]  # user files of inbox/ and queries/ (under those names)
    hashes_after_first: dict[str, str]
    hashes_after_second: dict[str, str]
    first: Pass
    second: Pass
    results_after_first: dict[str, dict[str, object]]
    mtimes_after_first: dict[str, int]
    mtimes_after_second: dict[str, int]
    status: dict[str, object]  # `status --json` after the second run
    queries_after_second: dict[str, dict[str, object]]
    third: Pass  # after QUERY was replaced by a copy of an inbox image (`cp -p`)
    query_after_third: dict[str, object]


def both_folders(root: Path) -> dict[str, str]:
    return {f"{name}/{path}": digest for name in ("inbox", "queries")
            for path, digest in user_files(root / name).items()}


def three_runs(root: Path, config_in: Callable[..., Path], digit_files: list[tuple[Path, int]],
               lookalike: Callable[..., subprocess.CompletedProcess[str]]) -> Library:
    config = config_in(root)
    inbox, queries = root / "inbox", root / "queries"
    labels: dict[str, int] = {}
    for n, (source, label) in enumerate(digit_files[:300]):
        # a third each: at the top, one level down, three levels down
        relative = [source.name, f"scans/{label}/{source.name}",
                    f"scans/batch two/deeper/{source.name}"][n % 3]
        if n % 25 == 0:  # as some cameras name them
            relative = relative.replace(".png", ".PNG")
        (inbox / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, inbox / relative)
        labels[relative] = label
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "notes.jpg").write_text("shopping: milk, eggs\n", encoding="utf-8")
    (inbox / "broken").mkdir()
    whole = digit_files[300][0].read_bytes()
    (inbox / "broken/truncated.png").write_bytes(whole[:len(whole) // 2])
    shutil.copy(digit_files[1500][0], queries / QUERY)  # a digit not in the inbox
    shutil.copy(inbox / "scans/batch two/deeper/0002.png", queries / TWIN_QUERY)

    hashes_before = both_folders(root)
    first = run_once(lookalike, config)
    hashes_after_first = both_folders(root)
    results_after_first = results_of(inbox)
    mtimes_after_first = results_mtimes(root)
    second = run_once(lookalike, config)
    mtimes_after_second = results_mtimes(root)
    hashes_after_second = both_folders(root)
    status = lookalike("status", "--json", "-c", config)
    assert status.returncode == 0, status.stderr
    queries_after_second = results_of(queries)

    # as `mv` and `cp -p` do: new content, the old file's (earlier) mtime
    shutil.copy2(inbox / REPLACEMENT, queries / QUERY)
    third = run_once(lookalike, config)
    return Library(root, inbox, queries, labels, hashes_before, hashes_after_first,
                   hashes_after_second, first, second, results_after_first, mtimes_after_first,
                   mtimes_after_second, json.loads(status.stdout), queries_after_second, third,
                   results_of(queries)[QUERY])


def test_first_run_reads_every_file_and_exits_0(library: Library) -> None:
    summary = library.first.summary
    assert summary["encoded"] + summary["reused"] == 300  # (digits whose bytes repeat: reused)
    assert {key: summary[key] for key in ("images", "added", "updated", "removed", "unusable",
                                          "written")} == {
        "images": 303, "added": 300, "updated": 0, "removed": 0, "unusable": 3, "written": 305}


MADE_LITE = "its TensorFlow Lite form made in"


def test_the_encoders_lite_form_is_made_and_kept_in_the_state(library: Library) -> None:
    assert MADE_LITE in library.first.process.stderr
    assert [path.parent.name for path in (library.root / "state").rglob("*.tflite")] == ["lite"]


def test_one_results_file_per_image(library: Library) -> None:
    images = set(library.labels) | set(UNUSABLE)
    assert sum(image.endswith(".PNG") for image in images) == 12
    assert set(library.results_after_first) == images
    # nothing else appeared in the inbox: no temporary files, no state
    everything = {p.relative_to(library.inbox).as_posix() for p in library.inbox.rglob("*")
                  if p.is_file()}
    assert everything == images | {image + SUFFIX for image in images}


def test_results_name_12_other_inbox_images_nearest_first(library: Library,
                                                          encoder_path: Path) -> None:
    model = model_id(encoder_path)
    built = library.status["index"]
    assert isinstance(built, dict) and built["items"] == 300
    for image in library.labels:
        document = library.results_after_first[image]
        assert document["schema"] == SCHEMA
        assert document["index"] == {"generation": built["generation"], "items": 300, "pending": 0}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(document["written_at"]))
        assert document["status"] == "ok", document
        assert document["query"] == image
        assert document["model"] == model
        assert document["metric"] == "angular"
        neighbors = document["neighbors"]
        assert isinstance(neighbors, list) and len(neighbors) == 12, image
        assert [n["rank"] for n in neighbors] == list(range(1, 13))
        paths = neighbor_paths(document)
        assert image not in paths
        assert len(set(paths)) == 12, f"{image} names a neighbour twice: {paths}"
        assert set(paths) <= set(library.labels), f"{image} names unusable or unknown files"
        assert all((library.inbox / path).is_file() for path in paths)
        distances = [n["distance"] for n in neighbors]  # (ranked, not sorted: core.ranking)
        assert all(0.0 <= d <= 2.0 for d in distances), f"{image}: {distances}"
        assert not any(n["duplicate"] for n in neighbors)  # the digits hold no two equal files


def test_neighbors_mostly_share_the_label(library: Library) -> None:
    same = total = 0
    for image, label in library.labels.items():
        for path in neighbor_paths(library.results_after_first[image]):
            total += 1
            same += library.labels[path] == label
    # chance is 0.1; the 3-epoch test encoder reaches about 0.8 on these 300
    assert total == 300 * 12
    assert same / total > 0.6


def test_unusable_files_get_error_results(library: Library) -> None:
    for image, code in UNUSABLE.items():
        document = library.results_after_first[image]
        assert document["schema"] == SCHEMA
        assert document["status"] == "error"
        assert document["query"] == image
        error = document["error"]
        assert isinstance(error, dict)
        assert error["code"] == code, image
        assert isinstance(error["message"], str) and len(error["message"]) > 5
        assert "neighbors" not in document


def test_second_run_does_no_work(library: Library) -> None:
    assert library.second.summary == {"images": 303, "added": 0, "updated": 0, "removed": 0,
                                      "unusable": 0, "written": 0, "encoded": 0, "reused": 0}
    # With nothing to encode, the encoder (and TensorFlow) is never loaded.
    assert "loaded in" in library.first.process.stderr
    assert "loaded in" not in library.second.process.stderr
    assert len(library.mtimes_after_first) == 305
    assert library.mtimes_after_second == library.mtimes_after_first


def test_query_folder_is_answered_not_added(library: Library) -> None:
    document = library.queries_after_second[QUERY]
    assert document["status"] == "ok"
    assert document["query"] == QUERY
    paths = neighbor_paths(document)
    assert len(paths) == 12 and set(paths) <= set(library.labels)
    assert library.status["library"]["images"] == 303  # type: ignore[index]
    assert all(QUERY not in neighbor_paths(d) for d in library.results_after_first.values()
               if d["status"] == "ok")
    assert set(library.queries_after_second) == {QUERY, TWIN_QUERY}
    assert sorted(p.name for p in library.queries.iterdir()) == \
        [QUERY, QUERY + SUFFIX, TWIN_QUERY, TWIN_QUERY + SUFFIX]


def test_query_that_copies_an_inbox_image_is_flagged_duplicate(library: Library) -> None:
    document = library.queries_after_second[TWIN_QUERY]
    assert document["status"] == "ok"
    neighbors = document["neighbors"]
    assert isinstance(neighbors, list) and len(neighbors) == 12
    assert (neighbors[0]["path"], neighbors[0]["duplicate"]) == ("scans/batch two/deeper/0002.png",
                                                                 True)
    assert not any(n["duplicate"] for n in neighbors[1:])


def test_query_image_replaced_with_an_older_mtime_is_answered_again(library: Library) -> None:
    assert library.third.summary["written"] == 1
    neighbors = library.query_after_third["neighbors"]
    assert isinstance(neighbors, list)
    assert (neighbors[0]["path"], neighbors[0]["duplicate"]) == (REPLACEMENT, True)


def test_user_files_are_never_changed_or_deleted(library: Library) -> None:
    assert len(library.hashes_before) == 300 + len(UNUSABLE) + 2
    assert library.hashes_after_first == library.hashes_before
    assert library.hashes_after_second == library.hashes_before


# -- 60 digits, then a deletion, a replacement, a spoiled file, a new image, a copy
@dataclass
class Edited:
    inbox: Path
    before: dict[str, dict[str, object]]
    after: dict[str, dict[str, object]]
    second: Pass
    victim: str  # deleted
    spoiled: str  # overwritten with text
    mended: str  # empty at first, then given an image
    replaced: str  # given the bytes of `twin`
    twin: str
    new: str  # an image from outside the inbox
    copy: str  # an exact copy of `original`
    original: str
    untouched_before: dict[str, str]
    untouched_after: dict[str, str]


def edits(root: Path, config_in: Callable[..., Path], digit_files: list[tuple[Path, int]],
          lookalike: Callable[..., subprocess.CompletedProcess[str]]) -> Edited:
    config = config_in(root)
    inbox = root / "inbox"
    for source, _ in digit_files[:60]:
        shutil.copy(source, inbox / source.name)
    mended = "later.png"
    (inbox / mended).write_bytes(b"")  # an upload that had not begun
    first = run_once(lookalike, config)
    assert first.summary["unusable"] == 1
    before = results_of(inbox)

    named: dict[str, int] = {}
    for document in before.values():
        for path in neighbor_paths(document):
            named[path] = named.get(path, 0) + 1
    # the two images named by the most results files
    victim, spoiled = sorted(named, key=lambda path: (-named[path], path))[:2]
    others = [image for image in sorted(before) if image not in (victim, spoiled, mended)]
    replaced, twin, original = others[0], others[1], others[2]
    new, copy = "new.png", "copy of " + original

    (inbox / victim).unlink()
    (inbox / spoiled).write_text("this is no longer a picture\n", encoding="utf-8")
    shutil.copyfile(inbox / twin, inbox / replaced)
    shutil.copy(digit_files[1000][0], inbox / new)
    shutil.copy(inbox / original, inbox / copy)
    shutil.copyfile(digit_files[1200][0], inbox / mended)
    untouched_before = user_files(inbox)
    second = run_once(lookalike, config)
    return Edited(inbox, before, results_of(inbox), second, victim, spoiled, mended, replaced,
                  twin, new, copy, original, untouched_before, user_files(inbox))


def thirty_answered(root: Path, encoder_path: Path, digit_files: list[tuple[Path, int]],
                    lookalike: Callable[..., subprocess.CompletedProcess[str]]) -> Path:
    """A folder with a config (`make_config`'s), 30 digits run once, their results and the
    state."""
    config = write_config(root, encoder_path)
    for source, _ in digit_files[:30]:
        shutil.copy(source, root / "inbox" / source.name)
    run_once(lookalike, config)
    return root


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              config_in: Callable[..., Path], encoder_path: Path,
              digit_files: list[tuple[Path, int]],
              lookalike: Callable[..., subprocess.CompletedProcess[str]]
              ) -> Iterator[Scenarios]:
    """This module's shared runs, side by side, each in a folder of its own (most of a
    run's time is TensorFlow's import, on one core)."""
    made: dict[str, Callable[[Path], Any]] = {
        "library": functools.partial(three_runs, config_in=config_in, digit_files=digit_files,
                                     lookalike=lookalike),
        "edited": functools.partial(edits, config_in=config_in, digit_files=digit_files,
                                    lookalike=lookalike),
        "answered": functools.partial(thirty_answered, encoder_path=encoder_path,
                                      digit_files=digit_files, lookalike=lookalike)}
    with side_by_side(request, tmp_path_factory, made) as started:
        yield started


@pytest.fixture(scope="module")
def library(scenarios: Scenarios) -> Library:
    return scenarios.result("library")


@pytest.fixture(scope="module")
def edited(scenarios: Scenarios) -> Edited:
    return scenarios.result("edited")


@pytest.fixture(scope="module")
def answered(scenarios: Scenarios) -> Path:
    return scenarios.result("answered")


@pytest.fixture
def thirty(answered: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of `answered` (mtimes kept) to change: (its config, the 30 images' names)."""
    root = tmp_path / "thirty"
    shutil.copytree(answered, root)
    return root / "config.yaml", sorted(path.name for path in (root / "inbox").glob("*.png"))


def test_edit_run_summary(edited: Edited) -> None:
    assert edited.second.summary["images"] == 61 - 1 + 2
    counts = {key: edited.second.summary[key]
              for key in ("added", "updated", "removed", "unusable", "encoded", "reused")}
    # the exact copy and the file given another's bytes take the library's vectors
    assert counts == {"added": 2, "updated": 2, "removed": 1, "unusable": 1, "encoded": 2,
                      "reused": 2}


def test_a_later_run_encodes_with_the_kept_lite_form(edited: Edited) -> None:
    assert edited.second.summary["encoded"] == 2
    assert MADE_LITE not in edited.second.process.stderr


def test_deleted_image_leaves_every_results_file(edited: Edited) -> None:
    assert edited.victim in edited.before
    naming_before = [image for image, d in edited.before.items()
                     if edited.victim in neighbor_paths(d) and image != edited.spoiled]
    assert naming_before, "the deleted image was named by no results file: a weak test"
    assert not (edited.inbox / (edited.victim + SUFFIX)).exists()
    assert edited.victim not in edited.after
    still_naming = [image for image, d in edited.after.items()
                    if edited.victim in neighbor_paths(d)]
    assert still_naming == []
    for image in naming_before:
        assert len(edited.after[image]["neighbors"]) == 12  # type: ignore[arg-type]


def test_image_that_became_unusable_leaves_every_results_file(edited: Edited) -> None:
    naming_before = [image for image, d in edited.before.items()
                     if edited.spoiled in neighbor_paths(d) and image != edited.victim]
    assert naming_before, "the spoiled image was named by no results file: a weak test"
    document = edited.after[edited.spoiled]
    assert document["status"] == "error"
    assert document["error"]["code"] == "not_an_image"  # type: ignore[index]
    still_naming = [image for image, d in edited.after.items()
                    if d["status"] == "ok" and edited.spoiled in neighbor_paths(d)]
    assert still_naming == []
    for image in naming_before:
        assert len(edited.after[image]["neighbors"]) == 12  # type: ignore[arg-type]


def test_unusable_file_that_becomes_an_image_is_answered(edited: Edited) -> None:
    assert edited.before[edited.mended]["status"] == "error"
    assert edited.before[edited.mended]["error"]["code"] == "empty"  # type: ignore[index]
    document = edited.after[edited.mended]
    assert document["status"] == "ok"
    assert "error" not in document
    paths = neighbor_paths(document)
    assert len(paths) == 12 and edited.mended not in paths


def test_replaced_image_is_re_encoded(edited: Edited) -> None:
    was = edited.before[edited.replaced]["neighbors"]
    assert isinstance(was, list) and not any(n["duplicate"] for n in was)
    now = edited.after[edited.replaced]["neighbors"]
    assert isinstance(now, list)
    # its new content is the twin's: the twin is now its nearest neighbour, an exact duplicate
    assert now[0]["path"] == edited.twin
    assert now[0]["duplicate"] is True
    assert now[0]["distance"] < 0.01
    assert [n["path"] for n in now if n["duplicate"]] == [edited.twin]


def test_new_image_is_added_and_answered(edited: Edited, encoder_path: Path) -> None:
    assert edited.new not in edited.before
    document = edited.after[edited.new]
    assert document["status"] == "ok"
    assert document["query"] == edited.new
    assert document["model"] == model_id(encoder_path)
    paths = neighbor_paths(document)
    assert len(paths) == 12 and edited.new not in paths
    assert all((edited.inbox / path).is_file() for path in paths)


def test_exact_copy_is_flagged_duplicate_both_ways(edited: Edited) -> None:
    copy = edited.after[edited.copy]["neighbors"]
    assert isinstance(copy, list) and len(copy) == 12
    assert (copy[0]["path"], copy[0]["duplicate"]) == (edited.original, True)
    assert not any(n["duplicate"] for n in copy[1:])
    original = edited.after[edited.original]["neighbors"]
    assert isinstance(original, list)
    assert (original[0]["path"], original[0]["duplicate"]) == (edited.copy, True)
    # the twin of the replaced image names it as a duplicate too
    twin = edited.after[edited.twin]["neighbors"]
    assert isinstance(twin, list)
    assert (twin[0]["path"], twin[0]["duplicate"]) == (edited.replaced, True)


def test_edit_run_changes_no_user_file(edited: Edited) -> None:
    assert edited.untouched_after == edited.untouched_before


def test_a_vanished_inbox_forgets_nothing(edited: Edited, tmp_path: Path, encoder_path: Path,
                                          lookalike: Callable[..., subprocess.CompletedProcess[str]]
                                          ) -> None:
    shutil.copytree(edited.inbox.parent / "state", tmp_path / "state")
    unmounted = tmp_path / "disk"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"inbox": str(unmounted), "state_dir": "./state",
                                      "model": str(encoder_path)}), encoding="utf-8")
    finished = lookalike("run", "--once", "-c", config)
    assert finished.returncode != 0
    assert "Traceback" not in finished.stderr
    problems = [line for line in finished.stderr.splitlines() if line.startswith("lookalike: ")]
    assert len(problems) == 1 and str(unmounted) in problems[0], finished.stderr
    assert not unmounted.exists()  # not created over the mount point
    status = lookalike("status", "--json", "-c", config)
    assert json.loads(status.stdout)["library"]["images"] == 62


def test_results_marked_out_of_date_are_rewritten_by_the_next_run(
        thirty: tuple[Path, list[str]],
        lookalike: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """What the service marks before rewriting other images' results survives a crash."""
    config, names = thirty  # 30 digits, run once
    stale, fresh = (config.parent / "inbox" / (name + SUFFIX) for name in names[:2])
    stale.write_text('{"schema": "lookalike.neighbors/1", "status": "ok"}\n')  # as if old
    before = fresh.stat().st_mtime_ns
    with StoredLibrary(config.parent / "state" / "library.sqlite") as stored:
        stored.mark_outdated([stored.records()[names[0]].id])
    assert run_once(lookalike, config).summary["written"] == 1
    assert json.loads(stale.read_text())["neighbors"]
    assert fresh.stat().st_mtime_ns == before


def test_a_results_file_deleted_by_hand_is_written_again_alone(
        thirty: tuple[Path, list[str]],
        lookalike: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """The scan sees which results files are there: only the missing one is written."""
    config, names = thirty  # 30 digits, run once
    gone = config.parent / "inbox" / (names[3] + SUFFIX)
    gone.unlink()
    assert run_once(lookalike, config).summary["written"] == 1
    assert json.loads(gone.read_text())["query"] == names[3]


# -- a folder moved within the inbox ------------------------------------------------------
def test_a_folder_moved_within_the_inbox_is_answered_as_before_without_encoding(
        tmp_path: Path, config_in: Callable[..., Path], digit_files: list[tuple[Path, int]],
        lookalike: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    config = config_in(tmp_path)
    inbox = tmp_path / "inbox"
    (inbox / "scans").mkdir()
    for n, (source, _) in enumerate(digit_files[:80]):  # half of them in scans/
        shutil.copy(source, inbox / ("scans" if n % 2 else ".") / source.name)
    original = picture()  # and a photo with copies of it, marked near-duplicates
    original.save(inbox / "scans" / "photo.jpg", quality=95)
    for kind, copy in made_copies(original).items():
        copy.save(inbox / ("scans" if kind in ("half", "gray") else ".") / f"photo-{kind}.jpg")
    run_once(lookalike, config)
    before = results_of(inbox)
    assert sum(n["near_duplicate"] for n in before["scans/photo.jpg"]["neighbors"]) >= 3
    (inbox / "archive").mkdir()
    (inbox / "scans").rename(inbox / "archive" / "scans 2024")  # mv

    moved = run_once(lookalike, config)
    assert {key: moved.summary[key] for key in ("added", "removed", "encoded", "reused")} == {
        "added": 43, "removed": 43, "encoded": 0, "reused": 43}
    after = results_of(inbox)

    def names_of(document: dict[str, Any]) -> list[str]:
        return [n["path"] for n in document["neighbors"]]

    def renamed(path: str) -> str:
        return "archive/scans 2024/" + path[6:] if path.startswith("scans/") else path

    assert set(after) == {renamed(image) for image in before}
    for image, document in before.items():
        now = after[renamed(image)]
        assert now["query"] == renamed(image) and now["status"] == "ok"
        # the same neighbours at the same distances, under their new names (measured again
        # in float64: a search's float32 scores leave up to 3e-4 near 0, and near-ties may
        # change places)
        assert {renamed(n["path"]) for n in document["neighbors"]} == set(names_of(now)), image
        assert np.allclose([n["distance"] for n in document["neighbors"]],
                           [n["distance"] for n in now["neighbors"]], atol=1e-3), image
        # the same near-duplicate marks, carried (the same pictures at the same distances)
        assert {renamed(n["path"]) for n in document["neighbors"] if n["near_duplicate"]} == \
            {n["path"] for n in now["neighbors"] if n["near_duplicate"]}, image
