"""From image files to library rows and results files.

The `Worker` reads and decodes images in a small thread pool, encodes them
in batches, stores each batch in one library transaction and writes the
results files. It has no watching of its own: `reconcile` compares a folder
with the library (the start-up scan and `run --once`), and the service feeds
it the paths its watcher saw.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lookalike.core import images, index, results, scan
from lookalike.core.config import Config
from lookalike.core.errors import UnreadableImage
from lookalike.core.model import Encoder
from lookalike.core.search import Searcher
from lookalike.core.store import Entry, Library, Record

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0


@dataclass
class Tally:
    """What a pass did, for the summary line."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: int = 0
    removed: int = 0
    answered: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.added} added, {self.updated} updated, {self.removed} removed, "
                f"{self.errors} unusable, {self.answered} results written "
                f"in {self.seconds:.1f} s")


@dataclass(frozen=True)
class Read:
    """One file after reading: pixels and hash, or why it is unusable."""

    candidate: scan.Candidate
    decoded: images.Decoded | None
    problem: UnreadableImage | None


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

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- the library ------------------------------------------------------
    def reconcile(self, tally: Tally) -> None:
        """Bring the library in line with the inbox: add new, re-read changed, forget gone."""
        on_disk = {c.path: c for c in scan.walk(self.config.inbox, self.config.exclude)}
        known = self.library.records()
        changed = [c for path, c in on_disk.items() if self.outdated(known.get(path), c)]
        tally.unchanged += len(on_disk) - len(changed)
        gone = sorted(set(known) - set(on_disk))
        if changed:
            log.info("reading %d new or changed images", len(changed))
        self.ingest(changed, known, tally)
        self.forget(gone, tally)

    def outdated(self, record: Record | None, candidate: scan.Candidate) -> bool:
        if record is None:
            return True
        if (record.size, record.mtime_ns) != (candidate.size, candidate.mtime_ns):
            return True
        return record.error_code is None and record.model_id != self.encoder.model_id

    def ingest(self, candidates: Sequence[scan.Candidate], known: dict[str, Record],
               tally: Tally) -> None:
        """Read, encode and store `candidates` in batches; answer the unusable ones."""
        progress = Progress("ingest", len(candidates))
        size = self.config.batch_size
        for start in range(0, len(candidates), size):
            batch = self.read(candidates[start:start + size])
            self.store(batch, known, tally)
            progress.update(start + len(batch))

    def read(self, batch: Sequence[scan.Candidate]) -> list[Read]:
        return list(self.pool.map(self.read_one, batch))

    def read_one(self, candidate: scan.Candidate) -> Read:
        path = self.config.inbox / candidate.path
        try:
            if not scan.inside(self.config.inbox, path):
                raise UnreadableImage("outside", "a link that leads outside the watched folder")
            return Read(candidate, images.load(path, self.encoder.shape), None)
        except UnreadableImage as problem:
            return Read(candidate, None, problem)

    def store(self, batch: list[Read], known: dict[str, Record], tally: Tally) -> None:
        usable = [r for r in batch if r.decoded is not None]
        latents = self.encoder.encode(np.stack([r.decoded.pixels for r in usable])) \
            if usable else np.zeros((0, self.encoder.latent_dim), np.float32)
        entries = []
        for read, latent in zip(usable, latents):
            c, record = read.candidate, known.get(read.candidate.path)
            assert read.decoded is not None
            entries.append(Entry(c.path, c.size, c.mtime_ns, read.decoded.sha256,
                                 self.encoder.model_id, latent))
            if record is None:
                tally.added += 1
            else:
                tally.updated += 1
        for read in batch:
            if read.problem is not None:
                c = read.candidate
                entries.append(Entry(c.path, c.size, c.mtime_ns, None, None, None,
                                     read.problem.code, read.problem.message))
                tally.errors += 1
                log.warning("%s: %s (%s)", c.path, read.problem.message, read.problem.code)
        self.library.apply(entries)

    def forget(self, gone: Iterable[str], tally: Tally) -> None:
        """Drop images that left the inbox, with their results files."""
        gone = list(gone)
        if not gone:
            return
        self.library.apply(deletions=gone)
        for path in gone:
            results.remove(self.config.inbox / path)
        tally.removed += len(gone)
        log.info("forgot %d images that left the inbox", len(gone))

    # -- the index ---------------------------------------------------------
    def rebuild_if_stale(self) -> index.BuiltIndex | None:
        current = index.current_info(self.config.state_dir)
        if current is None or current.generation != self.library.generation:
            self.rebuild()
        return index.load(self.config.state_dir)

    def rebuild(self) -> index.IndexInfo:
        return index.build(self.library, self.config.state_dir, metric=self.config.index.metric,
                           trees=self.config.index.trees, model_id=self.encoder.model_id)

    def searcher(self, built: index.BuiltIndex | None) -> Searcher:
        return Searcher.open(self.library, built, self.config.index.metric,
                             self.config.index.search_k)

    # -- results -----------------------------------------------------------
    def answer_library(self, searcher: Searcher, tally: Tally) -> None:
        """Write every missing or outdated results file of the inbox."""
        records = self.library.records()
        by_id = {r.id: r for r in records.values()}
        generation = self.library.generation
        settled = self.library.meta("answered_generation") == str(generation)
        row_ids, latents = self.library.vectors()
        vectors = dict(zip(row_ids.tolist(), latents))
        todo = [r for r in records.values()
                if not settled or not results.results_path(self.config.inbox / r.path).exists()]
        progress = Progress("results", len(todo))
        answered = []
        for done, record in enumerate(todo, 1):
            if record.error_code is not None:
                document = results.error(record.path, record.error_code,
                                         record.error_message or record.error_code)
            else:
                document = self.document(record.path, record.sha256, vectors[record.id],
                                         searcher, by_id, exclude=record.id)
            stamp = results.fingerprint(document)
            target = results.results_path(self.config.inbox / record.path)
            if stamp != record.answered or not target.exists():
                if self.write(target, document):
                    answered.append((record.id, stamp))
            progress.update(done)
        self.library.mark_answered(answered)
        self.library.set_meta("answered_generation", str(generation))
        tally.answered += len(answered)

    def answer_queries(self, searcher: Searcher, tally: Tally) -> None:
        """Answer each image of the query folder whose results are missing or outdated."""
        folder = self.config.query_dir
        if folder is None or not folder.is_dir():
            return
        generation = str(self.library.generation)
        settled = self.library.meta("queries_generation") == generation
        todo = [c for c in scan.walk(folder, self.config.exclude)
                if not settled or not fresh_results(folder / c.path)]
        by_id = {r.id: r for r in self.library.records().values()}
        for candidate in todo:
            path = folder / candidate.path
            try:
                if not scan.inside(folder, path):
                    raise UnreadableImage("outside", "a link that leads outside the watched folder")
                decoded = images.load(path, self.encoder.shape)
                vector = self.encoder.encode(decoded.pixels[None])[0]
                document = self.document(candidate.path, decoded.sha256, vector, searcher, by_id)
            except UnreadableImage as problem:
                document = results.error(candidate.path, problem.code, problem.message)
                tally.errors += 1
            if self.write(results.results_path(path), document):
                tally.answered += 1
        self.library.set_meta("queries_generation", generation)

    def document(self, query: str, sha256: str | None, vector: np.ndarray, searcher: Searcher,
                 by_id: dict[int, Record], exclude: int | None = None) -> dict[str, object]:
        found = []
        for neighbor in searcher.neighbors(vector, self.config.neighbors, exclude=exclude):
            record = by_id.get(neighbor.row_id)
            if record is None:
                continue
            duplicate = sha256 is not None and record.sha256 == sha256
            found.append(results.Found(record.path, neighbor.distance, duplicate))
        built = searcher.index.info.generation if searcher.index is not None else 0
        return results.ok(query, self.encoder.model_id, searcher.metric, found,
                          built, searcher.items, searcher.pending)

    def write(self, target: Path, document: dict[str, object]) -> bool:
        try:
            results.write(target, document)
            return True
        except OSError as error:
            log.error("%s: cannot write results: %s", target, error.strerror or error)
            return False


def fresh_results(image: Path) -> bool:
    """Whether `image` has a results file at least as new as itself."""
    try:
        return results.results_path(image).stat().st_mtime_ns >= image.stat().st_mtime_ns
    except OSError:
        return False
