"""The library: one SQLite database (WAL) of images and their latent vectors.

Each row is an image of the inbox by its relative path, with the size and
mtime it had when read, its content hash, the id of the model that encoded
it and its latent vector (or the error that made it unusable). The library
has a `generation` that each committed change raises by one; every row
carries the generation of its last change, so "everything since generation
N" is one indexed query. A deleted image stays as a tombstone until an index
built after its deletion is in use, so searches can tell that an index item
is gone; it keeps its vector meanwhile, for a file that arrives with the
same bytes.

Each change records its own consequences in the transaction that stores it,
so that a restart redoes exactly what a kill interrupted: stored rows carry
the new generation and no results (they are answered again), and the live
rows whose results file lists a row that was replaced or removed are marked
out of date (`answered` NULL) with it. (A results file's list, as the
library keeps it, is the candidates its neighbours were ranked from,
`core.ranking`: it shows k of them, and a change to any may change it.)
What new rows enter elsewhere follows
from their generation: the check of the rows changed since the last check
(`checked_generation`) measures them against every results file.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from . import copies
from .errors import StateError
from .records import ADDED_COLUMNS, RECORD_COLUMNS, SCHEMA, Answer, Entry, Record, Stored

# Set in a library whose every change marked the results it made out of date (`store`);
# one made before that, and not stopped cleanly, may hold stale results anywhere.
MARKS_RESULTS = "changes_mark_results"
STACK_BLOCK = 8_192  # vectors joined at a time when reading many


# The latents of the live usable rows among some ids (`Library.select`'s IN list).
LATENTS_OF = ("SELECT id, latent FROM images WHERE latent IS NOT NULL AND deleted = 0 "
              "AND id IN ({})")


class Library:
    """The library database at `path` (created if missing)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # WAL keeps each commit atomic; a power cut may lose the last few,
            # which the next start-up scan reads again.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            present = {row[1] for row in self.db.execute("PRAGMA table_info(images)")}
            for column, kind in ADDED_COLUMNS.items():
                if column not in present:
                    self.db.execute(f"ALTER TABLE images ADD COLUMN {column} {kind}")
            if self.generation == 0 and self.meta(MARKS_RESULTS) is None:
                self.set_meta(MARKS_RESULTS, "1")  # a new library: each change will mark
        except sqlite3.Error as error:
            raise StateError(f"{path}: cannot open the library: {error}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------
    @property
    def generation(self) -> int:
        return int(self.meta("generation") or 0)

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def records(self) -> dict[str, Record]:
        """Every live image by relative path."""
        rows = self.db.execute(
            f"SELECT {RECORD_COLUMNS} FROM images WHERE deleted = 0")
        return {row[1]: Record(*row) for row in rows}

    def counts(self) -> dict[str, int]:
        """Live images: all, those with a vector, those unusable (a live row has one or
        the other)."""
        live, errors = self.db.execute(
            "SELECT COUNT(*), COUNT(error_code) FROM images WHERE deleted = 0").fetchone()
        return {"images": live, "vectors": live - errors, "errors": errors}

    def pending(self, generation: int) -> int:
        """Usable images changed since `generation` (not yet in an index built then)."""
        row = self.db.execute("SELECT COUNT(*) FROM images WHERE generation > ? AND deleted = 0 "
                              "AND latent IS NOT NULL", (generation,)).fetchone()
        return int(row[0])

    def model_ids(self) -> dict[str, int]:
        """How many vectors each model made."""
        rows = self.db.execute("SELECT model_id, COUNT(*) FROM images WHERE deleted = 0 "
                               "AND latent IS NOT NULL GROUP BY model_id")
        return {str(model): count for model, count in rows}

    def vectors(self, up_to: int | None = None,
                model_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row ids (n,) and latent vectors (n, d) of live usable images, changed by `up_to`
        (and made by `model_id`, if given)."""
        limit = self.generation if up_to is None else up_to
        rows = self.db.execute(
            "SELECT id, latent FROM images WHERE deleted = 0 AND latent IS NOT NULL "
            "AND generation <= ? AND model_id = coalesce(?, model_id) ORDER BY id",
            (limit, model_id))
        return stack(rows)

    def encoded_by_others(self, model_id: str) -> list[str]:
        """Paths of usable images whose vectors another model made."""
        # Sorted here: ORDER BY path would make SQLite walk the whole table in path order
        # rather than read the index of model ids.
        rows = self.db.execute("SELECT path FROM images WHERE deleted = 0 AND latent IS NOT NULL "
                               "AND model_id != ?", (model_id,))
        return sorted(row[0] for row in rows)

    def changed_since(self, generation: int) -> tuple[np.ndarray, np.ndarray, set[int]]:
        """What an index built at `generation` does not know.

        Returns the ids and vectors of live usable rows changed since, and
        the ids of every row changed since (live, deleted or now unusable):
        index items with those ids are stale.
        """
        # Sorted here: ORDER BY id would make SQLite scan the table in id order (4 GB at
        # 10^6, 0.7 s at every swap of the index) rather than look up the few changed.
        rows = sorted(self.db.execute(
            "SELECT id, latent, deleted FROM images WHERE generation > ?", (generation,)),
            key=lambda row: row[0])
        stale = {row[0] for row in rows}
        ids, latents = stack((row[0], row[1]) for row in rows if row[1] is not None and not row[2])
        return ids, latents, stale

    def describe(self, ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
        """Path and content hash of each row id."""
        return {row: (path, sha256) for row, path, sha256 in self.select(
            "SELECT id, path, sha256 FROM images WHERE id IN ({})", ids)}

    # -- changing --------------------------------------------------------
    def apply(self, entries: Iterable[Entry] = (), deletions: Iterable[str] = ()) -> int:
        """Store `entries` and delete `deletions` (paths) in one transaction.

        Returns the new library generation.
        """
        return self.store(entries, deletions).generation

    def store(self, entries: Iterable[Entry] = (), deletions: Iterable[str] = ()) -> Stored:
        """Store `entries` and delete `deletions` (paths) in one transaction, which also
        marks out of date the results files that list a row it replaces or removes.

        Returns the new generation and the rows so marked.
        """
        entries, deletions = list(entries), list(deletions)
        with self.transaction() as generation:
            leaving = self.leaving(entries, deletions)
            # One executemany: the rows of a bulk import (`lookalike import`) pass Python's
            # call into SQLite once, not once each.
            self.db.executemany(
                "INSERT INTO images (path, size, mtime_ns, sha256, model_id, latent, "
                "error_code, error_message, generation, deleted, answered, thumb, width, "
                "height) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, "
                "model_id = excluded.model_id, latent = excluded.latent, "
                "error_code = excluded.error_code, error_message = excluded.error_message, "
                "generation = excluded.generation, deleted = 0, answered = NULL, named = NULL, "
                "radius = NULL, thumb = excluded.thumb, width = excluded.width, "
                "height = excluded.height, copies = NULL",
                ((entry.path, entry.size, entry.mtime_ns, entry.sha256, entry.model_id,
                  None if entry.latent is None else
                  np.ascontiguousarray(entry.latent, dtype="<f4").tobytes(),
                  entry.error_code, entry.error_message, generation, entry.thumb,
                  entry.width, entry.height) for entry in entries))
            # A tombstone keeps its vector until it goes: a file that arrives with its bytes
            # (the other end of a move) takes it rather than being encoded again.
            self.db.executemany(
                "UPDATE images SET deleted = 1, answered = NULL, named = NULL, "
                "radius = NULL, copies = NULL, generation = ? "
                "WHERE path = ? AND deleted = 0", ((generation, path) for path in deletions))
            # (After the updates: the leaving rows' own results no longer list anything.)
            outdated = self.listing_any(leaving)
            self.db.executemany("UPDATE images SET answered = NULL WHERE id = ?",
                                ((row,) for row in outdated))
        return Stored(generation, outdated)

    def leaving(self, entries: list[Entry], deletions: list[str]) -> list[int]:
        """The rows whose vector `entries` and `deletions` take away: results that list
        them must be searched again. A row stored again with the same bytes keeps its
        place in other results (its vector is the same; under another model, all
        results are rewritten once the library is re-encoded)."""
        now = {entry.path: (entry.sha256, entry.error_code) for entry in entries}
        rows = self.select("SELECT id, path, sha256 FROM images WHERE deleted = 0 "
                           "AND latent IS NOT NULL AND path IN ({})", [*now, *deletions])
        return [row for row, path, sha256 in rows if now.get(path) != (sha256, None)]

    def mark_answered(self, answers: Iterable[Answer]) -> None:
        """Remember what the results file written for each row says."""
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "UPDATE images SET answered = ?, named = ?, radius = ?, copies = ? WHERE id = ?",
            ((a.fingerprint, np.asarray(a.neighbors, "<i8").tobytes(), a.radius,
              np.asarray(a.copies, "<i8").tobytes() if a.copies else None, a.row_id)
             for a in answers))
        self.db.execute("COMMIT")

    def mark_outdated(self, ids: Iterable[int]) -> None:
        """Mark rows whose results file is out of date, until `mark_answered` says otherwise
        (a start-up then rewrites them: they count as unanswered)."""
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("UPDATE images SET answered = NULL WHERE id = ?",
                            ((row,) for row in ids))
        self.db.execute("COMMIT")

    def radii(self, ids: Iterable[int]) -> dict[int, float | None]:
        """The distance of the last row listed by the results file last written for each
        row id that has one (also while it waits to be rewritten)."""
        return {row: radius for row, radius in self.select(
            "SELECT id, radius FROM images WHERE named IS NOT NULL AND deleted = 0 "
            "AND id IN ({})", ids)}

    def answered_rows(self, after: int, limit: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """Up to `limit` live usable rows with a results file, from row id `after` on
        (exclusive), in id order: ids (n,), vectors (n, d), the distance of the last row
        each one lists (inf where it listed fewer than it searched) and the row ids it
        lists."""
        rows = self.db.execute(
            "SELECT id, latent, radius, named FROM images WHERE id > ? AND deleted = 0 "
            "AND latent IS NOT NULL AND named IS NOT NULL ORDER BY id LIMIT ?",
            (after, limit)).fetchall()
        ids, vectors = stack((row[0], row[1]) for row in rows)
        radii = np.array([np.inf if row[2] is None else row[2] for row in rows], np.float64)
        return ids, vectors, radii, [np.frombuffer(row[3], "<i8") for row in rows]

    def neighbors_listed(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """The row ids that the results file last written for each row id lists."""
        return {row: np.frombuffer(blob, "<i8") for row, blob in self.select(
            "SELECT id, named FROM images WHERE named IS NOT NULL AND deleted = 0 "
            "AND id IN ({})", ids)}

    def copies_listed(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """The row ids that the results file last written for each row id marks as
        near-duplicates (rows that mark none are left out)."""
        return {row: np.frombuffer(blob, "<i8") for row, blob in self.select(
            "SELECT id, copies FROM images WHERE copies IS NOT NULL AND deleted = 0 "
            "AND id IN ({})", ids)}

    def listing_any(self, ids: Iterable[int]) -> list[int]:
        """Live rows whose results file lists any of `ids`."""
        wanted = np.fromiter(ids, np.int64)
        if not len(wanted):
            return []
        # One pass over every answered row, vectorised: a reverse table would
        # cost random B-tree writes on every results file (measured: 25 -> 130
        # us per results file from 10^4 to 3x10^5 rows); this costs a
        # deletion about 1 s per million rows.
        rows, blobs = [], []
        for row, blob in self.db.execute(
                "SELECT id, named FROM images WHERE named IS NOT NULL AND deleted = 0"):
            rows.append(row)
            blobs.append(blob)
        if not rows:
            return []
        listed = np.frombuffer(b"".join(blobs), "<i8")
        owners = np.repeat(np.asarray(rows, np.int64), [len(blob) // 8 for blob in blobs])
        return sorted(set(owners[np.isin(listed, wanted)].tolist()))

    def lookup(self, paths: Iterable[str]) -> dict[str, Record]:
        """The live records of `paths` that the library holds."""
        return {row[1]: Record(*row) for row in self.select(
            f"SELECT {RECORD_COLUMNS} FROM images WHERE deleted = 0 AND path IN ({{}})", paths)}

    def under(self, folder: str) -> list[str]:
        """Paths of live images inside `folder` (relative, '/'-separated)."""
        prefix = folder.rstrip("/") + "/"
        rows = self.db.execute("SELECT path FROM images WHERE deleted = 0 "
                               "AND substr(path, 1, ?) = ?", (len(prefix), prefix))
        return [row[0] for row in rows]

    def fetch(self, ids: Iterable[int]) -> dict[int, Record]:
        """The live records of row `ids`."""
        return {row[0]: Record(*row) for row in self.select(
            f"SELECT {RECORD_COLUMNS} FROM images WHERE deleted = 0 AND id IN ({{}})", ids)}

    def vectors_of(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """The latent vector of each live usable row id."""
        return {row: np.frombuffer(blob, "<f4").astype(np.float32)
                for row, blob in self.select(LATENTS_OF, ids)}

    def matrix_of(self, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """The live usable rows among `ids`: their ids (n,), sorted, and latent vectors
        (n, d), as one matrix."""
        found, vectors = stack(self.select(LATENTS_OF, sorted(set(ids))))
        order = np.argsort(found, kind="stable")  # (SQLite need not return them in order)
        return found[order], vectors[order]

    def thumbnails(self, ids: Iterable[int]) -> dict[int, copies.Picture]:
        """The near-duplicate thumbnail and shape of each live row id that has one."""
        return {row: copies.Picture(thumb, copies.shape_of(width, height))
                for row, thumb, width, height in self.select(
                    "SELECT id, thumb, width, height FROM images WHERE thumb IS NOT NULL "
                    "AND deleted = 0 AND id IN ({})", ids)}

    def copy_pairs(self) -> list[tuple[int, int]]:
        """Every (row, row it marks near-duplicate) of the live results files, both live."""
        rows, blobs = [], []
        for row, blob in self.db.execute(
                "SELECT id, copies FROM images WHERE copies IS NOT NULL AND deleted = 0"):
            rows.append(row)
            blobs.append(blob)
        if not rows:
            return []
        marked = np.frombuffer(b"".join(blobs), "<i8")
        owners = np.repeat(np.asarray(rows, np.int64), [len(blob) // 8 for blob in blobs])
        live = np.isin(marked, self.live_ids())
        return list(zip(owners[live].tolist(), marked[live].tolist(), strict=True))

    def live_ids(self) -> np.ndarray:
        return np.fromiter((row for row, in self.db.execute(
            "SELECT id FROM images WHERE deleted = 0")), np.int64)

    def pictures(self, ids: Iterable[int]) -> dict[int, tuple[str, int, int | None, int | None,
                                                            str | None]]:
        """Path, bytes, width, height and content hash of each live row id."""
        return {row[0]: row[1:] for row in self.select(
            "SELECT id, path, size, width, height, sha256 FROM images WHERE deleted = 0 "
            "AND id IN ({})", ids)}

    def select(self, sql: str, values: Iterable[object]) -> Iterator[tuple]:  # type: ignore[type-arg]
        """Run `sql` (with one `IN ({})`) over `values` in chunks SQLite accepts."""
        wanted = list(values)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            yield from self.db.execute(sql.format(",".join("?" * len(chunk))), chunk)

    def forget_deleted(self, up_to: int) -> int:
        """Drop tombstones that an index built at `up_to` no longer holds."""
        cursor = self.db.execute(
            "DELETE FROM images WHERE deleted = 1 AND generation <= ?", (up_to,))
        return cursor.rowcount

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def transaction(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT that raises the generation by one."""

    def __init__(self, library: Library) -> None:
        self.library = library

    def __enter__(self) -> int:
        self.library.db.execute("BEGIN IMMEDIATE")
        generation = self.library.generation + 1
        self.library.set_meta("generation", str(generation))
        return generation

    def __exit__(self, kind: object, *rest: object) -> None:
        self.library.db.execute("ROLLBACK" if kind else "COMMIT")


def stack(rows: Iterable[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    """Row ids (n,) and the float32 matrix (n, d) of (id, latent blob) rows.

    Blobs are joined a block at a time, so a million vectors never sit in
    memory as a million small bytes objects and their join at once.
    """
    ids: list[int] = []
    blocks: list[np.ndarray] = []
    pending: list[bytes] = []
    for row_id, blob in rows:
        ids.append(row_id)
        pending.append(blob)
        if len(pending) == STACK_BLOCK:
            blocks.append(np.frombuffer(b"".join(pending), dtype="<f4"))
            pending = []
    if pending:
        blocks.append(np.frombuffer(b"".join(pending), dtype="<f4"))
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    # Each block let go once copied: the matrix and one block at most, not two matrices.
    matrix = np.empty(sum(len(block) for block in blocks), np.float32)
    filled = 0
    blocks.reverse()
    while blocks:
        block = blocks.pop()
        matrix[filled:filled + len(block)] = block
        filled += len(block)
    return np.asarray(ids, np.int64), matrix.reshape(len(ids), -1)
