"""Judging which neighbours of answered rows are near-duplicates (`core.copies`).

`marks_of` judges the rows of one chunk of answers. The service judges in a
thread beside its answering. A bulk answer (more than BULK rows: `run
--once`, a start-up's or a rule change's) judges in a `JudgingProcess`: the
judgement is a third of the answering's work, much of it Python between
array operations, and in a thread it takes turns at Python's lock with the
search, the ranking and the documents; a process has a lock of its own.
"""
from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from lookalike.core import copies
from lookalike.core.exact import Neighbor

BULK = 2_048  # rows answered at once above which judging is worth a process of its own
Names = dict[int, tuple[str, str | None]]  # row id -> path and content hash
Judged = list[tuple[int, str | None, copies.Picture | None, list[Neighbor]]]  # `marks_of`


def marks_of(judge: copies.Judge, judging: Judged, names: Names,
             pictures: dict[int, copies.Picture],
             given: dict[int, set[int]]) -> dict[int, set[int]]:
    """Each row's near-duplicates: those `given` (the chunk's known ones), and those
    of `judging` (row id, SHA-256, picture, neighbours) judged together, each
    picture's views made once."""
    judged = near_duplicates(
        judge, [(sha256, picture, near) for _, sha256, picture, near in judging], names,
        pictures)
    return {**given, **dict(zip((row for row, *_ in judging), judged, strict=True))}


def near_duplicates(judge: copies.Judge,
                    images: list[tuple[str | None, copies.Picture | None, list[Neighbor]]],
                    names: Names, pictures: dict[int, copies.Picture]) -> list[set[int]]:
    """For each image (its SHA-256, `copies.Picture` and neighbours), the row ids of
    its neighbours that are near-duplicates of it (`core.copies`): identical bytes,
    or a copy by `judge`."""
    judged = judge.marks(
        [(picture, [(n.distance, pictures.get(n.row_id)) for n in near])
         for _, picture, near in images])
    return [{n.row_id for n, copy in zip(near, copied, strict=True)
             if copy or (sha256 is not None and names[n.row_id][1] == sha256)}
            for (sha256, _, near), copied in zip(images, judged, strict=True)]


class JudgingProcess:
    """A process that judges chunks at `strictness`, one after another, keeping its
    thumbnails' views from chunk to chunk. Spawned, not forked: nothing of this
    process's threads or TensorFlow goes with it. A chunk goes to it as a few arrays
    (`Chunk`): pickled as objects, its tens of thousands of neighbours and pictures
    cost a third as much as judging them."""

    def __init__(self, strictness: str) -> None:
        self.pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"),
                                        initializer=started, initargs=(strictness,))

    def submit(self, judging: Judged, names: Names, pictures: dict[int, copies.Picture],
               given: dict[int, set[int]]) -> Future[dict[int, set[int]]]:
        return self.pool.submit(judged_here, Chunk.of(judging, names, pictures), given)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Chunk:
    """What `marks_of` reads of a chunk, as arrays: each judged row (`rows`, `hashes`,
    `near`: its neighbours' row ids, -1 past the last, at `distances`), and the
    `pictures` and `names`' hashes of `known` rows."""

    rows: np.ndarray  # (n,) int64
    hashes: list[str | None]  # each judged row's SHA-256
    near: np.ndarray  # (n, most neighbours) int64
    distances: np.ndarray  # (n, most neighbours) float64
    known: np.ndarray  # (m,) int64: rows with a name or a picture
    known_hashes: list[str | None]  # their SHA-256 (None: not named)
    thumbs: np.ndarray  # (m, thumbnail bytes) uint8 (zeros: no picture)
    shapes: np.ndarray  # (m,) int8: `copies.Picture.shape`, or NO_PICTURE

    @classmethod
    def of(cls, judging: Judged, names: Names, pictures: dict[int, copies.Picture]) -> Chunk:
        most = max((len(near) for *_, near in judging), default=0)
        near = np.full((len(judging), most), -1, np.int64)
        distances = np.zeros((len(judging), most))
        for at, (*_, neighbors) in enumerate(judging):
            near[at, :len(neighbors)] = [n.row_id for n in neighbors]
            distances[at, :len(neighbors)] = [n.distance for n in neighbors]
        known = sorted(names.keys() | pictures.keys())
        side = copies.THUMB_SIDE * copies.THUMB_SIDE
        blank = bytes(side)
        thumbs = np.frombuffer(b"".join(
            pictures[row].thumb if row in pictures else blank for row in known),
            np.uint8).reshape(len(known), side)
        shapes = np.array([pictures[row].shape if row in pictures else NO_PICTURE
                           for row in known], np.int8)
        return cls(np.array([row for row, *_ in judging], np.int64),
                   [sha256 for _, sha256, *_ in judging], near, distances,
                   np.array(known, np.int64), [names[row][1] if row in names else None
                                                for row in known], thumbs, shapes)

    def unpacked(self) -> tuple[Judged, Names, dict[int, copies.Picture]]:
        """`marks_of`'s arguments again."""
        pictures = {row: copies.Picture(thumb.tobytes(), shape) for row, thumb, shape in zip(
            self.known.tolist(), self.thumbs, self.shapes.tolist(), strict=True)
            if shape != NO_PICTURE}
        names: Names = {row: ("", sha256) for row, sha256 in zip(
            self.known.tolist(), self.known_hashes, strict=True) if row in pictures
            or sha256 is not None}
        judging = [(row, sha256, pictures.get(row),
                    [Neighbor(other, distance) for other, distance in zip(
                        near, distances, strict=True) if other >= 0])
                   for row, sha256, near, distances in zip(
                       self.rows.tolist(), self.hashes, self.near.tolist(),
                       self.distances.tolist(), strict=True)]
        return judging, names, pictures


NO_PICTURE = -128  # a `Chunk`'s shape for a row without a picture
JUDGE: copies.Judge | None = None  # the judging process's (`started`)


def started(strictness: str) -> None:
    """In the judging process, first. A stop's signal is the service's to act on, which
    then closes the process; it must outlive the signal until then."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global JUDGE
    JUDGE = copies.Judge(strictness)
    copies.prepare()


def judged_here(chunk: Chunk, given: dict[int, set[int]]) -> dict[int, set[int]]:
    """In the judging process: `marks_of` one chunk."""
    assert JUDGE is not None  # (made by `started`)
    return marks_of(JUDGE, *chunk.unpacked(), given)
