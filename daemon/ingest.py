"""Ingest: from image files to library rows.

`Ingest` reads and decodes images (`reading`: a few in a small thread pool,
more than a batch in processes of their own), encodes them in batches and
stores each batch in one library transaction; it forgets the
images that left the inbox. A file with the bytes of a library row (moved
within the inbox, or copied) takes that row's vector and is not decoded
(`core.twins`). It does no watching and writes no results:
`reconcile` compares the inbox with the library (the start-up scan, the
periodic rescan and `run --once`), and the service hands it what its
watcher saw.
"""
from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lookalike.core import results, scan
from lookalike.core.config import Config
from lookalike.core.store import Entry, Library, Record
from lookalike.core.twins import Twins
from lookalike.daemon.answers import MADE_WITH, remove_leftovers, rules
from lookalike.daemon.progress import Progress, Tally
from lookalike.daemon.reading import Read, Readers, gathered, read

if TYPE_CHECKING:
    from lookalike.core.encoder import Encoder

log = logging.getLogger(__name__)

# The least images per batch when more than `ingest.batch_size` wait (a scan's ingest: at
# start-up, a rescan, `run --once`). Their results are all written at the end, so only
# throughput counts, and the encoder and the library do more per call in larger
# batches. The service's turns keep `batch_size`: a burst's first results wait for a
# whole batch.
SCAN_BATCH = 256
# And the most bytes of files per batch: a batch of large photos is cut short, so that
# the next is decoded while this one is encoded, rather than every one at once before
# the first is encoded. 256 small JPEGs take some 5 MB.
BATCH_BYTES = 16 << 20
# Images decoded ahead of the batch being encoded: some 10 kB each (the encoder's pixels
# and a thumbnail). They keep both cores busy while the first batch waits for the encoder
# to load (TensorFlow: seconds), then while each batch is encoded.
READ_AHEAD = 8_192


@dataclass
class Changes:
    """Row ids a batch touched: stored (new, changed or now unusable) and removed.

    `outdated` are the rows whose results listed a row that changed or left:
    the library marked them out of date in the transaction of the change.
    """

    stored: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    outdated: list[int] = field(default_factory=list)
    unanswered: list[int] = field(default_factory=list)  # unchanged, their results missing
    twins: dict[int, int] = field(default_factory=dict)  # stored row -> the row whose
                                                         # vector it took (same bytes)
    moved: dict[int, int] = field(default_factory=dict)  # those twins forgotten in the scan
    last_lists: dict[int, np.ndarray] = field(default_factory=dict)  # what those rows'
                                                                   # results files listed
    last_copies: dict[int, np.ndarray] = field(default_factory=dict)  # and marked copies

    def __bool__(self) -> bool:
        return bool(self.stored or self.removed)

    def __add__(self, other: Changes) -> Changes:
        return Changes(self.stored + other.stored, self.removed + other.removed,
                       self.outdated + other.outdated, self.unanswered + other.unanswered,
                       {**self.twins, **other.twins})


class Ingest:
    """Image files read, encoded and stored; `pool` decodes a few (and lends its threads
    to searches while idle), `reading.Readers` more than a batch. `stock` hears how many
    results files will be wanted soon."""

    def __init__(self, config: Config, library: Library, encoder: Encoder,
                 stock: Callable[[int], None] = lambda count: None,
                 interrupted: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.library = library
        self.encoder = encoder
        self.pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="decode")
        self.library_path = config.state_dir / "library.sqlite"
        self.twins = Twins(self.library_path, encoder.model_id)
        self.stock = stock
        self.interrupted = interrupted  # checked between batches

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.twins.close()

    def reconcile(self, tally: Tally, model_too: bool = True) -> Changes:
        """Bring the library in line with the inbox: add new, re-read changed, forget gone.

        With `model_too`, images encoded by another model count as changed.
        Unchanged images whose results file is missing (or out of date) are
        listed in the changes' `unanswered`; temporaries a crash left go.
        """
        survey = scan.survey(self.config.inbox, self.config.exclude)
        remove_leftovers(self.config.inbox, survey.leftovers)
        on_disk = {c.path: c for c in survey.candidates}
        known = self.library.records()
        changed = [c for path, c in on_disk.items()
                   if self.needs_reading(known.get(path), c, model_too)]
        gone = sorted(set(known) - set(on_disk))
        if known and not on_disk:
            # An empty mount point looks like an inbox whose images were all deleted.
            log.warning("the inbox %s holds no images but the library has %d: is its disk "
                        "unmounted? Forgetting nothing", self.config.inbox, len(known))
            gone = []
        if changed or gone:
            log.info("inbox scan: %d new or changed, %d gone, %d unchanged",
                     len(changed), len(gone), len(on_disk) - len(changed))
        changes = self.read_and_store(changed, known, tally)
        leaving = {known[path].id: known[path] for path in gone}
        moved = {row: twin for row, twin in changes.twins.items() if twin in leaving}
        # (read before the rows go: a forgotten row's list goes with it)
        answered = [twin for twin in moved.values() if leaving[twin].answered is not None]
        last_lists = self.library.neighbors_listed(answered)
        last_copies = self.library.copies_listed(answered)
        changes += self.forget(gone, tally)
        settled = set(on_disk) - {c.path for c in changed}  # (the others: answered as stored)
        changes.unanswered = [record.id for path, record in known.items() if path in settled
                              and (record.answered is None or not survey.answered(path))]
        changes.moved = moved
        changes.last_lists = {row: last_lists[twin] for row, twin in moved.items()
                              if twin in last_lists}
        changes.last_copies = {row: last_copies[twin] for row, twin in moved.items()
                               if twin in last_copies}
        return changes

    def needs_reading(self, record: Record | None, candidate: scan.Candidate,
                      model_too: bool = True) -> bool:
        return needs_reading(record, candidate, self.encoder.model_id, model_too)

    def read_and_store(self, candidates: Sequence[scan.Candidate], known: dict[str, Record],
                       tally: Tally) -> Changes:
        """Read, encode and store `candidates` in batches; return what was stored (and, in
        `twins`, which stored rows took another row's vector)."""
        if not candidates:
            return Changes()
        progress = Progress("ingest", len(candidates))
        self.stock(len(candidates))  # a results file each, made while encoding
        stored = Changes()
        cuts = batches(candidates, max(self.config.batch_size, SCAN_BATCH), BATCH_BYTES)
        # More than a batch: read in processes of their own (`reading`).
        readers = Readers(self.config.decode_threads, self.config.inbox, self.encoder.shape,
                          self.library_path, self.encoder.model_id) if len(cuts) > 2 else None
        reading: deque[list[Future[list[Read]]]] = deque()  # batches handed over, in order
        handed = 0  # batches handed over so far
        try:
            for start, end in itertools.pairwise(cuts):
                # Up to READ_AHEAD images beyond this batch are read while it is encoded
                # and stored (and while the encoder loads, at the first).
                while handed < len(cuts) - 1 and (
                        not reading or cuts[handed] - start < READ_AHEAD):
                    some = candidates[cuts[handed]:cuts[handed + 1]]
                    reading.append(self.read_batch(some) if readers is None
                                   else readers.submit(some))
                    handed += 1
                self.encoder.warm()  # at the first batch: a `run --once` loads it here
                batch = gathered(reading.popleft(), candidates[start:end])
                if self.interrupted():
                    log.info("ingest interrupted: %d left for the next start",
                             len(candidates) - start)
                    break
                stored += self.store(batch, known, tally)
                progress.update(end)
        finally:
            progress.finish()
            if readers is not None:
                readers.close()
        return stored

    def read_batch(self, candidates: Sequence[scan.Candidate]) -> list[Future[list[Read]]]:
        """Hand `candidates` to the threads, a future for each."""
        return [self.pool.submit(lambda one: [self.read(one)], candidate)
                for candidate in candidates]

    def read(self, candidate: scan.Candidate) -> Read:
        return read(self.config.inbox, candidate, self.encoder.shape, self.twins)

    def store(self, batch: list[Read], known: dict[str, Record], tally: Tally) -> Changes:
        """Encode the usable reads of a batch and store the batch in one transaction."""
        usable = [r for r in batch if r.decoded is not None]
        pixels = [r.decoded.pixels for r in usable if r.decoded is not None]
        latents = self.encoder.encode(np.stack(pixels)) if pixels else []
        tally.encoded += len(usable)
        hashed = [(r.candidate, r.decoded.sha256, latent, r.picture or (None, None, None))
                  for r, latent in zip(usable, latents, strict=True) if r.decoded is not None]
        taken = [(r.candidate, r.twin[0], r.twin[1].latent,
                  (r.twin[1].thumb, r.twin[1].width, r.twin[1].height))
                 for r in batch if r.twin is not None]
        tally.reused += len(taken)
        entries = []
        for c, sha256, latent, (thumb, width, height) in hashed + taken:
            entries.append(Entry(c.path, c.size, c.mtime_ns, sha256, self.encoder.model_id,
                                 latent, thumb=thumb, width=width, height=height))
            if c.path in known:
                tally.updated += 1
            else:
                tally.added += 1
        for c, *_ in hashed:
            log.debug("%s: encoded", c.path)
        for c, *_ in taken:
            log.debug("%s: the vector of the same bytes in the library", c.path)
        for unusable in batch:
            if unusable.problem is not None:
                c = unusable.candidate
                entries.append(Entry(c.path, c.size, c.mtime_ns, None, None, None,
                                     unusable.problem.code, unusable.problem.message))
                tally.errors += 1
                log.warning("%s: %s (%s)", c.path, unusable.problem.message,
                            unusable.problem.code)
        if not entries:
            return Changes()
        outdated = self.library.store(entries).outdated
        rows = self.library.lookup(e.path for e in entries)
        return Changes(stored=[record.id for record in rows.values()], outdated=outdated,
                       twins={rows[r.candidate.path].id: r.twin[1].row_id for r in batch
                              if r.twin is not None and r.candidate.path in rows})

    def forget(self, gone: Iterable[str], tally: Tally) -> Changes:
        """Drop images that left the inbox, with their results files."""
        if not self.config.inbox.is_dir():
            return Changes()  # the whole inbox went (unmounted): that is no deletion
        records = self.library.lookup(gone)
        if not records:
            return Changes()
        # Their results files first: a kill after the library forgot them would leave
        # files that nothing names any more.
        for path in records:
            results.remove(self.config.inbox / path)
        outdated = self.library.store(deletions=records).outdated
        tally.removed += len(records)
        log.info("forgot %d images that left the inbox", len(records))
        return Changes(removed=[record.id for record in records.values()], outdated=outdated)


def batches(candidates: Sequence[scan.Candidate], most: int, most_bytes: int) -> list[int]:
    """Where batches of `candidates` start, and the end: at most `most` files a batch,
    and no more once their sizes reach `most_bytes`."""
    cuts, count, size = [0], 0, 0
    for at, candidate in enumerate(candidates, 1):
        count, size = count + 1, size + candidate.size
        if count == most or size >= most_bytes or at == len(candidates):
            cuts.append(at)
            count, size = 0, 0
    return cuts


def needs_reading(record: Record | None, candidate: scan.Candidate, model_id: str,
                  model_too: bool = True) -> bool:
    """Whether a file must be (re-)read: new, changed on disk, or (with `model_too`) encoded
    by a model other than `model_id`."""
    if record is None:
        return True
    if (record.size, record.mtime_ns) != (candidate.size, candidate.mtime_ns):
        return True
    return model_too and record.error_code is None and record.model_id != model_id


def set_up_new_library(config: Config, library: Library) -> None:
    """For a new library only: make missing watched folders, and note the rules its
    results files will follow (`answers.rules`: so none is checked again for them).

    A missing inbox of a library that has images is an unmounted disk, not
    a folder to create (creating it would hide the mount point).
    """
    if library.generation:
        return
    library.set_meta(MADE_WITH, rules(config.strictness))
    for folder in (config.inbox, config.query_dir):
        if folder is not None and not folder.exists():
            folder.mkdir(parents=True)
            log.info("created %s", folder)
