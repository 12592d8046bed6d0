"""A built index as loaded: one type per kind, each answering `search` and `in_index`.

- `EmptyIndex`: built from a library that held no vectors; finds nothing.
- `ExactIndex`: the plain matrix of a small library (below `index.exact_below`),
  searched exactly, many queries at a time.
- `OneStageIndex`: Annoy on the full vectors (memory-mapped): its nearest
  are the answer.
- `TwoStageIndex`: Annoy on vectors projected onto their main axes, whose
  candidates are ranked again on the full vectors (`FullVectors`, on disk):
  all of them, or, when the index holds the vectors' signs, the `rescore`
  whose signs differ least from the query's.

`index.load` makes them from the files `index.build` wrote.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import annoy
import numpy as np

from .errors import StateError
from .exact import ExactScan, Neighbor, distance, norms
from .projection import project, signs_of

if TYPE_CHECKING:
    from .index import IndexInfo

DEFAULT_CANDIDATES = 640  # the schema's index.candidates
DEFAULT_RESCORE = 192  # the schema's index.rescore
# At most this many queries' candidates have their full vectors read together: what
# one read holds in memory grows with the queries, while a few hundred look-alike
# queries already share most of what they read.
READ_TOGETHER = 256
T = TypeVar("T")
Q = TypeVar("Q")


@dataclass
class Tuning:
    """How an Annoy index is searched: the `index` settings that a reload may change,
    and the pool its queries run in side by side (Annoy lets go of the GIL)."""

    search_k: int = -1
    candidates: int = DEFAULT_CANDIDATES
    rescore: int = DEFAULT_RESCORE
    pool: Executor | None = None


class BuiltIndex(ABC):
    """A loaded index: what `current.json` says of it, and its items' row ids (sorted)."""

    def __init__(self, info: IndexInfo, row_ids: np.ndarray) -> None:
        self.info = info
        self.row_ids = row_ids

    def in_index(self, row_ids: np.ndarray) -> np.ndarray:
        """Those of `row_ids` that the index holds."""
        if not len(self.row_ids):
            return row_ids[:0]
        return row_ids[self.places(row_ids)[1]]

    def places(self, row_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each of `row_ids`' item (its `row_ids` are sorted: `build`), and whether the
        index holds it there; the index holds at least one item."""
        at = np.minimum(np.searchsorted(self.row_ids, row_ids), len(self.row_ids) - 1)
        return at, self.row_ids[at] == row_ids

    def vectors_of(self, row_ids: np.ndarray) -> np.ndarray | None:
        """The full vectors of `row_ids` (each of them held: `in_index`), or None when
        the index keeps none it can give."""
        return None

    def regions(self, row_ids: np.ndarray) -> np.ndarray | None:
        """A number per row id that rows near each other tend to share the leading bits
        of (the largest for one the index does not hold), or None when the index can
        tell none."""
        return None

    @abstractmethod
    def stored_items(self) -> int:
        """How many items the index's own files hold (`load` checks them against the map)."""

    @abstractmethod
    def search(self, vectors: np.ndarray, k: int, exclude: Sequence[int | None],
               stale: np.ndarray, tuning: Tuning) -> list[list[Neighbor]]:
        """The k nearest items to each of `vectors`, nearest first, never its `exclude`
        nor a `stale` row id (one the library changed or deleted since the build)."""


class EmptyIndex(BuiltIndex):
    """The index of a library that held no vectors."""

    def stored_items(self) -> int:
        return 0

    def search(self, vectors: np.ndarray, k: int, exclude: Sequence[int | None],
               stale: np.ndarray, tuning: Tuning) -> list[list[Neighbor]]:
        return [[] for _ in vectors]


class ExactIndex(BuiltIndex):
    """The vectors themselves, searched exactly: at this size faster than Annoy."""

    def __init__(self, info: IndexInfo, row_ids: np.ndarray, vectors: np.ndarray) -> None:
        super().__init__(info, row_ids)
        self.vectors = vectors
        self.scan = ExactScan(row_ids, vectors, info.metric)

    def stored_items(self) -> int:
        return len(self.vectors)

    def vectors_of(self, row_ids: np.ndarray) -> np.ndarray:
        return self.vectors[np.searchsorted(self.row_ids, row_ids)]

    def search(self, vectors: np.ndarray, k: int, exclude: Sequence[int | None],
               stale: np.ndarray, tuning: Tuning) -> list[list[Neighbor]]:
        return self.scan.nearest(vectors, k, exclude, stale)


class AnnoyBacked(BuiltIndex):
    """An index whose items Annoy's trees hold, memory-mapped: a query reads a few of them."""

    def __init__(self, info: IndexInfo, row_ids: np.ndarray, trees: annoy.AnnoyIndex,
                 order: np.ndarray | None = None) -> None:
        super().__init__(info, row_ids)
        self.annoy = trees
        self.order = order  # each Annoy item's place in the index (None: the same)

    def stored_items(self) -> int:
        return int(self.annoy.get_n_items())

    def candidates(self, vector: np.ndarray, k: int, exclude: int | None, want: int,
                   stale: np.ndarray, search_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Annoy's `want` nearest items to `vector` (or more, until k of them are neither
        `exclude` nor stale), without those, and Annoy's distances to them."""
        total = self.info.items
        # Ask for enough to survive the skipped items; widen if too many were stale.
        want = min(total, want + min(len(stale), k) + 1)
        while True:
            found, distances = self.annoy.get_nns_by_vector(
                vector.tolist(), want, search_k=search_k, include_distances=True)
            items = np.asarray(found, np.int64)
            if self.order is not None:
                items = self.order[items]
            rows = self.row_ids[items]
            keep = rows != (-1 if exclude is None else exclude)
            if len(stale):
                keep &= ~np.isin(rows, stale)
            if keep.sum() >= k or want >= total:
                return items[keep], np.asarray(distances)[keep]
            want = min(total, want * 2)


class OneStageIndex(AnnoyBacked):
    """Annoy over the full vectors: the nearest items it finds are the answer."""

    def search(self, vectors: np.ndarray, k: int, exclude: Sequence[int | None],
               stale: np.ndarray, tuning: Tuning) -> list[list[Neighbor]]:
        def one(vector: np.ndarray, own: int | None) -> list[Neighbor]:
            items, distances = self.candidates(vector, k, own, k, stale, tuning.search_k)
            return [Neighbor(int(row), float(d)) for row, d in
                    zip(self.row_ids[items], distances, strict=True)][:k]
        return each(tuning.pool, one, list(vectors), exclude)


class TwoStageIndex(AnnoyBacked):
    """Annoy over the vectors projected onto `axes`, its candidates ranked again on the
    `full_vectors`; `planes` and `signs` (angular metric only) pick the few read."""

    def __init__(self, info: IndexInfo, row_ids: np.ndarray, trees: annoy.AnnoyIndex,
                 order: np.ndarray | None, axes: np.ndarray, full_vectors: FullVectors,
                 planes: np.ndarray | None = None, signs: np.ndarray | None = None) -> None:
        super().__init__(info, row_ids, trees, order)
        self.axes = axes  # (dim, reduced): the projection Annoy's vectors went through
        self.full_vectors = full_vectors
        self.planes = planes  # (dim, bits): the hyperplanes of the signs
        self.signs = signs  # (items, bits / 64) uint64: each item's signs

    def vectors_of(self, row_ids: np.ndarray) -> np.ndarray:
        return self.full_vectors.read(np.searchsorted(self.row_ids, row_ids))

    def regions(self, row_ids: np.ndarray) -> np.ndarray | None:
        """The first 64 of each row's signs: rows that share the leading ones lie on the
        same side of those planes, as near rows mostly do."""
        if self.signs is None or not len(self.row_ids):
            return None
        at, held = self.places(row_ids)
        return np.where(held, self.signs[at, 0], np.iinfo(np.uint64).max)

    def signs_of(self, vectors: np.ndarray) -> np.ndarray | None:
        """The signs of `vectors` as the index holds its items' (None: it holds none)."""
        return None if self.planes is None else signs_of(vectors, self.planes)

    def fewest_differing(self, items: np.ndarray, signs: np.ndarray, count: int) -> np.ndarray:
        """Positions in `items` of the `count` items whose signs differ least from `signs`:
        the nearest in angle, as far as the signs can tell."""
        assert self.signs is not None
        differing = np.bitwise_count(self.signs[items] ^ signs).sum(axis=1, dtype=np.int32)
        return np.argpartition(differing, count - 1)[:count]

    def search(self, vectors: np.ndarray, k: int, exclude: Sequence[int | None],
               stale: np.ndarray, tuning: Tuning) -> list[list[Neighbor]]:
        """Annoy's candidates for each vector, ranked on the full vectors: the k nearest.

        With signs, only the `rescore` candidates whose signs differ least
        are read: the signs, held in memory, sort out the likely neighbours
        among many candidates, so Annoy can offer more of them without more
        reads from disk. The candidates' vectors are read once for up to
        READ_TOGETHER queries: neighbours of a batch of look-alike images
        share many.
        """
        found: list[list[Neighbor]] = []
        for start in range(0, len(vectors), READ_TOGETHER):
            end = start + READ_TOGETHER
            found += self.search_together(vectors[start:end], k, exclude[start:end], stale,
                                          tuning)
        return found

    def search_together(self, vectors: np.ndarray, k: int, exclude: Sequence[int | None],
                        stale: np.ndarray, tuning: Tuning) -> list[list[Neighbor]]:
        """`search` of a few queries, their candidates' full vectors read at once."""
        metric = self.info.metric
        vectors = np.asarray(vectors, np.float32)
        projected = project(vectors, metric, self.axes)
        signs = self.signs_of(vectors)
        wanted, kept = max(k, tuning.candidates), max(k, tuning.rescore)

        def shortlist(at: int, own: int | None) -> np.ndarray:
            items = self.candidates(projected[at], k, own, wanted, stale, tuning.search_k)[0]
            if signs is None or len(items) <= kept:
                return items
            return items[self.fewest_differing(items, signs[at], kept)]
        shortlists = each(tuning.pool, shortlist, range(len(vectors)), exclude)
        items = np.unique(np.concatenate(shortlists))  # sorted: the file is read in order
        rows = self.full_vectors.read(items)
        lengths = np.maximum(norms(rows), 1e-30) if metric == "angular" else None
        found = []
        for vector, mine in zip(vectors, shortlists, strict=True):
            if len(mine) == len(items):  # one query (or the same candidates): no gathering
                at, mine_rows, mine_lengths = np.arange(len(items)), rows, lengths
            else:
                at = np.searchsorted(items, mine)
                mine_rows = rows[at]
                mine_lengths = lengths[at] if lengths is not None else None
            nearest = at[closest(mine_rows, mine_lengths, vector, k)]
            near = distance(rows[nearest], vector, metric)
            found.append([Neighbor(row, d) for row, d in zip(  # (lists: numpy's scalars are slow)
                self.row_ids[items[nearest]].tolist(), near.tolist(), strict=True)])
        return found


class FullVectors:
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

    def read(self, items: np.ndarray) -> np.ndarray:
        """The vectors of index `items`, in their order."""
        taken = np.empty((len(items), self.dim), "<f4")
        into = memoryview(taken.data).cast("B")
        fd, start, width = self.file.fileno(), self.start, self.width
        for n, item in enumerate(items.tolist()):  # straight into place: no copy, no bytes
            if os.preadv(fd, [into[n * width:(n + 1) * width]], start + item * width) != width:
                raise StateError(f"{self.file.name}: shorter than its header says")
        return taken


def each(pool: Executor | None, search: Callable[[Q, int | None], T], vectors: Sequence[Q],
         exclude: Sequence[int | None]) -> list[T]:
    """`search` of each vector (with its `exclude`), in the pool when there is one."""
    if pool is None or len(vectors) < 2:
        return [search(vector, own) for vector, own in zip(vectors, exclude, strict=True)]
    return list(pool.map(search, vectors, exclude))


def closest(rows: np.ndarray, lengths: np.ndarray | None, vector: np.ndarray,
            k: int) -> np.ndarray:
    """Positions of the k rows nearest to `vector`, nearest first (scored in float32;
    `distance` then measures the chosen few precisely)."""
    if lengths is not None:  # angular: the highest cosine
        scores = -(rows @ vector) / lengths
    else:
        scores = np.einsum("ij,ij->i", rows, rows) - 2.0 * (rows @ vector)
    count = min(k, len(scores))
    if not count:
        return np.zeros(0, np.int64)
    nearest = np.argpartition(scores, count - 1)[:count]
    return nearest[np.argsort(scores[nearest], kind="stable")]
