"""Ingest: from image files to library rows.

`Ingest` reads and decodes images in a small thread pool, encodes them in
batches and stores each batch in one library transaction; it forgets the
images that left the inbox. A file with the bytes of a library row (moved
within the inbox, or copied) takes that row's vector and is not decoded
(`core.twins`). It does no watching and writes no results:
`reconcile` compares the inbox with the library (the start-up scan, the
periodic rescan and `run --once`), and the service hands it what its
watcher saw.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lookalike.core import copies, images, results, scan
from lookalike.core.config import Config
from lookalike.core.errors import UnreadableImage
from lookalike.core.store import Entry, Library, Record
from lookalike.core.twins import Twin, Twins
from lookalike.daemon.answers import MADE_WITH, remove_leftovers, rules
from lookalike.daemon.progress import Progress, Tally

if TYPE_CHECKING:
    from lookalike.core.encoder import Encoder

log = logging.getLogger(__name__)

# The least images per batch when more than `ingest.batch_size` wait (a scan's ingest: at
# start-up, a rescan, `run --once`). Their results are all written at the end, so only
# throughput counts, and the encoder and the library do more per call in larger
# batches. The service's turns keep `batch_size`: a burst's first results wait for a
# whole batch.
SCAN_BATCH = 256


@dataclass(frozen=True)
class Read:
    """One file after reading: its hash with its pixels or with a library row's vector
    for the same bytes, or why it is unusable."""

    candidate: scan.Candidate
    decoded: images.Decoded | None
    problem: UnreadableImage | None
    twin: tuple[str, Twin] | None = None  # (SHA-256, the row with those bytes): no pixels
                                          # to encode
    picture: tuple[bytes, int, int] | None = None  # near-duplicate thumbnail, width, height


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
    """Image files read, encoded and stored; `pool` decodes (and lends its threads to
    searches while idle). `stock` hears how many results files will be wanted soon."""

    def __init__(self, config: Config, library: Library, encoder: Encoder,
                 stock: Callable[[int], None] = lambda count: None,
                 interrupted: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.library = library
        self.encoder = encoder
        self.pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="decode")
        self.twins = Twins(config.state_dir / "library.sqlite", encoder.model_id)
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
        progress = Progress("ingest", len(candidates))
        self.stock(len(candidates))  # a results file each, made while encoding
        size, stored = max(self.config.batch_size, SCAN_BATCH), Changes()
        reading = self.read_batch(candidates[:size])
        try:
            for start in range(0, len(candidates), size):
                batch = [future.result() for future in reading]
                if self.interrupted():
                    log.info("ingest interrupted: %d left for the next start",
                             len(candidates) - start)
                    break
                # The next batch decodes in the pool while this one is encoded and stored.
                reading = self.read_batch(candidates[start + size:start + 2 * size])
                stored += self.store(batch, known, tally)
                progress.update(start + len(batch))
        finally:
            progress.finish()
        return stored

    def read_batch(self, candidates: Sequence[scan.Candidate]) -> list[Future[Read]]:
        return [self.pool.submit(self.read, candidate) for candidate in candidates]

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
        for read in batch:
            if read.problem is not None:
                c = read.candidate
                entries.append(Entry(c.path, c.size, c.mtime_ns, None, None, None,
                                     read.problem.code, read.problem.message))
                tally.errors += 1
                log.warning("%s: %s (%s)", c.path, read.problem.message, read.problem.code)
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


def needs_reading(record: Record | None, candidate: scan.Candidate, model_id: str,
                  model_too: bool = True) -> bool:
    """Whether a file must be (re-)read: new, changed on disk, or (with `model_too`) encoded
    by a model other than `model_id`."""
    if record is None:
        return True
    if (record.size, record.mtime_ns) != (candidate.size, candidate.mtime_ns):
        return True
    return model_too and record.error_code is None and record.model_id != model_id


def read(inbox: Path, candidate: scan.Candidate, shape: images.Shape,
         twins: Twins | None = None) -> Read:
    """Read, hash and decode one file of `inbox` for an encoder of `shape`, unless a row of
    `twins` holds its bytes' vector."""
    path = inbox / candidate.path
    try:
        problem = scan.link_problem(inbox, path)
        if problem is not None:
            raise problem
        data = images.read(path)
        sha256 = hashlib.sha256(data).hexdigest()
        twin = None if twins is None else twins.find(sha256, len(data))
        if twin is not None:
            return Read(candidate, None, None, (sha256, twin))
        pixels, (width, height) = images.decode_sized(data, shape)
        return Read(candidate, images.Decoded(pixels, sha256, (width, height)), None,
                    picture=(copies.thumbnail(pixels), width, height))
    except UnreadableImage as problem:
        return Read(candidate, None, problem)


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
