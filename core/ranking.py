"""Ranking: the order in which a results file lists an image's look-alikes.

An image's k nearest vectors are not quite its k best look-alikes: a
neighbour that is also like the image's own nearest few is more likely to
be a look-alike than one that is near the image alone, by chance of the
learned distance. So each image's `WIDTH` x k nearest are searched (its
candidates), and ranked by their likeness to the image plus their likeness
to each of its EXPANDED nearest, that one weighed by its own likeness to
the image to the power POWER (query expansion, as image retrieval does it
after "Fine-tuning CNN image retrieval with no human annotation", Radenović
et al.); the first k are shown. A likeness is 1 - d^2/2 for the distance d
the index measures: the cosine for the angular distance. The distance a
results file shows stays the plain one.

What a results file says therefore follows from the image's candidates
alone: any change among them (an image nearer than the last candidate, a
candidate gone) may change it, and nothing else can. The library keeps
each results file's candidates and the distance of the last for that
(`store.Answer`).

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
    if metric == "angular":  # sqrt(2 - 2 cos): a zero vector is sqrt(2) from all
        return np.einsum("nrd,nmd->nrm", unit(rows), unit(others))
    products = np.einsum("nrd,nmd->nrm", rows, others)
    squares = np.einsum("nrd,nrd->nr", rows, rows)[:, :, None] + \
        np.einsum("nmd,nmd->nm", others, others)[:, None, :]
    return 1.0 - 0.5 * (squares - 2.0 * products)


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.sqrt(np.einsum("...d,...d->...", vectors, vectors)),
                                1e-30)[..., None]


def scores(queries: np.ndarray, found: np.ndarray, metric: str) -> np.ndarray:
    """How well each query's candidates rank (n, m), higher first: `queries` (n, dim),
    `found` (n, m, dim) their vectors, nearest first."""
    expanding = min(EXPANDED, found.shape[1])
    rows = np.concatenate([np.asarray(queries, np.float32)[:, None, :],
                           np.asarray(found[:, :expanding], np.float32)], axis=1)
    likes = likeness(rows, found, metric)  # (n, 1 + expanding, m)
    weights = np.maximum(likes[:, 0, :expanding], 0.0) ** POWER
    return likes[:, 0] + np.einsum("ne,nem->nm", weights, likes[:, 1:])


def order(queries: np.ndarray, found: np.ndarray, metric: str) -> np.ndarray:
    """The ranking of each query's candidates (`scores`): (n, m) their places, best
    first (ties: the nearer first)."""
    if not found.shape[1]:
        return np.zeros(found.shape[:2], np.intp)
    return np.argsort(-scores(queries, found, metric), axis=1, kind="stable")


def ranked(queries: Mapping[int, np.ndarray], found: Mapping[int, list[Neighbor]],
           vectors: Mapping[int, np.ndarray], k: int, metric: str) -> dict[int, list[Neighbor]]:
    """The k look-alikes of each query (by key), from its candidates in `found`
    (nearest first) and their `vectors` (a candidate without one is left out)."""
    shown: dict[int, list[Neighbor]] = {}
    kept = {key: [n for n in near if n.row_id in vectors] for key, near in found.items()}
    by_count: dict[int, list[int]] = {}
    for key, near in kept.items():
        by_count.setdefault(len(near), []).append(key)
    for count, keys in by_count.items():
        if count == 0:
            shown.update({key: [] for key in keys})
            continue
        places = order(np.stack([queries[key] for key in keys]),
                       np.stack([np.stack([vectors[n.row_id] for n in kept[key]])
                                 for key in keys]), metric)
        for key, best in zip(keys, places[:, :k].tolist(), strict=True):
            shown[key] = [kept[key][place] for place in best]
    return shown
