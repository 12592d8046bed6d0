"""The results file (schema, atomic writes, removal) and which files a scan picks up."""
from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lookalike.core import results, scan

MODEL = "sha256:" + "d" * 64
WRITTEN_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def document(distance: float = 0.21) -> dict[str, Any]:
    return results.ok("portraits/00007.jpg", MODEL, "angular",
                      [results.Found("portraits/00024.jpg", distance, False),
                       results.Found("portraits/copy of 00007.jpg", 0.0, True)],
                      generation=7, items=9683, pending=3)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- the results document -------------------------------------------------------
def test_ok_document_follows_the_design() -> None:
    written = document(0.123456789)
    assert list(written) == ["schema", "status", "query", "model", "metric", "neighbors", "index",
                             "written_at"]
    assert written["schema"] == "lookalike.neighbors/1"
    assert (written["status"], written["query"], written["model"], written["metric"]) == (
        "ok", "portraits/00007.jpg", MODEL, "angular")
    assert written["neighbors"] == [
        {"rank": 1, "path": "portraits/00024.jpg", "distance": 0.123457, "duplicate": False,
         "near_duplicate": False},
        {"rank": 2, "path": "portraits/copy of 00007.jpg", "distance": 0.0, "duplicate": True,
         "near_duplicate": True}]  # identical bytes are a near-duplicate too
    assert written["index"] == {"generation": 7, "items": 9683, "pending": 3}
    assert WRITTEN_AT.match(written["written_at"])
    assert "error" not in written
    json.dumps(written)  # plain JSON types only


def test_ok_document_with_no_neighbours() -> None:
    empty = results.ok("a.jpg", MODEL, "angular", [], generation=0, items=0, pending=0)
    assert empty["neighbors"] == [] and empty["status"] == "ok"


@pytest.mark.parametrize("path", ["plain/a.jpg", 'quote " and back\\slash.jpg', "顔/写真.jpg",
                                  "new\nline\ttab.jpg", "control\x01.jpg", "emoji 🐱.png"])
@pytest.mark.parametrize("distance", [0.0, 0.123456789, 1e-07, 1.4142135, 2.0, float("nan")])
def test_a_neighbour_line_is_what_the_json_encoder_writes(path: str, distance: float) -> None:
    written = results.ok("q.jpg", MODEL, "angular", [results.Found(path, distance, False),
                                                     results.Found(path, distance, True)], 1, 2, 0)
    text = results.render(written)
    expected = [f"    {json.dumps(n, ensure_ascii=False)}" for n in written["neighbors"]]
    assert text.splitlines()[7:9] == [expected[0] + ",", expected[1]]
    if distance == distance:  # (NaN is never equal to itself)
        assert json.loads(text) == written


def test_error_document() -> None:
    failed = results.error("notes.jpg", "not_an_image", "not an image file that can be decoded")
    assert failed["schema"] == results.SCHEMA
    assert (failed["status"], failed["query"]) == ("error", "notes.jpg")
    assert failed["error"] == {"code": "not_an_image",
                               "message": "not an image file that can be decoded"}
    assert WRITTEN_AT.match(failed["written_at"])
    assert "neighbors" not in failed


def test_fingerprint_ignores_when_and_against_which_index() -> None:
    first, second = document(), document()
    second["written_at"] = "1999-01-01T00:00:00Z"
    second["index"] = {"generation": 8, "items": 9700, "pending": 0}
    assert results.fingerprint(first) == results.fingerprint(second)
    assert len(results.fingerprint(first)) == 32


def test_a_fingerprint_stays_what_earlier_releases_stored() -> None:
    """A fingerprint that changes makes every results file be written again once: only a
    change of what a reader sees may do that."""
    written = document()
    fields = results.fields(written)
    assert results.fingerprint_of(fields, [5, 3, 9]) == "b7999f2d31880d2f5c5412d1c83c8f9c"
    assert results.fingerprint(written, [5, 3, 9]) == "b7999f2d31880d2f5c5412d1c83c8f9c"
    assert results.text_of(fields) == results.render(written)


def test_fingerprint_sees_what_a_reader_sees() -> None:
    base = results.fingerprint(document())
    assert results.fingerprint(document(0.22)) != base
    other_model = {**document(), "model": "sha256:" + "e" * 64}
    assert results.fingerprint(other_model) != base
    reordered = document()
    reordered["neighbors"] = reordered["neighbors"][::-1]
    assert results.fingerprint(reordered) != base
    assert results.fingerprint(results.error("a.jpg", "empty", "the file is empty")) != \
        results.fingerprint(results.error("a.jpg", "truncated", "the file is empty"))


@pytest.mark.parametrize(("image", "written"), [
    ("photo.jpg", "photo.jpg.neighbors.json"),
    ("a/b/IMG 0001.JPEG", "a/b/IMG 0001.JPEG.neighbors.json"),
    ("no-extension", "no-extension.neighbors.json"),
    ("two.dots.png", "two.dots.png.neighbors.json"),
])
def test_results_path(image: str, written: str) -> None:
    assert results.results_path(Path("/inbox") / image) == Path("/inbox") / written


# -- writing and removing -------------------------------------------------------
def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = results.results_path(tmp_path / "photo.jpg")
    results.write(target, document())
    assert files_in(tmp_path) == ["photo.jpg.neighbors.json"]
    loaded, expected = json.loads(target.read_text(encoding="utf-8")), document()
    assert WRITTEN_AT.match(loaded.pop("written_at"))
    expected.pop("written_at")
    assert loaded == expected
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # readable, unlike mkstemp's 0600
    results.write(target, document(0.5))  # replaces the old one
    assert json.loads(target.read_text())["neighbors"][0]["distance"] == 0.5
    assert files_in(tmp_path) == ["photo.jpg.neighbors.json"]


def test_write_keeps_non_ascii_paths_readable(tmp_path: Path) -> None:
    target = tmp_path / "顔.jpg.neighbors.json"
    results.write(target, results.error("顔.jpg", "empty", "the file is empty"))
    assert "顔.jpg" in target.read_text(encoding="utf-8")
    assert target.read_text(encoding="utf-8").endswith("}\n")


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "photo.jpg.neighbors.json"
    results.write(target, document())
    before = target.read_bytes()
    with pytest.raises(TypeError):
        results.write(target, {**document(), "neighbors": {1, 2}})  # a set is not JSON
    assert target.read_bytes() == before
    assert files_in(tmp_path) == ["photo.jpg.neighbors.json"]


def test_a_failed_rename_removes_the_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "x.jpg.neighbors.json").mkdir()  # the rename over a folder fails
    with pytest.raises(OSError):
        results.write(tmp_path / "x.jpg.neighbors.json", document())
    assert files_in(tmp_path) == ["x.jpg.neighbors.json"]  # the temporary is gone
    assert results.is_ours(f"{results.TEMP_PREFIX}abc123.tmp")
    assert not scan.wanted(f"{results.TEMP_PREFIX}abc123.tmp")


def test_remove_deletes_our_results_file(tmp_path: Path) -> None:
    results.write(results.results_path(tmp_path / "photo.jpg"), document())
    (tmp_path / "photo.jpg").write_bytes(b"the image stays")
    assert results.remove(tmp_path / "photo.jpg") is True
    assert files_in(tmp_path) == ["photo.jpg"]
    assert results.remove(tmp_path / "photo.jpg") is False  # nothing left to remove


def test_remove_also_deletes_an_error_document(tmp_path: Path) -> None:
    results.write(results.results_path(tmp_path / "x.jpg"), results.error("x.jpg", "empty", "e"))
    assert results.remove(tmp_path / "x.jpg") is True
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("content", [
    '{"schema": "someone-else/1", "neighbors": []}',
    '{"neighbors": []}',
    '["lookalike.neighbors/1"]',
    "not json at all",
    "",
])
def test_remove_keeps_a_file_that_is_not_ours(tmp_path: Path, content: str) -> None:
    theirs = tmp_path / "photo.jpg.neighbors.json"
    theirs.write_text(content)
    assert results.remove(tmp_path / "photo.jpg") is False
    assert theirs.read_text() == content


def test_is_ours() -> None:
    assert results.is_ours("photo.jpg.neighbors.json")
    assert results.is_ours(".lookalike-x1y2.tmp")
    assert not results.is_ours("photo.jpg")
    assert not results.is_ours("neighbors.json.jpg")


# -- which files a scan picks up ---------------------------------------------------
def touch(root: Path, *relatives: str) -> None:
    for relative in relatives:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"x")


def test_walk_finds_images_in_nested_folders(tmp_path: Path) -> None:
    touch(tmp_path, "a.jpg", "b.PNG", "deep/er/c.webp", "deep/d.tif", "e.jpeg", "f.gif", "g.bmp")
    found = [c.path for c in scan.walk(tmp_path)]
    assert found == ["a.jpg", "b.PNG", "e.jpeg", "f.gif", "g.bmp", "deep/d.tif", "deep/er/c.webp"]


def test_walk_records_size_and_mtime(tmp_path: Path) -> None:
    Image.new("RGB", (10, 10)).save(tmp_path / "x.png")
    os.utime(tmp_path / "x.png", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    [candidate] = scan.walk(tmp_path)
    assert candidate == scan.Candidate("x.png", (tmp_path / "x.png").stat().st_size,
                                       1_600_000_000_123_456_789)


def test_walk_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    touch(tmp_path, ".hidden.jpg", ".cache/a.jpg", "ok/.b.jpg", "ok/c.jpg", "ok/.git/d.png")
    assert [c.path for c in scan.walk(tmp_path)] == ["ok/c.jpg"]


def test_walk_skips_our_own_files(tmp_path: Path) -> None:
    touch(tmp_path, "a.jpg", "a.jpg.neighbors.json", ".lookalike-1234.tmp", "b.neighbors.json")
    assert [c.path for c in scan.walk(tmp_path)] == ["a.jpg"]


def test_walk_skips_what_is_not_an_image_by_name(tmp_path: Path) -> None:
    touch(tmp_path, "a.jpg", "notes.txt", "data.json", "archive.zip", "noext", "movie.mp4",
          "script.py", "jpg")
    assert [c.path for c in scan.walk(tmp_path)] == ["a.jpg"]


@pytest.mark.parametrize("name", ["x.eps", "x.EPS", "x.ps", "x.epsf", "x.epsi"])
def test_eps_is_refused(name: str) -> None:
    assert not scan.wanted(name)  # Pillow opens EPS by running Ghostscript on it


def test_image_extensions_are_the_ones_pillow_opens() -> None:
    extensions = scan.image_extensions()
    assert {".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp"} <= extensions
    assert {".heic", ".heif", ".avif"} <= extensions  # iPhone photos, and AVIF
    assert scan.wanted("IMG_0001.HEIC") and scan.wanted("trip/x.avif")
    assert not {".eps", ".ps", ".txt", ".json"} & extensions


def test_exclude_patterns_match_name_and_relative_path(tmp_path: Path) -> None:
    touch(tmp_path, "keep.jpg", "thumb.jpg", "sub/thumb.jpg", "raw/big.tif", "raw/sub/x.png",
          "other/raw/y.png", "draft-1.png")
    exclude = ("thumb.*", "raw/*", "draft-*")
    assert [c.path for c in scan.walk(tmp_path, exclude)] == ["keep.jpg", "other/raw/y.png"]
    assert scan.wanted("sub/thumb.jpg") and not scan.wanted("sub/thumb.jpg", exclude)


def test_walk_skips_broken_links_and_does_not_follow_folder_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    touch(outside, "o.jpg")
    touch(root, "a.jpg")
    (root / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)
    assert [c.path for c in scan.walk(root)] == ["a.jpg"]


def test_a_survey_sees_results_files_and_leftovers_on_the_way(tmp_path: Path) -> None:
    real, alias = tmp_path / "real", tmp_path / "alias"
    touch(real, "a.jpg", "a.jpg.neighbors.json", "sub/b.png", ".lookalike-9.tmp",
          "sub/.lookalike-b.png.tmp", ".hidden/c.jpg", ".hidden/c.jpg.neighbors.json")
    alias.symlink_to(real, target_is_directory=True)  # a watched folder reached by a link
    found = scan.survey(alias)
    assert [c.path for c in found.candidates] == ["a.jpg", "sub/b.png"]
    assert found.results == {"a.jpg.neighbors.json"}
    assert sorted(found.leftovers) == [".lookalike-9.tmp", "sub/.lookalike-b.png.tmp"]
    assert found.answered("a.jpg") and not found.answered("sub/b.png")
    long = "x" * 250 + ".png"  # its results file has a shortened name
    touch(real, f"sub/{long}", "sub/" + results.results_path(real / long).name)
    assert scan.survey(real).answered(f"sub/{long}")


def test_a_survey_of_part_of_a_folder(tmp_path: Path) -> None:
    """`lookalike import` lists a folder's own files and each sub-folder apart: together,
    what one survey of it finds, with the same paths and exclusions."""
    touch(tmp_path, "top.jpg", "a/one.jpg", "a/deep/two.png", "a/raw/skip.png", "b/three.jpg",
          "a/.hidden/four.jpg")
    exclude = ("a/raw/*",)
    parts = [scan.survey(tmp_path, exclude, "", deep=False), scan.survey(tmp_path, exclude, "a"),
             scan.survey(tmp_path, exclude, "b")]
    assert [[c.path for c in part.candidates] for part in parts] == [
        ["top.jpg"], ["a/one.jpg", "a/deep/two.png"], ["b/three.jpg"]]
    assert sorted(c.path for part in parts for c in part.candidates) == \
        sorted(c.path for c in scan.walk(tmp_path, exclude))
    assert [c.path for c in scan.survey(tmp_path, exclude, "a", deep=False).candidates] == \
        ["a/one.jpg"]
    assert scan.survey(tmp_path, exclude, "gone").candidates == []


def test_walk_of_a_missing_folder_finds_nothing(tmp_path: Path) -> None:
    assert list(scan.walk(tmp_path / "unmounted")) == []


def code_of(root: Path, path: Path) -> str | None:
    problem = scan.link_problem(root, path)
    return None if problem is None else problem.code


def test_link_problem(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    touch(outside, "o.jpg")
    touch(root, "a.jpg", "sub/b.jpg")
    (root / "in-link.jpg").symlink_to(root / "sub" / "b.jpg")
    (root / "out-link.jpg").symlink_to(outside / "o.jpg")
    (root / "up.jpg").symlink_to("../outside/o.jpg")
    (root / "loop-a.jpg").symlink_to(root / "loop-b.jpg")
    (root / "loop-b.jpg").symlink_to(root / "loop-a.jpg")
    (root / "self.jpg").symlink_to(root / "self.jpg")
    (root / "dangling.jpg").symlink_to(root / "nothing.jpg")
    (root / "inner").symlink_to(root / "sub", target_is_directory=True)
    (root / "away").symlink_to(outside, target_is_directory=True)
    for inside in ("a.jpg", "sub/b.jpg", "in-link.jpg", "dangling.jpg", "inner/b.jpg",
                   "sub/missing.jpg"):
        assert code_of(root, root / inside) is None, inside
    for out in ("out-link.jpg", "up.jpg", "sub/../../outside/o.jpg", "away/o.jpg"):
        assert code_of(root, root / out) == "outside", out
    for loop in ("loop-a.jpg", "self.jpg"):
        problem = scan.link_problem(root, root / loop)
        assert problem is not None and problem.code == "unreadable" and "loop" in problem.message


def test_link_problem_of_a_root_reached_through_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    touch(real, "a.jpg")
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    assert code_of(tmp_path / "alias", tmp_path / "alias" / "a.jpg") is None
    assert code_of(tmp_path / "alias", real / "a.jpg") is None


def rendered(documents: list[tuple[Path, dict[str, object]]]) -> list[tuple[Path, str]]:
    return [(path, results.render(document)) for path, document in documents]


def test_write_many_keeps_its_temporaries_in_the_scratch_folder(tmp_path: Path) -> None:
    scratch, folder = tmp_path / "state" / "partial", tmp_path / "inbox"
    scratch.mkdir(parents=True)
    folder.mkdir()
    documents = [(folder / f"{n}.png.neighbors.json", results.error(f"{n}.png", "empty", "e"))
                 for n in range(3)]
    created: list[str] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], *args: object, **kwargs: object) -> int:
        created.append(str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", spy)
        assert results.write_many(rendered(documents), results.Scratch(scratch)) == \
            [None, None, None]
    temporaries = [path for path in created if path.endswith(".tmp")]
    assert len(temporaries) == 3 and all(Path(p).parent == scratch for p in temporaries)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p, _ in documents)
    assert list(scratch.iterdir()) == []
    for path, document in documents:
        assert json.loads(path.read_text())["error"] == document["error"]


def test_blanks_made_ahead_become_the_results_files(tmp_path: Path) -> None:
    scratch, folder = results.Scratch(tmp_path / "partial"), tmp_path / "inbox"
    scratch.folder.mkdir()
    folder.mkdir()
    scratch.stock(5)
    deadline = time.monotonic() + 30
    while len(list(scratch.folder.iterdir())) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    blanks = {p.stat().st_ino for p in scratch.folder.iterdir()}
    assert len(blanks) == 5
    documents = [(folder / f"{n}.png.neighbors.json", results.error(f"{n}.png", "empty", "e"))
                 for n in range(3)]
    assert results.write_many(rendered(documents), scratch) == [None, None, None]
    # The three results files are three of the blanks, filled and renamed in.
    assert {path.stat().st_ino for path, _ in documents} <= blanks
    assert all(json.loads(path.read_text())["status"] == "error" for path, _ in documents)
    assert len(list(scratch.folder.iterdir())) == 2
    scratch.close()
    assert list(scratch.folder.iterdir()) == []


def test_without_blanks_ready_a_write_makes_its_own_and_stocking_stops_at_the_cap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch, folder = results.Scratch(tmp_path / "partial"), tmp_path / "inbox"
    scratch.folder.mkdir()
    folder.mkdir()
    target = folder / "a.png.neighbors.json"
    text = results.render(results.error("a.png", "empty", "e"))
    assert results.write_many([(target, text)], scratch) == [None]
    assert json.loads(target.read_text())["status"] == "error"
    monkeypatch.setattr(results, "MAX_BLANKS", 4)
    scratch.stock(3)
    scratch.stock(3)
    deadline = time.monotonic() + 30
    while scratch.maker is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(list(scratch.folder.iterdir())) == 4
    scratch.close()
    assert list(scratch.folder.iterdir()) == []


def test_write_many_writes_beside_the_file_when_the_scratch_is_on_another_disk(
        tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    folder = tmp_path / "inbox"
    folder.mkdir()
    target = folder / "a.png.neighbors.json"
    created: list[str] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], *args: object, **kwargs: object) -> int:
        created.append(str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    with tempfile.TemporaryDirectory(dir=shm) as scratch, pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", spy)
        assert results.write_many([(target, results.render(results.error("a.png", "empty", "e")))],
                                  results.Scratch(Path(scratch))) == [None]
        assert list(Path(scratch).iterdir()) == []
    assert [Path(p).parent for p in created if p.endswith(".tmp")] == [folder]
    assert json.loads(target.read_text())["status"] == "error"
