"""The service's log lines: one line a record, read in journalctl or a terminal."""
from __future__ import annotations

import logging
import os
import sys


class OneLine(logging.Formatter):
    """A log record is one line: a line break in it (a file name may hold one) is shown as \\n.

    Else a file named "x\\nERROR lookalike: ..." could forge a log line. A
    traceback, appended after the message, keeps its lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return super().formatMessage(record).replace("\r", "\\r").replace("\n", "\\n")


def setup_logging(level: int) -> None:
    # Under systemd the journal stamps each line; elsewhere we do.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine(stamp + "%(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler])
