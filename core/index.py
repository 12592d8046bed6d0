"""Build an index of the library into new files and swap it in atomically.

An index built at library generation G lives in `index/<G>.ann` (Annoy,
memory-mapped by readers) and `index/<G>.ids.npy` (Annoy item -> library row
id). Below `exact_below` vectors the index is the plain matrix instead,
`index/<G>.vectors.npy`, searched exactly: at that size an exact scan of
many queries at once is faster than Annoy, and it never misses.
`index/current.json` names the index in use; it is replaced by rename,
so a reader sees the old index or the new one, never half of one. The
previous index's files are kept one round so that a reader that has just
read the old pointer can still open them.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from .errors import StateError
from .store import Library

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexInfo:
    """What `current.json` says of the index in use."""

    generation: int  # library generation it was built from
    items: int
    dim: int
    metric: str
    trees: int
    model_id: str | None
    built_at: str
    seconds: float
    kind: str = "annoy"  # or "exact": the vectors themselves, searched exactly


@dataclass
class BuiltIndex:
    """A loaded index: Annoy (memory-mapped) or the vectors, and the item -> row id map."""

    info: IndexInfo
    annoy: AnnoyIndex | None  # None when the library had no vectors, or for an exact index
    row_ids: np.ndarray
    vectors: np.ndarray | None = None  # an exact index's vectors


def folder(state_dir: Path) -> Path:
    return state_dir / "index"


def build(library: Library, state_dir: Path, *, metric: str, trees: int,
          model_id: str | None, exact_below: int = 0) -> IndexInfo:
    """Index the usable images of `library` that `model_id` encoded, as of now, and make
    that the current index (vectors of two models cannot be compared).

    Fewer than `exact_below` vectors make an exact index (the matrix itself).
    """
    started = time.monotonic()
    generation = library.generation
    row_ids, vectors = library.vectors(up_to=generation, model_id=model_id)
    home = folder(state_dir)
    home.mkdir(parents=True, exist_ok=True)
    dim = int(vectors.shape[1]) if len(vectors) else 0
    kind = "exact" if len(vectors) < exact_below else "annoy"
    if kind == "exact":
        write_durably(home / f"{generation}.vectors.npy", vectors)
    elif len(vectors):
        write_annoy(home / f"{generation}.ann", vectors, metric, trees)
    write_durably(home / f"{generation}.ids.npy", row_ids)
    info = IndexInfo(generation, len(row_ids), dim, metric, trees, model_id,
                     datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     round(time.monotonic() - started, 3), kind)
    try:
        previous = current_info(state_dir)
    except StateError:  # a damaged pointer: this build replaces it (what `rebuild` is for)
        previous = None
    pointer = json.dumps(asdict(info), indent=1).encode()
    write_durably(home / "current.json", pointer)
    if previous is not None:
        remove_older_than(home, previous.generation)
    library.forget_deleted(up_to=generation)
    log.info("index built: %d items (%s) at generation %d in %.1f s",
             info.items, kind, generation, info.seconds)
    return info


def write_annoy(path: Path, vectors: np.ndarray, metric: str, trees: int) -> None:
    index = AnnoyIndex(vectors.shape[1], metric)  # type: ignore[arg-type]
    partial = path.with_name(path.name + ".partial")
    index.on_disk_build(str(partial))  # builds in the file: no second copy in memory
    for item, vector in enumerate(vectors):
        index.add_item(item, vector)
    index.build(trees, n_jobs=-1)
    index.unload()
    fsync(partial)
    os.replace(partial, path)


def write_durably(path: Path, content: np.ndarray | bytes) -> None:
    """Write `content` to a temporary file, fsync it and rename it over `path`."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        if isinstance(content, np.ndarray):
            np.save(out, content)
        else:
            out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
    fsync(path.parent)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_older_than(home: Path, keep_from: int) -> None:
    """Delete index files of generations before `keep_from`, and leftovers of crashed builds."""
    for path in home.iterdir():
        stem = path.name.split(".", 1)[0]
        if path.name.endswith(".partial") or (stem.isdigit() and int(stem) < keep_from):
            path.unlink(missing_ok=True)


def current_info(state_dir: Path) -> IndexInfo | None:
    """What the current index is, or None when none was built yet."""
    try:
        raw = json.loads((folder(state_dir) / "current.json").read_bytes())
        return IndexInfo(**raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as error:
        raise StateError(f"{folder(state_dir) / 'current.json'}: unreadable ({error}); "
                         "run `lookalike rebuild`") from None


def load(state_dir: Path) -> BuiltIndex | None:
    """The current index, memory-mapped, or None when none was built yet."""
    info = current_info(state_dir)
    if info is None:
        return None
    home = folder(state_dir)
    try:
        row_ids = np.load(home / f"{info.generation}.ids.npy")
        annoy, vectors = None, None
        if info.kind == "exact":
            vectors = np.load(home / f"{info.generation}.vectors.npy")
            held = len(vectors)
        elif info.items:
            annoy = AnnoyIndex(info.dim, info.metric)  # type: ignore[arg-type]
            annoy.load(str(home / f"{info.generation}.ann"))
            held = annoy.get_n_items()
        else:
            held = 0
    except (OSError, ValueError) as error:
        raise StateError(f"index at generation {info.generation} is damaged ({error}); "
                         "run `lookalike rebuild`") from None
    if held != len(row_ids):
        raise StateError(f"index at generation {info.generation} holds {held} "
                         f"items but maps {len(row_ids)}; run `lookalike rebuild`")
    return BuiltIndex(info, annoy, row_ids, vectors)
