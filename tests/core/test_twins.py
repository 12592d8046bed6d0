"""The vector of a file's bytes from the library (`core.twins`): a real SQLite library."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from lookalike.core.store import Library
from lookalike.core.twins import FIND, Twins
from tests.core.test_store import MODEL, OTHER_MODEL, broken, image, vector


def test_a_live_row_and_a_tombstone_give_their_vectors_by_bytes(tmp_path: Path) -> None:
    path = tmp_path / "library.sqlite"
    with Library(path) as library:
        library.apply([image("a.jpg", 1), image("b.jpg", 2), image("old.jpg", 3, OTHER_MODEL),
                       broken("bad.jpg")])
        library.apply(deletions=["b.jpg"])  # moved away: its vector stays with its tombstone
        twins = Twins(path, MODEL)
        try:
            live, tombstone = twins.find(f"{1:064x}", 100), twins.find(f"{2:064x}", 100)
            assert live is not None and tombstone is not None
            assert live.row_id == library.records()["a.jpg"].id
            assert np.array_equal(live.latent, vector(1))
            assert np.array_equal(tombstone.latent, vector(2))
            assert twins.find(f"{1:064x}", 101) is None  # another size: other bytes
            assert twins.find(f"{3:064x}", 100) is None  # another model's vector
            assert twins.find(f"{4:064x}", 100) is None
            library.forget_deleted(up_to=library.generation)  # a build dropped the tombstone
            assert twins.find(f"{2:064x}", 100) is None
        finally:
            twins.close()


def test_the_vector_of_a_deleted_row_is_no_live_vector(tmp_path: Path) -> None:
    with Library(tmp_path / "library.sqlite") as library:
        library.apply([image("a.jpg", 1), image("b.jpg", 2)])
        gone = library.records()["b.jpg"].id
        library.apply(deletions=["b.jpg"])
        assert set(library.vectors_of([gone, library.records()["a.jpg"].id])) == {
            library.records()["a.jpg"].id}


def test_each_thread_looks_up_through_its_own_connection_by_the_content_index(
        tmp_path: Path) -> None:
    path = tmp_path / "library.sqlite"
    with Library(path) as library:
        library.apply([image(f"{n}.jpg", n) for n in range(50)])
        plan = library.db.execute("EXPLAIN QUERY PLAN " + FIND, ("0" * 16, "0" * 64, 1, MODEL))
        assert "SEARCH images USING INDEX images_by_content" in plan.fetchall()[0][-1]
        twins = Twins(path, MODEL)
        found: dict[int, bool] = {}

        def look(n: int) -> None:
            twin = twins.find(f"{n:064x}", 100)
            found[n] = twin is not None and np.array_equal(twin.latent, vector(n))

        threads = [threading.Thread(target=look, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert found == dict.fromkeys(range(4), True)
        assert len(twins.opened) == 4
        twins.close()
