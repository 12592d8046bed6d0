"""Typed errors raised at the edge of the core, reported once by the caller."""
from __future__ import annotations


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


class ModelError(LookalikeError):
    """The encoder file is missing, unsafe or of the wrong shape."""


class StateError(LookalikeError):
    """The state directory (library or index) cannot be used."""
