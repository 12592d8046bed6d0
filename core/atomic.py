"""Files written whole or not at all: a temporary file, then a rename over the file.

`replacing` is how this package writes a file atomically: the index's files,
the sheets, the service's status. The results files come in batches and
sync a whole batch at once: they use its steps, `sync_filesystem` and
`put_in_place` or `swap_in`, in `results.write_many`.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
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


# renameat2(2): the two names trade files atomically (Linux 3.15; ext4, XFS, Btrfs, tmpfs).
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# What a file system that cannot trade names answers.
_NO_EXCHANGE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV)


def swap_in(partial: str, path: Path) -> bool:
    """Put the written (and synced) temporary `partial` in place of the existing file
    `path` by trading the two names atomically, so that the old file, now at
    `partial`, can be written again instead of a new one being made: on ext4
    without a journal, a file replaced by a rename frees its inode, and every
    file created in the next half-minute looks at each inode freed so.

    Only a file that is ours to rewrite trades: a regular file with no other
    link (a link elsewhere, a backup's hard link say, would see it rewritten).
    False, with nothing done, when `path` is anything else or missing, or the
    file system cannot trade names: `put_in_place` is then the way.
    """
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        return False
    if _libc.renameat2(_AT_FDCWD, os.fsencode(partial), _AT_FDCWD, os.fsencode(path),
                       _RENAME_EXCHANGE) == 0:
        return True
    number = ctypes.get_errno()
    if number in _NO_EXCHANGE or number == errno.ENOENT:
        return False
    raise OSError(number, os.strerror(number), str(path))


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
