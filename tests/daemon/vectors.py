"""Latents for tests of the service's parts on a real library: clustered vectors, stored
as images of one model; the exact candidates of every row (the nearest a results file
lists, `core.ranking`) and the k look-alikes it shows of them."""
from __future__ import annotations

import numpy as np

from lookalike.core import ranking
from lookalike.core.exact import ExactScan
from lookalike.core.store import Entry, Library

K = 12
WIDE = ranking.candidates(K)  # the candidates a results file lists
MODEL = "m"


def clustered(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 16))
    return (centres[rng.integers(0, 20, count)] + 0.5 * rng.normal(size=(count, 16))
            ).astype(np.float32)


def store(library: Library, vectors: np.ndarray, first: int) -> list[int]:
    names = [f"{first + n}.png" for n in range(len(vectors))]
    library.apply(Entry(name, 1, 1, None, MODEL, vector) for name, vector in zip(
        names, vectors, strict=True))
    return [library.lookup([name])[name].id for name in names]


def exact(library: Library) -> dict[int, list[int]]:
    """Each row's candidates: its WIDE nearest, nearest first."""
    ids, vectors = library.vectors()
    near = ExactScan(ids, vectors, "angular").nearest(vectors, WIDE, list(ids))
    return {int(row): [n.row_id for n in found] for row, found in zip(ids, near, strict=True)}


def shown(library: Library) -> dict[int, list[int]]:
    """Each row's K look-alikes, ranked from its exact candidates."""
    ids, vectors = library.vectors()
    by_row = dict(zip(ids.tolist(), vectors, strict=True))
    near = ExactScan(ids, vectors, "angular").nearest(vectors, WIDE, list(ids))
    found = dict(zip(ids.tolist(), near, strict=True))
    return {row: [n.row_id for n in look_alikes] for row, look_alikes in
            ranking.ranked(by_row, found, ids, vectors, K, "angular").items()}
