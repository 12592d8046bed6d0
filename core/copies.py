"""Near-duplicates: which neighbours are copies of an image, and the groups of copies.

The learned distance alone cannot tell a copy (the same pixels resized,
recompressed, cropped, recoloured, captioned, mirrored) from another
drawing of the same thing: two hands' 3s are as near as a photo and its
60% crop. So each image also keeps a `thumbnail` (32x32 grey levels, made
from the pixels the encoder reads: 1 kB, no extra decoding), and a pair of
neighbours is a near-duplicate when their pictures match pixel for pixel
(`similarities`): one image's whole picture against the view of the other
it best matches (the image or its mirror image, whole or centrally cropped
to 90 to 60% of its side, or turned by 3 or 6 degrees either way and
cropped to 80% at most; at 16x16, inside the inscribed circle; a thumbnail
squashes its image to a square, so a wide image's turns are slanted ones:
`Picture`), either way
round, by the correlation of their grey levels where both are mid-tones (a
blank ground, a clipped highlight or a turned copy's black corner is no
evidence), leaving out the two of 16 blocks that match worst (a caption, a
logo). A `Strictness` says how high that correlation must be; a person
picks it by name (`LEVELS`, calibrated on development data).

Groups are the connected sets of images joined by a near-duplicate flag in
some results file (`groups`).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

THUMB_SIDE = 32  # the stored thumbnail's side
COMPARED = 16  # the side at which two pictures are correlated
# The views of an image that a copy's whole picture may match (its mirror image's are
# these, mirrored: `flip`): (turn in degrees, central crop as a share of the side).
# Turned copies are rarely cropped much as well.
STRAIGHT = tuple((0.0, keep) for keep in (1.0, 0.9, 0.8, 0.75, 0.7, 0.65, 0.6))
TURNS, TURNED_KEEPS = (-3.0, 3.0, -6.0, 6.0), (1.0, 0.9, 0.8)
TURNED = tuple((degrees, keep) for degrees in TURNS for keep in TURNED_KEEPS)
VIEWS = STRAIGHT + TURNED
MIDTONES = (16, 239)  # grey levels (exclusive) that count as evidence
BLOCKS = 4  # blocks a side of the compared picture
DROPPED = 2  # blocks that match worst, left out
FEWEST = 40  # pixels that must count, else no match
MATCHED_AT_ONCE = 1024  # pictures matched in one batch
FLOOR = 0.6  # a best view correlating less: no copy, without a closer look
QUERIES_AT_ONCE = 128  # queries judged together (some 30 MB of arrays)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
CACHED_VIEWS = 16_384  # thumbnails whose views are kept (6 kB each)
CACHED_SCORES = 1 << 18  # pairs whose similarity is kept (100 bytes each)
WIDEST = 2  # shapes (`Picture`) up to 2:1 either way; wider ones are judged as 2:1
RULE = 3  # the version of the rule below: marks judged by another are judged again


@dataclass(frozen=True)
class Strictness:
    """A near-duplicate is a pair within `distance` (the learned distance) whose pictures
    match with a correlation >= `similarity`."""

    distance: float
    similarity: float


# Chosen on the development photos, glyphs and digits of the evaluation suite
# (bench/duplicates.py; figures in BENCHMARKS.md, "Near-duplicates").
LEVELS = {
    "strict": Strictness(1.2, 0.99),
    "normal": Strictness(1.2, 0.985),
    "loose": Strictness(1.2, 0.98),
}


class Picture(NamedTuple):
    """What judging knows of an image: its `thumbnail`, and its shape, the nearest of
    log2(width / height) in half steps within +-WIDEST (`shape_of`; 0: square or not
    known). The thumbnail squashes the image to a square, so a turn of a wide image is,
    in its thumbnail, a turn slanted by its shape (`turn_map`)."""

    thumb: bytes
    shape: int = 0


def shape_of(width: int | None, height: int | None) -> int:
    """The `Picture` shape of an image of width x height pixels."""
    if not width or not height:
        return 0
    return max(-WIDEST, min(WIDEST, round(2 * math.log2(width / height))))


def judged_with(strictness: str) -> str:
    """What the library notes its results files' marks were judged with."""
    return f"{strictness} (rule {RULE})"


def thumbnail(pixels: np.ndarray) -> bytes:
    """The stored thumbnail of an image from the (size, size, channels) uint8 pixels the
    encoder reads: THUMB_SIDE x THUMB_SIDE grey levels, uint8, each the mean of the grey
    levels under it (Pillow's BOX resize, as two matrix products: `box_map`)."""
    grey = pixels.astype(np.float32)
    grey = grey @ LUMA if grey.shape[-1] == 3 else grey[..., 0]
    rows, columns = box_map(grey.shape[0]), box_map(grey.shape[1])
    small = rows.T @ grey @ columns
    return small.round().clip(0, 255).astype(np.uint8).tobytes()


@functools.cache
def box_map(side: int) -> np.ndarray:
    """(side, THUMB_SIDE): Pillow's BOX resize of a line of `side` pixels to THUMB_SIDE,
    as a matrix, read off the resize itself (a line with one lit pixel shows its weights).
    Resizing is separable and linear: an image's is this on either side (`thumbnail`)."""
    lit = np.eye(side, dtype=np.float32)
    return np.stack([np.asarray(Image.fromarray(line[None], "F").resize(
        (THUMB_SIDE, 1), Image.Resampling.BOX), np.float32)[0] for line in lit])


def cropped(image: np.ndarray, keep: float) -> np.ndarray:
    """The central crop keeping `keep` of each side of a (THUMB_SIDE, THUMB_SIDE) float32
    image, resized to COMPARED x COMPARED."""
    margin = THUMB_SIDE * (1 - keep) / 2
    box = (margin, margin, THUMB_SIDE - margin, THUMB_SIDE - margin)
    picture = Image.fromarray(np.ascontiguousarray(image), "F")
    return np.asarray(picture.resize((COMPARED, COMPARED), Image.Resampling.BILINEAR, box=box),
                      np.float32)


@functools.cache
def crop_map(keep: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns): the crop of an image X (`cropped`) is rows @ X @ columns, since
    resizing is separable and linear in the grey levels. Read off the resize itself: an
    image of one lit row (or column) shows that row's (column's) weights."""
    rows = np.zeros((COMPARED, THUMB_SIDE), np.float32)
    columns = np.zeros((THUMB_SIDE, COMPARED), np.float32)
    for line in range(THUMB_SIDE):
        lit = np.zeros((THUMB_SIDE, THUMB_SIDE), np.float32)
        lit[line, :] = 1.0  # weights along the rows (a resize's weights sum to 1)
        rows[:, line] = cropped(lit, keep)[:, 0]
        columns[line, :] = cropped(lit.T, keep)[0, :]
    return rows, columns


def turn_map(degrees: float, shape: int = 0) -> np.ndarray:
    """(THUMB_SIDE^2 pixels in, THUMB_SIDE^2 pixels out): the thumbnail of an image of
    that `Picture` shape turned by `degrees`, as a matrix. For a square image it is
    Pillow's `rotate(degrees, BILINEAR)` of the thumbnail (the same sampling, edges and
    black beyond them), made without calling it 1,024 times; a wide image's is that
    turn with the thumbnail's squashing undone before it and done again after it."""
    side = THUMB_SIDE
    angle = -math.radians(degrees % 360.0)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    wide = 2 ** (shape / 2)  # width / height
    y, x = np.mgrid[:side, :side].reshape(2, -1) + 0.5  # output pixel centres
    # Where each output pixel samples the image (Pillow's affine map about the centre).
    x_in = cos * (x - side / 2) + sin / wide * (y - side / 2) + side / 2
    y_in = -sin * wide * (x - side / 2) + cos * (y - side / 2) + side / 2
    inside = (x_in >= 0) & (x_in < side) & (y_in >= 0) & (y_in < side)
    left, top = np.floor(x_in - 0.5).astype(int), np.floor(y_in - 0.5).astype(int)
    across, down = x_in - 0.5 - left, y_in - 0.5 - top
    below = (top + 1 >= 0) & (top + 1 < side)  # else the row above counts whole
    out = np.zeros((side * side, side * side), np.float32)
    pixel = np.arange(side * side)
    for row, share in ((np.clip(top, 0, side - 1), np.where(below, 1 - down, 1.0)),
                       (np.clip(top + 1, 0, side - 1), np.where(below, down, 0.0))):
        for column, part in ((np.clip(left, 0, side - 1), 1 - across),
                             (np.clip(left + 1, 0, side - 1), across)):
            np.add.at(out, (row * side + column, pixel), np.where(inside, share * part, 0.0))
    return out


@functools.cache
def taps(degrees: float, shape: int) -> tuple[np.ndarray, np.ndarray]:
    """(where, weights), each (THUMB_SIDE^2 pixels out, 4): `turn_map` as the (up to)
    four thumbnail pixels that each turned pixel mixes, and how much of each: a turn
    of many thumbnails is four gathers, not a product with a mostly-zero matrix."""
    made = turn_map(degrees, shape)
    where = np.argsort(made == 0, axis=0, kind="stable")[:4].T  # the non-zero ones first
    return where, np.take_along_axis(made.T, where, axis=1)


def turned(grey: np.ndarray, degrees: float, shape: int) -> np.ndarray:
    """Thumbnails of one `Picture` shape as columns (THUMB_SIDE^2, n) float32, turned by
    `degrees` (`turn_map`): whole rows gathered, each a pixel of every thumbnail."""
    where, weights = taps(degrees, shape)
    made = grey[where[:, 0]] * weights[:, :1]
    for tap in range(1, where.shape[1]):
        made += grey[where[:, tap]] * weights[:, tap:tap + 1]
    return made


def crops(grey: np.ndarray, keeps: tuple[float, ...]) -> np.ndarray:
    """The central crops (`cropped`) keeping each of `keeps` of thumbnails as columns
    (THUMB_SIDE^2, n) float32, as (len(keeps), pixels in the disc, n): rows @ image @
    columns (`crop_map`), a few matrix products for every thumbnail at once."""
    count, side = grey.shape[1], THUMB_SIDE
    rows = np.concatenate([crop_map(keep)[0] for keep in keeps])  # (keeps x rows out, rows in)
    down = (rows @ grey.reshape(side, side * count)).reshape(
        len(keeps), COMPARED, side, count)  # (keeps, rows out, columns in, n)
    made = np.stack([crop_map(keep)[1].T @ down[n] for n, keep in enumerate(keeps)])
    return made.reshape(len(keeps), COMPARED * COMPARED, count)[:, disc()]


@functools.cache
def disc() -> np.ndarray:
    """The pixels of a COMPARED x COMPARED picture inside its inscribed circle (turning
    by a few degrees brings no corner into it), as a flat boolean mask."""
    y, x = np.mgrid[:COMPARED, :COMPARED] + 0.5 - COMPARED / 2
    return ((y ** 2 + x ** 2) <= (COMPARED / 2) ** 2).ravel()


@functools.cache
def block_of() -> np.ndarray:
    """(pixels in the disc, BLOCKS^2): which block each compared pixel is in, one-hot."""
    y, x = np.mgrid[:COMPARED, :COMPARED] * BLOCKS // COMPARED
    block = (y * BLOCKS + x).ravel()[disc()]
    return (block[:, None] == np.arange(BLOCKS * BLOCKS)[None, :]).astype(np.float32)


def views(pictures: list[Picture]) -> np.ndarray:
    """The VIEWS of each picture, as (n, len(VIEWS), pixels in the disc) uint8 grey
    levels, the whole image first: each thumbnail turned (`turned`, for its shape),
    then cropped (`crops`). The mirror image's views are these, mirrored (`flip`):
    VIEWS turn either way by the same angles."""
    grey = np.ascontiguousarray(np.frombuffer(  # a thumbnail a column
        b"".join(picture.thumb for picture in pictures), np.uint8).reshape(len(pictures), -1).T,
        np.float32)
    made = np.empty((len(VIEWS), int(disc().sum()), len(pictures)), np.float32)
    made[:len(STRAIGHT)] = crops(grey, tuple(keep for _, keep in STRAIGHT))
    shapes = np.array([picture.shape for picture in pictures])
    for shape in np.unique(shapes).tolist():
        some = np.flatnonzero(shapes == shape) if shapes.min() != shapes.max() else slice(None)
        made[len(STRAIGHT):, :, some] = np.concatenate(
            [crops(turned(grey[:, some], degrees, shape), TURNED_KEEPS) for degrees in TURNS])
    return made.round().clip(0, 255).astype(np.uint8).transpose(2, 0, 1)


@functools.cache
def flip() -> np.ndarray:
    """The permutation of the disc's pixels that mirrors a compared picture."""
    order = np.arange(COMPARED * COMPARED).reshape(COMPARED, COMPARED)[:, ::-1].ravel()
    inside = np.flatnonzero(disc())
    return np.searchsorted(inside, order[inside])


def unit(pictures: np.ndarray) -> np.ndarray:
    """Pictures (..., pixels) with their mean removed, scaled to unit length."""
    centred = pictures - pictures.mean(axis=-1, keepdims=True)
    return centred / np.maximum(np.linalg.norm(centred, axis=-1, keepdims=True), 1e-6)


def spread(pictures: np.ndarray) -> np.ndarray:
    """The length of pictures (..., pixels) once their mean is removed."""
    total = pictures.sum(axis=-1)
    squares = np.einsum("...p,...p->...", pictures, pictures)
    return np.sqrt(np.maximum(squares - total * total / pictures.shape[-1], 1e-6))


def correlation(sums: np.ndarray) -> np.ndarray:
    """Correlations from sums (..., 6): counted pixels, x, y, x^2, y^2, xy."""
    count, x, y, xx, yy, xy = np.moveaxis(np.maximum(sums, 0.0), -1, 0)
    count = np.maximum(count, 1.0)
    covariance = xy - x * y / count
    variances = (xx - x * x / count) * (yy - y * y / count)
    return covariance / np.sqrt(np.maximum(variances, 1e-6))


def match(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How well pictures `x` and `y` (n, pixels in the disc, float32 grey levels) match
    as copies: their correlation where both are mid-tones, once the DROPPED blocks that
    differ most are left out (0 when fewer than FEWEST pixels count)."""
    low, high = MIDTONES
    counted = ((x > low) & (x < high) & (y > low) & (y < high)).astype(np.float32)
    x, y = x * counted, y * counted
    # Each block's sums, from which the correlation with any blocks left out follows.
    products = np.stack([counted, x, y, x * x, y * y, x * y], axis=1)  # (n, 6, pixels)
    sums = (products.reshape(-1, x.shape[1]) @ block_of()).reshape(
        len(x), 6, -1).transpose(0, 2, 1)  # (n, blocks, 6)
    total = sums.sum(axis=1)  # (n, 6)
    count, sx, sy, sxx, syy, sxy = np.moveaxis(total, -1, 0)
    count = np.maximum(count, 1.0)
    mx, my = sx / count, sy / count
    dx = np.sqrt(np.maximum(sxx - sx * mx, 1e-6))
    dy = np.sqrt(np.maximum(syy - sy * my, 1e-6))
    c, bx, by, bxx, byy, bxy = np.moveaxis(sums, -1, 0)  # (n, blocks) each
    mx, my, dx, dy = mx[:, None], my[:, None], dx[:, None], dy[:, None]
    # Each block's sum of squared differences of the standardised levels.
    differences = ((bxx - 2 * mx * bx + mx * mx * c) / (dx * dx)
                   + (byy - 2 * my * by + my * my * c) / (dy * dy)
                   - 2 * (bxy - mx * by - my * bx + mx * my * c) / (dx * dy))
    worst = np.argsort(-differences, axis=1)[:, :DROPPED]
    kept = total - np.take_along_axis(sums, worst[:, :, None], axis=1).sum(axis=1)
    return np.where(kept[:, 0] >= FEWEST, correlation(kept), 0.0)


@dataclass
class Seen:
    """Thumbnails' views (`views`) and what comparing them needs, row by row."""

    pictures: np.ndarray  # (n, len(VIEWS), pixels in the disc) uint8
    spreads: np.ndarray  # (n, len(VIEWS)) float32: each view's `spread`
    facing: np.ndarray  # (n, 2, pixels) float32: the whole picture, its mirror image, `unit`

    @classmethod
    def of(cls, shown: list[Picture]) -> Seen:
        pictures = views(shown)
        floats = pictures.astype(np.float32)
        whole = unit(floats[:, 0])
        return cls(pictures, spread(floats), np.stack([whole, whole[:, flip()]], axis=1))

    @classmethod
    def room(cls, rows: int) -> Seen:
        """Room for `rows` rows (memory is taken as rows are filled)."""
        pixels = int(disc().sum())
        return cls(np.empty((rows, len(VIEWS), pixels), np.uint8),
                   np.empty((rows, len(VIEWS)), np.float32),
                   np.empty((rows, 2, pixels), np.float32))

    def put(self, start: int, other: Seen) -> None:
        end = start + len(other.pictures)
        self.pictures[start:end] = other.pictures
        self.spreads[start:end] = other.spreads
        self.facing[start:end] = other.facing


def similarities(seen: Seen, pairs: np.ndarray) -> np.ndarray:
    """How well pictures match as copies (1: the same picture), pair by pair: `pairs`
    (pairs, 2) are rows of `seen`, few first pictures with many others (a query and
    its neighbours) best. One picture's whole against the view of the other that
    correlates best with it (of its own views and its mirror image's), and the other
    way round, the better of the two (`match`)."""
    # The pairs of each first picture side by side: (firsts, up to `width` others).
    firsts, slot = np.unique(pairs[:, 0], return_inverse=True)
    counts = np.bincount(slot)
    order = np.argsort(slot, kind="stable")
    place = np.empty(len(pairs), np.intp)
    place[order] = np.arange(len(pairs)) - np.repeat(np.cumsum(counts) - counts, counts)
    others = np.zeros((len(firsts), counts.max()), np.intp)
    others[slot, place] = pairs[:, 1]
    # A picture's correlation with a unit one (mean removed) is their dot product over
    # the picture's spread; a mirrored view against a whole is the view against the
    # mirrored whole. (firsts, others, views, facing), either way round, in one matrix
    # product per first picture, not per pair. Views are gathered as uint8, then made
    # float: a quarter of the memory traffic.
    count, width, seen_views = len(firsts), others.shape[1], seen.pictures.shape[1]
    theirs = (seen.pictures[others].reshape(count, width * seen_views, -1).astype(np.float32)
              @ seen.facing[firsts].transpose(0, 2, 1)).reshape(count, width, seen_views, 2)
    theirs /= seen.spreads[others][..., None]
    mine = (seen.pictures[firsts].astype(np.float32)
            @ seen.facing[others].reshape(count, 2 * width, -1).transpose(0, 2, 1))
    mine = mine.reshape(count, seen_views, width, 2).transpose(0, 2, 1, 3)
    mine /= seen.spreads[firsts][:, None, :, None]
    # Each pair both ways round: the picture whose view is tried, the one whose whole is.
    shown = np.concatenate([others[slot, place], firsts[slot]])
    whole = np.concatenate([firsts[slot], others[slot, place]])
    correlations = np.concatenate([theirs[slot, place], mine[slot, place]]).reshape(
        len(shown), -1)  # (2 x pairs, views x facing)
    top = correlations.argmax(axis=1)
    scores = correlations[np.arange(len(top)), top]
    view, side = np.divmod(top, 2)
    mirrored = side == 1  # the view faced the mirrored whole
    near = np.flatnonzero(scores >= FLOOR)  # below: no copy, whatever a closer look says
    for start, end in batches(len(near), MATCHED_AT_ONCE):  # kept in the processor's cache
        some = near[start:end]
        facing_whole = seen.pictures[whole[some], 0]
        flipped = mirrored[some]
        facing_whole[flipped] = facing_whole[flipped][:, flip()]
        scores[some] = match(seen.pictures[shown[some], view[some]].astype(np.float32),
                             facing_whole.astype(np.float32))
    return np.maximum(scores[:len(pairs)], scores[len(pairs):])


def batches(count: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, count)) for start in range(0, count, size)]


Query = tuple[Picture | None, list[tuple[float, Picture | None]]]  # a picture, its neighbours'


def prepare() -> None:
    """Make the maps that judging reads (the crops', the turns' of square pictures),
    which the first judgement would otherwise wait for: a fifth of a second."""
    Seen.of([Picture(bytes(THUMB_SIDE * THUMB_SIDE))])


def pair_key(one: Picture, other: Picture) -> int:
    """A pair of pictures, in either order, as a number (a hash: two pairs share one
    with a chance of one in 2^64)."""
    mine, theirs = hash(one), hash(other)
    return hash((mine, theirs) if mine <= theirs else (theirs, mine))


class Judge:
    """Near-duplicate flags of neighbour pairs at one strictness, with each thumbnail's
    views made once and kept (up to CACHED_VIEWS)."""

    def __init__(self, strictness: str) -> None:
        self.level = LEVELS[strictness]
        self.rows: dict[Picture, int] = {}  # its row of `seen`
        self.seen: Seen | None = None  # made at the first judgement
        self.scores: dict[int, float] = {}  # by `pair_key`

    def rows_of(self, pictures: list[Picture]) -> np.ndarray:
        """The rows of `seen` that hold `pictures`' views, those not made before made in
        one batch. At most CACHED_VIEWS are kept, or those of one batch if more."""
        needed = set(pictures)
        missing = [picture for picture in needed if picture not in self.rows]
        room = max(CACHED_VIEWS, len(needed))
        if self.seen is None or len(self.seen.pictures) < room:
            self.seen, missing = Seen.room(room), list(needed)
            self.rows.clear()
        elif len(self.rows) + len(missing) > len(self.seen.pictures):  # keep memory bounded
            missing = list(needed)
            self.rows.clear()
        if missing:
            start = len(self.rows)
            self.seen.put(start, Seen.of(missing))
            self.rows.update({picture: start + n for n, picture in enumerate(missing)})
        return np.array([self.rows[picture] for picture in pictures], np.intp)

    def shrink(self, most: int) -> None:
        """Let go of the kept views and pair scores if more than `most` thumbnails' views
        are kept (memory taken as rows fill is given back; they are made again when
        needed)."""
        if len(self.rows) > most:
            self.rows.clear()
            self.seen = None
            self.scores.clear()

    def marks(self, queries: list[Query]) -> list[list[bool]]:
        """Whether each neighbour (its learned distance, its thumbnail) of each query is
        a near-duplicate of the query's image (no thumbnail on either side: never)."""
        marks = [[False] * len(neighbors) for _, neighbors in queries]
        for start, end in batches(len(queries), QUERIES_AT_ONCE):
            judged = [(q, n, picture, other) for q, (picture, neighbors) in
                      enumerate(queries[start:end], start) if picture is not None
                      for n, (distance, other) in enumerate(neighbors)
                      if other is not None and distance <= self.level.distance]
            # Two images are often each other's neighbours: a pair is compared once.
            keys = [pair_key(one, other) for _, _, one, other in judged]
            # Memory kept bounded, before what this batch needs is looked up: a score
            # let go after that would be missing below.
            if len(self.scores) + len(keys) > CACHED_SCORES:
                self.scores.clear()
            new: dict[int, tuple[Picture, Picture]] = {}  # `pair_key`: (query, other)
            for key, (_, _, one, other) in zip(keys, judged, strict=True):
                if key not in self.scores:
                    new.setdefault(key, (one, other))
            if new:
                rows = self.rows_of([picture for pair in new.values() for picture in pair])
                assert self.seen is not None  # (made by rows_of)
                self.scores.update(zip(new, similarities(self.seen, rows.reshape(-1, 2)).tolist(),
                                       strict=True))
            for key, (q, n, _, _) in zip(keys, judged, strict=True):
                marks[q][n] = self.scores[key] >= self.level.similarity
        return marks

    def copies(self, picture: Picture | None,
               neighbors: list[tuple[float, Picture | None]]) -> list[bool]:
        """`marks` of one query."""
        return self.marks([(picture, neighbors)])[0]

    def is_copy(self, distance: float, picture: Picture | None, other: Picture | None) -> bool:
        """Whether a neighbour at `distance` is a near-duplicate (no thumbnail: never)."""
        return self.copies(picture, [(distance, other)])[0]


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
