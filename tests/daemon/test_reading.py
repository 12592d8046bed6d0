"""Reading image files for the ingest (`daemon.reading`): in the ingest's threads and in
processes of their own, the same reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.core import images, scan
from lookalike.core.errors import StateError
from lookalike.core.store import Entry, Library
from lookalike.core.twins import Twins
from lookalike.daemon.ingest import batches
from lookalike.daemon.reading import Readers, gathered, read

SHAPE = images.Shape(28, "rgb")


def test_batches_end_at_a_count_or_once_their_files_reach_a_size() -> None:
    sizes = [10, 10, 10, 100, 10, 10, 10, 10, 10]
    candidates = [scan.Candidate(f"{n}.png", size, 0) for n, size in enumerate(sizes)]
    assert batches(candidates, 4, 1_000) == [0, 4, 8, 9]
    assert batches(candidates, 4, 100) == [0, 4, 8, 9]  # the 4th reaches 130
    assert batches(candidates, 4, 25) == [0, 3, 4, 7, 9]
    assert batches(candidates[:1], 4, 1) == [0, 1]


def test_processes_read_what_a_thread_reads(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(0)
    for n in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(
            inbox / f"{n}.png")
    (inbox / "notes.png").write_text("not an image")
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "copy.png").write_bytes((inbox / "0.png").read_bytes())
    library_path = tmp_path / "library.sqlite"
    candidates = scan.survey(inbox, []).candidates
    first = read(inbox, next(c for c in candidates if c.path == "0.png"), SHAPE)
    assert first.decoded is not None
    with Library(library_path) as library:  # the library holds 0.png's bytes
        library.apply([Entry("0.png", first.candidate.size, 1, first.decoded.sha256, "m",
                             np.ones(4, np.float32))])
    twins = Twins(library_path, "m")
    in_thread = [read(inbox, candidate, SHAPE, twins) for candidate in candidates]
    twins.close()
    readers = Readers(2, inbox, SHAPE, library_path, "m")
    futures = readers.submit(candidates)
    in_processes = [one for future in futures for one in future.result()]
    readers.close()

    assert [r.candidate for r in in_processes] == candidates
    for mine, theirs in zip(in_thread, in_processes, strict=True):
        assert (mine.problem is None) == (theirs.problem is None)
        if mine.problem is not None and theirs.problem is not None:
            assert (mine.problem.code, mine.problem.message) == \
                (theirs.problem.code, theirs.problem.message)
        assert (mine.decoded is None) == (theirs.decoded is None)
        if mine.decoded is not None and theirs.decoded is not None:
            assert np.array_equal(mine.decoded.pixels, theirs.decoded.pixels)
            assert mine.decoded.sha256 == theirs.decoded.sha256
            assert mine.picture == theirs.picture
        assert (mine.twin is None) == (theirs.twin is None)
    codes = {r.candidate.path: r.problem.code for r in in_processes if r.problem is not None}
    assert codes == {"notes.png": "not_an_image", "empty.jpg": "empty"}
    assert {r.candidate.path for r in in_processes if r.twin is not None} == {"0.png",
                                                                              "copy.png"}


def test_a_reading_process_that_dies_fails_the_read_with_a_clear_error(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    Image.new("RGB", (8, 8)).save(inbox / "a.png")
    candidates = scan.survey(inbox, []).candidates
    Library(tmp_path / "library.sqlite").close()
    readers = Readers(1, inbox, SHAPE, tmp_path / "library.sqlite", "m")
    try:
        assert gathered(readers.submit(candidates), candidates)[0].decoded is not None
        for process in list(readers.pool._processes.values()):  # as the OOM killer would
            process.kill()
            process.join()
        with pytest.raises(StateError,
                           match="a reading process ended abruptly .* from a.png on"):
            gathered(readers.submit(candidates), candidates)
    finally:
        readers.close()
