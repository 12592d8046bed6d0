"""A contact sheet of neighbours: each row a query, a gap, then its neighbours in rank order.

Pure Pillow. The caller decides what each tile shows (a picture, caption
lines, an optional frame colour); `render` lays the rows out on white and
returns the image. Names in any script are drawn with a font that has their
glyphs (`lettering`). `thumbnail` reads an original image file for a tile.
Every size is a layout constant below, so a sheet's size is known in
advance: see `size`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from . import images, lettering
from .lettering import Font

Color = tuple[int, int, int]

THUMB = 96  # side of the square each picture is letterboxed into
FRAME = 4  # border around each picture, in the tile's frame colour
CELL = THUMB + 2 * FRAME  # a tile's picture with its frame
SPACE = 8  # between neighbours
GAP = 28  # between the query and its first neighbour (a rule runs down its middle)
MARGIN = 14  # around the whole sheet
LINE = 15  # height of a caption or title line
CAPTION_TOP = 4  # between a picture's frame and its caption
CAPTION_LINES = 2  # caption lines under every tile
ROW_SPACE = 14  # between rows
TITLE_SPACE = 8  # between the title and the first row

WHITE: Color = (255, 255, 255)
INK: Color = (33, 33, 33)
MUTED: Color = (110, 110, 110)
EDGE: Color = (205, 205, 205)  # hairline around an unframed picture (white on white)
RULE: Color = (225, 225, 225)
SAME: Color = (34, 160, 70)  # a neighbour with the query's label
OTHER: Color = (220, 40, 40)  # a neighbour with another label
QUERY: Color = (60, 60, 60)


@dataclass(frozen=True)
class Tile:
    """One picture of a sheet and what is written under it."""

    picture: Image.Image | None  # any size and mode; None draws a "missing" box
    caption: Sequence[str] = ()  # up to CAPTION_LINES lines, shortened to fit
    frame: Color | None = None  # None: a hairline only


@dataclass(frozen=True)
class Row:
    query: Tile
    neighbors: Sequence[Tile]


def size(rows: int, neighbors: int, title_lines: int = 0) -> tuple[int, int]:
    """Width and height in pixels of a sheet of `rows` rows of up to `neighbors` neighbours."""
    width = 2 * MARGIN + CELL + (GAP + neighbors * CELL + (neighbors - 1) * SPACE
                                 if neighbors else 0)
    title = title_lines * LINE + TITLE_SPACE if title_lines else 0
    height = 2 * MARGIN + title + rows * row_height() + (rows - 1) * ROW_SPACE
    return width, height


def row_height() -> int:
    return CELL + CAPTION_TOP + CAPTION_LINES * LINE


def tile_origin(row: int, column: int, title_lines: int = 0) -> tuple[int, int]:
    """Top-left corner of a tile's frame; column 0 is the query, 1..k its neighbours."""
    title = title_lines * LINE + TITLE_SPACE if title_lines else 0
    y = MARGIN + title + row * (row_height() + ROW_SPACE)
    x = MARGIN if column == 0 else MARGIN + CELL + GAP + (column - 1) * (CELL + SPACE)
    return x, y


def render(rows: Sequence[Row], title: Sequence[str] = ()) -> Image.Image:
    """The sheet of `rows` under `title` lines, as an RGB image of `size(...)`."""
    columns = max((len(row.neighbors) for row in rows), default=0)
    sheet = Image.new("RGB", size(len(rows), columns, len(title)), WHITE)
    draw = ImageDraw.Draw(sheet)
    width = sheet.width - 2 * MARGIN
    for n, line in enumerate(title):
        shown, face = fitted(line, width)
        draw.text((MARGIN, MARGIN + n * LINE), shown, fill=INK, font=face)
    for r, row in enumerate(rows):
        x, y = tile_origin(r, 0, len(title))
        place(sheet, draw, row.query, x, y)
        for c, neighbor in enumerate(row.neighbors, 1):
            place(sheet, draw, neighbor, *tile_origin(r, c, len(title)))
        if row.neighbors:
            rule = x + CELL + GAP // 2
            draw.line([(rule, y), (rule, y + CELL)], fill=RULE, width=1)
    return sheet


def place(sheet: Image.Image, draw: ImageDraw.ImageDraw, tile: Tile, x: int, y: int) -> None:
    """Draw `tile` with its frame's top-left corner at (x, y)."""
    if tile.frame is not None:
        draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=tile.frame)
    else:
        draw.rectangle([x + FRAME - 1, y + FRAME - 1, x + FRAME + THUMB, y + FRAME + THUMB],
                       outline=EDGE)
    if tile.picture is None:
        draw.rectangle([x + FRAME, y + FRAME, x + FRAME + THUMB - 1, y + FRAME + THUMB - 1],
                       fill=(240, 240, 240))
        draw.text((x + CELL // 2, y + CELL // 2), "missing", fill=MUTED,
                  font=lettering.builtin(), anchor="mm")
    else:
        sheet.paste(letterbox(tile.picture, THUMB), (x + FRAME, y + FRAME))
    top = y + CELL + CAPTION_TOP
    for n, line in enumerate(tile.caption[:CAPTION_LINES]):
        # A caption may reach into the space after its tile: names need every pixel.
        shown, face = fitted(line, CELL + SPACE - 2)
        draw.text((x, top + n * LINE), shown, fill=INK if n == 0 else MUTED, font=face)


def letterbox(picture: Image.Image, side: int) -> Image.Image:
    """`picture` scaled to fit a `side` x `side` white square, centred, aspect kept.

    Small pictures (icons, pixel art) grow by a whole factor with square
    pixels, so they stay sharp; others are resampled smoothly.
    """
    picture = images.to_mode(picture, "RGB")
    width, height = picture.size
    whole = side // max(width, height)
    if whole >= 2:
        fitted = picture.resize((width * whole, height * whole), Image.Resampling.NEAREST)
    else:
        scale = side / max(width, height)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        fitted = picture.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    box = Image.new("RGB", (side, side), WHITE)
    box.paste(fitted, ((side - fitted.width) // 2, (side - fitted.height) // 2))
    return box


def thumbnail(path: Path, max_pixels: int, side: int = THUMB) -> Image.Image:
    """The image file at `path` letterboxed into a `side` x `side` RGB square.

    Raises UnreadableImage (as `images.load` does) when the file is no usable image.
    """
    picture = images.upright(images.read(path), "RGB", max_pixels, (side, side))
    return letterbox(picture, side)


def fitted(text: str, width: int) -> tuple[str, Font]:
    """`text` as drawn (its script's font; see `lettering`), shortened to fit `width`
    pixels, and the font to draw it with."""
    shown, face = lettering.lettered(text)
    return shorten(shown, width, face), face


def shorten(text: str, width: int, face: Font | None = None) -> str:
    """`text` cut with "..." to fit `width` pixels in `face` (Pillow's own font by default),
    keeping twice as much of its end.

    File names tend to share their beginnings and differ at their ends.
    """
    measure = (face or lettering.builtin()).getlength
    if measure(text) <= width:
        return text
    head, tail = text[:len(text) // 3], text[len(text) // 3:]
    while head or tail:
        if 2 * len(head) >= len(tail):
            head = head[:-1]
        else:
            tail = tail[1:]
        if measure(head + "..." + tail) <= width:
            return head + "..." + tail
    return ""
