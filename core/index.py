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

`index/current.json` names the index in use; it is replaced by rename,
so a reader sees the old index or the new one, never half of one. The
previous index's files are kept one round so that a reader that has just
read the old pointer can still open them.
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

import numpy as np
from annoy import AnnoyIndex

from .errors import StateError
from .store import Library

log = logging.getLogger(__name__)

AXES_SAMPLE = 50_000  # vectors the projection is fitted on: plenty for 10^3 directions
PROJECT_BLOCK = 65_536  # vectors projected at a time
SIGNS_AT_MOST = 1024  # sign bits per vector: 896 for the default encoder, 112 MB at 10^6
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


class Rows:
    """An index's full vectors on disk, read a few rows at a time.

    Read, not mapped: the rows a search ranks again stay in the kernel's
    page cache, not in the service's resident memory.
    """

    def __init__(self, path: Path) -> None:
        self.file = open(path, "rb")  # noqa: SIM115 - open as long as the index is in use
        version = np.lib.format.read_magic(self.file)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(self.file)
        if fortran or dtype != np.dtype("<f4") or len(shape) != 2:
            raise ValueError(f"{path.name}: not a matrix of float32")
        self.start = self.file.tell()
        self.count, self.dim = shape
        self.width = self.dim * 4
        if os.fstat(self.file.fileno()).st_size != self.start + self.count * self.width:
            raise ValueError(f"{path.name}: truncated")

    def __len__(self) -> int:
        return int(self.count)

    def take(self, items: np.ndarray) -> np.ndarray:
        """The vectors of index `items`, in their order."""
        taken = np.empty((len(items), self.dim), "<f4")
        into = memoryview(taken.data).cast("B")
        fd, start, width = self.file.fileno(), self.start, self.width
        for n, item in enumerate(items.tolist()):  # straight into place: no copy, no bytes
            if os.preadv(fd, [into[n * width:(n + 1) * width]], start + item * width) != width:
                raise StateError(f"{self.file.name}: shorter than its header says")
        return taken


@dataclass
class BuiltIndex:
    """A loaded index: Annoy (memory-mapped) or the vectors, and the item -> row id map."""

    info: IndexInfo
    annoy: AnnoyIndex | None  # None when the library had no vectors, or for an exact index
    row_ids: np.ndarray
    vectors: np.ndarray | None = None  # an exact index's vectors
    axes: np.ndarray | None = None  # (dim, reduced): the projection Annoy's vectors went through
    rows: Rows | None = None  # the full vectors, for ranking Annoy's candidates again
    planes: np.ndarray | None = None  # (dim, bits): the hyperplanes of the signs
    signs: np.ndarray | None = None  # (items, bits / 64) uint64: each item's signs

    def holding(self, row_ids: np.ndarray) -> np.ndarray:
        """Those of `row_ids` that the index holds (its `row_ids` are sorted: `build`)."""
        if not len(self.row_ids):
            return row_ids[:0]
        at = np.minimum(np.searchsorted(self.row_ids, row_ids), len(self.row_ids) - 1)
        return row_ids[self.row_ids[at] == row_ids]

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Queries as Annoy holds its items: projected onto the axes (unit length first,
        for the angular metric), or unchanged."""
        if self.axes is None:
            return vectors
        return project(vectors, self.info.metric, self.axes)

    def signs_of(self, vectors: np.ndarray) -> np.ndarray | None:
        """The signs of `vectors` as the index holds its items' (None: it holds none)."""
        return None if self.planes is None else signs_of(vectors, self.planes)

    def fewest_differing(self, items: np.ndarray, signs: np.ndarray, count: int) -> np.ndarray:
        """Positions in `items` of the `count` items whose signs differ least from `signs`:
        the nearest in angle, as far as the signs can tell."""
        assert self.signs is not None
        differing = np.bitwise_count(self.signs[items] ^ signs).sum(axis=1, dtype=np.int32)
        return np.argpartition(differing, count - 1)[:count]


def folder(state_dir: Path) -> Path:
    return state_dir / "index"


def build(library: Library, state_dir: Path, *, metric: str, trees: int,
          model_id: str | None, exact_below: int = 0, dims: int = 0) -> IndexInfo:
    """Index the usable images of `library` that `model_id` encoded, as of now, and make
    that the current index (vectors of two models cannot be compared).

    Fewer than `exact_below` vectors make an exact index (the matrix itself).
    Longer vectors than `dims` (0: no limit) are searched in two stages.
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
    if kind == "annoy" and len(vectors):
        write_annoy(home / f"{generation}.ann", vectors, annoy_metric(metric, reduced), trees)
    write_durably(home / f"{generation}.ids.npy", row_ids)
    info = IndexInfo(generation, len(row_ids), dim, metric, trees, model_id,
                     datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     round(time.monotonic() - started, 3), kind, reduced, bits)
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


def main_axes(vectors: np.ndarray, metric: str, dims: int) -> np.ndarray:
    """The `dims` directions along which `vectors` (unit length, for the angular metric)
    vary most, as a (dim, dims) matrix: projecting on them keeps the distances between
    vectors as well as any `dims` directions can. Fitted on a sample of at most
    AXES_SAMPLE vectors (the same sample each time: builds are repeatable)."""
    sample = vectors
    if len(vectors) > AXES_SAMPLE:
        sample = vectors[np.random.default_rng(0).choice(len(vectors), AXES_SAMPLE, replace=False)]
    sample = unit(sample, metric).astype(np.float64)
    variances, directions = np.linalg.eigh(np.cov(sample, rowvar=False))
    return np.ascontiguousarray(directions[:, ::-1][:, :dims], dtype=np.float32)


def project(vectors: np.ndarray, metric: str, axes: np.ndarray) -> np.ndarray:
    """`vectors` projected onto `axes`, a block at a time: never a second full-size copy."""
    step = PROJECT_BLOCK
    if not len(vectors):
        return np.zeros((0, axes.shape[1]), np.float32)
    return np.concatenate([unit(vectors[start:start + step], metric) @ axes
                           for start in range(0, len(vectors), step)])


def random_planes(dim: int, bits: int) -> np.ndarray:
    """`bits` random hyperplanes through the origin of `dim` dimensions, as the columns
    of a (dim, bits) matrix, at right angles to each other (`bits` <= `dim`): the same
    each build. Random, not the vectors' own coordinates: a vector's length is then
    spread evenly over the planes, and each sign says as much, where the coordinates'
    energy is uneven and their signs pick the nearest candidates far worse."""
    gaussian = np.random.default_rng(0).standard_normal((dim, bits))
    return np.ascontiguousarray(np.linalg.qr(gaussian)[0], dtype=np.float32)


def signs_of(vectors: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """On which side of each plane each vector lies, a bit each: (n, bits / 64) uint64."""
    above = np.asarray(vectors, np.float32) @ planes > 0
    return np.packbits(above, axis=1).view(np.uint64)


def unit(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors scaled to unit length for the angular metric (Annoy's angular distance
    is the Euclidean distance between them), unchanged for the Euclidean one."""
    if metric != "angular":
        return vectors
    lengths = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    return vectors / np.maximum(lengths, 1e-30)[:, None]


def annoy_metric(metric: str, reduced: int) -> str:
    # Projected unit vectors are no longer of unit length: compare them as they are.
    return "euclidean" if reduced else metric


def write_annoy(path: Path, vectors: np.ndarray, metric: str, trees: int) -> None:
    index = AnnoyIndex(vectors.shape[1], metric)  # type: ignore[arg-type]
    partial = path.with_name(path.name + ".partial")
    index.on_disk_build(str(partial))  # builds in the file: no second copy in memory
    with flushing(partial):
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
            write_array(out, content)
        else:
            out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
    fsync(path.parent)


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
        annoy, vectors, axes, rows, planes, signs = None, None, None, None, None, None
        held = 0
        if info.kind == "exact":
            vectors = np.load(home / f"{info.generation}.vectors.npy")
            held = len(vectors)
        elif info.items:
            annoy = AnnoyIndex(info.reduced or info.dim,
                               annoy_metric(info.metric, info.reduced))  # type: ignore[arg-type]
            annoy.load(str(home / f"{info.generation}.ann"))
            held = annoy.get_n_items()
        if info.reduced and info.items:
            axes = np.load(home / f"{info.generation}.axes.npy")
            rows = Rows(home / f"{info.generation}.vectors.npy")
            if axes.shape != (info.dim, info.reduced) or len(rows) != held:
                raise ValueError("its projection or its full vectors do not match it")
        if info.signs and info.items:
            planes = np.load(home / f"{info.generation}.planes.npy")
            signs = np.load(home / f"{info.generation}.signs.npy")
            if planes.shape != (info.dim, info.signs) or signs.shape != (held, info.signs // 8):
                raise ValueError("its signs do not match it")
            signs = signs.view(np.uint64)
    except (OSError, ValueError) as error:
        raise StateError(f"index at generation {info.generation} is damaged ({error}); "
                         "run `lookalike rebuild`") from None
    if len(row_ids) and not np.all(row_ids[1:] > row_ids[:-1]):
        raise StateError(f"index at generation {info.generation} maps its items out of "
                         "order; run `lookalike rebuild`")
    if held != len(row_ids):
        raise StateError(f"index at generation {info.generation} holds {held} "
                         f"items but maps {len(row_ids)}; run `lookalike rebuild`")
    return BuiltIndex(info, annoy, row_ids, vectors, axes, rows, planes, signs)
