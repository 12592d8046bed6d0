"""Names in any script on contact sheets: the font that has their glyphs (`core.lettering`)."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lookalike.core import lettering, sheet

NAME = "猫の写真_2024.jpg"  # "a photo of the cat", as many users name their files


def japanese_font_installed() -> bool:
    if shutil.which("fc-list") is None:
        return False
    return bool(subprocess.run(["fc-list", ":lang=ja"], capture_output=True, text=True,
                               check=False).stdout.strip())


needs_japanese_font = pytest.mark.skipif(
    not japanese_font_installed(),
    reason="no Japanese font on this machine (apt-get install fonts-ipafont-gothic)")


def test_a_latin_name_keeps_pillows_own_font() -> None:
    assert lettering.lettered("IMG_0001.jpg") == ("IMG_0001.jpg", lettering.builtin())


def test_pillows_own_font_lacks_japanese() -> None:
    """What the rest is for: drawn with it, the name would be boxes."""
    assert lettering.missing(NAME, lettering.builtin()) == set("猫の写真")


@needs_japanese_font
def test_a_japanese_name_is_drawn_with_a_font_that_has_its_glyphs() -> None:
    shown, face = lettering.lettered(NAME)
    assert shown == NAME and face is not lettering.builtin()
    assert lettering.missing(NAME, face) == set()
    # four different characters, four different glyphs: not four boxes
    assert len({lettering.glyph(face, c) for c in "猫の写真"}) == 4


def test_without_a_font_for_it_a_name_is_written_escaped_never_as_boxes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lettering, "covering", lambda characters: None)
    shown, face = lettering.lettered("ねこ.jpg")
    assert (shown, face) == ("\\u306d\\u3053.jpg", lettering.builtin())


def caption_strip(rendered: Image.Image) -> np.ndarray:
    """The first caption line under the query tile of a one-row sheet without a title."""
    x, y = sheet.tile_origin(0, 0)
    top = y + sheet.CELL + sheet.CAPTION_TOP
    return np.asarray(rendered.crop((x, top, x + sheet.CELL, top + sheet.LINE)).convert("L"))


@needs_japanese_font
def test_a_sheet_draws_a_japanese_caption_in_its_glyphs() -> None:
    tile = sheet.Tile(Image.new("RGB", (48, 48), (30, 60, 200)), ("ねこ.jpg",))
    drawn = caption_strip(sheet.render([sheet.Row(tile, [])]))
    # the same caption drawn by hand: with the font found, and with Pillow's (boxes)
    shown, face = lettering.lettered("ねこ.jpg")
    expected, boxes = (Image.new("RGB", (sheet.CELL, sheet.LINE), sheet.WHITE)
                       for _ in range(2))
    ImageDraw.Draw(expected).text((0, 0), shown, fill=sheet.INK, font=face)
    ImageDraw.Draw(boxes).text((0, 0), "ねこ.jpg", fill=sheet.INK, font=lettering.builtin())
    assert np.array_equal(drawn, np.asarray(expected.convert("L")))
    assert not np.array_equal(drawn, np.asarray(boxes.convert("L")))
