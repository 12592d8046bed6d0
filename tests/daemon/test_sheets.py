"""`lookalike sheet` and `lookalike eval --sheet` end to end: real process, real PNG files."""
from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lookalike.core import lettering, sheet
from lookalike.core.errors import LookalikeError
from lookalike.core.sheet import CELL
from lookalike.daemon import evaluation, sheets
from tests.helpers import Scenarios, refusal, side_by_side, write_config
from tests.helpers import run_lookalike as lookalike


def frame_at(picture: Image.Image, row: int, column: int, title_lines: int) -> tuple[int, ...]:
    """The colour of the top-left pixel of a tile's frame (column 0: the query)."""
    x, y = sheet.tile_origin(row, column, title_lines)
    color: tuple[int, ...] = picture.getpixel((x, y))  # type: ignore[assignment]
    return color


# -- `lookalike sheet`: each of its runs loads TensorFlow (on one core), so the two tests'
# runs are made side by side, each in a folder of its own
@dataclass
class InboxSheet:
    built: subprocess.CompletedProcess[str]  # run --once of 40 digits
    finished: subprocess.CompletedProcess[str]  # sheet of `japanese`, -k 5, run in `here`
    japanese: str
    here: Path


def sheet_of_an_inbox_image(root: Path, encoder_path: Path, digits_root: Path) -> InboxSheet:
    config = write_config(root, encoder_path)
    sources = sorted(digits_root.glob("*/*.png"), key=lambda p: p.name)[:40]
    for source in sources:
        shutil.copy(source, root / "inbox" / source.name)
    japanese = "ねこの写真_0003.png"  # a name in another script, as many users' are
    (root / "inbox" / sources[3].name).rename(root / "inbox" / japanese)
    built = lookalike("run", "--once", "-c", config, cwd=root)
    here = root / "here"
    here.mkdir()
    if built.returncode != 0:
        return InboxSheet(built, built, japanese, here)
    finished = lookalike("sheet", root / "inbox" / japanese, "-k", "5", "-c", config, cwd=here)
    return InboxSheet(built, finished, japanese, here)


def sheet_of_an_unusable_image(root: Path, encoder_path: Path
                               ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """(the folder it ran in, the finished `lookalike sheet` of a text file named .jpg)"""
    config = write_config(root, encoder_path)
    notes = root / "notes.jpg"
    notes.write_text("not a picture\n", encoding="utf-8")
    return root, lookalike("sheet", notes, "-c", config, cwd=root)


@pytest.fixture(scope="module")
def sheets_made(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                encoder_path: Path, digits_root: Path) -> Iterator[Scenarios]:
    made: dict[str, Callable[[Path], Any]] = {
        "inbox_sheet": functools.partial(sheet_of_an_inbox_image, encoder_path=encoder_path,
                                         digits_root=digits_root),
        "unusable_sheet": functools.partial(sheet_of_an_unusable_image,
                                            encoder_path=encoder_path)}
    with side_by_side(request, tmp_path_factory, made) as started:
        yield started


@pytest.fixture(scope="module")
def inbox_sheet(sheets_made: Scenarios) -> InboxSheet:
    return sheets_made.result("inbox_sheet")


@pytest.fixture(scope="module")
def unusable_sheet(sheets_made: Scenarios) -> tuple[Path, subprocess.CompletedProcess[str]]:
    return sheets_made.result("unusable_sheet")


@pytest.mark.slow
def test_sheet_of_an_inbox_image(inbox_sheet: InboxSheet) -> None:
    built, finished = inbox_sheet.built, inbox_sheet.finished
    japanese, here = inbox_sheet.japanese, inbox_sheet.here
    assert built.returncode == 0, built.stderr
    assert finished.returncode == 0, finished.stderr
    written = here / f"{japanese}.sheet.png"  # the default: beside us, named after the image
    assert finished.stdout.strip() == str(written)
    with Image.open(written) as picture:
        assert picture.format == "PNG"
        assert picture.size == sheet.size(rows=1, neighbors=5, title_lines=1)
        assert picture.size[0] == 2 * sheet.MARGIN + 6 * CELL + sheet.GAP + 4 * sheet.SPACE
        rgb = picture.convert("RGB")
    assert frame_at(rgb, 0, 0, 1) == sheet.QUERY
    x, y = sheet.tile_origin(0, 5, 1)  # the 5th neighbour's picture is drawn, not "missing"
    inside = rgb.crop((x + sheet.FRAME, y + sheet.FRAME, x + CELL - sheet.FRAME,
                       y + CELL - sheet.FRAME))
    assert np.asarray(inside.convert("L")).min() < 100  # a digit's dark ink
    assert sorted(p.name for p in here.iterdir()) == [written.name]  # no temporary left
    if lettering.lettered(japanese)[1] is not lettering.builtin():  # a Japanese font here
        # the query's name under its tile, in its own glyphs: as drawn with that font
        x, y = sheet.tile_origin(0, 0, 1)
        top = y + CELL + sheet.CAPTION_TOP + sheet.LINE
        drawn = np.asarray(rgb.crop((x, top, x + CELL + sheet.SPACE - 2, top + sheet.LINE)))
        shown, face = sheet.fitted(japanese, CELL + sheet.SPACE - 2)
        expected = Image.new("RGB", (CELL + sheet.SPACE - 2, sheet.LINE), sheet.WHITE)
        ImageDraw.Draw(expected).text((0, 0), shown, fill=sheet.MUTED, font=face)
        assert np.array_equal(drawn, np.asarray(expected))
        assert "ね" in shown  # drawn, not escaped


@pytest.mark.slow
def test_sheet_of_an_unusable_image(
        unusable_sheet: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    folder, finished = unusable_sheet
    assert "notes.jpg: not an image file" in refusal(finished)
    assert not list(folder.glob("*.png"))


def test_sheet_refuses_a_name_it_cannot_write(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("inbox: ./inbox\nstate_dir: ./state\n", encoding="utf-8")
    image = tmp_path / "a.png"
    Image.new("L", (8, 8)).save(image)
    assert "sheet.txt" in refusal(lookalike("sheet", image, "-o", tmp_path / "sheet.txt",
                                            "-c", config, cwd=tmp_path))
    assert "nowhere" in refusal(lookalike("sheet", image, "-o", tmp_path / "nowhere" / "s.png",
                                          "-c", config, cwd=tmp_path))


@pytest.mark.slow  # the real process, though pixels need no TensorFlow
def test_eval_sheet_frames_the_other_label_red(digits_root: Path, tmp_path: Path) -> None:
    # Two labels holding the same images: every query's nearest is its twin, of the other label.
    data = tmp_path / "data"
    sources = sorted(digits_root.glob("*/*.png"), key=lambda p: p.name)[:16]
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for source in sources:
            shutil.copy(source, data / label / source.name)
    out = tmp_path / "eval.png"
    finished = lookalike("eval", "--data", data, "--baseline", "pixels", "-k", "4",
                         "--sheet", out, "--sheet-rows", "3", cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "precision@4" in finished.stdout
    with Image.open(out) as picture:
        assert picture.format == "PNG"
        assert picture.size == sheet.size(rows=3, neighbors=4, title_lines=2)
        rgb = picture.convert("RGB")
    for row in range(3):
        assert frame_at(rgb, row, 0, 2) == sheet.QUERY
        assert frame_at(rgb, row, 1, 2) == sheet.OTHER  # the twin
        assert {frame_at(rgb, row, column, 2) for column in (2, 3, 4)} <= {sheet.SAME,
                                                                          sheet.OTHER}


def test_eval_sheet_queries_are_seeded_and_of_many_labels() -> None:
    labels = np.array(["a"] * 50 + ["b"] * 3 + ["c"] * 2)
    chosen = evaluation.sample(labels, 4)
    assert chosen == evaluation.sample(labels, 4)  # the same sheet every run
    assert len(set(chosen)) == 4
    assert set(labels[chosen]) == {"a", "b", "c"}  # one of each label before a second
    assert sorted(evaluation.sample(labels[:3], 6)) == [0, 1, 2]  # fewer images than rows


def test_where_a_sheet_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    image = Path("/photos/cat.jpg")
    assert sheets.target(image, None) == tmp_path / "cat.jpg.sheet.png"
    assert sheets.target(image, tmp_path) == tmp_path / "cat.jpg.sheet.png"
    assert sheets.target(image, tmp_path / "s.png") == tmp_path / "s.png"
    with pytest.raises(LookalikeError, match="name it .png"):
        sheets.target(image, tmp_path / "s.json")


@pytest.mark.slow  # the real process, though pixels need no TensorFlow
def test_eval_copies_measures_copy_detection_by_kind(digits_root: Path, tmp_path: Path) -> None:
    """Each sub-folder: a digit and its copies. An identical copy is always found first;
    every kind is reported, and a sheet is drawn as for labels."""
    import json

    from PIL import ImageOps

    data = tmp_path / "copies"
    sources = sorted(digits_root.glob("*/*.png"), key=lambda p: p.name)[:12]
    for n, source in enumerate(sources):
        group = data / f"picture{n:02d}"
        group.mkdir(parents=True)
        with Image.open(source) as original:
            original.save(group / "original.png")
            original.save(group / "same.png")
            ImageOps.mirror(original).save(group / "mirror.png")
    out = tmp_path / "copies.png"
    finished = lookalike("eval", "--data", data, "--copies", "--baseline", "pixels", "-k", "2",
                         "--json", "--sheet", out, "--sheet-rows", "2", cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)
    copies = report["copies"]
    assert set(copies["first_by_kind"]) == {"original", "same", "mirror"}
    assert copies["first_by_kind"]["same"] == copies["first_by_kind"]["original"] == 1.0
    # Every group holds one of each kind: the whole is the mean of the kinds.
    assert copies["first"] == pytest.approx(sum(copies["first_by_kind"].values()) / 3)
    assert 0.0 < copies["recall"] <= 1.0
    assert "exact" not in report  # no precision by label: the groups are not labels
    with Image.open(out) as picture:
        assert picture.size == sheet.size(rows=2, neighbors=2, title_lines=2)
    plain = lookalike("eval", "--data", data, "--copies", "--baseline", "pixels", cwd=tmp_path)
    assert "first neighbour a copy" in plain.stdout and "mirror" in plain.stdout
