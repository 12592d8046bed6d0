"""Build an index of the library into new files and swap it in atomically.

An index built at library generation G lives in `index/<G>.ann` (Annoy,
memory-mapped by readers) and `index/<G>.ids.npy` (Annoy item -> library row
id). Below `exact_below` vectors the index is the plain matrix instead,
`index/<G>.vectors.npy`, searched exactly: at that size an exact scan of
many queries at once is faster than Annoy, and it never misses.

Vectors longer than `dims` are searched in two stages: Annoy holds them
projected onto their `dims` main axes (`index/<G>.axes.npy`, PCA) and finds
candidates; `index/<G>.vectors.npy` holds them in full, and the candidates
are ranked again on those. Annoy's file, which the service maps into memory,
shrinks by the same factor, and each node it visits costs that much less.
For the angular metric, the service also holds each vector's signs: on which
side of each of up to 1,024 random hyperplanes through the origin it lies
(`index/<G>.planes.npy`, `index/<G>.signs.npy`), a bit each. The share of
signs two vectors differ in estimates the angle between them (SimHash), so
the candidates whose signs differ least from the query's are the ones worth
reading in full: Annoy can offer many candidates and few are read.

Annoy holds its items in an order that brings near vectors together
(`projection.near_together`; `index/<G>.order.npy`: each Annoy item's place
in the index): a query's candidates then lie in fewer places of Annoy's
file, and fewer of them miss the processor's caches than in the order of
the library's rows.

`index/current.json` names the index in use; it is replaced by rename,
so a reader sees the old index or the new one, never half of one. The
previous index's files are kept one round so that a reader that has just
read the old pointer can still open them. `load` opens the index in use as
the type of its kind (`index_kinds`).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import annoy
import numpy as np

from .atomic import replacing
from .errors import StateError
from .index_kinds import (
    BuiltIndex,
    EmptyIndex,
    ExactIndex,
    FullVectors,
    OneStageIndex,
    TwoStageIndex,
)
from .projection import (
    PROJECT_BLOCK,
    main_axes,
    near_together,
    project,
    random_planes,
    signs_of,
)
from .store import Library

log = logging.getLogger(__name__)

SIGNS_AT_MOST = 1024  # sign bits per vector: 456 for the default encoder, 57 MB at 10^6
# A build flushes its files to disk as it writes them. Left to the kernel, its
# gigabytes would wait in memory, and the service's next results sync (syncfs:
# the whole file system) would wait for all of them: a stall of seconds.
FLUSH_BYTES = 64 << 20  # written between two flushes of an array
FLUSH_EVERY_S = 0.5  # how often Annoy's file is flushed while Annoy writes it


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
    reduced: int = 0  # dimensions Annoy holds, projected; 0: the full vectors
    signs: int = 0  # sign bits held per vector, to pick the candidates read in full; 0: none
    ordered: bool = False  # Annoy's items in the order of `<G>.order.npy`, not the index's


def folder(state_dir: Path) -> Path:
    return state_dir / "index"


def build(library: Library, state_dir: Path, *, metric: str, trees: int,
          model_id: str | None, exact_below: int = 0, dims: int = 0) -> IndexInfo:
    """Index the usable images of `library` that `model_id` encoded, as of now, and make
    that the current index (vectors of two models cannot be compared).

    Fewer than `exact_below` vectors make an exact index (the matrix itself).
    Longer vectors than `dims` (0: no limit) are searched in two stages. The
    library is only read: dropping the tombstones this index no longer needs
    is the caller's (`Library.forget_deleted`, up to the returned generation).
    """
    started = time.monotonic()
    generation = library.generation
    row_ids, vectors = library.vectors(up_to=generation, model_id=model_id)
    home = folder(state_dir)
    home.mkdir(parents=True, exist_ok=True)
    dim = int(vectors.shape[1]) if len(vectors) else 0
    kind = "exact" if len(vectors) < exact_below else "annoy"
    reduced = dims if kind == "annoy" and 0 < dims < dim else 0
    bits = min(SIGNS_AT_MOST, dim // 64 * 64) if reduced and metric == "angular" else 0
    if kind == "exact" or reduced:
        write_durably(home / f"{generation}.vectors.npy", vectors)
    if bits:
        planes = random_planes(dim, bits)  # kept, not made again at load: another
        write_durably(home / f"{generation}.planes.npy", planes)  # LAPACK may make others
        write_durably(home / f"{generation}.signs.npy", np.concatenate(
            [signs_of(vectors[start:start + PROJECT_BLOCK], planes)
             for start in range(0, len(vectors), PROJECT_BLOCK)]).view(np.uint8))
    if reduced:
        axes = main_axes(vectors, metric, reduced)
        write_durably(home / f"{generation}.axes.npy", axes)
        vectors = project(vectors, metric, axes)
    ordered = kind == "annoy" and len(vectors) > 0
    if ordered:
        order = near_together(vectors)
        write_durably(home / f"{generation}.order.npy", order.astype(np.int32))
        write_annoy(home / f"{generation}.ann", vectors, order, annoy_metric(metric, reduced),
                    trees)
    write_durably(home / f"{generation}.ids.npy", row_ids)
    info = IndexInfo(generation, len(row_ids), dim, metric, trees, model_id,
                     datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     round(time.monotonic() - started, 3), kind, reduced, bits, ordered)
    try:
        previous = current_info(state_dir)
    except StateError:  # a damaged pointer: this build replaces it (what `rebuild` is for)
        previous = None
    pointer = json.dumps(asdict(info), indent=1).encode()
    write_durably(home / "current.json", pointer)
    if previous is not None:
        remove_older_than(home, previous.generation)
    log.info("index built: %d items (%s) at generation %d in %.1f s",
             info.items, kind, generation, info.seconds)
    return info


def annoy_metric(metric: str, reduced: int) -> str:
    # Projected unit vectors are no longer of unit length: compare them as they are.
    return "euclidean" if reduced else metric


def write_annoy(path: Path, vectors: np.ndarray, order: np.ndarray, metric: str,
                trees: int) -> None:
    """Annoy's trees over `vectors`, its item n being `vectors[order[n]]`."""
    forest = annoy.AnnoyIndex(vectors.shape[1], metric)  # type: ignore[arg-type]
    with replacing(path) as partial:
        forest.on_disk_build(str(partial))  # builds in the file: no second copy in memory
        with flushing(partial):
            for item, place in enumerate(order.tolist()):
                forest.add_item(item, vectors[place])
            forest.build(trees, n_jobs=-1)
        forest.unload()


def write_durably(path: Path, content: np.ndarray | bytes) -> None:
    """Write `content` (an array as `np.save` writes it, or bytes) to `path` atomically
    and durably."""
    with replacing(path) as partial, open(partial, "wb") as out:
        if isinstance(content, np.ndarray):
            write_array(out, content)
        else:
            out.write(content)


def write_array(out: BinaryIO, array: np.ndarray) -> None:
    """`array` as `np.save` writes it, flushed to disk every FLUSH_BYTES."""
    array = np.ascontiguousarray(array)
    np.lib.format.write_array_header_1_0(out, np.lib.format.header_data_from_array_1_0(array))
    data = array.reshape(-1).view(np.uint8)
    for start in range(0, len(data), FLUSH_BYTES):
        out.write(data[start:start + FLUSH_BYTES].data)
        out.flush()
        os.fdatasync(out.fileno())


@contextmanager
def flushing(path: Path) -> Iterator[None]:
    """Flush `path` to disk every FLUSH_EVERY_S while the block writes it."""
    done = threading.Event()
    fd = os.open(path, os.O_RDONLY)

    def flush() -> None:
        while not done.wait(FLUSH_EVERY_S):
            try:
                os.fdatasync(fd)
            except OSError:
                return  # the writer's own fsync at the end reports it
    flusher = threading.Thread(target=flush, name="flush", daemon=True)
    flusher.start()
    try:
        yield
    finally:
        done.set()
        flusher.join()
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
    """The current index (Annoy's file memory-mapped), or None when none was built yet."""
    info = current_info(state_dir)
    if info is None:
        return None
    home = folder(state_dir)
    try:
        built = load_files(home, info, np.load(home / f"{info.generation}.ids.npy"))
    except (OSError, ValueError) as error:
        raise StateError(f"index at generation {info.generation} is damaged ({error}); "
                         "run `lookalike rebuild`") from None
    row_ids = built.row_ids
    if len(row_ids) and not np.all(row_ids[1:] > row_ids[:-1]):
        raise StateError(f"index at generation {info.generation} maps its items out of "
                         "order; run `lookalike rebuild`")
    stored = built.stored_items()
    if stored != len(row_ids):
        raise StateError(f"index at generation {info.generation} holds {stored} "
                         f"items but maps {len(row_ids)}; run `lookalike rebuild`")
    return built


def load_files(home: Path, info: IndexInfo, row_ids: np.ndarray) -> BuiltIndex:
    """The index of kind `info.kind` from its files in `home`; ValueError (or OSError)
    when they do not match what `info` says."""
    def part(name: str) -> Path:
        return home / f"{info.generation}.{name}"

    if info.kind == "exact":
        return ExactIndex(info, row_ids, np.load(part("vectors.npy")))
    if not info.items:
        return EmptyIndex(info, row_ids)
    trees = annoy.AnnoyIndex(info.reduced or info.dim,
                             annoy_metric(info.metric, info.reduced))  # type: ignore[arg-type]
    trees.load(str(part("ann")))
    stored = trees.get_n_items()
    order = np.load(part("order.npy")) if info.ordered else None
    if order is not None and (order.shape != (stored,) or order.min() < 0
                              or order.max() >= stored):
        raise ValueError("its order does not match it")
    if not info.reduced:
        return OneStageIndex(info, row_ids, trees, order)
    axes = np.load(part("axes.npy"))
    full_vectors = FullVectors(part("vectors.npy"))
    if axes.shape != (info.dim, info.reduced) or len(full_vectors) != stored:
        raise ValueError("its projection or its full vectors do not match it")
    if not info.signs:
        return TwoStageIndex(info, row_ids, trees, order, axes, full_vectors)
    planes = np.load(part("planes.npy"))
    signs = np.load(part("signs.npy"))
    if planes.shape != (info.dim, info.signs) or signs.shape != (stored, info.signs // 8):
        raise ValueError("its signs do not match it")
    return TwoStageIndex(info, row_ids, trees, order, axes, full_vectors, planes,
                         signs.view(np.uint64))
