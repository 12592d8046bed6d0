"""Answers: the results documents of images, and their writes.

`Answers` makes the results document of each library row it is given (its
neighbours searched, or given when already found), writes the files that
changed in batches, and remembers in the library what each one says. It
answers images of the query folder too, and any image for `lookalike
query`. Which rows to answer is its callers': new and changed images
(`sync`), those a change made out of date (`freshness`), every one
(`run --once`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from lookalike.core import copies, images, ranking, results, scan
from lookalike.core.config import Config
from lookalike.core.errors import DiskFull, UnreadableImage, disk_full
from lookalike.core.exact import Neighbor
from lookalike.core.search import Searcher
from lookalike.core.store import Answer, Library, Record
from lookalike.daemon import judging
from lookalike.daemon.progress import Progress, Tally

if TYPE_CHECKING:
    from lookalike.core.encoder import Encoder
    from lookalike.daemon.moves import Carried

log = logging.getLogger(__name__)

ANSWER_CHUNK = 1024  # results computed, written and synced together
RANKED_TOGETHER = 256  # rows whose candidates' vectors are read at once (some 20 MB)
KEPT_AT_REST = 2_048  # thumbnails' views a resting service keeps (`rest`)
Names = dict[int, tuple[str, str | None]]  # row id -> path and content hash
MADE_WITH = "made_with"  # the library's note of the rules its results files follow (`rules`)


class ResultsFile(NamedTuple):
    """A results file to write: where, its text (`results.render`), and what the library
    remembers once written."""

    target: Path
    text: str
    answer: Answer


# A chunk's files being made and written in the `writer`, with what stopped each one.
Writing = Future[tuple[list[ResultsFile], list[OSError | None]]]


class Ahead(NamedTuple):
    """A chunk of library rows read, its candidates being found (`core.ranking`)."""

    records: dict[int, Record]
    vectors: dict[int, np.ndarray]
    found: Future[dict[int, list[Neighbor]]]


class Searched(NamedTuple):
    """A chunk of library rows with their candidates found (`core.ranking`), the
    neighbours shown of them, and their near-duplicates (row id -> marked neighbours'
    row ids) being judged."""

    records: dict[int, Record]
    found: dict[int, list[Neighbor]]
    shown: dict[int, list[Neighbor]]
    names: Names
    marks: Future[dict[int, set[int]]]


class Answers:
    """Results files of library rows and query images; `writer` writes them in batches."""

    def __init__(self, config: Config, library: Library, encoder: Encoder,
                 judged_apart: bool = False) -> None:
        self.config = config
        self.library = library
        self.encoder = encoder
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="results")  # `answer`
        self.searching = ThreadPoolExecutor(1, thread_name_prefix="search")  # `answer`
        self.judging = ThreadPoolExecutor(1, thread_name_prefix="marks")  # `answer`
        self.scratch: results.Scratch | None = None  # temporaries of results: `take_scratch`
        self.stock_blanks = False  # whether the scratch can make inbox results files ahead
        self.judges: dict[str, copies.Judge] = {}  # by strictness
        # For answering many images at once (`run --once`): judging in a process.
        self.judging_process = judging.JudgingProcess() if judged_apart else None

    @property
    def judge(self) -> copies.Judge:
        """Near-duplicate flags at the configured strictness (a reload may change it)."""
        return judging.judge(self.judges, self.config.strictness)

    def rest(self) -> None:
        """A spell of work is over: a near-duplicate judge that kept many thumbnails' views
        (a burst's: up to some 120 MB) lets them go; the few of single arrivals stay."""
        for judge in self.judges.values():
            judge.shrink(KEPT_AT_REST)

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

    def prepare(self) -> None:
        """Have the maps that judging reads made in its thread while images are read
        (`copies.prepare`), not when the first answers wait for them (a judging process
        makes its own)."""
        if self.judging_process is None:
            self.judging.submit(copies.prepare)

    def stock(self, count: int) -> None:
        """`count` inbox results files will be wanted soon: make their temporaries ahead."""
        if self.scratch is not None and self.stock_blanks:
            self.scratch.stock(count)

    def close(self) -> None:
        self.searching.shutdown(wait=True)
        self.judging.shutdown(wait=True)
        self.writer.shutdown(wait=True)
        if self.judging_process is not None:
            self.judging_process.close()
        if self.scratch is not None:
            self.scratch.close()

    # -- library rows ----------------------------------------------------------
    def answer(self, searcher: Searcher, row_ids: Iterable[int], tally: Tally,
               names: Names | None = None,
               nearby: dict[int, list[Neighbor]] | None = None,
               marks: dict[int, set[int]] | None = None) -> None:
        """Write the results file of each row whose results are missing or different.

        `nearby` holds the rows' nearest neighbours when already searched (a
        wider search's first candidates are exactly the nearest searched),
        `marks` the rows' near-duplicates among them when already judged. Four threads share
        the work of each chunk, one step behind each other: while the next
        chunk is searched in the `searching` thread, this one is ranked here
        and its near-duplicates judged in the `judging` thread, and the one
        before's files are made, once judged, and written in the `writer` thread
        (this thread never waits for a judgement). The search, the
        judgement's array work and the writes' system calls let go of the
        GIL, so the two cores share what was one core's work; a judging
        process (`judged_apart`) takes the judgement's Python off this
        process's GIL as well.
        """
        # Near rows together: their neighbours' thumbnails are judged while their views
        # are still kept (`copies.Judge`), not made again for each.
        wanted = searcher.near_together(list(row_ids))
        chunks = [wanted[start:start + ANSWER_CHUNK]
                  for start in range(0, len(wanted), ANSWER_CHUNK)]
        progress = Progress("results", len(wanted))
        ahead: Ahead | None = None  # the chunk being searched
        judged: Searched | None = None  # the chunk before, being judged
        writing: Writing | None = None
        done = 0
        try:
            for chunk in [*chunks, None, None]:
                before, ahead = ahead, (self.search_ahead(searcher, chunk, nearby)
                                       if chunk else None)
                searched = self.searched(searcher, before, names, marks) if before else None
                if judged is not None:
                    last, writing = writing, self.writer.submit(self.write, searcher, judged)
                    if last is not None:
                        tally.answered += self.finish_writing(last)
                    done += len(judged.records)
                    progress.update(done)
                judged = searched
        finally:
            progress.finish()
            if ahead is not None:  # the searching and judging threads are left idle
                wait([ahead.found])
            if judged is not None:
                wait([judged.marks])
            if writing is not None:  # (after a failure too: what reached the disk counts)
                tally.answered += self.finish_writing(writing)

    def search_ahead(self, searcher: Searcher, row_ids: list[int],
                     nearby: dict[int, list[Neighbor]] | None) -> Ahead:
        """`row_ids` read, their candidates being found in the `searching` thread (those
        of `nearby` are already)."""
        wide = ranking.candidates(self.config.neighbors)
        chunk = self.library.fetch(row_ids)
        vectors = self.library.vectors_of(chunk)
        if nearby is None:
            found = self.searching.submit(searcher.neighbors_of, vectors, wide)
        else:
            found = Future()
            found.set_result({row: nearby[row][:wide] for row in chunk if row in nearby})
        return Ahead(chunk, vectors, found)

    def searched(self, searcher: Searcher, ahead: Ahead, names: Names | None,
                 marks: dict[int, set[int]] | None = None) -> Searched:
        """A chunk with its candidates found (`search_ahead`) and ranked, its
        near-duplicates being judged."""
        chunk, vectors = ahead.records, ahead.vectors
        found = ahead.found.result()
        shown = self.look_alikes(vectors, found, searcher)
        listed = {n.row_id for near in shown.values() for n in near}
        known = names if names is not None else self.library.describe(listed)
        unjudged = [record for record in chunk.values()
                    if (marks is None or record.id not in marks) and record.error_code is None]
        # (The library is read here, in its own thread; the judging thread reads none.)
        pictures = (self.library.thumbnails(listed | {record.id for record in unjudged})
                    if unjudged else {})
        judging = [(record.id, record.sha256, pictures.get(record.id),
                    [n for n in shown.get(record.id, []) if n.row_id in known])
                   for record in unjudged]
        given = {row: marks[row] for row in chunk if row in marks} if marks else {}
        return Searched(chunk, found, shown, known, self.judging.submit(
            self.marks_of, judging, known, pictures, given))

    def look_alikes(self, queries: dict[int, np.ndarray], found: dict[int, list[Neighbor]],
                    searcher: Searcher) -> dict[int, list[Neighbor]]:
        """The neighbours each row of `found` shows, ranked from its candidates
        (`core.ranking`); `queries`: the rows' vectors. The candidates' vectors are read
        for RANKED_TOGETHER rows at a time (`Searcher.matrix_of`)."""
        rows = [row for row in found if row in queries]
        shown: dict[int, list[Neighbor]] = {}
        for start in range(0, len(rows), RANKED_TOGETHER):
            some = {row: found[row] for row in rows[start:start + RANKED_TOGETHER]}
            ids, vectors = searcher.matrix_of(
                (n.row_id for near in some.values() for n in near), self.library)
            shown.update(ranking.ranked(queries, some, ids, vectors, self.config.neighbors,
                                        searcher.metric))
        return shown

    def marks_of(self, judging: list[tuple[int, str | None, copies.Picture | None,
                                            list[Neighbor]]],
                 names: Names, pictures: dict[int, copies.Picture],
                 given: dict[int, set[int]]) -> dict[int, set[int]]:
        """Each row's near-duplicates: those `given` (the chunk's known ones), and those
        of `judging` (row id, SHA-256, picture, neighbours) judged together, each
        picture's views made once."""
        judged = self.near_duplicates(
            [(sha256, picture, near) for _, sha256, picture, near in judging], names, pictures)
        return {**given, **dict(zip((row for row, *_ in judging), judged, strict=True))}

    def write(self, searcher: Searcher,
              searched: Searched) -> tuple[list[ResultsFile], list[OSError | None]]:
        """In the `writer` thread: the results files a searched chunk's rows need, once
        judged, written; with what stopped each (`results.write_many`)."""
        marks = searched.marks.result()
        files = [file for file in (
            self.results_file(record, searched.found.get(record.id, []),
                              searched.shown.get(record.id, []), searcher, searched.names,
                              marks.get(record.id, set()))
            for record in searched.records.values()) if file is not None]
        return files, results.write_many([(file.target, file.text) for file in files],
                                         self.scratch)

    def finish_writing(self, writing: Writing) -> int:
        """Wait for a chunk's files to be written and remember those that reached the
        disk; how many did. A full disk is raised once that is remembered."""
        files, failures = writing.result()
        done = [file.answer for file, failure in zip(files, failures, strict=True)
                if not self.write_failed(file.target, failure)]
        self.library.mark_answered(done)
        raise_if_full(self.config.inbox, failures)
        return len(done)

    def results_file(self, record: Record, found: list[Neighbor], near: list[Neighbor],
                     searcher: Searcher, names: Names, marks: set[int]) -> ResultsFile | None:
        """The results file a row needs, or None when the one on disk says it already:
        `found` its candidates, `near` the neighbours shown of them, `marks` its
        near-duplicates."""
        marked: list[int] = []
        if record.error_code is not None:
            document = results.error(record.path, record.error_code,
                                     record.error_message or record.error_code)
            found = near = []
        else:
            near = [n for n in near if n.row_id in names]
            marked = [n.row_id for n in near if n.row_id in marks]
            document = self.document(record.path, record.sha256, near, searcher, names,
                                     set(marked))
        listed = [n.row_id for n in found]
        fields = results.fields(document)
        stamp = results.fingerprint_of(fields, listed)
        target = results.results_path(self.config.inbox / record.path)
        if stamp == record.answered and target.exists():
            return None
        full = len(found) >= ranking.candidates(self.config.neighbors)
        return ResultsFile(target, results.text_of(fields), Answer(record.id, stamp, listed,
                                                    found[-1].distance if full else None,
                                                    marked))

    def near_duplicates(self, images: list[tuple[str | None, copies.Picture | None,
                                                 list[Neighbor]]],
                        names: Names, pictures: dict[int, copies.Picture]) -> list[set[int]]:
        """For each image (its SHA-256, `copies.Picture` and neighbours), the row ids of
        its neighbours that are near-duplicates of it (`core.copies`): identical bytes,
        or a copy at the configured strictness."""
        queries: list[copies.Query] = [
            (picture, [(n.distance, pictures.get(n.row_id)) for n in near])
            for _, picture, near in images]
        judged = (self.judge.marks(queries) if self.judging_process is None else
                  self.judging_process.marks(self.config.strictness, queries))
        return [{n.row_id for n, copy in zip(near, copied, strict=True)
                 if copy or (sha256 is not None and names[n.row_id][1] == sha256)}
                for (sha256, _, near), copied in zip(images, judged, strict=True)]

    def answer_missing(self, searcher: Searcher, tally: Tally,
                       records: Iterable[Record] | None = None) -> None:
        """Answer the images of the library whose results file is missing or out of date."""
        records = self.library.records().values() if records is None else records
        missing = [r.id for r in records if r.answered is None
                   or not results.results_path(self.config.inbox / r.path).exists()]
        self.answer(searcher, missing, tally)

    def answer_library(self, searcher: Searcher, tally: Tally,
                       unanswered: list[int] | None = None,
                       carried: Carried | None = None) -> None:
        """Write every missing or outdated results file of the inbox (`run --once`).

        `unanswered` are those a scan found missing (`Ingest.reconcile`): when the
        library has not changed since every results file was written, only those are due.
        `carried` are rows' neighbours and marks known without a search
        (`moves.carried`); their marks hold under the rules they were made by (`rules`).
        """
        generation = str(self.library.generation)
        same_rules = self.library.meta(MADE_WITH) == rules(self.config.strictness)
        if self.library.meta("answered_generation") == generation and same_rules:
            if unanswered is not None:
                self.answer(searcher, unanswered, tally)
            else:
                self.answer_missing(searcher, tally)
            return
        # Only the names: the whole records would be held through the answering.
        names = {r.id: (r.path, r.sha256) for r in self.library.records().values()}
        known = {} if carried is None else carried.neighbors
        self.answer(searcher, [row for row in names if row in known], tally, names, known,
                    carried.copies if carried is not None and same_rules else None)
        self.answer(searcher, [row for row in names if row not in known], tally, names)
        self.library.set_meta("answered_generation", generation)
        self.library.set_meta(MADE_WITH, rules(self.config.strictness))

    # -- other images -----------------------------------------------------------
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
        failures = results.write_many(
            [(target, results.render(document)) for target, document in documents], self.scratch)
        for (target, document), failure in zip(documents, failures, strict=True):
            tally.errors += document["status"] == "error"
            tally.answered += not self.write_failed(target, failure)
        raise_if_full(folder, failures)

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
        found = searcher.neighbors(vector, ranking.candidates(self.config.neighbors),
                                   exclude=exclude)
        [near] = self.look_alikes({0: vector}, {0: found}, searcher).values()
        names = self.library.describe(n.row_id for n in near)
        near = [n for n in near if n.row_id in names]
        pictures = self.library.thumbnails(n.row_id for n in near)
        picture = copies.Picture(copies.thumbnail(decoded.pixels), copies.shape_of(*decoded.size))
        [marked] = self.near_duplicates([(decoded.sha256, picture, near)], names, pictures)
        return self.document(name, decoded.sha256, near, searcher, names, marked)

    def document(self, query: str, sha256: str | None, near: list[Neighbor], searcher: Searcher,
                 names: Names, marked: set[int]) -> dict[str, object]:
        found = [results.Found(names[n.row_id][0], n.distance,
                               sha256 is not None and names[n.row_id][1] == sha256,
                               n.row_id in marked)
                 for n in near if n.row_id in names]
        return results.ok(query, self.encoder.model_id, searcher.metric, found,
                          searcher.generation or 0, searcher.items, searcher.pending)

    @staticmethod
    def write_failed(target: Path, failure: OSError | None) -> bool:
        """Whether a write failed; said per file, unless a full disk (said once, raised)."""
        if failure is not None and not disk_full(failure):
            log.error("%s: cannot write results: %s", target, failure.strerror or failure)
        return failure is not None


def rules(strictness: str) -> str:
    """The rules results files follow, as the library notes them: near-duplicates judged
    at `strictness`, neighbours ranked as `core.ranking` ranks them. Results files made
    by others (another strictness; an older release's judging or ranking) are rewritten."""
    return f"near-duplicates {copies.judged_with(strictness)}; ranking {ranking.RULE}"


def raise_if_full(folder: Path, failures: Iterable[OSError | None]) -> None:
    """A full disk under `folder` fails the whole turn: the service then says so once
    and retries until there is space; the results not written are written then."""
    full = next((f for f in failures if f is not None and disk_full(f)), None)
    if full is not None:
        raise DiskFull(f"the disk of {folder} is full: results files cannot be written "
                       f"({full.strerror})")


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
