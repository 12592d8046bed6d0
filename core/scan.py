"""Which files of a watched folder are images to answer.

A file is a candidate when its name ends in an extension that Pillow can
open, it is not hidden, not one of our results files, and no `exclude`
pattern matches it. Whether it really is an image is for the decoder to
say (a text file named `x.jpg` gets an error results file).
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import cache
from pathlib import Path

from PIL import Image

from . import (
    images,  # noqa: F401  (registers HEIC before the extensions are listed)
    results,
)
from .errors import UnreadableImage

log = logging.getLogger(__name__)
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
    """Whether a path (relative to the watched folder) names a candidate image.

    A name that is not UTF-8 is not (the library and the results files hold
    UTF-8 text): `misnamed` tells such an image apart, so that it is logged.
    """
    return utf8(relative) and looks_wanted(relative, exclude)


def misnamed(relative: str, exclude: tuple[str, ...] = ()) -> bool:
    """Whether a path would be a candidate image but for a name that is not UTF-8."""
    return not utf8(relative) and looks_wanted(relative, exclude)


def utf8(relative: str) -> bool:
    """Whether a path decoded from the file system was valid UTF-8.

    Python decodes other bytes (say Latin-1 from an old share) to lone
    surrogates, which SQLite and a UTF-8 JSON file cannot hold.
    """
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(relative: str) -> str:
    """A path as a log line shows it: bytes that are not UTF-8 as \\xNN, a line break as \\n."""
    text = relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def looks_wanted(relative: str, exclude: tuple[str, ...]) -> bool:
    parts = relative.split("/")
    name = parts[-1]
    if any(part.startswith(".") for part in parts) or results.is_ours(name):
        return False
    if os.path.splitext(name)[1].lower() not in image_extensions():
        return False
    return not any(fnmatch(relative, pattern) or fnmatch(name, pattern) for pattern in exclude)


@dataclass
class Survey:
    """What one walk of a watched folder found, by path relative to it."""

    candidates: list[Candidate] = field(default_factory=list)
    results: set[str] = field(default_factory=set)  # our results files
    leftovers: list[str] = field(default_factory=list)  # temporaries a crash left

    def answered(self, relative: str) -> bool:
        """Whether the image at `relative` has a results file beside it."""
        folder, _, name = relative.rpartition("/")
        return f"{folder}/{results.results_name(name)}".lstrip("/") in self.results


def walk(root: Path, exclude: tuple[str, ...] = ()) -> list[Candidate]:
    """Every candidate image below `root` (not following links to folders)."""
    return survey(root, exclude).candidates


def survey(root: Path, exclude: tuple[str, ...] = (), under: str = "",
           deep: bool = True) -> Survey:
    """The candidate images below `root`, with the results files and leftover
    temporaries seen on the way (not following links to folders).

    `under` (a '/'-separated folder below `root`, reached through no link)
    limits the walk to that folder, and `deep` false to its own files: so
    that parts of one folder can be listed apart (`lookalike import`); paths
    stay relative to `root`.

    Each file is looked at from its folder's descriptor, by name: at 10^6
    images, resolving each whole path (and building a Path per file) made
    this walk most of the service's start-up.
    """
    found = Survey()
    top = os.path.realpath(root)  # the watched folder may be a link; links below it are not
    start = os.path.join(top, under) if under else top
    if not os.path.isdir(start):
        return found  # not mounted: nothing is there
    for folder, dirs, files, fd in os.fwalk(start):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if deep else []
        base = os.path.relpath(folder, top).replace(os.sep, "/") + "/"
        for name in sorted(files):
            relative = name if base == "./" else base + name
            if name.endswith(results.SUFFIX):
                found.results.add(relative)
            elif name.startswith(results.TEMP_PREFIX) and name.endswith(".tmp"):
                found.leftovers.append(relative)
            elif wanted(relative, exclude):
                status = stat_in(fd, name)
                if status is not None:
                    found.candidates.append(Candidate(relative, status.st_size,
                                                      status.st_mtime_ns))
            elif misnamed(relative, exclude):
                log.warning("%s: the file name is not UTF-8; not read (rename the file)",
                            shown(relative))
    return found


def stat_in(folder: int, name: str) -> os.stat_result | None:
    """The status of the file `name` in the open `folder`, through links; a loop of links
    as itself (answered with an error); None when gone or a broken link."""
    try:
        return os.stat(name, dir_fd=folder)
    except OSError as error:
        if error.errno != errno.ELOOP:
            return None  # gone, or a broken link: nothing to answer (yet)
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False)
    except OSError:
        return None


def leftovers(root: Path) -> Iterator[Path]:
    """Temporary results files below `root` (a crash mid-write leaves them)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(results.TEMP_PREFIX) and name.endswith(".tmp"):
                yield Path(folder) / name


def link_problem(root: Path, path: Path) -> UnreadableImage | None:
    """Why a path of `root` must not be read through its links, or None.

    A link that leads out of `root` is never followed ("outside"); a loop of
    links leads to no file ("unreadable"). A missing target is the reader's
    to report.
    """
    if plainly_below(root, path):
        return None
    try:
        resolved = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            return UnreadableImage("unreadable", "a loop of symbolic links: it leads to no file")
        return UnreadableImage("unreadable", f"cannot follow the path: {error.strerror}")
    if not resolved.is_relative_to(os.path.realpath(root)):
        return UnreadableImage("outside", "a link that leads outside the watched folder")
    return None


def plainly_below(root: Path, path: Path) -> bool:
    """Whether `path` names a file below `root` through no link and no "..": then it
    stays inside without resolving it, which costs a tenth of reading a small image.

    A component that is missing ends the look: the reader says the file vanished.
    """
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return False
    if ".." in parts:
        return False
    current = str(root)
    for part in parts:
        current = os.path.join(current, part)
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return False
        except FileNotFoundError:
            return True
        except OSError:
            return False
    return True
