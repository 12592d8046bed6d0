"""The results file: `<image file name>.neighbors.json` beside each image.

Written atomically: a temporary file (in the state directory's `Scratch`
when it is on the same disk, else hidden beside the image), one sync for
a batch, rename (the steps of `atomic`). The watcher ignores our results
files and temporaries.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import json
import math
import os
import queue
import stat
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .atomic import put_in_place, sync_filesystem

SCHEMA = "lookalike.neighbors/1"
SUFFIX = ".neighbors.json"
TEMP_PREFIX = ".lookalike-"
MAX_RESULTS_BYTES = 1 << 20  # ours are a few kB: a bigger file is not ours
# Empty temporaries made ahead, at most: enough for every results file of a bulk
# ingest or a move of this many images (an inode each, no data).
MAX_BLANKS = 1 << 16


@dataclass(frozen=True)
class Found:
    """One neighbour as the results file shows it."""

    path: str  # relative to the inbox
    distance: float
    duplicate: bool  # identical bytes
    near_duplicate: bool = False  # a copy of the same picture (`core.copies`); identical too


NAME_MAX = 255  # bytes in a file name, on every Linux file system


def results_path(image: Path) -> Path:
    """Where the results of `image` go: `<image file name>.neighbors.json` beside it.

    When that name would pass 255 bytes (the image's name is over 240), the
    results file is `<the name's first 230 bytes>~<8 hex digits of the name's
    SHA-256>.neighbors.json` instead; its `query` names the image in full.
    """
    return image.with_name(results_name(image.name))


def results_name(image_name: str) -> str:
    """The file name of the results of an image file named `image_name` (`results_path`)."""
    name = image_name + SUFFIX
    if len(os.fsencode(name)) <= NAME_MAX:
        return name
    raw = os.fsencode(image_name)
    digest = hashlib.sha256(raw).hexdigest()[:8]
    head = raw[:NAME_MAX - len(SUFFIX) - 10].decode("utf-8", "ignore")  # whole characters
    return f"{head}~{digest}{SUFFIX}"


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
                       "duplicate": n.duplicate, "near_duplicate": n.near_duplicate or n.duplicate}
                      for rank, n in enumerate(neighbors, 1)],
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


# Encoders made once: json.dumps with options builds a new encoder per call.
_as_json = json.JSONEncoder(ensure_ascii=False).encode


def render(document: dict[str, Any]) -> str:
    """The JSON text of a results file: a key per line, a neighbour per line.

    Easier to read than one field per line, and made by the C encoder (the
    pretty-printer is pure Python: it was a fifth of the cost of ingest).
    """
    return text_of(fields(document))


def fields(document: dict[str, Any]) -> dict[str, str]:
    """Each key of a document with its lines as `render` writes them: made once, they
    give both the text (`text_of`) and the fingerprint (`fingerprint_of`)."""
    return {key: field(key, value) for key, value in document.items()}


def text_of(fields: dict[str, str]) -> str:
    """The JSON text of a document's `fields`."""
    return "{\n" + ",\n".join(fields.values()) + "\n}\n"


def field(key: str, value: Any) -> str:
    """One key of a document (`render`), as its lines."""
    if key == "neighbors" and isinstance(value, list) and value:
        rows = ",\n".join(map(neighbor_line, value))
        return f'  "neighbors": [\n{rows}\n  ]'
    return f"  {_as_json(key)}: {_as_json(value)}"


def neighbor_line(neighbor: dict[str, Any]) -> str:
    """One neighbour of `ok`, as the C encoder writes it: only the path goes through it.

    Encoding the whole dict built a new encoder per call, which was two thirds
    of rendering a document; a string alone takes the encoder's short way.
    """
    distance = neighbor["distance"]
    if not math.isfinite(distance):  # NaN: written as the encoder always wrote it
        return "    " + _as_json(neighbor)
    duplicate = "true" if neighbor["duplicate"] else "false"
    near = "true" if neighbor["near_duplicate"] else "false"
    return (f'    {{"rank": {neighbor["rank"]:d}, "path": {_as_json(neighbor["path"])}, '
            f'"distance": {float.__repr__(distance)}, "duplicate": {duplicate}, '
            f'"near_duplicate": {near}}}')


def fingerprint(document: dict[str, Any], candidates: Sequence[int] = ()) -> str:
    """What makes two results for one image the same: what a reader sees, and the
    `candidates` (row ids) its neighbours were ranked from (`core.ranking`); not when
    they were written."""
    return fingerprint_of(fields(document), candidates)


def fingerprint_of(fields: dict[str, str], candidates: Sequence[int] = ()) -> str:
    """`fingerprint` of a document's `fields`. (The lines `render` writes: a document's
    keys come in one order, and they cost half of sorting its keys for a canonical
    text.)"""
    lasting = "\n".join(lines for key, lines in fields.items()
                        if key not in ("written_at", "index"))
    ranked_from = ",".join(map(str, candidates))
    return hashlib.sha256(f"{lasting}\n{ranked_from}".encode()).hexdigest()[:32]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write(path: Path, document: dict[str, Any]) -> None:
    """Write `document` to `path` atomically: temporary file, fsync, rename."""
    failure = write_many([(path, render(document))])[0]
    if failure is not None:
        raise failure


def write_many(documents: list[tuple[Path, str]],
               scratch: Scratch | None = None) -> list[OSError | None]:
    """Write each (path, text of a document: `render`) atomically, with one sync for
    them all.

    Every document goes to a temporary file: in `scratch` (a folder of the
    state directory) when that is on the same file system as its path, else
    beside its path. One syncfs per file system makes them all durable (an
    fsync per file costs about a millisecond each); then each is renamed
    into place. A temporary in `scratch` spares the watched folder the
    create, write and close events of every results file: the watcher then
    hears one rename, a fifth of the work. Returns, per document, None or
    the error that stopped it.
    """
    devices: dict[Path, int] = {}

    def device(folder: Path) -> int:
        if folder not in devices:
            devices[folder] = os.stat(folder).st_dev
        return devices[folder]

    partials: list[str | None] = []
    failures: list[OSError | None] = []
    for path, rendered in documents:
        try:
            if scratch is not None and device(scratch.folder) == device(path.parent):
                partials.append(fill(*scratch.open(), rendered))
            else:
                partials.append(write_partial(path, rendered))
            failures.append(None)
        except OSError as error:
            partials.append(None)
            failures.append(error)
    written = [(partial, path) for partial, (path, _) in zip(partials, documents, strict=True)
               if partial is not None]
    by_device = {device(folder): folder for folder in {path.parent for _, path in written}}
    for folder in by_device.values():  # syncfs flushes a whole file system
        sync_filesystem(folder)
    for index, (partial, (path, _)) in enumerate(zip(partials, documents, strict=True)):
        if partial is None:
            continue
        try:
            put_in_place(partial, path)
        except OSError as error:
            failures[index] = error
    return failures


class Scratch:
    """The state directory's folder of temporary results files, with blanks made ahead.

    On some disks, creating a file is most of the cost of writing a results
    file: ext4 without a journal passes over every inode freed in the last
    minutes (`recently_deleted` in the kernel; 0.1 to 0.7 ms a file here
    after deletions, against 20 us), and each results file renamed over an
    old one (all of them, when a folder moved) frees an inode. `stock` makes
    empty temporaries in a thread while the images are read, before the
    writes begin; `open` takes one.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.numbers = itertools.count()
        self.blanks: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.closed = threading.Event()
        self.maker: threading.Thread | None = None
        self.wanted = 0  # blanks still to make; guarded by `lock`
        self.lock = threading.Lock()

    def stock(self, count: int) -> None:
        """Make up to `count` more blanks, in the background."""
        with self.lock:
            self.wanted = min(self.wanted + count, MAX_BLANKS - self.blanks.qsize())
            if self.maker is None and self.wanted > 0 and not self.closed.is_set():
                self.maker = threading.Thread(target=self.make, name="blanks", daemon=True)
                self.maker.start()

    def make(self) -> None:
        """In the maker thread: make the wanted blanks, then end."""
        while self.take_one():
            name = self.name()
            try:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                 0o644))
            except OSError:  # a full disk, a removed folder: the writes say so, not this
                with self.lock:
                    self.wanted = 0
                continue
            self.blanks.put(name)

    def take_one(self) -> bool:
        """Whether the maker should make one more blank; it ends when not."""
        with self.lock:
            if self.wanted <= 0 or self.closed.is_set():
                self.maker = None
                return False
            self.wanted -= 1
            return True

    def open(self) -> tuple[int, str]:
        """A temporary file open for writing, and its name: a blank if one is ready."""
        while True:
            try:
                name = self.blanks.get_nowait()
            except queue.Empty:
                break
            try:  # Not O_TRUNC: blanks are empty, and ext4 starts writing a truncated
                # file's data out at its close (auto_da_alloc): 23 us a close, against 1.
                return os.open(name, os.O_WRONLY | os.O_NOFOLLOW), name
            except FileNotFoundError:
                continue  # somebody emptied the folder: take the next
        name = self.name()
        return open_partial(name), name

    def name(self) -> str:
        return str(self.folder / f"{TEMP_PREFIX}{os.getpid()}.{next(self.numbers)}.tmp")

    def close(self) -> None:
        """Stop making blanks and delete those not taken."""
        self.closed.set()
        with self.lock:
            maker = self.maker
        if maker is not None:
            maker.join()
        while True:
            try:
                Path(self.blanks.get_nowait()).unlink(missing_ok=True)
            except queue.Empty:
                return


def write_partial(path: Path, rendered: str) -> str:
    """The text of a document in a hidden temporary file beside `path` (not yet synced);
    its name."""
    partial = str(path.with_name(f"{TEMP_PREFIX}{path.name}.tmp"))
    try:  # a fixed name: one writer per state directory, and a leftover is ours to replace
        fd = open_partial(partial)
    except OSError as error:
        # Too long a name, or something planted at it (a link is never followed): a new one.
        if error.errno not in (errno.ENAMETOOLONG, errno.ELOOP, errno.EISDIR):
            raise
        fd, partial = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o644)
    return fill(fd, partial, rendered)


def open_partial(partial: str) -> int:
    return os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)


def fill(fd: int, partial: str, text: str) -> str:
    """Write `text` to the open temporary `partial`; remove it if that fails.

    Plain `os.write`: a file object's buffers and text layer cost more than the write.
    """
    try:
        data = memoryview(text.encode())
        while data:  # a write may stop short (a signal): go on from there
            data = data[os.write(fd, data):]
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return partial


def remove(image: Path) -> bool:
    """Delete the results file of `image` if it is ours; True if one was removed.

    Ours is a regular file (not a link, not a FIFO: opening one would block)
    holding our schema; anything else there is somebody else's and stays.
    """
    path = results_path(image)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        with open(fd, "rb") as existing:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_RESULTS_BYTES:
                return False
            if json.loads(existing.read()).get("schema") != SCHEMA:
                return False
    except (OSError, ValueError, AttributeError):
        return False
    path.unlink(missing_ok=True)
    return True
