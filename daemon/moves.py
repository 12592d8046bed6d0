"""Results carried across a move: each image's neighbours are its last ones, renamed.

When a scan did nothing but move images (every image it stored took the
vector of one it forgot: `Changes.moved`), the library holds the same
vectors as before under other row ids, so each image's candidates (the
nearest its neighbours are ranked from, `core.ranking`) are the ones its
last results file listed, the moved ones under their new ids. Every
results file is still rewritten (paths in it changed), but from those
lists measured again, a distance a candidate, not from a search of the
whole library, and with the near-duplicate marks it last had (the same
pictures at the same distances make the same marks), not judged again.
An image whose last list cannot be trusted (its results out of date, a
neighbour gone, a short list) is left to the search.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from lookalike.core.exact import Neighbor, distance
from lookalike.core.store import Library
from lookalike.daemon.ingest import Changes

CHUNK = 4096  # rows measured at a time: their vectors and their neighbours' in memory


def only_moves(changes: Changes) -> bool:
    """Whether a scan's changes are moves alone: the library's vectors are as they were."""
    return bool(changes.moved) and set(changes.stored) == set(changes.moved) \
        and set(changes.removed) == set(changes.moved.values())


class Carried(NamedTuple):
    """What rows' results files say after a move: their candidates (`core.ranking`), and
    the neighbours marked near-duplicates."""

    neighbors: dict[int, list[Neighbor]]
    copies: dict[int, set[int]]


def carried(library: Library, changes: Changes, metric: str, wide: int) -> Carried:
    """Each live row's `wide` candidates and near-duplicate marks, from what its results
    last said (see the top); rows left out are to be searched. Empty unless the changes
    are moves alone."""
    found = Carried({}, {})
    if not only_moves(changes):
        return found
    renamed = {old: new for new, old in changes.moved.items()}
    records = library.records()
    # The move itself marked out of date the results that listed the moved images (their
    # paths changed): those lists still hold, renamed. Any other unanswered row is searched.
    listing_moved = set(changes.outdated)
    rows = [r.id for r in records.values() if r.error_code is None and (
        r.id in changes.last_lists or (r.id not in changes.moved and (
            r.answered is not None or r.id in listing_moved)))]
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        staying = [r for r in chunk if r not in changes.moved]
        listed = library.neighbors_listed(staying)
        listed.update({r: changes.last_lists[r] for r in chunk if r in changes.last_lists})
        lists = {row: [renamed.get(int(n), int(n)) for n in last]
                 for row, last in listed.items()}
        marked = library.copies_listed(staying)
        marked.update({r: changes.last_copies[r] for r in chunk if r in changes.last_copies})
        vectors = library.vectors_of({*lists, *(n for last in lists.values() for n in last)})
        for row, last in lists.items():
            if len(last) < wide or row not in vectors or any(n not in vectors for n in last):
                continue  # short (a small library, or k grew), or it named an image now gone
            found.neighbors[row] = list(measured(row, last, vectors, metric))
            found.copies[row] = {renamed.get(int(n), int(n)) for n in marked.get(row, ())}
    return found


def measured(row: int, last: list[int], vectors: dict[int, np.ndarray],
             metric: str) -> Iterator[Neighbor]:
    """`last` measured again from `row`, nearest first."""
    distances = distance(np.stack([vectors[n] for n in last]), vectors[row], metric)
    for d, n in sorted(zip(distances.tolist(), last, strict=True)):
        yield Neighbor(n, d)
