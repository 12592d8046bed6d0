"""Ranking: the order in which a results file lists an image's look-alikes.

An image's k nearest vectors are not quite its k best look-alikes: a
neighbour that is also like the image's own nearest few is more likely to
be a look-alike than one that is near the image alone, by chance of the
learned distance. So each image's `WIDTH` x k nearest are searched (its
candidates), and ranked by their likeness to the image plus their likeness
to each of its EXPANDED nearest, that one weighed by its own likeness to
the image to the power POWER (weighted query expansion); the first k are
shown. A likeness is 1 - d^2/2 for the distance d the index measures: the
cosine for the angular distance. The distance a results file shows stays
the plain one.

What a results file says therefore follows from the image's candidates
alone: any change among them (an image nearer than the last candidate, a
candidate gone) may change it, and nothing else can. The library keeps
each results file's candidates and the distance of the last for that
(`records.Answer`).

WIDTH, EXPANDED and POWER were chosen on the development parts of the
evaluation suite (bench/suite.py; figures in BENCHMARKS.md).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .exact import Neighbor

WIDTH = 2  # candidates searched per look-alike shown
EXPANDED = 2  # the nearest candidates whose likeness counts beside the image's
POWER = 3.0  # how sharply an expanding neighbour's weight falls with its distance
RULE = "expanded by 2, cubed, of 2k"  # what the library notes results were ranked by


def candidates(k: int) -> int:
    """How many nearest to search for k look-alikes."""
    return WIDTH * k


def likeness(rows: np.ndarray, others: np.ndarray, metric: str) -> np.ndarray:
    """1 - d^2/2 between each of a query's `rows` (n, r, dim) and each of its `others`
    (n, m, dim): (n, r, m), in float32 (ranks need no more)."""
    rows, others = np.asarray(rows, np.float32), np.asarray(others, np.float32)
    products = np.einsum("nrd,nmd->nrm", rows, others)
    row_squares = np.einsum("nrd,nrd->nr", rows, rows)[:, :, None]
    other_squares = np.einsum("nmd,nmd->nm", others, others)[:, None, :]
    if metric == "angular":  # the cosine (sqrt(2 - 2 cos)): a zero vector's is 0
        return products / np.maximum(np.sqrt(row_squares * other_squares), 1e-30)
    return 1.0 - 0.5 * (row_squares + other_squares - 2.0 * products)


def scores(queries: np.ndarray, found: np.ndarray, metric: str) -> np.ndarray:
    """How well each query's candidates rank (n, m), higher first: `queries` (n, dim),
    `found` (n, m, dim) their vectors. The EXPANDED nearest are those most like the
    query by `likeness` itself, not by the order given: a search's float32 distances
    and a remeasure's float64 ones may order a near-tie differently, and the same
    candidates must rank the same either way."""
    expanding = min(EXPANDED, found.shape[1])
    own = likeness(np.asarray(queries, np.float32)[:, None, :], found, metric)[:, 0]
    nearest = np.argsort(-own, axis=1, kind="stable")[:, :expanding]  # (n, expanding)
    rows = np.take_along_axis(np.asarray(found, np.float32), nearest[:, :, None], axis=1)
    weights = np.maximum(np.take_along_axis(own, nearest, axis=1), 0.0) ** POWER
    return own + np.einsum("ne,nem->nm", weights, likeness(rows, found, metric))


def order(queries: np.ndarray, found: np.ndarray, metric: str) -> np.ndarray:
    """The ranking of each query's candidates (`scores`): (n, m) their places, best
    first (ties: the nearer first)."""
    if not found.shape[1]:
        return np.zeros(found.shape[:2], np.intp)
    return np.argsort(-scores(queries, found, metric), axis=1, kind="stable")


def ranked(queries: Mapping[int, np.ndarray], found: Mapping[int, list[Neighbor]],
           ids: np.ndarray, vectors: np.ndarray, k: int,
           metric: str) -> dict[int, list[Neighbor]]:
    """The k look-alikes of each query (by key), from its candidates in `found`
    (nearest first): their vectors are the rows of `vectors` whose row ids are `ids`
    (sorted); a candidate without one is left out."""
    shown: dict[int, list[Neighbor]] = {}
    groups: dict[int, list[tuple[int, list[Neighbor], np.ndarray]]] = {}  # by count
    for key, near in found.items():
        listed = np.fromiter((n.row_id for n in near), np.int64, len(near))
        at = np.minimum(np.searchsorted(ids, listed), max(len(ids) - 1, 0))
        held = ids[at] == listed if len(ids) else np.zeros(len(near), bool)
        if not held.all():
            near = [n for n, ok in zip(near, held.tolist(), strict=True) if ok]
            at = at[held]
        groups.setdefault(len(near), []).append((key, near, at))
    for count, group in groups.items():
        if count == 0:
            shown.update({key: [] for key, _, _ in group})
            continue
        places = order(np.stack([queries[key] for key, _, _ in group]),
                       vectors[np.stack([at for _, _, at in group])], metric)
        for (key, near, _), best in zip(group, places[:, :k].tolist(), strict=True):
            shown[key] = [near[place] for place in best]
    return shown
