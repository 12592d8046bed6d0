"""Which files of a watched folder are images to answer.

A file is a candidate when its name ends in an extension that Pillow can
open, it is not hidden, not one of our results files, and no `exclude`
pattern matches it. Whether it really is an image is for the decoder to
say (a text file named `x.jpg` gets an error results file).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import cache
from pathlib import Path

from PIL import Image

from . import results

# EPS is opened by running Ghostscript on the file: never for untrusted input.
REFUSED_FORMATS = {"EPS"}


@dataclass(frozen=True)
class Candidate:
    path: str  # relative to the watched folder, '/'-separated
    size: int
    mtime_ns: int


@cache
def image_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in REFUSED_FORMATS)


def wanted(relative: str, exclude: tuple[str, ...] = ()) -> bool:
    """Whether a path (relative to the watched folder) names a candidate image."""
    parts = relative.split("/")
    name = parts[-1]
    if any(part.startswith(".") for part in parts) or results.is_ours(name):
        return False
    if os.path.splitext(name)[1].lower() not in image_extensions():
        return False
    return not any(fnmatch(relative, pattern) or fnmatch(name, pattern) for pattern in exclude)


def walk(root: Path, exclude: tuple[str, ...] = ()) -> Iterator[Candidate]:
    """Every candidate image below `root` (not following links to folders)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(folder)
        for name in sorted(files):
            relative = (base / name).relative_to(root).as_posix()
            if not wanted(relative, exclude):
                continue
            try:
                stat = (base / name).stat()
            except OSError:
                continue  # gone, or a broken link: nothing to answer
            yield Candidate(relative, stat.st_size, stat.st_mtime_ns)


def leftovers(root: Path) -> Iterator[Path]:
    """Temporary results files below `root` (a crash mid-write leaves them)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(results.TEMP_PREFIX) and name.endswith(".tmp"):
                yield Path(folder) / name


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, links resolved, stays within `root`."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop
        return False
