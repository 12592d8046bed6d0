"""The check that every results file still names the k nearest images.

On each arrival the service rewrites the results that the new image
enters, looking among its 96 nearest only (`Worker.affected`): nearness is
not symmetric, and that look misses 6-10% of them. The check finds the
rest. Each image whose results file was written names its k nearest and
the distance of the k-th: a row that changed since the last check enters
those results exactly when it is nearer than that. So the rows changed
since are measured against every answered image, a block of the library
at a time, and the results they enter are merged (`Worker.merged`).

At 10^6 images this takes 4 s for one changed image and 12 s for a
thousand, where searching every image again takes 25 to 40 minutes
(`bench/check.py`). The full search stays for what measuring cannot see:
a turn that failed between storing a change and marking the results it
touched, or a stop that was not clean.
"""
from __future__ import annotations

from lookalike.core.search import Flat
from lookalike.core.store import Library
from lookalike.daemon.worker import Touched

PAIRS_PER_STEP = 1 << 19  # (image, changed row) pairs measured per step: about 10 ms
ROWS_PER_STEP = 4096  # images read per step at most (15 MB of 896-number vectors)
# Past this many changed rows, measuring costs more than searching every image again.
ENTERING_AT_MOST = 16_384


class EnteringCheck:
    """The rows changed since the last check (`entering`), measured against every
    answered image of the library, a block of images per `step`."""

    def __init__(self, entering: Flat) -> None:
        self.entering = entering
        self.after = 0  # the last row id measured
        self.block = min(ROWS_PER_STEP, max(64, PAIRS_PER_STEP // max(len(entering), 1)))

    def step(self, library: Library) -> Touched | None:
        """The next block's images that changed rows may enter, each with those rows;
        None once every image was measured."""
        if not len(self.entering):  # only deletions: those were followed exactly
            return None
        ids, vectors, radii, named = library.answered_rows(self.after, self.block)
        if not len(ids):
            return None
        self.after = int(ids[-1])
        found = self.entering.within(vectors, radii, ids)
        entered = {row: set(near.tolist()) - set(names.tolist())  # (named: in already)
                   for row, near, names in zip(ids.tolist(), found, named, strict=True)}
        return {row: rows for row, rows in entered.items() if rows}
