"""The library's rows: their table (`SCHEMA`) and, as Python sees them, an image as read
and stored (`Entry`), as held (`Record`), what a change did (`Stored`) and what a results
file said (`Answer`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,         -- relative to the inbox, '/'-separated
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,                       -- of the file's bytes; NULL if unreadable
    model_id TEXT,
    latent BLOB,                       -- float32; NULL for an unusable file
    error_code TEXT,
    error_message TEXT,
    generation INTEGER NOT NULL,       -- library generation of the last change
    deleted INTEGER NOT NULL DEFAULT 0,
    answered TEXT,                     -- fingerprint of the results file last written
    named BLOB,                        -- int64 row ids that results file lists (core.ranking)
    radius REAL,                       -- distance of the last of them (NULL: fewer than searched)
    thumb BLOB,                        -- 32x32 grey levels for near-duplicates (core.copies)
    width INTEGER,                     -- of the picture, upright
    height INTEGER,
    copies BLOB                        -- int64 row ids its results file marks near-duplicate
);
CREATE INDEX IF NOT EXISTS images_by_generation ON images (generation);
-- Counting live images scans this, not the table's 4 GB of vectors (10^6: 0.04 s, not 0.9 s).
CREATE INDEX IF NOT EXISTS images_live ON images (error_code) WHERE deleted = 0;
-- Dropping tombstones after a build finds them here: a scan of the table would
-- hold the write lock, and stall the service's writes, for seconds at 10^6.
CREATE INDEX IF NOT EXISTS images_deleted ON images (generation) WHERE deleted = 1;
-- Which model made each vector: the start-up's look for vectors to re-encode and
-- `lookalike status` read this, not the table (10^6: 2.6 s at every start).
CREATE INDEX IF NOT EXISTS images_models ON images (model_id)
    WHERE deleted = 0 AND latent IS NOT NULL;
-- Rows by the first 16 hex digits of their content's hash (a quarter of the whole
-- hash's size): a file moved or copied within the inbox takes its vector from a row
-- with the same bytes (`core.twins`), a tombstone's too. (Not "WHERE latent IS NOT
-- NULL": queries of the vectors of a model would scan this index instead of theirs.)
CREATE INDEX IF NOT EXISTS images_by_content ON images (substr(sha256, 1, 16))
    WHERE sha256 IS NOT NULL;
"""
# Columns added after the first libraries were made: added to an older library on open.
ADDED_COLUMNS = {"thumb": "BLOB", "width": "INTEGER", "height": "INTEGER", "copies": "BLOB"}


@dataclass(frozen=True)
class Entry:
    """An image as read: what `Library.apply` stores."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    model_id: str | None
    latent: np.ndarray | None = None
    error_code: str | None = None
    error_message: str | None = None
    thumb: bytes | None = None  # `core.copies.thumbnail`
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Record:
    """What the library holds about one live image (without its vector)."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    model_id: str | None
    error_code: str | None
    error_message: str | None
    answered: str | None
    radius: float | None


RECORD_COLUMNS = ("id, path, size, mtime_ns, sha256, model_id, error_code, error_message, "
                  "answered, radius")


@dataclass(frozen=True)
class Stored:
    """What `Library.store` did: the new generation, and the live rows whose results
    listed a row it replaced or removed (marked out of date with the change)."""

    generation: int
    outdated: list[int]


@dataclass(frozen=True)
class Answer:
    """What a results file said: for `mark_answered`."""

    row_id: int
    fingerprint: str
    neighbors: list[int]  # the row ids its neighbours were ranked from (`core.ranking`'s
                          # candidates), nearest first
    radius: float | None  # the last candidate's distance (None: fewer than searched)
    copies: list[int] = field(default_factory=list)  # those it marks near-duplicate
