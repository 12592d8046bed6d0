"""`lookalike sheet`: one image and its neighbours in the library, drawn as a picture.

The neighbours are those `lookalike query` prints (the same search); the
sheet shows the original files, the query on the left, then neighbours
1..k with their distances and file names. `save` also writes the sheet of
`lookalike eval --sheet`.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from lookalike.core import atomic, sheet
from lookalike.core.config import Config
from lookalike.core.errors import LookalikeError, UnreadableImage

SUFFIX = ".sheet.png"


def target(image: Path, out: Path | None) -> Path:
    """Where the sheet of `image` goes: `out`, or IMAGE.sheet.png in `out` or the current folder.

    Checked before any work, so a bad name fails at once.
    """
    if out is None or out.is_dir():
        return (out or Path.cwd()) / (image.name + SUFFIX)
    if image_format(out) is None:
        raise LookalikeError(f"{out}: the sheet is a picture: name it .png")
    if not out.parent.is_dir():
        raise LookalikeError(f"{out.parent}: no such folder")
    return out


def run(config: Config, image: Path, document: dict[str, Any], out: Path) -> int:
    """Draw the results `document` of `image` and write it to `out`; print where it went."""
    if document["status"] != "ok":
        raise LookalikeError(f"{image}: {document['error']['message']}")
    neighbors = document["neighbors"]
    try:
        query = sheet.Tile(sheet.thumbnail(image, config.image.max_pixels),
                           ("query", PurePosixPath(document["query"]).name), sheet.QUERY)
    except UnreadableImage as problem:  # it changed since it was searched
        raise LookalikeError(f"{image}: {problem.message}") from None
    tiles = [neighbor_tile(config, n) for n in neighbors]
    items = document["index"]["items"]
    title = [f"{document['query']}: the {len(neighbors)} nearest of {items:,} images "
             f"in {config.inbox} ({document['metric']} distance)"]
    save(sheet.render([sheet.Row(query, tiles)], title), out)
    print(out)
    return 0


def neighbor_tile(config: Config, neighbor: dict[str, Any]) -> sheet.Tile:
    """A neighbour of a results document: its picture, rank, distance and file name."""
    picture = thumbnail_or_none(config.inbox / neighbor["path"], config.image.max_pixels)
    same = "  same file" if neighbor["duplicate"] else ""
    return sheet.Tile(picture, (f"{neighbor['rank']}.  {distance(neighbor['distance'])}{same}",
                                PurePosixPath(neighbor["path"]).name))


def thumbnail_or_none(path: Path, max_pixels: int) -> Image.Image | None:
    """The tile picture of `path`, or None (drawn as "missing") when it is no longer usable."""
    try:
        return sheet.thumbnail(path, max_pixels)
    except UnreadableImage:
        return None  # changed or gone since it was encoded: say so, draw the rest


def distance(value: float) -> str:
    return f"{value:.3f}" if value < 100 else f"{value:.0f}"


def image_format(path: Path) -> str | None:
    """The Pillow format that writes files named like `path`, or None."""
    kind = Image.registered_extensions().get(path.suffix.lower())
    return kind if kind in Image.SAVE else None


def save(picture: Image.Image, path: Path) -> None:
    """Write `picture` to `path` whole or not at all (a temporary file, then a rename)."""
    kind = image_format(path)
    if kind is None:
        raise LookalikeError(f"{path}: the sheet is a picture: name it .png")
    try:  # (not synced: a picture to look at, made again at will)
        with atomic.replacing(path, path.with_name(f".{path.name}.partial"),
                              durable=False) as partial:
            picture.save(partial, format=kind)
    except OSError as error:
        raise LookalikeError(f"{path}: cannot write the sheet: "
                             f"{error.strerror or error}") from None
