"""Vectors searched exactly: every distance, many queries at a time.

An `ExactScan` measures each query against every row, in blocks of
queries that stay in the cache. It searches the rows changed since the
index was built, the whole index of a small library (`index.exact_below`),
and the rows a results check measures (`ExactScan.within`). `distance` is
Annoy's distance, measured precisely.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Queries x rows per block of the exact scan (16 MB): a few hundred queries a matrix
# product even at `index.exact_below` rows, which BLAS serves with less work per query
# than a few dozen.
SCORES_AT_ONCE = 1 << 22
GROUP = 64  # columns whose least score `lowest` takes first, in one pass
WITHIN_SLACK = 1e-4  # on squared distances: float32 rounding over 10^3 dimensions is less


@dataclass(frozen=True)
class Neighbor:
    row_id: int
    distance: float


class ExactScan:
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
        self.sorted_ids = ids[self.order]

    def __len__(self) -> int:
        return len(self.ids)

    def holds(self, row_ids: np.ndarray) -> np.ndarray:
        """Whether each of `row_ids` is a row of the scan."""
        return np.isin(row_ids, self.ids)

    def vectors_of(self, row_ids: np.ndarray) -> np.ndarray:
        """The vectors of `row_ids`, each a row of the scan (`holds`)."""
        return self.vectors[self.order[np.searchsorted(self.sorted_ids, row_ids)]]

    def nearest(self, queries: np.ndarray, k: int, exclude: Sequence[int | None],
                stale: np.ndarray | None = None) -> list[list[Neighbor]]:
        """The k nearest rows to each query, nearest first, never its `exclude` nor a
        `stale` row id."""
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
            found += self.nearest_by_score(block, scores, k)
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
        scores = (queries * np.float32(-2.0)) @ self.rows.T  # (x2 is exact: no rounding)
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
        at = np.minimum(np.searchsorted(self.sorted_ids, wanted), len(self.ids) - 1)
        hit = self.sorted_ids[at] == wanted
        scores[np.flatnonzero(hit), self.order[at[hit]]] = np.inf

    def nearest_by_score(self, queries: np.ndarray, scores: np.ndarray,
                         k: int) -> list[list[Neighbor]]:
        """The k rows of lowest score for each prepared query, as neighbours, nearest
        first (ties: the lower row id first); rows masked with an infinite score are
        left out."""
        nearest = lowest(scores, min(k, scores.shape[1]))
        chosen = np.take_along_axis(scores, nearest, axis=1)
        distances = self.distances(queries, nearest, chosen)
        found = self.ids[nearest]
        order = np.lexsort((found, distances), axis=1)  # (the last key sorts first)
        found, distances = (np.take_along_axis(found, order, axis=1),
                            np.take_along_axis(distances, order, axis=1))
        kept = np.isfinite(np.take_along_axis(chosen, order, axis=1))
        # As Python lists first: indexing numpy arrays one element at a time costs 10x.
        return [[Neighbor(row, d) for row, d, ok in zip(rows, row_distances, keep, strict=True)
                 if ok]
                for rows, row_distances, keep in zip(found.tolist(), distances.tolist(),
                                                     kept.tolist(), strict=True)]


def lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """The columns of the `count` lowest scores of each row, in no order.

    The `count` lowest of a row lie in at most `count` groups of `GROUP`
    columns, and those groups' least scores are among the `count` lowest of
    the groups' least: so the few columns of those groups are all that need
    ranking, not the whole row: one pass over it, then a few columns.
    """
    queries, width = scores.shape
    groups = width // GROUP
    if groups < 4 * count:  # too few groups to pay
        return np.argpartition(scores, count - 1, axis=1)[:, :count]
    grouped = scores[:, :groups * GROUP].reshape(queries, groups, GROUP)
    chosen = np.argpartition(grouped.min(axis=2), count - 1, axis=1)[:, :count]
    values = np.take_along_axis(grouped, chosen[:, :, None], axis=1).reshape(queries, -1)
    columns = (chosen[:, :, None] * GROUP + np.arange(GROUP)).reshape(queries, -1)
    rest = np.arange(groups * GROUP, width)  # the last, partial group: always a candidate
    if len(rest):
        values = np.concatenate([values, scores[:, rest]], axis=1)
        columns = np.concatenate([columns, np.broadcast_to(rest, (queries, len(rest)))], axis=1)
    picked = np.argpartition(values, count - 1, axis=1)[:, :count]
    return np.take_along_axis(columns, picked, axis=1)


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
