"""TensorFlow's native log lines kept out of the journal.

TensorFlow's C++ core logs through absl before anything can configure absl:
"WARNING: All log messages before absl::InitializeLog() is called are
written to STDERR", then the oneDNN notice (as its libraries load, and again
when the first model runs), written to file descriptor 2 directly, whatever
TF_CPP_MIN_LOG_LEVEL says. `quiet`, called before TensorFlow loads, sets
what can be set and puts a filter on descriptor 2 for the rest of the
process: TensorFlow's and absl's informational lines go to the debug log
(`-v`), its warnings and errors to the log at their level, and any other
line through unchanged. Python's own writes (log lines, a traceback) bypass
the filter: `sys.stderr` then writes to the original stderr. TensorFlow
Lite (`core.lite`) logs in a plainer form of its own ("INFO: Created
TensorFlow Lite XNNPACK delegate for CPU."), filtered alike; its converter's
Python informational records (logger `absl`: "Using new converter") go to
the debug log as well.

Ray's C++ core (`lookalike import`) writes its errors there the same way,
whatever its log level, including notes on its own choices ("actor ... has
constructor arguments in the object store"): its lines go to the debug log
too, since Ray reports each failure to the command as an exception, which
the command reports.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

log = logging.getLogger(__name__)

# Read by TensorFlow as it loads: its C++ log, where this still decides, at errors only.
SETTINGS = {"TF_CPP_MIN_LOG_LEVEL": "2"}
# absl's and TensorFlow's C++ lines: "I0000 00:00:1796562917.466772    4916 port.cc:153] ..."
NATIVE_LINE = re.compile(r"^(?:WARNING: All log messages before absl::InitializeLog\(\) is "
                         r"called are written to STDERR)?([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ "
                         r"[\w./-]+:\d+\] ")
# Ray's: "[2026-12-06 16:21:20,389 E 7727 7727] core_worker.cc:2465: ..."
RAY_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWEF] \d+ \d+\] [\w./-]+:\d+: ")
# TensorFlow Lite's: "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
LITE_LINE = re.compile(r"^(INFO|WARNING|ERROR): (?!All log messages before absl)")
ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to " \
              "STDERR"
LEVELS = {"I": logging.DEBUG, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL,
          "INFO": logging.DEBUG, "WARNING": logging.WARNING, "ERROR": logging.ERROR}

installed: list[tuple[int, threading.Thread]] = []  # (the original stderr, the filter)


def level_of(line: str) -> int | None:
    """The log level a line of stderr gets if it is TensorFlow's, absl's or Ray's, else None.

    Informational lines (and absl's banner) are for the debug log only. The
    banner has no line break of its own: the line after it may follow on.
    """
    if line == ABSL_BANNER or RAY_LINE.match(line):
        return logging.DEBUG
    native = NATIVE_LINE.match(line) or LITE_LINE.match(line)
    return None if native is None else LEVELS[native.group(1)]


class Informational(logging.Filter):
    """absl's informational records made debug records: for `-v` only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet() -> None:
    """Before TensorFlow loads, once a process: filter what it writes to descriptor 2, and
    what it logs through absl's Python logger."""
    for key, value in SETTINGS.items():
        os.environ.setdefault(key, value)
    if installed:
        return
    logging.getLogger("absl").addFilter(Informational())
    try:
        reading, writing = os.pipe()
        original = os.dup(2)
    except OSError:
        return  # no descriptors to spare: TensorFlow writes its banners, nothing worse
    sys.stderr.flush()
    os.dup2(writing, 2)
    os.close(writing)
    sys.stderr = open(original, "w", buffering=1, encoding="utf-8",  # noqa: SIM115
                      errors="backslashreplace", closefd=False)  # (logs.Stderr follows)
    thread = threading.Thread(target=forward, args=(reading, original),
                              name="tensorflow log", daemon=True)
    thread.start()
    installed.append((original, thread))
    atexit.register(finish)


def forward(reading: int, original: int) -> None:
    """The filter: each line written to descriptor 2, to the log or on to the original."""
    with open(reading, "rb") as lines:
        for raw in lines:
            try:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                level = level_of(line)
                if level is None:
                    os.write(original, raw)
                else:
                    log.log(level, "%s", line)
            except Exception:  # noqa: BLE001  (the filter must not stop: writers would block)
                continue


def finish() -> None:
    """At exit: give descriptor 2 back, and let the filter pass on what it still holds."""
    original, thread = installed[0]
    sys.stderr.flush()
    os.dup2(original, 2)  # closes our end of the pipe: the filter reads to its end
    thread.join(timeout=2)
