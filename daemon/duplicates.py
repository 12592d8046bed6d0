"""`lookalike duplicates`: every group of near-duplicates in the library.

A group is a connected set of images joined by the `near_duplicate` marks
of their results files (`core.copies.groups`), read from the library as
the service last wrote them: no TensorFlow, no search, no image opened
(but for `--sheet`, which draws them). Nothing is ever moved, changed or
deleted. The best original of a group is its largest picture, then its
largest file (the least compressed).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lookalike.core import copies, sheet
from lookalike.core.config import Config
from lookalike.core.errors import LookalikeError
from lookalike.core.store import Library

SHEET_ROWS = 200  # groups drawn at most: a sheet of more is too large to look at
SHEET_TILES = 12  # images per row at most (the best, then the next)


@dataclass(frozen=True)
class Member:
    path: str
    bytes: int
    width: int | None
    height: int | None
    sha256: str | None
    best: bool = False
    identical_to: str | None = None


def find(library: Library) -> list[list[Member]]:
    """The groups of near-duplicates, largest first; each its best original first."""
    found = copies.groups(library.copy_pairs())
    pictures = library.pictures(row for group in found for row in group)
    groups = []
    for group in found:
        members = [Member(path, size, width, height, sha256)
                   for path, size, width, height, sha256 in
                   (pictures[row] for row in group if row in pictures)]
        members.sort(key=lambda m: (-(m.width or 0) * (m.height or 0), -m.bytes, m.path))
        first_with: dict[str, str] = {}
        marked = []
        for index, member in enumerate(members):
            same = first_with.setdefault(member.sha256, member.path) \
                if member.sha256 else None
            marked.append(Member(member.path, member.bytes, member.width, member.height,
                                 member.sha256, index == 0,
                                 same if same != member.path else None))
        if len(marked) > 1:
            groups.append(marked)
    groups.sort(key=lambda g: (-len(g), g[0].path))
    return groups


def as_json(number: int, group: list[Member]) -> str:
    return json.dumps({"group": number, "images": [
        {"path": m.path, "bytes": m.bytes, "width": m.width, "height": m.height,
         "best": m.best, "identical_to": m.identical_to} for m in group]}, ensure_ascii=False)


def as_text(number: int, group: list[Member]) -> str:
    lines = [f"group {number}: {len(group)} images"]
    for m in group:
        size = f"{m.width}x{m.height}" if m.width and m.height else "?x?"
        notes = (["best original"] if m.best else []) + \
            ([f"identical to {m.identical_to}"] if m.identical_to else [])
        note = f"  ({', '.join(notes)})" if notes else ""
        lines.append(f"  {m.path}  {m.bytes:,} bytes  {size}{note}")
    return "\n".join(lines)


def draw(config: Config, groups: list[list[Member]], out: Path) -> None:
    """A picture of the groups, one row each: the best original, then the others."""
    from lookalike.daemon.sheets import save, thumbnail_or_none

    def tile(member: Member) -> sheet.Tile:
        size = f"{member.width}x{member.height}" if member.width else "?"
        return sheet.Tile(thumbnail_or_none(config.inbox / member.path, config.image.max_pixels),
                          (f"{size}  {member.bytes // 1024:,} kB",
                           PurePosixPath(member.path).name),
                          sheet.QUERY if member.best else None)

    rows = [sheet.Row(tile(group[0]), [tile(m) for m in group[1:SHEET_TILES]])
            for group in groups[:SHEET_ROWS]]
    shown = f" (the {SHEET_ROWS} largest)" if len(groups) > SHEET_ROWS else ""
    title = [f"{len(groups)} groups of near-duplicates in {config.inbox}{shown}; "
             "the best original first"]
    save(sheet.render(rows, title), out)


def run(config: Config, as_json_lines: bool, out: Path | None) -> int:
    from lookalike.daemon.sheets import image_format

    if out is not None and (image_format(out) is None or not out.parent.is_dir()):
        raise LookalikeError(f"{out}: the sheet is a picture in an existing folder: "
                             "name it .png")
    path = config.state_dir / "library.sqlite"
    if not path.is_file():
        raise LookalikeError(f"{path}: no library yet (start the service first)")
    with Library(path) as library:
        groups = find(library)
    for number, group in enumerate(groups, 1):
        print(as_json(number, group) if as_json_lines else as_text(number, group)
              + ("\n" if number < len(groups) else ""))
    if not groups and not as_json_lines:
        print("no near-duplicates in the library")
    if out is not None:
        draw(config, groups, out)
        print(out)
    return 0
