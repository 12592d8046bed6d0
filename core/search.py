"""Neighbours of latent vectors: the built index plus what came after it.

Annoy cannot take items after a build, so a `Searcher` joins two sources:
the last built index and an exact scan of the rows changed since that
build. Index items whose rows changed or were deleted since the build are
stale and skipped, as is the query itself. A small library's index is a
plain matrix (`index.build`'s `exact_below`): it is searched exactly too,
many queries at a time, which at that size beats Annoy and never misses.
When Annoy holds projected vectors, its `candidates` nearest are ranked
again on the full vectors: all of them, or, when the index holds the
vectors' signs, the `rescore` whose signs differ least from the query's.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .index import BuiltIndex
from .store import Library

DEFAULT_CANDIDATES = 640  # the schema's index.candidates
DEFAULT_RESCORE = 192  # the schema's index.rescore
T = TypeVar("T")
Q = TypeVar("Q")
SCORES_AT_ONCE = 1 << 20  # queries x rows per block of the exact scan (4 MB: stays in cache)
WITHIN_SLACK = 1e-4  # on squared distances: float32 rounding over 10^3 dimensions is less


@dataclass(frozen=True)
class Neighbor:
    row_id: int
    distance: float


class Flat:
    """Vectors searched exactly: every distance, computed many queries at a time."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, metric: str) -> None:
        if metric not in ("angular", "euclidean"):
            raise ValueError(f"unknown metric {metric!r}")
        self.ids = ids
        self.vectors = vectors.astype(np.float32, copy=False)
        self.metric = metric
        if metric == "angular":  # Annoy's angular distance is Euclidean between unit vectors
            self.rows = self.vectors / np.maximum(norms(self.vectors), 1e-30)[:, None]
        else:
            self.rows = self.vectors
            self.squares = np.einsum("ij,ij->i", self.rows, self.rows)
        self.order = np.argsort(ids, kind="stable")

    def __len__(self) -> int:
        return len(self.ids)

    def nearest(self, queries: np.ndarray, k: int, exclude: Sequence[int | None],
                stale: np.ndarray | None = None) -> list[list[Neighbor]]:
        """The k nearest rows to each query, never its `exclude` nor a `stale` row id."""
        if not len(self.ids) or not k:
            return [[] for _ in queries]
        queries = self.prepare(queries)
        skipped = np.isin(self.ids, stale) if stale is not None and len(stale) else None
        found: list[list[Neighbor]] = []
        step = max(1, SCORES_AT_ONCE // len(self.ids))
        for start in range(0, len(queries), step):
            block = queries[start:start + step]
            scores = self.scores(block)
            if skipped is not None:
                scores[:, skipped] = np.inf
            self.mask_own(scores, exclude[start:start + step])
            found += self.take(block, scores, k)
        return found

    def within(self, queries: np.ndarray, radii: np.ndarray,
               exclude: np.ndarray) -> list[np.ndarray]:
        """For each query, the ids of the rows nearer to it than its radius (inf: every
        row), never its own `exclude` id. Measured in float32 with a little slack, so
        none is missed: the caller measures the few found again, exactly."""
        if not len(self.ids):
            return [self.ids] * len(queries)
        queries = self.prepare(queries)
        squared = self.scores(queries)  # the squared distance, less |q|^2
        squared += 2.0 if self.metric == "angular" else \
            np.einsum("ij,ij->i", queries, queries)[:, None]  # (unit vectors: |q|^2 + |r|^2)
        limits = np.square(np.asarray(radii, np.float64)) + WITHIN_SLACK
        hits = (squared < limits[:, None].astype(np.float32)) & \
            (self.ids[None, :] != np.asarray(exclude, np.int64)[:, None])
        return [self.ids[np.flatnonzero(row)] for row in hits]

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, np.float32)
        if self.metric == "angular":
            return queries / np.maximum(norms(queries), 1e-30)[:, None]
        return queries

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """A score per (query, row) that orders rows as their distance does (lower: nearer).

        The distances themselves are computed only for the rows kept: over a
        whole block, the square root alone would cost as much as the product.
        """
        scores = queries @ self.rows.T
        scores *= -2.0
        if self.metric == "euclidean":
            scores += self.squares  # |x|^2 - 2 q.x: the distance squared, less |q|^2
        return scores

    def distances(self, queries: np.ndarray, columns: np.ndarray,
                  scores: np.ndarray) -> np.ndarray:
        """Distances, as Annoy reports them, from each prepared query to its rows at
        `columns`, whose `scores` those are."""
        if self.metric == "angular":  # sqrt(2 - 2 cos): a zero vector is sqrt(2) from all
            # The score is already -2 cos, in the same float32: no need to gather the
            # rows again (22 MB of fresh memory for a block of 524 queries).
            squared = 2.0 + scores
        else:  # |x|^2 - 2 q.x + |q|^2 would lose near-duplicates' distances to rounding
            difference = self.rows[columns] - queries[:, None, :]  # (queries, columns, dim)
            squared = np.einsum("qcd,qcd->qc", difference, difference)
        return np.sqrt(np.clip(squared, 0.0, None))

    def mask_own(self, scores: np.ndarray, exclude: Sequence[int | None]) -> None:
        """Set each query's own row (its `exclude`) to infinity."""
        wanted = np.array([-1 if row is None else row for row in exclude], np.int64)
        sorted_ids = self.ids[self.order]
        at = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
        hit = sorted_ids[at] == wanted
        scores[np.flatnonzero(hit), self.order[at[hit]]] = np.inf

    def take(self, queries: np.ndarray, scores: np.ndarray, k: int) -> list[list[Neighbor]]:
        take = min(k, scores.shape[1])
        nearest = np.argpartition(scores, take - 1, axis=1)[:, :take]
        chosen = np.take_along_axis(scores, nearest, axis=1)
        kept = np.isfinite(chosen)
        distances = self.distances(queries, nearest, chosen)
        # As Python lists first: indexing numpy arrays one element at a time costs 10x.
        return [[Neighbor(row, d) for row, d, ok in zip(rows, row_distances, keep, strict=True)
                 if ok]
                for rows, row_distances, keep in zip(self.ids[nearest].tolist(),
                                                     distances.tolist(), kept.tolist(),
                                                     strict=True)]


class Searcher:
    """Search over `index` (may be None) and the rows changed since it was built."""

    def __init__(self, index: BuiltIndex | None, fresh_ids: np.ndarray, fresh: np.ndarray,
                 stale: set[int], metric: str, search_k: int = -1,
                 candidates: int = DEFAULT_CANDIDATES, pool: Executor | None = None,
                 rescore: int = DEFAULT_RESCORE) -> None:
        self.index = index
        self.fresh = Flat(fresh_ids, fresh, metric)
        self.flat = None if index is None or index.vectors is None else \
            Flat(index.row_ids, index.vectors, metric)
        # Row ids the index holds wrong (changed or deleted since its build). Not the new
        # rows: each stale row widens Annoy's search (`annoy_items`), and in a burst of new
        # images that made every search read 30% more candidates than it keeps.
        self.stale = self.held(np.fromiter(stale, np.int64, len(stale)))
        self.metric = metric
        self.search_k = search_k
        self.candidates = candidates
        self.rescore = rescore
        self.pool = pool  # Annoy lets go of the GIL while it searches: queries run side by side

    @classmethod
    def open(cls, library: Library, index: BuiltIndex | None, metric: str,
             search_k: int = -1, candidates: int = DEFAULT_CANDIDATES,
             pool: Executor | None = None, rescore: int = DEFAULT_RESCORE) -> Searcher:
        since = index.info.generation if index is not None else 0
        fresh_ids, fresh, stale = library.changed_since(since)
        if index is not None:
            metric = index.info.metric
        return cls(index, fresh_ids, fresh, stale, metric, search_k, candidates, pool, rescore)

    def refresh(self, changed: dict[int, np.ndarray], removed: Iterable[int] = ()) -> None:
        """Follow rows that changed after the build: search `changed` exactly, drop `removed`."""
        touched = set(changed) | set(removed)
        if not touched:
            return
        touched_ids = np.fromiter(touched, np.int64, len(touched))
        self.stale = np.union1d(self.stale, self.held(touched_ids))
        keep = ~np.isin(self.fresh.ids, touched_ids)
        ids = np.fromiter(changed, np.int64, len(changed))
        parts = [self.fresh.vectors[keep]] if len(self.fresh) else []
        parts += [np.stack(list(changed.values())).astype(np.float32)] if changed else []
        vectors = np.concatenate(parts) if parts else self.fresh.vectors[:0]
        self.fresh = Flat(np.concatenate([self.fresh.ids[keep], ids]), vectors, self.metric)

    def held(self, row_ids: np.ndarray) -> np.ndarray:
        """Those of `row_ids` that the index holds."""
        return row_ids[:0] if self.index is None else self.index.holding(row_ids)

    @property
    def pending(self) -> int:
        """Rows searched exactly because the index does not hold them yet."""
        return len(self.fresh)

    @property
    def items(self) -> int:
        return self.pending + (self.index.info.items if self.index is not None else 0)

    def neighbors(self, vector: np.ndarray, k: int, exclude: int | None = None) -> list[Neighbor]:
        """The k nearest rows to `vector`, nearest first, never `exclude`."""
        return self.neighbors_many(np.asarray(vector)[None], k, [exclude])[0]

    def neighbors_of(self, rows: dict[int, np.ndarray], k: int) -> dict[int, list[Neighbor]]:
        """The k nearest rows to each library row's vector, never the row itself."""
        found = self.neighbors_many(np.array(list(rows.values())), k, list(rows))
        return dict(zip(rows, found, strict=True))

    def neighbors_many(self, vectors: np.ndarray, k: int,
                       exclude: Sequence[int | None]) -> list[list[Neighbor]]:
        """The k nearest rows to each of `vectors`, nearest first, never its `exclude`."""
        if not len(vectors):
            return []
        if self.flat is not None:
            indexed = self.flat.nearest(vectors, k, exclude, self.stale)
        elif self.index is not None and self.index.rows is not None:
            indexed = self.ranked_again(vectors, k, exclude)
        else:
            indexed = self.each(lambda vector, own: self.from_annoy(vector, k, own),
                                list(vectors), exclude)
        fresh = self.fresh.nearest(vectors, k, exclude)
        found = []
        for old, new in zip(indexed, fresh, strict=True):
            both = old + new
            both.sort(key=lambda n: (n.distance, n.row_id))
            found.append(both[:k])
        return found

    def from_annoy(self, vector: np.ndarray, k: int, exclude: int | None) -> list[Neighbor]:
        items, distances = self.annoy_items(vector, k, exclude, k)
        if self.index is None or not len(items):
            return []
        return [Neighbor(int(row), float(d)) for row, d in
                zip(self.index.row_ids[items], distances, strict=True)][:k]

    def annoy_items(self, vector: np.ndarray, k: int, exclude: int | None,
                    want: int) -> tuple[np.ndarray, np.ndarray]:
        """Annoy's `want` nearest items to `vector` (or more, until k of them are neither
        `exclude` nor stale), without those, and Annoy's distances to them."""
        if self.index is None or self.index.annoy is None:
            return np.zeros(0, np.int64), np.zeros(0)
        total = self.index.info.items
        # Ask for enough to survive the skipped items; widen if too many were stale.
        want = min(total, want + min(len(self.stale), k) + 1)
        while True:
            found, distances = self.index.annoy.get_nns_by_vector(
                vector.tolist(), want, search_k=self.search_k, include_distances=True)
            items = np.asarray(found, np.int64)
            rows = self.index.row_ids[items]
            keep = rows != (-1 if exclude is None else exclude)
            if len(self.stale):
                keep &= ~np.isin(rows, self.stale)
            if keep.sum() >= k or want >= total:
                return items[keep], np.asarray(distances)[keep]
            want = min(total, want * 2)

    def ranked_again(self, vectors: np.ndarray, k: int,
                     exclude: Sequence[int | None]) -> list[list[Neighbor]]:
        """Annoy's candidates for each vector, ranked on the full vectors: the k nearest.

        With signs, only the `rescore` candidates whose signs differ least
        are read: the signs, held in memory, sort out the likely neighbours
        among many candidates, so Annoy can offer more of them without more
        reads from disk. The candidates' vectors are read once for all the
        queries: neighbours of a batch of look-alike images share many.
        """
        assert self.index is not None and self.index.rows is not None
        index = self.index
        vectors = np.asarray(vectors, np.float32)
        projected, signs = index.project(vectors), index.signs_of(vectors)
        wanted, kept = max(k, self.candidates), max(k, self.rescore)

        def shortlist(at: int, own: int | None) -> np.ndarray:
            items = self.annoy_items(projected[at], k, own, wanted)[0]
            if signs is None or len(items) <= kept:
                return items
            return items[index.fewest_differing(items, signs[at], kept)]
        candidates = self.each(shortlist, range(len(vectors)), exclude)
        items = np.unique(np.concatenate(candidates))  # sorted: the file is read in order
        rows = self.index.rows.take(items)
        lengths = np.maximum(norms(rows), 1e-30) if self.metric == "angular" else None
        found = []
        for vector, mine in zip(vectors, candidates, strict=True):
            if len(mine) == len(items):  # one query (or the same candidates): no gathering
                at, mine_rows, mine_lengths = np.arange(len(items)), rows, lengths
            else:
                at = np.searchsorted(items, mine)
                mine_rows = rows[at]
                mine_lengths = lengths[at] if lengths is not None else None
            nearest = at[self.closest(mine_rows, mine_lengths, np.asarray(vector, np.float32), k)]
            near = distance(rows[nearest], vector, self.metric)
            found.append([Neighbor(row, d) for row, d in zip(  # (lists: numpy's scalars are slow)
                self.index.row_ids[items[nearest]].tolist(), near.tolist(), strict=True)])
        return found

    def each(self, search: Callable[[Q, int | None], T], vectors: Sequence[Q],
             exclude: Sequence[int | None]) -> list[T]:
        """`search` of each vector (with its `exclude`), in the pool when there is one."""
        if self.pool is None or len(vectors) < 2:
            return [search(vector, own) for vector, own in zip(vectors, exclude, strict=True)]
        return list(self.pool.map(search, vectors, exclude))

    def closest(self, rows: np.ndarray, lengths: np.ndarray | None, vector: np.ndarray,
                k: int) -> np.ndarray:
        """Positions of the k rows nearest to `vector`, nearest first (scored in float32;
        `distance` then measures the chosen few precisely)."""
        if lengths is not None:  # angular: the highest cosine
            scores = -(rows @ vector) / lengths
        else:
            scores = np.einsum("ij,ij->i", rows, rows) - 2.0 * (rows @ vector)
        take = min(k, len(scores))
        if not take:
            return np.zeros(0, np.int64)
        nearest = np.argpartition(scores, take - 1)[:take]
        return nearest[np.argsort(scores[nearest], kind="stable")]


def norms(matrix: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", matrix, matrix))


def distance(matrix: np.ndarray, vector: np.ndarray, metric: str) -> np.ndarray:
    """Distances from each row of `matrix` to `vector`, as Annoy reports them."""
    if metric not in ("angular", "euclidean"):
        raise ValueError(f"unknown metric {metric!r}")
    # In float64: near 0, sqrt(2 - 2 cos) magnifies float32's rounding to 3e-4.
    matrix, vector = np.asarray(matrix, np.float64), np.asarray(vector, np.float64)
    if metric == "angular":  # sqrt(2 - 2 cos): a zero vector is sqrt(2) from all
        cosines = matrix @ vector / np.maximum(norms(matrix) * np.linalg.norm(vector), 1e-30)
        return np.sqrt(np.clip(2.0 - 2.0 * cosines, 0.0, None))
    return np.sqrt(np.einsum("ij,ij->i", matrix - vector, matrix - vector))
