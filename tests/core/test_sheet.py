"""The contact sheet: its size from the layout, tiles in rank order, frames in their colours."""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.core import lettering, sheet
from lookalike.core.errors import UnreadableImage
from lookalike.core.sheet import (
    CAPTION_LINES,
    CAPTION_TOP,
    CELL,
    FRAME,
    GAP,
    LINE,
    MARGIN,
    ROW_SPACE,
    SPACE,
    THUMB,
    TITLE_SPACE,
)

BLUE, YELLOW = (30, 60, 200), (250, 210, 0)


def solid(color: tuple[int, int, int], width: int = 48, height: int = 48) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def expected_size(rows: int, k: int, title_lines: int) -> tuple[int, int]:
    """The layout, spelled out: margin, query, gap, k neighbours; rows of picture + captions."""
    width = MARGIN + CELL + GAP + k * CELL + (k - 1) * SPACE + MARGIN
    row = CELL + CAPTION_TOP + CAPTION_LINES * LINE
    title = title_lines * LINE + TITLE_SPACE if title_lines else 0
    return width, MARGIN + title + rows * row + (rows - 1) * ROW_SPACE + MARGIN


def corner(row: int, column: int, title_lines: int) -> tuple[int, int]:
    """Top-left pixel of a tile's frame: column 0 is the query, 1..k the neighbours."""
    top = MARGIN + (title_lines * LINE + TITLE_SPACE if title_lines else 0)
    y = top + row * (CELL + CAPTION_TOP + CAPTION_LINES * LINE + ROW_SPACE)
    x = MARGIN if column == 0 else MARGIN + CELL + GAP + (column - 1) * (CELL + SPACE)
    return x, y


def as_png(picture: Image.Image) -> Image.Image:
    """`picture` written as PNG bytes and opened again, as a viewer would see it."""
    buffer = BytesIO()
    picture.save(buffer, format="PNG")
    reopened = Image.open(BytesIO(buffer.getvalue()))
    assert reopened.format == "PNG"
    return reopened.convert("RGB")


@pytest.mark.parametrize(("rows", "k"), [(1, 1), (1, 12), (6, 5)])
def test_a_sheet_is_a_png_of_the_size_of_its_layout(rows: int, k: int) -> None:
    tiles = [sheet.Tile(solid(BLUE), (f"{rank}.  0.123", f"image-{rank}.png"))
             for rank in range(1, k + 1)]
    rendered = sheet.render([sheet.Row(sheet.Tile(solid(YELLOW), ("query", "q.png")), tiles)]
                            * rows, title=["a title", "a legend"])
    assert as_png(rendered).size == expected_size(rows, k, 2) == sheet.size(rows, k, 2)


def test_query_first_then_neighbours_in_rank_order() -> None:
    colors = [(200, 0, 0), (0, 150, 0), (0, 0, 200), (120, 60, 0)]
    rendered = as_png(sheet.render([sheet.Row(
        sheet.Tile(solid(YELLOW)), [sheet.Tile(solid(color)) for color in colors])], ["title"]))
    for column, color in enumerate([YELLOW, *colors]):
        x, y = corner(0, column, 1)
        assert rendered.getpixel((x + CELL // 2, y + CELL // 2)) == color, column


def test_frames_show_in_their_colours_around_their_tiles() -> None:
    frames = [[sheet.SAME, sheet.OTHER, sheet.SAME], [sheet.OTHER, sheet.OTHER, sheet.SAME]]
    rows = [sheet.Row(sheet.Tile(solid(BLUE), ("3", "2 of 3 alike"), sheet.QUERY),
                      [sheet.Tile(solid(BLUE), (f"{rank}.  0.5", "3"), frame)
                       for rank, frame in enumerate(colors, 1)]) for colors in frames]
    rendered = as_png(sheet.render(rows, ["title", "legend"]))
    for r, colors in enumerate(frames):
        for column, frame in enumerate([sheet.QUERY, *colors]):
            x, y = corner(r, column, 2)
            edges = [(x, y), (x + CELL - 1, y + CELL - 1), (x + FRAME - 1, y + CELL // 2),
                     (x + CELL // 2, y + CELL - FRAME)]
            assert [rendered.getpixel(p) for p in edges] == [frame] * 4, (r, column)
            assert rendered.getpixel((x + FRAME, y + FRAME)) == BLUE  # the picture, inside


def test_a_tile_without_a_frame_is_not_coloured() -> None:
    rendered = as_png(sheet.render([sheet.Row(sheet.Tile(solid(BLUE)),
                                              [sheet.Tile(solid(BLUE))])], ["title"]))
    x, y = corner(0, 1, 1)
    assert rendered.getpixel((x, y)) == sheet.WHITE
    assert rendered.getpixel((x + FRAME - 1, y + FRAME - 1)) == sheet.EDGE


def test_a_missing_picture_still_draws_its_tile() -> None:
    rendered = sheet.render([sheet.Row(sheet.Tile(solid(BLUE)),
                                       [sheet.Tile(None, ("1.  0.2", "gone.png"))])])
    x, y = corner(0, 1, 0)
    assert rendered.size == expected_size(1, 1, 0)
    assert rendered.getpixel((x + FRAME + 2, y + FRAME + 2)) != sheet.WHITE  # a grey box


def test_no_neighbours_leaves_the_query_alone() -> None:
    rendered = sheet.render([sheet.Row(sheet.Tile(solid(BLUE)), [])])
    assert rendered.width == 2 * MARGIN + CELL


def test_letterbox_keeps_the_aspect_on_white() -> None:
    box = sheet.letterbox(solid(BLUE, 200, 100), THUMB)
    assert box.size == (THUMB, THUMB)
    assert box.getpixel((THUMB // 2, 2)) == sheet.WHITE  # above the picture
    assert box.getpixel((THUMB // 2, THUMB // 2)) == BLUE
    assert box.getpixel((THUMB // 2, THUMB - 3)) == sheet.WHITE  # below it


def test_a_small_icon_grows_with_square_pixels() -> None:
    checks = np.indices((16, 16)).sum(0) % 2 * 255
    icon = Image.fromarray(checks.astype(np.uint8), "L")
    box = np.asarray(sheet.letterbox(icon, THUMB))
    assert set(np.unique(box)) == {0, 255}  # sharp: no grey in between
    assert box.shape == (THUMB, THUMB, 3)


def test_thumbnail_of_a_photo_is_upright_and_of_a_transparent_icon_is_on_white(
        tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated a quarter turn, so portrait
    solid(BLUE, 1200, 600).save(photo, exif=exif, quality=95)
    thumb = sheet.thumbnail(photo, 150_000_000)
    assert thumb.size == (THUMB, THUMB)
    assert thumb.getpixel((2, THUMB // 2)) == sheet.WHITE  # left of a portrait picture
    assert all(abs(a - b) < 12 for a, b in zip(thumb.getpixel((THUMB // 2, 2)), BLUE, strict=True))

    icon = tmp_path / "icon.png"
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(icon)
    assert sheet.thumbnail(icon, 150_000_000).getpixel((THUMB // 2, THUMB // 2)) == sheet.WHITE


def test_thumbnail_of_no_image_says_why(tmp_path: Path) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture\n", encoding="utf-8")
    with pytest.raises(UnreadableImage) as caught:
        sheet.thumbnail(notes, 150_000_000)
    assert caught.value.code == "not_an_image"


def test_long_names_are_shortened_in_the_middle() -> None:
    name = "a-very-long-file-name-of-some-camera-upload-20240101-123456.png"
    short = sheet.shorten(name, CELL)
    assert lettering.builtin().getlength(short) <= CELL
    assert short.startswith("a-ver") and short.endswith(".png") and "..." in short
    assert sheet.shorten("1.png", CELL) == "1.png"
