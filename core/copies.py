"""Near-duplicates: which neighbours are copies of an image, and the groups of copies.

The learned distance alone cannot tell a copy (the same pixels resized,
recompressed, cropped, recoloured, captioned, mirrored) from another
drawing of the same thing: two hands' 3s are as near as a photo and its
60% crop. So each image also keeps a `thumbnail` (32x32 grey levels, made
from the pixels the encoder reads: 1 kB, no extra decoding), and a pair of
neighbours is a near-duplicate when their pictures match pixel for pixel:
the normalised correlation of their grey levels at 16x16, at its best over
the image and its mirror image, whole or centrally cropped to 90 to 60% of
its side, on either side of the pair (`similarities`). A `Strictness` says
how high that correlation must be, and how far the learned distance may
be; a person picks it by name (`LEVELS`, calibrated on development data).

Groups are the connected sets of images joined by a near-duplicate flag in
some results file (`groups`).
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

THUMB_SIDE = 32  # the stored thumbnail's side
COMPARED = 16  # the side at which two thumbnails are correlated
CROPS = (0.9, 0.8, 0.7, 0.6)  # central crops (share of the side) tried on either side
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
CACHED_VIEWS = 16_384  # thumbnails whose views are kept (2.5 MB each thousand)


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


def resized_views(image: np.ndarray) -> np.ndarray:
    """The views of a (THUMB_SIDE, THUMB_SIDE) float32 image that a copy's whole picture
    may match: (2 + 2 crops, COMPARED^2), the whole image first, its mirror image second."""
    out = []
    for flipped in (image, image[:, ::-1]):
        picture = Image.fromarray(np.ascontiguousarray(flipped), "F")
        for keep in (1.0, *CROPS):
            margin = THUMB_SIDE * (1 - keep) / 2
            box = (margin, margin, THUMB_SIDE - margin, THUMB_SIDE - margin)
            out.append(np.asarray(picture.resize((COMPARED, COMPARED), Image.Resampling.BILINEAR,
                                                 box=box), np.float32).ravel())
    return np.stack(out)


@functools.cache
def view_maps() -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns): each view (`resized_views`) of an image X is rows[v] @ X @ columns[v],
    since resizing is separable and linear in the grey levels. Read off the resize itself:
    an image of one lit row (or column) shows that row's (column's) weights."""
    side, views = THUMB_SIDE, 2 * (1 + len(CROPS))
    rows = np.zeros((views, COMPARED, side), np.float32)
    columns = np.zeros((views, side, COMPARED), np.float32)
    for line in range(side):
        lit = np.zeros((side, side), np.float32)
        lit[line, :] = 1.0  # weights along the rows (a resize's weights sum to 1)
        rows[:, :, line] = resized_views(lit).reshape(views, COMPARED, COMPARED)[:, :, 0]
        lit = np.zeros((side, side), np.float32)
        lit[:, line] = 1.0
        columns[:, line, :] = resized_views(lit).reshape(views, COMPARED, COMPARED)[:, 0, :]
    return rows, columns


def views(thumbs: list[bytes]) -> np.ndarray:
    """The views of each thumbnail (`resized_views`) as (n, views, COMPARED^2) unit
    vectors, mean removed."""
    grey = np.frombuffer(b"".join(thumbs), np.uint8).reshape(
        len(thumbs), 1, THUMB_SIDE, THUMB_SIDE).astype(np.float32)
    rows, columns = view_maps()
    stacked = (rows @ grey @ columns).reshape(len(thumbs), len(rows), COMPARED ** 2)
    stacked -= stacked.mean(axis=2, keepdims=True)
    stacked /= np.maximum(np.linalg.norm(stacked, axis=2, keepdims=True), 1e-6)
    return stacked


def similarities(one: np.ndarray, others: np.ndarray) -> np.ndarray:
    """How well an image's views (`views`, one image) match each of `others`' as copies:
    the best correlation of one's whole picture with any view of the other, either way
    round (1: the same picture); one score per other."""
    mine_in_theirs = (others @ one[0]).max(axis=1)  # (others, views) -> best view
    theirs_in_mine = (one @ others[:, 0, :].T).max(axis=0)  # (views, others) -> best view
    return np.maximum(mine_in_theirs, theirs_in_mine)


class Judge:
    """Near-duplicate flags of neighbour pairs at one strictness, with each thumbnail's
    views made once."""

    def __init__(self, strictness: str) -> None:
        self.level = LEVELS[strictness]
        self.cache: dict[bytes, np.ndarray] = {}

    def views_of(self, thumbs: list[bytes]) -> np.ndarray:
        missing = {thumb for thumb in thumbs if thumb not in self.cache}
        if len(self.cache) + len(missing) > CACHED_VIEWS:  # keep memory bounded
            self.cache.clear()
            missing = set(thumbs)
        if missing:
            made = list(missing)
            self.cache.update(zip(made, views(made), strict=True))
        return np.stack([self.cache[thumb] for thumb in thumbs])

    def copies(self, thumb: bytes | None,
               neighbors: list[tuple[float, bytes | None]]) -> list[bool]:
        """Whether each neighbour (its learned distance, its thumbnail) is a near-duplicate
        of the image of `thumb` (no thumbnail: never)."""
        marks = [False] * len(neighbors)
        judged = [(n, distance, other) for n, (distance, other) in enumerate(neighbors)
                  if other is not None and distance <= self.level.distance]
        if thumb is None or not judged:
            return marks
        seen = self.views_of([thumb, *(other for _, _, other in judged)])
        scores = similarities(seen[0], seen[1:])
        flags = self.level.flags(np.array([distance for _, distance, _ in judged]), scores)
        for (n, _, _), flag in zip(judged, flags.tolist(), strict=True):
            marks[n] = flag
        return marks

    def is_copy(self, distance: float, thumb: bytes | None, other: bytes | None) -> bool:
        """Whether a neighbour at `distance` is a near-duplicate (no thumbnail: never)."""
        return self.copies(thumb, [(distance, other)])[0]


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
