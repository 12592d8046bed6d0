"""From image files to library rows and results files.

The `Worker` reads and decodes images in a small thread pool, encodes them
in batches, stores each batch in one library transaction and writes the
results files. It does no watching: `reconcile` compares the inbox with the
library (the start-up scan, the periodic rescan and `run --once`), and the
service hands it what its watcher saw.

Results stay true as the library changes: after a batch, `affected` names
the images whose results a change touches (a new image closer than their
k-th neighbour, or a neighbour that changed or left), bounded per image.
Those that only gained neighbours are rewritten by `merged`, without a
search: their last results and the new images, measured exactly.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lookalike.core import images, index, results, scan
from lookalike.core.config import Config
from lookalike.core.errors import DiskFull, StateError, UnreadableImage, disk_full
from lookalike.core.search import Neighbor, Searcher, distance
from lookalike.core.store import Answer, Entry, Library, Record

if TYPE_CHECKING:
    from lookalike.core.encoder import Encoder

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0
# Images whose results wait to be rewritten, each with the new rows that may enter
# them, or None when a new search must redo them (`Worker.affected`).
Touched = dict[int, set[int] | None]
# x k: the nearest of a new image whose results it may enter. Nearness is not symmetric:
# the images whose 12 nearest a new one enters are not all among its own 12 nearest, and
# the wider it looks the more of them it finds (bench/reverse.py measures how many).
# Entering costs no search (`merged`), so look wide.
REVERSE_CANDIDATES = 8
ANSWER_CHUNK = 1024  # results computed, written and synced together
# The least images per batch when more than `ingest.batch_size` wait (a scan's ingest: at
# start-up, a rescan, `run --once`). Their results are all written at the end, so only
# throughput counts, and the encoder and the library do more per call in larger
# batches. The service's turns keep `batch_size`: a burst's first results wait for a
# whole batch.
SCAN_BATCH = 256
# A results file to write: where, what, and what the library remembers of it once written.
Due = tuple[Path, dict[str, object], Answer]
Writing = tuple[list[Due], Future[list[OSError | None]]]  # files being written, in `writer`


@dataclass
class Tally:
    """What a pass did, for the summary line."""

    added: int = 0
    updated: int = 0
    errors: int = 0
    removed: int = 0
    answered: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        took = f" in {self.seconds:.1f} s" if self.seconds else ""
        return (f"{self.added} added, {self.updated} updated, {self.removed} removed, "
                f"{self.errors} unusable, {self.answered} results written{took}")


@dataclass(frozen=True)
class Read:
    """One file after reading: pixels and hash, or why it is unusable."""

    candidate: scan.Candidate
    decoded: images.Decoded | None
    problem: UnreadableImage | None


@dataclass
class Changes:
    """Row ids a batch touched: stored (new, changed or now unusable) and removed.

    `replaced` are the stored rows that existed before: results may name them.
    """

    stored: list[int]
    removed: list[int]
    replaced: list[int] = field(default_factory=list)
    unanswered: list[int] = field(default_factory=list)  # unchanged, their results missing

    def __bool__(self) -> bool:
        return bool(self.stored or self.removed)


class Progress:
    """Log `done/total` at most every few seconds during long work."""

    def __init__(self, what: str, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.clock = what, total, clock
        self.started = self.last = clock()

    def update(self, done: int) -> None:
        now = self.clock()
        if now - self.last >= PROGRESS_EVERY_S and done < self.total:
            rate = done / max(now - self.started, 1e-9)
            log.info("%s: %d/%d (%.0f/s)", self.what, done, self.total, rate)
            self.last = now


class Worker:
    def __init__(self, config: Config, library: Library, encoder: Encoder) -> None:
        self.config = config
        self.library = library
        self.encoder = encoder
        self.pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="decode")
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="results")  # `answer`
        self.interrupted: Callable[[], bool] = lambda: False  # checked between batches
        self.scratch: results.Scratch | None = None  # temporaries of results: `take_scratch`
        self.stock_blanks = False  # whether the scratch can make inbox results files ahead

    def take_scratch(self) -> None:
        """Keep temporary results files in the state directory (only its lock holder may).

        Leftovers of a crash are deleted first: they are ours, by name.
        """
        folder = self.config.state_dir / "partial"
        folder.mkdir(exist_ok=True)
        remove_leftovers(folder)
        self.scratch = results.Scratch(folder)
        # A temporary is renamed into the inbox: on another disk it would be made for nothing.
        self.stock_blanks = same_disk(folder, self.config.inbox)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.writer.shutdown(wait=True)
        if self.scratch is not None:
            self.scratch.close()

    # -- the library ------------------------------------------------------
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
                   if self.outdated(known.get(path), c, model_too)]
        gone = sorted(set(known) - set(on_disk))
        if known and not on_disk:
            # An empty mount point looks like an inbox whose images were all deleted.
            log.warning("the inbox %s holds no images but the library has %d: is its disk "
                        "unmounted? Forgetting nothing", self.config.inbox, len(known))
            gone = []
        if changed or gone:
            log.info("inbox scan: %d new or changed, %d gone, %d unchanged",
                     len(changed), len(gone), len(on_disk) - len(changed))
        stored = self.ingest(changed, known, tally)
        settled = set(on_disk) - {c.path for c in changed}  # (`ingest` answers the others)
        unanswered = [record.id for path, record in known.items() if path in settled and (
            record.answered is None or not survey.answered(path))]
        return Changes(stored, self.forget(gone, tally), replaced(changed, known), unanswered)

    def outdated(self, record: Record | None, candidate: scan.Candidate,
                 model_too: bool = True) -> bool:
        """Whether a file must be (re-)read: new, changed on disk, or encoded by another model."""
        if record is None:
            return True
        if (record.size, record.mtime_ns) != (candidate.size, candidate.mtime_ns):
            return True
        return model_too and record.error_code is None and record.model_id != self.encoder.model_id

    def ingest(self, candidates: Sequence[scan.Candidate], known: dict[str, Record],
               tally: Tally) -> list[int]:
        """Read, encode and store `candidates` in batches; return the stored row ids."""
        progress = Progress("ingest", len(candidates))
        if self.scratch is not None and self.stock_blanks:
            self.scratch.stock(len(candidates))  # a results file each, made while encoding
        size, stored = max(self.config.batch_size, SCAN_BATCH), []
        reading = self.read_batch(candidates[:size])
        for start in range(0, len(candidates), size):
            batch = [future.result() for future in reading]
            if self.interrupted():
                log.info("ingest interrupted: %d left for the next start", len(candidates) - start)
                break
            # The next batch decodes in the pool while this one is encoded and stored.
            reading = self.read_batch(candidates[start + size:start + 2 * size])
            stored += self.store(batch, known, tally)
            progress.update(start + len(batch))
        return stored

    def read_batch(self, candidates: Sequence[scan.Candidate]) -> list[Future[Read]]:
        return [self.pool.submit(self.read, candidate) for candidate in candidates]

    def read(self, candidate: scan.Candidate) -> Read:
        path = self.config.inbox / candidate.path
        try:
            problem = scan.link_problem(self.config.inbox, path)
            if problem is not None:
                raise problem
            return Read(candidate, images.load(path, self.encoder.shape), None)
        except UnreadableImage as problem:
            return Read(candidate, None, problem)

    def store(self, batch: list[Read], known: dict[str, Record], tally: Tally) -> list[int]:
        """Encode the usable reads of a batch and store the batch in one transaction."""
        usable = [(r.candidate, r.decoded) for r in batch if r.decoded is not None]
        pixels = [decoded.pixels for _, decoded in usable]
        latents = self.encoder.encode(np.stack(pixels)) if pixels else []
        entries = []
        for (c, decoded), latent in zip(usable, latents, strict=True):
            entries.append(Entry(c.path, c.size, c.mtime_ns, decoded.sha256,
                                 self.encoder.model_id, latent))
            if c.path in known:
                tally.updated += 1
            else:
                tally.added += 1
            log.debug("%s: encoded", c.path)
        for read in batch:
            if read.problem is not None:
                c = read.candidate
                entries.append(Entry(c.path, c.size, c.mtime_ns, None, None, None,
                                     read.problem.code, read.problem.message))
                tally.errors += 1
                log.warning("%s: %s (%s)", c.path, read.problem.message, read.problem.code)
        if not entries:
            return []
        self.library.apply(entries)
        return [record.id for record in self.library.lookup(e.path for e in entries).values()]

    def forget(self, gone: Iterable[str], tally: Tally) -> list[int]:
        """Drop images that left the inbox, with their results files; return their row ids."""
        if not self.config.inbox.is_dir():
            return []  # the whole inbox went (unmounted): that is no deletion
        records = self.library.lookup(gone)
        if not records:
            return []
        self.library.apply(deletions=records)
        for path in records:
            results.remove(self.config.inbox / path)
        tally.removed += len(records)
        log.info("forgot %d images that left the inbox", len(records))
        return [record.id for record in records.values()]

    # -- the index ---------------------------------------------------------
    def rebuild_if_stale(self) -> index.BuiltIndex | None:
        try:
            current = index.current_info(self.config.state_dir)
        except StateError:
            current = None  # a damaged pointer: the rebuild replaces it
        if current is None or current.generation != self.library.generation:
            self.rebuild()
        return self.load_index()

    def load_index(self) -> index.BuiltIndex | None:
        """The current index; a damaged one is rebuilt (the library holds all it knows)."""
        try:
            return index.load(self.config.state_dir)
        except StateError as error:
            log.error("the index is damaged; rebuilding it (%s)", error)
        self.rebuild()
        return index.load(self.config.state_dir)

    def rebuild(self, library: Library | None = None) -> index.IndexInfo:
        settings = self.config.index
        return index.build(library or self.library, self.config.state_dir,
                           metric=settings.metric, trees=settings.trees,
                           model_id=self.encoder.model_id, exact_below=settings.exact_below,
                           dims=settings.dims)

    def searcher(self, built: index.BuiltIndex | None) -> Searcher:
        settings = self.config.index
        return Searcher.open(self.library, built, settings.metric, settings.search_k,
                             settings.candidates, self.pool,  # idle while searching
                             settings.rescore)

    # -- results -----------------------------------------------------------
    def nearby(self, searcher: Searcher, row_ids: Iterable[int]) -> dict[int, list[Neighbor]]:
        """The nearest rows to each of `row_ids`, enough for both `affected` and `answer`:
        one search per new image instead of two."""
        width = REVERSE_CANDIDATES * self.config.neighbors
        return searcher.neighbors_of(self.library.vectors_of(row_ids), width)

    def affected(self, changes: Changes, nearby: dict[int, list[Neighbor]]) -> Touched:
        """Answered images whose results `changes` may alter (not the changed ones themselves).

        A new or moved image enters the results of those of its `nearby`
        images that it is closer to than their k-th neighbour: each affected
        image comes with the rows that may enter. An image that left or
        changed leaves the results that named it: those come with None, as
        only a new search finds what takes its place.
        """
        named = set(changes.removed) | set(changes.replaced)  # a new row is in no results yet
        affected: Touched = dict.fromkeys(self.library.naming(named)) if named else {}
        radii = self.library.radii({n.row_id for near in nearby.values() for n in near})
        for row, near in nearby.items():
            for n in near:
                if n.row_id not in radii:
                    continue
                radius = radii[n.row_id]
                if radius is None or n.distance < radius:
                    entering = affected.setdefault(n.row_id, set())
                    if entering is not None:  # (None: it is searched again anyway)
                        entering.add(row)
        for row in (*changes.stored, *changes.removed):
            affected.pop(row, None)
        return affected

    def merged(self, metric: str, entering: dict[int, set[int]]) -> dict[int, list[Neighbor]]:
        """The k nearest rows to each row of `entering` that only new rows may enter: its
        last results and those rows, measured exactly. No search, so it costs little at
        any library size; rows whose last results cannot be trusted are left out.
        """
        named = self.library.named(entering)
        wanted = {*entering, *(r for rows in entering.values() for r in rows),
                  *(int(r) for rows in named.values() for r in rows)}
        vectors = self.library.vectors_of(wanted)
        found = {}
        for row, new in entering.items():
            if row not in vectors or row not in named:
                continue
            last = named[row].tolist()
            if any(r not in vectors for r in last):  # it named an image gone since
                continue
            others = sorted({*last, *(r for r in new if r in vectors)} - {row})
            if len(others) < self.config.neighbors:  # a short list (or k grew): search
                continue
            distances = distance(np.stack([vectors[r] for r in others]), vectors[row], metric)
            ranked = sorted(zip(distances.tolist(), others, strict=True))
            found[row] = [Neighbor(r, d) for d, r in ranked[:self.config.neighbors]]
        return found

    def answer(self, searcher: Searcher, row_ids: Iterable[int], tally: Tally,
               names: dict[int, tuple[str, str | None]] | None = None,
               nearby: dict[int, list[Neighbor]] | None = None) -> None:
        """Write the results file of each row whose results are missing or different.

        `nearby` holds the rows' nearest neighbours when already searched (a
        wider search's first k are exactly the k nearest). A chunk's files
        are written in the `writer` thread while the next chunk is searched:
        the search and the writes' system calls let go of the GIL, so the
        two cores share what was one core's work.
        """
        wanted = list(row_ids)
        progress = Progress("results", len(wanted))
        writing: Writing | None = None
        try:
            for start in range(0, len(wanted), ANSWER_CHUNK):
                due = self.due(searcher, wanted[start:start + ANSWER_CHUNK], names, nearby)
                documents = [(target, document) for target, document, _ in due]
                last, writing = writing, (
                    due, self.writer.submit(results.write_many, documents, self.scratch))
                if last is not None:
                    tally.answered += self.written(*last)
                progress.update(start + ANSWER_CHUNK)
        finally:
            if writing is not None:  # (after a failure too: what reached the disk counts)
                tally.answered += self.written(*writing)

    def due(self, searcher: Searcher, row_ids: list[int],
            names: dict[int, tuple[str, str | None]] | None,
            nearby: dict[int, list[Neighbor]] | None) -> list[Due]:
        """The results files that `row_ids` need, with their neighbours found."""
        k = self.config.neighbors
        chunk = self.library.fetch(row_ids)
        if nearby is None:
            found = searcher.neighbors_of(self.library.vectors_of(chunk), k)
        else:
            found = {row: nearby[row][:k] for row in chunk if row in nearby}
        known = names if names is not None else self.library.describe(
            {n.row_id for near in found.values() for n in near})
        return [answer for answer in (
            self.answer_one(record, found.get(record.id, []), searcher, known)
            for record in chunk.values()) if answer is not None]

    def written(self, due: list[Due], writing: Future[list[OSError | None]]) -> int:
        """Wait for the files of `due` and remember those that reached the disk; how many
        did. A full disk is raised once that is remembered."""
        failures = writing.result()
        done = [answer for (target, _, answer), failure in zip(due, failures, strict=True)
                if not self.failed(target, failure)]
        self.library.mark_answered(done)
        self.raise_if_full(self.config.inbox, failures)
        return len(done)

    def answer_one(self, record: Record, near: list[Neighbor], searcher: Searcher,
                   names: dict[int, tuple[str, str | None]]) -> Due | None:
        """The results file a row needs, or None when the one on disk says it already."""
        if record.error_code is not None:
            document = results.error(record.path, record.error_code,
                                     record.error_message or record.error_code)
            near = []
        else:
            near = [n for n in near if n.row_id in names]
            document = self.document(record.path, record.sha256, near, searcher, names)
        stamp = results.fingerprint(document)
        target = results.results_path(self.config.inbox / record.path)
        if stamp == record.answered and target.exists():
            return None
        full = len(near) >= self.config.neighbors
        return target, document, Answer(record.id, stamp, [n.row_id for n in near],
                                        near[-1].distance if full else None)

    def answer_missing(self, searcher: Searcher, tally: Tally,
                       records: Iterable[Record] | None = None) -> None:
        """Answer the images of the library whose results file is missing or out of date."""
        records = self.library.records().values() if records is None else records
        missing = [r.id for r in records if r.answered is None
                   or not results.results_path(self.config.inbox / r.path).exists()]
        self.answer(searcher, missing, tally)

    def answer_library(self, searcher: Searcher, tally: Tally,
                       unanswered: list[int] | None = None) -> None:
        """Write every missing or outdated results file of the inbox (`run --once`).

        `unanswered` are those a scan found missing (`reconcile`): when the library has
        not changed since every results file was written, only those are due.
        """
        generation = str(self.library.generation)
        if self.library.meta("answered_generation") == generation:
            if unanswered is not None:
                self.answer(searcher, unanswered, tally)
            else:
                self.answer_missing(searcher, tally)
            return
        records = self.library.records()
        names = {r.id: (r.path, r.sha256) for r in records.values()}
        self.answer(searcher, names, tally, names)
        self.library.set_meta("answered_generation", generation)

    def answer_queries(self, searcher: Searcher, tally: Tally,
                       paths: Iterable[str] | None = None) -> None:
        """Answer query-folder images: `paths`, or every one whose results are missing or old."""
        folder = self.config.query_dir
        if folder is None or not folder.is_dir():
            return
        if paths is None:
            generation = str(self.library.generation)
            settled = self.library.meta("queries_generation") == generation
            paths = [c.path for c in scan.walk(folder, self.config.exclude)
                     if not settled or not fresh_results(folder / c.path)]
            self.library.set_meta("queries_generation", generation)
        documents = [(results.results_path(folder / relative),
                      self.query(folder / relative, relative, searcher)) for relative in paths]
        failures = results.write_many(documents, self.scratch)
        for (target, document), failure in zip(documents, failures, strict=True):
            tally.errors += document["status"] == "error"
            tally.answered += not self.failed(target, failure)
        self.raise_if_full(folder, failures)

    def query(self, path: Path, name: str, searcher: Searcher,
              exclude: int | None = None) -> dict[str, object]:
        """The results document for any image file (not added to the library)."""
        try:
            folder = self.config.query_dir
            problem = scan.link_problem(folder, path) \
                if folder and path.is_relative_to(folder) else None
            if problem is not None:
                raise problem
            decoded = images.load(path, self.encoder.shape)
        except UnreadableImage as problem:
            return results.error(name, problem.code, problem.message)
        vector = self.encoder.encode(decoded.pixels[None])[0]
        near = searcher.neighbors(vector, self.config.neighbors, exclude=exclude)
        names = self.library.describe(n.row_id for n in near)
        return self.document(name, decoded.sha256, near, searcher, names)

    def document(self, query: str, sha256: str | None, near: list[Neighbor], searcher: Searcher,
                 names: dict[int, tuple[str, str | None]]) -> dict[str, object]:
        found = [results.Found(names[n.row_id][0], n.distance,
                               sha256 is not None and names[n.row_id][1] == sha256)
                 for n in near if n.row_id in names]
        built = searcher.index.info.generation if searcher.index is not None else 0
        return results.ok(query, self.encoder.model_id, searcher.metric, found,
                          built, searcher.items, searcher.pending)

    def failed(self, target: Path, failure: OSError | None) -> bool:
        """Whether a write failed; said per file, unless a full disk (said once, raised)."""
        if failure is not None and not disk_full(failure):
            log.error("%s: cannot write results: %s", target, failure.strerror or failure)
        return failure is not None

    @staticmethod
    def raise_if_full(folder: Path, failures: Iterable[OSError | None]) -> None:
        """A full disk under `folder` fails the whole turn: the service then says so once
        and retries until there is space; the results not written are written then."""
        full = next((f for f in failures if f is not None and disk_full(f)), None)
        if full is not None:
            raise DiskFull(f"the disk of {folder} is full: results files cannot be written "
                           f"({full.strerror})")


def join(touched: Touched, more: Touched) -> None:
    """Add `more` to `touched`: the rows that may enter add up; None (search again) wins."""
    for row, entering in more.items():
        current = touched.get(row, set())
        touched[row] = None if entering is None or current is None else current | entering


def replaced(changed: Iterable[scan.Candidate], known: dict[str, Record]) -> list[int]:
    """Row ids of the `changed` files that the library held before."""
    return [known[c.path].id for c in changed if c.path in known]


def create_folders_on_first_run(config: Config, library: Library) -> None:
    """Make missing watched folders for a new library only.

    A missing inbox of a library that has images is an unmounted disk, not
    a folder to create (creating it would hide the mount point).
    """
    if library.generation:
        return
    for folder in (config.inbox, config.query_dir):
        if folder is not None and not folder.exists():
            folder.mkdir(parents=True)
            log.info("created %s", folder)


def same_disk(one: Path, other: Path) -> bool:
    try:
        return os.stat(one).st_dev == os.stat(other).st_dev
    except OSError:  # a missing inbox (unmounted): no blanks until the next start
        return False


def remove_leftovers(folder: Path, found: Iterable[str] | None = None) -> None:
    """Delete temporary results files that a crash left behind (ours only, by name):
    those `found` (relative to `folder`), or every one below it."""
    removed = 0
    for path in scan.leftovers(folder) if found is None else (folder / f for f in found):
        path.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.info("removed %d unfinished results files left by a crash in %s", removed, folder)


def fresh_results(image: Path) -> bool:
    """Whether `image` has a results file written after the image last changed.

    The ctime counts too: `mv`, `cp -p` and `rsync -a` keep an older mtime,
    but the kernel sets the ctime when a file is created or renamed.
    """
    try:
        status = image.stat()
        changed = max(status.st_mtime_ns, status.st_ctime_ns)
        return results.results_path(image).stat().st_mtime_ns >= changed
    except OSError:
        return False
