"""Files written whole or not at all: a temporary file, then a rename over the file.

`replacing` is how this package writes a file atomically: the index's files,
the sheets, the service's status. The results files come in batches and
sync a whole batch at once: they use its steps, `sync_filesystem` and
`put_in_place`, in `results.write_many`.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path, partial: Path | None = None, durable: bool = True) -> Iterator[Path]:
    """Write `path` whole or not at all: the block writes the temporary file it is given
    (`partial`, by default `<path>.partial` beside it), which is then renamed over `path`.

    `durable`: the file is synced before the rename and its folder after, so that
    a power cut leaves the old file or the new one, never half of one; a file
    rewritten every few seconds need not be. When the block fails, the temporary
    file goes.
    """
    partial = path.with_name(path.name + ".partial") if partial is None else partial
    try:
        yield partial
        if durable:
            fsync(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if durable:
        fsync(path.parent)


def put_in_place(partial: str | Path, path: Path) -> None:
    """Rename the written (and synced) temporary `partial` over `path`; if that fails,
    remove the temporary and raise."""
    try:
        os.replace(partial, path)
    except OSError:
        Path(partial).unlink(missing_ok=True)
        raise


def fsync(path: Path) -> None:
    """Flush a file or a folder to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def sync_filesystem(folder: Path) -> None:
    """Flush every dirty file of the file system that holds `folder` (Linux syncfs)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number), str(folder))
    finally:
        os.close(fd)
