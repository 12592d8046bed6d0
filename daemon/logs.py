"""The service's log lines: one line a record, read in journalctl or a terminal."""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TextIO


class OneLine(logging.Formatter):
    """A log record is one line: a line break in it (a file name may hold one) is shown as \\n.

    Else a file named "x\\nERROR lookalike: ..." could forge a log line. A
    traceback, appended after the message, keeps its lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return super().formatMessage(record).replace("\r", "\\r").replace("\n", "\\n")


class LiveLine:
    """The one line a terminal shows of long work (`progress.Progress`), kept under the
    log: each log record is written above it, and it is drawn again below."""

    text = ""
    lock = threading.RLock()

    @staticmethod
    def available() -> bool:
        """Whether stderr is a terminal (not the journal, a pipe or a file)."""
        try:
            return sys.stderr.isatty() and not os.environ.get("JOURNAL_STREAM")
        except (AttributeError, ValueError):  # replaced, or closed
            return False

    @classmethod
    def show(cls, text: str) -> None:
        with cls.lock:
            cls.text = text
            cls.draw()

    @classmethod
    def clear(cls) -> None:
        with cls.lock:
            if cls.text:
                cls.text = ""
                sys.stderr.write(ERASE)
                sys.stderr.flush()

    @classmethod
    def draw(cls) -> None:
        sys.stderr.write(ERASE + cls.text)
        sys.stderr.flush()


ERASE = "\r\x1b[K"  # back to the line's start, and erase it


class Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each record, above the live
    line of long work if one is shown.

    `tensorflow_log.quiet` points it past the filter it puts on descriptor 2.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        with LiveLine.lock:
            if LiveLine.text:
                sys.stderr.write(ERASE)
            super().emit(record)
            if LiveLine.text:
                LiveLine.draw()

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
