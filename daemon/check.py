"""The check that every results file still names the right look-alikes.

On each arrival the service rewrites the results that the new image
enters, looking among its 96 nearest only (`Freshness.outdated_by`):
nearness is not symmetric, and that look misses some of them
(bench/reverse.py). The check finds the rest. Each image whose results
file was written lists its candidates (the nearest its look-alikes are
ranked from, `core.ranking`) and the distance of the last: a row that
changed since the last check enters those results exactly when it is
nearer than that. So a
`MeasuringCheck` measures the rows changed since against every answered
image, a block of the library at a time, and the results they enter are
remeasured (`Freshness.remeasured`).

At 10^6 images this takes 4 s for one changed image and 12 s for a
thousand, where searching every image again takes 25 to 40 minutes
(`bench/check.py`). The `FullCheck`, which searches every image again,
stays for what measuring cannot see: a turn that failed between storing a
change and marking the results it made out of date, or a stop that was
not clean.
"""
from __future__ import annotations

from lookalike.core.exact import ExactScan
from lookalike.core.store import Library

# Images whose results may be out of date, each with the rows that may enter them, or
# None when only a new search can tell (`Freshness.outdated_by`).
Outdated = dict[int, set[int] | None]

PAIRS_PER_STEP = 1 << 19  # (image, changed row) pairs measured per step: about 10 ms
ROWS_PER_STEP = 4096  # images read per step at most (7.5 MB of 456-number vectors)
# Past this many changed rows, measuring costs more than searching every image again.
MEASURED_AT_MOST = 16_384
FULL_CHECK_CHUNK = 64  # results searched again per step: small, so an arrival waits little


class MeasuringCheck:
    """The rows changed since the last check (`changed`), measured against every
    answered image of the library, a block of images per `step`."""

    full = False

    def __init__(self, changed: ExactScan) -> None:
        self.changed = changed
        self.after = 0  # the last row id measured
        self.block = min(ROWS_PER_STEP, max(64, PAIRS_PER_STEP // max(len(changed), 1)))
        self.finished = False

    def step(self, library: Library) -> Outdated | None:
        """The next block's images that changed rows may enter, each with those rows;
        None once every image was measured."""
        found = self.measure(library)
        self.finished = found is None
        return found

    def measure(self, library: Library) -> Outdated | None:
        if not len(self.changed):  # only deletions: those were followed exactly
            return None
        ids, vectors, radii, listed = library.answered_rows(self.after, self.block)
        if not len(ids):
            return None
        self.after = int(ids[-1])
        found = self.changed.within(vectors, radii, ids)
        entered = {row: set(near.tolist()) - set(names.tolist())  # (listed: in already)
                   for row, near, names in zip(ids.tolist(), found, listed, strict=True)}
        return {row: rows for row, rows in entered.items() if rows}


class FullCheck:
    """Every image's results searched again, a chunk of `rows` per `step`."""

    full = True

    def __init__(self, rows: list[int]) -> None:
        self.rows = rows
        self.finished = not rows

    def step(self, library: Library) -> Outdated | None:
        """The next chunk of images, to be searched again (None: each of them)."""
        chunk, self.rows = self.rows[:FULL_CHECK_CHUNK], self.rows[FULL_CHECK_CHUNK:]
        self.finished = not self.rows
        return dict.fromkeys(chunk)


Check = MeasuringCheck | FullCheck
