"""Neighbours of latent vectors: the built index plus what came after it.

Annoy cannot take items after a build, so a `Searcher` joins two sources:
the last built index (any of `index_kinds`) and an exact scan of the rows
changed since that build. Index items whose rows changed or were deleted
since the build are stale and skipped, as is the query itself.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import Executor

import numpy as np

from .exact import ExactScan, Neighbor
from .index_kinds import DEFAULT_CANDIDATES, DEFAULT_RESCORE, BuiltIndex, Tuning
from .store import Library


class Searcher:
    """Search over `index` (may be None) and the rows changed since it was built."""

    def __init__(self, index: BuiltIndex | None, fresh_ids: np.ndarray, fresh: np.ndarray,
                 stale: set[int], metric: str, search_k: int = -1,
                 candidates: int = DEFAULT_CANDIDATES, pool: Executor | None = None,
                 rescore: int = DEFAULT_RESCORE) -> None:
        self.index = index
        self.fresh = ExactScan(fresh_ids, fresh, metric)
        # Row ids the index holds wrong (changed or deleted since its build). Not the new
        # rows: each stale row widens Annoy's search (`AnnoyBacked.candidates`), and in a
        # burst of new images that made every search read 30% more candidates than it keeps.
        self.stale = self.in_index(np.fromiter(stale, np.int64, len(stale)))
        self.metric = metric
        self.tuning = Tuning(search_k, candidates, rescore, pool)

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
        followed = set(changed) | set(removed)
        if not followed:
            return
        followed_ids = np.fromiter(followed, np.int64, len(followed))
        self.stale = np.union1d(self.stale, self.in_index(followed_ids))
        keep = ~np.isin(self.fresh.ids, followed_ids)
        ids = np.fromiter(changed, np.int64, len(changed))
        parts = [self.fresh.vectors[keep]] if len(self.fresh) else []
        parts += [np.stack(list(changed.values())).astype(np.float32)] if changed else []
        vectors = np.concatenate(parts) if parts else self.fresh.vectors[:0]
        self.fresh = ExactScan(np.concatenate([self.fresh.ids[keep], ids]), vectors, self.metric)

    def in_index(self, row_ids: np.ndarray) -> np.ndarray:
        """Those of `row_ids` that the index holds."""
        return row_ids[:0] if self.index is None else self.index.in_index(row_ids)

    @property
    def generation(self) -> int | None:
        """The library generation the index was built from (None: no index)."""
        return self.index.info.generation if self.index is not None else None

    @property
    def pending(self) -> int:
        """Rows searched exactly because the index does not hold them yet."""
        return len(self.fresh)

    @property
    def items(self) -> int:
        return self.pending + (self.index.info.items if self.index is not None else 0)

    def matrix_of(self, row_ids: Iterable[int],
                  library: Library) -> tuple[np.ndarray, np.ndarray]:
        """`Library.matrix_of`, read where it is nearest: the rows searched exactly from
        memory, the index's from the index (held in memory, or its full vectors' file),
        the rest from `library`. The same float32 vectors, for the rows it finds."""
        wanted = np.unique(np.fromiter(row_ids, np.int64))
        fresh = self.fresh.holds(wanted)
        parts = [(wanted[fresh], self.fresh.vectors_of(wanted[fresh]))]
        rest = wanted[~fresh]
        held = self.in_index(rest)
        held = held[~np.isin(held, self.stale)]
        readable = self.index.vectors_of(held) if self.index is not None and len(held) else None
        if readable is not None:
            parts.append((held, readable))
            rest = rest[~np.isin(rest, held)]
        if len(rest):
            parts.append(library.matrix_of(rest.tolist()))
        parts = [(ids, vectors) for ids, vectors in parts if len(ids)]
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids = np.concatenate([ids for ids, _ in parts])
        order = np.argsort(ids, kind="stable")
        return ids[order], np.concatenate([vectors for _, vectors in parts]).astype(
            np.float32, copy=False)[order]

    def near_together(self, row_ids: list[int]) -> list[int]:
        """`row_ids` in an order that brings rows near each other together, as far as the
        index can tell (`BuiltIndex.regions`; else as given): searched and judged in this
        order, a chunk's neighbours are mostly the last chunks' too."""
        ids = np.asarray(row_ids, np.int64)
        regions = self.index.regions(ids) if self.index is not None and len(ids) else None
        if regions is None:
            return row_ids
        return ids[np.argsort(regions, kind="stable")].tolist()

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
        indexed = [[] for _ in vectors] if self.index is None else \
            self.index.search(vectors, k, exclude, self.stale, self.tuning)
        fresh = self.fresh.nearest(vectors, k, exclude)
        found = []
        for old, new in zip(indexed, fresh, strict=True):
            both = old + new
            both.sort(key=lambda n: (n.distance, n.row_id))
            found.append(both[:k])
        return found
