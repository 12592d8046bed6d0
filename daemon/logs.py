"""The service's log lines: one line a record, read in journalctl or a terminal."""
from __future__ import annotations

import logging
import os
import sys
from typing import TextIO


class OneLine(logging.Formatter):
    """A log record is one line: a line break in it (a file name may hold one) is shown as \\n.

    Else a file named "x\\nERROR lookalike: ..." could forge a log line. A
    traceback, appended after the message, keeps its lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return super().formatMessage(record).replace("\r", "\\r").replace("\n", "\\n")


class Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each record.

    `tensorflow_log.quiet` points it past the filter it puts on descriptor 2.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


def setup_logging(level: int) -> None:
    # Under systemd the journal stamps each line; elsewhere we do.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = Stderr()
    handler.setFormatter(OneLine(stamp + "%(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler])
