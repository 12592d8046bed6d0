"""Near-duplicate judging in a process of its own, for answering many images at once.

Answering a whole library (`run --once`) runs four steps at once:
searching, ranking, judging and writing results files. As threads of one
process, each holds Python's lock for part of its work, and together they
leave much of the second core idle. A `JudgingProcess` takes the judging
(`copies.Judge.marks`) to a process with a lock of its own, where the
judge keeps its thumbnails' views between chunks as it does in a thread.
Spawned, not forked: nothing of this process's threads or TensorFlow goes
with it.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from lookalike.core import copies

log = logging.getLogger(__name__)


class JudgingProcess:
    """`copies.Judge.marks` at any strictness, judged in a process of its own; in this
    one if that process ends abruptly (said once)."""

    def __init__(self) -> None:
        self.pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            1, multiprocessing.get_context("spawn"), initializer=started)
        self.pool.submit(copies.prepare)  # its start-up, while the images are read
        self.here: dict[str, copies.Judge] = {}  # by strictness, once the process ended

    def marks(self, strictness: str, queries: list[copies.Query]) -> list[list[bool]]:
        if self.pool is not None:
            try:
                return self.pool.submit(marks, strictness, queries).result()
            except BrokenProcessPool:
                log.warning("the judging process ended abruptly: judging goes on here")
                self.pool = None
        return judge(self.here, strictness).marks(queries)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


JUDGES: dict[str, copies.Judge] = {}  # the judging process's judges, by strictness


def started() -> None:
    """In the judging process, first: a stop's signal is for the command, which then
    closes the process."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def marks(strictness: str, queries: list[copies.Query]) -> list[list[bool]]:
    """In the judging process: `copies.Judge.marks`, by a judge that keeps its views."""
    return judge(JUDGES, strictness).marks(queries)


def judge(judges: dict[str, copies.Judge], strictness: str) -> copies.Judge:
    """The judge at `strictness` of `judges`: only the last strictness asked is kept."""
    if strictness not in judges:
        judges.clear()
        judges[strictness] = copies.Judge(strictness)
    return judges[strictness]
