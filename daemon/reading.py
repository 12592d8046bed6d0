"""Reading image files for the ingest: bytes, hash and pixels, in threads or processes.

`read` turns one file into a `Read`: its SHA-256 with the encoder's pixels
and near-duplicate thumbnail, or the vector of a library row with the same
bytes (`core.twins`), or why it cannot be used. The ingest reads a few files
(a service's turn) in its threads: nothing to start, each file at once. It
reads more than a batch (a start-up scan, `run --once`) in `Readers`,
processes of their own: a thread holds Python's lock for part of every
image, and shares that lock with the thread that loads the encoder
(TensorFlow's import, seconds of Python) and with the one that encodes and
stores; a process has a lock of its own, so the second core reads at full
speed from the start.
"""
from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from lookalike.core import copies, images, scan
from lookalike.core.errors import StateError, UnreadableImage
from lookalike.core.twins import Twin, Twins

PER_TASK = 32  # files a process reads per task: handing one over costs some 0.1 ms
# The reading processes yield to the command's own threads: the encoder's loading
# (one core for seconds) and encoding come first, the reading fills the rest.
NICENESS = 10


@dataclass(frozen=True)
class Read:
    """One file after reading: its hash with its pixels or with a library row's vector
    for the same bytes, or why it is unusable."""

    candidate: scan.Candidate
    decoded: images.Decoded | None
    problem: UnreadableImage | None
    twin: tuple[str, Twin] | None = None  # (SHA-256, the row with those bytes): no pixels
                                          # to encode
    picture: tuple[bytes, int, int] | None = None  # near-duplicate thumbnail, width, height


def read(inbox: Path, candidate: scan.Candidate, shape: images.Shape,
         twins: Twins | None = None) -> Read:
    """Read, hash and decode one file of `inbox` for an encoder of `shape`, unless a row of
    `twins` holds its bytes' vector."""
    path = inbox / candidate.path
    try:
        problem = scan.link_problem(inbox, path)
        if problem is not None:
            raise problem
        data = images.read(path)
        sha256 = hashlib.sha256(data).hexdigest()
        twin = None if twins is None else twins.find(sha256, len(data))
        if twin is not None:
            return Read(candidate, None, None, (sha256, twin))
        pixels, (width, height) = images.decode_sized(data, shape)
        return Read(candidate, images.Decoded(pixels, sha256, (width, height)), None,
                    picture=(copies.thumbnail(pixels), width, height))
    except UnreadableImage as problem:
        return Read(candidate, None, problem)


class Readers:
    """Processes that read files of `inbox` for an encoder of `shape`, each with its own
    look-ups in the library at `library` (`core.twins`, for `model_id`). Spawned, not
    forked: nothing of this process's threads or TensorFlow goes with them."""

    def __init__(self, count: int, inbox: Path, shape: images.Shape, library: Path,
                 model_id: str) -> None:
        self.inbox = inbox
        self.shape = shape
        self.pool = ProcessPoolExecutor(count, multiprocessing.get_context("spawn"),
                                        initializer=started, initargs=(library, model_id))

    def submit(self, candidates: Sequence[scan.Candidate]) -> list[Future[list[Read]]]:
        """Hand `candidates` to the processes; each future is the reads of a few of them,
        in order."""
        try:
            return [self.pool.submit(read_many, self.inbox, candidates[start:start + PER_TASK],
                                     self.shape)
                    for start in range(0, len(candidates), PER_TASK)]
        except BrokenProcessPool:  # one died since the last hand-over
            raise ended(candidates) from None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def gathered(futures: list[Future[list[Read]]],
             candidates: Sequence[scan.Candidate]) -> list[Read]:
    """The reads of `candidates` from their futures (`Readers.submit`'s, or threads'),
    once done. A reading process that died (the kernel's out-of-memory killer, a decoder
    that crashed on a file) fails the whole read with a `StateError` naming the files."""
    try:
        return [one for future in futures for one in future.result()]
    except BrokenProcessPool:
        raise ended(candidates) from None


def ended(candidates: Sequence[scan.Candidate]) -> StateError:
    return StateError(
        f"a reading process ended abruptly while reading {len(candidates)} files from "
        f"{candidates[0].path} on (out of memory, or a decoder crashed on one of them)")


TWINS: Twins | None = None  # a reading process's look-ups in the library (`started`)


def started(library: Path, model_id: str) -> None:
    """In each reading process, first. A stop's signal is the service's to act on, which
    then closes its `Readers`; the process must outlive the signal until then."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # a sandbox may forbid it: then at the same priority
        os.nice(NICENESS)
    global TWINS
    TWINS = Twins(library, model_id)


def read_many(inbox: Path, candidates: Sequence[scan.Candidate],
              shape: images.Shape) -> list[Read]:
    """In a reading process: `read` each of `candidates`."""
    return [read(inbox, candidate, shape, TWINS) for candidate in candidates]
