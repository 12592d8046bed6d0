"""The results file: `<image file name>.neighbors.json` beside each image.

Written atomically: a hidden temporary file in the same folder, fsync,
rename. The watcher ignores both our results files and these temporaries.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = "lookalike.neighbors/1"
SUFFIX = ".neighbors.json"
TEMP_PREFIX = ".lookalike-"


@dataclass(frozen=True)
class Found:
    """One neighbour as the results file shows it."""

    path: str  # relative to the inbox
    distance: float
    duplicate: bool


def results_path(image: Path) -> Path:
    return image.with_name(image.name + SUFFIX)


def is_ours(name: str) -> bool:
    """Whether a file name is one of our results files or their temporaries."""
    return name.endswith(SUFFIX) or name.startswith(TEMP_PREFIX)


def ok(query: str, model_id: str, metric: str, neighbors: list[Found],
       generation: int, items: int, pending: int) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "status": "ok",
        "query": query,
        "model": model_id,
        "metric": metric,
        "neighbors": [{"rank": rank, "path": n.path, "distance": round(n.distance, 6),
                       "duplicate": n.duplicate} for rank, n in enumerate(neighbors, 1)],
        "index": {"generation": generation, "items": items, "pending": pending},
        "written_at": now(),
    }


def error(query: str, code: str, message: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "status": "error",
        "query": query,
        "error": {"code": code, "message": message},
        "written_at": now(),
    }


def fingerprint(document: dict[str, Any]) -> str:
    """What makes two results for one image the same (not when they were written)."""
    lasting = {key: value for key, value in document.items() if key not in ("written_at", "index")}
    return hashlib.sha256(json.dumps(lasting, sort_keys=True).encode()).hexdigest()[:32]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write(path: Path, document: dict[str, Any]) -> None:
    """Write `document` to `path` atomically: temporary file, fsync, rename."""
    fd, partial = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2, ensure_ascii=False)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def remove(image: Path) -> bool:
    """Delete the results file of `image` if it is ours; True if one was removed."""
    path = results_path(image)
    try:
        with open(path, encoding="utf-8") as existing:
            if json.load(existing).get("schema") != SCHEMA:
                return False
    except (OSError, ValueError, AttributeError):
        return False
    path.unlink(missing_ok=True)
    return True
