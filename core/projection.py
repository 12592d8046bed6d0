"""The math of the two-stage index: main axes, projections and signs.

Vectors longer than `index.dims` are searched in two stages: Annoy holds
them projected onto their main axes (PCA), and, for the angular metric,
each vector's signs (on which side of each of many random hyperplanes it
lies, a bit each) pick which of Annoy's candidates are read in full. The
build makes them (`index.build`); the search projects its queries and
takes their signs the same way (`index_kinds.TwoStageIndex`).
"""
from __future__ import annotations

import numpy as np

AXES_SAMPLE = 50_000  # vectors the projection is fitted on: plenty for 10^3 directions
PROJECT_BLOCK = 8_192  # vectors projected (or fitted) at a time: some 15 MB of 456 numbers
ORDER_BITS = 64  # hyperplanes whose sides order vectors near together (`near_together`)


def main_axes(vectors: np.ndarray, metric: str, dims: int) -> np.ndarray:
    """The `dims` directions along which `vectors` (unit length, for the angular metric)
    vary most, as a (dim, dims) matrix: projecting on them keeps the distances between
    vectors as well as any `dims` directions can. Fitted on a sample of at most
    AXES_SAMPLE vectors (the same sample each time: builds are repeatable).

    The covariance is summed a block at a time, in float64: the sample is never
    copied whole (in float64 it would be 4 times the size of its vectors).
    """
    sample = np.arange(len(vectors))
    if len(vectors) > AXES_SAMPLE:
        sample = np.random.default_rng(0).choice(len(vectors), AXES_SAMPLE, replace=False)
    count, dim = len(sample), vectors.shape[1]
    total, products = np.zeros(dim), np.zeros((dim, dim))
    for start in range(0, count, PROJECT_BLOCK):
        block = unit(vectors[sample[start:start + PROJECT_BLOCK]], metric).astype(np.float64)
        total += block.sum(axis=0)
        products += block.T @ block
    mean = total / max(count, 1)
    covariance = (products - count * np.outer(mean, mean)) / max(count - 1, 1)
    variances, directions = np.linalg.eigh(covariance)
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


def near_together(vectors: np.ndarray) -> np.ndarray:
    """An order of `vectors` that brings near ones together: by their sides of up to 64
    random hyperplanes through the origin, the first plane's side first. Vectors on the
    same sides of many planes lie in one narrow cone."""
    bits = min(ORDER_BITS, vectors.shape[1])
    if not len(vectors) or not bits:
        return np.arange(len(vectors))
    planes = random_planes(vectors.shape[1], bits)
    weights = np.left_shift(np.uint64(1), np.arange(bits - 1, -1, -1, dtype=np.uint64))
    keys = np.concatenate([(vectors[start:start + PROJECT_BLOCK] @ planes > 0) @ weights
                           for start in range(0, len(vectors), PROJECT_BLOCK)])
    return np.argsort(keys, kind="stable")


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
