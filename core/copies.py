"""Near-duplicates: which neighbours are copies of an image, and the groups of copies.

The learned distance alone cannot tell a copy (the same pixels resized,
recompressed, cropped, recoloured, captioned, mirrored) from another
drawing of the same thing: two hands' 3s are as near as a photo and its
60% crop. So each image also keeps a `thumbnail` (32x32 grey levels, made
from the pixels the encoder reads: 1 kB, no extra decoding), and a pair of
neighbours is a near-duplicate when their pictures match pixel for pixel:
the normalised correlation of their grey levels at 16x16, at its best over
the image and its mirror image, whole or centrally cropped to 90 to 60% of
its side, on either side of the pair (`similarity`). A `Strictness` says
how high that correlation must be, and how far the learned distance may
be; a person picks it by name (`LEVELS`, calibrated on development data).

Groups are the connected sets of images joined by a near-duplicate flag in
some results file (`groups`).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

THUMB_SIDE = 32  # the stored thumbnail's side
COMPARED = 16  # the side at which two thumbnails are correlated
CROPS = (0.9, 0.8, 0.7, 0.6)  # central crops (share of the side) tried on either side
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Strictness:
    """A near-duplicate is a pair with correlation >= `close_similarity` within
    `close_distance`, or >= `similarity` within `distance` (the learned distance)."""

    close_distance: float
    close_similarity: float
    distance: float
    similarity: float

    def flags(self, distances: np.ndarray, similarities: np.ndarray) -> np.ndarray:
        return ((distances <= self.close_distance) & (similarities >= self.close_similarity)) | \
            ((distances <= self.distance) & (similarities >= self.similarity))


# Chosen on the development photos, glyphs and digits of the evaluation suite
# (bench/duplicates.py; figures in BENCHMARKS.md, "Near-duplicates").
LEVELS = {
    "strict": Strictness(0.30, 0.95, 1.2, 0.995),
    "normal": Strictness(0.35, 0.90, 1.2, 0.99),
    "loose": Strictness(0.50, 0.90, 1.2, 0.98),
}


def thumbnail(pixels: np.ndarray) -> bytes:
    """The stored thumbnail of an image from the (size, size, channels) uint8 pixels the
    encoder reads: THUMB_SIDE x THUMB_SIDE grey levels, uint8."""
    grey = pixels.astype(np.float32)
    grey = grey @ LUMA if grey.shape[-1] == 3 else grey[..., 0]
    small = Image.fromarray(grey, "F").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    return np.asarray(small, np.float32).round().clip(0, 255).astype(np.uint8).tobytes()


def views(thumb: bytes) -> np.ndarray:
    """The views of a thumbnail that a copy's whole picture may match: (2 + 2 crops, 256)
    unit vectors, mean removed; the whole image first, its mirror image second."""
    image = np.frombuffer(thumb, np.uint8).reshape(THUMB_SIDE, THUMB_SIDE).astype(np.float32)
    out = []
    for flipped in (image, image[:, ::-1]):
        picture = Image.fromarray(np.ascontiguousarray(flipped), "F")
        for keep in (1.0, *CROPS):
            margin = THUMB_SIDE * (1 - keep) / 2
            box = (margin, margin, THUMB_SIDE - margin, THUMB_SIDE - margin)
            out.append(np.asarray(picture.resize((COMPARED, COMPARED), Image.Resampling.BILINEAR,
                                                 box=box), np.float32).ravel())
    stacked = np.stack(out)
    stacked -= stacked.mean(axis=1, keepdims=True)
    stacked /= np.maximum(np.linalg.norm(stacked, axis=1, keepdims=True), 1e-6)
    return stacked


def similarity(one: np.ndarray, other: np.ndarray) -> float:
    """How well two images' `views` match as copies: the best correlation of one's whole
    picture with any view of the other, either way round (1: the same picture)."""
    return float(max((other @ one[0]).max(), (one @ other[0]).max()))


class Judge:
    """Near-duplicate flags of neighbour pairs at one strictness, with each thumbnail's
    views made once."""

    def __init__(self, strictness: str) -> None:
        self.level = LEVELS[strictness]
        self.cache: dict[bytes, np.ndarray] = {}

    def views_of(self, thumb: bytes) -> np.ndarray:
        found = self.cache.get(thumb)
        if found is None:
            if len(self.cache) > 4096:  # a batch's images at most: keep memory bounded
                self.cache.clear()
            found = self.cache[thumb] = views(thumb)
        return found

    def is_copy(self, distance: float, thumb: bytes | None, other: bytes | None) -> bool:
        """Whether a neighbour at `distance` is a near-duplicate (no thumbnail: never)."""
        if thumb is None or other is None or distance > self.level.distance:
            return False
        score = similarity(self.views_of(thumb), self.views_of(other))
        return bool(self.level.flags(np.array([distance]), np.array([score]))[0])


def groups(edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """The connected groups of the graph of `edges` (pairs of row ids), largest first,
    each sorted, ties by their first id."""
    parent: dict[int, int] = {}

    def root(node: int) -> int:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for one, other in edges:
        a, b = root(one), root(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for node in parent:
        members.setdefault(root(node), []).append(node)
    found = [sorted(group) for group in members.values() if len(group) > 1]
    found.sort(key=lambda group: (-len(group), group[0]))
    return found
