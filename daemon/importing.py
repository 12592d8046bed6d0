"""`lookalike import`: a large collection encoded on a Ray cluster, into the library.

The bulk way in, beside the service: the images under the inbox (or under
the given folders in it) that the library lacks or holds out of date are
listed, read, decoded and encoded on the cluster (`daemon.cluster`), and
their rows written into the library here, in large transactions as they
arrive; then the index is built. The rows are the ones the service would
write (same size and mtime, hash, model id, vector, thumbnail, or error
code), so that `lookalike run` and `run --once` afterwards find every
imported image current and only write the results files still missing.

It holds the state lock throughout, as `run --once` does. Images that left
the inbox and results files are `run --once`'s and the service's business:
an import only adds and updates rows.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lookalike.core import card
from lookalike.core.config import Config
from lookalike.core.errors import LookalikeError, ModelError, StateError
from lookalike.core.images import Shape
from lookalike.core.scan import Candidate
from lookalike.core.store import Entry, Library, Record
from lookalike.daemon import cluster
from lookalike.daemon.builder import BuildSettings, build_now
from lookalike.daemon.ingest import needs_reading, set_up_new_library
from lookalike.daemon.lock import StateLock
from lookalike.daemon.progress import Progress, Tally

log = logging.getLogger(__name__)

# Rows written in one transaction at most, and seconds at most between transactions
# while rows arrive: large transactions for the write rate, yet a Ctrl-C or a crash
# loses no more than this much work.
WRITE_ROWS = 8192
WRITE_S = 1.0


def run(config: Config, folders: Sequence[Path], address: str | None, verbose: bool) -> int:
    started = time.monotonic()
    with StateLock(config.state_dir), Library(config.state_dir / "library.sqlite") as library:
        set_up_new_library(config, library)
        if not config.inbox.is_dir():
            raise StateError(f"the inbox {config.inbox} does not exist (is its disk mounted?)")
        parts = parts_of(config.inbox, folders)
        model_id, shape = card.model_id(config.model), encoder_shape(config)
        tally = Tally()
        interrupted = False
        try:
            bars = cluster.connect(address, verbose)
            candidates = cluster.survey(config.inbox, config.exclude, parts)
            known = library.records()
            wanted = list({c.path: c for c in candidates
                           if needs_reading(known.get(c.path), c, model_id)}.values())
            log.info("%d images to import, %d current", len(wanted), len(candidates) - len(wanted))
            if wanted:
                writer = Writer(library, known, wanted, tally, progress=not bars)
                try:
                    for batch in cluster.rows(config.inbox, wanted, shape, config.model,
                                              model_id):
                        writer.add(batch)
                except KeyboardInterrupt:
                    interrupted = True
                finally:
                    writer.flush()  # the rows that arrived are whole: they are kept
        except KeyboardInterrupt:
            interrupted = True
        except ray_errors() as error:
            raise LookalikeError(f"the Ray cluster failed: {last_line(error)}") from None
        finally:
            with ignoring_interrupts():
                cluster.disconnect()
        if interrupted:
            print(f"import interrupted: {tally.added + tally.updated} images written; "
                  "the next import reads the rest", file=sys.stderr)
            return 130
        if tally:
            info = build_now(library, BuildSettings.of(config, model_id))
            log.info("index generation %d: %d items (%s) in %s s", info.generation, info.items,
                     info.kind, info.seconds)
        tally.seconds = time.monotonic() - started
        images = library.counts()["images"]
    print(f"{images} images in the library: {tally.line()}")
    return 0


def parts_of(inbox: Path, folders: Sequence[Path]) -> list[cluster.Part]:
    """The parts of the folders to import (all the inbox when none is given), for listing
    apart: each folder's own files, and each of its sub-folders (links are not followed,
    as the service follows none to folders)."""
    top = Path(os.path.realpath(inbox))
    parts: list[cluster.Part] = []
    for folder in folders or [inbox]:
        real = Path(os.path.realpath(folder))
        if not real.is_dir():
            raise LookalikeError(f"{folder}: no such folder")
        if not real.is_relative_to(top):
            raise LookalikeError(f"{folder}: not inside the inbox {inbox}")
        under = real.relative_to(top).as_posix().removeprefix(".")
        parts.append((under, False))
        with os.scandir(real) as entries:
            parts.extend((f"{under}/{e.name}".lstrip("/"), True) for e in entries
                         if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
    return parts


def encoder_shape(config: Config) -> Shape:
    """The images the configured encoder reads, known without loading it (the reading
    tasks need it before any encoder is loaded); it must agree with `image.size` and
    `image.color`, as the service checks."""
    if not config.model.is_file():
        raise ModelError(f"{config.model}: no such encoder file")
    shape = card.declared_shape(config)
    if shape is None:
        raise ModelError(f"{config.model}: cannot tell what images the encoder reads")
    return shape


class Writer:
    """Rows from the cluster into the library: a transaction per `WRITE_ROWS` rows or
    `WRITE_S` seconds. A row whose path this import already wrote (work that Ray did
    again after a failure) is not written twice."""

    def __init__(self, library: Library, known: dict[str, Record],
                 wanted: Sequence[Candidate], tally: Tally, progress: bool) -> None:
        self.library, self.known, self.tally = library, known, tally
        self.waiting = {c.path for c in wanted}  # not yet written
        self.entries: list[Entry] = []
        self.written_at = time.monotonic()  # (so the first rows are written as they come)
        # Where Ray Data draws no progress bars (off a terminal), a log line every 10 s.
        self.progress = Progress("import", len(wanted), live=False) if progress else None

    def add(self, batch: cluster.Batch) -> None:
        for n, path in enumerate(batch["path"].tolist()):
            if path not in self.waiting:
                log.debug("%s: read again after a failure; written once", path)
                continue
            self.waiting.discard(path)
            self.entries.append(entry(batch, n, path))
            if path in self.known:
                self.tally.updated += 1
            else:
                self.tally.added += 1
            if self.entries[-1].error_code is None:
                self.tally.encoded += 1
            else:
                self.tally.errors += 1
                log.warning("%s: %s (%s)", path, self.entries[-1].error_message,
                            self.entries[-1].error_code)
        if len(self.entries) >= WRITE_ROWS or time.monotonic() - self.written_at >= WRITE_S:
            self.flush()
        if self.progress is not None:
            self.progress.update(self.tally.added + self.tally.updated)

    def flush(self) -> None:
        """Write the rows that wait, in one transaction."""
        entries, self.entries = self.entries, []
        if entries:
            self.library.store(entries)
        self.written_at = time.monotonic()


def entry(batch: cluster.Batch, n: int, path: str) -> Entry:
    """Row `n` of a batch from the cluster, as the library stores it (`ingest.Ingest.store`
    makes the same)."""
    size, mtime_ns = int(batch["size"][n]), int(batch["mtime_ns"][n])
    code = str(batch["error_code"][n])
    if code:
        return Entry(path, size, mtime_ns, None, None, None, code, str(batch["error_message"][n]))
    return Entry(path, size, mtime_ns, str(batch["sha256"][n]), str(batch["model_id"][n]),
                 batch["latent"][n], thumb=batch["thumb"][n].tobytes(),
                 width=int(batch["width"][n]), height=int(batch["height"][n]))


def ray_errors() -> tuple[type[Exception], ...]:
    from ray.exceptions import RayError

    return (RayError, ConnectionError)


def last_line(error: BaseException) -> str:
    """The last line of what Ray says of a failure (its first ones are a traceback)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


class ignoring_interrupts:  # noqa: N801 (a context, named as one reads it)
    """Ctrl-C ignored within: the cluster is let go of whole."""

    def __enter__(self) -> None:
        self.before = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.before)
