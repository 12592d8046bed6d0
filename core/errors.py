"""Typed errors raised at the edge of the core, reported once by the caller."""
from __future__ import annotations

import errno
import sqlite3


class LookalikeError(Exception):
    """Base of every error that a user can act on (no traceback needed)."""


class ConfigError(LookalikeError):
    """The configuration is unusable; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class UnreadableImage(LookalikeError):
    """A file cannot be used as an image. `code` is short and stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[UnreadableImage], tuple[str, str]]:
        return type(self), (self.code, self.message)  # (from a reading process: `reading`)


class ModelError(LookalikeError):
    """The encoder file is missing, unsafe or of the wrong shape."""


class StateError(LookalikeError):
    """The state directory (library or index) cannot be used."""


class DiskFull(LookalikeError):
    """A watched folder's disk is full: results files cannot be written there."""


def disk_full(error: BaseException) -> bool:
    """Whether `error` says a disk (or a quota) is full."""
    if isinstance(error, sqlite3.OperationalError):
        return "full" in str(error)  # SQLITE_FULL: "database or disk is full"
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
