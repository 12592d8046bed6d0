"""The vector of a file's bytes, when the library already holds it.

A file moved within the inbox arrives with the size and SHA-256 of a row
whose file has just left (deleted rows keep their vectors until the next
index build drops them), and an exact copy with those of a row that is
still there: either row's vector is the file's own, made by the same model
from the same bytes, so the file needs no decoding and no encoding.

Looked up from the decoding threads, as each file's bytes are hashed: each
thread reads the library through a read-only connection of its own (the
service's connection stays the service's), which in WAL mode sees what was
committed and never waits for a writer.
"""
from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StateError

# The content index (core/store.py, images_by_content) holds the hash's first 16 hex digits.
# SQLite 3.40 searches it only when the query says its condition (sha256 IS NOT NULL) and
# does not compare sha256 itself in a way an index could serve (+sha256): else it scans
# the whole index, 5 ms a look-up at 3,000 rows.
FIND = ("SELECT id, latent, thumb, width, height FROM images "
        "WHERE substr(sha256, 1, 16) = ? AND sha256 IS NOT NULL "
        "AND +sha256 = ? AND size = ? AND model_id = ? AND latent IS NOT NULL LIMIT 1")


@dataclass(frozen=True)
class Twin:
    """A row with a file's bytes: its id, vector, and near-duplicate thumbnail and size."""

    row_id: int
    latent: np.ndarray
    thumb: bytes | None
    width: int | None
    height: int | None


class Twins:
    """The vectors of the library at `path` by content, for the model `model_id`."""

    def __init__(self, path: Path, model_id: str) -> None:
        self.uri = f"{path.resolve().as_uri()}?mode=ro"
        self.model_id = model_id
        self.local = threading.local()
        self.opened: list[sqlite3.Connection] = []
        self.lock = threading.Lock()

    def find(self, sha256: str, size: int) -> Twin | None:
        """The row whose file had these bytes (`size` of them), or None.

        A look-up that fails finds nothing: the file is then decoded and encoded.
        """
        try:
            row = self.connection().execute(
                FIND, (sha256[:16], sha256, size, self.model_id)).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else Twin(int(row[0]),
                                             np.frombuffer(row[1], "<f4").astype(np.float32),
                                             *row[2:])

    def connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self.local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.uri, uri=True, timeout=30, check_same_thread=False)
            except sqlite3.Error as error:
                raise StateError(f"cannot read the library: {error}") from None
            self.local.db = db
            with self.lock:
                self.opened.append(db)
        return db

    def close(self) -> None:
        """Close every thread's connection (when no thread looks anything up any more)."""
        with self.lock:
            for db in self.opened:
                db.close()
            self.opened.clear()
        self.local = threading.local()
