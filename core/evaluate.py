"""Retrieval quality on labelled images: precision@k, mean average precision,
and how much of the exact neighbourhood Annoy finds (recall).

A query's neighbours are relevant when they share its label; each image is
searched among all the others. Its look-alikes are ranked as results files
rank them (`core.ranking`), or, with `ranked=False` (a baseline such as
raw pixels), simply nearest first.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from annoy import AnnoyIndex

from . import ranking

CHUNK = 512  # queries per block of the exact distance matrix


@dataclass(frozen=True)
class Quality:
    precision: float  # share of the k neighbours with the query's label
    mean_ap: float | None  # mean over queries of average precision over the full ranking
    recall: float | None  # share of the exact nearest searched that Annoy returned


def distances(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """All distances (len(queries), len(vectors)), as Annoy reports them."""
    if metric == "angular":
        a = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-30)
        b = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
        return np.sqrt(np.clip(2.0 - 2.0 * (a @ b.T), 0.0, None))
    squared = ((queries ** 2).sum(1)[:, None] + (vectors ** 2).sum(1)[None, :]
               - 2.0 * queries @ vectors.T)
    return np.sqrt(np.clip(squared, 0.0, None))


def exact_search(vectors: np.ndarray, labels: np.ndarray, k: int, metric: str,
                 ranked: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each item's k look-alikes (n, k), its average precision over all others in that
    order (n,), and the nearest searched for them (n, `width`), nearest first."""
    n = len(vectors)
    wide = width(k, ranked)
    shown = np.empty((n, k), np.int64)
    nearest = np.empty((n, min(wide, n - 1)), np.int64)
    precision = np.empty(n)
    for start in range(0, n, CHUNK):
        block = distances(vectors[start:start + CHUNK], vectors, metric)
        rows = np.arange(len(block))
        block[rows, start + rows] = np.inf  # never the query itself
        order = np.argsort(block, axis=1, kind="stable")[:, :n - 1]
        nearest[start:start + len(block)] = order[:, :wide]
        if ranked:
            order[:, :wide] = rank(vectors, start + rows, order[:, :wide], metric)
        shown[start:start + len(block)] = order[:, :k]
        precision[start:start + len(block)] = average_precision(
            labels[order] == labels[start:start + len(block), None])
    return shown, precision, nearest


def width(k: int, ranked: bool) -> int:
    """The nearest searched for k look-alikes."""
    return ranking.candidates(k) if ranked else k


def rank(vectors: np.ndarray, queries: np.ndarray, nearest: np.ndarray,
         metric: str) -> np.ndarray:
    """Each query's `nearest` (rows of `vectors`, nearest first; -1: none) as results files
    rank them."""
    ranked = nearest.copy()
    complete = (nearest >= 0).all(axis=1)
    places = ranking.order(vectors[queries[complete]], vectors[nearest[complete]], metric)
    ranked[complete] = np.take_along_axis(nearest[complete], places, axis=1)
    for row in np.flatnonzero(~complete):  # (Annoy found fewer)
        found = nearest[row][nearest[row] >= 0]
        places = ranking.order(vectors[queries[row:row + 1]], vectors[found][None], metric)[0]
        ranked[row, :len(found)] = found[places]
    return ranked


def average_precision(relevant: np.ndarray) -> np.ndarray:
    """Average precision of each row of a ranked relevance matrix (0 where none is relevant)."""
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    total = np.where(relevant, hits / ranks, 0.0).sum(1)
    count = relevant.sum(1)
    return np.divide(total, count, out=np.zeros(len(count)), where=count > 0)


def annoy_neighbors(vectors: np.ndarray, k: int, metric: str, trees: int,
                    search_k: int) -> np.ndarray:
    """Each item's k nearest others (-1: none) through an Annoy index built as the
    service builds it."""
    index = AnnoyIndex(vectors.shape[1], metric)  # type: ignore[arg-type]
    for item, vector in enumerate(vectors):
        index.add_item(item, vector)
    index.build(trees, n_jobs=-1)
    found = np.full((len(vectors), k), -1, np.int64)
    for item in range(len(vectors)):
        near = [i for i in index.get_nns_by_item(item, k + 1, search_k=search_k) if i != item]
        found[item, :len(near[:k])] = near[:k]
    return found


def precision_at_k(neighbors: np.ndarray, labels: np.ndarray) -> float:
    """Mean share of each row's neighbours (indices, -1 = none) with the row's label."""
    valid = neighbors >= 0
    same = (labels[np.where(valid, neighbors, 0)] == labels[:, None]) & valid
    return float(same.sum(1).mean() / neighbors.shape[1])


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours that `found` holds, row by row."""
    overlap = [len(set(f[f >= 0]) & set(e)) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(overlap) / exact.shape[1])


def quality(vectors: np.ndarray, labels: np.ndarray, k: int, metric: str,
            trees: int | None = None, search_k: int = -1,
            ranked: bool = True) -> tuple[Quality, Quality | None]:
    """Quality of exact search and, with `trees`, of Annoy search over `vectors`."""
    vectors = vectors.astype(np.float32)
    shown, precision, nearest = exact_search(vectors, labels, k, metric, ranked)
    exact = Quality(precision_at_k(shown, labels), float(precision.mean()), None)
    if trees is None:
        return exact, None
    found = annoy_neighbors(vectors, nearest.shape[1], metric, trees, search_k)
    if ranked:
        found = rank(vectors, np.arange(len(vectors)), found, metric)
    return exact, Quality(precision_at_k(found[:, :k], labels), None,
                          recall_at_k(found, nearest))


@dataclass(frozen=True)
class Copies:
    """How well copies of one picture find each other."""

    first: float  # share of images whose nearest other image is a copy of the same picture
    recall: float  # mean share of each image's other copies among its k nearest
    first_by_kind: dict[str, float]  # `first`, for each kind of copy (file name without suffix)


def copies(vectors: np.ndarray, groups: np.ndarray, kinds: np.ndarray, k: int,
           metric: str, ranked: bool = True) -> Copies:
    """Copy detection over `vectors`: `groups` names each image's picture, `kinds` what
    was done to it (e.g. "crop60"); every image is searched among all the others."""
    nearest, _, _ = exact_search(vectors.astype(np.float32), groups, k, metric, ranked)
    same = groups[nearest] == groups[:, None]
    _, group_of, group_sizes = np.unique(groups, return_inverse=True, return_counts=True)
    wanted = np.minimum(k, group_sizes[group_of] - 1)
    alone = wanted == 0
    recall = same.sum(1) / np.maximum(wanted, 1)
    first = same[:, 0]
    by_kind = {str(kind): float(first[(kinds == kind) & ~alone].mean())
               for kind in sorted(set(kinds[~alone]))}
    return Copies(float(first[~alone].mean()), float(recall[~alone].mean()), by_kind)
