"""Neighbours of a latent vector: the built index plus what came after it.

Annoy cannot take items after a build, so a `Searcher` joins two sources:
the last built index (approximate, memory-mapped) and an exact scan of the
rows changed since that build. Index items whose rows changed or were
deleted since the build are stale and skipped, as is the query itself.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .index import BuiltIndex
from .store import Library


@dataclass(frozen=True)
class Neighbor:
    row_id: int
    distance: float


class Searcher:
    """Search over `index` (may be None) and the rows changed since it was built."""

    def __init__(self, index: BuiltIndex | None, fresh_ids: np.ndarray, fresh: np.ndarray,
                 stale: set[int], metric: str, search_k: int = -1) -> None:
        self.index = index
        self.fresh_ids = fresh_ids
        self.fresh = fresh.astype(np.float32, copy=False)
        self.stale = stale
        self.metric = metric
        self.search_k = search_k

    @classmethod
    def open(cls, library: Library, index: BuiltIndex | None, metric: str,
             search_k: int = -1) -> Searcher:
        since = index.info.generation if index is not None else 0
        fresh_ids, fresh, stale = library.changed_since(since)
        if index is not None:
            metric = index.info.metric
        return cls(index, fresh_ids, fresh, stale, metric, search_k)

    def refresh(self, changed: dict[int, np.ndarray], removed: Iterable[int] = ()) -> None:
        """Follow rows that changed after the build: search `changed` exactly, drop `removed`."""
        touched = set(changed) | set(removed)
        if not touched:
            return
        self.stale |= touched
        keep = ~np.isin(self.fresh_ids, np.fromiter(touched, np.int64))
        ids = np.fromiter(changed, np.int64, len(changed))
        parts = [self.fresh[keep]] if len(self.fresh_ids) else []
        parts += [np.stack(list(changed.values())).astype(np.float32)] if changed else []
        self.fresh_ids = np.concatenate([self.fresh_ids[keep], ids])
        self.fresh = np.concatenate(parts) if parts else self.fresh[:0]

    @property
    def pending(self) -> int:
        """Rows searched exactly because the index does not hold them yet."""
        return len(self.fresh_ids)

    @property
    def items(self) -> int:
        return self.pending + (self.index.info.items if self.index is not None else 0)

    def neighbors(self, vector: np.ndarray, k: int, exclude: int | None = None) -> list[Neighbor]:
        """The k nearest rows to `vector`, nearest first, never `exclude`."""
        found = self.from_index(vector, k, exclude) + self.from_fresh(vector, k, exclude)
        found.sort(key=lambda n: (n.distance, n.row_id))
        return found[:k]

    def from_fresh(self, vector: np.ndarray, k: int, exclude: int | None) -> list[Neighbor]:
        if not len(self.fresh_ids):
            return []
        distances = distance(self.fresh, vector, self.metric)
        if exclude is not None:
            distances = np.where(self.fresh_ids == exclude, np.inf, distances)
        take = min(k, len(distances))
        nearest = np.argpartition(distances, take - 1)[:take]
        return [Neighbor(int(self.fresh_ids[i]), float(distances[i]))
                for i in nearest if np.isfinite(distances[i])]

    def from_index(self, vector: np.ndarray, k: int, exclude: int | None) -> list[Neighbor]:
        if self.index is None or self.index.annoy is None:
            return []
        total = self.index.info.items
        # Ask for enough to survive the skipped items; widen if too many were stale.
        want = min(total, k + min(len(self.stale), k) + 1)
        while True:
            items, distances = self.index.annoy.get_nns_by_vector(
                vector.tolist(), want, search_k=self.search_k, include_distances=True)
            rows = self.index.row_ids[items] if items else np.zeros(0, np.int64)
            kept = [Neighbor(int(row), float(d)) for row, d in zip(rows, distances, strict=True)
                    if int(row) != exclude and int(row) not in self.stale]
            if len(kept) >= k or want >= total:
                return kept[:k]
            want = min(total, want * 2)


def distance(matrix: np.ndarray, vector: np.ndarray, metric: str) -> np.ndarray:
    """Distances from each row of `matrix` to `vector`, as Annoy reports them."""
    if metric == "angular":
        # Annoy's angular distance: sqrt(2 - 2 cos), i.e. Euclidean between unit vectors.
        norms = np.linalg.norm(matrix, axis=1) * max(float(np.linalg.norm(vector)), 1e-30)
        cosine = (matrix @ vector) / np.maximum(norms, 1e-30)
        return np.sqrt(np.clip(2.0 - 2.0 * cosine, 0.0, None))
    if metric == "euclidean":
        return np.linalg.norm(matrix - vector, axis=1)
    raise ValueError(f"unknown metric {metric!r}")
